"""The course of one run: a constant-rate phase until ``max_steps`` or early stopping, then a cooldown from its best
step (Hagele et al. 2024's warmup-stable-decay, so every run is compared annealed where it stops), with annealed
D_p snapshots branched off the stable phase (Isik et al. 2024), checkpoints and stop requests on the way.

Logs and checkpoints fall on multiples of their intervals of steps trained (a snapshot's cooldown may jump one).
Every run is early-stopped on a fixed set of validation windows, as in the paper.
"""

from __future__ import annotations

import logging
import math
import shutil
import signal
import time
from contextlib import contextmanager
from typing import Any, Callable, Iterator

import torch

from ..io import atomic_path, sidecar_path, write_json
from .schedule import cooldown_from
from .trainer import Trainer, TrainingDiverged

logger = logging.getLogger("transfer_scaling.training")

STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)
DIVERGED = "diverged"
"""Stop reason of a fine-tuning or from-scratch run whose loss became NaN or infinite."""


class TrainingInterrupted(Exception):
    """A stop was requested; a complete checkpoint was written and the run can be resumed."""

    def __init__(self, step: int) -> None:
        super().__init__(f"training interrupted after step {step}; checkpoint written, rerun to resume")
        self.step = step


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


class RunLoop:
    """Drives a trainer through the phases of its run and returns the run's summary."""

    def __init__(self, trainer: Trainer) -> None:
        self.trainer = trainer
        self.run = trainer.run

    def __call__(self) -> dict:
        trainer, run = self.trainer, self.run
        trainer.resume()
        if trainer.is_main:
            write_json(trainer.layout.model, {**run.model.to_dict(), "n_params": trainer.n_params})
        wall_before, started = trainer.progress.wall_seconds, time.perf_counter()
        trainer.metrics = open(trainer.layout.metrics, "a", encoding="utf-8") if trainer.is_main else None
        error = None
        try:
            with stop_requests() as flag:
                stop_reason = self.loop(flag, lambda: wall_before + time.perf_counter() - started)
        except TrainingDiverged as diverged:
            if not self.records_divergence():
                raise
            stop_reason, error = DIVERGED, str(diverged)
            logger.error("run diverged; recorded as failed (the fit lists it and leaves it out): %s", error)
            trainer.record({"event": DIVERGED, "step": trainer.progress.step, "error": error})
        finally:
            if trainer.metrics is not None:
                trainer.metrics.close()
        missed = [step for step in run.snapshot_steps if step > trainer.progress.stable_end]
        if missed and error is None:
            raise RuntimeError(f"training stopped ({stop_reason}) at step {trainer.progress.stable_end}, before "
                               f"snapshot steps {missed}; disable early stopping (larger patience) for runs with "
                               "snapshots")
        trainer.progress.wall_seconds = wall_before + time.perf_counter() - started
        summary = self.summary(stop_reason, error)
        if error is None and not trainer.engine.parameters_agree():
            raise RuntimeError(f"parameters differ across the {trainer.engine.world_size} ranks after training")
        if error is None and trainer.engine.world_size > 1:
            trainer.info("parameters identical on all %d ranks", trainer.engine.world_size)
        if trainer.is_main:
            write_json(trainer.layout.summary, summary)
            trainer.checkpoints.discard()
        progress = trainer.progress
        trainer.info("finished after %d steps (%s, annealed from step %d): best val loss %.4f at step %d",
                     progress.steps_trained, stop_reason, progress.cooldown_start, progress.best_val_loss,
                     progress.best_step)
        trainer.engine.barrier()
        return summary

    def summary(self, stop_reason: str, error: str | None) -> dict:
        trainer, progress = self.trainer, self.trainer.progress
        summary = {
            "kind": self.run.kind, "n_params": trainer.n_params, "steps": progress.steps_trained,
            "tokens_seen": trainer.tokens_seen, "best_step": progress.best_step,
            "best_val_loss": progress.best_val_loss, "stable_best_step": progress.stable_best_step,
            "stable_best_val_loss": progress.stable_best_val_loss, "cooldown_start": progress.cooldown_start,
            "cooldown_steps": progress.cooldown_steps, "stop_reason": stop_reason,
            "wall_seconds": progress.wall_seconds, "tokens_per_second": trainer.tokens_seen / progress.wall_seconds,
            "seed": self.run.seed, "status": "ok" if error is None else "failed",
            "peak_gpu_memory_gib": torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None,
        }
        return summary if error is None else {**summary, "error": error}

    def records_divergence(self) -> bool:
        """A diverged fine-tuning or from-scratch run is a result (a failed point, listed by the fit) so that the
        rest of a grid goes on; a diverged pretraining is not, because every fine-tune would start from it. Best
        weights from before the divergence must exist (the step-0 evaluation writes them)."""
        progress = self.trainer.progress
        return self.run.kind != "pretrain" and math.isfinite(min(progress.best_val_loss, progress.stable_best_val_loss))

    def loop(self, flag: list[bool], wall_seconds: Callable[[], float]) -> str:
        """The stable phase until max_steps or early stopping, then the cooldown; return the stop reason."""
        trainer, run, progress = self.trainer, self.run, self.trainer.progress
        if progress.steps_trained == 0:
            trainer.evaluate()
        # The rate counts steps timed by this process: a resumed run's first interval began before the kill.
        last_log_time, timed_from = time.perf_counter(), progress.steps_trained
        last_checkpoint = progress.steps_trained
        while progress.cooldown is None or progress.step < progress.cooldown.end:
            trainer.train_step(progress.cooldown)
            if progress.steps_trained // run.log_interval > progress.last_log_steps // run.log_interval:
                now = time.perf_counter()
                trainer.log_train(now - last_log_time, progress.steps_trained - max(progress.last_log_steps, timed_from))
                last_log_time, progress.last_log_steps = now, progress.steps_trained
            if progress.cooldown is None:
                self.after_stable_step()
            elif (progress.step - progress.cooldown_start) % run.eval_interval == 0 \
                    or progress.step == progress.cooldown.end:
                trainer.evaluate()
            progress.wall_seconds = wall_seconds()
            if self.stop_requested(flag):
                trainer.save_checkpoint()
                raise TrainingInterrupted(progress.steps_trained)
            if progress.steps_trained // run.checkpoint_interval > last_checkpoint // run.checkpoint_interval:
                trainer.save_checkpoint()
                last_checkpoint = progress.steps_trained
        trainer.check_losses()
        self.last_snapshot_from_best()
        return progress.stop_reason

    def after_stable_step(self) -> None:
        """Snapshots, validation and the stopping decision of the stable phase."""
        trainer, run, progress = self.trainer, self.run, self.trainer.progress
        step = progress.step
        if step in run.snapshot_steps and step < run.max_steps:
            self.anneal_snapshot()
        if step % run.eval_interval == 0 or step == run.max_steps:
            trainer.evaluate()
            if step == run.max_steps:
                self.start_cooldown("max_steps")
            elif step >= run.min_steps and progress.evals_since_best >= run.patience:
                self.start_cooldown("early_stopping")

    def stop_requested(self, flag: list[bool]) -> bool:
        """Agreed across ranks, so that every rank joins the checkpoint collective."""
        stop_after = self.run.stop_after_steps
        return self.trainer.engine.any_rank(
            flag[0] or (stop_after is not None and self.trainer.progress.steps_trained >= stop_after))

    # ---------------------------------------------------------------- phases
    def start_cooldown(self, reason: str) -> None:
        """End the stable phase: return to the best stable step's state and decay from there. From now on the
        best weights are the cooldown's, so every run is compared annealed at its own stopping point."""
        trainer, progress = self.trainer, self.trainer.progress
        trainer.check_losses()
        trainer.checkpoints.load_state(trainer.layout.stable_best_dir)
        # At least one validation interval, so that a run whose best is its first evaluation (a fine-tune that
        # only hurts at the peak rate) still gets a decayed-rate chance to improve on its starting weights.
        cooldown = cooldown_from(self.run, progress.best_step, min_steps=self.run.eval_interval)
        trainer.info("%s at step %d: cooling down from the best stable step %d (val loss %.4f) over %d steps",
                     reason, progress.step, cooldown.start, progress.best_val_loss, cooldown.steps)
        trainer.record({"event": "cooldown", "step": progress.step, "reason": reason, "start": cooldown.start,
                        "steps": cooldown.steps, "stable_best_val_loss": progress.best_val_loss})
        progress.stop_reason, progress.stable_end = reason, progress.step
        progress.stable_best_step, progress.stable_best_val_loss = progress.best_step, progress.best_val_loss
        progress.cooldown_start, progress.cooldown_steps = cooldown.start, cooldown.steps
        progress.step, progress.best_val_loss, progress.best_step, progress.evals_since_best = (
            cooldown.start, math.inf, -1, 0)
        progress.interval_losses.clear()
        trainer.checkpoints.remove_state(trainer.layout.stable_best_dir)

    def anneal_snapshot(self) -> None:
        """A D_p point (Isik et al. 2024): a cooldown branched from the stable phase at this step, its weights
        kept as the snapshot, then back to the stable phase as if it had not happened."""
        trainer, progress = self.trainer, self.trainer.progress
        trainer.check_losses()
        branch_dir = trainer.layout.branch_dir
        trainer.checkpoints.save_state(branch_dir)
        step, interval_losses = progress.step, list(progress.interval_losses)
        cooldown = cooldown_from(self.run, step)
        while progress.step < cooldown.end:
            trainer.train_step(cooldown)
        trainer.check_losses()
        trainer.write_weights(trainer.engine.module_state(), trainer.layout.snapshot(step * trainer.tokens_per_step))
        trainer.info("snapshot at step %d (%d tokens) annealed over %d steps: val loss %.4f", step,
                     step * trainer.tokens_per_step, cooldown.steps, trainer.validation_loss())
        trainer.checkpoints.load_state(branch_dir)
        progress.step, progress.interval_losses = step, interval_losses
        trainer.checkpoints.remove_state(branch_dir)

    def last_snapshot_from_best(self) -> None:
        """A snapshot at the last stable step is the run's own annealed result: copied, not trained again."""
        trainer = self.trainer
        last = self.run.snapshot_steps[-1] if self.run.snapshot_steps else None
        if last != self.run.max_steps or not trainer.is_main:
            return
        target = trainer.layout.snapshot(last * trainer.tokens_per_step)
        for source, dest in ((trainer.layout.weights, target), (trainer.layout.weights_sidecar, sidecar_path(target))):
            with atomic_path(dest) as tmp:
                shutil.copyfile(source, tmp)
