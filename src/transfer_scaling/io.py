"""Atomic file output and content hashes.

Every file the project writes goes to a temporary name in the same directory and is renamed into
place, so a job killed at any moment (SIGKILL included) leaves either the old file or the new one.
A sha256 recorded at write time (a ``.sha256`` sidecar, a directory manifest) catches a file truncated
or altered afterwards when it is read back.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator


logger = logging.getLogger(__name__)

_UMASK = os.umask(0)
os.umask(_UMASK)
SIDECAR_SUFFIX = ".sha256"


class IntegrityError(ValueError):
    """A file differs from the sha256 recorded when it was written: truncated, altered or replaced."""


@contextlib.contextmanager
def explain_full_disk(path: str | os.PathLike) -> Iterator[None]:
    """Name the cause when writing ``path`` fails on a full file system: libraries report it as, e.g.,
    "unexpected pos 576 vs 534" (torch.save) or a serialization error (safetensors)."""
    path = Path(path)
    try:
        yield
    except Exception as exc:
        directory = next(folder for folder in (path, *path.parents) if folder.is_dir())
        if os.strerror(errno.ENOSPC) in str(exc) or os.statvfs(directory).f_bavail == 0:
            raise OSError(errno.ENOSPC, f"no space left on the device holding {directory} while writing "
                                        f"{path.name} ({type(exc).__name__}: {exc})") from exc
        raise


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600 files; give outputs the usual permissions
    tmp_path = Path(tmp)
    try:
        with explain_full_disk(path):
            yield tmp_path
            with open(tmp_path, "rb+") as handle:
                os.fsync(handle.fileno())
        os.replace(tmp_path, path)
    finally:
        tmp_path.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w", **kwargs: Any) -> Iterator[Any]:
    """Open a temporary file for writing that replaces ``path`` atomically on success."""
    with atomic_path(path) as tmp, open(tmp, mode, **kwargs) as handle:
        yield handle


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as indented, key-sorted JSON, atomically."""
    with atomic_open(path, "w", encoding="utf-8") as handle:
        json.dump(obj, handle, indent=2, sort_keys=True)
        handle.write("\n")


def read_json(path: str | os.PathLike) -> Any:
    """Parse a JSON file; a truncated, altered or binary one is reported with its path, not just a line number."""
    with open(path, encoding="utf-8") as handle:
        try:
            return json.load(handle)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}: not valid JSON ({exc}); the file is truncated or altered") from exc
        except UnicodeDecodeError:
            raise ValueError(f"{path}: not valid JSON (binary content, not UTF-8 text)") from None


class TableError(ValueError):
    """A table file is missing, empty, binary or not a CSV; the message names the file."""


def read_table(path: str | os.PathLike, **read_csv: Any) -> Any:
    """A CSV file as a pandas DataFrame, or one line naming the file and what is wrong with it (pandas' own
    errors name neither the file nor, for binary content, the cause)."""
    import pandas as pd  # here: the trainer and the data stage import this module without needing pandas

    path = Path(path)
    if not path.is_file():
        raise TableError(f"{path}: no such table file")
    with open(path, "rb") as handle:  # the first 64 KiB tell a text table from a binary file
        head = handle.read(65536)
    if not head.strip():
        raise TableError(f"{path}: empty file; a table needs at least a header line")
    if b"\0" in head:
        raise TableError(f"{path}: binary content, not a CSV table")
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as exc:
        if exc.start < len(head) - 3:  # not only a character cut at the end of the sample
            raise TableError(f"{path}: not UTF-8 text (byte {exc.start}), not a CSV table") from None
    try:
        return pd.read_csv(path, **read_csv)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise TableError(f"{path}: not a readable CSV table ({str(exc).strip().splitlines()[0]})") from None


def sha256_file(path: str | os.PathLike, chunk_size: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes, read in chunks so large token arrays fit in memory."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(chunk_size), b""):
            digest.update(chunk)
    return digest.hexdigest()


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def sidecar_path(path: str | os.PathLike) -> Path:
    path = Path(path)
    return path.with_name(path.name + SIDECAR_SUFFIX)


def write_sha256_sidecar(path: str | os.PathLike) -> str:
    """Record the sha256 of ``path`` in ``path.sha256`` (``sha256sum -c`` format), atomically."""
    path = Path(path)
    digest = sha256_file(path)
    with atomic_open(sidecar_path(path), "w", encoding="utf-8") as handle:
        handle.write(f"{digest}  {path.name}\n")
    return digest


def check_sha256_sidecar(path: str | os.PathLike) -> None:
    """Refuse ``path`` if it differs from its sidecar; a file without one (written elsewhere) is only logged."""
    path, sidecar = Path(path), sidecar_path(path)
    if not sidecar.exists():
        logger.warning("%s has no %s sidecar: its integrity is not verified", path, sidecar.name)
        return
    fields = sidecar.read_text(encoding="utf-8").split()
    expected = fields[0] if fields else ""
    actual = sha256_file(path)
    if actual != expected:
        raise IntegrityError(f"{path}: sha256 {actual} differs from {expected or 'nothing'} recorded in "
                             f"{sidecar.name}; the file is truncated or altered")


def directory_manifest(directory: str | os.PathLike) -> dict[str, str]:
    """sha256 of every file under ``directory`` by relative path, each flushed to disk first, so a marker
    written after the manifest never describes data still only in the page cache."""
    directory = Path(directory)
    manifest = {}
    for path in sorted(p for p in directory.rglob("*") if p.is_file()):
        with open(path, "rb") as handle:
            os.fsync(handle.fileno())
        manifest[path.relative_to(directory).as_posix()] = sha256_file(path)
    return manifest


def check_directory_manifest(directory: str | os.PathLike, manifest: dict[str, str]) -> None:
    """Refuse a directory whose files are missing, unlisted or differ from ``manifest``; name the file at fault."""
    directory = Path(directory)
    unlisted = sorted(p for p in directory.rglob("*") if p.is_file() and p.relative_to(directory).as_posix()
                      not in manifest)
    if unlisted:
        raise IntegrityError(f"{unlisted[0]}: not recorded in the manifest of {directory}; it was added later")
    for name, expected in sorted(manifest.items()):
        path = directory / name
        if not path.is_file():
            raise IntegrityError(f"{path}: missing, though recorded in the manifest of {directory}")
        actual = sha256_file(path)
        if actual != expected:
            raise IntegrityError(f"{path}: sha256 {actual} differs from {expected} recorded when it was "
                                 f"written; the file is truncated or altered")
