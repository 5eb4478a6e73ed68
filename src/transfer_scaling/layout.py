"""The files of a run directory and of the fit directory, each named once.

The trainer writes a run's files, the rules declare them as outputs (``common.smk``), the evaluation, downstream
and table jobs read them; all of them take the names from here, so renaming a file is a one-line change.
A layout is pure path arithmetic: it works on a directory that does not exist yet, and on a Snakemake pattern
such as ``results/runs/pretrain/{source}/{size}``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from .io import sidecar_path


@dataclass(frozen=True)
class Layout:
    """A directory whose files a subclass names; made from a str or a Path, a directory or a wildcard pattern."""

    directory: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "directory", Path(self.directory))


class RunLayout(Layout):
    """Where one run's files lie in its directory."""

    @classmethod
    def holding(cls, path: str | os.PathLike) -> RunLayout:
        """The layout of the run directory that holds ``path``, one of its top-level files."""
        return cls(Path(path).parent)

    @property
    def record(self) -> Path:
        """The run record: the run's settings joined with its files, the trainer spec among them."""
        return self.directory / "spec.json"

    @property
    def weights(self) -> Path:
        return self.directory / "best.safetensors"

    @property
    def weights_sidecar(self) -> Path:
        return sidecar_path(self.weights)

    @property
    def model(self) -> Path:
        return self.directory / "model.json"

    @property
    def summary(self) -> Path:
        return self.directory / "summary.json"

    @property
    def metrics(self) -> Path:
        return self.directory / "metrics.jsonl"

    @property
    def eval(self) -> Path:
        return self.directory / "eval.json"

    @property
    def downstream(self) -> Path:
        return self.directory / "downstream.json"

    @property
    def checkpoint_dir(self) -> Path:
        return self.directory / "checkpoint"

    @property
    def stable_best_dir(self) -> Path:
        return self.directory / "stable_best"

    @property
    def branch_dir(self) -> Path:
        """The stable state a snapshot's cooldown branches from, while that cooldown runs."""
        return self.directory / "branch"

    @property
    def snapshots_dir(self) -> Path:
        return self.directory / "snapshots"

    def snapshot(self, tokens: int | str) -> Path:
        """Weights after ``tokens`` training tokens (the D_p axis of Isik et al. 2024)."""
        return self.snapshots_dir / f"tokens{tokens}.safetensors"

    def snapshots(self) -> list[Path]:
        """The snapshots written so far, in name order."""
        return sorted(self.snapshots_dir.glob(self.snapshot("*").name))

    def training_outputs(self) -> dict[str, Path]:
        """What a training job writes and keeps, by output name (the rules declare exactly these)."""
        return {"record": self.record, "weights": self.weights, "weights_sha256": self.weights_sidecar,
                "model": self.model, "summary": self.summary, "metrics": self.metrics}

    def snapshot_outputs(self, tokens: int) -> dict[str, Path]:
        """One snapshot's weights and sidecar, by output name."""
        weights = self.snapshot(tokens)
        return {f"snapshot_{tokens}": weights, f"snapshot_{tokens}_sha256": sidecar_path(weights)}


class FitLayout(Layout):
    """The files the transfer fit writes into its directory."""

    @property
    def fit(self) -> Path:
        return self.directory / "transfer_fit.json"

    @property
    def points(self) -> Path:
        return self.directory / "points.csv"

    @property
    def bootstrap(self) -> Path:
        """The identifiable bootstrap draws, which the figures' interval bands are drawn from."""
        return self.directory / "bootstrap.csv"

    @property
    def answer(self) -> Path:
        """The study's answer, which the report job writes beside the fit it reads."""
        return self.directory / "answer.rst"
