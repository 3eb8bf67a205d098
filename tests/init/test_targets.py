"""Every registered strategy draws what it declares: every role it touches, square and non-square shapes.

The registry-wide check (``test_every_strategy_draws_its_declared_targets``) enumerates the registry itself,
so a strategy registered later (muP included) is checked without anyone listing it. For each strategy, each
role, each of three shapes (square, fan_in > fan_out, fan_in < fan_out: a wrong fan mode is invisible on a
square matrix) it fills a parameter as ``apply`` does (``strategies.init_param``; torch_default: the torch
module that role comes from) and compares every matrix with ``init.promise``:

- variance: the mean square of the n entries against Var(w). Its relative sd is sqrt((kurtosis - 1)/n), at
  most sqrt(2/n) for the families declared (normal 3; uniform 1.8, truncated normal 2.8; orthogonal ~0: the
  squares of its unit rows sum to 1 exactly), so the band is VAR_SDS = 6 of those sds (6.6% at n = 16384;
  P(false alarm) 2e-9 per matrix). A 10% std change moves it by 21%;
- Kolmogorov-Smirnov against the declared family's CDF, p > P_KS = 1e-6: about 900 matrices per run give
  a false-alarm rate of ~1e-3 per seed (``pytest tests --seed S`` draws seed S). At n >= 16384 it rejects a
  uniform where a normal is declared (distance 0.04 against a critical 0.021) and a 10% std change about
  half the time; the variance check is the one that catches scale.
- constants (norm weights, zero biases, Fixup's zero projections): exactly.

The injection tests patch the registry the way tests/testing/test_bench_catches_regressions.py patches
the bench: a 10% std change of one role of one strategy, and a flipped fan mode (each matrix drawn in the
transposed shape), each must make the same check fail.
"""

from __future__ import annotations

import dataclasses
import math
from types import MappingProxyType

import numpy as np
import pytest
import torch
from scipy import stats
from torch import nn

from initcore import init
from initcore.init import strategies
from initcore.init.strategies import Context, init_param, promise
from initcore.init.targets import Site, Target
from initcore.models import MLPConfig, TransformerConfig
from initcore.models.roles import RoledParam

N = 64  # the smaller side: a square matrix has 4096 entries, a non-square one 16384
SHAPES = {"square": (N, N), "fan_in>fan_out": (4 * N, N), "fan_in<fan_out": (N, 4 * N)}  # (fan_in, fan_out)
L, BLOCK = 4, 2  # depth and the block the matrices belong to (block 2: OLMo's 1/(l+1) is not 1)
P_KS = 1e-6
VAR_SDS = 6.0
STD_EXAMPLE = 0.05  # normal:STD is checked as normal:0.05
# Matrix roles of a transformer, and of a model without one (an MLP); packed qkv only square, as (3E, E) is.
TRANSFORMER_ROLES = ("embedding", "q", "k", "v", "qkv_packed", "attn_out", "mlp_in", "mlp_out", "head",
                     "bias", "norm", "gate")
MLP_ROLES = ("hidden", "head", "bias")


def example_name(name: str) -> str:
    return name.replace("STD", str(STD_EXAMPLE))


def strategy_names() -> list[str]:
    return [example_name(n) for n in init.names()]


def _contexts(strategy: strategies.Strategy) -> dict[str, tuple[str, ...]]:
    """The model kinds a strategy takes (its ``config`` refuses the others) and their roles."""
    out = {}
    for kind, cfg, roles in (("transformer", TransformerConfig(), TRANSFORMER_ROLES), ("mlp", MLPConfig(), MLP_ROLES)):
        try:
            if strategy.config is not None:
                strategy.config(cfg)
        except ValueError:
            continue
        out[kind] = roles
    return out


def _param(kind: str, role: str, fan_in: int, fan_out: int) -> tuple[RoledParam, int | None, int | None]:
    """A parameter of ``role`` whose (each) matrix is (fan_out, fan_in), and the widths of its model."""
    transformer = kind == "transformer"
    d_model = {"embedding": fan_out, "attn_out": fan_out, "mlp_out": fan_out, "bias": fan_out, "norm": fan_out,
               "gate": fan_out}.get(role, fan_in) if transformer else None
    d_ff = {"mlp_in": fan_out, "mlp_out": fan_in}.get(role, 4 * d_model) if transformer else None
    block = BLOCK if transformer and role not in ("embedding", "head") else None
    if role in ("q", "k", "v"):
        p = RoledParam(f"attn.{role}.weight", "qkv", nn.Parameter(torch.empty(fan_out, fan_in)), block=block,
                       parts=(role,))
    elif role == "qkv_packed":
        p = RoledParam("attn.in_proj_weight", "qkv", nn.Parameter(torch.empty(3 * fan_out, fan_in)), chunks=3,
                       block=block, parts=("q", "k", "v"))
    elif role == "embedding":  # stored (vocab, d): a lookup from a one-hot of size vocab
        p = RoledParam("embed.weight", role, nn.Parameter(torch.empty(fan_in, fan_out)), transposed=True)
    elif role in ("bias", "norm"):
        p = RoledParam(f"x.{role}", role, nn.Parameter(torch.empty(fan_out)), block=block)
    elif role == "gate":
        p = RoledParam("attn_gate", role, nn.Parameter(torch.empty(())), block=block)
    else:
        p = RoledParam(f"{role}.weight", role, nn.Parameter(torch.empty(fan_out, fan_in)), block=block)
    return p, d_model, d_ff


def _torch_module_params(role: str, fan_in: int, fan_out: int, generator: torch.Generator) -> list[torch.Tensor]:
    """torch_default: the module initcore's models build for ``role``, reset by itself from ``generator``'s
    seed (as ``apply_torch_default`` does); its matrices in (fan_out, fan_in) layout."""
    torch.manual_seed(int(torch.randint(0, 2**62, (1,), generator=generator)))
    if role == "embedding":
        return [nn.Embedding(fan_in, fan_out).weight.t()]
    if role == "qkv_packed":
        return list(nn.MultiheadAttention(fan_in, 4).in_proj_weight.chunk(3))
    if role == "norm":
        return [nn.LayerNorm(fan_out).weight]
    if role == "gate":
        return []  # a TransformerBlock's own reset; declared 0
    linear = nn.Linear(fan_in, fan_out)
    return [linear.bias] if role == "bias" else [linear.weight]


def mismatches(name: str, kind: str, role: str, shape: str, seed: int, gain: float | None = None) -> list[str]:
    """What strategy ``name`` draws for ``role`` at ``shape`` that its declaration does not say (empty: all
    agree). One line per matrix that fails."""
    fan_in, fan_out = SHAPES[shape]
    strategy, implied = strategies.get(name)
    p, d_model, d_ff = _param(kind, role, fan_in, fan_out)
    n_layers = L
    generator = torch.Generator().manual_seed(seed)
    ctx = Context(n_layers, d_model, d_ff, gain, generator, MappingProxyType({**strategy.options, **implied}))
    with torch.no_grad():
        if strategy.name == "torch_default":
            drawn = _torch_module_params(role, fan_in, fan_out, generator)
        else:
            init_param(strategy, p, ctx)
            drawn = p.matrices() if p.param.dim() == 2 else [p.param]
    parts = p.parts if len(p.parts) == len(drawn) else ("",) * len(drawn)
    out = []
    for part, w in zip(parts, drawn, strict=True):
        fi, fo = (p.fans() if p.param.dim() < 2 else (w.shape[1], w.shape[0]))
        if role == "bias" and strategy.name == "torch_default":
            fi = fan_in  # a Linear's bias is drawn with its weight's fan_in
        target = promise(name, p.role, fi, fo, n_layers=n_layers, block=p.block, d_model=d_model, d_ff=d_ff,
                         part=part, chunks=p.chunks, gain=gain)
        problem = _distance(w.detach().double().flatten().numpy(), target)
        if problem:
            out.append(f"{name} {kind} {role}{'.' + part if part else ''} {shape} ({fo}x{fi}): declared {target}, "
                       f"{problem}")
    return out


def _distance(x: np.ndarray, target: Target) -> str:
    """'' if sample ``x`` fits ``target``; else what is off (see the module docstring for the thresholds)."""
    if target.family == "constant":
        return "" if np.all(x == target.mean) else f"drew values in [{x.min():.4g}, {x.max():.4g}]"
    ratio = float(np.mean(x**2)) / target.variance
    band = VAR_SDS * math.sqrt(2.0 / x.size)
    if abs(ratio - 1) > band:
        return f"mean square / declared variance = {ratio:.4f} (allowed 1 ± {band:.3f})"
    p = stats.kstest(x, target.cdf).pvalue
    return "" if p > P_KS else f"KS p = {p:.2g} < {P_KS:g} (mean square ratio {ratio:.4f})"


def _cases(name: str):
    strategy, _ = strategies.get(name)
    for kind, roles in _contexts(strategy).items():
        for role in roles:
            for shape in SHAPES:
                if role == "qkv_packed" and shape != "square":
                    continue  # an in_proj packs (E, E) matrices
                if role == "gate" and shape != "square":
                    continue  # a scalar
                yield kind, role, shape


@pytest.mark.parametrize("name", strategy_names())
def test_every_strategy_draws_its_declared_targets(name, seed):
    strategy, _ = strategies.get(name)
    assert strategy.targets is not None, (
        f"strategy {strategy.name!r} declares no targets: pass targets=(site -> Target) to its register() "
        "(see initcore.init.targets)")
    cases = list(_cases(name))
    assert len(cases) >= len(MLP_ROLES) * len(SHAPES)  # every strategy takes at least one kind of model
    failures = [line for case in cases for line in mismatches(name, *case, seed=seed)]
    if strategy.takes_gain:  # the gain is part of the promise: one non-square shape at gain 1.5
        failures += mismatches(name, "transformer" if "transformer" in _contexts(strategy) else "mlp",
                               "mlp_in" if "transformer" in _contexts(strategy) else "hidden",
                               "fan_in<fan_out", seed, gain=1.5)
    assert not failures, f"{len(failures)} matrices differ from their declared targets:\n" + "\n".join(failures)


# --- the check catches what it is for: a 10% std change of one role, a flipped fan mode ------------------------


def _patched(strategy: strategies.Strategy, role: str, change) -> strategies.Strategy:
    """``strategy`` with ``change(p, draw)`` wrapped around the drawing of parameters of ``role``."""
    def rule(w, p, ctx, _rule=strategy.rule):
        change(w, p, lambda t, q: _rule(t, q, ctx)) if p.role == role else _rule(w, p, ctx)

    special = {r: (lambda param, p, ctx, _s=s, _r=r: change(param, p, lambda t, q: _s(t, q, ctx)) if _r == role
                   else _s(param, p, ctx)) for r, s in strategy.special.items()}
    return dataclasses.replace(strategy, rule=rule, special=MappingProxyType(special))


def _scaled_std(w, p, draw):
    draw(w, p)
    w.mul_(1.1)  # std x 1.1


def _flipped(w, p, draw):
    """Draw into the transposed shape and copy back transposed: fan_in and fan_out trade places."""
    tmp = nn.Parameter(torch.empty(w.shape[::-1]))
    draw(tmp, dataclasses.replace(p, param=tmp))
    w.copy_(tmp.t())


def _role_cases(name: str):
    """(kind, role, shape, declared target) per role the strategy itself draws, on its non-square shape."""
    strategy, _ = strategies.get(name)
    seen = set()
    for kind, role, shape in _cases(name):
        real = "qkv" if role in ("q", "k", "v", "qkv_packed") else role
        if real in strategies._DEFAULTS and real not in strategy.special or real in seen:
            continue
        if shape != ("square" if role == "qkv_packed" else "fan_in<fan_out"):
            continue
        seen.add(real)
        p, d_model, d_ff = _param(kind, role, *SHAPES[shape])
        yield kind, role, shape, real, d_model, d_ff, p.block


RULE_STRATEGIES = [n for n in strategy_names() if strategies.get(n)[0].name != "torch_default"]


@pytest.mark.parametrize("name", RULE_STRATEGIES)
def test_a_10_percent_std_change_of_any_role_fails(name, seed, monkeypatch):
    strategy, _ = strategies.get(name)
    checked = 0
    for kind, role, shape, real, d_model, d_ff, block in _role_cases(name):
        fan_in, fan_out = SHAPES[shape]
        part = "v" if role == "v" else ""
        if promise(name, real, fan_in, fan_out, n_layers=L, block=block, d_model=d_model, d_ff=d_ff, part=part,
                   chunks=3 if role == "qkv_packed" else 1).variance == 0:
            continue  # a zero stays zero
        with monkeypatch.context() as mp:
            mp.setitem(strategies._REGISTRY, strategy.name, _patched(strategy, real, _scaled_std))
            assert mismatches(name, kind, role, shape, seed), f"{name}: std x 1.1 on {real} went unnoticed"
        checked += 1
    assert checked >= 1


def _asymmetric(name: str, kind: str, role: str, d_model, d_ff, block) -> bool:
    """Whether the declared target of ``role`` changes when fan_in and fan_out trade places."""
    a, b = SHAPES["fan_in<fan_out"]

    def std(fi, fo):
        return promise(name, role, fi, fo, n_layers=L, block=block, d_model=d_model, d_ff=d_ff).std
    return not math.isclose(std(a, b), std(b, a), rel_tol=1e-9)


def _flippable(name: str) -> list[tuple]:
    """The role cases whose declared target depends on which fan is which (a packed qkv is square)."""
    return [(kind, role, shape, real, d_model, d_ff, block)
            for kind, role, shape, real, d_model, d_ff, block in _role_cases(name)
            if role != "qkv_packed" and _asymmetric(name, kind, real, d_model, d_ff, block)]


# strategies with a fan-dependent promise: xavier's is symmetric, gpt2's fixed, neox's reads d_model
FLIPPABLE = [n for n in RULE_STRATEGIES if _flippable(n)]


def test_fan_dependent_strategies_are_found():
    assert {"kaiming_uniform", "kaiming_normal", "lecun_normal", "olmo_mitchell", "mup"} <= set(FLIPPABLE)


@pytest.mark.parametrize("name", FLIPPABLE)
def test_a_flipped_fan_mode_fails(name, seed, monkeypatch):
    """Where a strategy's promise depends on which fan is which, drawing with them swapped is caught."""
    strategy, _ = strategies.get(name)
    for kind, role, shape, real, *_ in _flippable(name):
        with monkeypatch.context() as mp:
            mp.setitem(strategies._REGISTRY, strategy.name, _patched(strategy, real, _flipped))
            assert mismatches(name, kind, role, shape, seed), f"{name}: flipped fans on {real} went unnoticed"


def test_a_changed_registry_default_fails(seed, monkeypatch):
    monkeypatch.setitem(strategies._DEFAULTS, "norm", lambda t: nn.init.constant_(t, 1.1))
    assert mismatches("xavier_uniform", "transformer", "norm", "square", seed)


def test_an_undeclared_strategy_is_refused(monkeypatch):
    monkeypatch.setitem(strategies._REGISTRY, "undeclared", strategies.Strategy("undeclared", lambda w, p, c: None, ""))
    with pytest.raises(ValueError, match="declares no targets"):
        promise("undeclared", "hidden", 4, 4)


# --- the declarations themselves: hand-computed values ----------------------------------------------------------


@pytest.mark.parametrize("name, role, fans, kw, variance", [
    ("xavier_uniform", "hidden", (300, 100), {}, 2 / 400),
    ("xavier_normal", "hidden", (300, 100), {"gain": 2.0}, 4 * 2 / 400),
    ("kaiming_uniform", "hidden", (300, 100), {}, 2 / 300),  # gain sqrt(2) for relu, torch's default
    ("kaiming_normal", "mlp_in", (300, 100), {"gain": 1.0}, 1 / 300),
    ("lecun_normal", "hidden", (300, 100), {}, 1 / 300),
    ("orthogonal", "hidden", (300, 100), {}, 1 / 300),  # 1/max(fan_in, fan_out)
    ("orthogonal", "hidden", (100, 300), {"gain": 0.5}, 0.25 / 300),
    ("small_normal", "hidden", (10, 10), {}, 0.02**2),
    ("normal:0.01", "hidden", (10, 10), {}, 1e-4),
    ("torch_default", "hidden", (300, 100), {}, 1 / 900),  # U(+-1/sqrt(fan_in)): 1/(3 fan_in)
    ("torch_default", "embedding", (300, 100), {}, 1.0),
    ("torch_default", "qkv", (128, 128), {"chunks": 3}, 2 / (128 + 384)),  # Xavier over the packed (3E, E)
    ("standard", "embedding", (1000, 512), {}, 0.01),
    ("scaled", "attn_out", (512, 512), {}, 0.25 * 2 / 1024),
    ("gpt2", "mlp_out", (2048, 512), {"n_layers": 12}, 0.02**2 / 24),
    ("megatron", "qkv", (512, 512), {"n_layers": 12, "sigma": 0.01}, 1e-4),
    ("olmo_mitchell", "mlp_out", (256, 64), {"block": 2},
     (1 - 6 * math.exp(-4.5) / math.sqrt(2 * math.pi) / math.erf(3 / math.sqrt(2))) / (2 * 256 * 3)),
    ("neox_small_init", "mlp_out", (256, 64), {"d_model": 64, "n_layers": 4}, 4 / (16 * 64)),  # d = d_model
    ("deepnorm", "qkv", (64, 64), {"n_layers": 4, "part": "v"}, 32**-0.5 * 2 / 128),  # beta^2 = (8L)^(-1/2)
    ("deepnorm", "qkv", (64, 64), {"n_layers": 4, "part": "q"}, 2 / 128),
    ("fixup", "attn_out", (64, 64), {}, 0.0),
    ("notebook_he_residual", "mlp_out", (256, 64), {}, 0.01**2),
])
def test_declared_variance(name, role, fans, kw, variance):
    assert promise(name, role, *fans, **kw).variance == pytest.approx(variance, rel=1e-12)


def test_bias_norm_gate_take_the_registry_defaults():
    assert (promise("gpt2", "bias", 8, 8).mean, promise("gpt2", "norm", 8, 8).mean,
            promise("rezero", "gate", 1, 1).mean) == (0.0, 1.0, 0.0)


@pytest.mark.parametrize("bad, match", [
    (("xavierr", "hidden", 4, 4), "unknown strategy 'xavierr'; valid: xavier_uniform"),
    (("normal:abc", "hidden", 4, 4), "normal:STD"),
    (("gpt2", "hiden", 4, 4), "unknown role 'hiden'; valid: embedding"),
])
def test_promise_refuses_bad_input(bad, match):
    with pytest.raises(ValueError, match=match):
        promise(*bad)


def test_promise_refuses_unknown_options_and_gains():
    with pytest.raises(ValueError, match="has no option sigmaa; valid: sigma"):
        promise("megatron", "qkv", 4, 4, sigmaa=0.1)
    with pytest.raises(ValueError, match="takes no gain"):
        promise("gpt2", "qkv", 4, 4, gain=2.0)


def test_site_of_reads_a_parameter_and_its_context():
    p = RoledParam("embed.weight", "embedding", nn.Parameter(torch.empty(300, 64)), transposed=True)
    ctx = Context(4, 64, 256, None, None, MappingProxyType({}))
    assert strategies.site_of(p, ctx) == Site("embedding", 300, 64, 4, None, 64, 256, "", 1, None,
                                             MappingProxyType({}))


@pytest.mark.parametrize("target, samples", [
    (init.targets.normal(0.3), lambda g: torch.randn(50_000, generator=g) * 0.3),
    (init.targets.uniform(0.3), lambda g: (torch.rand(50_000, generator=g) * 2 - 1) * 0.3),
    (init.targets.trunc_normal(0.3), lambda g: nn.init.trunc_normal_(torch.empty(50_000), 0, 0.3, -0.9, 0.9,
                                                                     generator=g)),
    (init.targets.orthogonal(1.0, 64, 256), lambda g: nn.init.orthogonal_(torch.empty(256, 64), generator=g)),
])
def test_target_cdf_and_variance_match_samples(target, samples):
    """Each family's CDF and variance formula against torch's own samplers (KS p > 1e-4; variance within
    6 sds of the mean square); the same samples reject a target 10% wider."""
    x = samples(torch.Generator().manual_seed(0)).double().flatten().numpy()
    assert _distance(x, target) == ""
    assert _distance(x, target.times(1.1)) != ""
