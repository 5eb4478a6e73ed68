"""Test loss of a trained model on a whole token array, in nats per token and per character.

Hernandez et al. (2021) count data in characters, so losses are compared per character: the summed
loss over every predicted token divided by the characters the array encodes (its metadata), which
keeps byte-level and BPE tokenizers on one scale.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..io import check_sha256_sidecar, read_json
from ..train.model import GPT, GPTConfig, load_weights
from ..tokens import load_token_array


def load_model(weights_path: Path, model_json_path: Path) -> GPT:
    """Rebuild the architecture recorded in ``model.json`` and load the safetensors weights into it."""
    record = read_json(model_json_path)
    fields = list(GPTConfig.__dataclass_fields__)
    missing = [name for name in fields if not isinstance(record, dict) or name not in record]
    if missing:
        raise ValueError(f"{model_json_path}: missing architecture keys {missing}; a model.json holds {fields}")
    try:
        config = GPTConfig(**{name: record[name] for name in fields})
    except ValueError as exc:
        raise ValueError(f"{model_json_path}: {exc}") from exc
    model = GPT(config)
    check_sha256_sidecar(weights_path)
    load_weights(model, weights_path)
    return model.eval()


def chunk_loss(model: GPT, chunk: np.ndarray, device: torch.device) -> float:
    """Summed next-token loss (nats) over rows of ``chunk``, each a window of consecutive tokens."""
    chunk = torch.from_numpy(chunk.astype(np.int64)).to(device)
    logits, _ = model(chunk[:, :-1])
    return F.cross_entropy(logits.float().flatten(0, 1), chunk[:, 1:].flatten(), reduction="sum").item()


@torch.inference_mode()
def summed_loss(model: GPT, tokens: np.ndarray, batch_size: int, device: torch.device) -> float:
    """Total loss over consecutive windows sharing one token: every token after the first predicted once."""
    n_ctx = model.config.n_ctx
    n_full = (len(tokens) - 1) // n_ctx
    starts = np.arange(n_full) * n_ctx
    offsets = np.arange(n_ctx + 1)
    total = 0.0
    for begin in range(0, n_full, batch_size):
        total += chunk_loss(model, tokens[starts[begin:begin + batch_size, None] + offsets], device)
    tail = tokens[n_full * n_ctx:]
    if len(tail) > 1:
        total += chunk_loss(model, np.asarray(tail)[None, :], device)
    return total


def evaluate(weights_path: Path, model_json_path: Path, test_bin: Path, batch_size: int = 32) -> dict:
    """Test loss of ``weights_path`` on the whole of ``test_bin`` (nats per token and per character)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = load_model(Path(weights_path), Path(model_json_path)).to(device)
    tokens, meta = load_token_array(test_bin)
    if len(tokens) < 2:
        raise ValueError(f"{test_bin}: {len(tokens)} token(s); at least 2 are needed to predict one")
    total = summed_loss(model, tokens, batch_size, device)
    test_tokens = len(tokens) - 1
    test_chars = int(meta["chars"])
    return {
        "test_loss_per_token": total / test_tokens,
        "test_loss_per_char": total / test_chars,
        "test_tokens": test_tokens,
        "test_chars": test_chars,
    }
