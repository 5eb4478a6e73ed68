"""The local one-node SLURM cluster as a pytest fixture, for tests that submit real SLURM jobs.

The lead's conftest imports ``slurm_cluster``; the cluster comes from scripts/slurm/start-local-cluster.sh,
whose exit code 3 means "cannot run on this machine" and turns into a skip with its reason.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ROOT / "scripts" / "slurm"
PROFILES = ROOT / "profiles"
CANNOT_RUN = 3
START_TIMEOUT_S = 600
STOP_TIMEOUT_S = 120


@dataclass(frozen=True)
class SlurmCluster:
    """A running local cluster: where its clients are and how to reach it."""

    slurm_conf: Path
    partition: str
    bin_dir: Path
    started_here: bool

    def env(self) -> dict[str, str]:
        """Environment for SLURM clients and for snakemake (the venv first on PATH, as jobs inherit it)."""
        path = os.pathsep.join([str(Path(sys.executable).parent), str(self.bin_dir), os.environ.get("PATH", "")])
        return {**os.environ, "SLURM_CONF": str(self.slurm_conf), "PATH": path}

    def run(self, *command: str, timeout: float = 60) -> str:
        """Run a SLURM client command (sbatch, sacct, ...) against this cluster; return its stdout."""
        result = subprocess.run([str(self.bin_dir / command[0]), *command[1:]], env=self.env(),
                                capture_output=True, text=True, timeout=timeout)
        if result.returncode != 0:
            raise AssertionError(f"{' '.join(command)} failed ({result.returncode}): {result.stderr.strip()}")
        return result.stdout

    def snakemake_args(self) -> list[str]:
        """Profile arguments for a Snakemake run on this cluster (profiles/slurm + the slurm-local overlay)."""
        return ["--profile", str(PROFILES / "slurm"), "--workflow-profile", str(PROFILES / "slurm-local")]

    def job_states(self, job_ids: list[str]) -> dict[str, str]:
        """Accounting state of each job (COMPLETED, FAILED, ...), as the Snakemake executor sees it."""
        out = self.run("sacct", "-n", "-X", "-P", "-o", "JobID,State", "-j", ",".join(job_ids))
        return dict(line.split("|", 1) for line in out.splitlines() if line)

    def stop(self) -> None:
        """Stop the daemons that start-local-cluster.sh started (by its pid files)."""
        subprocess.run([str(SCRIPTS / "stop-local-cluster.sh")], check=True, capture_output=True,
                       timeout=STOP_TIMEOUT_S)


def start_cluster() -> SlurmCluster:
    """Start (or find running) the local cluster; skip the calling test where it cannot run here."""
    result = subprocess.run([str(SCRIPTS / "start-local-cluster.sh")], capture_output=True, text=True,
                            timeout=START_TIMEOUT_S)
    if result.returncode == CANNOT_RUN:
        pytest.skip(result.stderr.strip())
    if result.returncode != 0:
        pytest.fail(f"start-local-cluster.sh failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    settings = dict(line.split("=", 1) for line in result.stdout.splitlines()
                    if line.startswith(("SLURM_CONF=", "PARTITION=")))
    sbatch = shutil.which("sbatch")
    if sbatch is None:
        pytest.fail("start-local-cluster.sh succeeded but sbatch is not on PATH")
    return SlurmCluster(slurm_conf=Path(settings["SLURM_CONF"]), partition=settings["PARTITION"],
                        bin_dir=Path(sbatch).parent, started_here="already running" not in result.stdout)


@pytest.fixture(scope="session")
def slurm_cluster() -> Iterator[SlurmCluster]:
    """The local cluster for this test session; stopped at the end only if this session started it."""
    cluster = start_cluster()
    yield cluster
    if cluster.started_here:
        cluster.stop()


def wait_until(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    """Poll ``condition`` every half second; fail naming ``what`` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")
        time.sleep(0.5)
