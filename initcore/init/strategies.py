"""Named init strategies: one rule per parameter role, applied to every parameter of a model.

A strategy is a function ``rule(w, p, ctx)`` that fills one weight matrix ``w`` in place, given the
parameter's role (``p.role``) and the model's context (``ctx``). Biases, norms and gates share one
default (zero, one, zero) unless a strategy says otherwise. Packed weights (``nn.MultiheadAttention``'s
in_proj) are handed to the rule one (E, E) chunk at a time, so fans are those of each projection.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

import torch
from torch import nn

from initcore.init.functions import kaiming_normal_gain_, kaiming_uniform_gain_, lecun_normal_
from initcore.models.roles import RoledParam, param_roles

RESIDUAL_OUT = ("attn_out", "mlp_out")  # roles that write into a residual stream


@dataclass(frozen=True)
class Context:
    """What a rule may know about the model besides the parameter itself."""

    n_layers: int  # residual blocks of a transformer, Linear layers of an MLP
    d_model: int | None  # residual width (transformers)
    d_ff: int | None  # feed-forward width (transformers)
    gain: float | None  # None: the strategy's own default
    generator: torch.Generator | None
    options: Mapping[str, object]


Rule = Callable[[torch.Tensor, RoledParam, Context], None]


@dataclass(frozen=True)
class Strategy:
    name: str
    rule: Rule
    summary: str
    options: Mapping[str, object] = field(default_factory=dict)  # option -> default
    takes_gain: bool = False
    special: Mapping[str, Rule] = field(default_factory=dict)  # rules for bias/norm/gate roles


_REGISTRY: dict[str, Strategy] = {}


def register(name: str, summary: str, *, options: Mapping[str, object] | None = None, takes_gain: bool = False,
             special: Mapping[str, Rule] | None = None) -> Callable[[Rule], Rule]:
    """Decorator: add ``rule`` to the registry under ``name``."""

    def deco(rule: Rule) -> Rule:
        if name in _REGISTRY:
            raise ValueError(f"strategy {name!r} is registered twice")
        _REGISTRY[name] = Strategy(name, rule, summary, MappingProxyType(dict(options or {})), takes_gain,
                                   MappingProxyType(dict(special or {})))
        return rule

    return deco


def names() -> list[str]:
    """The registered strategy names; ``normal:STD`` takes any positive STD."""
    return [n if n != "normal" else "normal:STD" for n in _REGISTRY]


def describe() -> dict[str, str]:
    """Strategy name (as in ``names()``) -> one-line summary."""
    return {(n if n != "normal" else "normal:STD"): s.summary for n, s in _REGISTRY.items()}


def get(name: str) -> tuple[Strategy, dict[str, object]]:
    """The strategy called ``name`` and the options its name implies (``normal:0.01`` -> std 0.01)."""
    if not isinstance(name, str):
        raise ValueError(f"strategy name must be a string; valid: {', '.join(names())}")
    base, _, arg = name.partition(":")
    if base == "normal":
        try:
            std = float(arg)
        except ValueError:
            raise ValueError(f"strategy {name!r}: write normal:STD with a positive number, e.g. normal:0.01") from None
        if not (std > 0 and math.isfinite(std)):
            raise ValueError(f"strategy {name!r}: STD must be a positive finite number")
        return _REGISTRY["normal"], {"std": std}
    if arg or base not in _REGISTRY:
        raise ValueError(f"unknown strategy {name!r}; valid: {', '.join(names())}")
    return _REGISTRY[base], {}


def activation_gain(model: nn.Module) -> float:
    """``torch.nn.init.calculate_gain`` of the model's activation (MLP) or feed-forward activation."""
    cfg = getattr(model, "config", None)
    act = getattr(cfg, "activation", None) or {"swiglu": "silu"}.get(getattr(cfg, "ffn", ""), getattr(cfg, "ffn", None))
    if act is None:
        raise ValueError("gain='auto' needs a model with config.activation or config.ffn")
    if act == "leaky_relu":
        return nn.init.calculate_gain("leaky_relu", 0.01)  # the models' slope
    try:
        return nn.init.calculate_gain(act)
    except ValueError:
        raise ValueError(
            f"gain='auto': torch.nn.init.calculate_gain has no gain for {act!r} "
            "(it knows linear, sigmoid, tanh, relu, leaky_relu, selu); pass gain=<number>"
        ) from None


def _context(model: nn.Module, gain: float | None, generator, options) -> Context:
    cfg = getattr(model, "config", None)
    n_layers = getattr(cfg, "n_layers", None) or getattr(cfg, "depth", None) or 1
    return Context(n_layers, getattr(cfg, "d_model", None), getattr(cfg, "d_ff", None), gain, generator,
                   MappingProxyType(options))


_DEFAULTS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "bias": nn.init.zeros_,
    "norm": nn.init.ones_,
    "gate": nn.init.zeros_,
}


def apply(model: nn.Module, name: str, *, gain: float | str | None = None,
          generator: torch.Generator | None = None, **options) -> nn.Module:
    """Initialize every parameter of ``model`` in place with strategy ``name``; return the model.

    Args:
        model: a model whose modules declare parameter roles (``initcore.models``).
        name: a registered strategy, see ``names()``.
        gain: a number, ``"auto"`` for ``calculate_gain`` of the model's activation, or None for the
            strategy's default. Only strategies built on a gain accept one.
        generator: draw from this ``torch.Generator`` (weights on the CPU), for reproducible runs.
        **options: the strategy's own options, see ``describe()``.

    Raises:
        ValueError: unknown strategy, option or gain.

    Example:
        >>> from initcore.models import MLP
        >>> model = apply(MLP(8, 8, 2), "xavier_uniform", generator=torch.Generator().manual_seed(0))
    """
    strategy, implied = get(name)
    unknown = set(options) - set(strategy.options)
    if unknown:
        valid = ", ".join(strategy.options) or "none"
        raise ValueError(f"strategy {name!r} has no option {', '.join(sorted(unknown))}; valid: {valid}")
    if gain is not None and not strategy.takes_gain:
        raise ValueError(f"strategy {name!r} takes no gain; strategies with a gain: "
                         f"{', '.join(s.name for s in _REGISTRY.values() if s.takes_gain)}")
    if gain == "auto":
        gain = activation_gain(model)
    elif gain is not None and not (isinstance(gain, (int, float)) and gain > 0 and math.isfinite(gain)):
        raise ValueError(f"gain must be a positive number or 'auto', got {gain!r}")
    if strategy.name == "torch_default":
        return apply_torch_default(model, generator)
    ctx = _context(model, gain, generator, {**strategy.options, **implied, **options})
    with torch.no_grad():
        for p in param_roles(model):
            if p.role in strategy.special:
                strategy.special[p.role](p.param, p, ctx)
            elif p.role in _DEFAULTS:
                _DEFAULTS[p.role](p.param)
            else:
                for w in p.matrices():
                    strategy.rule(w, p, ctx)
    return model


# --- the strategies -----------------------------------------------------------------------------


def _g(ctx: Context, default: float = 1.0) -> float:
    return default if ctx.gain is None else ctx.gain


@register("xavier_uniform", "U(-a, a), a = gain*sqrt(6/(fan_in+fan_out)) (Glorot & Bengio, 2010)", takes_gain=True)
def _xavier_uniform(w, p, ctx):
    nn.init.xavier_uniform_(w, gain=_g(ctx), generator=ctx.generator)


@register("xavier_normal", "N(0, gain^2*2/(fan_in+fan_out)) (Glorot & Bengio, 2010)", takes_gain=True)
def _xavier_normal(w, p, ctx):
    nn.init.xavier_normal_(w, gain=_g(ctx), generator=ctx.generator)


@register("kaiming_uniform", "U(-a, a), a = gain*sqrt(3/fan_in), gain sqrt(2) for ReLU (He et al., 2015)",
          takes_gain=True)
def _kaiming_uniform(w, p, ctx):
    if ctx.gain is None:
        nn.init.kaiming_uniform_(w, nonlinearity="relu", generator=ctx.generator)
    else:
        kaiming_uniform_gain_(w, ctx.gain, generator=ctx.generator)


@register("kaiming_normal", "N(0, gain^2/fan_in), gain sqrt(2) for ReLU (He et al., 2015)", takes_gain=True)
def _kaiming_normal(w, p, ctx):
    if ctx.gain is None:
        nn.init.kaiming_normal_(w, nonlinearity="relu", generator=ctx.generator)
    else:
        kaiming_normal_gain_(w, ctx.gain, generator=ctx.generator)


@register("lecun_normal", "N(0, gain^2/fan_in) (LeCun et al., 1998); the init SELU assumes", takes_gain=True)
def _lecun_normal(w, p, ctx):
    lecun_normal_(w, gain=_g(ctx), generator=ctx.generator)


@register("orthogonal", "a (semi-)orthogonal matrix times gain (Saxe et al., 2014)", takes_gain=True)
def _orthogonal(w, p, ctx):
    if w.is_contiguous():
        nn.init.orthogonal_(w, gain=_g(ctx), generator=ctx.generator)
    else:  # an Embedding's transposed view: draw in its shape, copy in
        w.copy_(nn.init.orthogonal_(torch.empty(w.shape), gain=_g(ctx), generator=ctx.generator))


@register("small_normal", "N(0, 0.02^2) everywhere (GPT-2's base std)")
def _small_normal(w, p, ctx):
    nn.init.normal_(w, 0.0, 0.02, generator=ctx.generator)


@register("normal", "N(0, STD^2) everywhere; normal:0.01 is the notebook's too small, normal:1.0 too large",
          options={"std": None})
def _normal(w, p, ctx):
    nn.init.normal_(w, 0.0, ctx.options["std"], generator=ctx.generator)


def _torch_default(module: nn.Module) -> None:
    reset = getattr(module, "reset_parameters", None) or getattr(module, "_reset_parameters", None)
    if reset is not None:
        reset()


@register("torch_default", "what the modules do by themselves (their reset_parameters)")
def _torch_default_rule(w, p, ctx):  # never called per matrix: apply() hands the model to apply_torch_default
    raise AssertionError("torch_default is applied module by module")


def apply_torch_default(model: nn.Module, generator: torch.Generator | None = None) -> nn.Module:
    """Re-run every module's own ``reset_parameters``, children before parents, as construction does."""
    seed = None if generator is None else int(torch.randint(0, 2**62, (1,), generator=generator))
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        if seed is not None:
            torch.manual_seed(seed)
        for module in reversed(list(model.modules())):
            _torch_default(module)
    return model


def _standard_weights(w, p, ctx, embedding_std: float):
    if p.role == "embedding":
        nn.init.normal_(w, 0.0, embedding_std, generator=ctx.generator)
    else:
        nn.init.xavier_uniform_(w, gain=_g(ctx), generator=ctx.generator)


@register("standard", "the notebook's transformer baseline: Xavier uniform weights, embedding N(0, 0.1^2)",
          takes_gain=True)
def _standard(w, p, ctx):
    _standard_weights(w, p, ctx, embedding_std=0.1)


@register("scaled", "standard, then residual output projections (attn_out, mlp_out) times residual_scale",
          options={"residual_scale": 0.5}, takes_gain=True)
def _scaled(w, p, ctx):
    _standard_weights(w, p, ctx, embedding_std=0.1)
    if p.role in RESIDUAL_OUT:
        w.mul_(ctx.options["residual_scale"])  # really scaled: the notebook's version never was


@register("small_init", "the notebook's small init: N(0, 0.02^2) for every weight, embedding included")
def _small_init(w, p, ctx):
    nn.init.normal_(w, 0.0, 0.02, generator=ctx.generator)
