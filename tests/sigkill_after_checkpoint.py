"""Run the trainer's command line and SIGKILL it at a chosen position: ``--extra-steps`` training steps after the
first checkpoint this process completes (0: the moment the checkpoint is marked complete).

A real kill -9 (no handler runs, nothing is closed or flushed beyond what the trainer already wrote), placed by
the run's own progress instead of by a clock, so a test can visit every checkpoint position of a run, one
process per position, and find the same positions every time.

    python tests/sigkill_after_checkpoint.py --extra-steps 10 --spec spec.json --out run_dir
"""

from __future__ import annotations

import argparse
import os
import signal
import sys

from transfer_scaling.train import run
from transfer_scaling.train.checkpoints import Checkpoints
from transfer_scaling.train.schedule import Cooldown
from transfer_scaling.train.trainer import Trainer


def arm(extra_steps: int) -> None:
    """Wrap checkpoint saving and the training step so that the process kills itself at the chosen step."""
    left: list[int] = []  # steps before the kill, once this process has completed a checkpoint
    save, train_step = Checkpoints.save, Trainer.train_step

    def count_down() -> None:
        if left[0] == 0:
            os.kill(os.getpid(), signal.SIGKILL)
        left[0] -= 1

    def save_then_count(self: Checkpoints, tag: str, progress: dict) -> None:
        save(self, tag, progress)
        if not left:
            left.append(extra_steps)
            count_down()

    def step_then_count(self: Trainer, cooldown: Cooldown | None) -> None:
        train_step(self, cooldown)
        if left:
            count_down()

    Checkpoints.save = save_then_count
    Trainer.train_step = step_then_count


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--extra-steps", type=int, default=0)
    args, trainer_args = parser.parse_known_args()
    arm(args.extra_steps)
    return run.main(trainer_args)


if __name__ == "__main__":
    sys.exit(main())
