"""A GPT-2 style decoder, the model family of Hernandez et al. (2021) and Kaplan et al. (2020).

Pre-LayerNorm blocks, causal ``scaled_dot_product_attention``, a 4x GELU MLP and an output head tied
to the token embedding. ``n_params`` counts non-embedding parameters, the N of the scaling laws.
The module knows nothing of data or of the engine that trains it; how it spends memory (a chunked loss,
recomputed activations) is set apart from its architecture, and changes no result beyond rounding.
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..plan import check_heads
from ..io import atomic_path
from .loss import chunked_cross_entropy

EMBEDDING_PREFIXES = ("tok_emb.", "pos_emb.")
INIT_STD = 0.02


class WeightsMismatchError(ValueError):
    """A weights file does not fit the architecture it is loaded into."""


@dataclass(frozen=True)
class GPTConfig:
    n_layer: int
    d_model: int
    n_head: int
    n_ctx: int
    vocab_size: int

    def __post_init__(self) -> None:
        for name, value in asdict(self).items():
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"GPTConfig.{name} must be a positive integer, got {value!r}")
        check_heads(self.d_model, self.n_head)

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.n_head = config.n_head
        self.qkv = nn.Linear(config.d_model, 3 * config.d_model)
        self.proj = nn.Linear(config.d_model, config.d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, time, channels = x.shape
        q, k, v = self.qkv(x).view(batch, time, 3, self.n_head, channels // self.n_head).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.proj(y.transpose(1, 2).reshape(batch, time, channels))


class MLP(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.fc = nn.Linear(config.d_model, 4 * config.d_model)
        self.proj = nn.Linear(4 * config.d_model, config.d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(F.gelu(self.fc(x)))


class Block(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.ln_attn = nn.LayerNorm(config.d_model)
        self.attn = CausalSelfAttention(config)
        self.ln_mlp = nn.LayerNorm(config.d_model)
        self.mlp = MLP(config)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_attn(x))
        return x + self.mlp(self.ln_mlp(x))


class GPT(nn.Module):
    """``loss_chunk_tokens`` > 0: the training loss runs the head over that many positions at a time and
    returns no logits (loss.py); ``activation_checkpointing``: each block's activations are recomputed in the
    backward pass instead of kept, for models whose activations outgrow the accelerator."""

    def __init__(self, config: GPTConfig, loss_chunk_tokens: int = 0, activation_checkpointing: bool = False) -> None:
        super().__init__()
        self.config = config
        self.loss_chunk_tokens = loss_chunk_tokens
        self.activation_checkpointing = activation_checkpointing
        self.tok_emb = nn.Embedding(config.vocab_size, config.d_model)
        self.pos_emb = nn.Embedding(config.n_ctx, config.d_model)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layer))
        self.ln_f = nn.LayerNorm(config.d_model)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """GPT-2 init: N(0, 0.02), zero biases, residual projections scaled by 1/sqrt(2 n_layer)."""
        residual_std = INIT_STD / math.sqrt(2 * self.config.n_layer)
        for name, param in self.named_parameters():
            if name.endswith("bias"):
                nn.init.zeros_(param)
            elif param.dim() == 1:
                nn.init.ones_(param)
            else:
                nn.init.normal_(param, mean=0.0, std=residual_std if name.endswith("proj.weight") else INIT_STD)

    def forward(
        self, idx: torch.Tensor, targets: torch.Tensor | None = None
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Logits for every position; with targets, also the mean cross-entropy in nats per token (and no
        logits when the loss is chunked)."""
        time = idx.shape[1]
        if time > self.config.n_ctx:
            raise ValueError(f"sequence length {time} exceeds n_ctx={self.config.n_ctx}")
        x = self.tok_emb(idx) + self.pos_emb(torch.arange(time, device=idx.device))
        recompute = self.activation_checkpointing and self.training and torch.is_grad_enabled()
        for block in self.blocks:
            x = checkpoint(block, x, use_reentrant=False) if recompute else block(x)
        hidden = self.ln_f(x)
        if targets is not None and self.loss_chunk_tokens:
            return None, chunked_cross_entropy(hidden, self.tok_emb.weight, targets, self.loss_chunk_tokens)
        logits = F.linear(hidden, self.tok_emb.weight)
        if targets is None:
            return logits, None
        loss = F.cross_entropy(logits.float().view(-1, logits.size(-1)), targets.reshape(-1))
        return logits, loss


def n_params(model: GPT) -> int:
    """Non-embedding parameters (N in the paper), counted on the model: config.non_embedding_params gives the same N
    from a shape alone, for the config check and the cluster cost model (tests/test_model.py holds them equal)."""
    return sum(p.numel() for name, p in model.named_parameters() if not name.startswith(EMBEDDING_PREFIXES))


def save_weights(state: dict[str, torch.Tensor], path: str | os.PathLike) -> None:
    """Write a module state dict as float32 safetensors, atomically."""
    tensors = {name: t.detach().to("cpu", torch.float32).contiguous() for name, t in state.items()}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp))


def load_weights(model: GPT, path: str | os.PathLike) -> None:
    """Load safetensors weights into ``model`` after checking that names and shapes match exactly."""
    try:
        tensors = load_file(str(path))
    except SafetensorError as exc:
        raise WeightsMismatchError(f"{path}: not a readable safetensors file ({exc})") from exc
    expected = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    found = {name: tuple(t.shape) for name, t in tensors.items()}
    if expected != found:
        missing = sorted(set(expected) - set(found))
        extra = sorted(set(found) - set(expected))
        wrong = sorted(f"{n}: file {found[n]} vs model {expected[n]}" for n in set(expected) & set(found)
                       if expected[n] != found[n])
        raise WeightsMismatchError(
            f"{path}: weights do not fit {model.config}; missing {missing}, unexpected {extra}, "
            f"shape mismatches {wrong}"
        )
    model.load_state_dict(tensors)
