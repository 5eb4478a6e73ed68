"""When and on what a run trains: the learning-rate schedule (warmup, constant, cooldown) and the token windows of
each step and of validation, all functions of the spec and (seed, step) alone, so that a resumed or data-parallel
run draws exactly what an uninterrupted single process does.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..tokens import load_token_array
from .model import GPTConfig
from .spec import SpecError, TrainSpec


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

