"""Strategies draw from the distributions they claim, reach every parameter, and reject bad input.

Distribution checks follow PyTorch's own init tests (test/nn/test_init.py): a Kolmogorov-Smirnov
test of a large weight against the exact target, p > 1e-4 with a fixed seed. Each check also shows
power: the same sample rejects a target whose scale is 10% off (the smallest weights
tested, 128 x 128, cannot resolve 5% at p < 1e-4: the KS critical distance is 2.1/sqrt(n)).
"""

import math

import pytest
import torch
from scipy import stats

from initcore import init
from initcore.init.strategies import config_for
from initcore.models import MLP, TorchMHATransformer, Transformer, param_roles

FAN_IN, FAN_OUT = 384, 768  # not square, so fan_in and fan_out formulas differ
SMALL = {"vocab_size": 300, "d_model": 128, "n_heads": 4, "d_ff": 256, "n_layers": 4}
P_MIN = 1e-4  # PyTorch's init tests use this threshold


def _sample(name, model=None, param=None, **kw):
    model = model or MLP(FAN_IN, FAN_OUT, 2, "tanh")
    init.apply(model, name, generator=torch.Generator().manual_seed(0), **kw)
    w = dict(model.named_parameters())[param or "layers.1.weight"]
    return w.detach().flatten().numpy()


def _assert_uniform(sample, bound):
    assert stats.kstest(sample, "uniform", args=(-bound, 2 * bound)).pvalue > P_MIN
    assert stats.kstest(sample, "uniform", args=(-1.1 * bound, 2.2 * bound)).pvalue < P_MIN


def _assert_normal(sample, std):
    assert stats.kstest(sample, "norm", args=(0, std)).pvalue > P_MIN
    assert stats.kstest(sample, "norm", args=(0, 1.1 * std)).pvalue < P_MIN


# layers.1 of MLP(384, 768, 2) is a (768, 768) Linear; use layers.0 (768, 384) for non-square fans.
@pytest.mark.parametrize("name, kw, dist, scale", [
    ("xavier_uniform", {}, "u", math.sqrt(6 / (FAN_IN + FAN_OUT))),
    ("xavier_uniform", {"gain": 2.0}, "u", 2 * math.sqrt(6 / (FAN_IN + FAN_OUT))),
    ("xavier_uniform", {"gain": "auto"}, "u", 5 / 3 * math.sqrt(6 / (FAN_IN + FAN_OUT))),  # tanh: 5/3
    ("xavier_normal", {}, "n", math.sqrt(2 / (FAN_IN + FAN_OUT))),
    ("kaiming_uniform", {}, "u", math.sqrt(6 / FAN_IN)),  # He, relu: bound sqrt(3 * 2/fan_in)
    ("kaiming_uniform", {"gain": 1.0}, "u", math.sqrt(3 / FAN_IN)),
    ("kaiming_normal", {}, "n", math.sqrt(2 / FAN_IN)),
    ("lecun_normal", {}, "n", math.sqrt(1 / FAN_IN)),
    ("small_normal", {}, "n", 0.02),
    ("normal:0.01", {}, "n", 0.01),
    ("normal:1.0", {}, "n", 1.0),
])
def test_weight_distribution(name, kw, dist, scale):
    sample = _sample(name, param="layers.0.weight", **kw)
    (_assert_uniform if dist == "u" else _assert_normal)(sample, scale)


@pytest.mark.parametrize("gain", [1.0, 0.5])
def test_orthogonal_rows_are_orthonormal_times_gain(gain):
    model = init.apply(MLP(FAN_IN, FAN_OUT, 1), "orthogonal", gain=gain, generator=torch.Generator().manual_seed(0))
    w = model.layers[0].weight.detach().double()  # (768, 384): columns orthonormal
    torch.testing.assert_close(w.T @ w, gain**2 * torch.eye(FAN_IN, dtype=torch.double), rtol=0, atol=1e-5)


def test_packed_in_proj_gets_per_projection_fans():
    model = TorchMHATransformer(**SMALL)
    sample = _sample("xavier_uniform", model, "blocks.0.attn.mha.in_proj_weight")
    d = SMALL["d_model"]
    _assert_uniform(sample, math.sqrt(6 / (d + d)))  # three (E, E) projections
    # torch's own init treats it as one (3E, E) matrix: bound sqrt(6/4E), half the variance
    torch_default = _sample("torch_default", TorchMHATransformer(**SMALL), "blocks.0.attn.mha.in_proj_weight")
    _assert_uniform(torch_default, math.sqrt(6 / (4 * d)))


def test_embedding_uses_the_fans_of_a_lookup():
    sample = _sample("kaiming_normal", Transformer(**SMALL), "embed.weight")
    _assert_normal(sample, math.sqrt(2 / SMALL["vocab_size"]))  # fan_in = vocab_size


@pytest.mark.parametrize("param, dist, scale", [
    ("embed.weight", "n", 0.1),  # the notebook's embedding std for standard and scaled
    ("blocks.0.attn.q.weight", "u", math.sqrt(6 / 256)),
    ("blocks.0.attn.o.weight", "u", math.sqrt(6 / 256)),
    ("blocks.0.ffn.fc2.weight", "u", math.sqrt(6 / (256 + 128))),
])
def test_standard(param, dist, scale):
    sample = _sample("standard", Transformer(**SMALL), param)
    (_assert_uniform if dist == "u" else _assert_normal)(sample, scale)


@pytest.mark.parametrize("param, factor", [
    ("blocks.0.attn.q.weight", 1.0), ("blocks.0.attn.o.weight", 0.5),
    ("blocks.3.ffn.fc1.weight", 1.0), ("blocks.3.ffn.fc2.weight", 0.5),
])
def test_scaled_really_scales_residual_outputs(param, factor):
    sample = _sample("scaled", Transformer(**SMALL), param)
    fans = sum(dict(Transformer(**SMALL).named_parameters())[param].shape)
    _assert_uniform(sample, factor * math.sqrt(6 / fans))


def test_scaled_option_and_packed_model():
    sample = _sample("scaled", TorchMHATransformer(**SMALL), "blocks.0.attn.mha.out_proj.weight", residual_scale=0.25)
    _assert_uniform(sample, 0.25 * math.sqrt(6 / 256))


@pytest.mark.parametrize("param", ["embed.weight", "blocks.0.attn.q.weight", "blocks.2.ffn.fc2.weight"])
def test_small_init(param):
    _assert_normal(_sample("small_init", Transformer(**SMALL), param), 0.02)


def test_torch_default_is_what_modules_do_themselves():
    model = Transformer(**SMALL)
    init.apply(model, "torch_default", generator=torch.Generator().manual_seed(0))
    _assert_uniform(model.blocks[0].attn.q.weight.detach().flatten().numpy(), 1 / math.sqrt(128))  # Linear default
    _assert_normal(model.embed.weight.detach().flatten().numpy(), 1.0)  # Embedding default N(0, 1)
    assert torch.all(model.blocks[0].norm1.weight == 1) and torch.all(model.blocks[0].norm1.bias == 0)


def test_default_biases_norms_and_gates():
    model = Transformer(**SMALL, rezero=True)
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(3.0)
    init.apply(model, "xavier_normal", generator=torch.Generator().manual_seed(0))
    for p in param_roles(model):
        if p.role in ("bias", "gate"):
            assert torch.all(p.param == 0), p.name
        elif p.role == "norm":
            assert torch.all(p.param == 1), p.name


MODELS = {
    "mlp": lambda: MLP(16, 24, 3, "relu"),
    "transformer": lambda: Transformer(**SMALL, rezero=True),
    "transformer-swiglu-rmsnorm-post": lambda: Transformer(**SMALL, ffn="swiglu", norm="rmsnorm", norm_position="post"),
    "torch_mha_transformer": lambda: TorchMHATransformer(**SMALL),
}


@pytest.mark.parametrize("model_name", MODELS)
@pytest.mark.parametrize("strategy", [n.replace("STD", "0.3") for n in init.names()])
def test_no_parameter_is_left_out(model_name, strategy):
    model = MODELS[model_name]()
    try:  # a strategy that needs a model feature (deepnorm's alpha, rezero's gates) gets a model that has it
        cfg = config_for(strategy, model.config)
    except ValueError:  # ... or refuses the model outright, before touching a parameter
        with pytest.raises(ValueError, match="needs a transformer"):
            init.apply(model, strategy)
        return
    if cfg != model.config:
        model = type(model).from_config(cfg)
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(float("nan"))
    init.apply(model, strategy, generator=torch.Generator().manual_seed(0))
    left = [n for n, p in model.named_parameters() if torch.isnan(p).any()]
    assert not left


def test_same_generator_seed_same_weights_other_seed_other_weights():
    a, b, c = (init.apply(MLP(8, 8, 2), "xavier_uniform", generator=torch.Generator().manual_seed(s))
               for s in (1, 1, 2))
    assert torch.equal(a.layers[0].weight, b.layers[0].weight)
    assert not torch.equal(a.layers[0].weight, c.layers[0].weight)


def test_names_and_describe():
    names = init.names()
    for required in ["xavier_uniform", "xavier_normal", "kaiming_uniform", "kaiming_normal", "lecun_normal",
                     "orthogonal", "small_normal", "normal:STD", "torch_default", "standard", "scaled", "small_init"]:
        assert required in names
    assert set(init.describe()) == set(names)


@pytest.mark.parametrize("name, kw, match", [
    ("xavierr", {}, "unknown strategy 'xavierr'; valid: xavier_uniform, xavier_normal"),
    ("normal:abc", {}, "write normal:STD with a positive number"),
    ("normal:-1", {}, "STD must be a positive finite number"),
    ("xavier_uniform:2", {}, "unknown strategy"),
    ("small_normal", {"gain": 2.0}, "takes no gain; strategies with a gain: xavier_uniform"),
    ("xavier_uniform", {"gain": -1.0}, "gain must be a positive number or 'auto'"),
    ("scaled", {"residual_scal": 0.5}, "has no option residual_scal; valid: residual_scale"),
    ("torch_default", {"gain": 1.0}, "takes no gain"),
])
def test_bad_input_names_what_is_valid(name, kw, match):
    with pytest.raises(ValueError, match=match):
        init.apply(MLP(4, 4, 2), name, **kw)


def test_auto_gain_without_a_torch_gain_says_what_to_do():
    with pytest.raises(ValueError, match="no gain for 'gelu'.*pass gain=<number>"):
        init.apply(MLP(4, 4, 2, "gelu"), "xavier_uniform", gain="auto")


@pytest.mark.parametrize("name, close", [("xavier", "xavier_normal, xavier_uniform"), ("kaiming", "kaiming_normal, "
                                         "kaiming_uniform"), ("gtp2", "gpt2"), ("mupp", "mup"), ("zzz", None)])
def test_an_unknown_strategy_suggests_the_names_close_to_it(name, close):
    """difflib's close matches end the message (after what is valid), for the library and the CLI alike."""
    with pytest.raises(ValueError, match=f"unknown strategy '{name}'; valid: xavier_uniform") as exc:
        init.get(name)
    assert str(exc.value).endswith(f"; did you mean {close}?") if close else "did you mean" not in str(exc.value)
