"""Train one run: pretraining, fine-tuning or training from scratch (the three kinds of Hernandez et al. 2021).

Training goes through ``deepspeed.initialize`` so the same code runs one CPU process (gloo) or many GPUs
(NCCL, ZeRO, bf16). Batches are derived from (seed, step) alone, so a run resumed from a checkpoint,
or split over several ranks, draws exactly the batches of an uninterrupted single-process run.

    python -m transfer_scaling.train --spec results/runs/scratch/l/d100000_seed0/spec.json --out RUN_DIR
"""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

from ..io import read_json
from .engine import check_cuda_request
from .loop import RunLoop, TrainingInterrupted
from .spec import parse_spec, trainer_spec_of
from .trainer import Trainer

logger = logging.getLogger("transfer_scaling.training")

INTERRUPTED_EXIT_CODE = 75
"""Exit code after a checkpoint on SIGTERM/SIGUSR1 (EX_TEMPFAIL: run the same command again to resume)."""


def train(spec: dict, out_dir: Path) -> dict:
    """Train one run described by ``spec`` into ``out_dir``; resume there if a complete checkpoint exists."""
    run = parse_spec(spec)
    check_cuda_request()  # before any data is read: GPUs granted but unusable are a job's first error
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    trainer = Trainer(run, out_dir)
    try:
        return RunLoop(trainer)()
    finally:
        trainer.close()


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
