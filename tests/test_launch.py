"""The launcher: process layout from SLURM's environment, torchrun's arguments, and real gloo runs through it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from test_training import data, make_spec, read_metrics  # noqa: F401  (data is a fixture)
from transfer_scaling.train import launch
from transfer_scaling.io import read_json
from transfer_scaling.train.launch import Allocation, LaunchError
from transfer_scaling.train.run import INTERRUPTED_EXIT_CODE, train

TWO_NODES = {"SLURM_JOB_ID": "4321", "SLURM_JOB_NODELIST": "gpu01,gpu02", "SLURM_GPUS_ON_NODE": "4"}


def test_nothing_allocated_means_no_allocation() -> None:
    assert launch.slurm_allocation({}) is None


def test_allocation_from_slurm_variables() -> None:
    allocation = launch.slurm_allocation(TWO_NODES)
    assert allocation == Allocation(job_id="4321", hosts=("gpu01", "gpu02"), gpus_per_node=4)
    assert allocation.head == "gpu01"
    assert allocation.rendezvous_port == 29500 + 4321


@pytest.mark.parametrize("alloc_tres,gpus", [
    ("cpu=2,mem=500M,node=1,billing=2,gres/gpu=1", 1),
    ("cpu=8,mem=4G,node=2,billing=8,gres/gpu:a100=8,gres/gpu=8", 8),
    ("cpu=1,mem=100M,node=1,billing=1", 0),
])
def test_allocated_gpus_read_from_alloc_tres(alloc_tres: str, gpus: int) -> None:
    assert launch.allocated_gpus(alloc_tres) == gpus


@pytest.mark.parametrize("requested,env,expected", [
    (3, TWO_NODES, 3),  # --nproc wins
    (None, TWO_NODES, 4),  # one per GPU of the node
    (None, {"CUDA_VISIBLE_DEVICES": "0,1"}, 2),
    (None, {"CUDA_VISIBLE_DEVICES": ""}, 1),
    (None, {}, 1),
])
def test_processes_per_node(requested: int | None, env: dict, expected: int) -> None:
    assert launch.processes_per_node(requested, launch.slurm_allocation(env), env) == expected


def test_nproc_below_one_is_refused() -> None:
    with pytest.raises(LaunchError, match="--nproc must be at least 1, got 0"):
        launch.processes_per_node(0, None, {})


def test_one_node_runs_torchrun_standalone() -> None:
    args = launch.torchrun_args(2, None, Path("s.json"), Path("run"))
    assert args[:3] == ["--standalone", "--nnodes", "1"]
    assert args[-6:] == ["--module", "transfer_scaling.train", "--spec", "s.json", "--out", "run"]


def test_several_nodes_meet_at_the_head_node() -> None:
    allocation = launch.slurm_allocation(TWO_NODES)
    args = launch.torchrun_args(4, allocation, Path("s.json"), Path("run"))
    assert args[:8] == ["--nnodes", "2", "--rdzv-backend", "c10d", "--rdzv-endpoint", "gpu01:33821",
                        "--rdzv-id", "4321"]
    srun = launch.srun_command(allocation, 4, Path("s.json"), Path("run"))
    assert srun[:6] == ["srun", "--jobid=4321", "--nodes=2", "--ntasks=2", "--ntasks-per-node=1",
                        "--gpus-per-node=4"]
    assert srun[-7:] == ["--on-node", "--nproc", "4", "--spec", "s.json", "--out", "run"]


def test_signal_deaths_read_as_shell_exit_codes() -> None:
    assert launch.exit_code_of(-signal.SIGTERM) == 128 + signal.SIGTERM
    assert launch.exit_code_of(INTERRUPTED_EXIT_CODE) == INTERRUPTED_EXIT_CODE


def test_missing_scontrol_is_named(monkeypatch) -> None:
    monkeypatch.setenv("PATH", "")
    with pytest.raises(LaunchError, match="scontrol is not on PATH"):
        launch.slurm_allocation({"SLURM_JOB_ID": "7", "SLURM_JOB_NODELIST": "gpu[01-02]", "SLURM_GPUS_ON_NODE": "1"})


# ------------------------------------------------------------------------------------ real processes
def start_launcher(spec: dict, out: Path, nproc: int) -> subprocess.Popen:
    spec_path = out.parent / f"{out.name}.json"
    spec_path.write_text(json.dumps(spec))
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("SLURM_") and k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT")}
    command = [sys.executable, "-m", "transfer_scaling.train.launch", "--nproc", str(nproc), "--spec", str(spec_path),
               "--out", str(out)]
    return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def wait_for_metrics(run_dir: Path, process: subprocess.Popen, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    metrics = run_dir / "metrics.jsonl"
    while not (metrics.exists() and len(metrics.read_text().splitlines()) >= 2):
        assert process.poll() is None, process.communicate()[0]
        assert time.monotonic() < deadline, "no training metrics before the timeout"
        time.sleep(0.2)


@pytest.mark.slow
def test_two_gloo_processes_stop_on_sigterm_resume_and_match_one_process(data, tmp_path) -> None:  # noqa: F811
    """SIGTERM to the launcher alone reaches both trainers: they checkpoint, the launcher exits 75, and the
    rerun ends where one uninterrupted process with the same global batch ends."""
    spec = make_spec(data, max_steps=1000, log_interval=10, eval_interval=100, checkpoint_interval=1000)
    single = train(spec, tmp_path / "one")

    process = start_launcher(spec, tmp_path / "two", nproc=2)
    wait_for_metrics(tmp_path / "two", process)
    process.send_signal(signal.SIGTERM)
    output, _ = process.communicate(timeout=120)
    assert process.returncode == INTERRUPTED_EXIT_CODE, output
    stopped = read_json(tmp_path / "two/checkpoint/complete.json")
    assert 0 < stopped["step"] < spec["max_steps"], output

    process = start_launcher(spec, tmp_path / "two", nproc=2)
    output, _ = process.communicate(timeout=300)
    assert process.returncode == 0, output
    assert f"resumed from checkpoint {stopped['tag']} at step {stopped['step']}" in output
    assert "parameters identical on all 2 ranks" in output
    double = read_json(tmp_path / "two/summary.json")
    assert double["steps"] == single["steps"] == spec["max_steps"] + single["cooldown_steps"]
    assert double["best_val_loss"] == pytest.approx(single["best_val_loss"], abs=1e-5)
    one, two = ([m["train_loss"] for m in read_metrics(tmp_path / run) if m["event"] == "train"]
                for run in ("one", "two"))
    assert len(two) == len(one) and two == pytest.approx(one, abs=1e-5)


@pytest.mark.slow
def test_one_process_trains_in_the_launcher(data, tmp_path) -> None:  # noqa: F811
    spec = make_spec(data, max_steps=10, eval_interval=10)
    process = start_launcher(spec, tmp_path / "run", nproc=1)
    output, _ = process.communicate(timeout=120)
    assert process.returncode == 0, output
    summary = read_json(tmp_path / "run/summary.json")
    assert summary["steps"] == 10 + summary["cooldown_steps"]


def test_one_process_outside_slurm_trains_in_this_process_without_torchrun(monkeypatch, tmp_path) -> None:
    calls = []
    monkeypatch.setattr(launch, "train_main", lambda args: calls.append(args) or 0)
    monkeypatch.setattr(launch, "run_agent", lambda args: pytest.fail(f"torchrun's agent started: {args}"))
    assert launch.launch(tmp_path / "spec.json", tmp_path / "run", env={}) == 0
    assert calls == [["--spec", str(tmp_path / "spec.json"), "--out", str(tmp_path / "run")]]
