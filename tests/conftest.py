"""Shared fixtures: the repository root and a way to run the workflow in a scratch study directory."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = ROOT / "workflow" / "schemas" / "config.schema.yaml"
SNAKEMAKE = Path(sys.executable).with_name("snakemake")


@pytest.fixture(scope="session")
def root() -> Path:
    return ROOT


def new_study(directory: Path) -> Path:
    """A study directory holding the default config and the presets, as a user's would."""
    directory.mkdir(parents=True, exist_ok=True)
    shutil.copy(ROOT / "config.yaml", directory / "config.yaml")
    shutil.copytree(ROOT / "presets", directory / "presets", dirs_exist_ok=True)
    return directory


def run_workflow(study: Path, *args: str, env: dict | None = None, timeout: int = 900,
                 check: bool = True) -> subprocess.CompletedProcess:
    """Run snakemake on this repository's Snakefile inside ``study``; output is kept for failures."""
    command = [str(SNAKEMAKE), "-s", str(ROOT / "Snakefile"), "-d", str(study), *args]
    result = subprocess.run(command, cwd=study, capture_output=True, text=True, timeout=timeout,
                            env={**os.environ, **(env or {})})
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(command)} failed ({result.returncode}):\n{result.stdout[-6000:]}\n"
                             f"{result.stderr[-6000:]}")
    return result
