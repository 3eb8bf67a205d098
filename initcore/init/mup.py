r"""muP, the Maximal Update Parametrization, as an init strategy (``"mup"``) and as the optimizer's parameter
groups (``param_groups``): the two halves that make a model's activations move by the same amount per
step at every width, so that hyperparameters tuned at a small (base) width transfer to a large one.

The formulation is Table 3 of Yang et al. (2021), "Tensor Programs V: Tuning Large Neural Networks via
Zero-Shot Hyperparameter Transfer", which needs no multiplier in the forward pass: with m_in, m_out the
width multipliers (width / base_width) of a matrix's fan-in and fan-out (1 for a dimension that does not
grow with width: an MLP's input, a vocabulary, the readout's outputs),

==============================  ===========================  ==================  ==================
weights                         init                         Adam lr             SGD lr
==============================  ===========================  ==================  ==================
input (finite fan-in)           N(0, gain²/fan_in)           lr                  lr · m_out
hidden (both dims grow)         N(0, gain²/fan_in)           lr / m_in           lr · m_out / m_in
output, role ``head``           N(0, gain² base/fan_in²)     lr / m_in           lr / m_in
biases, norm weights            0, 1                         lr                  lr · m (their size's)
embedding (fan-in = vocab)      N(0, 1)                      lr                  lr · m_out
==============================  ===========================  ==================  ==================

and attention logits q·k / d_head instead of q·k / sqrt(d_head) (a model option,
``TransformerConfig(attn_scale="1/d_head")``, which ``apply`` demands of an sdpa transformer). The mup
package (``MuReadout``, ``set_base_shapes``, ``MuAdam``, ``MuSGD``) implements Table 8 of the same paper
instead, a readout with a 1/m forward multiplier, init variance constant in width and lr · m under SGD;
the two are the same network trained the same way (tests/init/test_mup.py checks it step by step).

Which dimensions grow is read, as the mup package reads it, from a base model: the same model family
built at ``base_width`` (MLP ``width``; transformer ``d_model``, with ``d_ff`` in proportion and the
same ``n_heads``, so d_head grows), on the meta device; a dimension that differs from the base one grows.
A ``head``'s fan-out never does: it is the readout, whatever its size (an MLP's head is width x width;
a task that reads a few of its outputs, as the coordinate check does, makes it a readout).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterator, Mapping
from dataclasses import fields, is_dataclass, replace

import torch
from torch import nn

from initcore.init import targets
from initcore.init.strategies import Context, get, register
from initcore.models.roles import RoledParam, param_roles

OPTIMIZERS = ("adam", "adamw", "sgd")  # Adam-like (entrywise-normalized updates) or SGD-like
READOUTS = ("scaled", "zero")  # the head's init: N(0, gain² base/fan_in²), or 0 (mup's readout_zero_init)
QUERIES = ("scaled", "zero")  # the query projection's init: as every hidden matrix, or 0 (mup's query_zero_init)
ATTN_SCALE = "1/d_head"


def mup_config(cfg):
    """The model config muP needs: ``attn_scale="1/d_head"`` for a transformer with separate q, k, v.

    An MLP needs nothing. ``nn.MultiheadAttention`` (``attention="torch_mha"``) fixes its logits at
    1/sqrt(d_head), so such a model is taken as it is: muP then holds only while d_head stays fixed as
    the width grows (more heads, not wider ones). The coordinate check shows the difference.
    """
    names = {f.name for f in fields(cfg)} if is_dataclass(cfg) else set()
    if {"attn_scale", "attention"} <= names and cfg.attention == "sdpa":
        return replace(cfg, attn_scale=ATTN_SCALE)
    return cfg


def _base_width(ctx: Context, fan_in: int) -> int:
    base = ctx.options["base_width"]
    if base is None:
        return fan_in  # mup's set_base_shapes(model, None): the model is its own base
    if isinstance(base, bool) or not isinstance(base, int) or base <= 0:
        raise ValueError(f"option base_width must be a positive integer (the width tuned at), got {base!r}")
    return base


def _choice_option(ctx: Context, name: str, valid: tuple[str, ...]) -> str:
    value = ctx.options[name]
    if value not in valid:
        raise ValueError(f"option {name} must be one of {', '.join(valid)}, got {value!r}")
    return value


def _check_options(ctx: Context) -> None:
    """Every option checked on every model, so that a bad one fails whatever roles the model has."""
    _base_width(ctx, 1)
    _choice_option(ctx, "readout", READOUTS)
    _choice_option(ctx, "query", QUERIES)


def _mup_qkv(param: torch.Tensor, p: RoledParam, ctx: Context) -> None:
    """q, k, v as hidden matrices, except q at 0 under ``query="zero"`` (whose projections are named)."""
    zero_q = _choice_option(ctx, "query", QUERIES) == "zero"
    if zero_q and len(p.parts) != p.chunks:
        raise ValueError(f"query='zero' needs the q, k, v projections named: declare {p.name!r} as "
                         f"('qkv', ('q', 'k', 'v')) or ('qkv', ('q',)) in its module's ROLES")
    for part, w in zip(p.parts or ("",) * p.chunks, p.matrices(), strict=True):
        if zero_q and part == "q":
            nn.init.zeros_(w)
        else:
            _mup(w, p, ctx)


def _mup_targets(s: targets.Site) -> targets.Target:
    """What ``_mup`` and ``_mup_qkv`` draw (Table 3): the embedding N(0, 1), the head N(0, g² b/fan_in²) or 0,
    q 0 under ``query="zero"``, every other matrix N(0, g²/fan_in)."""
    gain = 1.0 if s.gain is None else s.gain
    if s.role == "embedding":
        return targets.normal(1.0)
    if s.role == "head":
        if s.options["readout"] == "zero":
            return targets.constant(0.0)
        return targets.normal(gain * math.sqrt(_base_width(s, s.fan_in)) / s.fan_in)
    if s.role == "qkv" and s.part == "q" and s.options["query"] == "zero":
        return targets.constant(0.0)
    return targets.normal(gain / math.sqrt(s.fan_in))


@register("mup", "muP (Yang et al., 2021, Table 3): N(0, gain^2/fan_in), head N(0, gain^2*base/fan_in^2) or 0, "
          "embedding N(0, 1), attention logits 1/d_head; train with init.param_groups(model, 'mup', lr=..., "
          "base_width=...)", options={"base_width": None, "readout": "scaled", "query": "scaled"}, takes_gain=True,
          special={"qkv": _mup_qkv}, config=mup_config, targets=_mup_targets)
def _mup(w: torch.Tensor, p: RoledParam, ctx: Context) -> None:
    r"""muP's init, Table 3 of Yang et al. (2021), by role.

    .. math::
        W_{\text{hidden, input}} \sim N(0, g^2/\text{fan\_in}), \quad
        W_{\text{head}} \sim N(0, g^2\, b/\text{fan\_in}^2), \quad E \sim N(0, 1)

    g is the gain (1 unless given), b = ``base_width`` (default: the head's own fan-in, so that at the
    base width the head is N(0, g²/fan_in) as every other layer). The head's std falls as 1/width
    beyond it, so that the readout of O(1) coordinates starts at O(1/sqrt(width)) and moves by O(1)
    per step. ``readout="zero"`` starts the head at 0 instead, ``query="zero"`` the query projection
    (both recommended by the mup package's README, "Coord Check": they remove the output's and the
    logits' O(1/sqrt(width)) start, which a coordinate check at small widths otherwise shows as a
    slope). Biases 0, norm weights 1 (the registry's).
    """
    _check_options(ctx)
    fan_out, fan_in = w.shape
    gain = 1.0 if ctx.gain is None else ctx.gain
    if p.role == "embedding":
        nn.init.normal_(w, 0.0, 1.0, generator=ctx.generator)  # nn.Embedding's own; its fan-in is no width
    elif p.role == "head":
        readout = _choice_option(ctx, "readout", READOUTS)
        base = _base_width(ctx, fan_in)
        if readout == "zero":
            nn.init.zeros_(w)
        else:
            nn.init.normal_(w, 0.0, gain * math.sqrt(base) / fan_in, generator=ctx.generator)
    else:
        nn.init.normal_(w, 0.0, gain / math.sqrt(fan_in), generator=ctx.generator)


# --- the optimizer's side ------------------------------------------------------------------------------------


def base_config(cfg, base_width: int):
    """``cfg`` at width ``base_width``: an MLP's ``width``; a transformer's ``d_model``, with ``d_ff`` in
    proportion and ``n_heads`` kept (d_head grows with width, the case 1/d_head attention is for).

    Raises:
        ValueError: a config of another kind, or a base width the transformer cannot be built at.
    """
    if isinstance(base_width, bool) or not isinstance(base_width, int) or base_width <= 0:
        raise ValueError(f"base_width must be a positive integer (the width tuned at), got {base_width!r}")
    names = {f.name for f in fields(cfg)} if is_dataclass(cfg) else set()
    if "width" in names:
        return replace(cfg, width=base_width)
    if {"d_model", "d_ff", "n_heads"} <= names:
        d_ff = cfg.d_ff * base_width / cfg.d_model
        if d_ff != int(d_ff) or base_width % cfg.n_heads:
            raise ValueError(f"base_width {base_width}: a transformer of d_model {cfg.d_model}, d_ff {cfg.d_ff}, "
                             f"{cfg.n_heads} heads needs a base width divisible by {cfg.n_heads} that keeps "
                             f"d_ff / d_model = {cfg.d_ff / cfg.d_model:g} whole")
        return replace(cfg, d_model=base_width, d_ff=int(d_ff))
    raise ValueError(f"muP's base shapes need a model with a config of width (MLP) or d_model, d_ff, n_heads "
                     f"(Transformer); got {type(cfg).__name__}")


@functools.lru_cache(maxsize=64)
def _shapes(family: type, cfg) -> dict[str, tuple[int, ...]]:
    """Parameter name -> shape of ``family`` built from ``cfg``, on the meta device (no memory, no init)."""
    with torch.device("meta"):
        model = family.from_config(cfg)
    return {name: tuple(p.shape) for name, p in model.named_parameters()}


def width_multipliers(model: nn.Module, base_width: int | None,
                      base_shapes: dict[str, tuple[int, ...]] | None = None,
                      roles: Mapping | None = None) -> dict[str, tuple[float, ...]]:
    """Per parameter name, the width multiplier of each of its dimensions: (m_in, m_out) for a matrix (its
    fan-in and fan-out, an embedding's transposed), (m,) for a vector, () for a scalar; 1 where a
    dimension does not grow. ``base_width=None``: the model is its own base (every multiplier 1).
    ``base_shapes``: parameter name -> shape of the model at its base width, for a model without an
    initcore config (one built by a factory of width, as the coordinate check's ``--model`` is);
    ``roles``: as ``init.apply`` takes them, for parameters no module declares (which way a weight is stored).
    """
    roles = param_roles(model, roles)
    if base_width is None and base_shapes is None:
        return {p.name: (1.0,) * min(p.param.dim(), 2) for p in roles}
    if base_shapes is None:
        base_shapes = _shapes(type(model), base_config(getattr(model, "config", None), base_width))
    heads = {p.name.removesuffix("weight") for p in roles if p.role == "head"}
    out = {}
    for p in roles:
        shape, base_shape = tuple(p.param.shape), base_shapes[p.name]
        mults = [d / b for d, b in zip(shape, base_shape, strict=True)]
        if p.role == "head":
            mults[0] = 1.0  # the readout's outputs: no width
        if p.param.dim() == 1 and p.name.removesuffix("bias") in heads:
            mults[0] = 1.0  # the head's bias: the size of its outputs
        if p.param.dim() == 2:
            m_out, m_in = mults  # torch stores (fan_out, fan_in); an embedding (fan_in, fan_out)
            mults = [m_out, m_in] if p.transposed else [m_in, m_out]
        out[p.name] = tuple(mults)
    return out


def lr_multipliers(model: nn.Module, optimizer: str = "adam", base_width: int | None = None,
                   base_shapes: dict[str, tuple[int, ...]] | None = None, roles: Mapping | None = None
                   ) -> dict[str, float]:
    """Per parameter name, the factor muP puts on the learning rate (see the module's table).

    Adam-like optimizers normalize each entry's update, so only a matrix with a growing fan-in slows
    down (its update adds up fan-in coherent terms): lr / m_in. Under SGD the gradient itself carries
    the width: lr · m_out / m_in for a matrix, lr · m for a vector of growing size. ``base_shapes``,
    ``roles``: as ``width_multipliers``.
    """
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {optimizer!r}; valid: {', '.join(OPTIMIZERS)}")
    out = {}
    for name, mults in width_multipliers(model, base_width, base_shapes, roles).items():
        if len(mults) == 2:
            m_in, m_out = mults
            out[name] = 1 / m_in if optimizer != "sgd" else m_out / m_in
        elif len(mults) == 1 and optimizer == "sgd":
            out[name] = mults[0]
        else:
            out[name] = 1.0
    return out


def param_groups(model: nn.Module, name: str, *, lr: float, optimizer: str = "adam",
                 base_width: int | None = None, base_shapes: dict[str, tuple[int, ...]] | None = None,
                 roles: Mapping | None = None) -> list[dict]:
    """Parameter groups for ``torch.optim`` under strategy ``name``: one group per learning rate.

    Every strategy but ``"mup"`` is the standard parametrization: one group, ``lr`` for every parameter.
    Under ``"mup"`` each parameter gets ``lr`` times ``lr_multipliers`` (``optimizer`` is ``"adam"``,
    ``"adamw"`` or ``"sgd"``); ``base_width`` must be the one given to ``init.apply`` (None: the model's
    own width, where muP and the standard parametrization train alike), or ``base_shapes`` those of a
    model without an initcore config at its base width, with ``roles`` as ``init.apply`` took them (see
    ``width_multipliers``). Weight decay is left to the
    optimizer (under AdamW muP would keep lr x weight_decay fixed per group).

    Raises:
        ValueError: unknown strategy or optimizer, lr not a positive number, a base width the model
            cannot be built at.

    >>> from initcore.models import MLP
    >>> groups = param_groups(MLP(8, 64, 3), "mup", lr=0.01, base_width=16)
    >>> sorted(round(g["lr"], 6) for g in groups)  # hidden and head / 4, input layer and biases as given
    [0.0025, 0.01]
    >>> opt = torch.optim.Adam(groups)
    """
    strategy, _ = get(name)
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not (lr > 0 and math.isfinite(lr)):
        raise ValueError(f"lr must be a positive number, got {lr!r}")
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {optimizer!r}; valid: {', '.join(OPTIMIZERS)}")
    params = dict(_trainable(model))
    if strategy.name != "mup":
        return [{"params": list(params.values()), "lr": lr}]
    groups: dict[float, list[nn.Parameter]] = {}
    for pname, mult in lr_multipliers(model, optimizer, base_width, base_shapes, roles).items():
        if pname in params:
            groups.setdefault(mult, []).append(params[pname])
    return [{"params": ps, "lr": lr * mult} for mult, ps in groups.items()]


def _trainable(model: nn.Module) -> Iterator[tuple[str, nn.Parameter]]:
    return ((n, p) for n, p in model.named_parameters() if p.requires_grad)
