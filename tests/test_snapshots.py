"""Pretraining snapshots (the D_p axis): written at the configured steps, equal to an uninterrupted run's,
restored after an interruption even when the workflow deleted the outputs of the failed attempt."""

from __future__ import annotations

import shutil

import pytest
from safetensors.torch import load_file

from test_training import data, make_spec  # noqa: F401  (the module-scoped token fixture)
from transfer_scaling.config import ConfigError
from transfer_scaling.plan import snapshot_steps
from transfer_scaling.layout import RunLayout
from transfer_scaling.train.loop import TrainingInterrupted
from transfer_scaling.train.run import train
from transfer_scaling.train.spec import SpecError, parse_spec

SNAPSHOTS = [3, 10, 30]


def _snapshots(run_dir, spec):
    tokens_per_step = spec["batch_size"] * spec["model"]["n_ctx"]
    return {step: RunLayout(run_dir).snapshot(step * tokens_per_step) for step in spec["snapshot_steps"]}


def test_geometric_snapshot_steps():
    assert snapshot_steps({"count": 4, "orders": 1.5}, 1000) == [32, 100, 316, 1000]
    assert snapshot_steps(None, 1000) == []
    with pytest.raises(ConfigError, match="collide after rounding"):
        snapshot_steps({"count": 5, "orders": 1}, 3)


def test_snapshot_steps_beyond_the_run_are_refused(data):  # noqa: F811
    with pytest.raises(SpecError, match="snapshot_steps"):
        parse_spec(make_spec(data, snapshot_steps=[10, 40]))


@pytest.mark.slow
def test_snapshots_survive_interruption_and_deleted_outputs(data, tmp_path):  # noqa: F811
    spec = make_spec(data, kind="pretrain", snapshot_steps=SNAPSHOTS, patience=100)
    whole = tmp_path / "whole"
    train(spec, whole)
    expected = {step: load_file(path) for step, path in _snapshots(whole, spec).items()}
    assert all(path.exists() for path in _snapshots(whole, spec).values())

    resumed = tmp_path / "resumed"
    with pytest.raises(TrainingInterrupted):
        train({**spec, "stop_after_steps": 20}, resumed)
    # Snakemake deletes a failed job's outputs before the retry; the checkpoint keeps what is needed.
    shutil.rmtree(resumed / "snapshots")
    (resumed / "best.safetensors").unlink()
    train(spec, resumed)
    for step, path in _snapshots(resumed, spec).items():
        got = load_file(path)
        assert all((got[name] == tensor).all() for name, tensor in expected[step].items()), f"step {step}"
    assert (resumed / "best.safetensors").read_bytes() == (whole / "best.safetensors").read_bytes()
