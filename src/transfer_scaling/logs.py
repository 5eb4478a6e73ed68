"""Job logs: every message of the package, with a timestamp, in the job's log file."""

from __future__ import annotations

import logging
import os
import sys

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def log_to_file(path: str | os.PathLike | None, level: int = logging.INFO) -> None:
    """Send log records (and uncaught tracebacks via stderr) to ``path``; to stderr when None."""
    if path is not None:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        stream = open(path, "a", buffering=1, encoding="utf-8")
        sys.stderr = stream
    logging.basicConfig(level=level, format=FORMAT, stream=sys.stderr, force=True)
