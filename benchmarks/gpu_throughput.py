"""Throughput, memory and overheads of the project's trainer on one GPU, against plain PyTorch.

For each size of presets/paper.yaml, with that preset's settings for a job on one GPU (context 1024, the 50,257-token
BPE, global batch 256 x 1024, bf16, ZeRO-2, each size's micro_batch_size, the chunked loss, compile), on random
token ids (throughput does not depend on the data):

- the trainer: ``transfer_scaling.train.run.train`` in a subprocess per configuration, its methods wrapped to time
  every evaluation, weights write, state save and checkpoint; steady tokens/s from the metrics.jsonl intervals
  that hold none of those; the rest of the run's wall time split into one-time (start-up, compilation) and
  recurring costs, and those projected onto a paper-length pretraining run (presets/paper.yaml);
- a plain-torch reference of the same model, micro-batch and accumulation (bf16 weights with float32 master
  weights as DeepSpeed keeps them, fused AdamW, gradient clipping), compiled and eager.

The preset's compile setting and the compiled reference come first for every size, largest first; the other
setting and the eager reference follow as --budget-s allows. MFU and the trainer / compiled-reference ratio are
printed per size.

Modes: ``throughput`` (the above), ``search`` (per size, the largest power-of-two micro-batch whose peak memory
stays under a budget, largest first, out-of-memory caught), ``determinism`` (a small run uninterrupted, again, and
stopped at a checkpoint then resumed: losses record for record and weights, deterministic on and off).

    python benchmarks/gpu_throughput.py --out throughput.json
    python benchmarks/gpu_throughput.py --search --out search.json
    python benchmarks/gpu_throughput.py --mode determinism --out determinism.json
    # the plumbing on a CPU: a 2-layer model, context 128, vocabulary 257 (under a minute; two with compile on)
    python benchmarks/gpu_throughput.py --device cpu --sizes tiny --trainer-compile off --out /tmp/throughput.json
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from transfer_scaling.plan import non_embedding_params as n_params

ROOT = Path(__file__).resolve().parents[1]
PAPER = ROOT / "presets" / "paper.yaml"
DEFAULTS = ROOT / "config.yaml"
SCHEMA = ROOT / "workflow" / "schemas" / "config.schema.yaml"
TINY = {"name": "tiny", "n_layer": 2, "d_model": 64, "n_head": 4}
TINY_MICRO_BATCH = 8
TINY_SETTINGS = {"context": 128, "vocab": 257, "batch": 16, "threads": 1, "precision": "fp32", "zero_stage": 2,
                 "loss_chunk_tokens": 512, "activation_checkpointing": False, "deterministic": True, "compile": False}
PRESET_OPTIONS = ("threads", "precision", "zero_stage", "loss_chunk_tokens", "activation_checkpointing",
                  "deterministic", "compile")
# Dense bf16 peaks (vendor datasheets); the first name found in the device name wins.
PEAK_TFLOPS = (("H100 PCIe", 756.0), ("H100 NVL", 835.0), ("H100", 989.4), ("H200", 989.4), ("GH200", 989.4),
               ("A100", 312.0), ("L40S", 362.05), ("L4", 121.0))
MFU_FORMULA = "MFU = tokens/s x (6 (N + V d) + 12 L T d) / peak; N non-embedding parameters, V d the tied head, " \
              "12 L T d attention (T context); recomputation under activation checkpointing not counted"
OOM_MARKERS = ("OutOfMemoryError", "CUDA out of memory", "out of memory")
EVENTS = "events.json"
TIMED_METHODS = {"evaluate", "validation_loss", "write_weights", "save_checkpoint", "start_cooldown", "save_state",
                 "load_state"}
"""Methods of the trainer, its run loop and its checkpoints whose every call is timed (wherever defined)."""


# ------------------------------------------------------------------------------------------- shapes and FLOPs
def load_yaml(path: Path) -> dict:
    with open(path, encoding="utf-8") as handle:
        return yaml.safe_load(handle)


def merge(base: dict, update: dict) -> dict:
    """Snakemake's --configfile rule: mappings merge key by key, anything else replaces."""
    merged = dict(base)
    for key, value in update.items():
        merged[key] = merge(merged[key], value) if isinstance(value, dict) and isinstance(merged.get(key), dict) \
            else value
    return merged


def paper_config() -> dict:
    """config.yaml with presets/paper.yaml over it, schema defaults filled where the package can validate it."""
    config = merge(load_yaml(DEFAULTS), load_yaml(PAPER))
    try:
        from transfer_scaling.config import load_schema, validate_config
        validate_config(config, load_schema(SCHEMA))
    except Exception as exc:  # the projection still has the preset's own keys
        print(f"note: paper config not validated ({type(exc).__name__}: {exc})", file=sys.stderr)
    return config


def flops_per_token(shape: dict, context: int, vocab: int) -> float:
    return 6 * (n_params(shape) + vocab * shape["d_model"]) + 12 * shape["n_layer"] * context * shape["d_model"]


def peak_flops(args: argparse.Namespace) -> tuple[float | None, str]:
    if args.peak_tflops:
        return args.peak_tflops * 1e12, "--peak-tflops"
    if args.device != "cuda":
        return None, "no peak for a CPU (give --peak-tflops)"
    import torch
    name = torch.cuda.get_device_name(0)
    for key, tflops in PEAK_TFLOPS:
        if key in name:
            return tflops * 1e12, f"dense bf16 peak of {key} (device {name!r})"
    return None, f"unknown device {name!r}: give --peak-tflops"


def mfu(tokens_per_second: float | None, flops: float, peak: float | None) -> float | None:
    return None if tokens_per_second is None or peak is None else tokens_per_second * flops / peak


# ------------------------------------------------------------------------------------------- data and specs
def token_files(workdir: Path, vocab: int, context: int, batch: int, eval_tokens: int) -> dict[str, Path]:
    """Random token ids: enough train tokens for distinct windows, validation for ``eval_tokens`` targets."""
    from transfer_scaling.tokens import write_token_array
    rng = np.random.default_rng(0)
    paths = {"train": workdir / f"train-{vocab}-{context}.bin", "val": workdir / f"val-{vocab}-{context}.bin"}
    sizes = {"train": max(4 * batch * (context + 1), 1 << 20), "val": eval_tokens + 2 * context + 1}
    for role, path in paths.items():
        if not path.exists():
            write_token_array(path, rng.integers(0, vocab, sizes[role], dtype=np.uint16), chars=sizes[role])
    return paths


def trainer_spec(shape: dict, settings: dict, paths: dict[str, Path], **overrides: Any) -> dict:
    """A scratch-run spec: the paper's optimiser settings, a short schedule with evaluations and checkpoints."""
    from transfer_scaling.train.spec import SPEC_CHECKS
    spec = {
        "kind": "scratch",
        "model": {"n_layer": shape["n_layer"], "d_model": shape["d_model"], "n_head": shape["n_head"],
                  "n_ctx": settings["context"], "vocab_size": settings["vocab"]},
        "train_tokens": str(paths["train"]), "val_tokens": str(paths["val"]), "init_from": None, "seed": 0,
        "batch_size": settings["batch"], "threads": settings["threads"], "lr": 6e-4, "min_lr_ratio": 0.1,
        "warmup_steps": 0, "cooldown_fraction": 0.2, "weight_decay": 0.1, "grad_clip": 1.0, "betas": [0.9, 0.95],
        "max_steps": settings["stable_steps"], "min_steps": settings["stable_steps"],
        "eval_interval": settings["eval_interval"], "eval_tokens": settings["eval_tokens"], "patience": 1000,
        "checkpoint_interval": settings["checkpoint_interval"], "log_interval": 1,
        "precision": settings["precision"], "zero_stage": settings["zero_stage"],
        "micro_batch_size": shape.get("micro_batch"), "loss_chunk_tokens": settings["loss_chunk_tokens"],
        "activation_checkpointing": settings["activation_checkpointing"], "compile": False,
        "deterministic": settings["deterministic"],
        **overrides,
    }
    missing = [key for key in spec if key not in SPEC_CHECKS]
    if missing:
        raise SystemExit(f"the trainer has no spec keys {missing} (transfer_scaling.train.spec.SPEC_CHECKS)")
    return spec


# ------------------------------------------------------------------------------------------- workers
def trainer_worker(spec_path: Path, out_dir: Path) -> int:
    """Run ``train`` with its evaluation, write and save methods timed; events.json records them either way."""
    started = time.perf_counter()
    import torch
    from transfer_scaling.train import checkpoints, loop, run, trainer

    events: list[dict] = []
    state: dict[str, Any] = {"trainer": None}
    cuda = torch.cuda.is_available()

    def timed(cls: type, name: str) -> None:
        original = getattr(cls, name)

        def wrapper(self, *args, **kwargs):
            progress = getattr(state["trainer"], "progress", None)
            step = progress.steps_trained if progress is not None else 0
            if cuda:
                torch.cuda.synchronize()
            begin = time.perf_counter()
            try:
                return original(self, *args, **kwargs)
            finally:
                if cuda:
                    torch.cuda.synchronize()
                end = time.perf_counter()
                events.append({"name": name, "steps_trained": step, "start": begin - started,
                               "seconds": end - begin})

        setattr(cls, name, wrapper)

    original_init = trainer.Trainer.__init__

    def init(self, *args, **kwargs):
        state["trainer"] = self
        original_init(self, *args, **kwargs)
        events.append({"name": "ready", "steps_trained": 0, "start": time.perf_counter() - started, "seconds": 0.0})

    trainer.Trainer.__init__ = init
    classes = (trainer.Trainer, loop.RunLoop, checkpoints.Checkpoints)
    for cls in classes:
        for name in TIMED_METHODS.intersection(vars(cls)):
            timed(cls, name)
    untimed = sorted(TIMED_METHODS.difference(*(vars(cls) for cls in classes)))  # renamed in the package?

    spec = json.loads(spec_path.read_text())
    status, error, code = "ok", None, 0
    try:
        run.train(spec, out_dir)
    except run.TrainingInterrupted:
        status = "interrupted"
    except torch.OutOfMemoryError as exc:
        status, error, code = "oom", str(exc).splitlines()[0], 3
    except Exception as exc:  # recorded in events.json, its traceback in the log
        status, error, code = "failed", f"{type(exc).__name__}: {exc}", 1
        import traceback
        traceback.print_exc()
    peak = torch.cuda.max_memory_allocated() / 2**30 if cuda else None
    (out_dir / EVENTS).write_text(json.dumps({"status": status, "error": error, "events": events, "untimed": untimed,
                                              "worker_seconds": time.perf_counter() - started,
                                              "peak_gpu_memory_gib": peak}))
    return code


def reference_worker(config_path: Path, result_path: Path) -> int:
    """The same model and batches in a plain loop, each variant's result written as soon as it is measured.

    bf16 as DeepSpeed does it ("master", the default): bf16 weights, their gradients accumulated over the
    micro-batches into float32 master weights, clipped and stepped there (fused AdamW), copied back. Compiled,
    the graphs are the trainer's own, so a run after the trainer's finds them in the compile cache. "autocast":
    float32 weights under bf16 autocast, the usual plain-torch recipe."""
    import torch
    from transfer_scaling.tokens import load_token_array
    from transfer_scaling.train.engine import seed_everything
    from transfer_scaling.train.model import GPT, GPTConfig
    from transfer_scaling.train.schedule import batch_starts, windows

    cfg = json.loads(config_path.read_text())
    device = torch.device(cfg["device"])
    seed_everything(0, cfg["threads"], cfg["deterministic"])
    tokens, _ = load_token_array(cfg["train_tokens"], verify_hash=False)
    context, batch, micro = cfg["context"], cfg["batch"], cfg["micro_batch"]
    accumulation = batch // micro
    bf16 = cfg["precision"] == "bf16"
    master_weights = bf16 and cfg["reference_precision"] == "master"
    results: dict[str, dict] = {}
    for variant in cfg["variants"]:
        torch.manual_seed(0)
        record: dict[str, Any] = {"status": "ok", "precision": cfg["reference_precision"] if bf16 else "fp32"}
        model = optimizer = None
        try:
            model = GPT(GPTConfig(cfg["n_layer"], cfg["d_model"], cfg["n_head"], context, cfg["vocab"]),
                        cfg["loss_chunk_tokens"], cfg["activation_checkpointing"]).to(device)
            params = list(model.parameters())
            master = [p.detach().clone() for p in params] if master_weights else params
            if master_weights:
                model.to(torch.bfloat16)
                for weight in master:
                    weight.grad = torch.zeros_like(weight)
            groups = [{"params": [p for p in master if p.dim() >= 2], "weight_decay": 0.1},
                      {"params": [p for p in master if p.dim() < 2], "weight_decay": 0.0}]
            optimizer = torch.optim.AdamW(groups, lr=6e-4, betas=(0.9, 0.95), fused=device.type == "cuda")
            forward = torch.compile(model) if variant == "compiled" else model
            autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16 and not master_weights)
            if device.type == "cuda":
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats()

            losses: list[torch.Tensor] = []

            def step(index: int) -> float:
                begin = time.perf_counter()
                starts = batch_starts(0, index, len(tokens), context, batch)
                for first in range(0, batch, micro):
                    x, y = windows(tokens, starts[first:first + micro], context)
                    with autocast:
                        _, loss = forward(x.to(device), y.to(device))
                    (loss / accumulation).backward()
                    losses.append(loss.detach())
                    if master_weights:
                        torch._foreach_add_([w.grad for w in master], [p.grad for p in params])
                        for p in params:
                            p.grad = None
                torch.nn.utils.clip_grad_norm_(master, 1.0)
                optimizer.step()
                if master_weights:
                    with torch.no_grad():
                        torch._foreach_copy_(params, master)
                    torch._foreach_zero_([w.grad for w in master])
                else:
                    optimizer.zero_grad(set_to_none=True)
                if device.type == "cuda":
                    torch.cuda.synchronize()
                return time.perf_counter() - begin

            warmup = [step(i) for i in range(cfg["warmup_steps"])]
            timed = [step(cfg["warmup_steps"] + i) for i in range(cfg["timed_steps"])]
            step_seconds = statistics.median(timed)
            record.update(warmup_seconds=warmup, step_seconds=timed, median_step_seconds=step_seconds,
                          tokens_per_second=batch * context / step_seconds,
                          first_and_last_loss=[losses[0].item(), losses[-1].item()])
        except torch.OutOfMemoryError as exc:
            record.update(status="oom", error=str(exc).splitlines()[0])
        except Exception as exc:  # recorded; the other variant still runs
            record.update(status="failed", error=f"{type(exc).__name__}: {exc}")
            import traceback
            traceback.print_exc()
        record["peak_gpu_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None
        results[variant] = record
        result_path.write_text(json.dumps(results))
        del model, optimizer
        if device.type == "cuda":
            torch._dynamo.reset()
            torch.cuda.empty_cache()
    return 0


# ------------------------------------------------------------------------------------------- running workers
class Budget:
    """A deadline for the whole benchmark: each run gets at most what is left, less a margin for the report."""

    def __init__(self, seconds: float | None, margin: float = 5.0) -> None:
        self.deadline = None if seconds is None else time.monotonic() + seconds - margin

    def left(self) -> float:
        return math.inf if self.deadline is None else self.deadline - time.monotonic()


def child_env(args: argparse.Namespace, compile_cache: Path | None = None) -> dict[str, str]:
    """A child's environment: one process alone (no launcher variables), the CPU when asked, and its own compile
    cache when given one (a trainer's compilation is timed cold; a reference may reuse that trainer's cache)."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    if compile_cache is not None:
        env.update(TORCHINDUCTOR_CACHE_DIR=str(compile_cache), TRITON_CACHE_DIR=str(compile_cache / "triton"))
    if args.device == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    return env


RUNNING: set[subprocess.Popen] = set()
"""Children still running: killed with their process groups when this process is stopped."""


def spawn(command: list[str], log: Path, env: dict[str, str], mode: str = "w") -> subprocess.Popen:
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, mode, encoding="utf-8") as out:
        child = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    RUNNING.add(child)
    return child


def finish(child: subprocess.Popen, timeout: float) -> int | None:
    """Exit code, or None after killing the child's process group at the timeout."""
    try:
        return child.wait(timeout=max(1.0, timeout))
    except subprocess.TimeoutExpired:
        os.killpg(child.pid, signal.SIGKILL)
        child.wait()
        return None
    finally:
        RUNNING.discard(child)


def kill_children() -> None:
    for child in list(RUNNING):
        try:
            os.killpg(child.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        child.wait()
    RUNNING.clear()


def run_child(command: list[str], log: Path, timeout: float, env: dict[str, str]) -> tuple[int | None, float]:
    """(exit code or None on timeout, wall seconds); output to ``log``; a timed-out child's group is killed."""
    begin = time.perf_counter()
    code = finish(spawn(command, log, env), timeout)
    return code, time.perf_counter() - begin


def log_tail(log: Path, lines: int = 6) -> str:
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def launch_trainer(spec: dict, run_dir: Path, log: Path, timeout: float, args: argparse.Namespace,
                   compile_cache: Path | None = None) -> dict:
    """One trainer subprocess; its events, metrics and summary (the run directory is removed afterwards)."""
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    spec_path = run_dir.parent / f"{run_dir.name}.spec.json"
    spec_path.write_text(json.dumps(spec, indent=1))
    code, wall = run_child([sys.executable, __file__, "_trainer", str(spec_path), str(run_dir)], log, timeout,
                           child_env(args, compile_cache))
    found: dict[str, Any] = {"exit_code": code, "wall_seconds": wall}
    events_path = run_dir / EVENTS
    found.update(json.loads(events_path.read_text()) if events_path.exists() else
                 {"status": "timeout" if code is None else "failed", "events": [], "peak_gpu_memory_gib": None})
    if found["status"] == "failed" and any(marker in log_tail(log, 40) for marker in OOM_MARKERS):
        found["status"] = "oom"
    if found["status"] not in ("ok", "interrupted"):
        found.setdefault("error", None)
        found["log_tail"] = log_tail(log)
    metrics = run_dir / "metrics.jsonl"
    found["metrics"] = [json.loads(line) for line in metrics.read_text().splitlines()] if metrics.exists() else []
    summary = run_dir / "summary.json"
    found["summary"] = json.loads(summary.read_text()) if summary.exists() else None
    for name in ("metrics.jsonl", "summary.json", EVENTS):
        if (run_dir / name).exists():
            shutil.copyfile(run_dir / name, log.with_suffix(f".{name}"))
    if not args.keep_runs:
        shutil.rmtree(run_dir, ignore_errors=True)
    return found


def median_of(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def analyse_trainer(found: dict, tokens_per_step: int, warmup_intervals: int) -> dict:
    """Steady rate from the clean one-step intervals; the rest of the wall time as one-time and recurring costs.

    With log_interval 1 each train record is one step; an event at ``steps_trained`` e (e >= 1) falls in the
    interval that ends at step e + 1. Recurring unit costs are medians (an evaluation's after the first, whose
    excess, e.g. compiling the evaluation graph, is one-time); one-time is the wall time not explained by steps
    at the steady rate and by recurring events."""
    events = found["events"]
    dirty = {event["steps_trained"] + 1 for event in events if event["name"] != "ready"}
    intervals = []
    for record in found["metrics"]:
        if record.get("event") == "train":
            steps = record["tokens_seen"] // tokens_per_step
            intervals.append((steps, tokens_per_step / record["tokens_per_second"]))
    clean = [seconds for steps, seconds in intervals if steps > warmup_intervals and steps not in dirty]
    if not clean:  # too short a run: every interval held an event; take the fastest
        clean = sorted(seconds for _, seconds in intervals)[:1]
    step_seconds = median_of(clean)
    by_name: dict[str, list[float]] = {}
    for event in events:
        by_name.setdefault(event["name"], []).append(event["seconds"])
    evals = by_name.get("validation_loss", [])
    unit = {
        "eval_forward_s": median_of(evals[1:]) if len(evals) > 1 else median_of(evals),
        "write_weights_s": median_of(by_name.get("write_weights", [])),
        "save_state_s": median_of(by_name.get("save_state", [])),
        "load_state_s": median_of(by_name.get("load_state", [])),
        "checkpoint_s": median_of(by_name.get("save_checkpoint", [])),
    }
    counts = {"eval_forward_s": len(evals), "write_weights_s": len(by_name.get("write_weights", [])),
              "save_state_s": len(by_name.get("save_state", [])), "load_state_s": len(by_name.get("load_state", [])),
              "checkpoint_s": len(by_name.get("save_checkpoint", []))}
    steps = (found.get("summary") or {}).get("steps", len(intervals))
    recurring = sum((unit[key] or 0.0) * counts[key] for key in unit)
    wall = found["wall_seconds"]
    ready = next((event["start"] for event in events if event["name"] == "ready"), None)
    warm_excess = sum(seconds - step_seconds for steps_done, seconds in intervals
                      if steps_done <= warmup_intervals and steps_done not in dirty) if step_seconds else None
    analysis = {
        "steady_intervals": len(clean), "steps": steps,
        "step_seconds": step_seconds,
        "tokens_per_second": tokens_per_step / step_seconds if step_seconds else None,
        "whole_run_tokens_per_second": steps * tokens_per_step / wall if wall else None,
        "wall_seconds": wall,
        "recurring_unit_seconds": unit, "recurring_counts": counts,
        "one_time_seconds": wall - steps * step_seconds - recurring if step_seconds else None,
        "one_time_parts": {
            "process_start_to_ready_s": ready,
            "first_steps_excess_s": warm_excess,
            "first_eval_excess_s": (evals[0] - unit["eval_forward_s"]) if len(evals) > 1 else None,
            "cooldown_start_s": sum(by_name.get("start_cooldown", [])) or None,
        },
    }
    return analysis


def paper_schedule(config: dict) -> dict:
    """Step and event counts of one paper pretraining run (presets/paper.yaml pretrain options)."""
    from transfer_scaling.plan import run_options
    options = run_options(config, "pretrain")
    stable = options["max_steps"]
    cooldown = max(options["eval_interval"], round(options["cooldown_fraction"] * stable))
    snapshots = [step for step in options.get("snapshot_steps", []) if step < stable]
    branch_steps = sum(max(1, round(options["cooldown_fraction"] * step)) for step in snapshots)
    steps = stable + cooldown + branch_steps
    return {
        "batch_size": options["batch_size"], "context": config["context"], "stable_steps": stable,
        "cooldown_steps": cooldown, "snapshot_branch_steps": branch_steps, "steps": steps,
        "eval_interval": options["eval_interval"], "eval_tokens": options["eval_tokens"],
        "checkpoint_interval": options["checkpoint_interval"], "snapshots": len(snapshots),
        "stable_evals": stable // options["eval_interval"] + 1,
        "cooldown_evals": cooldown // options["eval_interval"] + 1,
        "checkpoints": steps // options["checkpoint_interval"],
    }


def project(analysis: dict, schedule: dict, bench_eval_tokens: int) -> dict | None:
    """Overhead of one paper pretraining run at the measured unit costs.

    Assumed: evaluation time scales with eval_tokens; every stable-phase evaluation improves (pretraining loss
    keeps falling), so each writes the best weights and the stable-best state, and each cooldown evaluation the
    weights; each snapshot branch saves and reloads a state, evaluates once and writes its weights; one start."""
    unit = analysis["recurring_unit_seconds"]
    if analysis["step_seconds"] is None or analysis["one_time_seconds"] is None:
        return None
    value = {key: (seconds or 0.0) for key, seconds in unit.items()}
    eval_s = value["eval_forward_s"] * schedule["eval_tokens"] / bench_eval_tokens
    parts = {
        "one_time_s": analysis["one_time_seconds"],
        "evaluations_s": (schedule["stable_evals"] + schedule["cooldown_evals"] + schedule["snapshots"]) * eval_s,
        "best_writes_s": schedule["stable_evals"] * (value["write_weights_s"] + value["save_state_s"])
                         + schedule["cooldown_evals"] * value["write_weights_s"],
        "checkpoints_s": schedule["checkpoints"] * value["checkpoint_s"],
        "snapshots_s": schedule["snapshots"] * (value["save_state_s"] + value["load_state_s"]
                                                + value["write_weights_s"]),
    }
    training_s = schedule["steps"] * analysis["step_seconds"]
    overhead = sum(parts.values())
    return {"training_s": training_s, "overhead_s": overhead, "parts": parts,
            "overhead_percent": 100 * overhead / (training_s + overhead),
            "run_hours": (training_s + overhead) / 3600}


# ------------------------------------------------------------------------------------------- modes
def sizes_of(args: argparse.Namespace) -> tuple[list[dict], dict]:
    """The sizes to measure and the settings they share: presets/paper.yaml's for a job on one GPU (its
    fine-tuning and from-scratch options, each size's micro_batch_size), or the tiny CPU check's; flags override."""
    if args.sizes == ["tiny"]:
        shapes = [dict(TINY, micro_batch=TINY_MICRO_BATCH)]
        preset = dict(TINY_SETTINGS)
    else:
        from transfer_scaling.plan import run_options
        config = paper_config()
        known = {shape["name"]: shape for shape in config["models"]}
        unknown = [name for name in args.sizes or [] if name not in known]
        if unknown:
            raise SystemExit(f"unknown sizes {unknown}; presets/paper.yaml has {list(known)} (or use 'tiny')")
        options = run_options(config, "scratch")
        preset = {"context": config["context"], "vocab": config["tokenizer"]["vocab_size"],
                  "batch": options["batch_size"], **{key: options[key] for key in PRESET_OPTIONS}}
        shapes = [{**known[name], "micro_batch": run_options(config, "scratch", name)["micro_batch_size"]}
                  for name in args.sizes or known]
    flags = {"context": args.context, "vocab": args.vocab, "batch": args.batch_size, "threads": args.threads,
             "precision": args.precision,
             "zero_stage": args.zero_stage, "loss_chunk_tokens": args.loss_chunk_tokens,
             "activation_checkpointing": args.activation_checkpointing, "deterministic": args.deterministic}
    settings = {**preset, **{key: value for key, value in flags.items() if value is not None}}
    micro = {}
    if args.micro_batch_from:
        found = json.loads(Path(args.micro_batch_from).read_text())
        micro.update({name: size["micro_batch"] for name, size in found["sizes"].items() if size.get("micro_batch")})
    for item in args.micro_batch or []:
        name, _, value = item.partition("=")
        micro[name] = int(value)
    for shape in shapes:
        shape["micro_batch"] = min(micro.get(shape["name"]) or shape["micro_batch"] or settings["batch"],
                                   settings["batch"])
    settings.update(stable_steps=args.stable_steps, eval_interval=args.eval_interval,
                    checkpoint_interval=args.checkpoint_interval,
                    eval_tokens=args.eval_tokens or settings["batch"] * settings["context"])
    return shapes, settings


def device_info(args: argparse.Namespace) -> dict:
    import torch
    info = {"device": args.device, "torch": torch.__version__, "python": sys.version.split()[0]}
    if args.device == "cuda":
        info.update(name=torch.cuda.get_device_name(0), cuda=torch.version.cuda,
                    memory_gib=torch.cuda.get_device_properties(0).total_memory / 2**30)
    try:
        import importlib.metadata
        info["deepspeed"] = importlib.metadata.version("deepspeed")
    except Exception:
        info["deepspeed"] = None
    return info


def write_json(path: Path, document: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(document, indent=1, default=str))
    os.replace(tmp, path)


def throughput(args: argparse.Namespace, workdir: Path, logs: Path) -> dict:
    shapes, settings = sizes_of(args)
    peak, peak_source = peak_flops(args)
    budget = Budget(args.budget_s)
    paths = token_files(workdir, settings["vocab"], settings["context"], settings["batch"], settings["eval_tokens"])
    tokens_per_step = settings["batch"] * settings["context"]
    try:
        schedule = paper_schedule(paper_config())
    except Exception as exc:
        schedule = None
        print(f"note: no paper projection ({type(exc).__name__}: {exc})", file=sys.stderr)
    document = {"benchmark": "gpu_throughput", "mode": "throughput", "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
                "device": device_info(args), "peak_flops": peak, "peak_source": peak_source, "mfu_formula": MFU_FORMULA,
                "settings": settings, "paper_schedule": schedule, "sizes": {}}
    if schedule and (schedule["batch_size"], schedule["context"]) != (settings["batch"], settings["context"]):
        document["paper_projection_note"] = "batch or context differ from the paper's: the projection only checks " \
                                            "the arithmetic"
    for shape in shapes:
        flops = flops_per_token(shape, settings["context"], settings["vocab"])
        document["sizes"][shape["name"]] = {
            "shape": {k: shape[k] for k in ("n_layer", "d_model", "n_head")}, "n_params": n_params(shape),
            "flops_per_token": flops, "micro_batch": shape["micro_batch"],
            "accumulation": settings["batch"] // shape["micro_batch"], "runs": {}}

    def save() -> None:
        for entry in document["sizes"].values():
            trainer = entry["runs"].get("trainer", {})
            reference = entry["runs"].get("reference_compiled", {})
            if trainer.get("tokens_per_second") and reference.get("tokens_per_second"):
                entry["ratio_trainer_to_compiled_reference"] = trainer["tokens_per_second"] / reference[
                    "tokens_per_second"]
            compiled = entry["runs"].get("trainer_compiled", {})
            if compiled.get("tokens_per_second") and reference.get("tokens_per_second"):
                entry["ratio_compiled_trainer_to_compiled_reference"] = compiled["tokens_per_second"] / reference[
                    "tokens_per_second"]
        write_json(args.out, document)

    def trainer_run(shape: dict, compiled: bool) -> None:
        key = "trainer_compiled" if compiled else "trainer"
        entry = document["sizes"][shape["name"]]
        left = min(args.run_timeout, budget.left())
        if left < args.min_run_s:
            entry["runs"][key] = {"status": "skipped", "error": f"budget: {left:.0f} s left"}
            return
        spec = trainer_spec(shape, settings, paths, compile=compiled)
        cache = workdir / f"compile-cache-{shape['name']}-{key}"
        shutil.rmtree(cache, ignore_errors=True)
        found = launch_trainer(spec, workdir / f"{shape['name']}-{key}", logs / f"{shape['name']}-{key}.log",
                               left, args, cache)
        run = {"status": found["status"], "compile": compiled, "exit_code": found["exit_code"],
               "peak_gpu_memory_gib": found.get("peak_gpu_memory_gib")}
        if found.get("untimed"):
            run["untimed_methods"] = found["untimed"]  # their time counts as one-time: the hooks need updating
        for extra in ("error", "log_tail"):
            if found.get(extra):
                run[extra] = found[extra]
        if found["status"] == "ok":
            analysis = analyse_trainer(found, tokens_per_step, args.warmup_intervals)
            analysis["mfu"] = mfu(analysis["tokens_per_second"], entry["flops_per_token"], peak)
            analysis["whole_run_mfu"] = mfu(analysis["whole_run_tokens_per_second"], entry["flops_per_token"], peak)
            run.update(analysis)
            if schedule is not None:
                run["paper_projection"] = project(analysis, schedule, settings["eval_tokens"])
        entry["runs"][key] = run
        print(f"{shape['name']:>6} {key:<18} {run['status']:<8} "
              f"{(run.get('tokens_per_second') or 0):>12,.0f} tokens/s  {found['wall_seconds']:6.1f} s", flush=True)
        save()

    def reference_run(shape: dict, variants: list[str]) -> None:
        entry = document["sizes"][shape["name"]]
        variants = [variant for variant in variants if variant in args.references]
        left = min(args.run_timeout, budget.left())
        if not variants:
            return
        if left < args.min_run_s:
            for variant in variants:
                entry["runs"][f"reference_{variant}"] = {"status": "skipped", "error": f"budget: {left:.0f} s left"}
            save()
            return
        config = {"device": args.device, "threads": settings["threads"], "deterministic": settings["deterministic"],
                  "train_tokens": str(paths["train"]), "context": settings["context"], "batch": settings["batch"],
                  "micro_batch": shape["micro_batch"], "vocab": settings["vocab"], "n_layer": shape["n_layer"],
                  "d_model": shape["d_model"], "n_head": shape["n_head"], "precision": settings["precision"],
                  "loss_chunk_tokens": settings["loss_chunk_tokens"],
                  "activation_checkpointing": settings["activation_checkpointing"],
                  "warmup_steps": args.reference_warmup, "timed_steps": args.reference_steps, "variants": variants,
                  "reference_precision": args.reference_precision}
        name = f"{shape['name']}-reference-{'-'.join(variants)}"
        config_path, result_path = workdir / f"{name}.json", workdir / f"{name}.result.json"
        config_path.write_text(json.dumps(config))
        result_path.unlink(missing_ok=True)
        log = logs / f"{name}.log"
        cache = workdir / f"compile-cache-{shape['name']}-trainer_compiled"  # warm if that trainer ran first
        code, wall = run_child([sys.executable, __file__, "_reference", str(config_path), str(result_path)], log,
                               left, child_env(args, cache if cache.exists() else workdir / "compile-cache"))
        results = json.loads(result_path.read_text()) if result_path.exists() else {}
        for variant in variants:
            record = results.get(variant) or {"status": "timeout" if code is None else "failed",
                                              "log_tail": log_tail(log)}
            if record.get("status") == "ok":
                record["mfu"] = mfu(record["tokens_per_second"], entry["flops_per_token"], peak)
            entry["runs"][f"reference_{variant}"] = record
            print(f"{shape['name']:>6} {'reference_' + variant:<18} {record['status']:<8} "
                  f"{(record.get('tokens_per_second') or 0):>12,.0f} tokens/s", flush=True)
        save()

    save()
    # The preset's own compile setting and the compiled reference for every size first, the largest (which matters
    # most and takes longest) first; then the other setting and the eager reference, as the budget allows.
    first = "on" if settings["compile"] else "off"
    order = args.trainer_compile or [first, "off" if first == "on" else "on"]
    shapes = sorted(shapes, key=n_params, reverse=True)
    for phase, (compiled, references) in enumerate(((order[0] == "on", ["compiled"]),
                                                    (order[-1] == "on", ["eager"]))):
        for shape in shapes:
            if phase == 0 or len(order) > 1:
                trainer_run(shape, compiled)
            reference_run(shape, references)
    save()
    return document


def search(args: argparse.Namespace, workdir: Path, logs: Path) -> dict:
    """Per size, micro-batches from the whole batch down by halves: the first whose peak is within the budget."""
    shapes, settings = sizes_of(args)
    budget = Budget(args.budget_s)
    settings = {**settings, "stable_steps": 1, "eval_interval": 1, "checkpoint_interval": 1000,
                "eval_tokens": settings["context"]}
    paths = token_files(workdir, settings["vocab"], settings["context"], settings["batch"], settings["eval_tokens"])
    document = {"benchmark": "gpu_throughput", "mode": "search", "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
                "device": device_info(args), "memory_budget_gib": args.memory_budget_gib, "settings": settings,
                "sizes": {}}
    for shape in shapes:
        entry = document["sizes"][shape["name"]] = {"micro_batch": None, "tries": []}
        candidate = settings["batch"]
        while candidate >= 1:
            left = min(args.run_timeout, budget.left())
            if left < args.min_run_s:
                entry["tries"].append({"micro_batch": candidate, "status": "skipped"})
                break
            spec = trainer_spec({**shape, "micro_batch": candidate}, settings, paths, compile=args.search_compile)
            found = launch_trainer(spec, workdir / f"{shape['name']}-mb{candidate}",
                                   logs / f"{shape['name']}-search-mb{candidate}.log", left, args)
            peak = found.get("peak_gpu_memory_gib")
            fits = found["status"] == "ok" and (peak is None or peak <= args.memory_budget_gib)
            entry["tries"].append({"micro_batch": candidate, "status": found["status"], "peak_gpu_memory_gib": peak,
                                   "wall_seconds": found["wall_seconds"], "fits": fits,
                                   **({"error": found["error"]} if found.get("error") else {})})
            print(f"{shape['name']:>6} micro-batch {candidate:>4}: {found['status']:<8} peak "
                  f"{peak if peak is None else round(peak, 1)} GiB{'  <- fits' if fits else ''}", flush=True)
            write_json(args.out, document)
            if fits:
                entry["micro_batch"] = candidate
                break
            if found["status"] not in ("ok", "oom"):
                break
            candidate //= 2
    write_json(args.out, document)
    return document


def compare_runs(a: Path, b: Path) -> dict:
    """Records of two metrics.jsonl files matched one for one (timing left out), and the two best weights."""
    from safetensors.torch import load_file
    from transfer_scaling.layout import RunLayout
    a, b = RunLayout(a), RunLayout(b)
    left = [json.loads(line) for line in a.metrics.read_text().splitlines()]
    right = [json.loads(line) for line in b.metrics.read_text().splitlines()]
    same_shape = [(x.get("event"), x.get("step"), x.get("tokens_seen")) for x in left] == \
                 [(x.get("event"), x.get("step"), x.get("tokens_seen")) for x in right]
    loss_diff = 0.0
    for x, y in zip(left, right):
        for key in ("train_loss", "val_loss"):
            if key in x and key in y:
                loss_diff = max(loss_diff, abs(x[key] - y[key]))
    weights_a, weights_b = load_file(str(a.weights)), load_file(str(b.weights))
    weights_diff = max((weights_a[name] - weights_b[name]).abs().max().item() for name in weights_a)
    return {"records": [len(left), len(right)], "records_match": same_shape, "max_abs_loss_diff": loss_diff,
            "max_abs_weight_diff": weights_diff,
            "identical": same_shape and loss_diff == 0.0 and weights_diff == 0.0}


def determinism(args: argparse.Namespace, workdir: Path, logs: Path) -> dict:
    """Uninterrupted twice (run-to-run) and stopped at a checkpoint then resumed, per setting of deterministic."""
    settings = {"context": args.context or 128, "vocab": args.vocab or 257, "batch": args.batch_size or 32,
                "threads": args.threads or 2,
                "precision": args.precision or ("bf16" if args.device == "cuda" else "fp32"),
                "zero_stage": 2 if args.zero_stage is None else args.zero_stage,
                "loss_chunk_tokens": 512 if args.loss_chunk_tokens is None else args.loss_chunk_tokens,
                "activation_checkpointing": bool(args.activation_checkpointing), "stable_steps": 16, "eval_interval": 4,
                "checkpoint_interval": 4}
    settings["eval_tokens"] = 4 * settings["context"]
    shape = {"n_layer": 2, "d_model": 128, "n_head": 4, "micro_batch": settings["batch"] // 2}
    paths = token_files(workdir, settings["vocab"], settings["context"], settings["batch"], settings["eval_tokens"])
    budget = Budget(args.budget_s)
    document = {"benchmark": "gpu_throughput", "mode": "determinism", "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
                "device": device_info(args), "settings": settings, "shape": shape, "stop_after_steps": 6,
                "results": {}}
    env = child_env(args)
    args.keep_runs = True

    def start(name: str, spec: dict, fresh: bool = True) -> tuple[subprocess.Popen, Path, Path]:
        run_dir, log = workdir / "determinism" / name, logs / f"determinism-{name}.log"
        if fresh:
            shutil.rmtree(run_dir, ignore_errors=True)
        run_dir.mkdir(parents=True, exist_ok=True)
        spec_path = run_dir.parent / f"{name}.spec.json"
        spec_path.write_text(json.dumps(spec))
        child = spawn([sys.executable, __file__, "_trainer", str(spec_path), str(run_dir)], log, env, "a")
        return child, run_dir, log

    def wait(children: list[tuple[subprocess.Popen, Path, Path]]) -> dict[str, str]:
        statuses = {}
        for child, run_dir, log in children:
            finish(child, min(args.run_timeout, budget.left()))
            events = run_dir / EVENTS
            statuses[run_dir.name] = json.loads(events.read_text())["status"] if events.exists() else "failed"
        return statuses

    specs = {flag: trainer_spec(shape, {**settings, "deterministic": flag}, paths) for flag in (True, False)}
    statuses: dict[str, str] = {}
    for group in ((True, False),) if args.jobs > 1 else ((True,), (False,)):
        tags = {flag: "det" if flag else "nondet" for flag in group}
        statuses.update(wait([start(f"{name}-{tags[flag]}", {**specs[flag], **extra}) for flag in group
                              for name, extra in (("a", {}), ("b", {}), ("stopped", {"stop_after_steps": 6}))]))
        resumed = wait([start(f"stopped-{tags[flag]}", specs[flag], fresh=False) for flag in group
                        if statuses.get(f"stopped-{tags[flag]}") == "interrupted"])
        statuses.update({f"{name}-resumed": status for name, status in resumed.items()})
    for flag in (True, False):
        tag = "det" if flag else "nondet"
        result: dict[str, Any] = {"statuses": {k: v for k, v in statuses.items() if tag in k.split("-")}}
        root = workdir / "determinism"
        try:
            result["run_to_run"] = compare_runs(root / f"a-{tag}", root / f"b-{tag}")
        except Exception as exc:
            result["run_to_run"] = {"error": f"{type(exc).__name__}: {exc}"}
        try:
            result["stop_and_resume"] = compare_runs(root / f"a-{tag}", root / f"stopped-{tag}")
        except Exception as exc:
            result["stop_and_resume"] = {"error": f"{type(exc).__name__}: {exc}"}
        document["results"]["deterministic" if flag else "nondeterministic"] = result
        print(f"deterministic={flag}: run-to-run {result['run_to_run']}, stop/resume {result['stop_and_resume']}",
              flush=True)
    write_json(args.out, document)
    return document


# ------------------------------------------------------------------------------------------- report
def fmt(value: Any, spec: str = ",.0f", missing: str = "-") -> str:
    return missing if value is None else format(value, spec)


def markdown(document: dict) -> str:
    if document["mode"] == "search":
        lines = [f"| size | largest micro-batch <= {document['memory_budget_gib']} GiB | tries (micro-batch: peak GiB) |",
                 "|---|---|---|"]
        for name, entry in document["sizes"].items():
            tries = ", ".join(f"{t['micro_batch']}: {t['status'] if t['status'] != 'ok' else fmt(t.get('peak_gpu_memory_gib'), '.1f')}"
                              for t in entry["tries"])
            lines.append(f"| {name} | {fmt(entry['micro_batch'], 'd')} | {tries} |")
        return "\n".join(lines)
    if document["mode"] == "determinism":
        lines = ["| deterministic | comparison | records match | max abs loss diff | max abs weight diff |",
                 "|---|---|---|---|---|"]
        for name, result in document["results"].items():
            for comparison in ("run_to_run", "stop_and_resume"):
                r = result.get(comparison, {})
                lines.append(f"| {name} | {comparison} | {r.get('records_match', r.get('error', '-'))} | "
                             f"{fmt(r.get('max_abs_loss_diff'), '.3g')} | {fmt(r.get('max_abs_weight_diff'), '.3g')} |")
        return "\n".join(lines)
    lines = [f"{document['mfu_formula']}; peak {fmt(document['peak_flops'], '.4g')} FLOP/s ({document['peak_source']})",
             "", "| size | run | micro x accum | status | steady tokens/s | MFU | peak GiB | one-time s | "
             "eval / ckpt s | paper overhead |", "|---|---|---|---|---|---|---|---|---|---|"]
    for name, entry in document["sizes"].items():
        for key, run in entry["runs"].items():
            unit = run.get("recurring_unit_seconds", {})
            projection = run.get("paper_projection") or {}
            lines.append(
                f"| {name} | {key} | {entry['micro_batch']} x {entry['accumulation']} | {run['status']} | "
                f"{fmt(run.get('tokens_per_second'))} | {fmt(run.get('mfu'), '.1%')} | "
                f"{fmt(run.get('peak_gpu_memory_gib'), '.1f')} | {fmt(run.get('one_time_seconds'), '.1f')} | "
                f"{fmt(unit.get('eval_forward_s'), '.2f')} / {fmt(unit.get('checkpoint_s'), '.2f')} | "
                f"{fmt(projection.get('overhead_percent'), '.1f')}{'%' if projection else ''} |")
    ratios = [f"{name}: trainer / compiled reference {fmt(entry.get('ratio_trainer_to_compiled_reference'), '.3f')}"
              f", compiled trainer / compiled reference "
              f"{fmt(entry.get('ratio_compiled_trainer_to_compiled_reference'), '.3f')}"
              for name, entry in document["sizes"].items()]
    return "\n".join(lines + [""] + ratios)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", choices=("throughput", "search", "determinism"), default="throughput")
    parser.add_argument("--search", dest="mode", action="store_const", const="search", help="--mode search")
    parser.add_argument("--out", type=Path, required=True, help="JSON result, rewritten after every run")
    parser.add_argument("--device", choices=("cuda", "cpu"), default=None, help="default: cuda when available")
    parser.add_argument("--sizes", type=lambda text: text.split(","), default=None,
                        help="comma-separated names from presets/paper.yaml (default all), or 'tiny'")
    parser.add_argument("--micro-batch", action="append", metavar="SIZE=N", help="micro-batch of a size (repeat)")
    parser.add_argument("--micro-batch-from", type=Path, help="a --mode search result")
    parser.add_argument("--context", type=int)
    parser.add_argument("--vocab", type=int)
    parser.add_argument("--batch-size", type=int, help="global batch in sequences (default the preset's)")
    parser.add_argument("--precision", choices=("bf16", "fp32"))
    parser.add_argument("--zero-stage", type=int, help="this and the options below: default the preset's")
    parser.add_argument("--threads", type=int)
    parser.add_argument("--loss-chunk-tokens", type=int)
    parser.add_argument("--activation-checkpointing", action=argparse.BooleanOptionalAction)
    parser.add_argument("--deterministic", action=argparse.BooleanOptionalAction)
    parser.add_argument("--trainer-compile", type=lambda text: text.split(","),
                        help="on, off, or both in order of priority (default: the preset's first, then the other)")
    parser.add_argument("--references", type=lambda text: text.split(","), default=["compiled", "eager"])
    parser.add_argument("--reference-precision", choices=("master", "autocast"), default="master",
                        help="bf16 weights with float32 master weights (as DeepSpeed), or autocast over float32")
    parser.add_argument("--stable-steps", type=int, default=6)
    parser.add_argument("--eval-interval", type=int, default=3)
    parser.add_argument("--checkpoint-interval", type=int, default=5)
    parser.add_argument("--eval-tokens", type=int, help="default one global batch")
    parser.add_argument("--warmup-intervals", type=int, default=2, help="first steps counted as one-time")
    parser.add_argument("--reference-warmup", type=int, default=2)
    parser.add_argument("--reference-steps", type=int, default=3)
    parser.add_argument("--peak-tflops", type=float)
    parser.add_argument("--memory-budget-gib", type=float, default=70.0)
    parser.add_argument("--search-compile", action="store_true")
    parser.add_argument("--budget-s", type=float, help="deadline for the whole mode; later runs are skipped")
    parser.add_argument("--run-timeout", type=float, default=600.0)
    parser.add_argument("--min-run-s", type=float, default=20.0, help="skip a run with less than this left")
    parser.add_argument("--jobs", type=int, default=2, help="determinism: settings run side by side (1 or 2)")
    parser.add_argument("--workdir", type=Path, help="token files and run directories (default a temp dir)")
    parser.add_argument("--logs", type=Path, help="one log per run (default OUT's folder/gpu_throughput_logs)")
    parser.add_argument("--keep-runs", action="store_true")
    args = parser.parse_args(argv)
    if args.device is None:
        import torch
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    return args


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["_trainer"]:
        return trainer_worker(Path(argv[1]), Path(argv[2]))
    if argv[:1] == ["_reference"]:
        return reference_worker(Path(argv[1]), Path(argv[2]))
    args = parse_args(argv)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="gpu-throughput-"))
    workdir.mkdir(parents=True, exist_ok=True)
    logs = args.logs or args.out.parent / "gpu_throughput_logs"
    logs.mkdir(parents=True, exist_ok=True)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(124))  # `timeout` stops us: the finally block still reports
    document = None
    try:
        document = {"throughput": throughput, "search": search, "determinism": determinism}[args.mode](
            args, workdir, logs)
    finally:
        kill_children()
        if document is None and args.out.exists():
            document = json.loads(args.out.read_text())
        if document is not None:
            print(markdown(document))
        if args.workdir is None and not args.keep_runs:
            shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
