"""Roles: declared by modules, complete, and never guessed."""

import pytest
import torch
from torch import nn

from initcore.models import MLP, ROLES, TorchMHATransformer, Transformer, param_roles

SMALL = {"vocab_size": 50, "d_model": 32, "n_heads": 4, "d_ff": 64, "n_layers": 3}


def _roles(model):
    return {p.name: p.role for p in param_roles(model)}


def test_every_parameter_of_every_model_has_a_known_role():
    for model in [MLP(8, 8, 3), Transformer(**SMALL, ffn="swiglu", norm="rmsnorm", rezero=True),
                  TorchMHATransformer(**SMALL)]:
        roles = _roles(model)
        assert set(roles) == {n for n, _ in model.named_parameters()}
        assert set(roles.values()) <= set(ROLES)


def test_transformer_roles():
    roles = _roles(Transformer(**SMALL))
    assert roles["embed.weight"] == "embedding"
    assert roles["blocks.1.attn.q.weight"] == "qkv"
    assert roles["blocks.1.attn.o.weight"] == "attn_out"
    assert roles["blocks.1.ffn.fc1.weight"] == "mlp_in"
    assert roles["blocks.1.ffn.fc2.weight"] == "mlp_out"
    assert roles["blocks.1.norm1.weight"] == "norm"
    assert roles["blocks.1.norm1.bias"] == "bias"
    assert roles["norm_f.weight"] == "norm"


def test_mlp_roles():
    assert _roles(MLP(8, 8, 3)) == {"layers.0.weight": "hidden", "layers.1.weight": "hidden",
                                    "layers.2.weight": "head", "layers.0.bias": "bias",
                                    "layers.1.bias": "bias", "layers.2.bias": "bias"}


def test_packed_in_proj_is_three_qkv_chunks_with_per_projection_fans():
    p = next(p for p in param_roles(TorchMHATransformer(**SMALL)) if p.name.endswith("in_proj_weight"))
    assert (p.role, p.chunks) == ("qkv", 3)
    assert [tuple(m.shape) for m in p.matrices()] == [(32, 32)] * 3
    assert p.fans() == (32, 32)
    # the chunks are views: writing one writes the parameter
    with torch.no_grad():
        p.matrices()[2].fill_(7.0)
    assert torch.all(p.param[64:] == 7.0) and not torch.any(p.param[:64] == 7.0)


def test_embedding_fans_are_those_of_the_equivalent_linear():
    p = next(p for p in param_roles(Transformer(**SMALL)) if p.role == "embedding")
    # a lookup is a Linear from a one-hot of size vocab_size (fan_in) to d_model (fan_out);
    # torch's own fan calculation on the (50, 32) table would say fan_in 32, fan_out 50.
    assert p.fans() == (50, 32)


def test_block_index_is_recorded():
    blocks = {p.name: p.block for p in param_roles(Transformer(**SMALL))}
    assert blocks["blocks.2.ffn.fc2.weight"] == 2
    assert blocks["embed.weight"] is None


def test_undeclared_parameter_is_an_error():
    model = MLP(4, 4, 2)
    model.extra = nn.Parameter(torch.zeros(3))
    with pytest.raises(ValueError, match="parameter 'extra' has no role; declare it"):
        param_roles(model)


def test_unknown_declared_role_is_an_error():
    class Odd(nn.Module):
        ROLES = {"w": "weights"}

        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.zeros(2))

    with pytest.raises(ValueError, match="unknown role 'weights'"):
        param_roles(Odd())
