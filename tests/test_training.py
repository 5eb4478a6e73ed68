import argparse
import contextlib
import itertools
import json
import logging
import math
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from transfer_scaling.io import read_json
from transfer_scaling.train.model import GPT, GPTConfig, WeightsMismatchError, load_weights
from transfer_scaling.tokens import load_token_array, write_token_array
from transfer_scaling.train.loop import DIVERGED, TrainingInterrupted
from transfer_scaling.train.engine import micro_batches
from transfer_scaling.train.run import INTERRUPTED_EXIT_CODE, train
from transfer_scaling.train.schedule import batch_starts, cooldown_from, learning_rate, validation_starts, windows
from transfer_scaling.train.spec import SpecError, parse_spec
from transfer_scaling.train.trainer import TrainingDiverged

EOT_ID = 256
TIMING_KEYS = ("wall_seconds", "tokens_per_second")


def write_bytes_tokens(path: Path, sources: list[str]) -> Path:
    """Byte-level token array (ids 0-255, end-of-document 256) of real Python source files."""
    texts = [Path(source).read_bytes() for source in sources]
    ids = np.concatenate([np.append(np.frombuffer(t, dtype=np.uint8).astype(np.uint16), EOT_ID) for t in texts])
    write_token_array(path, ids, chars=sum(len(t.decode("utf-8")) for t in texts))
    return path


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tokens")
    return {
        "train": write_bytes_tokens(root / "train.bin", [argparse.__file__, json.decoder.__file__]),
        "val": write_bytes_tokens(root / "val.bin", [textwrap.__file__]),
        "tiny": write_bytes_tokens(root / "tiny.bin", [json.__file__])
    }


def make_spec(data: dict[str, Path], **overrides) -> dict:
    spec = {
        "kind": "scratch", "model": {"n_layer": 1, "d_model": 16, "n_head": 2, "n_ctx": 32, "vocab_size": 257},
        "train_tokens": str(data["train"]), "val_tokens": str(data["val"]), "init_from": None,
        "seed": 3, "batch_size": 4, "threads": 1, "lr": 3e-3, "min_lr_ratio": 0.1, "warmup_steps": 4,
        "cooldown_fraction": 0.2, "weight_decay": 0.1, "grad_clip": 1.0, "betas": [0.9, 0.95], "max_steps": 30, "min_steps": 0,
        "eval_interval": 10, "eval_tokens": 256, "patience": 5, "checkpoint_interval": 10, "log_interval": 5,
        "precision": "fp32", "zero_stage": 0,
    }
    return {**spec, **overrides}


def read_metrics(run_dir: Path) -> list[dict]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k not in TIMING_KEYS} for line in lines]


def without_timing(summary: dict) -> dict:
    return {k: v for k, v in summary.items() if k not in TIMING_KEYS}


# ------------------------------------------------------------------------------------ spec and data
@pytest.mark.parametrize("change,message", [
    ({"lr": None}, "'lr'"),
    ({"batch_size": 0}, "'batch_size' must be an integer >= 1"),
    ({"precision": "fp16"}, "'precision' must be one of"),
    ({"zero_stage": 4}, "'zero_stage'"),
    ({"betas": [0.9]}, "'betas'"),
    ({"model": {"n_layer": 1, "d_model": 30, "n_head": 4, "n_ctx": 32, "vocab_size": 257}}, "not divisible"),
    ({"min_steps": 50}, "'min_steps' \\(50\\) exceeds 'max_steps' \\(30\\)"),
    ({"kind": "finetune"}, "'init_from'"),
    ({"init_from": "x.safetensors"}, "'init_from'"),
    ({"learning_rate": 1e-3}, "unknown keys \\['learning_rate'\\]"),
    ({"micro_batch_size": 3}, "'micro_batch_size' \\(3\\) does not divide 'batch_size' \\(4\\)"),
    ({"micro_batch_size": 0}, "'micro_batch_size' must be an integer >= 1"),
    ({"loss_chunk_tokens": -1}, "'loss_chunk_tokens' must be an integer >= 0"),
    ({"compile": "yes"}, "'compile' must be true or false"),
])
def test_spec_errors_name_the_key(data, change: dict, message: str) -> None:
    with pytest.raises(SpecError, match=message):
        parse_spec(make_spec(data, **change))


def test_missing_key_is_named(data) -> None:
    spec = make_spec(data)
    del spec["patience"]
    with pytest.raises(SpecError, match="missing keys \\['patience'\\]"):
        parse_spec(spec)


def test_learning_rate_warms_up_holds_then_cools_down_to_the_floor(data) -> None:
    run = parse_spec(make_spec(data, lr=1e-3, warmup_steps=10, max_steps=110, min_lr_ratio=0.1, eval_interval=10))
    assert learning_rate(run, 0) == pytest.approx(1e-4)
    assert learning_rate(run, 9) == pytest.approx(1e-3)
    assert learning_rate(run, 60) == learning_rate(run, 109) == pytest.approx(1e-3)
    cooldown = cooldown_from(run, 100)
    assert (cooldown.start, cooldown.steps, cooldown.end) == (100, 20, 120)
    assert learning_rate(run, 99, cooldown) == pytest.approx(1e-3)
    assert learning_rate(run, 104, cooldown) == pytest.approx(1e-3 * (0.1 + 0.9 * (1 - 0.5)))
    assert learning_rate(run, 119, cooldown) == pytest.approx(1e-4)
    rates = [learning_rate(run, s, cooldown) for s in range(100, 120)]
    assert all(a > b for a, b in zip(rates, rates[1:]))
    assert cooldown_from(run, 7).steps == 1 and cooldown_from(run, 7, min_steps=10).steps == 10


def test_batches_depend_on_seed_and_step_only() -> None:
    first = batch_starts(0, 7, 1000, 32, 8)
    assert np.array_equal(first, batch_starts(0, 7, 1000, 32, 8))
    assert not np.array_equal(first, batch_starts(0, 8, 1000, 32, 8))
    assert not np.array_equal(first, batch_starts(1, 7, 1000, 32, 8))
    assert first.min() >= 0 and first.max() <= 1000 - 33
    tokens = np.arange(100, dtype=np.uint16)
    x, y = windows(tokens, np.array([0, 50]), 8)
    assert x.tolist()[1] == list(range(50, 58)) and y.tolist()[1] == list(range(51, 59))


def test_validation_windows_are_fixed_and_spread() -> None:
    starts = validation_starts(10_000, 32, 320)
    assert len(starts) == 10 and starts[0] == 0 and starts[-1] == 10_000 - 33
    everything = validation_starts(1000, 32, 10**9)
    assert len(everything) == 999 // 32 and np.all(np.diff(everything) >= 32)


def test_train_array_shorter_than_a_window_is_refused(data, tmp_path) -> None:
    short = tmp_path / "short.bin"
    write_token_array(short, np.arange(20, dtype=np.uint16), chars=20)
    with pytest.raises(SpecError, match="fewer than n_ctx \\+ 1 = 33"):
        train(make_spec(data, train_tokens=str(short)), tmp_path / "run")


def test_token_outside_the_vocabulary_is_refused(data, tmp_path) -> None:
    model = {"n_layer": 1, "d_model": 16, "n_head": 2, "n_ctx": 32, "vocab_size": 256}
    with pytest.raises(SpecError, match="token id 256 is outside the model vocabulary"):
        train(make_spec(data, model=model), tmp_path / "run")


def test_batch_not_divisible_by_world_size_is_refused(data, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("WORLD_SIZE", "3")
    with pytest.raises(SpecError, match="'batch_size' \\(4\\) is not divisible by the world size \\(3\\)"):
        train(make_spec(data), tmp_path / "run")


# ------------------------------------------------------------------------------------ training runs
@pytest.mark.slow
def test_run_writes_outputs_and_is_deterministic(data, tmp_path) -> None:
    first = train(make_spec(data), tmp_path / "a")
    second = train(make_spec(data), tmp_path / "b")
    assert without_timing(first) == without_timing(second)
    assert read_metrics(tmp_path / "a") == read_metrics(tmp_path / "b")
    assert (tmp_path / "a/best.safetensors").read_bytes() == (tmp_path / "b/best.safetensors").read_bytes()
    assert first["stop_reason"] == "max_steps" and first["cooldown_start"] == first["stable_best_step"]
    assert first["steps"] == 30 + first["cooldown_steps"] and first["tokens_seen"] == first["steps"] * 4 * 32
    assert first["best_val_loss"] < math.log(257) - 1
    assert read_json(tmp_path / "a/summary.json") == first
    assert read_json(tmp_path / "a/model.json") == {**make_spec(data)["model"], "n_params": first["n_params"]}
    assert not (tmp_path / "a/checkpoint").exists()
    metrics = read_metrics(tmp_path / "a")
    assert first["stable_best_step"] == 30 and first["cooldown_steps"] == 10
    assert [m["step"] for m in metrics if m["event"] == "eval"] == [0, 10, 20, 30, 40]
    assert [m["step"] for m in metrics if m["event"] == "train"] == [5, 10, 15, 20, 25, 30, 35, 40]
    other_seed = train(make_spec(data, seed=4), tmp_path / "c")
    assert other_seed["best_val_loss"] != first["best_val_loss"]


@pytest.mark.slow
def test_interrupted_and_resumed_run_is_bit_identical(data, tmp_path) -> None:
    spec = make_spec(data, max_steps=40, eval_interval=5, checkpoint_interval=10)
    reference = train(spec, tmp_path / "a")
    with pytest.raises(TrainingInterrupted):
        train({**spec, "stop_after_steps": 17}, tmp_path / "b")
    assert read_json(tmp_path / "b/checkpoint/complete.json")["step"] == 17
    assert max(m["step"] for m in read_metrics(tmp_path / "b")) == 15
    with (tmp_path / "b/metrics.jsonl").open("a") as handle:
        handle.write(json.dumps({"event": "train", "step": 18, "train_loss": 0.0}) + '\n{"event": "tr')
    resumed = train(spec, tmp_path / "b")
    assert without_timing(resumed) == without_timing(reference)
    assert read_metrics(tmp_path / "b") == read_metrics(tmp_path / "a")
    assert (tmp_path / "a/best.safetensors").read_bytes() == (tmp_path / "b/best.safetensors").read_bytes()
    assert not (tmp_path / "b/checkpoint").exists()


@pytest.mark.slow
def test_early_stopping_waits_for_min_steps_and_patience(data, tmp_path) -> None:
    overfit = make_spec(data, train_tokens=str(data["tiny"]), lr=1e-2, warmup_steps=0, max_steps=400,
                        eval_interval=10, patience=2, checkpoint_interval=1000)
    stopped = train(overfit, tmp_path / "a")
    assert stopped["stop_reason"] == "early_stopping"
    assert stopped["steps"] == stopped["stable_best_step"] + 20 + stopped["cooldown_steps"]
    held = train({**overfit, "min_steps": stopped["steps"] + 50}, tmp_path / "b")
    assert held["steps"] >= stopped["steps"] + 50
    stable = list(itertools.takewhile(lambda m: m["event"] != "cooldown", read_metrics(tmp_path / "a")))
    assert read_metrics(tmp_path / "b")[:len(stable)] == stable


@pytest.mark.slow
def test_cooldown_starts_from_the_best_stable_step_and_its_best_weights_are_kept(data, tmp_path) -> None:
    overfit = make_spec(data, train_tokens=str(data["tiny"]), lr=1e-2, warmup_steps=0, max_steps=400,
                        eval_interval=10, patience=3, checkpoint_interval=1000, cooldown_fraction=0.5)
    summary = train(overfit, tmp_path / "run")
    metrics = read_metrics(tmp_path / "run")
    (cooldown,) = [m for m in metrics if m["event"] == "cooldown"]
    stable = [m for m in metrics if m["event"] == "eval" and m["phase"] == "stable"]
    best_stable = min(stable, key=lambda m: m["val_loss"])
    assert cooldown["reason"] == "early_stopping" and cooldown["step"] == best_stable["step"] + 30
    assert cooldown["start"] == summary["cooldown_start"] == summary["stable_best_step"] == best_stable["step"]
    assert summary["stable_best_val_loss"] == best_stable["val_loss"]
    annealed = [m for m in metrics if m["event"] == "eval" and m["phase"] == "cooldown"]
    assert [m["step"] for m in annealed][-1] == cooldown["start"] + cooldown["steps"]
    assert all(m["step"] > cooldown["start"] for m in annealed)
    best = min(annealed, key=lambda m: m["val_loss"])
    assert (summary["best_step"], summary["best_val_loss"]) == (best["step"], best["val_loss"])
    split = metrics.index(cooldown)
    before, after = ([m["lr"] for m in part if m["event"] == "train"] for part in (metrics[:split], metrics[split:]))
    assert before and all(rate == pytest.approx(1e-2) for rate in before)
    assert after and all(b < a for a, b in zip([1e-2, *after], after)) and after[-1] >= 1e-3 - 1e-12
    # The kept weights are the cooldown's best: evaluated again, they give its validation loss.
    config = GPTConfig(**overfit["model"])
    model = GPT(config)
    load_weights(model, tmp_path / "run/best.safetensors")
    val, _ = load_token_array(Path(overfit["val_tokens"]))
    starts = validation_starts(len(val), config.n_ctx, overfit["eval_tokens"])
    with torch.no_grad():
        _, loss = model(*windows(val, starts, config.n_ctx))
    assert loss.item() == pytest.approx(best["val_loss"], rel=1e-5)
    assert not (tmp_path / "run/stable_best").exists()


@pytest.mark.slow
def test_resume_in_the_middle_of_the_cooldown_is_bit_identical(data, tmp_path) -> None:
    spec = make_spec(data, max_steps=40, eval_interval=5, checkpoint_interval=7, cooldown_fraction=0.5)
    reference = train(spec, tmp_path / "a")
    stop_at = 40 + reference["cooldown_steps"] // 2
    with pytest.raises(TrainingInterrupted):
        train({**spec, "stop_after_steps": stop_at}, tmp_path / "b")
    assert read_json(tmp_path / "b/checkpoint/complete.json")["tag"] == f"cooldown{stop_at:08d}"
    resumed = train(spec, tmp_path / "b")
    assert without_timing(resumed) == without_timing(reference)
    assert read_metrics(tmp_path / "b") == read_metrics(tmp_path / "a")
    assert (tmp_path / "a/best.safetensors").read_bytes() == (tmp_path / "b/best.safetensors").read_bytes()


DIVERGING = {"lr": 1e30, "min_lr_ratio": 1.0, "warmup_steps": 0, "grad_clip": 0.0, "checkpoint_interval": 2}
DIAGNOSTIC = r"loss became nan at step 1 \(lr 1e\+30\); last finite loss 5\.\d+"


@pytest.mark.slow
def test_diverged_pretraining_stops_with_step_lr_and_last_finite_loss(data, tmp_path) -> None:
    with pytest.raises(TrainingDiverged, match=DIAGNOSTIC):
        train(make_spec(data, kind="pretrain", **DIVERGING), tmp_path / "run")
    assert not (tmp_path / "run/checkpoint").exists()
    assert not (tmp_path / "run/summary.json").exists()


@pytest.mark.slow
def test_diverged_scratch_run_is_recorded_as_failed_without_a_checkpoint(data, tmp_path, caplog) -> None:
    with caplog.at_level(logging.ERROR, logger="transfer_scaling.training"):
        summary = train(make_spec(data, **DIVERGING), tmp_path / "run")
    assert summary["status"] == "failed" and summary["stop_reason"] == DIVERGED
    assert re.fullmatch(DIAGNOSTIC + r"; no checkpoint written for this step", summary["error"])
    assert summary["best_step"] == 0 and math.isfinite(summary["best_val_loss"])
    assert read_json(tmp_path / "run/summary.json") == summary
    assert re.search(r"run diverged; recorded as failed .*: " + DIAGNOSTIC, caplog.text)
    assert read_metrics(tmp_path / "run")[-1] == {"event": DIVERGED, "step": summary["steps"],
                                                  "error": summary["error"]}
    assert not (tmp_path / "run/checkpoint").exists()
    weights = load_file(tmp_path / "run/best.safetensors")
    assert all(torch.isfinite(tensor).all() for tensor in weights.values())


@pytest.mark.slow
def test_finetune_starts_from_the_pretrained_weights(data, tmp_path) -> None:
    pretrained = train(make_spec(data, kind="pretrain"), tmp_path / "pre")
    weights = str(tmp_path / "pre/best.safetensors")
    finetuned = train(make_spec(data, kind="finetune", init_from=weights, max_steps=5), tmp_path / "ft")
    first_eval = read_metrics(tmp_path / "ft")[0]
    assert first_eval["step"] == 0 and first_eval["val_loss"] == pretrained["best_val_loss"]
    assert finetuned["best_val_loss"] <= pretrained["best_val_loss"]
    wider = {"n_layer": 1, "d_model": 32, "n_head": 2, "n_ctx": 32, "vocab_size": 257}
    with pytest.raises(WeightsMismatchError, match="pre/best.safetensors"):
        train(make_spec(data, kind="finetune", init_from=weights, model=wider), tmp_path / "bad")


@pytest.mark.slow
def test_zero_stage_2_matches_stage_0(data, tmp_path) -> None:
    spec = make_spec(data, max_steps=20)
    stage0 = train(spec, tmp_path / "stage0")
    stage2 = train({**spec, "zero_stage": 2}, tmp_path / "stage2")
    assert stage2["best_val_loss"] == pytest.approx(stage0["best_val_loss"], abs=1e-5)


def test_micro_batch_that_does_not_divide_a_ranks_share_is_refused(data, tmp_path, monkeypatch) -> None:
    """It divides the global batch of 12 (the spec check) but not the 6 sequences of each of 2 ranks."""
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(SpecError, match="'micro_batch_size' \\(4\\) does not divide the 6 sequences of each of the 2"):
        train(make_spec(data, micro_batch_size=4, batch_size=12), tmp_path / "run")
    assert micro_batches(12, 2, 32) == (6, 1), "a micro-batch above a rank's share takes the share"


def losses_of(run_dir: Path) -> list[float]:
    """Every train and validation loss of a run, in the order logged."""
    return [record[key] for record in read_metrics(run_dir) for key in ("train_loss", "val_loss") if key in record]


@pytest.mark.slow
@pytest.mark.parametrize("options", [{"micro_batch_size": 16}, {"micro_batch_size": 8, "loss_chunk_tokens": 50},
                                     {"activation_checkpointing": True}, {"compile": True}],
                         ids=["accumulation", "accumulation+chunked-loss", "activation-checkpointing", "compile"])
def test_memory_and_speed_options_leave_the_losses_as_they_were(data, tmp_path, options: dict) -> None:
    """A batch of 32 as 2 x 16 (or 4 x 8) accumulated micro-batches, the chunked loss, recomputed activations and a
    compiled model train the same run as the plain path: the data of a step depends on (seed, step) only, so
    every train and validation loss agrees to float32 summation order."""
    spec = make_spec(data, batch_size=32, max_steps=12, eval_interval=4, log_interval=2)
    plain = train(spec, tmp_path / "plain")
    other = train({**spec, **options}, tmp_path / "other")
    assert losses_of(tmp_path / "other") == pytest.approx(losses_of(tmp_path / "plain"), rel=1e-6)
    losses = ("best_val_loss", "stable_best_val_loss")
    assert [other[key] for key in losses] == pytest.approx([plain[key] for key in losses], rel=1e-6)
    assert {k: v for k, v in without_timing(other).items() if k not in losses} == \
        {k: v for k, v in without_timing(plain).items() if k not in losses}


@pytest.mark.slow
def test_zero_stage_3_bf16_trains_and_saves_gathered_weights(data, tmp_path) -> None:
    summary = train(make_spec(data, zero_stage=3, precision="bf16"), tmp_path / "run")
    initial = read_metrics(tmp_path / "run")[0]["val_loss"]
    assert summary["best_val_loss"] < initial - 0.5
    model = GPT(GPTConfig(**make_spec(data)["model"]))
    load_weights(model, tmp_path / "run/best.safetensors")
    assert all(p.abs().sum() > 0 for name, p in model.named_parameters() if name.endswith("weight"))


def run_cli(spec: dict, out: Path, launcher: list[str]) -> subprocess.Popen:
    spec_path = out.parent / f"{out.name}.json"
    spec_path.write_text(json.dumps(spec))
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT")}
    command = [*launcher, "-m", "transfer_scaling.train", "--spec", str(spec_path), "--out", str(out)]
    return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_train_spec_takes_a_run_record_as_well_as_a_trainer_spec(data, tmp_path) -> None:
    """``--spec`` points users at a run directory's spec.json, the run record: its trainer member is the spec."""
    spec = make_spec(data, max_steps=6, eval_interval=3)
    record = {"source": "text", "size": "s", "data_chars": 1, "trainer": spec}
    process = run_cli(record, tmp_path / "from_record", [sys.executable])
    output, _ = process.communicate(timeout=120)
    assert process.returncode == 0, output
    train(spec, tmp_path / "from_spec")
    assert ((tmp_path / "from_record/best.safetensors").read_bytes()
            == (tmp_path / "from_spec/best.safetensors").read_bytes())


@pytest.mark.slow
def test_sigterm_checkpoints_and_exits_for_resume(data, tmp_path) -> None:
    process = run_cli(make_spec(data, max_steps=10**6, eval_interval=10**5), tmp_path / "run", [sys.executable])
    metrics = tmp_path / "run/metrics.jsonl"
    deadline = time.monotonic() + 60
    while not (metrics.exists() and metrics.stat().st_size) and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(0.5)
    process.send_signal(signal.SIGTERM)
    output, _ = process.communicate(timeout=60)
    assert process.returncode == INTERRUPTED_EXIT_CODE, output
    assert "received SIGTERM" in output and "rerun to resume" in output
    assert read_json(tmp_path / "run/checkpoint/complete.json")["step"] > 0


@pytest.mark.slow
def test_two_ranks_match_one_process_with_the_same_global_batch(data, tmp_path) -> None:
    spec = make_spec(data, max_steps=20, log_interval=20, eval_interval=20)
    single = train(spec, tmp_path / "one")
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    process = run_cli(spec, tmp_path / "two", torchrun)
    output, _ = process.communicate(timeout=300)
    assert process.returncode == 0, output
    assert "parameters identical on all 2 ranks" in output
    double = read_json(tmp_path / "two/summary.json")
    assert double["steps"] == single["steps"]
    assert double["best_val_loss"] == pytest.approx(single["best_val_loss"], abs=1e-5)
    one, two = ([m["train_loss"] for m in read_metrics(tmp_path / run) if m["event"] == "train"]
                for run in ("one", "two"))
    assert len(one) == len(two) == 2  # the stable phase's 20 steps, then the cooldown's
    assert two == pytest.approx(one, abs=1e-5)


def gloo_threads() -> set[str]:
    """Ids of this process's gloo threads, by the names torch gives them (Linux, as on the clusters)."""
    tasks = Path("/proc/self/task").iterdir()
    return {task.name for task in tasks if (task / "comm").read_text().strip() in ("pt_gloo_runloop", "gloo_tcp_loop")}


@pytest.mark.slow
@pytest.mark.parametrize("stop_after_steps", [None, 10])
def test_train_joins_the_gloo_threads_it_started(data, tmp_path, stop_after_steps: int | None) -> None:
    """A gloo worker still releasing a finished collective when the interpreter exits is ended inside a noexcept
    destructor: 'terminate called without an active exception', SIGABRT, and a finished run exits 134."""
    before = gloo_threads()
    spec = make_spec(data, max_steps=20, stop_after_steps=stop_after_steps)
    with pytest.raises(TrainingInterrupted) if stop_after_steps else contextlib.nullcontext():
        train(spec, tmp_path / "run")
    assert not gloo_threads() - before


@pytest.mark.slow
def test_deepspeed_op_probe_prints_no_linker_error(data, tmp_path) -> None:
    """DeepSpeed's op table probes async_io by linking a test program against libaio. It silences sys.stderr's
    descriptor, a job log in the pipeline (log_to_file), so without libaio the linker's error reached the
    terminal from every training job."""
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps(make_spec(data, max_steps=2, eval_interval=2)))
    script = textwrap.dedent(f"""
        import sys
        from transfer_scaling.io import read_json
        from transfer_scaling.logs import log_to_file
        from transfer_scaling.train.engine import import_deepspeed
        from transfer_scaling.train.run import train_to_exit_code
        log_to_file({str(tmp_path / "job.log")!r})
        import_deepspeed()
        sys.exit(train_to_exit_code(read_json({str(spec)!r}), {str(tmp_path / "run")!r}))
    """)
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT")}
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, (tmp_path / "job.log").read_text()
    assert "cannot find -laio" not in result.stderr and "collect2" not in result.stderr, result.stderr
