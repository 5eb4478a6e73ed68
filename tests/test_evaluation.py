import argparse
import json
import math
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from transfer_scaling.evaluate.heldout import evaluate
from transfer_scaling.io import write_json
from transfer_scaling.train.model import GPT, GPTConfig, save_weights
from transfer_scaling.tokens import write_token_array
from transfer_scaling.train.run import train

EOT_ID = 256
MODEL = {"n_layer": 1, "d_model": 32, "n_head": 2, "n_ctx": 32, "vocab_size": 257}


def write_text_tokens(path: Path, texts: list[str]) -> Path:
    """Byte-level tokens (end-of-document 256 after each text); chars counts characters, not bytes."""
    ids = [np.append(np.frombuffer(t.encode("utf-8"), dtype=np.uint8).astype(np.uint16), EOT_ID) for t in texts]
    write_token_array(path, np.concatenate(ids), chars=sum(len(t) for t in texts))
    return path


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """A briefly trained model and an untrained one of the same shape, plus a test array."""
    root = tmp_path_factory.mktemp("evaluation")
    source = [Path(argparse.__file__).read_text(), Path(json.decoder.__file__).read_text()]
    write_text_tokens(root / "train.bin", source)
    write_text_tokens(root / "val.bin", [Path(json.encoder.__file__).read_text()])
    test_text = Path(textwrap.__file__).read_text()[:5000] + "naïve café — “déjà vu” ünïcödé\n" * 20
    test_bin = write_text_tokens(root / "test.bin", [test_text])
    spec = {
        "kind": "scratch", "model": MODEL, "train_tokens": str(root / "train.bin"),
        "val_tokens": str(root / "val.bin"), "init_from": None, "seed": 0, "batch_size": 8, "threads": 1,
        "lr": 3e-3, "min_lr_ratio": 0.1, "warmup_steps": 5, "cooldown_fraction": 0.2, "weight_decay": 0.1,
        "grad_clip": 1.0, "betas": [0.9, 0.95], "max_steps": 60, "min_steps": 0, "eval_interval": 20, "eval_tokens": 512,
        "patience": 3, "checkpoint_interval": 100, "log_interval": 20, "precision": "fp32", "zero_stage": 0,
    }
    train(spec, root / "trained")
    torch.manual_seed(0)
    save_weights(GPT(GPTConfig(**MODEL)).state_dict(), root / "untrained.safetensors")
    return {"trained": root / "trained/best.safetensors", "untrained": root / "untrained.safetensors",
            "model_json": root / "trained/model.json", "test": test_bin}


@pytest.mark.slow
def test_evaluation_is_deterministic_and_per_char_is_consistent(runs) -> None:
    first = evaluate(runs["trained"], runs["model_json"], runs["test"])
    assert first == evaluate(runs["trained"], runs["model_json"], runs["test"])
    tokens = np.fromfile(runs["test"], dtype="<u2")
    assert first["test_tokens"] == len(tokens) - 1
    assert first["test_chars"] < len(tokens)
    expected = first["test_loss_per_token"] * first["test_tokens"] / first["test_chars"]
    assert first["test_loss_per_char"] == pytest.approx(expected, rel=1e-12)


@pytest.mark.slow
def test_batching_does_not_change_the_loss(runs) -> None:
    batched = evaluate(runs["trained"], runs["model_json"], runs["test"], batch_size=32)
    single = evaluate(runs["trained"], runs["model_json"], runs["test"], batch_size=1)
    assert single["test_loss_per_token"] == pytest.approx(batched["test_loss_per_token"], rel=1e-5)


@pytest.mark.slow
def test_trained_model_beats_untrained(runs) -> None:
    trained = evaluate(runs["trained"], runs["model_json"], runs["test"])
    untrained = evaluate(runs["untrained"], runs["model_json"], runs["test"])
    assert abs(untrained["test_loss_per_token"] - math.log(257)) < 0.1
    assert trained["test_loss_per_token"] < untrained["test_loss_per_token"] - 1.0


def test_short_test_array_and_bad_batch_size_are_refused(tmp_path) -> None:
    write_json(tmp_path / "model.json", {**MODEL, "n_params": 0})
    torch.manual_seed(0)
    save_weights(GPT(GPTConfig(**MODEL)).state_dict(), tmp_path / "w.safetensors")
    write_token_array(tmp_path / "one.bin", np.array([5], dtype=np.uint16), chars=1)
    with pytest.raises(ValueError, match="one.bin: 1 token"):
        evaluate(tmp_path / "w.safetensors", tmp_path / "model.json", tmp_path / "one.bin")
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        evaluate(tmp_path / "w.safetensors", tmp_path / "model.json", tmp_path / "one.bin", batch_size=0)
