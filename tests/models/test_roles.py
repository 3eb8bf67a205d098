"""Roles: declared by modules, complete, and never guessed."""

import pytest
import torch
from torch import nn

from initcore.models import MLP, ROLES, TorchMHATransformer, Transformer, param_roles
from initcore.models.roles import Role

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


# --- models initcore did not write -----------------------------------------------------------------------


class _NanoBlock(nn.Module):
    def __init__(self, d: int = 8) -> None:
        super().__init__()
        self.ln = nn.LayerNorm(d)
        self.c_attn, self.c_proj = nn.Linear(d, 3 * d), nn.Linear(d, d)


class _Nano(nn.Module):
    def __init__(self, n: int = 3) -> None:
        super().__init__()
        self.wte = nn.Embedding(20, 8)
        self.h = nn.ModuleList(_NanoBlock() for _ in range(n))


def test_roles_of_an_undeclared_model_come_from_module_types():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4, 2))
    found = {p.name: (p.role, p.inferred) for p in param_roles(model)}
    assert found == {"0.weight": ("hidden", True), "0.bias": ("bias", True), "1.weight": ("norm", True),
                     "1.bias": ("bias", True), "4.weight": ("hidden", True), "4.bias": ("bias", True)}
    conv = param_roles(model)[0]
    assert conv.fans() == (3 * 3 * 3, 4 * 3 * 3)  # torch's fans: channels times the receptive field
    mha = {p.name: (p.role, p.chunks) for p in param_roles(nn.MultiheadAttention(8, 2))}
    assert mha["in_proj_weight"] == ("qkv", 3) and mha["out_proj.weight"] == ("attn_out", 1)


def test_a_mapping_gives_roles_and_layouts_and_blocks_come_from_the_structure():
    roles = {"h.*.c_attn.weight": Role("qkv", parts=("q", "k", "v")), "h.*.c_proj.weight": "attn_out"}
    found = {p.name: p for p in param_roles(_Nano(), roles)}
    assert found["h.1.c_attn.weight"].parts == ("q", "k", "v") and found["h.1.c_attn.weight"].chunks == 3
    assert [tuple(m.shape) for m in found["h.1.c_attn.weight"].matrices()] == [(8, 8)] * 3
    assert found["h.2.c_proj.weight"].role == "attn_out" and not found["h.2.c_proj.weight"].inferred
    assert found["h.2.c_proj.weight"].block == 2 and found["wte.weight"].block is None
    assert found["wte.weight"].transposed and found["h.0.ln.weight"].role == "norm"
    stored_in_by_out = {"h.*.c_proj.weight": Role("attn_out", transposed=True)}
    assert next(p for p in param_roles(_Nano(), stored_in_by_out) if p.name == "h.0.c_proj.weight").transposed


def test_a_mapping_wins_over_declarations():
    found = {p.name: p.role for p in param_roles(MLP(4, 4, 2), {"layers.1.weight": "mlp_out"})}
    assert found["layers.1.weight"] == "mlp_out" and found["layers.0.weight"] == "hidden"


def test_bad_mappings_and_missing_roles_are_named():
    with pytest.raises(ValueError, match=r"unknown role 'attn_output' in roles\['\*.c_proj.weight'\]; valid: "):
        param_roles(_Nano(), {"*.c_proj.weight": "attn_output"})
    with pytest.raises(ValueError, match=r"roles pattern '\*.c_prj.weight' matches no parameter of _Nano"):
        param_roles(_Nano(), {"*.c_prj.weight": "attn_out"})
    with pytest.raises(ValueError, match=r"roles\['x'\]: a role is a name, \(name, chunks\)"):
        param_roles(_Nano(), {"x": 3})

    class Odd(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.scale, self.shift = nn.Parameter(torch.ones(2)), nn.Parameter(torch.zeros(2))

    with pytest.raises(ValueError, match=r"parameters 'scale', 'shift' have no role; declare it in its module's "
                                         r"ROLES, or pass roles="):
        param_roles(Odd())
    assert {p.role for p in param_roles(Odd(), {"*": "gate"})} == {"gate"}


def test_declaring_modules_keep_their_descendants_from_being_guessed():
    model = MLP(4, 4, 2)
    model.extra = nn.Linear(4, 4)  # inside a model that declares ROLES: an error, not "hidden"
    with pytest.raises(ValueError, match="parameters 'extra.weight', 'extra.bias' have no role"):
        param_roles(model)


class LlamaRMSNorm(nn.Module):  # as Hugging Face writes it: a class of its own, not nn.RMSNorm
    def __init__(self, d: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(d))

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * self.weight


class T5LayerNorm(LlamaRMSNorm):
    pass


class GateLayerNorm(nn.Module):  # named as a norm, but holds a matrix: not a norm's per-channel scale
    def __init__(self, d: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(d, d))


def test_a_librarys_own_norm_class_is_a_norm_by_its_name_and_its_1d_weight() -> None:
    model = nn.Sequential(nn.Linear(4, 8), LlamaRMSNorm(8), T5LayerNorm(8))
    roles = {p.name: (p.role, p.inferred) for p in param_roles(model)}
    assert roles == {"0.weight": ("hidden", True), "0.bias": ("bias", True), "1.weight": ("norm", True),
                     "2.weight": ("norm", True)}
    with pytest.raises(ValueError, match="parameter '0.weight' has no role"):
        param_roles(nn.Sequential(GateLayerNorm(4)))
