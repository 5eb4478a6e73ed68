"""Exit codes of the two-process stop-on-SIGTERM/resume path, run many times in a row.

Each run starts two gloo ranks through the launcher, sends SIGTERM to the launcher once training has
logged, expects exit 75 (checkpoint written), then resumes to max_steps and expects exit 0: the path of
tests/test_launch.py, whose helpers it uses. A rank that aborts at exit (issue 11: 'terminate called
without an active exception', launcher exit 134) is a failed run; a rare one shows only over many runs.

    python benchmarks/stress_two_process.py --runs 20
"""

from __future__ import annotations

import argparse
import collections
import json
import signal
import sys
import tempfile
import textwrap
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from test_launch import start_launcher, wait_for_metrics  # noqa: E402
from test_training import make_spec, write_bytes_tokens  # noqa: E402

from transfer_scaling.train.run import INTERRUPTED_EXIT_CODE  # noqa: E402

EXPECTED = (INTERRUPTED_EXIT_CODE, 0)


def stop_and_resume(spec: dict, run_dir: Path) -> tuple[tuple[int, ...], str]:
    """Exit codes of the launcher stopped by SIGTERM and of the resumed one, and the last one's output."""
    process = start_launcher(spec, run_dir, nproc=2)
    try:
        wait_for_metrics(run_dir, process)
    except AssertionError as error:  # the launcher ended, or logged nothing in time, before the signal
        process.kill()
        process.communicate()
        return (process.returncode,), str(error)
    process.send_signal(signal.SIGTERM)
    output, _ = process.communicate(timeout=120)
    if process.returncode != INTERRUPTED_EXIT_CODE:
        return (process.returncode,), output
    process = start_launcher(spec, run_dir, nproc=2)
    output, _ = process.communicate(timeout=300)
    return (INTERRUPTED_EXIT_CODE, process.returncode), output


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20, help="stop-and-resume runs in a row (default 20)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="stress-two-process-") as tmp:
        root = Path(tmp)
        data = {"train": write_bytes_tokens(root / "train.bin", [argparse.__file__, json.decoder.__file__]),
                "val": write_bytes_tokens(root / "val.bin", [textwrap.__file__])}
        spec = make_spec(data, max_steps=1000, log_interval=10, eval_interval=100, checkpoint_interval=1000)
        codes: collections.Counter[tuple[int, ...]] = collections.Counter()
        started = time.perf_counter()
        for run in range(1, args.runs + 1):
            run_started = time.perf_counter()
            result, output = stop_and_resume(spec, root / f"run{run}")
            codes[result] += 1
            verdict = "ok" if result == EXPECTED else "FAILED"
            print(f"run {run}: exit codes {result} {verdict} ({time.perf_counter() - run_started:.1f} s)", flush=True)
            if result != EXPECTED:
                print(textwrap.indent(output[-3000:], "    "), flush=True)
        wall = time.perf_counter() - started
    failures = args.runs - codes[EXPECTED]
    print(f"{args.runs} runs, {failures} failed, exit codes (stopped, resumed): "
          f"{dict(codes)}, wall {wall:.0f} s ({wall / args.runs:.1f} s a run)")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
