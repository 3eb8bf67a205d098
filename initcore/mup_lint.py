r"""The muP lint: what in a model of yours, or in its optimizer, breaks muP, each with where and why.

``lint(model, base, inputs=...)`` reads the same model built (and initialized, by your own code) at two
widths, ``model`` at the larger and ``base`` at the smaller, and compares them: muP is a statement about
how things scale with width, so every check is an exponent measured between the two widths, which leaves
free every width-independent constant muP leaves free (an attention multiplier, GPT-2's 1/(layer + 1), a
readout's gain, the base learning rate). With m = width / base width of the dimension concerned:

- ``attention_scale``: the ``scale`` of each ``scaled_dot_product_attention`` call (its default
  1/sqrt(d_head) when not given) goes as d_head^e between the two forwards; muP wants e = -1 (1/d_head:
  q and k become correlated in training, so q.k grows as d_head, not sqrt(d_head); Yang et al., 2021,
  and microsoft/mup issues #8, #17), 1/sqrt(d_head) gives -0.5. Where d_head does not grow (more heads,
  not wider ones) nothing is asked of the scale.
- ``readout_init``: the readout (traced, ``init.mup.classify``) has effective std std(W) x rho (rho: its
  output multiplier, the prediction over ``F.linear`` of the readout's input with W) going as fan_in^e;
  muP wants e = -1 (or a zero readout), a hidden layer's init gives -0.5.
- ``tied_init``: an embedding table that is also the readout must keep its embedding init, constant in
  width (e = 0); mup's ``MuSharedReadout`` under ``set_base_shapes`` multiplies it by sqrt(m) (e = +0.5)
  and also divides the logits by m: the table scaled twice (microsoft/mup issue #55).
- ``tied_multiplier``: the tied readout's rho must go as 1/m (Table 8's 1/width; initcore's hook puts
  sqrt(b)/d there); e = -2 is a multiplier applied twice (a 1/width in your forward and initcore's hook),
  e = 0 none.
- ``optimizer_lr``, ``optimizer_weight_decay``: see ``optimizer_findings``.

Exponents are decided at the midpoint: off by more than ``MARGIN`` = 0.25 from what muP wants is a
finding, half the distance between muP's -1 and the standard parametrization's -0.5. Scales and rho are
exact ratios; a std is measured from the n entries of a matrix, whose sample std is off by a relative
1/sqrt(2n) (Gaussian; less for a uniform draw), so the exponent's error is sqrt(1/(2n) + 1/(2n_0)) / ln m;
``lint`` refuses (ValueError) a pair of widths where ``Z`` = 4 such errors exceed the margin.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from initcore.init import mup
from initcore.models import readout
from initcore.probe.attention import SDPAWatch

PROBLEMS = ("attention_scale", "readout_init", "tied_init", "tied_multiplier", "optimizer_lr",
            "optimizer_weight_decay")
MARGIN = 0.25  # half the distance between muP's exponent and the standard parametrization's (-1 vs -0.5)
Z = 4.0  # a std's exponent must be known to MARGIN / Z: a false finding at 4 sd is ~3e-5 one-sided
RTOL = 1e-6  # learning rates computed by hand (lr * 32 / 64) agree with the multiplier to float rounding


@dataclass(frozen=True)
class Finding:
    """One thing that breaks muP: ``problem`` (one of ``PROBLEMS``), ``where`` (parameter, module or
    optimizer group), ``why`` (one sentence with the numbers)."""

    problem: str
    where: str
    why: str


def lint(model: nn.Module, base: nn.Module, *, inputs: Any, optimizer: Any = None,
         roles: Mapping | None = None) -> list[Finding]:
    """What breaks muP in ``model`` (the larger width) against ``base`` (the same model at its base width),
    both built and initialized by your own code, on ``inputs`` (the same batch for both; a dict is passed as
    keywords, a tuple as positional arguments). ``optimizer``: a torch optimizer over ``model``'s parameters,
    or ``make_optimizer(model) -> optimizer`` (then built for both widths; see ``optimizer_findings``).
    ``roles``: as ``init.apply`` takes them (Hugging Face GPT-2: ``initcore.zoo.GPT2_ROLES``).

    >>> from torch import nn
    >>> def mlp(w): return nn.Sequential(nn.Linear(8, w), nn.ReLU(), nn.Linear(w, w), nn.ReLU(), nn.Linear(w, 4))
    >>> _ = torch.manual_seed(0)
    >>> [f.where for f in lint(mlp(1024), mlp(64), inputs=torch.randn(16, 8))]  # torch's init: 1/sqrt(fan_in)
    ['4.weight']

    Raises:
        ValueError: ``base`` lacks a parameter of ``model`` or makes other attention calls, a readout too
            small at these widths to tell its init's exponent, an optimizer that is neither.
    """
    classes = mup.classify(model, base, inputs=inputs, roles=roles)
    seen, seen0 = _forward(model, classes, inputs), _forward(base, classes, inputs)
    findings = attention_findings(seen.attention, seen0.attention)
    findings += readout_findings(model, base, classes, seen.rho, seen0.rho)
    if optimizer is not None:
        findings += optimizer_findings(model, base, classes, optimizer)
    return findings


def table(findings: list[Finding]) -> str:
    """The findings as an aligned text table (problem, where, why), one row each."""
    rows = [("problem", "where", "why"), *((f.problem, f.where, f.why) for f in findings)]
    widths = [max(len(r[i]) for r in rows) for i in range(2)]
    return "\n".join(f"{r[0]:<{widths[0]}}  {r[1]:<{widths[1]}}  {r[2]}" for r in rows)


def exponent(value: float, base_value: float, m: float) -> float:
    """e in value / base_value = m^e: how a quantity goes with a width multiplier m (!= 1)."""
    return math.log(value / base_value) / math.log(m)


# --- one forward per width: the attention calls and the readouts' output multipliers -------------------------------


@dataclass
class _Seen:
    attention: list[tuple[str, float, int]]  # (module, scale, d_head) per scaled_dot_product_attention call
    rho: dict[str, float]  # readout parameter name -> prediction / F.linear(its input, W, b)


_MATMULS = (torch.matmul, torch.Tensor.matmul, torch.Tensor.__matmul__)


class _ScaleWatch(SDPAWatch):
    """``SDPAWatch`` that records each call's scale and d_head (q's last dimension) instead of its logits,
    and the input x of a readout applied in a forward rather than by a module: ``F.linear(x, W)``, or
    ``x @ W.T`` (a transposed view of W), W one of ``weights``."""

    def __init__(self, model: nn.Module, weights: dict[int, str]) -> None:
        self.names = {id(m): n or f"{type(m).__name__}.forward" for n, m in model.named_modules()}  # the root: ''
        super().__init__(set(self.names), lambda module, att: None)
        self.calls: list[tuple[str, float, int]] = []
        self.weights, self.linear_inputs = weights, {}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func is F.linear and len(args) >= 2 and id(args[1]) in self.weights:
            self.linear_inputs.setdefault(self.weights[id(args[1])], (args[0], args[2] if len(args) > 2 else None))
        elif func in _MATMULS and len(args) == 2 and isinstance(args[1], torch.Tensor):
            w = args[1]._base
            if w is not None and id(w) in self.weights and args[1].shape == w.shape[::-1]:
                self.linear_inputs.setdefault(self.weights[id(w)], (args[0], None))
        return super().__torch_function__(func, types, args, kwargs)

    def on_sdpa(self, module: nn.Module | None, call: dict) -> None:
        d_head = call["query"].size(-1)
        scale = call.get("scale")
        self.calls.append((self.names.get(id(module), "?") if module is not None else "?",
                           1 / math.sqrt(d_head) if scale is None else float(scale), d_head))


def _readouts(classes: dict[str, mup.MupParam]) -> list[mup.MupParam]:
    return [c for c in classes.values() if c.kind == "output" or c.tied]


def _forward(model: nn.Module, classes: dict[str, mup.MupParam], inputs: Any) -> _Seen:
    """One forward of ``model`` on ``inputs``, no gradients: its attention calls, and per readout weight the
    ratio of the prediction to ``F.linear`` of the readout module's input (before anything the module does
    to it, as mup's ``MuReadout`` multiplies its input) with that weight, fitted by least squares over the
    rows (centred where the module has a bias)."""
    params = dict(model.named_parameters())
    weights = {c.name: params[c.name] for c in _readouts(classes) if params[c.name].dim() == 2}
    module_inputs: dict[str, tuple] = {}
    hooks = []
    for name, w in weights.items():
        for _, module in readout.modules_using(model, w):
            if isinstance(module, (nn.Embedding, nn.EmbeddingBag)):
                continue
            bias = getattr(module, "bias", None)

            def grab(module, args, name=name, bias=bias):
                if args and isinstance(args[0], torch.Tensor):
                    module_inputs.setdefault(name, (args[0], bias if isinstance(bias, torch.Tensor) else None))
            hooks.append(module.register_forward_pre_hook(grab))
    watch = _ScaleWatch(model, {id(w): n for n, w in weights.items()})
    try:
        with torch.no_grad(), watch:
            out = readout.prediction(readout.call(model, inputs))
    finally:
        for h in hooks:
            h.remove()
    rho = {}
    for name, w in weights.items():
        x, bias = module_inputs.get(name) or watch.linear_inputs.get(name) or (None, None)
        if x is None or x.shape[-1] != w.shape[1]:
            continue  # a product no module, F.linear or x @ W.T makes (an einsum, say): rho unknown, taken as 1
        with torch.no_grad():
            lin, pred = F.linear(x, w).float(), out.detach().float()
        if lin.shape != pred.shape:
            continue
        if bias is not None and lin.dim() >= 2:  # a bias added before or after the multiplier: per output, a
            lin, pred = (t.flatten(0, -2) for t in (lin, pred))  # constant over the rows, which centring removes
            lin, pred = lin - lin.mean(0), pred - pred.mean(0)
        norm = lin.square().sum()
        if norm > 0:
            rho[name] = float((pred * lin).sum() / norm)
    return _Seen(watch.calls, rho)


# --- the checks ----------------------------------------------------------------------------------------------------


def attention_findings(calls: list[tuple[str, float, int]], base_calls: list[tuple[str, float, int]]
                       ) -> list[Finding]:
    """One finding per attention module whose scale does not go as 1/d_head between the widths.

    The calls of the two forwards are paired in order; the exponent of the scale's ratio against d_head's
    is compared, not log(scale) / log(d_head) at one width, so that a constant factor (a tuned attention
    multiplier, GPT-2's 1/(layer + 1)) does not count.

    Raises:
        ValueError: the two widths make a different number of calls, or make them from other modules.
    """
    if len(calls) != len(base_calls) or any(a[0] != b[0] for a, b in zip(calls, base_calls, strict=False)):
        raise ValueError(f"the model makes {len(calls)} scaled_dot_product_attention calls and its base "
                         f"{len(base_calls)}, from modules {sorted({c[0] for c in calls})} and "
                         f"{sorted({c[0] for c in base_calls})}: build both with the same factory, at two widths")
    findings, flagged = [], set()
    for (where, scale, d), (_, scale0, d0) in zip(calls, base_calls, strict=True):
        if d == d0 or where in flagged:
            continue  # d_head does not grow (more heads, not wider ones): 1/sqrt(d_head) is muP's too
        e = exponent(scale, scale0, d / d0) if scale > 0 and scale0 > 0 else math.nan
        if not abs(e + 1) <= MARGIN:
            flagged.add(where)
            findings.append(Finding("attention_scale", where, (
                f"scaled_dot_product_attention's scale is {scale0:.4g} at d_head {d0} and {scale:.4g} at d_head "
                f"{d}: it goes as d_head^{e:+.2f}, muP wants d_head^-1 (1/d_head), 1/sqrt(d_head) is -0.5")))
    return findings


def _std_error(n: int, n0: int, m: float) -> float:
    """The sd of a std ratio's exponent from n and n0 Gaussian entries (see the module docstring)."""
    return math.sqrt(1 / (2 * n) + 1 / (2 * n0)) / abs(math.log(m))


def _std(w: torch.Tensor) -> float:
    return float(w.detach().float().std()) if w.numel() > 1 else 0.0


def readout_findings(model: nn.Module, base: nn.Module, classes: dict[str, mup.MupParam],
                     rho: dict[str, float], rho0: dict[str, float]) -> list[Finding]:
    """The readouts' checks (``readout_init``, ``tied_init``, ``tied_multiplier``; see the module docstring).

    Raises:
        ValueError: a readout with too few entries at these widths to tell its std's exponent within MARGIN.
    """
    params, params0 = dict(model.named_parameters()), dict(base.named_parameters())
    findings = []
    for c in _readouts(classes):
        w, w0 = params[c.name], params0[c.name]
        m = c.mults[1] if c.tied else c.mults[0]  # the dimension that grows: a table's width, a head's fan-in
        if m == 1 or w.dim() != 2:
            continue
        std, std0 = _std(w), _std(w0)
        r, r0 = abs(rho.get(c.name, 1.0)), abs(rho0.get(c.name, 1.0))
        if c.tied:
            hooks = readout.output_multipliers(model)
            note = "; initcore's hook multiplies " + ", ".join(f"{n}'s output by {v:.4g}" for n, v in hooks.items()) \
                if hooks else ""
            findings += _tied(c, tuple(w.shape), tuple(w0.shape), std, std0, r, r0, note)
        elif std == 0:
            continue  # a zero readout (mup's readout_zero_init): muP's at every width
        elif std0 == 0:
            findings.append(Finding("readout_init", c.name, f"it is 0 at the base width and has std {std:.4g} at "
                                    f"fan-in {c.fan_in}: muP wants std falling as 1/fan_in, or 0 at every width"))
        else:
            _precise(c.name, w.numel(), w0.numel(), m)
            e = exponent(std * r, std0 * r0, m)
            if abs(e + 1) > MARGIN:
                mult = "" if r == r0 == 1 else f" times its output multiplier ({r0:.4g}, {r:.4g})"
                findings.append(Finding("readout_init", c.name, (
                    f"its std{mult} is {std0 * r0:.4g} at fan-in {c.base_fan_in} and {std * r:.4g} at fan-in "
                    f"{c.fan_in}: it goes as fan_in^{e:+.2f} (± {_std_error(w.numel(), w0.numel(), m):.2f}), muP "
                    f"wants fan_in^-1 (or 0), a hidden layer's init gives -0.5")))
    return findings


def _precise(name: str, n: int, n0: int, m: float) -> None:
    error = _std_error(n, n0, m)
    if Z * error > MARGIN:
        raise ValueError(f"{name} has {n0} entries at the base width and {n} at the width: its std's exponent is "
                         f"known to ± {error:.2f}, too coarse to tell muP's -1 from -0.5 (needs ± {MARGIN / Z:.3g}); "
                         "lint at widths further apart, or larger")


def _tied(c: mup.MupParam, shape: tuple[int, int], shape0: tuple[int, int], std: float, std0: float, r: float,
          r0: float, note: str = "") -> list[Finding]:
    """``tied_init`` and ``tied_multiplier`` of a tied table of ``shape`` (vocab, width), ``shape0`` at the base."""
    out = []
    (n_vocab, d), d0 = shape, shape0[1]
    e_rho = exponent(r, r0, d / d0)
    where = " = ".join(c.names)
    if std > 0 and std0 > 0:
        _precise(c.name, n_vocab * d, shape0[0] * d0, d / d0)
        e = exponent(std, std0, d / d0)
        if abs(e) > MARGIN:
            twice = (f", while its logits' multiplier goes as width^{e_rho:+.2f} as well: the table is scaled twice"
                     if e_rho < -MARGIN else "")
            out.append(Finding("tied_init", where, (
                f"the tied table's std is {std0:.4g} at width {d0} and {std:.4g} at width {d}: it goes as "
                f"width^{e:+.2f}{twice}; muP keeps an embedding's init constant in width and puts 1/width on the "
                "logits alone (mup's MuSharedReadout rescales the table by sqrt(width_mult) in set_base_shapes: "
                "microsoft/mup#55)")))
    if abs(e_rho + 1) > MARGIN:
        what = "applied twice" if e_rho < -1 - MARGIN else "missing" if abs(e_rho) <= MARGIN else "off"
        out.append(Finding("tied_multiplier", where, (
            f"the logits over F.linear(readout input, table) are {r0:.4g} at width {d0} and {r:.4g} at width {d}: "
            f"they go as width^{e_rho:+.2f}, muP wants width^-1 (one 1/width output multiplier): {what}{note}")))
    return out


# --- the optimizer --------------------------------------------------------------------------------------------------


def optimizer_kind(optimizer: torch.optim.Optimizer) -> str:
    """``"sgd"`` for ``torch.optim.SGD`` (its update carries the gradient's size), else ``"adam"`` (Adam, AdamW
    and the others that normalize each entry's update)."""
    return "sgd" if isinstance(optimizer, torch.optim.SGD) else "adam"


def _groups_of(optimizer: torch.optim.Optimizer, model: nn.Module) -> dict[str, tuple[int, float, float]]:
    """Parameter name -> (group index, lr, weight decay) in ``optimizer``, for the parameters it holds."""
    where = {}
    for i, group in enumerate(optimizer.param_groups):
        for p in group["params"]:
            where[id(p)] = (i, float(group["lr"]), float(group.get("weight_decay", 0.0) or 0.0))
    return {n: where[id(p)] for n, p in model.named_parameters() if id(p) in where}


def _optimizers(model: nn.Module, base: nn.Module, optimizer: Any) -> tuple[torch.optim.Optimizer, Any]:
    if isinstance(optimizer, torch.optim.Optimizer):
        return optimizer, None
    if callable(optimizer):
        made = optimizer(model), optimizer(base)
        if all(isinstance(o, torch.optim.Optimizer) for o in made):
            return made
        raise ValueError(f"make_optimizer(model) returned {type(made[0]).__name__}, not a torch.optim.Optimizer")
    raise ValueError(f"optimizer must be a torch.optim.Optimizer over the model's parameters or a callable "
                     f"make_optimizer(model) -> optimizer; got {type(optimizer).__name__}")


def _compact(names: list[str]) -> str:
    return ", ".join(names) if len(names) <= 2 else f"{names[0]} +{len(names) - 1} more"


def _off(observed: dict[str, float], expected: dict[str, float]) -> tuple[float, dict[str, float]]:
    """The global factor (the ratio observed / expected most parameters share) and the parameters off it."""
    ratio = {n: observed[n] / expected[n] for n in observed}
    counts: dict[float, int] = {}
    for q in ratio.values():
        key = next((k for k in counts if math.isclose(q, k, rel_tol=RTOL)), q)
        counts[key] = counts.get(key, 0) + 1
    factor = max(counts, key=lambda k: counts[k]) if counts else 1.0
    return factor, {n: q for n, q in ratio.items() if not math.isclose(q, factor, rel_tol=RTOL)}


def optimizer_findings(model: nn.Module, base: nn.Module, classes: dict[str, mup.MupParam], optimizer: Any
                       ) -> list[Finding]:
    """``optimizer_lr``: each parameter's learning rate against muP's multiplier for its class
    (``init.mup.class_lr_multiplier``, Adam-like or SGD by the optimizer's type), up to one global factor (the
    one most parameters share). Given ``make_optimizer``, the lr's ratio between the two widths is compared
    (any constant per class is muP's to tune); given an optimizer, its lr across groups, which holds for
    muP's groups with ``base``'s width as the base width.

    ``optimizer_weight_decay``: among the parameters with weight decay, lr x weight_decay must be the same
    (or its ratio between the widths): PyTorch's AdamW decays each weight by lr x wd per step, so a group
    whose lr muP divides by m_in but which keeps the base's wd decays m_in times less per step at width than
    at the base width; mup's ``MuAdam`` and ``MuSGD`` (decoupled_wd=False) multiply such a group's wd by
    m_in, keeping lr x wd, for coupled (L2) decay as well. One finding per optimizer group and class.
    """
    opt, opt0 = _optimizers(model, base, optimizer)
    kind = optimizer_kind(opt)
    groups = _groups_of(opt, model)
    groups0 = _groups_of(opt0, base) if opt0 is not None else None
    names = [n for n in groups if n in classes and (groups0 is None or n in groups0)]
    expected = {n: mup.class_lr_multiplier(classes[n], kind) for n in names}
    lr = {n: groups[n][1] / (groups0[n][1] if groups0 else 1.0) for n in names}
    findings = []
    factor, off = _off(lr, expected)
    what = "its lr's ratio from the base width to the width is" if groups0 else "its lr is"
    for (i, mult), ns in _by_group(off, groups, expected).items():
        kinds = ", ".join(dict.fromkeys(classes[n].kind for n in ns))
        findings.append(Finding("optimizer_lr", f"param_groups[{i}]: {_compact(ns)}", (
            f"{what} {lr[ns[0]]:.4g} where muP wants {factor * mult:.4g} ({kinds}: {_rule(classes[ns[0]], kind, mult)} "
            f"under {type(opt).__name__}, times the factor {factor:.4g} that most parameters share)")))
    decayed = [n for n in names if groups[n][2] > 0 or (groups0 and groups0[n][2] > 0)]
    step = {n: groups[n][1] * groups[n][2] / ((groups0[n][1] * groups0[n][2]) if groups0 else 1.0) for n in decayed}
    if any(math.isinf(v) for v in step.values()):
        zero = [n for n, v in step.items() if math.isinf(v)]
        findings.append(Finding("optimizer_weight_decay", _compact(zero), (
            "weight decay is 0 at the base width and not at the width: muP keeps lr x weight_decay as at the base")))
        step = {n: v for n, v in step.items() if not math.isinf(v)}
    factor, off = _off(step, dict.fromkeys(step, 1.0))
    for (i, _), ns in _by_group(off, groups, dict.fromkeys(off, 1.0)).items():
        lr_i, wd_i = groups[ns[0]][1:]
        measured = (f"its lr x weight_decay is x{step[ns[0]]:.4g} the base width's where most decayed parameters' "
                    f"is x{factor:.4g}") if groups0 else \
            f"lr x weight_decay is {lr_i:.4g} x {wd_i:.4g} = {lr_i * wd_i:.4g} where most decayed parameters' is " \
            f"{factor:.4g}"
        findings.append(Finding("optimizer_weight_decay", f"param_groups[{i}]: {_compact(ns)}", (
            f"{measured}: {type(opt).__name__} decays by lr x wd per step, and muP keeps that the same in every "
            "group (wd divided by the group's lr multiplier, as mup's MuAdam)")))
    return findings


def _by_group(off: dict[str, float], groups: dict[str, tuple[int, float, float]], expected: dict[str, float]
              ) -> dict[tuple[int, float], list[str]]:
    out: dict[tuple[int, float], list[str]] = {}
    for n in off:
        out.setdefault((groups[n][0], expected[n]), []).append(n)
    return out


def _rule(c: mup.MupParam, kind: str, mult: float) -> str:
    if c.kind in ("hidden", "output"):
        return f"lr / m_in = lr x {mult:.4g}" if kind == "adam" else f"lr x m_out / m_in = lr x {mult:.4g}"
    if kind == "sgd" and c.kind in ("input", "vector"):
        return f"lr x m = lr x {mult:.4g}"
    return "lr x 1"


__all__ = ["MARGIN", "PROBLEMS", "Z", "Finding", "attention_findings", "exponent", "lint", "optimizer_findings",
           "optimizer_kind", "readout_findings", "table"]
