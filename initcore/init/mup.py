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

A model initcore did not write gives its base as a model: ``apply(model, "mup", base=factory(width=b),
inputs=batch)`` and ``param_groups(model, "mup", lr=..., base=...)`` compare every parameter's shape with
the base's (``classify``), trace the readout through one forward on ``inputs``, and handle a tied embedding
as the paper does: the table keeps its embedding init and the readout's output is multiplied by sqrt(b)/d
(``install_tied_multiplier``). Hugging Face attention modules take 1/d_head from ``scale_attention``.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, fields, is_dataclass, replace

import torch
from torch import nn

from initcore.init import targets
from initcore.init.strategies import Context, get, register
from initcore.models import readout
from initcore.models.roles import RoledParam, param_roles, stores_transposed

OPTIMIZERS = ("adam", "adamw", "sgd")  # Adam-like (entrywise-normalized updates) or SGD-like
READOUTS = ("scaled", "zero")  # the head's init: N(0, gain² base/fan_in²), or 0 (mup's readout_zero_init)
QUERIES = ("scaled", "zero")  # the query projection's init: as every hidden matrix, or 0 (mup's query_zero_init)
ATTN_SCALE = "1/d_head"
KINDS = ("input", "hidden", "output", "vector", "finite")  # Table 3's classes, by which dimensions grow


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
          "base_width=...), or base=<the model at its base width> for a model of yours",
          options={"base_width": None, "readout": "scaled", "query": "scaled", "base": None, "inputs": None,
                   "delta": None},
          takes_gain=True, special={"qkv": _mup_qkv}, config=mup_config, targets=_mup_targets,
          prepare=lambda model, roles, options: prepare(model, roles, options))
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
                 roles: Mapping | None = None, base: nn.Module | Mapping | None = None, inputs=None,
                 delta: nn.Module | Mapping | None = None, weight_decay: float | None = None) -> list[dict]:
    """Parameter groups for ``torch.optim`` under strategy ``name``: one group per learning rate.

    Every strategy but ``"mup"`` is the standard parametrization: one group, ``lr`` for every parameter.
    Under ``"mup"`` each parameter gets ``lr`` times ``lr_multipliers`` (``optimizer`` is ``"adam"``,
    ``"adamw"`` or ``"sgd"``). Which dimensions grow comes from one of:

    - ``base``: the same model built at its base width (any model; see ``classify``, which ``inputs``
      lets trace the readout and ``delta`` tells what grows at the base width itself), as given to
      ``init.apply``;
    - ``base_width``: an initcore model's config width, as given to ``init.apply`` (None: the model's own
      width, where muP and the standard parametrization train alike);
    - ``base_shapes``: parameter name -> shape at the base width, with ``roles`` as ``init.apply`` took them.

    ``weight_decay``: each group's is ``weight_decay / multiplier``, so that lr x weight_decay, the decay
    per step of PyTorch's AdamW (and of coupled decay), is the same at every width (the mup package's
    ``MuAdam``/``MuSGD`` with ``decoupled_wd=False``); None leaves it to the optimizer's default.

    Raises:
        ValueError: unknown strategy or optimizer, lr or weight decay not a number >= 0 (lr > 0), a base
            width the model cannot be built at, a base model without one of the model's parameters.

    >>> from initcore.models import MLP
    >>> groups = param_groups(MLP(8, 64, 3), "mup", lr=0.01, base_width=16)
    >>> sorted(round(g["lr"], 6) for g in groups)  # hidden and head / 4, input layer and biases as given
    [0.0025, 0.01]
    >>> opt = torch.optim.Adam(groups)
    """
    strategy, _ = get(name)
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not (lr > 0 and math.isfinite(lr)):
        raise ValueError(f"lr must be a positive number, got {lr!r}")
    if weight_decay is not None and (isinstance(weight_decay, bool) or not isinstance(weight_decay, (int, float))
                                     or not (weight_decay >= 0 and math.isfinite(weight_decay))):
        raise ValueError(f"weight_decay must be a number >= 0 or None, got {weight_decay!r}")
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {optimizer!r}; valid: {', '.join(OPTIMIZERS)}")
    if base is not None and (base_width is not None or base_shapes is not None):
        raise ValueError("give one of base (the model at its base width), base_width or base_shapes")
    if base is None and (inputs is not None or delta is not None):
        raise ValueError("inputs and delta read the model against a base model: give base= too")
    params = dict(_trainable(model))
    decay = {} if weight_decay is None else {"weight_decay": weight_decay}
    if strategy.name != "mup":
        return [{"params": list(params.values()), "lr": lr, **decay}]
    if base is not None:
        mults = {c.name: class_lr_multiplier(c, optimizer)
                 for c in classify(model, base, inputs=inputs, roles=roles, delta=delta).values()}
    else:
        mults = lr_multipliers(model, optimizer, base_width, base_shapes, roles)
    groups: dict[float, list[nn.Parameter]] = {}
    for pname, mult in mults.items():
        if pname in params:
            groups.setdefault(mult, []).append(params[pname])
    return [{"params": ps, "lr": lr * mult, **({"weight_decay": weight_decay / mult} if decay else {})}
            for mult, ps in groups.items()]


def _trainable(model: nn.Module) -> Iterator[tuple[str, nn.Parameter]]:
    return ((n, p) for n, p in model.named_parameters() if p.requires_grad)


# --- a model of yours: which dimensions grow, read from the same model at its base width ------------------------


@dataclass(frozen=True)
class MupParam:
    """One parameter as muP sees it (Table 3): its class, its dimensions' width multipliers, its readout."""

    names: tuple[str, ...]  # every name it has (a tied weight has two)
    kind: str  # one of KINDS
    mults: tuple[float, ...]  # (m_in, m_out) of a matrix, (m,) of a vector, () of a scalar; 1: no growth
    fan_in: int | None = None  # a matrix's fan-in (receptive field included)
    base_fan_in: int | None = None  # the same at the base width
    readout: bool = False  # its matrix product gives the model's output (traced, or by shape without inputs)
    tied: bool = False  # an embedding table that is also the readout

    @property
    def name(self) -> str:
        return self.names[0]


def shapes_of(base: nn.Module | Mapping[str, tuple[int, ...]]) -> dict[str, tuple[int, ...]]:
    """Parameter name -> shape, of a model (any device, the meta device included) or as given."""
    if isinstance(base, nn.Module):
        return {n: tuple(p.shape) for n, p in base.named_parameters()}
    if isinstance(base, Mapping):
        return {n: tuple(s) for n, s in base.items()}
    raise ValueError(f"base must be the model built at its base width (an nn.Module, on the meta device if you "
                     f"like) or a mapping of parameter name -> shape; got {type(base).__name__}")


def classify(model: nn.Module, base: nn.Module | Mapping[str, tuple[int, ...]], *, inputs=None,
             roles: Mapping | None = None, delta: nn.Module | Mapping | None = None) -> dict[str, MupParam]:
    """Each parameter of ``model`` as muP sees it, by comparing its shape with ``base``'s (the same model at
    its base width), as the mup package's ``set_base_shapes`` does.

    A matrix is input (only its fan-out grows), hidden (both grow), output (only its fan-in grows) or finite;
    a vector is a vector (it grows) or finite; a module's declared ``head`` is output (initcore's MLP head
    is width x width, of which a task reads a few outputs). The readout, what produces the model's output,
    is found by tracing one forward on ``inputs`` (``initcore.models.readout.traced``): of wav2vec2's
    several output-shaped Linear layers (mup issue #4) it names the one the loss reads; all of them are
    output weights by Table 3. Without ``inputs`` the readouts are the output-shaped matrices. An
    embedding table that is also the readout (registered twice, or traced) is tied: Table 3 cannot give
    one tensor two inits, so muP keeps its embedding init and multiplies the readout's output by
    sqrt(b)/d (the paper's Table 8 form, as mup's ``MuSharedReadout``; see ``install_tied_multiplier``).

    ``delta``: the model at a third width, as ``set_base_shapes`` takes it: a dimension grows where base and
    delta differ. Without it a dimension grows where ``model`` and ``base`` differ, so at the base width
    itself nothing does; a traced readout is then output wherever its fan-out does not grow.

    Raises:
        ValueError: ``base`` or ``delta`` lacks a parameter, or a parameter's number of dimensions differs.
    """
    shapes = shapes_of(base)
    roled = {p.name: p for p in param_roles(model, roles, strict=False)}
    # a parameter no module or mapping gives a role: stored (fan_out, fan_in, ...), as torch's layers are,
    # but for Hugging Face's Conv1D (in, out)
    params = [roled.get(n) or RoledParam(n, "", p, inferred=True, transposed=stores_transposed(
        model.get_submodule(n.rpartition(".")[0]))) for n, p in model.named_parameters()]
    deltas = shapes_of(delta) if delta is not None else None
    for what, known in (("base", shapes), ("delta", deltas or shapes)):
        missing = [p.name for p in params if p.name not in known]
        if missing:
            raise ValueError(f"the {what} model has no parameter {', '.join(missing[:5])}"
                             f"{' ...' if len(missing) > 5 else ''}: build it with the same factory at its width")
    ties = readout.tied_names(model)
    traced = readout.traced(model, inputs) if inputs is not None else None
    weights = {p.name.removesuffix("weight") for p in params}
    out: dict[str, MupParam] = {}
    for p in params:
        shape, base_shape = tuple(p.param.shape), shapes[p.name]
        other = deltas[p.name] if deltas is not None else shape
        if not len(shape) == len(base_shape) == len(other):
            raise ValueError(f"{p.name} has shape {shape} here, {base_shape} in the base model and {other} in "
                             "the delta model")
        mults = [d / b for d, b in zip(shape, base_shape, strict=True)]
        grows = [d != b for d, b in zip(other, base_shape, strict=True)]
        names = ties.get(p.name, (p.name,))
        if p.param.dim() >= 2:
            (m_out, m_in), (g_out, g_in) = ((mults[1], mults[0]), (grows[1], grows[0])) if p.transposed else \
                ((mults[0], mults[1]), (grows[0], grows[1]))
            fan_in = p.fans()[0]
            is_readout = (p.name in traced) if traced is not None else (g_in and not g_out)
            tied = p.role == "embedding" and (len(names) > 1 or is_readout)
            if tied:
                kind, is_readout = "input", True
            elif (p.role == "head" and not p.inferred) or (not g_out and (g_in or is_readout)):
                kind, m_out = "output", 1.0  # a declared head's outputs are read, not grown (an MLP's)
            else:
                kind = {(False, True): "input", (True, True): "hidden"}.get((g_in, g_out), "finite")
            out[p.name] = MupParam(names, kind, (m_in, m_out), fan_in, round(fan_in / m_in), is_readout, tied)
        elif p.param.dim() == 1:
            m, grown = mults[0], grows[0]
            owner = p.name.removesuffix("bias")
            if p.name.endswith("bias") and owner in weights and out.get(owner + "weight", None) is not None \
                    and out[owner + "weight"].kind == "output":
                m, grown = 1.0, False  # the readout's bias: the size of its outputs
            out[p.name] = MupParam(names, "vector" if grown else "finite", (m,))
        else:
            out[p.name] = MupParam(names, "finite", ())
    return out


def prepare(model: nn.Module, roles: Mapping | None, options: dict) -> tuple[Mapping | None, dict]:
    """``apply``'s first step under ``"mup"`` with ``base=``: the readouts become heads (their std falls as
    1/fan_in from the base's fan-in), and a tied readout gets its output multiplier (see ``classify``)."""
    base, inputs, delta = options.pop("base", None), options.pop("inputs", None), options.pop("delta", None)
    if base is None:
        if inputs is not None or delta is not None:
            raise ValueError("options inputs and delta read the model against a base model: give base= too")
        return roles, options
    if options.get("base_width") is not None:
        raise ValueError("give base (the model at its base width) or base_width (an initcore config's width), "
                         "not both")
    classes = classify(model, base, inputs=inputs, roles=roles, delta=delta)
    heads = [c for c in classes.values() if c.kind == "output"]
    base_fan_ins = {c.base_fan_in for c in heads}
    if len(base_fan_ins) > 1:
        raise ValueError(f"the readouts {', '.join(c.name for c in heads)} have different base fan-ins "
                         f"{sorted(base_fan_ins)}; muP's base width must be one")
    for c in classes.values():
        if c.tied:
            install_tied_multiplier(model, c)
    mapped = {c.name: "head" for c in heads}
    mapped.update({k: v for k, v in (roles or {}).items() if k not in mapped})
    return mapped or None, {**options, "base_width": base_fan_ins.pop() if base_fan_ins else None}


def install_tied_multiplier(model: nn.Module, c: MupParam) -> float:
    """Put sqrt(b)/d on the output of the module that applies the tied table ``c`` as the readout (d its
    width, b the base's); return it.

    The table keeps its embedding init, constant in width; the multiplier falls as 1/d, as Table 8's 1/m
    and mup's ``MuSharedReadout`` (its constant ``output_mult`` chosen as 1/sqrt(b)), so that the logits
    start distributed as an untied head's, N(0, b/d²) weights, would give them: the two differ by a
    width-independent constant under Adam, which muP leaves free.

    Raises:
        ValueError: no module but the embedding holds the table (the readout is a functional product in
            the model's forward, which initcore cannot scale).
    """
    param = dict(model.named_parameters())[c.name]
    users = [(n, m) for n, m in readout.modules_using(model, param)
             if not isinstance(m, (nn.Embedding, nn.EmbeddingBag))]
    width = param.shape[1]
    multiplier = math.sqrt(width / c.mults[1]) / width
    if not users:
        raise ValueError(f"{c.name} is a tied readout that no module applies (a product in the model's forward): "
                         f"muP needs its logits multiplied by sqrt(base width)/width = {multiplier:g}; do it "
                         "there, or apply the readout with a module that holds the table")
    for _, module in users:
        readout.set_output_multiplier(module, multiplier)
    return multiplier


def scale_attention(model: nn.Module) -> list[str]:
    """Make every attention module that exposes ``scaling`` and ``head_dim`` (Hugging Face's, whose
    ``scaling`` they pass to ``scaled_dot_product_attention``) scale its logits by 1/d_head instead of
    1/sqrt(d_head), keeping any other factor (GPT-2's 1/(layer + 1)); return their names. Idempotent:
    the scaling it started from is remembered."""
    done = []
    for name, m in model.named_modules():
        scaling, head_dim = getattr(m, "scaling", None), getattr(m, "head_dim", None)
        if isinstance(scaling, float) and isinstance(head_dim, int) and head_dim > 0:
            start = m.__dict__.setdefault("_initcore_sp_scaling", scaling)
            m.scaling = start / math.sqrt(head_dim)
            done.append(name)
    return done


def class_lr_multiplier(c: MupParam, optimizer: str) -> float:
    """The factor muP puts on one class's learning rate (the module's table; a tied table is an input)."""
    adam = optimizer != "sgd"
    if c.kind in ("hidden", "output"):
        m_in, m_out = c.mults
        return 1 / m_in if adam else m_out / m_in
    if c.kind == "input":
        return 1.0 if adam else c.mults[1]
    if c.kind == "vector":
        return 1.0 if adam else c.mults[0]
    return 1.0
