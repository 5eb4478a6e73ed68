"""The trainer spec: every key a training run reads, checked one by one and then across keys, so that a bad spec
fails before any process group, engine or file exists.

A run record (``spec.json`` of a run directory) holds the trainer spec as its ``trainer`` member; the other keys of
a record name the run (runs.py).
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from ..plan import TRAINING_KINDS, min_steps_beyond_cap
from .model import GPTConfig

PRECISIONS = ("fp32", "bf16")
ZERO_STAGES = (0, 1, 2, 3)


class SpecError(ValueError):
    """A training spec is missing a key or has a value out of range."""


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



def trainer_spec_of(document: Any) -> Any:
    """The trainer spec in a ``--spec`` file. A run record (a run directory's spec.json) holds it as its
    ``trainer`` member, which no trainer spec has; anything else is taken as a trainer spec itself."""
    if isinstance(document, dict) and "trainer" in document:
        return document["trainer"]
    return document

