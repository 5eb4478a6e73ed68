"""One trainer for the three kinds of run of Hernandez et al. (2021): pretrain, finetune and scratch.

Training goes through ``deepspeed.initialize`` so the same code runs one CPU process (gloo) or many GPUs
(NCCL, ZeRO, bf16). Batches are derived from (seed, step) alone, so a run resumed from a checkpoint,
or split over several ranks, draws exactly the batches of an uninterrupted single-process run.
Every run is early-stopped on a fixed set of validation windows, as in the paper.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import logging
import math
import os
import random
import shutil
import signal
import socket
import sys
import tempfile
import time
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, Callable, Iterator

import numpy as np
import torch
import torch.distributed as dist

from .config import TRAINING_KINDS, min_steps_beyond_cap
from .io import atomic_path, check_sha256_sidecar, read_json, sidecar_path, write_json, write_sha256_sidecar
from .checkpoints import Checkpoints
from .layout import RunLayout
from .model import GPT, GPTConfig, load_weights, n_params, save_weights
from .tokens import load_token_array

logger = logging.getLogger("transfer_scaling.training")

PRECISIONS = ("fp32", "bf16")
ZERO_STAGES = (0, 1, 2, 3)
STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)
DIVERGED = "diverged"
"""Stop reason of a fine-tuning or from-scratch run whose loss became NaN or infinite."""
INTERRUPTED_EXIT_CODE = 75
"""Exit code after a checkpoint on SIGTERM/SIGUSR1 (EX_TEMPFAIL: run the same command again to resume)."""


class SpecError(ValueError):
    """A training spec is missing a key or has a value out of range."""


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite."""


class DeviceError(RuntimeError):
    """The job asks for a device or precision this machine does not have."""


class TrainingInterrupted(Exception):
    """A stop was requested; a complete checkpoint was written and the run can be resumed."""

    def __init__(self, step: int) -> None:
        super().__init__(f"training interrupted after step {step}; checkpoint written, rerun to resume")
        self.step = step


# ------------------------------------------------------------------------------------------- spec
Check = Callable[[str, Any], Any]


def _integer(minimum: int, choices: tuple[int, ...] | None = None) -> Check:
    def check(key: str, value: Any) -> int:
        if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
            raise SpecError(f"spec key {key!r} must be an integer >= {minimum}, got {value!r}")
        if choices is not None and value not in choices:
            raise SpecError(f"spec key {key!r} must be one of {choices}, got {value!r}")
        return value
    return check


def _number(low: float, high: float = math.inf, low_open: bool = False) -> Check:
    def check(key: str, value: Any) -> float:
        valid = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        if not valid or value > high or value < low or (low_open and value == low):
            interval = f"{'(' if low_open else '['}{low}, {high}]"
            raise SpecError(f"spec key {key!r} must be a finite number in {interval}, got {value!r}")
        return float(value)
    return check


def _choice(options: tuple[str, ...]) -> Check:
    def check(key: str, value: Any) -> str:
        if value not in options:
            raise SpecError(f"spec key {key!r} must be one of {options}, got {value!r}")
        return value
    return check


def _path(optional: bool = False) -> Check:
    def check(key: str, value: Any) -> Path | None:
        if value is None and optional:
            return None
        if not isinstance(value, (str, os.PathLike)) or not str(value):
            raise SpecError(f"spec key {key!r} must be a file path{' or null' if optional else ''}, got {value!r}")
        return Path(value)
    return check


def _betas(key: str, value: Any) -> tuple[float, float]:
    if not isinstance(value, (list, tuple)) or len(value) != 2:
        raise SpecError(f"spec key {key!r} must be a list [beta1, beta2], got {value!r}")
    beta = _number(0.0, 1.0)
    b1, b2 = (beta(key, b) for b in value)
    if b1 >= 1 or b2 >= 1:
        raise SpecError(f"spec key {key!r}: Adam betas must be below 1, got {value!r}")
    return b1, b2


def _model(key: str, value: Any) -> GPTConfig:
    fields = {f.name for f in dataclasses.fields(GPTConfig)}
    if not isinstance(value, dict) or set(value) != fields:
        raise SpecError(f"spec key {key!r} must be a mapping with exactly the keys {sorted(fields)}, got {value!r}")
    try:
        return GPTConfig(**value)
    except ValueError as exc:
        raise SpecError(f"spec key {key!r}: {exc}") from exc


def _optional_steps(key: str, value: Any) -> int | None:
    return None if value is None else _integer(1)(key, value)


def _boolean(key: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise SpecError(f"spec key {key!r} must be true or false, got {value!r}")
    return value


def _step_list(key: str, value: Any) -> tuple[int, ...]:
    if not isinstance(value, (list, tuple)):
        raise SpecError(f"spec key {key!r} must be a list of steps, got {value!r}")
    steps = tuple(_integer(1)(key, step) for step in value)
    if list(steps) != sorted(set(steps)):
        raise SpecError(f"spec key {key!r} must list distinct steps in increasing order, got {list(steps)}")
    return steps


SPEC_CHECKS: dict[str, Check] = {
    "kind": _choice(TRAINING_KINDS),
    "model": _model,
    "train_tokens": _path(),
    "val_tokens": _path(),
    "init_from": _path(optional=True),
    "seed": _integer(0),
    "batch_size": _integer(1),
    "threads": _integer(1),
    "lr": _number(0.0, low_open=True),
    "min_lr_ratio": _number(0.0, 1.0),
    "warmup_steps": _integer(0),
    "cooldown_fraction": _number(0.0, 1.0, low_open=True),
    "weight_decay": _number(0.0),
    "grad_clip": _number(0.0),
    "betas": _betas,
    "max_steps": _integer(1),
    "min_steps": _integer(0),
    "eval_interval": _integer(1),
    "eval_tokens": _integer(1),
    "patience": _integer(1),
    "checkpoint_interval": _integer(1),
    "log_interval": _integer(1),
    "precision": _choice(PRECISIONS),
    "zero_stage": _integer(0, ZERO_STAGES),
    "stop_after_steps": _optional_steps,
    "snapshot_steps": _step_list,
    "micro_batch_size": _optional_steps,
    "loss_chunk_tokens": _integer(0),
    "activation_checkpointing": _boolean,
    "compile": _boolean,
    "deterministic": _boolean,
}
OPTIONAL_KEYS = {"stop_after_steps": None, "snapshot_steps": (), "micro_batch_size": None, "loss_chunk_tokens": 0,
                 "activation_checkpointing": False, "compile": False, "deterministic": True}


@dataclass(frozen=True)
class TrainSpec:
    """A validated training spec; ``stop_after_steps`` simulates an interruption (tests only).

    The last five keys decide how a step is computed, not what it computes: ``micro_batch_size`` splits each
    process's share of the batch for gradient accumulation (None: one micro-batch), ``loss_chunk_tokens`` chunks
    the loss (0: plain), then activation checkpointing, torch.compile, and deterministic kernels."""

    kind: str
    model: GPTConfig
    train_tokens: Path
    val_tokens: Path
    init_from: Path | None
    seed: int
    batch_size: int
    threads: int
    lr: float
    min_lr_ratio: float
    warmup_steps: int
    cooldown_fraction: float
    weight_decay: float
    grad_clip: float
    betas: tuple[float, float]
    max_steps: int
    min_steps: int
    eval_interval: int
    eval_tokens: int
    patience: int
    checkpoint_interval: int
    log_interval: int
    precision: str
    zero_stage: int
    stop_after_steps: int | None = None
    snapshot_steps: tuple[int, ...] = ()
    micro_batch_size: int | None = None
    loss_chunk_tokens: int = 0
    activation_checkpointing: bool = False
    compile: bool = False
    deterministic: bool = True


def parse_spec(spec: dict) -> TrainSpec:
    """Validate a spec mapping (every key, then the cross-key rules) into a ``TrainSpec``."""
    if not isinstance(spec, dict):
        raise SpecError(f"training spec must be a mapping, got {type(spec).__name__}")
    missing = sorted(set(SPEC_CHECKS) - set(spec) - set(OPTIONAL_KEYS))
    unknown = sorted(set(spec) - set(SPEC_CHECKS))
    if missing or unknown:
        raise SpecError(f"training spec: missing keys {missing}, unknown keys {unknown}")
    values = {key: check(key, spec.get(key, OPTIONAL_KEYS.get(key))) for key, check in SPEC_CHECKS.items()}
    run = TrainSpec(**values)
    if min_steps_beyond_cap(values):
        raise SpecError(f"spec key 'min_steps' ({run.min_steps}) exceeds 'max_steps' ({run.max_steps})")
    if run.micro_batch_size is not None and run.batch_size % run.micro_batch_size:
        raise SpecError(f"spec key 'micro_batch_size' ({run.micro_batch_size}) does not divide 'batch_size' "
                        f"({run.batch_size})")
    if run.snapshot_steps and run.snapshot_steps[-1] > run.max_steps:
        raise SpecError(f"spec key 'snapshot_steps': step {run.snapshot_steps[-1]} is beyond max_steps "
                        f"({run.max_steps})")
    if (run.kind == "finetune") != (run.init_from is not None):
        raise SpecError(f"spec key 'init_from' must be a weights path for kind 'finetune' and null otherwise; "
                        f"got kind {run.kind!r} with init_from={spec['init_from']!r}")
    return run


# ------------------------------------------------------------------------------------------- schedule and data
@dataclass(frozen=True)
class Cooldown:
    """The decay phase of a warmup-stable-decay schedule: from the weights and optimizer state of step ``start``
    down to ``min_lr_ratio * lr`` over ``steps`` steps (Hagele et al. 2024: a short cooldown from any point of
    a constant-rate run matches a cosine schedule of that length, so every run is annealed where it stops)."""

    start: int
    steps: int

    @property
    def end(self) -> int:
        return self.start + self.steps


def cooldown_from(run: TrainSpec, start: int, min_steps: int = 1) -> Cooldown:
    """``cooldown_fraction`` of the steps before ``start``, and at least ``min_steps``."""
    return Cooldown(start, max(min_steps, round(run.cooldown_fraction * start)))


def learning_rate(run: TrainSpec, step: int, cooldown: Cooldown | None = None) -> float:
    """Linear warmup to ``lr``, constant, then (in a cooldown) a 1 - sqrt decay to ``min_lr_ratio * lr``."""
    rate = run.lr * min(1.0, (step + 1) / run.warmup_steps) if run.warmup_steps else run.lr
    if cooldown is None or step < cooldown.start:
        return rate
    progress = min(1.0, (step - cooldown.start + 1) / cooldown.steps)
    return rate * (run.min_lr_ratio + (1 - run.min_lr_ratio) * (1 - math.sqrt(progress)))


def batch_starts(seed: int, step: int, n_tokens: int, n_ctx: int, batch_size: int) -> np.ndarray:
    """Start offsets of the global batch of ``step``: a function of (seed, step) only."""
    return np.random.default_rng([seed, step]).integers(0, n_tokens - n_ctx, size=batch_size)


def validation_starts(n_tokens: int, n_ctx: int, eval_tokens: int) -> np.ndarray:
    """Evenly spread, fixed windows covering about ``eval_tokens`` targets, non-overlapping when they fit."""
    n_windows = max(1, min(math.ceil(eval_tokens / n_ctx), (n_tokens - 1) // n_ctx))
    return np.linspace(0, n_tokens - n_ctx - 1, n_windows).round().astype(np.int64)


def windows(tokens: np.ndarray, starts: np.ndarray, n_ctx: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs and next-token targets of the windows of ``n_ctx + 1`` tokens beginning at ``starts``."""
    chunk = torch.from_numpy(tokens[starts[:, None] + np.arange(n_ctx + 1)].astype(np.int64))
    return chunk[:, :-1], chunk[:, 1:]


def load_tokens(path: Path, config: GPTConfig, role: str) -> np.ndarray:
    tokens, _ = load_token_array(path)
    if len(tokens) < config.n_ctx + 1:
        raise SpecError(f"{role} {path}: {len(tokens)} tokens, fewer than n_ctx + 1 = {config.n_ctx + 1}")
    top = int(tokens.max())
    if top >= config.vocab_size:
        raise SpecError(f"{role} {path}: token id {top} is outside the model vocabulary (vocab_size={config.vocab_size})")
    return tokens


# ------------------------------------------------------------------------------------------- engine
def check_cuda_request() -> None:
    """A job given GPUs (CUDA_VISIBLE_DEVICES, as SLURM sets it) must not silently train on the CPU."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "").strip()
    if visible and visible != "-1" and not torch.cuda.is_available():
        raise DeviceError(f"CUDA_VISIBLE_DEVICES={visible!r} asks for GPU(s), but torch {torch.__version__} sees no "
                          f"usable CUDA device (CPU-only build, no driver, or no GPU on this node); unset "
                          f"CUDA_VISIBLE_DEVICES to train on the CPU")


def check_precision(deepspeed: ModuleType, precision: str) -> None:
    accelerator = deepspeed.get_accelerator()
    if precision == "bf16" and not accelerator.is_bf16_supported():
        raise DeviceError(f"spec key 'precision' is 'bf16', but the {accelerator.device_name()} accelerator of "
                          f"this machine does not support bf16; use precision fp32")


def import_deepspeed() -> ModuleType:
    """Import DeepSpeed for this process: CPU accelerator without a GPU, and no JIT-compiled shm op.

    The first use of DeepSpeed's op table probes every op; async_io's probe links a test program against libaio
    and silences sys.stderr's descriptor, not the linker's, so with sys.stderr a job log (log_to_file) a missing
    libaio printed a linker error on the terminal. No op here does async I/O (NVMe offload), so the table
    entry is set unprobed; building the op for real still runs, and reports, its own check.
    """
    check_cuda_request()
    cpu = not torch.cuda.is_available()
    if cpu:
        os.environ["DS_ACCELERATOR"] = "cpu"
    import deepspeed

    if cpu:
        from deepspeed.ops.op_builder.all_ops import ALL_OPS

        ALL_OPS["async_io"].is_compatible = lambda verbose=False: False
        deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
    return deepspeed


def single_process_env() -> Path | None:
    """Let ``deepspeed.initialize`` run without a launcher (torchrun and deepspeed set these).

    A lone process joins a one-member process group through a private file store: a TCP port picked here
    could be taken by a concurrent job before the store binds it (EADDRINUSE under parallel workflows).
    DeepSpeed reuses an initialised group and only checks that the launcher variables exist. Returns the
    store's directory when this process made one, to be removed with the group.
    """
    for key, value in (("RANK", "0"), ("WORLD_SIZE", "1"), ("LOCAL_RANK", "0"), ("MASTER_ADDR", "127.0.0.1")):
        os.environ.setdefault(key, value)
    if "MASTER_PORT" not in os.environ:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            os.environ["MASTER_PORT"] = str(sock.getsockname()[1])
    if os.environ["WORLD_SIZE"] == "1" and not dist.is_initialized():
        # Bind its functions' default group=group.WORLD while there is none: imported later (the first
        # optimizer imports it), they would hold this group to the end of the process.
        import torch.distributed.nn  # noqa: F401
        store_dir = Path(tempfile.mkdtemp(prefix="transfer-scaling-dist-"))
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend, init_method=f"file://{store_dir / 'store'}", rank=0, world_size=1)
        return store_dir
    return None


def make_optimizer(model: torch.nn.Module, lr: float, betas: tuple[float, float],
                   weight_decay: float) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices only (not on biases and LayerNorm gains)."""
    params = list(model.parameters())
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=lr, betas=betas)


def micro_batches(batch_size: int, world_size: int, micro_batch_size: int | None) -> tuple[int, int]:
    """(micro-batch, accumulation steps) of each process: its equal share of the global batch, split into
    micro-batches of ``micro_batch_size`` sequences (None: the whole share at once)."""
    if batch_size % world_size:
        raise SpecError(f"spec key 'batch_size' ({batch_size}) is not divisible by the world size ({world_size})")
    share = batch_size // world_size
    micro = min(micro_batch_size or share, share)
    if share % micro:
        raise SpecError(f"spec key 'micro_batch_size' ({micro_batch_size}) does not divide the {share} sequences "
                        f"of each of the {world_size} processes ('batch_size' {batch_size})")
    return micro, share // micro


def deepspeed_config(batch_size: int, world_size: int, grad_clip: float, zero_stage: int, precision: str,
                     total_params: int, micro_batch_size: int | None = None) -> dict:
    """ZeRO buckets sized to the model: the 5e8-element defaults are allocated every step, slow on CPU."""
    bucket = min(int(5e8), total_params)
    micro, accumulation = micro_batches(batch_size, world_size, micro_batch_size)
    return {
        "train_batch_size": batch_size,
        "train_micro_batch_size_per_gpu": micro,
        "gradient_accumulation_steps": accumulation,
        "gradient_clipping": grad_clip,
        "zero_optimization": {"stage": zero_stage, "reduce_bucket_size": bucket, "allgather_bucket_size": bucket,
                              "stage3_prefetch_bucket_size": bucket},
        "bf16": {"enabled": precision == "bf16"},
        "steps_per_print": 2**31 - 1,
        "wall_clock_breakdown": False,
    }


def seed_everything(seed: int, threads: int, deterministic: bool = True) -> None:
    """Same spec and seed -> same losses bit for bit (on CPU; GPU kernels are as deterministic as torch allows,
    and only with ``deterministic``, which forbids the faster non-deterministic GPU kernels)."""
    torch.set_num_threads(threads)
    if deterministic and torch.cuda.is_available():
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(deterministic, warn_only=True)
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@contextmanager
def stop_requests() -> Iterator[list[bool]]:
    """Turn SIGTERM/SIGUSR1 into a flag checked at the next step boundary (SLURM sends them before a kill)."""
    flag = [False]

    def request(signum: int, _frame: Any) -> None:
        logger.warning("received %s: checkpointing at the next step boundary", signal.Signals(signum).name)
        flag[0] = True

    previous = {sig: signal.signal(sig, request) for sig in STOP_SIGNALS}
    try:
        yield flag
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


# ------------------------------------------------------------------------------------------- trainer
@dataclass
class Progress:
    """Everything, besides weights and optimizer state, that a resumed run needs to continue exactly."""

    step: int = 0
    steps_trained: int = 0
    best_val_loss: float = math.inf
    best_step: int = -1
    evals_since_best: int = 0
    wall_seconds: float = 0.0
    interval_losses: list[float] = dataclasses.field(default_factory=list)
    last_log_steps: int = 0
    """Steps trained at the last train record: the open log interval, so a resumed run logs where an
    uninterrupted one does even when a snapshot's cooldown carried the count past a log boundary."""
    stop_reason: str = ""
    stable_end: int = -1
    stable_best_step: int = -1
    stable_best_val_loss: float = math.inf
    cooldown_start: int = -1
    cooldown_steps: int = 0

    @property
    def cooldown(self) -> Cooldown | None:
        """None in the stable phase; the decay the run is in once its stopping point is known."""
        return Cooldown(self.cooldown_start, self.cooldown_steps) if self.cooldown_steps else None


class Trainer:
    """One run on one rank: the engine, the data, and the progress that checkpoints carry."""

    def __init__(self, run: TrainSpec, out_dir: Path) -> None:
        self.run = run
        self.layout = RunLayout(out_dir)
        self.deepspeed = import_deepspeed()
        check_precision(self.deepspeed, run.precision)
        self.store_dir = single_process_env()
        self.world_size = int(os.environ["WORLD_SIZE"])
        self.rank = int(os.environ["RANK"])
        self.micro_batch, self.accumulation = micro_batches(run.batch_size, self.world_size, run.micro_batch_size)
        seed_everything(run.seed, run.threads, run.deterministic)
        self.train_tokens = load_tokens(run.train_tokens, run.model, "train_tokens")
        self.val_tokens = load_tokens(run.val_tokens, run.model, "val_tokens")
        self.val_starts = validation_starts(len(self.val_tokens), run.model.n_ctx, run.eval_tokens)
        model = GPT(run.model, run.loss_chunk_tokens, run.activation_checkpointing)
        if run.init_from is not None:
            check_sha256_sidecar(run.init_from)
            load_weights(model, run.init_from)
        self.n_params = n_params(model)
        self.optimizer = make_optimizer(model, run.lr, run.betas, run.weight_decay)
        config = deepspeed_config(run.batch_size, self.world_size, run.grad_clip, run.zero_stage, run.precision,
                                  sum(p.numel() for p in model.parameters()), run.micro_batch_size)
        warnings.filterwarnings("ignore", message=".*(reduce_scatter_tensor|all_gather_into_tensor).* deprecated",
                                category=FutureWarning)
        self.engine, *_ = self.deepspeed.initialize(model=model, optimizer=self.optimizer, config=config)
        if run.zero_stage == 3:
            self.deepspeed.zero.register_external_parameter(self.engine.module, self.engine.module.tok_emb.weight)
        if run.compile:
            self.engine.compile()
        self.is_main = self.engine.global_rank == 0
        self.checkpoints = Checkpoints(self.engine, self.layout, self.is_main, self.barrier)
        self.metrics: Any = None
        self.progress = Progress()
        self.pending: list[tuple[int, torch.Tensor]] = []
        self.last_finite_loss: float | None = None

    @property
    def tokens_per_step(self) -> int:
        return self.run.batch_size * self.run.model.n_ctx

    @property
    def tokens_seen(self) -> int:
        """Tokens of every optimizer step taken, cooldowns and discarded steps after the stable best included."""
        return self.progress.steps_trained * self.tokens_per_step

    # ---------------------------------------------------------------- steps
    def set_lr(self, lr: float) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    def train_step(self, cooldown: Cooldown | None) -> None:
        """One optimizer step: this rank's share of the global batch of (seed, step), in micro-batches whose
        gradients DeepSpeed averages (it scales each loss by 1 / accumulation and steps at the boundary)."""
        run, step = self.run, self.progress.step
        self.set_lr(learning_rate(run, step, cooldown))
        starts = batch_starts(run.seed, step, len(self.train_tokens), run.model.n_ctx, run.batch_size)
        share = self.micro_batch * self.accumulation
        mine = starts[self.rank * share:(self.rank + 1) * share]
        losses = []
        for begin in range(0, share, self.micro_batch):
            x, y = windows(self.train_tokens, mine[begin:begin + self.micro_batch], run.model.n_ctx)
            _, loss = self.engine(x.to(self.engine.device), y.to(self.engine.device))
            self.engine.backward(loss)
            self.engine.step()
            losses.append(loss.detach())
        self.pending.append((step, losses[0] if len(losses) == 1 else torch.stack(losses).mean()))
        self.progress.step += 1
        self.progress.steps_trained += 1

    def lr_at(self, step: int) -> float:
        return learning_rate(self.run, step, self.progress.cooldown)

    def check_losses(self) -> None:
        """Move pending losses to the host (one sync), averaged over ranks; stop on NaN/inf."""
        if not self.pending:
            return
        losses = torch.stack([loss for _, loss in self.pending]).double()
        if self.world_size > 1:
            dist.all_reduce(losses)
            losses /= self.world_size
        for (step, _), loss in zip(self.pending, losses.tolist()):
            if not math.isfinite(loss):
                raise TrainingDiverged(
                    f"loss became {loss} at step {step} (lr {self.lr_at(step):.3g}); "
                    f"last finite loss {self.last_finite_loss}; no checkpoint written for this step")
            self.last_finite_loss = loss
            self.progress.interval_losses.append(loss)
        self.pending.clear()

    @torch.no_grad()
    def validation_loss(self) -> float:
        """Mean loss per token over the fixed windows; every rank evaluates all of them (ZeRO-3 safe)."""
        self.engine.eval()
        total = torch.zeros((), dtype=torch.float64)
        for begin in range(0, len(self.val_starts), self.micro_batch):
            x, y = windows(self.val_tokens, self.val_starts[begin:begin + self.micro_batch], self.run.model.n_ctx)
            _, loss = self.engine(x.to(self.engine.device), y.to(self.engine.device))
            total += loss.double().cpu() * y.numel()
        self.engine.train()
        return total.item() / (len(self.val_starts) * self.run.model.n_ctx)

    def write_weights(self, state: dict[str, torch.Tensor], path: Path) -> None:
        """Weights plus their sha256 sidecar, checked wherever they are loaded (evaluation, fine-tuning)."""
        if self.is_main:
            save_weights(state, path)
            write_sha256_sidecar(path)

    def module_state(self) -> dict[str, torch.Tensor]:
        """Full module weights; under ZeRO-3 they are gathered from the shards (a collective on every rank)."""
        module = self.engine.module
        if self.run.zero_stage == 3:
            with self.deepspeed.zero.GatheredParameters(list(module.parameters())):
                return {name: t.detach().float().cpu().clone() for name, t in module.state_dict().items()}
        return module.state_dict()

    # ---------------------------------------------------------------- events
    def record(self, event: dict) -> None:
        if self.metrics is not None:
            self.metrics.write(json.dumps(event) + "\n")
            self.metrics.flush()

    def log_train(self, interval_seconds: float, interval_steps: int) -> None:
        self.check_losses()
        step, lr = self.progress.step, self.lr_at(self.progress.step - 1)
        if not self.progress.interval_losses:
            return
        train_loss = sum(self.progress.interval_losses) / len(self.progress.interval_losses)
        rate = interval_steps * self.run.batch_size * self.run.model.n_ctx / interval_seconds
        self.progress.interval_losses.clear()
        self.info("step %d  tokens %d  train loss %.4f  lr %.3g  %.0f tokens/s",
                  step, self.tokens_seen, train_loss, lr, rate)
        self.record({"event": "train", "step": step, "tokens_seen": self.tokens_seen, "train_loss": train_loss,
                     "lr": lr, "tokens_per_second": rate})

    def evaluate(self) -> None:
        self.check_losses()
        progress = self.progress
        val_loss = self.validation_loss()
        if not math.isfinite(val_loss):
            raise TrainingDiverged(f"validation loss became {val_loss} at step {progress.step} "
                                   f"(lr {self.lr_at(max(0, progress.step - 1)):.3g}); "
                                   f"last finite train loss {self.last_finite_loss}")
        is_best = val_loss < progress.best_val_loss
        if is_best:
            progress.best_val_loss, progress.best_step, progress.evals_since_best = val_loss, progress.step, 0
            self.write_weights(self.module_state(), self.layout.weights)
            if progress.cooldown is None:
                self.checkpoints.save_state(self.layout.stable_best_dir)
        else:
            progress.evals_since_best += 1
        self.info("step %d  val loss %.4f%s", progress.step, val_loss, "  (best)" if is_best else "")
        self.record({"event": "eval", "step": progress.step, "tokens_seen": self.tokens_seen,
                     "val_loss": val_loss, "best": is_best, "phase": "stable" if progress.cooldown is None
                     else "cooldown"})

    # ---------------------------------------------------------------- schedule phases
    def start_cooldown(self, reason: str) -> None:
        """End the stable phase: return to the best stable step's state and decay from there. From now on the
        best weights are the cooldown's, so every run is compared annealed at its own stopping point."""
        progress = self.progress
        self.check_losses()
        self.checkpoints.load_state(self.layout.stable_best_dir)
        # At least one validation interval, so that a run whose best is its first evaluation (a fine-tune that
        # only hurts at the peak rate) still gets a decayed-rate chance to improve on its starting weights.
        cooldown = cooldown_from(self.run, progress.best_step, min_steps=self.run.eval_interval)
        self.info("%s at step %d: cooling down from the best stable step %d (val loss %.4f) over %d steps",
                  reason, progress.step, cooldown.start, progress.best_val_loss, cooldown.steps)
        self.record({"event": "cooldown", "step": progress.step, "reason": reason, "start": cooldown.start,
                     "steps": cooldown.steps, "stable_best_val_loss": progress.best_val_loss})
        progress.stop_reason, progress.stable_end = reason, progress.step
        progress.stable_best_step, progress.stable_best_val_loss = progress.best_step, progress.best_val_loss
        progress.cooldown_start, progress.cooldown_steps = cooldown.start, cooldown.steps
        progress.step, progress.best_val_loss, progress.best_step, progress.evals_since_best = (
            cooldown.start, math.inf, -1, 0)
        progress.interval_losses.clear()
        self.checkpoints.remove_state(self.layout.stable_best_dir)

    def anneal_snapshot(self) -> None:
        """A D_p point (Isik et al. 2024): a cooldown branched from the stable phase at this step, its weights
        kept as the snapshot, then back to the stable phase as if it had not happened."""
        progress = self.progress
        self.check_losses()
        branch_dir = self.layout.branch_dir
        self.checkpoints.save_state(branch_dir)
        step, interval_losses = progress.step, list(progress.interval_losses)
        cooldown = cooldown_from(self.run, step)
        while progress.step < cooldown.end:
            self.train_step(cooldown)
        self.check_losses()
        self.write_weights(self.module_state(), self.layout.snapshot(step * self.tokens_per_step))
        self.info("snapshot at step %d (%d tokens) annealed over %d steps: val loss %.4f", step,
                  step * self.tokens_per_step, cooldown.steps, self.validation_loss())
        self.checkpoints.load_state(branch_dir)
        progress.step, progress.interval_losses = step, interval_losses
        self.checkpoints.remove_state(branch_dir)

    def last_snapshot_from_best(self) -> None:
        """A snapshot at the last stable step is the run's own annealed result: copied, not trained again."""
        last = self.run.snapshot_steps[-1] if self.run.snapshot_steps else None
        if last != self.run.max_steps or not self.is_main:
            return
        target = self.layout.snapshot(last * self.tokens_per_step)
        for source, dest in ((self.layout.weights, target), (self.layout.weights_sidecar, sidecar_path(target))):
            with atomic_path(dest) as tmp:
                shutil.copyfile(source, tmp)

    # ---------------------------------------------------------------- checkpoints
    def save_checkpoint(self) -> None:
        self.check_losses()
        tag = f"{'stable' if self.progress.cooldown is None else 'cooldown'}{self.progress.steps_trained:08d}"
        self.checkpoints.save(tag, dataclasses.asdict(self.progress))
        self.info("checkpoint %s written at step %d", tag, self.progress.step)

    def resume(self) -> None:
        """Continue from the last complete checkpoint, or start afresh (dropping any partial one)."""
        resumed = self.checkpoints.resume()
        if resumed is not None:
            tag, progress = resumed
            self.progress = Progress(**progress)
            self.info("resumed from checkpoint %s at step %d", tag, self.progress.step)

    def info(self, message: str, *args: Any) -> None:
        if self.is_main:
            logger.info(message, *args)

    def check_replicas_agree(self) -> None:
        """Data parallelism must leave identical parameters on every rank (ZeRO-3 shards them instead)."""
        if self.world_size == 1 or self.run.zero_stage == 3:
            return
        flat = torch.cat([p.detach().double().flatten() for p in self.engine.module.parameters()])
        highest, lowest = flat.clone(), flat.clone()
        dist.all_reduce(highest, op=dist.ReduceOp.MAX)
        dist.all_reduce(lowest, op=dist.ReduceOp.MIN)
        if not torch.equal(highest, lowest):
            raise RuntimeError(f"parameters differ across the {self.world_size} ranks after training")
        self.info("parameters identical on all %d ranks", self.world_size)

    def barrier(self) -> None:
        if self.world_size > 1:
            dist.barrier()

    def stop_requested(self, flag: list[bool]) -> bool:
        """Agree across ranks, so that every rank joins the checkpoint collective."""
        stop_after = self.run.stop_after_steps
        requested = flag[0] or (stop_after is not None and self.progress.steps_trained >= stop_after)
        if self.world_size > 1:
            vote = torch.tensor(float(requested), device=self.engine.device)
            dist.all_reduce(vote, op=dist.ReduceOp.MAX)
            requested = bool(vote.item())
        return requested

    # ---------------------------------------------------------------- loop
    def fit(self) -> dict:
        run = self.run
        self.resume()
        if self.is_main:
            write_json(self.layout.model, {**run.model.to_dict(), "n_params": self.n_params})
        wall_before, started = self.progress.wall_seconds, time.perf_counter()
        self.metrics = open(self.layout.metrics, "a", encoding="utf-8") if self.is_main else None
        error = None
        try:
            with stop_requests() as flag:
                stop_reason = self.loop(flag, lambda: wall_before + time.perf_counter() - started)
        except TrainingDiverged as diverged:
            if not self.records_divergence():
                raise
            stop_reason, error = DIVERGED, str(diverged)
            logger.error("run diverged; recorded as failed (the fit lists it and leaves it out): %s", error)
            self.record({"event": DIVERGED, "step": self.progress.step, "error": error})
        finally:
            if self.metrics is not None:
                self.metrics.close()
        progress = self.progress
        missed = [step for step in run.snapshot_steps if step > progress.stable_end]
        if missed and error is None:
            raise RuntimeError(f"training stopped ({stop_reason}) at step {progress.stable_end}, before snapshot "
                               f"steps {missed}; disable early stopping (larger patience) for runs with snapshots")
        progress.wall_seconds = wall_before + time.perf_counter() - started
        summary = {
            "kind": run.kind, "n_params": self.n_params, "steps": progress.steps_trained,
            "tokens_seen": self.tokens_seen, "best_step": progress.best_step, "best_val_loss": progress.best_val_loss,
            "stable_best_step": progress.stable_best_step, "stable_best_val_loss": progress.stable_best_val_loss,
            "cooldown_start": progress.cooldown_start, "cooldown_steps": progress.cooldown_steps,
            "stop_reason": stop_reason, "wall_seconds": progress.wall_seconds,
            "tokens_per_second": self.tokens_seen / progress.wall_seconds,
            "seed": run.seed, "status": "ok" if error is None else "failed",
            "peak_gpu_memory_gib": torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None,
        }
        if error is None:
            self.check_replicas_agree()
        else:
            summary["error"] = error
        if self.is_main:
            write_json(self.layout.summary, summary)
            self.checkpoints.discard()
        self.info("finished after %d steps (%s, annealed from step %d): best val loss %.4f at step %d",
                  progress.steps_trained, stop_reason, progress.cooldown_start, progress.best_val_loss,
                  progress.best_step)
        self.barrier()
        return summary

    def records_divergence(self) -> bool:
        """A diverged fine-tuning or from-scratch run is a result (a failed point, listed by the fit) so that the
        rest of a grid goes on; a diverged pretraining is not, because every fine-tune would start from it. Best
        weights from before the divergence must exist (the step-0 evaluation writes them)."""
        progress = self.progress
        return self.run.kind != "pretrain" and math.isfinite(min(progress.best_val_loss, progress.stable_best_val_loss))

    def loop(self, flag: list[bool], wall_seconds: Callable[[], float]) -> str:
        """The stable phase until max_steps or early stopping, then the cooldown; return the stop reason. Logs and
        checkpoints fall on multiples of their intervals of steps trained (a snapshot's cooldown may jump one)."""
        run, progress = self.run, self.progress
        if progress.steps_trained == 0:
            self.evaluate()
        # The rate counts steps timed by this process: a resumed run's first interval began before the kill.
        last_log_time, timed_from = time.perf_counter(), progress.steps_trained
        last_checkpoint = progress.steps_trained
        while progress.cooldown is None or progress.step < progress.cooldown.end:
            self.train_step(progress.cooldown)
            if progress.steps_trained // run.log_interval > progress.last_log_steps // run.log_interval:
                now = time.perf_counter()
                self.log_train(now - last_log_time, progress.steps_trained - max(progress.last_log_steps, timed_from))
                last_log_time, progress.last_log_steps = now, progress.steps_trained
            if progress.cooldown is None:
                self.after_stable_step()
            elif (progress.step - progress.cooldown_start) % run.eval_interval == 0 \
                    or progress.step == progress.cooldown.end:
                self.evaluate()
            progress.wall_seconds = wall_seconds()
            if self.stop_requested(flag):
                self.save_checkpoint()
                raise TrainingInterrupted(progress.steps_trained)
            if progress.steps_trained // run.checkpoint_interval > last_checkpoint // run.checkpoint_interval:
                self.save_checkpoint()
                last_checkpoint = progress.steps_trained
        self.check_losses()
        self.last_snapshot_from_best()
        return progress.stop_reason

    def after_stable_step(self) -> None:
        """Snapshots, validation and the stopping decision of the stable phase."""
        run, progress = self.run, self.progress
        step = progress.step
        if step in run.snapshot_steps and step < run.max_steps:
            self.anneal_snapshot()
        if step % run.eval_interval == 0 or step == run.max_steps:
            self.evaluate()
            if step == run.max_steps:
                self.start_cooldown("max_steps")
            elif step >= run.min_steps and progress.evals_since_best >= run.patience:
                self.start_cooldown("early_stopping")


def trainer_spec_of(document: Any) -> Any:
    """The trainer spec in a ``--spec`` file. A run record (a run directory's spec.json) holds it as its
    ``trainer`` member, which no trainer spec has; anything else is taken as a trainer spec itself."""
    if isinstance(document, dict) and "trainer" in document:
        return document["trainer"]
    return document


def train(spec: dict, out_dir: Path) -> dict:
    """Train one run described by ``spec`` into ``out_dir``; resume there if a complete checkpoint exists."""
    run = parse_spec(spec)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    trainer = Trainer(run, out_dir)
    try:
        return trainer.fit()
    finally:
        trainer.engine.destroy()
        # An exception from fit keeps the trainer alive in its frames, not the engine (which its checkpoints hold).
        del trainer.engine, trainer.checkpoints
        end_process_groups(trainer.deepspeed)
        if trainer.store_dir is not None:
            shutil.rmtree(trainer.store_dir, ignore_errors=True)


def end_process_groups(deepspeed: ModuleType) -> None:
    """Destroy every process group now, which joins gloo's worker threads while the interpreter is whole.

    A worker drops a collective (and its tensors) only after the ranks' wait for it has returned. If the
    interpreter is finalising by then, taking the GIL ends that thread inside a noexcept destructor and the
    rank aborts ('terminate called without an active exception', exit 134 for a finished run). DeepSpeed's
    data-parallel group outlives the destroy call inside the engine's reference cycles, hence the collection.
    """
    deepspeed.comm.destroy_process_group()
    gc.collect()


def train_to_exit_code(spec: dict, out_dir: Path) -> int:
    """Train; 0 when the run is finished, INTERRUPTED_EXIT_CODE after a checkpoint on a stop request."""
    try:
        train(spec, out_dir)
    except TrainingInterrupted as exc:
        logger.warning("%s (exit code %d)", exc, INTERRUPTED_EXIT_CODE)
        return INTERRUPTED_EXIT_CODE
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Train one pretrain/finetune/scratch run (resumable).")
    parser.add_argument("--spec", type=Path, required=True, help="a run record (spec.json) or a bare trainer spec")
    parser.add_argument("--out", type=Path, required=True, help="run directory")
    parser.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    rank = int(os.environ.get("RANK", "0"))
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING,
                        format="%(asctime)s %(name)s %(levelname)s: %(message)s")
    return train_to_exit_code(trainer_spec_of(read_json(args.spec)), args.out)


if __name__ == "__main__":
    sys.exit(main())
