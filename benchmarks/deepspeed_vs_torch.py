"""Training throughput of the DeepSpeed path against a plain PyTorch loop, measured in one process.

Both train the same model (same initial weights) on the same batches with the same AdamW, gradient
clipping and thread count; timed blocks alternate between the two so that load from other processes
hits both alike. The DeepSpeed path should reach at least 0.9 of the plain loop's tokens per second.

    python benchmarks/deepspeed_vs_torch.py --n-layer 2 --d-model 64 --threads 1
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import sysconfig
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from transfer_scaling.train.model import GPT, GPTConfig
from transfer_scaling.train.engine import deepspeed_config, import_deepspeed, make_optimizer, seed_everything, single_process_env
from transfer_scaling.train.schedule import batch_starts, windows

EOT_ID = 256
LR, BETAS, WEIGHT_DECAY, GRAD_CLIP = 1e-3, (0.9, 0.95), 0.1, 1.0


def stdlib_tokens(limit: int = 4_000_000) -> np.ndarray:
    """Byte-level tokens of the standard library's sources: real text without any download."""
    parts, total = [], 0
    for path in sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py")):
        data = np.frombuffer(path.read_bytes(), dtype=np.uint8)
        parts += [data.astype(np.uint16), np.array([EOT_ID], dtype=np.uint16)]
        total += data.size + 1
        if total >= limit:
            break
    return np.concatenate(parts)


def deepspeed_step_fn(model: GPT, args: argparse.Namespace) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    deepspeed = import_deepspeed()
    single_process_env()
    optimizer = make_optimizer(model, LR, BETAS, WEIGHT_DECAY)
    config = deepspeed_config(args.batch_size, 1, GRAD_CLIP, args.zero_stage, "fp32",
                              sum(p.numel() for p in model.parameters()))
    engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer, config=config)

    def step(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        for group in optimizer.param_groups:
            group["lr"] = LR
        _, loss = engine(x, y)
        engine.backward(loss)
        engine.step()
        return loss.detach()
    return step


def torch_step_fn(model: GPT) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    optimizer = make_optimizer(model, LR, BETAS, WEIGHT_DECAY)

    def step(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        for group in optimizer.param_groups:
            group["lr"] = LR
        _, loss = model(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), GRAD_CLIP)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.detach()
    return step


def timed_block(step: Callable, tokens: np.ndarray, first_step: int, args: argparse.Namespace) -> float:
    """Tokens per second over ``args.steps`` steps, batches built inside the timing as in training."""
    losses = []
    started = time.perf_counter()
    for i in range(first_step, first_step + args.steps):
        x, y = windows(tokens, batch_starts(0, i, len(tokens), args.n_ctx, args.batch_size), args.n_ctx)
        losses.append(step(x, y))
    torch.stack(losses).tolist()
    return args.steps * args.batch_size * args.n_ctx / (time.perf_counter() - started)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-layer", type=int, default=2)
    parser.add_argument("--d-model", type=int, default=64)
    parser.add_argument("--n-head", type=int, default=4)
    parser.add_argument("--n-ctx", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--zero-stage", type=int, default=0)
    parser.add_argument("--steps", type=int, default=10, help="steps per timed block")
    parser.add_argument("--repeats", type=int, default=11, help="timed blocks per path, interleaved")
    args = parser.parse_args(argv)

    seed_everything(0, args.threads)
    tokens = stdlib_tokens()
    model = GPT(GPTConfig(args.n_layer, args.d_model, args.n_head, args.n_ctx, EOT_ID + 1))
    paths = {"torch": torch_step_fn(copy.deepcopy(model)), "deepspeed": deepspeed_step_fn(model, args)}
    for step in paths.values():
        timed_block(step, tokens, 0, argparse.Namespace(**{**vars(args), "steps": 3}))
    rates: dict[str, list[float]] = {name: [] for name in paths}
    for repeat in range(args.repeats):
        for name, step in paths.items():
            rates[name].append(timed_block(step, tokens, (repeat + 1) * args.steps, args))
    medians = {name: statistics.median(values) for name, values in rates.items()}
    print(f"model n_layer={args.n_layer} d_model={args.d_model} n_ctx={args.n_ctx} batch={args.batch_size} "
          f"threads={args.threads} zero_stage={args.zero_stage}; {args.repeats} x {args.steps} steps per path")
    for name, values in rates.items():
        print(f"{name:>9}: median {medians[name]:9.0f} tokens/s  (blocks: {', '.join(f'{v:.0f}' for v in values)})")
    print(f"ratio deepspeed/torch: {medians['deepspeed'] / medians['torch']:.3f} (target >= 0.9)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
