"""Transformer pieces: shapes, attention maths, norms, residual wiring, bad input."""

import itertools

import pytest
import torch
import torch.nn.functional as F

from initcore.models import (
    MultiHeadAttention,
    RMSNorm,
    TorchMHA,
    TorchMHATransformer,
    Transformer,
    TransformerBlock,
    TransformerConfig,
)

SMALL = {"vocab_size": 50, "d_model": 32, "n_heads": 4, "d_ff": 64, "n_layers": 2}


@pytest.mark.parametrize("norm, position, ffn, attention", list(itertools.product(
    ["layernorm", "rmsnorm"], ["pre", "post"], ["relu", "gelu", "swiglu"], ["sdpa", "torch_mha"])))
def test_every_variant_runs_forward_and_backward(norm, position, ffn, attention):
    model = Transformer(**SMALL, norm=norm, norm_position=position, ffn=ffn, attention=attention)
    idx = torch.randint(0, 50, (3, 7))
    y = model(idx)
    assert y.shape == (3, 7, 32)
    y.square().mean().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing


def test_torch_mha_transformer_uses_packed_in_proj():
    model = TorchMHATransformer(**SMALL)
    assert model.blocks[0].attn.mha.in_proj_weight.shape == (96, 32)


def _reference_attention(x, attn, causal):
    logits = attn.logits(x)
    v = attn._heads(attn.v(x))
    y = torch.softmax(logits, dim=-1) @ v  # (B, heads, T, d_head)
    return attn.o(y.transpose(1, 2).reshape(x.shape))


@pytest.mark.parametrize("causal", [False, True])
def test_attention_equals_softmax_of_its_logits(causal):
    cfg = TransformerConfig(**SMALL, causal=causal)
    attn = MultiHeadAttention(cfg)
    x = torch.randn(2, 6, 32)
    torch.testing.assert_close(attn(x), _reference_attention(x, attn, causal), rtol=1e-5, atol=1e-6)


def test_causal_attention_ignores_the_future():
    attn = MultiHeadAttention(TransformerConfig(**SMALL, causal=True))
    x = torch.randn(1, 6, 32)
    x2 = x.clone()
    x2[:, 4:] = torch.randn(1, 2, 32)
    torch.testing.assert_close(attn(x)[:, :4], attn(x2)[:, :4], rtol=1e-5, atol=1e-6)


def test_logit_scale_is_one_over_sqrt_d_head():
    attn = MultiHeadAttention(TransformerConfig(**SMALL))
    assert attn.scale == pytest.approx(1 / 8 ** 0.5)  # d_head = 32 / 4 = 8


@pytest.mark.parametrize("causal", [False, True])
def test_torch_mha_logits_match_its_attention_weights(causal):
    mod = TorchMHA(TransformerConfig(**SMALL, causal=causal))
    x = torch.randn(2, 5, 32)
    mask = torch.ones(5, 5, dtype=torch.bool).triu(1) if causal else None
    _, weights = mod.mha(x, x, x, attn_mask=mask, need_weights=True, average_attn_weights=False)
    torch.testing.assert_close(torch.softmax(mod.logits(x), -1), weights, rtol=1e-5, atol=1e-6)


def test_rmsnorm_makes_unit_rms_and_matches_torch():
    x = 3 * torch.randn(4, 10, 16) + 1
    ours = RMSNorm(16, eps=1e-6)
    y = ours(x)
    torch.testing.assert_close(y.pow(2).mean(-1), torch.ones(4, 10), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(y, F.rms_norm(x, (16,), eps=1e-6), rtol=1e-5, atol=1e-6)


def test_post_norm_block_output_is_normalized():
    block = TransformerBlock(TransformerConfig(**SMALL, norm_position="post"))
    y = block(5 * torch.randn(2, 6, 32))
    torch.testing.assert_close(y.mean(-1), torch.zeros(2, 6), rtol=0, atol=1e-5)


def test_pre_norm_block_adds_both_branches_to_the_residual():
    block = TransformerBlock(TransformerConfig(**SMALL))
    x = torch.randn(2, 6, 32)
    h = x + block.attn(block.norm1(x))
    torch.testing.assert_close(block(x), h + block.ffn(block.norm2(h)))


def test_residual_alpha_multiplies_the_stream():
    block = TransformerBlock(TransformerConfig(**SMALL, residual_alpha=2.0))
    x = torch.randn(2, 6, 32)
    h = 2.0 * x + block.attn(block.norm1(x))
    torch.testing.assert_close(block(x), 2.0 * h + block.ffn(block.norm2(h)))


@pytest.mark.parametrize("attention", ["sdpa", "torch_mha"])
def test_rezero_block_is_the_identity_at_init(attention):
    block = TransformerBlock(TransformerConfig(**SMALL, rezero=True, attention=attention))
    x = torch.randn(2, 6, 32)
    assert torch.equal(block(x), x)


@pytest.mark.parametrize("kwargs, match", [
    ({"d_model": 30}, r"d_model \(30\) must be divisible by n_heads \(4\)"),
    ({"n_layers": 0}, "n_layers must be a positive integer"),
    ({"norm": "batchnorm"}, "unknown norm 'batchnorm'; valid: layernorm, rmsnorm"),
    ({"norm_position": "middle"}, "valid: pre, post"),
    ({"ffn": "tanh"}, "valid: relu, gelu, swiglu"),
    ({"attention": "flash"}, "valid: sdpa, torch_mha"),
    ({"dropout": 1.0}, r"dropout must be in \[0, 1\)"),
])
def test_bad_config_names_what_is_valid(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Transformer(**{**SMALL, **kwargs})
