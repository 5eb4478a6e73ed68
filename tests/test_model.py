import math

import pytest
import torch

from transfer_scaling.plan import non_embedding_params
from transfer_scaling.train.model import GPT, GPTConfig, WeightsMismatchError, load_weights, n_params, save_weights

SHAPES = [(1, 16, 2), (2, 32, 4), (3, 48, 3), (4, 64, 8), (2, 112, 4), (6, 256, 8)]


def small_config(**overrides: int) -> GPTConfig:
    return GPTConfig(**{"n_layer": 2, "d_model": 32, "n_head": 4, "n_ctx": 16, "vocab_size": 257, **overrides})


@pytest.mark.parametrize("n_layer,d_model,n_head", SHAPES)
def test_n_params_matches_the_exact_formula(n_layer: int, d_model: int, n_head: int) -> None:
    model = GPT(GPTConfig(n_layer=n_layer, d_model=d_model, n_head=n_head, n_ctx=64, vocab_size=300))
    assert n_params(model) == 12 * n_layer * d_model**2 + 13 * n_layer * d_model + 2 * d_model


@pytest.mark.parametrize("n_layer,d_model,n_head", SHAPES)
def test_n_params_is_the_n_the_config_counts(n_layer: int, d_model: int, n_head: int) -> None:
    """The config check and the cluster cost model count N from a shape without building the model."""
    shape = {"n_layer": n_layer, "d_model": d_model, "n_head": n_head}
    assert n_params(GPT(GPTConfig(**shape, n_ctx=64, vocab_size=300))) == non_embedding_params(shape)


@pytest.mark.parametrize("n_layer,d_model,n_head", SHAPES)
def test_n_params_approaches_12_l_d_squared(n_layer: int, d_model: int, n_head: int) -> None:
    model = GPT(GPTConfig(n_layer=n_layer, d_model=d_model, n_head=n_head, n_ctx=64, vocab_size=300))
    ratio = n_params(model) / (12 * n_layer * d_model**2)
    assert 1 < ratio < 1 + 1.5 / d_model


def test_n_params_excludes_embeddings_and_tied_head() -> None:
    small, large = GPT(small_config()), GPT(small_config(vocab_size=50_000, n_ctx=512))
    assert n_params(small) == n_params(large)
    total = sum(p.numel() for p in large.parameters())
    assert total - n_params(large) == (50_000 + 512) * 32


def test_head_is_tied_to_the_token_embedding() -> None:
    model = GPT(small_config())
    assert [name for name, p in model.named_parameters() if p.shape[0] == 257] == ["tok_emb.weight"]
    with torch.no_grad():
        model.tok_emb.weight[5] += 1.0
    idx = torch.zeros(1, 4, dtype=torch.long)
    logits, _ = model(idx)
    hidden = model.ln_f(model.blocks[1](model.blocks[0](model.tok_emb(idx) + model.pos_emb(torch.arange(4)))))
    torch.testing.assert_close(logits, hidden @ model.tok_emb.weight.T)


@pytest.mark.parametrize("bad,message", [
    ({"d_model": 30, "n_head": 4}, "not divisible by n_head"),
    ({"n_layer": 0}, "n_layer"),
    ({"vocab_size": 2.5}, "vocab_size"),
])
def test_config_rejects_invalid_shapes(bad: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        small_config(**bad)


def test_initial_loss_is_near_uniform_and_shapes_are_right() -> None:
    torch.manual_seed(0)
    model = GPT(small_config())
    idx, targets = torch.randint(0, 257, (2, 3, 16))
    logits, loss = model(idx, targets)
    assert logits.shape == (3, 16, 257)
    assert abs(loss.item() - math.log(257)) < 0.05
    assert model(idx)[1] is None


def test_gpt2_init_scales_residual_projections() -> None:
    torch.manual_seed(0)
    model = GPT(small_config(n_layer=8, d_model=128))
    assert model.blocks[0].attn.qkv.weight.std().item() == pytest.approx(0.02, rel=0.05)
    assert model.blocks[0].mlp.proj.weight.std().item() == pytest.approx(0.02 / 4, rel=0.05)
    assert model.blocks[0].attn.proj.bias.abs().sum().item() == 0
    assert torch.equal(model.ln_f.weight, torch.ones(128))


def test_attention_is_causal() -> None:
    torch.manual_seed(0)
    model = GPT(small_config())
    idx = torch.randint(0, 257, (1, 16))
    changed = idx.clone()
    changed[0, 10:] = (changed[0, 10:] + 1) % 257
    torch.testing.assert_close(model(idx)[0][:, :10], model(changed)[0][:, :10])
    assert not torch.allclose(model(idx)[0][:, 10:], model(changed)[0][:, 10:])


def test_longer_than_context_is_refused() -> None:
    with pytest.raises(ValueError, match="n_ctx=16"):
        GPT(small_config())(torch.zeros(1, 17, dtype=torch.long))


def test_weights_round_trip_and_mismatch_names_the_file(tmp_path) -> None:
    torch.manual_seed(0)
    model = GPT(small_config())
    path = tmp_path / "best.safetensors"
    save_weights(model.state_dict(), path)
    torch.manual_seed(1)
    copy = GPT(small_config())
    load_weights(copy, path)
    idx = torch.randint(0, 257, (2, 16))
    assert torch.equal(model(idx)[0], copy(idx)[0])
    with pytest.raises(WeightsMismatchError, match=r"best\.safetensors.*shape mismatches"):
        load_weights(GPT(small_config(d_model=64)), path)
    with pytest.raises(WeightsMismatchError, match="missing"):
        load_weights(GPT(small_config(n_layer=3)), path)


@pytest.mark.parametrize("chunk_tokens", [1, 37, 64, 10_000])
def test_chunked_loss_equals_the_plain_loss_and_its_gradients(chunk_tokens: int) -> None:
    """Any chunk size (one position, a ragged last chunk, exactly one window, all at once) gives the loss and
    every parameter's gradient of the plain loss over the full logits, to float32 rounding."""
    torch.manual_seed(0)
    config = GPTConfig(n_layer=2, d_model=32, n_head=2, n_ctx=64, vocab_size=257)
    plain, chunked = GPT(config), GPT(config, loss_chunk_tokens=chunk_tokens)
    chunked.load_state_dict(plain.state_dict())
    idx, targets = torch.randint(0, 257, (3, 64)), torch.randint(0, 257, (3, 64))
    logits, plain_loss = plain(idx, targets)
    no_logits, chunked_loss = chunked(idx, targets)
    assert logits is not None and no_logits is None
    assert chunked_loss.item() == pytest.approx(plain_loss.item(), rel=1e-6)
    plain_loss.backward()
    chunked_loss.backward()
    for (name, a), b in zip(plain.named_parameters(), chunked.parameters()):
        torch.testing.assert_close(b.grad, a.grad, rtol=1e-5, atol=1e-7, msg=name)


def test_chunked_loss_under_no_grad_forms_no_gradients() -> None:
    """Evaluation pays for the loss only: no gradient buffers, and the value of the training path."""
    model = GPT(GPTConfig(n_layer=1, d_model=16, n_head=2, n_ctx=32, vocab_size=257), loss_chunk_tokens=10)
    idx = torch.randint(0, 257, (2, 32))
    with torch.no_grad():
        _, evaluated = model(idx, idx)
    _, trained = model(idx, idx)
    assert evaluated.item() == pytest.approx(trained.item(), rel=1e-6) and trained.requires_grad


def test_activation_checkpointing_gives_the_same_gradients() -> None:
    torch.manual_seed(0)
    config = GPTConfig(n_layer=2, d_model=32, n_head=2, n_ctx=16, vocab_size=257)
    plain, recomputed = GPT(config), GPT(config, activation_checkpointing=True)
    recomputed.load_state_dict(plain.state_dict())
    idx = torch.randint(0, 257, (2, 16))
    for model in (plain, recomputed):
        model(idx, idx)[1].backward()
    for a, b in zip(plain.parameters(), recomputed.parameters()):
        assert torch.equal(a.grad, b.grad)
