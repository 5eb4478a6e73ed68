"""One run on one rank: its data, its progress, and what a step, an evaluation and a checkpoint do.

When each of them happens (the stable phase, early stopping, the cooldown, annealed snapshots) is the loop's
business (loop.py); this class keeps the state a resumed run must find again exactly.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..io import check_sha256_sidecar, write_sha256_sidecar
from ..layout import RunLayout
from .checkpoints import Checkpoints
from .engine import Engine
from .model import GPT, load_weights, n_params, save_weights
from .schedule import Cooldown, batch_starts, learning_rate, load_tokens, validation_starts, windows
from .spec import TrainSpec

logger = logging.getLogger("transfer_scaling.training")


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite."""


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
    """One run on one rank: the engine, the data, the progress that checkpoints carry, and the run's records
    (metrics.jsonl, written by the main rank only)."""

    def __init__(self, run: TrainSpec, out_dir: Path) -> None:
        self.run = run
        self.layout = RunLayout(out_dir)
        self.train_tokens = load_tokens(run.train_tokens, run.model, "train_tokens")
        self.val_tokens = load_tokens(run.val_tokens, run.model, "val_tokens")
        self.val_starts = validation_starts(len(self.val_tokens), run.model.n_ctx, run.eval_tokens)
        self.engine = Engine(run, self.build_model)
        self.is_main = self.engine.is_main
        self.n_params = n_params(self.engine.module)
        self.checkpoints = Checkpoints(self.engine.engine, self.layout, self.is_main, self.engine.barrier)
        self.metrics: Any = None
        self.progress = Progress()
        self.pending: list[tuple[int, torch.Tensor]] = []
        self.last_finite_loss: float | None = None

    def build_model(self) -> GPT:
        model = GPT(self.run.model, self.run.loss_chunk_tokens, self.run.activation_checkpointing)
        if self.run.init_from is not None:
            check_sha256_sidecar(self.run.init_from)
            load_weights(model, self.run.init_from)
        return model

    def close(self) -> None:
        """Drop every reference to DeepSpeed's engine (the checkpoints hold one), then the engine itself."""
        del self.checkpoints
        self.engine.close()

    @property
    def tokens_per_step(self) -> int:
        return self.run.batch_size * self.run.model.n_ctx

    @property
    def tokens_seen(self) -> int:
        """Tokens of every optimizer step taken, cooldowns and discarded steps after the stable best included."""
        return self.progress.steps_trained * self.tokens_per_step

    # ---------------------------------------------------------------- steps and losses
    def train_step(self, cooldown: Cooldown | None) -> None:
        """This rank's share of the global batch of (seed, step)."""
        run, step, share = self.run, self.progress.step, self.engine.share
        starts = batch_starts(run.seed, step, len(self.train_tokens), run.model.n_ctx, run.batch_size)
        x, y = windows(self.train_tokens, starts[self.engine.rank * share:(self.engine.rank + 1) * share],
                       run.model.n_ctx)
        self.pending.append((step, self.engine.step(learning_rate(run, step, cooldown), x, y)))
        self.progress.step += 1
        self.progress.steps_trained += 1

    def lr_at(self, step: int) -> float:
        return learning_rate(self.run, step, self.progress.cooldown)

    def check_losses(self) -> None:
        """Move pending losses to the host (one sync), averaged over ranks; stop on NaN/inf."""
        if not self.pending:
            return
        losses = self.engine.mean_over_ranks(torch.stack([loss for _, loss in self.pending]))
        for (step, _), loss in zip(self.pending, losses.tolist()):
            if not math.isfinite(loss):
                raise TrainingDiverged(
                    f"loss became {loss} at step {step} (lr {self.lr_at(step):.3g}); "
                    f"last finite loss {self.last_finite_loss}; no checkpoint written for this step")
            self.last_finite_loss = loss
            self.progress.interval_losses.append(loss)
        self.pending.clear()

    def validation_loss(self) -> float:
        """Mean loss per token over the fixed validation windows, a micro-batch at a time."""
        micro, n_ctx = self.engine.micro_batch, self.run.model.n_ctx
        return self.engine.mean_loss([windows(self.val_tokens, self.val_starts[begin:begin + micro], n_ctx)
                                      for begin in range(0, len(self.val_starts), micro)])

    def write_weights(self, state: dict[str, torch.Tensor], path: Path) -> None:
        """Weights plus their sha256 sidecar, checked wherever they are loaded (evaluation, fine-tuning)."""
        if self.is_main:
            save_weights(state, path)
            write_sha256_sidecar(path)

    # ---------------------------------------------------------------- records
    def info(self, message: str, *args: Any) -> None:
        if self.is_main:
            logger.info(message, *args)

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
        rate = interval_steps * self.tokens_per_step / interval_seconds
        self.progress.interval_losses.clear()
        self.info("step %d  tokens %d  train loss %.4f  lr %.3g  %.0f tokens/s",
                  step, self.tokens_seen, train_loss, lr, rate)
        self.record({"event": "train", "step": step, "tokens_seen": self.tokens_seen, "train_loss": train_loss,
                     "lr": lr, "tokens_per_second": rate})

    def evaluate(self) -> None:
        """Validation loss now; a new best writes the best weights (and, in the stable phase, the state a
        cooldown will start from)."""
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
            self.write_weights(self.engine.module_state(), self.layout.weights)
            if progress.cooldown is None:
                self.checkpoints.save_state(self.layout.stable_best_dir)
        else:
            progress.evals_since_best += 1
        self.info("step %d  val loss %.4f%s", progress.step, val_loss, "  (best)" if is_best else "")
        self.record({"event": "eval", "step": progress.step, "tokens_seen": self.tokens_seen,
                     "val_loss": val_loss, "best": is_best, "phase": "stable" if progress.cooldown is None
                     else "cooldown"})

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
