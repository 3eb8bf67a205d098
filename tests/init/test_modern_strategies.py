"""The modern transformer strategies draw, per role and per block, from the formulas they cite.

Same style as test_strategies.py: a Kolmogorov-Smirnov test of each weight against its exact target
(p > 1e-4, PyTorch's init-test threshold) that also rejects a target 10% off, on the separate-projection
Transformer and on TorchMHATransformer, whose packed (3E, E) in_proj is tested chunk by chunk.
"""

import math

import pytest
import torch
from scipy import stats

from initcore import init
from initcore.init.strategies import config_for, deepnorm_alpha, deepnorm_beta, deepnorm_config, rezero_config
from initcore.models import MLP, MultiHeadAttention, TorchMHATransformer, Transformer, TransformerConfig, param_roles

L, D, FF, V = 4, 128, 256, 300
SMALL = {"vocab_size": V, "d_model": D, "n_heads": 4, "d_ff": FF, "n_layers": L}
P_MIN = 1e-4
MODERN = ("gpt2", "megatron", "olmo_mitchell", "neox_small_init", "deepnorm", "fixup", "rezero")
CHUNK = {"q": 0, "k": 1, "v": 2}


def _model(strategy, cls=Transformer, **kw):
    cfg = config_for(strategy, TransformerConfig(**SMALL, **kw))
    return init.apply(cls.from_config(cfg), strategy, generator=torch.Generator().manual_seed(0))


def _weight(model, where):
    """A weight by a short name: ``embed``, ``q``/``k``/``v``/``o`` of block l, ``fc1``/``fc2`` of block l.

    q, k and v come from the separate projections or from their chunk of the packed in_proj.
    """
    if where == "embed":
        return model.embed.weight
    part, block = where.split("@")
    b = model.blocks[int(block)]
    if part in CHUNK:
        if hasattr(b.attn, "mha"):
            return b.attn.mha.in_proj_weight.chunk(3)[CHUNK[part]]
        return getattr(b.attn, part).weight
    if part == "o":
        return b.attn.mha.out_proj.weight if hasattr(b.attn, "mha") else b.attn.o.weight
    return getattr(b.ffn, part).weight


def _sample(model, where):
    return _weight(model, where).detach().flatten().numpy()


def _assert_dist(sample, dist, scale):
    """``dist``: "n" N(0, scale²), "t" N(0, scale²) truncated at ±3 scale, "u" U(-scale, scale)."""
    def cdf(s):
        return {"n": ("norm", (0, s)), "t": ("truncnorm", (-3, 3, 0, s)), "u": ("uniform", (-s, 2 * s))}[dist]
    assert stats.kstest(sample, *cdf(scale)).pvalue > P_MIN
    assert stats.kstest(sample, *cdf(1.1 * scale)).pvalue < P_MIN
    if dist == "t":
        assert abs(sample).max() <= 3 * scale * (1 + 1e-6)


def _xavier(fan_in, fan_out, gain=1.0):
    return gain * math.sqrt(2 / (fan_in + fan_out))


BETA = (8 * L) ** -0.25  # DeepNet, decoder-only: beta = (8N)^(-1/4)
CASES = [
    # gpt2: 0.02 everywhere, residual outputs 0.02/sqrt(2L)
    *[("gpt2", w, "n", 0.02) for w in ("embed", "q@0", "k@1", "v@2", "fc1@3")],
    *[("gpt2", w, "n", 0.02 / math.sqrt(2 * L)) for w in ("o@0", "fc2@3")],
    # megatron: sigma 0.02 (default) and sigma/sqrt(2L)
    *[("megatron", w, "n", 0.02) for w in ("embed", "v@0", "fc1@1")],
    *[("megatron", w, "n", 0.02 / math.sqrt(2 * L)) for w in ("o@2", "fc2@0")],
    # olmo_mitchell: 1/sqrt(d) in, 1/sqrt(2 d (l+1)) attn out, 1/sqrt(2 d_ff (l+1)) mlp out, truncated at 3 sigma
    *[("olmo_mitchell", w, "t", 1 / math.sqrt(D)) for w in ("embed", "q@0", "v@3", "fc1@2")],
    *[("olmo_mitchell", f"o@{b}", "t", 1 / math.sqrt(2 * D * (b + 1))) for b in (0, 3)],
    *[("olmo_mitchell", f"fc2@{b}", "t", 1 / math.sqrt(2 * FF * (b + 1))) for b in (0, 1, 3)],
    # neox: small_init sqrt(2/(5d)) in, wang_init 2/(L sqrt(d)) out (both with d = d_model)
    *[("neox_small_init", w, "n", math.sqrt(2 / (5 * D))) for w in ("embed", "k@0", "fc1@3")],
    *[("neox_small_init", w, "n", 2 / (L * math.sqrt(D))) for w in ("o@1", "fc2@2")],
    # deepnorm: Xavier normal, gain beta on v, o, fc1, fc2, gain 1 on q, k and the embedding (fan_in = vocab)
    ("deepnorm", "embed", "n", _xavier(V, D)),
    *[("deepnorm", w, "n", _xavier(D, D)) for w in ("q@0", "k@3")],
    *[("deepnorm", w, "n", _xavier(D, D, BETA)) for w in ("v@0", "v@3", "o@1")],
    *[("deepnorm", w, "n", _xavier(D, FF, BETA)) for w in ("fc1@2", "fc2@0")],
    # fixup: Xavier normal inputs, embedding N(0, 1) (outputs are zero, tested below)
    ("fixup", "embed", "n", 1.0),
    *[("fixup", w, "n", _xavier(D, D)) for w in ("q@0", "v@3")],
    ("fixup", "fc1@1", "n", _xavier(D, FF)),
    # rezero: Xavier uniform, embedding N(0, 1)
    ("rezero", "embed", "n", 1.0),
    *[("rezero", w, "u", math.sqrt(6 / (2 * D))) for w in ("q@0", "v@2", "o@3")],
    ("rezero", "fc2@1", "u", math.sqrt(6 / (D + FF))),
]


@pytest.mark.parametrize("cls", [Transformer, TorchMHATransformer], ids=["separate", "packed"])
@pytest.mark.parametrize("strategy, where, dist, scale", CASES, ids=[f"{c[0]}-{c[1]}" for c in CASES])
def test_weight_distribution(cls, strategy, where, dist, scale):
    _assert_dist(_sample(_model(strategy, cls), where), dist, scale)


def test_megatron_sigma_option():
    model = init.apply(Transformer(**SMALL), "megatron", sigma=0.05, generator=torch.Generator().manual_seed(0))
    _assert_dist(_sample(model, "q@0"), "n", 0.05)
    _assert_dist(_sample(model, "o@0"), "n", 0.05 / math.sqrt(2 * L))


def test_deepnorm_swiglu_gate_and_up_both_get_beta():
    model = _model("deepnorm", ffn="swiglu")
    for name in ("w1", "w3", "w2"):
        _assert_dist(getattr(model.blocks[1].ffn, name).weight.detach().flatten().numpy(), "n", _xavier(D, FF, BETA))


@pytest.mark.parametrize("cls", [Transformer, TorchMHATransformer], ids=["separate", "packed"])
@pytest.mark.parametrize("strategy", ["fixup"])
def test_fixup_zeroes_exactly_the_residual_outputs(cls, strategy):
    model = _model(strategy, cls)
    for p in param_roles(model):
        if p.role in ("attn_out", "mlp_out", "bias"):
            assert torch.all(p.param == 0), p.name
        elif p.role in ("qkv", "mlp_in", "embedding"):
            assert torch.all(p.param != 0), p.name


def test_rezero_gates_start_at_zero():
    model = Transformer(**SMALL, rezero=True)
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(3.0)
    init.apply(model, "rezero", generator=torch.Generator().manual_seed(0))
    gates = [p.param for p in param_roles(model) if p.role == "gate"]
    assert len(gates) == 2 * L and all(g.item() == 0 for g in gates)


def test_deepnorm_config_and_helpers():
    cfg = deepnorm_config(TransformerConfig(**SMALL))
    assert cfg.norm_position == "post" and cfg.residual_alpha == (2 * L) ** 0.25 == deepnorm_alpha(L)
    assert deepnorm_beta(L) == BETA
    assert config_for("deepnorm", TransformerConfig(**SMALL)) == cfg
    assert config_for("rezero", TransformerConfig(**SMALL)) == rezero_config(TransformerConfig(**SMALL))
    assert config_for("gpt2", TransformerConfig(**SMALL)) == TransformerConfig(**SMALL)
    # alpha written out by hand, not bit-identical to the helper's, is accepted
    hand = Transformer(**SMALL, norm_position="post", residual_alpha=math.sqrt(math.sqrt(2 * L)))
    init.apply(hand, "deepnorm")


def test_named_projections():
    parts = {p.name: p.parts for p in param_roles(TorchMHATransformer(**SMALL)) if p.role == "qkv"}
    assert parts["blocks.0.attn.mha.in_proj_weight"] == ("q", "k", "v")
    parts = {p.name: (p.parts, p.chunks) for p in param_roles(Transformer(**SMALL)) if p.role == "qkv"}
    assert parts["blocks.1.attn.v.weight"] == (("v",), 1) and parts["blocks.1.attn.q.weight"] == (("q",), 1)


def test_names_and_sources():
    described = init.describe()
    for name in MODERN:
        assert name in init.names()
        assert any(str(year) in described[name] for year in range(2019, 2025)), "summary cites its source"


@pytest.mark.parametrize("strategy, model, kw, match", [
    ("deepnorm", lambda: Transformer(**SMALL), {},
     r"needs a model built with norm_position='post', residual_alpha=1\.68.*config_for\('deepnorm', cfg\)"),
    ("deepnorm", lambda: Transformer(**SMALL, norm_position="post"), {}, r"needs a model built with residual_alpha="),
    ("deepnorm", lambda: Transformer(**SMALL, residual_alpha=deepnorm_alpha(L)), {},
     r"needs a model built with norm_position='post';"),
    ("deepnorm", lambda: MLP(8, 8, 2), {}, "needs a transformer .*; got MLPConfig"),
    ("rezero", lambda: Transformer(**SMALL), {}, "needs a model built with rezero=True"),
    ("rezero", lambda: MLP(8, 8, 2), {}, "needs a transformer"),
    ("megatron", lambda: Transformer(**SMALL), {"sigma": -1.0}, "option sigma must be a positive finite number"),
    ("megatron", lambda: Transformer(**SMALL), {"sigma": float("nan")}, "option sigma must be a positive"),
    ("megatron", lambda: Transformer(**SMALL), {"std": 0.1}, "has no option std; valid: sigma"),
    ("gpt2", lambda: Transformer(**SMALL), {"gain": 2.0}, "takes no gain"),
    ("olmo_mitchell", lambda: Transformer(**SMALL), {"sigma": 0.1}, "has no option sigma; valid: none"),
])
def test_bad_input_names_what_is_valid(strategy, model, kw, match):
    with pytest.raises(ValueError, match=match):
        init.apply(model(), strategy, **kw)


def test_deepnorm_refuses_unnamed_projections():
    model = Transformer.from_config(deepnorm_config(TransformerConfig(**SMALL)))
    model.blocks[0].attn.ROLES = {**MultiHeadAttention.ROLES, "v.weight": "qkv"}  # as declared before parts
    with pytest.raises(ValueError, match=r"deepnorm needs the q, k, v projections named.*blocks\.0\.attn\.v\.weight"):
        init.apply(model, "deepnorm")


@pytest.mark.parametrize("strategy", MODERN)
def test_mlp_either_initialized_fully_or_refused(strategy):
    model = MLP(16, 24, 3, "relu")
    if strategy in ("deepnorm", "rezero"):
        with pytest.raises(ValueError, match="needs a transformer"):
            init.apply(model, strategy)
        return
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(float("nan"))
    init.apply(model, strategy, generator=torch.Generator().manual_seed(0))
    assert not any(torch.isnan(p).any() for p in model.parameters())
