"""The engine a run trains with: DeepSpeed on this process (CPU with gloo, or GPUs with NCCL, ZeRO and bf16), its
process group, optimizer and configuration, and the collectives the trainer needs across ranks.
"""

from __future__ import annotations

import gc
import os
import random
import shutil
import socket
import tempfile
import warnings
from pathlib import Path
from types import ModuleType
from typing import Callable

import numpy as np
import torch
import torch.distributed as dist

from .model import GPT
from .spec import SpecError, TrainSpec


class DeviceError(RuntimeError):
    """The job asks for a device or precision this machine does not have."""


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




def end_process_groups(deepspeed: ModuleType) -> None:
    """Destroy every process group now, which joins gloo's worker threads while the interpreter is whole.

    A worker drops a collective (and its tensors) only after the ranks' wait for it has returned. If the
    interpreter is finalising by then, taking the GIL ends that thread inside a noexcept destructor and the
    rank aborts ('terminate called without an active exception', exit 134 for a finished run). DeepSpeed's
    data-parallel group outlives the destroy call inside the engine's reference cycles, hence the collection.
    """
    deepspeed.comm.destroy_process_group()
    gc.collect()



class Engine:
    """DeepSpeed's engine on this rank, with the process group it joined and the collectives a run needs. The model
    is built by ``make_model`` after every seed is set, so its initial weights are a function of the spec alone."""

    def __init__(self, run: TrainSpec, make_model: Callable[[], GPT]) -> None:
        self.run = run
        self.deepspeed = import_deepspeed()
        check_precision(self.deepspeed, run.precision)
        self.store_dir = single_process_env()
        self.world_size = int(os.environ["WORLD_SIZE"])
        self.rank = int(os.environ["RANK"])
        self.micro_batch, self.accumulation = micro_batches(run.batch_size, self.world_size, run.micro_batch_size)
        seed_everything(run.seed, run.threads, run.deterministic)
        model = make_model()
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

    @property
    def module(self) -> GPT:
        return self.engine.module

    @property
    def share(self) -> int:
        """Sequences of the global batch this rank trains on in each step."""
        return self.micro_batch * self.accumulation

    def step(self, lr: float, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """One optimizer step on this rank's share, in micro-batches whose gradients DeepSpeed averages (it scales
        each loss by 1 / accumulation and steps at the boundary); the mean loss, still on the device."""
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        losses = []
        for begin in range(0, self.share, self.micro_batch):
            end = begin + self.micro_batch
            _, loss = self.engine(x[begin:end].to(self.engine.device), y[begin:end].to(self.engine.device))
            self.engine.backward(loss)
            self.engine.step()
            losses.append(loss.detach())
        return losses[0] if len(losses) == 1 else torch.stack(losses).mean()

    @torch.no_grad()
    def mean_loss(self, batches: list[tuple[torch.Tensor, torch.Tensor]]) -> float:
        """Mean loss per target token over the batches; every rank evaluates all of them (ZeRO-3 safe)."""
        self.engine.eval()
        total, count = torch.zeros((), dtype=torch.float64), 0
        for x, y in batches:
            _, loss = self.engine(x.to(self.engine.device), y.to(self.engine.device))
            total += loss.double().cpu() * y.numel()
            count += y.numel()
        self.engine.train()
        return total.item() / count

    def module_state(self) -> dict[str, torch.Tensor]:
        """Full module weights; under ZeRO-3 they are gathered from the shards (a collective on every rank)."""
        module = self.engine.module
        if self.run.zero_stage == 3:
            with self.deepspeed.zero.GatheredParameters(list(module.parameters())):
                return {name: t.detach().float().cpu().clone() for name, t in module.state_dict().items()}
        return module.state_dict()

    def mean_over_ranks(self, values: torch.Tensor) -> torch.Tensor:
        values = values.double()
        if self.world_size > 1:
            dist.all_reduce(values)
            values /= self.world_size
        return values

    def any_rank(self, flag: bool) -> bool:
        """True on every rank when it is true on one, so that all join the collective that follows."""
        if self.world_size == 1:
            return flag
        vote = torch.tensor(float(flag), device=self.engine.device)
        dist.all_reduce(vote, op=dist.ReduceOp.MAX)
        return bool(vote.item())

    def parameters_agree(self) -> bool:
        """Data parallelism must leave identical parameters on every rank (ZeRO-3 shards them instead)."""
        if self.world_size == 1 or self.run.zero_stage == 3:
            return True
        flat = torch.cat([p.detach().double().flatten() for p in self.engine.module.parameters()])
        highest, lowest = flat.clone(), flat.clone()
        dist.all_reduce(highest, op=dist.ReduceOp.MAX)
        dist.all_reduce(lowest, op=dist.ReduceOp.MIN)
        return torch.equal(highest, lowest)

    def barrier(self) -> None:
        if self.world_size > 1:
            dist.barrier()

    def close(self) -> None:
        """Release the engine and every process group (gloo's threads joined now, not at interpreter exit)."""
        self.engine.destroy()
        del self.engine
        end_process_groups(self.deepspeed)
        if self.store_dir is not None:
            shutil.rmtree(self.store_dir, ignore_errors=True)
