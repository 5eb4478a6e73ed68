"""Faults: SIGKILL at every checkpoint position, divergence, a full disk and a missing device, for the trainer
alone and for jobs of the smoke pipeline; and bit-for-bit determinism of the evaluation on CPU. Kill points are
fixed (none is drawn at random), so a run of the suite tests the same positions as every other.

The pipeline tests share one finished smoke study (the reference) and work on copies of it.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pandas as pd
import pytest

from conftest import SNAKEMAKE, ROOT, new_study, run_workflow
from test_training import data, make_spec, read_metrics, run_cli, without_timing  # noqa: F401 (data: fixture)
from transfer_scaling.evaluate.heldout import evaluate
from transfer_scaling.io import read_json
from transfer_scaling.train.model import GPT, GPTConfig, save_weights
from transfer_scaling.tokens import write_token_array
from transfer_scaling.train.engine import DeviceError, import_deepspeed
from transfer_scaling.train.run import train

SMOKE = ("--configfile", "presets/smoke.yaml")
RESULTS = "results/smoke"
"""The smoke study's folder (presets/smoke.yaml: study: smoke), relative to a study directory."""
LOSS_COLUMNS = ["run", "test_loss", "test_loss_per_token", "best_val_loss", "steps", "best_step", "tokens_seen"]
KILLER = Path(__file__).with_name("sigkill_after_checkpoint.py")


def wait_for_checkpoint(run_dir: Path, step: int, process: subprocess.Popen, timeout: float = 300) -> None:
    """Return as soon as ``run_dir`` holds a complete checkpoint of ``step`` or later."""
    marker = run_dir / "checkpoint" / "complete.json"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if read_json(marker)["step"] >= step:
                return
        except FileNotFoundError:
            pass
        if process.poll() is not None:
            raise AssertionError(f"the process ended ({process.returncode}) before a checkpoint of step {step}")
        time.sleep(0.005)
    raise AssertionError(f"no checkpoint of step {step} in {run_dir} after {timeout} s")


# ------------------------------------------------------------------------------------ atomic writes

APPEND_ONLY = {
    ("logs.py", "open"): "a job's log, appended line by line, kept across reruns",
    ("launch.py", "open"): "the same job log, appended by the ranks a launcher starts",
    ("loop.py", "open"): "metrics.jsonl, appended per event; a resume restores the checkpoint's copy",
}
DIRECT_WRITES = {"open", "write_text", "write_bytes", "torch.save", "np.save", "numpy.save", "json.dump"}


def direct_writes(path: Path) -> list[tuple[str, int]]:
    """Calls in ``path`` that write a file in place (open in a write mode, write_text, torch.save, ...)."""
    found = []
    for call in (n for n in ast.walk(ast.parse(path.read_text(encoding="utf-8"))) if isinstance(n, ast.Call)):
        name = ast.unparse(call.func)
        short = name.rsplit(".", 1)[-1] if name.endswith(("write_text", "write_bytes")) else name
        if short not in DIRECT_WRITES:
            continue
        if short == "open":
            mode = call.args[1] if len(call.args) > 1 else next((k.value for k in call.keywords if k.arg == "mode"), None)
            if not (isinstance(mode, ast.Constant) and set(mode.value) & set("wax+")):
                continue
        found.append((short, call.lineno))
    return found


def test_package_writes_files_only_through_the_atomic_helpers() -> None:
    """io.atomic_path/atomic_open/write_json are the only writers, besides the two append-only streams."""
    package = ROOT / "src" / "transfer_scaling"
    offences = [f"{path.name}:{line} {name}" for path in sorted(package.rglob("*.py")) if path.name != "io.py"
                for name, line in direct_writes(path) if (path.name, name) not in APPEND_ONLY]
    assert offences == []
    io_writes = direct_writes(package / "io.py")
    assert io_writes and all(name in ("open", "json.dump") for name, _ in io_writes)


# ------------------------------------------------------------------------------------ the trainer alone


@pytest.mark.slow
def test_trainer_killed_twice_resumes_bit_identical(data, tmp_path: Path) -> None:
    """SIGKILL from outside (no handler, no checkpoint on the way out) once a checkpoint of a chosen step is
    complete, each rerun a new process. The kills land a few steps later depending on the machine's speed;
    the resumed run must equal the uninterrupted one wherever they land. The two chosen checkpoints are the
    first ones past a snapshot's cooldown, which carries the count of steps over a log and a checkpoint
    boundary."""
    spec = make_spec(data, max_steps=200, eval_interval=20, checkpoint_interval=10, patience=100, log_interval=10,
                     snapshot_steps=[47, 128])
    reference = run_cli(spec, tmp_path / "reference", [sys.executable])
    assert reference.wait(timeout=300) == 0, reference.stdout.read()
    for kill_after in spec["snapshot_steps"]:
        process = run_cli(spec, tmp_path / "killed", [sys.executable])
        wait_for_checkpoint(tmp_path / "killed", kill_after, process)
        process.kill()
        assert process.wait(timeout=60) == -signal.SIGKILL
    resumed = run_cli(spec, tmp_path / "killed", [sys.executable])
    output, _ = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, output
    assert "resumed from checkpoint" in output, f"killed after steps {spec['snapshot_steps']}, yet nothing to resume:\n{output}"
    assert_same_run(tmp_path / "killed", tmp_path / "reference")


def assert_same_run(run_dir: Path, reference_dir: Path) -> None:
    """Weights, snapshots, summary and the metrics log record for record, timing fields aside."""
    weights = sorted(p.relative_to(reference_dir) for p in reference_dir.rglob("*.safetensors*"))
    assert weights == sorted(p.relative_to(run_dir) for p in run_dir.rglob("*.safetensors*"))
    for name in weights:
        assert (run_dir / name).read_bytes() == (reference_dir / name).read_bytes(), name
    assert without_timing(read_json(run_dir / "summary.json")) == without_timing(read_json(reference_dir / "summary.json"))
    assert read_metrics(run_dir) == read_metrics(reference_dir)


CHECKPOINT_WRITTEN = re.compile(r"checkpoint (\w+) written at step (\d+)")
RESUMED = re.compile(r"resumed from checkpoint (\w+) at step (\d+)")


@pytest.mark.slow
@pytest.mark.parametrize("extra_steps", [0, 10])
def test_smoke_pretraining_killed_at_every_checkpoint_resumes_bit_identical(smoke_study: Path, tmp_path: Path,
                                                                            extra_steps: int) -> None:
    """The smoke study's text+code pretraining (four annealed snapshots), SIGKILLed at every checkpoint position
    in turn: each process resumes from the previous one's last checkpoint and kills itself ``extra_steps``
    training steps after its own first checkpoint (0: as the checkpoint is marked complete; 10: half an
    interval later, with metrics, weights and a snapshot's branch written past it). The last process finishes;
    every output equals the uninterrupted run's."""
    run = "pretrain/text_code/m"
    reference_dir = smoke_study / RESULTS / "runs" / run
    positions = CHECKPOINT_WRITTEN.findall(log_of(smoke_study, run))
    steps_trained = [int(tag[-8:]) for tag, _ in positions]
    assert any(trained != int(step) for trained, (_, step) in zip(steps_trained, positions)), \
        "no checkpoint falls after a snapshot's cooldown"
    assert extra_steps < read_json(reference_dir / "spec.json")["trainer"]["checkpoint_interval"]
    out = tmp_path / "killed"
    resumed_from = []
    for position in range(len(positions) + 1):
        command = [sys.executable, str(KILLER), "--extra-steps", str(extra_steps),
                   "--spec", str(reference_dir / "spec.json"), "--out", str(out)]
        result = subprocess.run(command, cwd=smoke_study, capture_output=True, text=True, timeout=300)
        resumed_from += RESUMED.findall(result.stderr)
        expected = 0 if position == len(positions) else -signal.SIGKILL
        assert result.returncode == expected, f"process {position}: {result.stderr[-3000:]}"
    assert resumed_from == positions
    assert_same_run(out, reference_dir)


@pytest.mark.slow
def test_same_config_and_seed_give_the_same_test_loss_bit_for_bit(data, tmp_path: Path) -> None:
    """Two trainings of one spec in separate processes, each evaluated: equal to the last bit on CPU."""
    spec = make_spec(data, max_steps=40)
    test = tmp_path / "test.bin"
    tokens = (Path(argparse.__file__).read_bytes() + Path(textwrap.__file__).read_bytes())[:20_000]
    write_token_array(test, list(tokens), chars=len(tokens))
    results = []
    for name in ("a", "b"):
        process = run_cli(spec, tmp_path / name, [sys.executable])
        assert process.wait(timeout=300) == 0, process.stdout.read()
        results.append(evaluate(tmp_path / name / "best.safetensors", tmp_path / name / "model.json", test))
    assert results[0] == results[1]
    assert (tmp_path / "a/best.safetensors").read_bytes() == (tmp_path / "b/best.safetensors").read_bytes()


def test_gpus_granted_but_not_usable_are_refused_before_training(data, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    with pytest.raises(DeviceError, match=r"CUDA_VISIBLE_DEVICES='0,1' asks for GPU\(s\), but torch .* sees no usable"):
        train(make_spec(data), tmp_path / "run")
    assert not (tmp_path / "run").exists(), "refused before the run directory is made"


def test_bf16_on_an_accelerator_without_it_is_refused(data, tmp_path, monkeypatch) -> None:
    """No accelerator here lacks bf16 (the CPU has it), so this one case stands in for an old GPU."""
    accelerator = import_deepspeed().get_accelerator()
    monkeypatch.setattr(accelerator, "is_bf16_supported", lambda: False)
    with pytest.raises(DeviceError, match="'precision' is 'bf16', but the cpu accelerator .* use precision fp32"):
        train(make_spec(data, precision="bf16"), tmp_path / "run")
    assert not list((tmp_path / "run").iterdir())


@pytest.fixture()
def small_disk(tmp_path: Path):
    """A 96 KiB tmpfs; skipped where mounting is not permitted."""
    mount_point = tmp_path / "small-disk"
    mount_point.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=96k", "tmpfs", str(mount_point)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", str(mount_point)], check=True)


def test_full_disk_is_named_as_the_cause_and_leaves_nothing(small_disk: Path) -> None:
    weights = small_disk / "best.safetensors"
    with pytest.raises(OSError, match=f"no space left on the device holding {small_disk} while writing "
                                      f"best.safetensors .*SafetensorError"):
        save_weights(GPT(GPTConfig(n_layer=2, d_model=64, n_head=2, n_ctx=64, vocab_size=257)).state_dict(), weights)
    assert list(small_disk.iterdir()) == []


# ------------------------------------------------------------------------------------ the smoke pipeline


@pytest.fixture(scope="module")
def smoke_study(tmp_path_factory) -> Path:
    """The smoke pipeline up to the runs table, run once without faults: the reference every fault is
    compared with."""
    study = new_study(tmp_path_factory.mktemp("reference") / "study")
    started = time.monotonic()
    run_workflow(study, f"{RESULTS}/runs.csv", *SMOKE, timeout=1800)
    print(f"reference smoke pipeline: {time.monotonic() - started:.0f} s")
    return study


def copy_study(reference: Path, target: Path, *runs: str) -> Path:
    """A copy of the finished study (timestamps and Snakemake metadata kept) without the given runs."""
    shutil.copytree(reference, target, symlinks=True)
    for run in runs:
        shutil.rmtree(target / RESULTS / "runs" / run)
    return target


def kill_study(process: subprocess.Popen, study: Path) -> None:
    """SIGKILL Snakemake's process group, then any job of this study that left the group."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=60)
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and os.readlink(proc / "cwd").startswith(str(study)):
                os.kill(int(proc.name), signal.SIGKILL)
        except (FileNotFoundError, PermissionError, ProcessLookupError):
            continue


def log_of(study: Path, run: str) -> str:
    return (study / RESULTS / "logs" / f"{run}.log").read_text(encoding="utf-8")


@pytest.mark.slow
def test_pipeline_killed_mid_pretraining_resumes_bit_identical(smoke_study: Path, tmp_path: Path) -> None:
    run = "pretrain/text_code/m"
    study = copy_study(smoke_study, tmp_path / "study", run)
    (study / RESULTS / "runs.csv").unlink()  # with the table present, Snakemake would not redo a deleted run
    run_dir = study / RESULTS / "runs" / run
    # The checkpoint that ends the cooldown of the largest stable snapshot: the log interval is open there.
    kill_after = read_json(smoke_study / RESULTS / "runs" / run / "spec.json")["trainer"]["snapshot_steps"][-2]
    command = [str(SNAKEMAKE), "-s", str(ROOT / "Snakefile"), "-d", str(study), f"{RESULTS}/runs.csv", *SMOKE]
    process = subprocess.Popen(command, cwd=study, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               start_new_session=True)
    try:
        wait_for_checkpoint(run_dir, kill_after, process)
    finally:
        kill_study(process, study)
    assert not (run_dir / "summary.json").exists(), "the job finished before the kill"

    run_workflow(study, "--unlock", *SMOKE)
    run_workflow(study, f"{RESULTS}/runs.csv", "--rerun-incomplete", *SMOKE, timeout=1800)
    assert "resumed from checkpoint" in log_of(study, run)
    assert_same_run(run_dir, smoke_study / RESULTS / "runs" / run)
    table, reference = (pd.read_csv(s / RESULTS / "runs.csv")[LOSS_COLUMNS] for s in (study, smoke_study))
    pd.testing.assert_frame_equal(table, reference)


@pytest.mark.slow
def test_pipeline_records_diverged_runs_as_failed_and_the_fit_lists_them(smoke_study: Path, tmp_path: Path) -> None:
    """A weight decay of 1e30 makes a run diverge within two steps (the schema caps lr at 1, which cannot make
    AdamW diverge). Only the two deleted runs are redone (``--rerun-triggers mtime``); they end as failed rows,
    and the table, the fit and its figures are built from the rest without ``--keep-going``."""
    diverged = ["finetune/text/s/d3000_seed0", "scratch/s/d100000_seed0"]
    study = copy_study(smoke_study, tmp_path / "study", *diverged)
    (study / "diverge.yaml").write_text("finetune: {options: {weight_decay: 1.0e+30}}\n"
                                        "scratch: {options: {weight_decay: 1.0e+30}}\n")
    # Missing runs are only redone when named: with the mtime trigger alone, the existing runs.csv stands.
    evaluations = [f"{RESULTS}/runs/{run}/eval.json" for run in diverged]
    run_workflow(study, f"{RESULTS}/figures", *evaluations, "--rerun-triggers", "mtime", *SMOKE, "diverge.yaml",
                 timeout=1800)
    for run in diverged:
        assert re.search(r"run diverged; recorded as failed .*: loss became nan at step \d+ \(lr [-+.e\d]+\); "
                         r"last finite loss \d", log_of(study, run)), log_of(study, run)[-2000:]
        summary = read_json(study / RESULTS / "runs" / run / "summary.json")
        assert (summary["status"], summary["stop_reason"]) == ("failed", "diverged")
        assert not (study / RESULTS / "runs" / run / "checkpoint").exists()
    table = pd.read_csv(study / RESULTS / "runs.csv").set_index("run")
    reference = pd.read_csv(smoke_study / RESULTS / "runs.csv").set_index("run")
    assert sorted(table.index[table["status"] == "failed"]) == diverged
    assert (table.loc[diverged, "stop_reason"] == "diverged").all()
    kept = reference.index.difference(diverged)
    pd.testing.assert_frame_equal(table.loc[kept, LOSS_COLUMNS[1:]], reference.loc[kept, LOSS_COLUMNS[1:]])
    fit = read_json(study / RESULTS / "fit" / "transfer_fit.json")
    assert sorted(run["run"] for run in fit["failed_runs"]) == diverged
    assert [p["status"] for p in fit["points"]
            if (p["source"], p["n_params"], p["d_f_chars"]) == ("text", table.at[diverged[0], "n_params"],
                                                                  table.at[diverged[0], "data_chars"])] == ["failed"]
    fit_log = (study / RESULTS / "logs" / "fit.log").read_text(encoding="utf-8")
    assert all(f"failed run left out of the fit: {run.split('/')[0]} {run} " in fit_log for run in diverged), fit_log


def rerun_scratch(study: Path, run: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return run_workflow(study, f"{RESULTS}/runs/{run}/summary.json", *SMOKE, env=env, check=False)


@pytest.mark.slow
def test_pipeline_job_asking_for_a_missing_gpu_fails_with_the_cause(smoke_study: Path, tmp_path: Path) -> None:
    run = "scratch/s/d3000_seed0"
    study = copy_study(smoke_study, tmp_path / "study", run)
    result = rerun_scratch(study, run, env={"CUDA_VISIBLE_DEVICES": "0"})
    assert result.returncode != 0
    log = log_of(study, run).strip()
    assert log.splitlines()[-1].startswith("transfer_scaling.train.engine.DeviceError: CUDA_VISIBLE_DEVICES='0' asks "
                                           "for GPU(s), but torch"), log[-2000:]
    assert log.count('File "') <= 6, f"a deep traceback:\n{log}"
    assert not list((study / RESULTS / "runs" / run).glob("*.safetensors"))


@pytest.mark.slow
def test_pipeline_job_on_a_full_disk_fails_with_the_cause(smoke_study: Path, tmp_path: Path, small_disk: Path) -> None:
    run = "scratch/m/d30000_seed0"
    study = copy_study(smoke_study, tmp_path / "study", run)
    (study / RESULTS / "runs" / run).symlink_to(small_disk, target_is_directory=True)
    result = rerun_scratch(study, run)
    assert result.returncode != 0
    log = log_of(study, run)
    assert "OSError: [Errno 28] no space left on the device holding" in log, log[-3000:]
    assert not list(small_disk.rglob("*.tmp")), "a temporary file was left behind"
