"""init.apply on models initcore did not write: roles from types and from a mapping, the depth from the
structure, and a refusal where a strategy would silently miss what it treats apart.

Distribution checks as tests/init/test_strategies.py: a Kolmogorov-Smirnov test against the exact target,
p > 1e-4 with a fixed seed, and the same sample rejects a target 10% off.
"""

import math

import pytest
import torch
from scipy import stats
from torch import nn

from initcore import init
from initcore.models import Role

P_MIN = 1e-4  # PyTorch's init tests use this threshold
D = 256


class Block(nn.Module):
    """nanoGPT's block, its own names: c_attn (q, k, v fused), c_proj (writes into the stream), an MLP."""

    def __init__(self) -> None:
        super().__init__()
        self.ln_1, self.ln_2 = nn.LayerNorm(D), nn.LayerNorm(D)
        self.attn = nn.ModuleDict({"c_attn": nn.Linear(D, 3 * D), "c_proj": nn.Linear(D, D)})
        self.mlp = nn.ModuleDict({"c_fc": nn.Linear(D, 4 * D), "c_proj": nn.Linear(4 * D, D)})


class Nano(nn.Module):
    def __init__(self, n: int = 4) -> None:
        super().__init__()
        self.wte = nn.Embedding(500, D)
        self.h = nn.ModuleList(Block() for _ in range(n))
        self.ln_f = nn.LayerNorm(D)


NANO_ROLES = {"h.*.attn.c_attn.weight": Role("qkv", parts=("q", "k", "v")), "h.*.attn.c_proj.weight": "attn_out",
              "h.*.mlp.c_fc.weight": "mlp_in", "h.*.mlp.c_proj.weight": "mlp_out"}


def _normal(sample, std):
    assert stats.kstest(sample, "norm", args=(0, std)).pvalue > P_MIN
    assert stats.kstest(sample, "norm", args=(0, 1.1 * std)).pvalue < P_MIN


def _weights(model):
    return {n: p.detach().flatten().numpy() for n, p in model.named_parameters()}


def test_xavier_on_a_sequential_with_roles_from_types():
    model = nn.Sequential(nn.Linear(384, 768), nn.Tanh(), nn.Linear(768, 384))
    init.apply(model, "xavier_normal", generator=torch.Generator().manual_seed(0))
    w = _weights(model)
    _normal(w["0.weight"], math.sqrt(2 / (384 + 768)))
    assert (w["0.bias"] == 0).all() and (w["2.bias"] == 0).all()


def test_gpt2_on_a_nanogpt_with_a_mapping_and_the_depth_from_its_blocks():
    model = init.apply(Nano(n=4), "gpt2", roles=NANO_ROLES, generator=torch.Generator().manual_seed(0))
    w = _weights(model)
    _normal(w["h.2.attn.c_attn.weight"], 0.02)
    _normal(w["h.2.mlp.c_fc.weight"], 0.02)
    _normal(w["wte.weight"], 0.02)
    _normal(w["h.3.attn.c_proj.weight"], 0.02 / math.sqrt(2 * 4))  # L = 4 blocks in h
    _normal(w["h.0.mlp.c_proj.weight"], 0.02 / math.sqrt(2 * 4))
    assert (w["h.0.ln_1.weight"] == 1).all() and (w["h.0.ln_1.bias"] == 0).all()
    init.apply(model, "gpt2", roles=NANO_ROLES, n_layers=50, generator=torch.Generator().manual_seed(0))
    _normal(_weights(model)["h.3.attn.c_proj.weight"], 0.02 / math.sqrt(2 * 50))


def test_olmo_mitchell_scales_by_the_block_each_weight_lies_in():
    model = init.apply(Nano(n=4), "olmo_mitchell", roles=NANO_ROLES, generator=torch.Generator().manual_seed(0))
    w = _weights(model)
    trunc_var = 1 - 6 * math.exp(-4.5) / math.sqrt(2 * math.pi) / math.erf(3 / math.sqrt(2))  # N(0,1) cut at 3
    for block in (0, 3):
        sample = w[f"h.{block}.attn.c_proj.weight"]
        std = 1 / math.sqrt(2 * D * (block + 1))
        assert stats.kstest(sample, stats.truncnorm(-3, 3, scale=std).cdf).pvalue > P_MIN
        assert sample.std() == pytest.approx(std * math.sqrt(trunc_var), rel=0.02)  # 65k draws: 0.3% spread


def test_a_strategy_that_treats_residual_projections_apart_refuses_guessed_roles():
    with pytest.raises(ValueError, match=r"strategy 'gpt2' treats attn_out, mlp_out apart, and this model declares "
                                         r"none of them: h.0.attn.c_attn.weight, .* got role 'hidden' from their type"):
        init.apply(Nano(), "gpt2")
    init.apply(Nano(), "gpt2", roles={"*.weight": "hidden", "wte.weight": "embedding"})  # said, not guessed
    init.apply(Nano(), "xavier_uniform", roles={"h.*.attn.c_attn.weight": ("qkv", 3)})  # every matrix alike: guessed
    # roles are enough, but for the fused c_attn (see test_a_fused_qkv_with_a_guessed_role_is_refused)


def test_an_attention_role_from_its_type_does_not_excuse_a_guessed_feed_forward():
    """nn.TransformerEncoder: out_proj is attn_out by its type (nn.MultiheadAttention), but linear2, the
    feed-forward's output into the stream, would be 'hidden' by its type alone: gpt2 refuses rather than
    scale one residual projection and not the other; named, it applies."""
    enc = nn.TransformerEncoder(nn.TransformerEncoderLayer(32, 4, 64, batch_first=True), 2, enable_nested_tensor=False)
    with pytest.raises(ValueError, match=r"treats attn_out, mlp_out apart.*layers\.0\.linear1\.weight"):
        init.apply(enc, "gpt2")
    init.apply(enc, "gpt2", roles={"*.linear1.weight": "mlp_in", "*.linear2.weight": "mlp_out"},
               generator=torch.Generator().manual_seed(0))
    # 2 blocks: 0.02 / sqrt(2 L); 2048 draws give the sample std an sd of 1.6%, so 10% is 6 sds
    assert enc.layers[0].linear2.weight.std().item() == pytest.approx(0.02 / math.sqrt(4), rel=0.1)


def test_bad_n_layers_and_missing_roles_are_named():
    with pytest.raises(ValueError, match="n_layers must be a positive integer, got 0"):
        init.apply(Nano(), "gpt2", roles=NANO_ROLES, n_layers=0)

    class Scaled(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin, self.scale = nn.Linear(4, 4), nn.Parameter(torch.ones(4))

    with pytest.raises(ValueError, match="parameter 'scale' has no role; .* or pass roles="):
        init.apply(Scaled(), "xavier_uniform")
    model = init.apply(Scaled(), "xavier_uniform", roles={"scale": "norm"})
    assert (model.scale == 1).all()


def test_a_fused_qkv_with_a_guessed_role_is_refused_naming_the_fix():
    # Drawn as one (3E, E) matrix, Xavier's fans would be those of 3E: std sqrt(2/(E+3E)) instead of sqrt(2/2E).
    with pytest.raises(ValueError, match=r"h.0.attn.c_attn.weight \(768, 256\) looks like a fused q/k/v projection"
                                         r".*roles=\{'h.\*.attn.c_attn.weight': \('qkv', 3\)\}"):
        init.apply(Nano(), "xavier_uniform")
    init.apply(Nano(), "xavier_uniform", roles={"h.*.attn.c_attn.weight": "hidden"})  # said: one projection


def test_a_conv1d_weight_given_a_plain_role_is_refused():
    class Conv1D(nn.Module):  # Hugging Face's: a Linear stored (in, out)
        def __init__(self, nf: int, nx: int) -> None:
            super().__init__()
            self.nf, self.weight, self.bias = nf, nn.Parameter(torch.empty(nx, nf)), nn.Parameter(torch.zeros(nf))

    model = nn.ModuleDict({"c_fc": Conv1D(512, 128)})
    with pytest.raises(ValueError, match=r"c_fc.weight is a Conv1D weight stored \(in, out\).*Role\('mlp_in', "
                                         r"transposed=True\)"):
        init.apply(model, "kaiming_normal", roles={"c_fc.weight": "mlp_in"})
    init.apply(model, "kaiming_normal", roles={"c_fc.weight": Role("mlp_in", transposed=True)})
    assert model["c_fc"].weight.std().item() == pytest.approx(math.sqrt(2 / 128), rel=0.05)  # fan_in 128: 16k draws


def test_apply_checks_what_it_drew_against_its_promise(monkeypatch):
    from initcore.init import strategies

    model = Nano(n=2)
    roles = {"h.*.attn.c_attn.weight": ("qkv", 3)}
    init.apply(model, "xavier_uniform", roles=roles)  # draws what it promises: no error
    real = strategies._REGISTRY["xavier_uniform"]
    # A rule 5% off its own declaration (gain 1.05): 7 standard errors of a uniform's std from the 4096 draws the
    # check reads (sqrt(0.8 / (4 * 4096)) = 0.7%), beyond its 5.5 on most of the 8 matrices.
    monkeypatch.setitem(strategies._REGISTRY, "xavier_uniform", real.__class__(
        **{**vars(real), "rule": lambda w, p, ctx: nn.init.xavier_uniform_(w, gain=1.05, generator=ctx.generator)}))
    with pytest.raises(init.InitMismatchError, match=r"drew wte.weight: scale \(std 0.054.*, promised 0.0514.*\) "
                                                     r"\(and 12 more\)"):
        init.apply(model, "xavier_uniform", roles=roles)
