"""Named init strategies: one rule per parameter role, applied to every parameter of a model.

A strategy is a function ``rule(w, p, ctx)`` that fills one weight matrix ``w`` in place, given the
parameter's role (``p.role``) and the model's context (``ctx``). Biases, norms and gates share one
default (zero, one, zero) unless a strategy says otherwise. Packed weights (``nn.MultiheadAttention``'s
in_proj) are handed to the rule one (E, E) chunk at a time, so fans are those of each projection.

Beside its rule each strategy declares what it promises: ``targets(site) -> Target``, the distribution
of every entry of a matrix (``initcore.init.targets``). ``promise`` reads it for any role and shape;
tests/init/test_targets.py checks every rule against its declaration.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, is_dataclass, replace
from types import MappingProxyType

import torch
from torch import nn

from initcore.init import targets as T
from initcore.init import verify
from initcore.init.functions import kaiming_normal_gain_, kaiming_uniform_gain_, lecun_normal_, trunc_normal_sigma_
from initcore.init.sharded import full_modules, full_params
from initcore.init.targets import Site, Target
from initcore.models import readout, structure
from initcore.models.roles import ROLES, Role, RoledParam, param_roles
from initcore.threads import one_thread

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
Targets = Callable[[Site], Target]  # a strategy's promise for one matrix, see initcore.init.targets
Prepare = Callable[[nn.Module, Mapping | None, dict], tuple[Mapping | None, dict]]


@dataclass(frozen=True)
class Strategy:
    name: str
    rule: Rule
    summary: str
    options: Mapping[str, object] = field(default_factory=dict)  # option -> default
    takes_gain: bool = False
    special: Mapping[str, Rule] = field(default_factory=dict)  # rules for bias/norm/gate roles
    # the model config the strategy needs, from the model's config (None: any model); see config_for()
    config: Callable[[object], object] | None = None
    apart: tuple[str, ...] = ()  # roles the rule treats apart from "hidden": a guessed role would hide them
    targets: Targets | None = None  # what the rule draws, per matrix (None: undeclared, which tests refuse)
    # prepare(model, roles, options) -> (roles, options): what the strategy reads of the whole model first
    # (muP's base model: which weights are the readout), before roles are resolved
    prepare: Prepare | None = None


_REGISTRY: dict[str, Strategy] = {}


def register(name: str, summary: str, *, options: Mapping[str, object] | None = None, takes_gain: bool = False,
             special: Mapping[str, Rule] | None = None, config: Callable[[object], object] | None = None,
             apart: tuple[str, ...] = (), targets: Targets | None = None,
             prepare: Prepare | None = None) -> Callable[[Rule], Rule]:
    """Decorator: add ``rule`` to the registry under ``name``.

    ``special`` maps a role to a rule called once with the whole parameter (``rule(p.param, p, ctx)``),
    for roles the strategy treats apart from the per-matrix rule. ``config`` maps a model's config to
    the config the strategy needs (DeepNorm's residual multiplier); ``apply`` refuses a model built
    otherwise, and ``config_for`` hands the needed config to whoever builds the model. ``targets``
    declares what the rule draws: ``targets(site) -> Target`` for every matrix role (and for the
    roles of ``special``), see ``initcore.init.targets``; ``promise`` reads it. ``prepare(model, roles,
    options)`` returns the roles and options ``apply`` then uses (muP reads its base model there).
    """

    def deco(rule: Rule) -> Rule:
        if name in _REGISTRY:
            raise ValueError(f"strategy {name!r} is registered twice")
        _REGISTRY[name] = Strategy(name, rule, summary, MappingProxyType(dict(options or {})), takes_gain,
                                   MappingProxyType(dict(special or {})), config, tuple(apart), targets,
                                   prepare)
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
        close = ", ".join(difflib.get_close_matches(base, list(_REGISTRY), n=3))  # xavier: xavier_normal, ...
        hint = f"; did you mean {close}?" if close else ""
        raise ValueError(f"unknown strategy {name!r}; valid: {', '.join(names())}{hint}")
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


def _context(model: nn.Module, gain: float | None, generator, options, n_layers: int | None = None) -> Context:
    """The model's facts: initcore's config (``n_layers`` or ``depth``, ``d_model``, ``d_ff``); for a model
    without one, the number of its repeated blocks (``structure.blocks``), unless ``n_layers`` is given."""
    cfg = getattr(model, "config", None)
    ours = isinstance(getattr(cfg, "n_layers", None) or getattr(cfg, "depth", None), int)
    if n_layers is None:
        n_layers = (getattr(cfg, "n_layers", None) or getattr(cfg, "depth", None)) if ours else \
            len(structure.blocks(model)) or 1
    d_model, d_ff = (getattr(cfg, "d_model", None), getattr(cfg, "d_ff", None)) if ours else (None, None)
    return Context(n_layers, d_model, d_ff, gain, generator, MappingProxyType(options))


def _check_guessed(strategy: Strategy, params: list[RoledParam]) -> None:
    # Only a role someone gave (a module's declaration, the roles mapping) shows the model's parts were told
    # apart; one inferred from a type (nn.MultiheadAttention's out_proj) leaves its feed-forward guessed.
    if not strategy.apart or any(p.role in strategy.apart and not p.inferred for p in params):
        return
    guessed = [p.name for p in params if p.inferred and p.role == "hidden"]
    if guessed:
        shown = ", ".join(guessed[:6]) + (f", ... ({len(guessed)} in all)" if len(guessed) > 6 else "")
        raise ValueError(f"strategy {strategy.name!r} treats {', '.join(strategy.apart)} apart, and this model "
                         f"declares none of them: {shown} got role 'hidden' from their type alone. Pass "
                         f"roles={{pattern: role}} naming them (e.g. {{'*.c_proj.weight': 'attn_out'}}), or "
                         f"roles={{'*.weight': 'hidden'}} if every one is a plain hidden layer")


_DEFAULTS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "bias": nn.init.zeros_,
    "norm": nn.init.ones_,
    "gate": nn.init.zeros_,
}


def apply(model: nn.Module, name: str, *, gain: float | str | None = None,
          generator: torch.Generator | None = None, roles: Mapping[str, str | tuple | Role] | None = None,
          n_layers: int | None = None, **options) -> nn.Module:
    """Initialize every parameter of ``model`` in place with strategy ``name``; return the model.

    Args:
        model: any model: initcore's declare their parameters' roles; for others see ``roles``.
        name: a registered strategy, see ``names()``.
        gain: a number, ``"auto"`` for ``calculate_gain`` of the model's activation, or None for the
            strategy's default. Only strategies built on a gain accept one.
        generator: draw from this ``torch.Generator`` (weights on the CPU), for reproducible runs.
        roles: parameter-name pattern -> role for parameters no module declares (``param_roles``), e.g.
            ``{"*.c_proj.weight": "attn_out"}``; Linear, Conv, Embedding, norm and bias parameters of
            undeclared modules get theirs from their type.
        n_layers: the depth L a strategy scales by (GPT-2's 1/sqrt(2L)); default: the model's config,
            else its number of repeated blocks.
        **options: the strategy's own options, see ``describe()``.

    Raises:
        ValueError: unknown strategy, option or gain; parameters without a role (listed); a strategy
            that treats residual projections apart on a model whose roles were only guessed.

    Example:
        >>> from initcore.models import MLP
        >>> model = apply(MLP(8, 8, 2), "xavier_uniform", generator=torch.Generator().manual_seed(0))
    """
    strategy, implied = get(name)
    _check_options(strategy, name, options, gain)
    if gain == "auto":
        gain = activation_gain(model)
    if strategy.config is not None:
        _check_config(strategy, getattr(model, "config", None))
    readout.remove_output_multipliers(model)  # a multiplier muP put on a tied readout belongs to that init
    if strategy.prepare is not None:
        roles, options = strategy.prepare(model, roles, dict(options))
    if strategy.name == "torch_default":
        return apply_torch_default(model, generator)
    if n_layers is not None and not (isinstance(n_layers, int) and not isinstance(n_layers, bool) and n_layers > 0):
        raise ValueError(f"n_layers must be a positive integer, got {n_layers!r}")
    ctx = _context(model, gain, generator, {**strategy.options, **implied, **options}, n_layers)
    params = param_roles(model, roles)
    _check_guessed(strategy, params)
    verify.check_layout(model, params)
    check = torch.Generator().manual_seed(0)  # the check's own draws: the caller's streams stay untouched
    problems: list[str] = []
    with torch.no_grad():
        for p in full_params(params, generator):  # DTensors: draw in full, keep the shard
            init_param(strategy, p, ctx)
            problems += drawn_mismatches(strategy, p, ctx, check)
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise verify.InitMismatchError(f"init.apply(model, {name!r}) drew {problems[0]}{more}: something changed "
                                       "the weights as they were drawn (a parametrization, a hook, a module's "
                                       "own override), or the strategy does not keep its promise")
    return model


def drawn_mismatches(strategy: Strategy, p: RoledParam, ctx: Context, generator: torch.Generator) -> list[str]:
    """What of ``p`` does not follow the strategy's promise, matrix by matrix (``verify.mismatch``)."""
    out = []
    parts = p.parts if len(p.parts) == p.chunks else ("",) * p.chunks
    for part, w in zip(parts, p.matrices(), strict=True):
        if p.role in _DEFAULTS and p.role not in strategy.special:
            target = T.DEFAULT_TARGETS[p.role]
        elif strategy.targets is None or w.dim() < 2:
            continue
        else:
            target = strategy.targets(site_of(p, ctx, part))
        if w.dim() == 0 and target.family != "constant":
            continue
        with one_thread():
            why = verify.mismatch(w, target, generator)
        if why:
            out.append(f"{p.name}{f' ({part})' if part else ''}: {why}")
    return out


def init_param(strategy: Strategy, p: RoledParam, ctx: Context) -> None:
    """Fill one parameter as ``apply`` does: the strategy's rule for its role, matrix by matrix."""
    if p.role in strategy.special:
        strategy.special[p.role](p.param, p, ctx)
    elif p.role in _DEFAULTS:
        _DEFAULTS[p.role](p.param)
    else:
        for w in p.matrices():
            strategy.rule(w, p, ctx)


def _check_options(strategy: Strategy, name: str, options: Mapping[str, object], gain) -> None:
    unknown = set(options) - set(strategy.options)
    if unknown:
        valid = ", ".join(strategy.options) or "none"
        raise ValueError(f"strategy {name!r} has no option {', '.join(sorted(unknown))}; valid: {valid}")
    if gain is not None and not strategy.takes_gain:
        raise ValueError(f"strategy {name!r} takes no gain; strategies with a gain: "
                         f"{', '.join(s.name for s in _REGISTRY.values() if s.takes_gain)}")
    if gain != "auto" and gain is not None and not (
            isinstance(gain, (int, float)) and not isinstance(gain, bool) and gain > 0 and math.isfinite(gain)):
        raise ValueError(f"gain must be a positive number or 'auto', got {gain!r}")


def promise(name: str, role: str, fan_in: int, fan_out: int, *, n_layers: int = 1, block: int | None = None,
            d_model: int | None = None, d_ff: int | None = None, part: str = "", chunks: int = 1,
            gain: float | None = None, **options) -> Target:
    """The distribution strategy ``name`` promises for one (fan_out, fan_in) matrix of role ``role``.

    Read from the strategy's declaration (``register(..., targets=)``); biases, norm weights and gates
    not treated apart get the registry's defaults (``targets.DEFAULT_TARGETS``), except under
    torch_default, whose modules set their own. Arguments are those of ``targets.Site``; ``options``
    the strategy's own (its defaults filled in, as ``apply`` does).

    Raises:
        ValueError: unknown strategy, role or option, a gain the strategy does not take, a strategy
            that declares no targets.

    Example:
        >>> round(promise("gpt2", "mlp_out", 2048, 512, n_layers=12).std, 6)  # 0.02 / sqrt(2 * 12)
        0.004082
        >>> print(promise("kaiming_uniform", "hidden", 256, 512))  # a = sqrt(2) sqrt(3 / fan_in)
        U(-0.1531, 0.1531)
    """
    strategy, implied = get(name)
    _check_options(strategy, name, options, gain)
    if gain == "auto":
        raise ValueError("promise takes a numeric gain: resolve 'auto' with activation_gain(model)")
    if role not in ROLES:
        raise ValueError(f"unknown role {role!r}; valid: {', '.join(ROLES)}")
    if role in _DEFAULTS and role not in strategy.special and strategy.name != "torch_default":
        return T.DEFAULT_TARGETS[role]
    if strategy.targets is None:
        raise ValueError(f"strategy {strategy.name!r} declares no targets: pass targets= to its register()")
    site = Site(role, fan_in, fan_out, n_layers, block, d_model, d_ff, part, chunks, gain,
                MappingProxyType({**strategy.options, **implied, **options}))
    return strategy.targets(site)


def site_of(p: RoledParam, ctx: Context, part: str = "") -> Site:
    """The ``Site`` of one matrix of ``p`` under ``ctx`` (``part``: its q/k/v name, if any)."""
    fan_in, fan_out = p.fans()
    return Site(p.role, fan_in, fan_out, ctx.n_layers, p.block, ctx.d_model, ctx.d_ff, part, p.chunks,
                ctx.gain, ctx.options)


def config_for(name: str, cfg):
    """The model config strategy ``name`` needs, given a model's config ``cfg`` (``cfg`` itself for most).

    Example:
        >>> from initcore.models import TransformerConfig
        >>> config_for("deepnorm", TransformerConfig(n_layers=8)).residual_alpha  # (2L)^(1/4)
        2.0

    Raises:
        ValueError: unknown strategy, or a model the strategy cannot be applied to.
    """
    strategy, _ = get(name)
    return cfg if strategy.config is None else strategy.config(cfg)


def _check_config(strategy: Strategy, cfg) -> None:
    need = strategy.config(cfg)  # raises for a model the strategy cannot take at all
    if need == cfg:
        return
    diff = {k: v for k, v in vars(need).items()
            if not (v == vars(cfg)[k] or isinstance(v, float) and math.isclose(v, vars(cfg)[k], rel_tol=1e-9))}
    if diff:
        fields = ", ".join(f"{k}={v!r}" for k, v in diff.items())
        raise ValueError(f"strategy {strategy.name!r} needs a model built with {fields}; "
                         f"build it from initcore.init.strategies.config_for({strategy.name!r}, cfg)")


# --- the strategies -----------------------------------------------------------------------------


def _g(ctx: Context | Site, default: float = 1.0) -> float:
    return default if ctx.gain is None else ctx.gain


RELU_GAIN = math.sqrt(2.0)  # torch.nn.init.calculate_gain("relu"): kaiming_*'s default


@register("xavier_uniform", "U(-a, a), a = gain*sqrt(6/(fan_in+fan_out)) (Glorot & Bengio, 2010)", takes_gain=True,
          targets=lambda s: T.xavier_uniform(s.fan_in, s.fan_out, _g(s)))
def _xavier_uniform(w, p, ctx):
    nn.init.xavier_uniform_(w, gain=_g(ctx), generator=ctx.generator)


@register("xavier_normal", "N(0, gain^2*2/(fan_in+fan_out)) (Glorot & Bengio, 2010)", takes_gain=True,
          targets=lambda s: T.xavier_normal(s.fan_in, s.fan_out, _g(s)))
def _xavier_normal(w, p, ctx):
    nn.init.xavier_normal_(w, gain=_g(ctx), generator=ctx.generator)


@register("kaiming_uniform", "U(-a, a), a = gain*sqrt(3/fan_in), gain sqrt(2) for ReLU (He et al., 2015)",
          takes_gain=True, targets=lambda s: T.fan_in_uniform(s.fan_in, _g(s, RELU_GAIN)))
def _kaiming_uniform(w, p, ctx):
    if ctx.gain is None:
        nn.init.kaiming_uniform_(w, nonlinearity="relu", generator=ctx.generator)
    else:
        kaiming_uniform_gain_(w, ctx.gain, generator=ctx.generator)


@register("kaiming_normal", "N(0, gain^2/fan_in), gain sqrt(2) for ReLU (He et al., 2015)", takes_gain=True,
          targets=lambda s: T.fan_in_normal(s.fan_in, _g(s, RELU_GAIN)))
def _kaiming_normal(w, p, ctx):
    if ctx.gain is None:
        nn.init.kaiming_normal_(w, nonlinearity="relu", generator=ctx.generator)
    else:
        kaiming_normal_gain_(w, ctx.gain, generator=ctx.generator)


@register("lecun_normal", "N(0, gain^2/fan_in) (LeCun et al., 1998); the init SELU assumes", takes_gain=True,
          targets=lambda s: T.fan_in_normal(s.fan_in, _g(s)))
def _lecun_normal(w, p, ctx):
    lecun_normal_(w, gain=_g(ctx), generator=ctx.generator)


@register("orthogonal", "a (semi-)orthogonal matrix times gain (Saxe et al., 2014)", takes_gain=True,
          targets=lambda s: T.orthogonal(_g(s), s.fan_in, s.fan_out))
def _orthogonal(w, p, ctx):
    if w.is_contiguous():
        nn.init.orthogonal_(w, gain=_g(ctx), generator=ctx.generator)
    else:  # an Embedding's transposed view: draw in its shape, copy in
        w.copy_(nn.init.orthogonal_(torch.empty(w.shape), gain=_g(ctx), generator=ctx.generator))


@register("small_normal", "N(0, 0.02^2) everywhere (GPT-2's base std)", targets=lambda s: T.normal(0.02))
def _small_normal(w, p, ctx):
    nn.init.normal_(w, 0.0, 0.02, generator=ctx.generator)


@register("normal", "N(0, STD^2) everywhere; normal:0.01 is the notebook's too small, normal:1.0 too large",
          options={"std": None}, targets=lambda s: T.normal(s.options["std"]))
def _normal(w, p, ctx):
    nn.init.normal_(w, 0.0, ctx.options["std"], generator=ctx.generator)


def _torch_default(module: nn.Module) -> None:
    reset = getattr(module, "reset_parameters", None) or getattr(module, "_reset_parameters", None)
    if reset is not None:
        reset()


def _torch_default_targets(s: Site) -> Target:
    """What initcore's modules and torch's own do for each role, read from torch's per-module defaults
    (``targets.module_default``, the audit's table too): a matrix or a bias is nn.Linear's, an embedding
    nn.Embedding's, a packed qkv nn.MultiheadAttention's in_proj, a norm weight a LayerNorm's; gates 0."""
    if s.role == "embedding":
        return T.module_default("Embedding", "weight", (s.fan_in, s.fan_out), s.fan_in)
    if s.role == "qkv" and s.chunks > 1:
        return T.module_default("MultiheadAttention", "in_proj_weight", (s.fan_out * s.chunks, s.fan_in), s.fan_in)
    if s.role == "norm":
        return T.module_default("LayerNorm", "weight", (s.fan_in,), s.fan_in)
    if s.role == "gate":
        return T.DEFAULT_TARGETS["gate"]
    attr = "bias" if s.role == "bias" else "weight"  # a bias's site gives its Linear's fan_in
    return T.module_default("Linear", attr, (s.fan_out, s.fan_in), s.fan_in)


@register("torch_default", "what the modules do by themselves (their reset_parameters)", targets=_torch_default_targets)
def _torch_default_rule(w, p, ctx):  # never called per matrix: apply() hands the model to apply_torch_default
    raise AssertionError("torch_default is applied module by module")


def apply_torch_default(model: nn.Module, generator: torch.Generator | None = None) -> nn.Module:
    """Re-run every module's own ``reset_parameters``, children before parents, as construction does."""
    seed = None if generator is None else int(torch.randint(0, 2**62, (1,), generator=generator))
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        if seed is not None:
            torch.manual_seed(seed)
        for module in full_modules(reversed(list(model.modules()))):
            _torch_default(module)
    return model


def _standard_weights(w, p, ctx, embedding_std: float):
    if p.role == "embedding":
        nn.init.normal_(w, 0.0, embedding_std, generator=ctx.generator)
    else:
        nn.init.xavier_uniform_(w, gain=_g(ctx), generator=ctx.generator)


def _standard_targets(s: Site) -> Target:
    return T.normal(0.1) if s.role == "embedding" else T.xavier_uniform(s.fan_in, s.fan_out, _g(s))


@register("standard", "the notebook's transformer baseline: Xavier uniform weights, embedding N(0, 0.1^2)",
          takes_gain=True, targets=_standard_targets)
def _standard(w, p, ctx):
    _standard_weights(w, p, ctx, embedding_std=0.1)


@register("scaled", "standard, then residual output projections (attn_out, mlp_out) times residual_scale",
          options={"residual_scale": 0.5}, takes_gain=True, apart=RESIDUAL_OUT,
          targets=lambda s: _standard_targets(s).times(s.options["residual_scale"] if s.role in RESIDUAL_OUT else 1))
def _scaled(w, p, ctx):
    _standard_weights(w, p, ctx, embedding_std=0.1)
    if p.role in RESIDUAL_OUT:
        w.mul_(ctx.options["residual_scale"])  # really scaled: the notebook's version never was


@register("small_init", "the notebook's small init: N(0, 0.02^2) for every weight, embedding included",
          targets=lambda s: T.normal(0.02))
def _small_init(w, p, ctx):
    nn.init.normal_(w, 0.0, 0.02, generator=ctx.generator)


# --- modern transformer strategies (issue 7) ------------------------------------------------------
# Each cites where its numbers come from. L is ctx.n_layers (residual blocks), l = p.block (0-based),
# d = d_model, d_ff the feed-forward width. On an MLP (roles hidden, head) the input rule applies with
# d = fan_in; the strategies that need a transformer feature (deepnorm, rezero) refuse an MLP.


def _normal(w: torch.Tensor, std: float, ctx: Context) -> None:
    nn.init.normal_(w, 0.0, std, generator=ctx.generator)


def _positive_option(ctx: Context, name: str) -> float:
    value = ctx.options[name]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (value > 0 and math.isfinite(value)):
        raise ValueError(f"option {name} must be a positive finite number, got {value!r}")
    return float(value)


@register("gpt2", "N(0, 0.02^2); attn_out, mlp_out N(0, (0.02/sqrt(2L))^2) (Radford et al., 2019; nanoGPT's c_proj)",
          apart=RESIDUAL_OUT,
          targets=lambda s: T.normal(0.02 / math.sqrt(2 * s.n_layers) if s.role in RESIDUAL_OUT else 0.02))
def _gpt2(w, p, ctx):
    r"""GPT-2 (Radford et al., 2019, "Language Models are Unsupervised Multitask Learners", §2.3; nanoGPT).

    .. math:: \sigma = 0.02, \qquad \sigma_{\text{attn\_out, mlp\_out}} = 0.02/\sqrt{2L}

    Every weight (the embedding included) is N(0, 0.02²); the two projections per block that write
    into the residual stream are scaled by 1/√(2L), for the 2L residual additions.
    """
    std = 0.02 / math.sqrt(2 * ctx.n_layers) if p.role in RESIDUAL_OUT else 0.02
    _normal(w, std, ctx)


@register("megatron", "N(0, sigma^2); attn_out, mlp_out N(0, (sigma/sqrt(2L))^2) (Shoeybi et al., 2019, Megatron-LM)",
          options={"sigma": 0.02}, apart=RESIDUAL_OUT,
          targets=lambda s: T.normal(s.options["sigma"] / (math.sqrt(2 * s.n_layers) if s.role in RESIDUAL_OUT else 1)))
def _megatron(w, p, ctx):
    r"""Megatron-LM (Shoeybi et al., 2019): ``init_method_normal(sigma)`` and ``scaled_init_method_normal``.

    .. math:: \sigma_{\text{in}} = \sigma, \qquad \sigma_{\text{attn\_out, mlp\_out}} = \sigma/\sqrt{2L}

    ``sigma`` (option, default 0.02, Megatron's ``init_method_std``) for the embedding and every input
    projection.
    """
    sigma = _positive_option(ctx, "sigma")
    _normal(w, sigma / math.sqrt(2 * ctx.n_layers) if p.role in RESIDUAL_OUT else sigma, ctx)


def _olmo_mitchell_targets(s: Site) -> Target:
    if s.role == "embedding":
        return T.trunc_normal(1 / math.sqrt(s.fan_out))
    if s.role in RESIDUAL_OUT:
        return T.trunc_normal(1 / math.sqrt(2 * s.fan_in * (s.block + 1)))
    return T.trunc_normal(1 / math.sqrt(s.fan_in))


@register("olmo_mitchell", "trunc N(0, 1/d) at 3 sigma; attn_out 1/sqrt(2d(l+1)), mlp_out 1/sqrt(2 d_ff (l+1)) "
          "(OLMo's init_fn=mitchell, Groeneveld et al., 2024)", apart=RESIDUAL_OUT, targets=_olmo_mitchell_targets)
def _olmo_mitchell(w, p, ctx):
    r"""OLMo's ``mitchell`` init (Groeneveld et al., 2024, ``olmo/initialization.py``): normals truncated at ±3σ.

    .. math::
        \sigma_{\text{embedding, qkv, mlp\_in}} = 1/\sqrt{d}, \quad
        \sigma_{\text{attn\_out}} = 1/\sqrt{2 d (l+1)}, \quad
        \sigma_{\text{mlp\_out}} = 1/\sqrt{2 d_{ff} (l+1)}

    for block l (0-based). Every std is 1/√(the layer's input width), the output projections further
    divided by √(2(l+1)): a layer-dependent, not L-dependent, residual scaling. The truncation is in
    units of σ (``trunc_normal_sigma_``), as OLMo's ``trunc_normal_(a=-3σ, b=3σ)``.
    """
    fan_out, fan_in = w.shape
    if p.role == "embedding":
        std = 1 / math.sqrt(fan_out)  # fan_out of the lookup is d_model
    elif p.role in RESIDUAL_OUT:
        std = 1 / math.sqrt(2 * fan_in * (p.block + 1))  # fan_in: d_model for attn_out, d_ff for mlp_out
    else:
        std = 1 / math.sqrt(fan_in)  # d_model for qkv and mlp_in
    trunc_normal_sigma_(w, std, n_sigma=3.0, generator=ctx.generator)


@register("neox_small_init", "N(0, 2/(5d)) (small_init, Nguyen & Salazar, 2019); attn_out, mlp_out std 2/(L sqrt(d)) "
          "(wang_init, Mesh-Transformer-JAX); GPT-NeoX's defaults", apart=RESIDUAL_OUT,
          targets=lambda s: T.normal(2 / (s.n_layers * math.sqrt(s.d_model or s.fan_in)) if s.role in RESIDUAL_OUT
                                     else math.sqrt(2 / (5 * (s.d_model or s.fan_in)))))
def _neox_small_init(w, p, ctx):
    r"""GPT-NeoX (Black et al., 2022): ``init_method="small_init"``, ``output_layer_init_method="wang_init"``.

    .. math:: \sigma_{\text{in}} = \sqrt{2/(5d)}, \qquad \sigma_{\text{attn\_out, mlp\_out}} = \frac{2}{L\sqrt{d}}

    small_init is Nguyen & Salazar (2019, "Transformers without Tears"); wang_init is Ben Wang's
    Mesh-Transformer-JAX (GPT-J). Both take d = d_model (the hidden size) for every matrix, mlp_out
    included, and 2/(L√d) is the std itself (so the variance is 4/(L²d)). On an MLP, d = fan_in.
    """
    d = ctx.d_model or w.shape[1]
    _normal(w, 2 / (ctx.n_layers * math.sqrt(d)) if p.role in RESIDUAL_OUT else math.sqrt(2 / (5 * d)), ctx)


def _transformer_config(name: str, cfg, *needed: str):
    if not (is_dataclass(cfg) and {"n_layers", *needed} <= {f.name for f in fields(cfg)}):
        raise ValueError(f"strategy {name!r} needs a transformer (a TransformerConfig with {', '.join(needed)}); "
                         f"got {type(cfg).__name__}")
    return cfg


def deepnorm_alpha(n_layers: int) -> float:
    """DeepNorm's residual multiplier for a decoder-only stack of ``n_layers`` blocks: (2L)^(1/4)."""
    return (2 * n_layers) ** 0.25


def deepnorm_beta(n_layers: int) -> float:
    """DeepNorm's init gain for v, attention out and the feed-forward weights: (8L)^(-1/4)."""
    return (8 * n_layers) ** -0.25


def deepnorm_config(cfg):
    """``cfg`` with what DeepNorm needs of the model: post-norm and residual_alpha = (2L)^(1/4)."""
    cfg = _transformer_config("deepnorm", cfg, "norm_position", "residual_alpha")
    return replace(cfg, norm_position="post", residual_alpha=deepnorm_alpha(cfg.n_layers))


def _deepnorm_qkv(param, p, ctx):
    beta = deepnorm_beta(ctx.n_layers)
    if len(p.parts) != p.chunks:
        raise ValueError(f"deepnorm needs the q, k, v projections named: declare {p.name!r} as "
                         f"('qkv', ('q', 'k', 'v')) or ('qkv', ('v',)) in its module's ROLES")
    for part, w in zip(p.parts, p.matrices(), strict=True):  # the packed in_proj is (q, k, v)
        nn.init.xavier_normal_(w, gain=beta if part == "v" else 1.0, generator=ctx.generator)


def _deepnorm_targets(s: Site) -> Target:
    scaled = s.role in ("attn_out", "mlp_in", "mlp_out") or (s.role == "qkv" and s.part == "v")
    return T.xavier_normal(s.fan_in, s.fan_out, deepnorm_beta(s.n_layers) if scaled else 1.0)


@register("deepnorm", "post-norm, residual x*(2L)^(1/4) + f(x); Xavier normal gain (8L)^(-1/4) on v, attn_out, "
          "mlp_in, mlp_out, gain 1 on q, k (Wang et al., 2022, DeepNet, decoder-only)",
          special={"qkv": _deepnorm_qkv}, config=deepnorm_config, apart=("qkv", *RESIDUAL_OUT, "mlp_in"),
          targets=_deepnorm_targets)
def _deepnorm(w, p, ctx):
    r"""DeepNorm (Wang et al., 2022, "DeepNet: Scaling Transformers to 1,000 Layers", Fig. 2), decoder-only form.

    .. math:: x_{l+1} = \mathrm{LN}(\alpha x_l + f(x_l)), \quad \alpha = (2L)^{1/4}, \quad \beta = (8L)^{-1/4}

    Xavier normal with gain β on v, the attention output and both feed-forward matrices; gain 1 on q,
    k and every other matrix (the embedding, fan_in = vocab). α is the model's ``residual_alpha``,
    which no init can set: ``apply`` refuses a model not built from ``deepnorm_config(cfg)`` (also
    ``config_for("deepnorm", cfg)``), naming the fields to change.
    """
    gain = deepnorm_beta(ctx.n_layers) if p.role in ("attn_out", "mlp_in", "mlp_out") else 1.0
    nn.init.xavier_normal_(w, gain=gain, generator=ctx.generator)


@register("fixup", "Fixup-style: attn_out, mlp_out zero so every block starts as the identity (pre-norm); "
          "other matrices Xavier normal, embedding N(0, 1) (Zhang et al., 2019)", apart=RESIDUAL_OUT,
          targets=lambda s: T.constant(0.0) if s.role in RESIDUAL_OUT else T.normal(1.0) if s.role == "embedding"
          else T.xavier_normal(s.fan_in, s.fan_out))
def _fixup(w, p, ctx):
    r"""Fixup-style zero init of each residual branch's last layer (Zhang et al., 2019, "Fixup Initialization").

    .. math:: W_{\text{attn\_out}} = W_{\text{mlp\_out}} = 0

    With zero biases a pre-norm block x + f(norm(x)) then returns x exactly; post-norm blocks return
    norm(x). Other matrices are Xavier normal, the embedding N(0, 1) (``nn.Embedding``'s own, so the
    stream starts at unit scale). Fixup's L^(-1/(2m-2)) rescaling of the inner branch layers is left
    out: with the branch outputs at zero it changes no forward statistic at init, only gradients.
    """
    if p.role in RESIDUAL_OUT:
        nn.init.zeros_(w)
    elif p.role == "embedding":
        _normal(w, 1.0, ctx)
    else:
        nn.init.xavier_normal_(w, generator=ctx.generator)


def rezero_config(cfg):
    """``cfg`` with ReZero's residual gates: rezero=True (each branch times a scalar that starts at 0)."""
    return replace(_transformer_config("rezero", cfg, "rezero"), rezero=True)


@register("rezero", "gated residual x + g*f(x), g = 0 (model option rezero=True); Xavier uniform matrices, "
          "embedding N(0, 1) (Bachlechner et al., 2020)", config=rezero_config,
          targets=lambda s: T.normal(1.0) if s.role == "embedding" else T.xavier_uniform(s.fan_in, s.fan_out))
def _rezero(w, p, ctx):
    r"""ReZero (Bachlechner et al., 2020, "ReZero is All You Need"): every block starts as the identity.

    .. math:: x_{l+1} = x_l + g_l f(x_l), \qquad g_l = 0

    The gates are the model's (``TransformerConfig(rezero=True)``, role ``gate``, filled with 0 by the
    registry's default). A model without gates is refused (``rezero_config(cfg)`` builds one), since
    this init alone would then be plain Xavier. Matrices are Xavier uniform, as ``nn.Transformer``'s
    ``_reset_parameters`` that the ReZero code builds on, the embedding N(0, 1), ``nn.Embedding``'s
    own. The paper drops LayerNorm; this model keeps it, so identity holds for pre-norm blocks.
    """
    if p.role == "embedding":
        _normal(w, 1.0, ctx)
    else:
        nn.init.xavier_uniform_(w, generator=ctx.generator)


# --- the notebook's InitializationUtils strategies (its SimpleTransformer health report) ------------------


def _packed_xavier_uniform(w, p, ctx):
    # torch's MultiheadAttention._reset_parameters: xavier_uniform_ over the whole packed (3E, E) in_proj,
    # drawn here one (E, E) chunk at a time with the packed fans: the same distribution.
    fan_in, fan_out = w.shape[1], w.shape[0] * p.chunks
    bound = math.sqrt(6.0 / (fan_in + fan_out))  # Var = 2/(fan_in + fan_out) = 2/(E + 3E) = 1/(2E)
    nn.init.uniform_(w, -bound, bound, generator=ctx.generator)


def _notebook_targets(s: Site, matrices: Target) -> Target:
    if s.role == "embedding":
        return T.normal(0.02)
    if s.role == "qkv" and s.chunks > 1:
        return T.xavier_uniform(s.fan_in, s.fan_out * s.chunks)  # the packed fans
    return matrices


@register("notebook_xavier", "the notebook's InitializationUtils 'Standard Xavier': Xavier uniform matrices, "
          "embedding N(0, 0.02^2), a packed in_proj left to torch's packed Xavier",
          targets=lambda s: _notebook_targets(s, T.xavier_uniform(s.fan_in, s.fan_out)))
def _notebook_xavier(w, p, ctx):
    r"""The reference notebook's ``init_transformer_weights(model, "xavier_uniform")``, by role.

    .. math:: W \sim U(-a, a), \quad a = \sqrt{6/(\text{fan\_in} + \text{fan\_out})}; \qquad E \sim N(0, 0.02^2)

    How the notebook's own version differs: it walks ``nn.Linear`` modules, so it never touches
    ``nn.MultiheadAttention``'s packed ``in_proj_weight``, which keeps torch's Xavier over the packed
    (3E, E) matrix, Var = 1/(2E), half of Xavier's 1/E for a separate (E, E) projection. This rule
    gives a packed qkv (chunks > 1) exactly that, so the notebook's model comes out as the notebook
    left it; separate q, k, v projections are ``nn.Linear`` and get Xavier, as the notebook's loop would.
    """
    if p.role == "embedding":
        nn.init.normal_(w, 0.0, 0.02, generator=ctx.generator)
    elif p.role == "qkv" and p.chunks > 1:
        _packed_xavier_uniform(w, p, ctx)
    else:
        nn.init.xavier_uniform_(w, generator=ctx.generator)


@register("notebook_he_residual", "the notebook's InitializationUtils 'He + residual scaling': He uniform (relu) "
          "matrices, attn_out and mlp_out N(0, 0.02^2)*0.5, embedding N(0, 0.02^2), a packed in_proj left to "
          "torch's packed Xavier", apart=RESIDUAL_OUT,
          targets=lambda s: _notebook_targets(s, T.normal(0.01) if s.role in RESIDUAL_OUT
                                              else T.fan_in_uniform(s.fan_in, RELU_GAIN)))
def _notebook_he_residual(w, p, ctx):
    r"""The reference notebook's ``init_transformer_weights(model, "kaiming_uniform", ["ff2", "attention"],
    residual_scaling=True)``, by role.

    .. math:: W \sim U(-a, a),\ a = \sqrt{6/\text{fan\_in}}; \qquad W_{\text{attn\_out}}, W_{\text{mlp\_out}}
        \sim 0.5 \cdot N(0, 0.02^2); \qquad E \sim N(0, 0.02^2)

    The notebook matched the substrings "ff2" and "attention" in module names: that hit the feed-forward
    output and the attention's ``out_proj`` (the roles mlp_out and attn_out here). How it differs: it
    walks ``nn.Linear`` modules, so ``nn.MultiheadAttention``'s packed ``in_proj_weight`` keeps torch's
    Xavier over the packed (3E, E) matrix (Var = 1/(2E)), not He; this rule gives a packed qkv exactly
    that. Separate q, k, v projections (``nn.Linear``) get He.
    """
    if p.role == "embedding":
        nn.init.normal_(w, 0.0, 0.02, generator=ctx.generator)
    elif p.role == "qkv" and p.chunks > 1:
        _packed_xavier_uniform(w, p, ctx)
    elif p.role in RESIDUAL_OUT:
        nn.init.normal_(w, 0.0, 0.02, generator=ctx.generator)
        w.mul_(0.5)  # the notebook's residual_scaling: std 0.02 * 0.5 = 0.01
    else:
        nn.init.kaiming_uniform_(w, nonlinearity="relu", generator=ctx.generator)  # Var = 2/fan_in
