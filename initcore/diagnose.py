"""What is wrong with a network at init, and what to do about it: symptoms read from a probe trace.

The reference notebook's debugging guide (condition → problem → fixes) as data: ``SYMPTOMS`` holds each
symptom with its condition, the statistic and threshold it reads, why that threshold, and its fixes, the
first of which can be applied to an ``initcore.experiments`` run (``Fix.apply``: run → fixed run) and is
checked by ``bench/test_cures.py`` to cure the symptom. ``diagnose(frame)`` returns one row per symptom
found, with its evidence. The notebook's per-layer health report (``health_table``, ``format_health``) is
here too. Pure pandas and numpy: no torch, so this reads frames from anywhere.

>>> import pandas as pd
>>> frame = pd.DataFrame({"module": ["layers.0", "layers.1"], "kind": "linear", "layer": [0, 1],
...                       "grad_norm": [1e-9, 0.5]})
>>> diagnose(frame)[["symptom", "modules"]].values.tolist()
[['vanishing_gradients', ('layers.0',)]]
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import pandas as pd

__all__ = [
    "FINDING_COLUMNS", "HEALTH_COLUMNS", "HEALTH_RULES", "STANDARD_INIT", "SYMPTOMS", "TREND_FACTOR", "TREND_R2",
    "TREND_TOTAL", "MEAN_SHARE", "Fix", "HealthRule", "Symptom", "depth_trend", "diagnose", "explain_health",
    "first_fixes", "format_findings", "format_health", "health_from_trace", "health_summary", "health_table",
    "positive_bias", "standard_init", "symptom_table", "verdict",
]

# --------------------------------------------------------------------------------------------------
# Fixes: each a sentence, and where it is a change of configuration at init, a function run -> run
# --------------------------------------------------------------------------------------------------

Run = Any  # an initcore.experiments run (MLPRun, TransformerRun): a frozen dataclass; no import, no torch

# The init each activation was derived for: He (Var(w) = 2/fan_in) for the ReLU family, whose outputs
# keep half the second moment; Xavier (2/(fan_in+fan_out)) for tanh, sigmoid and linear, which are
# linear near 0; LeCun (1/fan_in) for SELU (Klambauer et al. 2017). The normal variants, as the
# notebook's failure runs draw from normals. Xavier, not Xavier with torch's tanh gain 5/3: with
# N(0, 1) inputs, gain 5/3 puts 38% of the first tanh layer above |0.9|, itself "saturated".
STANDARD_INIT = {
    "relu": "kaiming_normal", "leaky_relu": "kaiming_normal", "gelu": "kaiming_normal", "silu": "kaiming_normal",
    "tanh": "xavier_normal", "sigmoid": "xavier_normal", "linear": "xavier_normal", "selu": "lecun_normal",
}


def _model_field(run: Run, name: str):
    model = getattr(run, "model", None)
    if model is None or not hasattr(model, name):
        raise ValueError(f"this fix changes the model's {name}; {type(run).__name__} has no model.{name}")
    return getattr(model, name)


def standard_init(run: Run) -> Run:
    """``run`` re-initialized with the init derived for its activation (``STANDARD_INIT``), default gain.

    The scale fix of the notebook's guide ("Increase/Reduce initialization scale (Xavier/He)"), made
    exact: the same network and inputs, only the weight distribution changes (biases are kept).
    """
    activation = _model_field(run, "activation")
    return replace(run, init=STANDARD_INIT[activation], gain=None)


def positive_bias(run: Run) -> Run:
    """``run`` with every bias 0.01: a small positive bias starts each ReLU in its active half."""
    if not hasattr(run, "bias"):
        raise ValueError(f"this fix sets the bias; {type(run).__name__} has no bias field")
    return replace(run, bias=0.01)


def _model_change(field: str, value) -> Callable[[Run], Run]:
    def apply(run: Run) -> Run:
        _model_field(run, field)
        return replace(run, model=replace(run.model, **{field: value}))

    apply.__name__ = f"set_{field}_{value}"
    apply.__doc__ = f"``run`` with ``model.{field} = {value!r}``."
    return apply


@dataclass(frozen=True)
class Fix:
    """One remedy: what to do, and where it is a change at init, the change (run -> fixed run)."""

    text: str
    apply: Callable[[Run], Run] | None = None  # None: not a change of configuration at init (clipping, lr)


_SCALE_UP = Fix("Increase the init scale to the one derived for the activation: He for ReLU, Xavier for tanh",
                standard_init)
_SCALE_DOWN = Fix("Reduce the init scale to the one derived for the activation: He for ReLU, Xavier for tanh",
                  standard_init)

# --------------------------------------------------------------------------------------------------
# Symptoms
# --------------------------------------------------------------------------------------------------

# Geometric depth trends. A trend is geometric when log(std) is a straight line in the layer index: a
# constant per-layer factor r, which compounds (r^L) rather than adding up. Fit the least-squares line
# through log(std) over >= 3 layers; flag it when it fits (R² >= TREND_R2), is fast (r outside
# [1/TREND_FACTOR, TREND_FACTOR]) and is large (r^(layers spanned) beyond TREND_TOTAL: the std has moved
# by more than a decade across the network, out of the notebook's healthy band 0.1 .. 10 if it started
# at 1). Why both. Fast alone misreads tanh under Xavier, which is not geometric: q falls from 1 to 0.39
# in its first layer and then algebraically (q_l ~ 1/l), so fits over 4-10 layers give r = 0.75-0.87 while
# the std stays within 4x of 1. Large alone misreads slow trends of very deep networks (a pre-norm
# residual stream grows as √(Var0 + l·v), theory.residual_variance: r = √((l+1)/l) -> 1). Why 1.25: at
# r = 1.25 (or 0.8) the std leaves the healthy decade within ln 10 / ln 1.25 ≈ 10 layers, the depth of
# the notebook's networks; the bench's geometric pathologies lie well beyond it (measured r: ReLU under
# Xavier 0.70, as Var halves per layer; GELU and SiLU under Xavier 0.52-0.54; tanh under N(0, 0.01²) at
# width 512: 0.23; ReLU under N(0, 0.001²) at width 256: 0.011; under N(0, 2²): 22), criticality (He for
# ReLU) gives r = 1 up to a few percent of finite-width wobble. R² >= 0.9 keeps a profile that bends (a
# collapse that accelerates, a jump then a plateau) from being read as a rate.
TREND_FACTOR = 1.25
TREND_TOTAL = 10.0
TREND_R2 = 0.9
_MIN_TREND_LAYERS = 3


@dataclass(frozen=True)
class Symptom:
    """One entry of the debugging guide: when it applies, what it means, why the threshold, what to do."""

    name: str
    problem: str  # the notebook's "Problem"
    condition: str  # the notebook's "IF", made exact
    statistic: str  # the trace column it reads
    threshold: float
    why: str  # where the threshold comes from
    fixes: tuple[Fix, ...]  # the first is the one bench/test_cures.py shows to cure the symptom
    detect: Callable[[pd.DataFrame, Symptom], dict | None]  # frame -> evidence, or None if absent


def _rows_where(op: str, skip_kinds: tuple[str, ...] = ()):
    """A detector: rows of ``frame`` (but those of ``skip_kinds``) whose ``symptom.statistic`` is ``op`` threshold.

    NaN means "does not apply" in a trace and is skipped; ``>`` counts +Inf as above any threshold.
    """

    def detect(frame: pd.DataFrame, symptom: Symptom) -> dict | None:
        if symptom.statistic not in frame.columns:
            return None
        rows = frame[~frame["kind"].isin(skip_kinds)] if skip_kinds and "kind" in frame.columns else frame
        values = pd.to_numeric(rows[symptom.statistic], errors="coerce")
        checked, values = rows[values.notna()], values[values.notna()]
        hit = values < symptom.threshold if op == "<" else ~(values <= symptom.threshold)
        if not hit.any():
            return None
        bad = checked[hit]
        worst = values[hit].min() if op == "<" else values[hit].max()
        return {"modules": tuple(bad["module"]), "layers": tuple(int(v) for v in bad["layer"]),
                "n_checked": len(checked), "value": float(worst),
                "evidence": f"{symptom.statistic} {op} {symptom.threshold:g} in {len(bad)} of {len(checked)} "
                            f"modules ({_span(bad)}); {'smallest' if op == '<' else 'largest'} {worst:.3g}"}

    return detect


def _span(rows: pd.DataFrame) -> str:
    names = list(rows["module"])
    return ", ".join(names) if len(names) <= 4 else f"{names[0]}, {names[1]}, ..., {names[-1]}"


def _nan_inf(frame: pd.DataFrame, symptom: Symptom) -> dict | None:
    cols = [c for c in ("nan_count", "inf_count") if c in frame.columns]
    if not cols:
        return None
    counts = frame[cols].apply(pd.to_numeric, errors="coerce").fillna(0.0).sum(axis=1)
    hit = counts > symptom.threshold
    if not hit.any():
        return None
    bad = frame[hit]
    first = bad.iloc[0]
    return {"modules": tuple(bad["module"]), "layers": tuple(int(v) for v in bad["layer"]),
            "n_checked": len(frame), "value": float(counts[hit].max()),
            "evidence": f"NaN or Inf outputs in {len(bad)} of {len(frame)} modules ({_span(bad)}), "
                        f"first at {first['module']}; up to {int(counts[hit].max())} non-finite entries"}


def _trend_rows(frame: pd.DataFrame) -> tuple[pd.DataFrame, str]:
    """The rows whose std makes a depth profile, and which std: an MLP's Linear outputs (pre-activation,
    the same quantity at every layer, the last included), else a transformer's residual stream."""
    linear = frame[frame["kind"] == "linear"] if "kind" in frame.columns else frame.iloc[0:0]
    if len(linear) and "preact_std" in frame.columns and linear["preact_std"].notna().all():
        return linear, "preact_std"
    if len(linear):
        return linear, "act_std"
    return (frame[frame["kind"] == "block"] if "kind" in frame.columns else frame.iloc[0:0]), "act_std"


def depth_trend(frame: pd.DataFrame) -> dict | None:
    """Least-squares fit of log(std) against each row's place in the depth profile (see ``_trend_rows``).

    Returns ``statistic``, ``modules``, ``layers``, ``steps`` (the fitted rows' span in the profile),
    ``factor`` (exp of the slope: the per-step factor), ``r2``, ``first``, ``last`` (the measured std at
    both ends), or None with fewer than 3 layers of finite, positive std.
    A constant profile has r2 = 1 (nothing is left unexplained).
    """
    rows, column = _trend_rows(frame)
    if column not in rows.columns:
        return None
    std = pd.to_numeric(rows[column], errors="coerce").to_numpy(dtype=np.float64)
    ok = np.isfinite(std) & (std > 0)
    if ok.sum() < _MIN_TREND_LAYERS:
        return None
    # x: each row's place in the profile, in the order the rows ran, not its ``layer``: a foreign model's
    # layer is the first integer of its name (nn.Sequential's Linear layers are 0, 2, 4, ...; ResNet's blocks
    # 0, 1, 0, 1, ...), and the factor is per step of the profile. initcore's models: the same numbers.
    x, y = np.arange(len(std), dtype=np.float64)[ok], np.log(std[ok])
    slope, intercept = np.polyfit(x, y, 1)
    total = float(np.sum((y - y.mean()) ** 2))
    resid = float(np.sum((y - (slope * x + intercept)) ** 2))
    r2 = 1.0 if total <= 1e-24 else 1.0 - resid / total
    used = rows[ok]
    return {"statistic": column, "modules": tuple(used["module"]), "layers": tuple(int(v) for v in used["layer"]),
            "steps": float(x[-1] - x[0]), "factor": math.exp(slope), "r2": r2, "first": float(std[ok][0]),
            "last": float(std[ok][-1])}


def _trend(direction: str):
    def detect(frame: pd.DataFrame, symptom: Symptom) -> dict | None:
        fit = depth_trend(frame)
        if fit is None or fit["r2"] < TREND_R2:
            return None
        r, (lo, hi) = fit["factor"], (fit["layers"][0], fit["layers"][-1])
        fast = r < 1 / symptom.threshold if direction == "shrinking" else r > symptom.threshold
        if not (fast and abs(math.log(r)) * fit["steps"] > math.log(TREND_TOTAL)):
            return None
        return {"modules": fit["modules"], "layers": fit["layers"], "n_checked": len(fit["modules"]), "value": r,
                "evidence": f"{fit['statistic']} {direction} x{r:.3g} per layer over layers {lo}-{hi} "
                            f"(fit R² {fit['r2']:.2f}): {fit['first']:.3g} -> {fit['last']:.3g}"}

    return detect


# Every row's gradient is checked but a block's, which sums its attention's and feed-forward's: a foreign
# model's rows are of any kind (conv2d, conv1d, layernorm, embedding, ...), and each owns its own gradient.
_BLOCKS = ("block",)

SYMPTOMS: dict[str, Symptom] = {s.name: s for s in (
    Symptom(
        "vanishing_gradients", "Vanishing gradients", "grad_norm < 1e-06", "grad_norm", 1e-6,
        "the notebook's bound: a weight gradient of norm 1e-6 moves weights of order 0.01-1 by nothing at "
        "any usable learning rate (exact zeros, from underflow, included)",
        (_SCALE_UP,
         Fix("Use residual connections"),
         Fix("Switch to a pre-norm architecture", _model_change("norm_position", "pre")),
         Fix("Reduce network depth")),
        _rows_where("<", _BLOCKS)),
    Symptom(
        "exploding_gradients", "Exploding gradients", "grad_norm > 10", "grad_norm", 10.0,
        "the notebook's bound: a step of lr x 10 and more per weight matrix at init is unstable at usual "
        "learning rates",
        (_SCALE_DOWN,
         Fix("Apply gradient clipping"),
         Fix("Use a smaller learning rate"),
         Fix("Add more regularization")),
        _rows_where(">", _BLOCKS)),
    Symptom(
        "dead_relu", "Dead ReLU units", "dead_frac > 0.6", "dead_frac", 0.6,
        "the notebook says over 50% zeros, but a healthy ReLU layer zeroes half its outputs: 0.5 plus noise "
        "(a per-unit offset from the positive mean of the previous layer; measured up to 0.553 over 10 seeds "
        "x 5 layers of He-initialized ReLU at width 256), so 50% flags healthy layers about half the time; "
        "0.6 is 10 points above a healthy layer, about 6 of its standard deviations at width 256",
        (Fix("Initialize biases to a small positive constant (0.01)", positive_bias),
         Fix("Switch to LeakyReLU", _model_change("activation", "leaky_relu")),
         Fix("Reduce the init scale to the one derived for the activation", standard_init),
         Fix("Use BatchNorm/LayerNorm")),
        _rows_where(">")),
    Symptom(
        "saturation", "Activation saturation", "saturated_frac > 0.3", "saturated_frac", 0.3,
        "the notebook's bound on the share of tanh/sigmoid outputs with |a| > 0.9, where the derivative is "
        "below 0.19; for tanh it is reached when the pre-activation std passes 1.42",
        (Fix("Reduce the init scale to Xavier for tanh/sigmoid (gain 1)", standard_init),
         Fix("Use ReLU instead of tanh/sigmoid"),
         Fix("Add normalization layers"),
         Fix("Reduce network width (fixed-std inits only: the pre-activation variance is fan_in x Var(w))")),
        _rows_where(">")),
    Symptom(
        "nan_inf", "Numerical instability", "nan_count + inf_count > 0", "nan_count", 0.0,
        "any non-finite output poisons everything downstream",
        (Fix("Much smaller initialization: the one derived for the activation", standard_init),
         Fix("Add gradient clipping"),
         Fix("Use a lower learning rate"),
         Fix("Check for bugs in the forward pass")),
        _nan_inf),
    Symptom(
        "shrinking_signal", "Signal shrinks geometrically with depth",
        f"log std per layer fits a line (R² >= {TREND_R2}) falling faster than 1/{TREND_FACTOR} per layer and "
        f"by over {TREND_TOTAL:g}x across the layers",
        "preact_std", TREND_FACTOR,
        "see TREND_FACTOR: fast (0.8 per layer leaves the healthy decade within 10 layers) and large",
        (_SCALE_UP,
         Fix("Use residual connections or normalization layers")),
        _trend("shrinking")),
    Symptom(
        "growing_signal", "Signal grows geometrically with depth",
        f"log std per layer fits a line (R² >= {TREND_R2}) rising faster than {TREND_FACTOR} per layer and "
        f"by over {TREND_TOTAL:g}x across the layers",
        "preact_std", TREND_FACTOR,
        "see TREND_FACTOR: fast (1.25 per layer leaves the healthy decade within 10 layers) and large",
        (_SCALE_DOWN,
         Fix("Scale the residual output projections by 1/sqrt(2 n_layers) (GPT-2)")),
        _trend("growing")),
)}

FINDING_COLUMNS = ("symptom", "problem", "statistic", "threshold", "modules", "layers", "n_affected", "n_checked",
                   "value", "evidence", "fixes")


def symptom_table() -> pd.DataFrame:
    """The debugging guide as a table: one row per symptom, its condition, threshold, why, and fixes."""
    return pd.DataFrame([{"symptom": s.name, "problem": s.problem, "condition": s.condition,
                          "statistic": s.statistic, "threshold": s.threshold, "why": s.why,
                          "fixes": tuple(f.text for f in s.fixes),
                          "first_fix_applies": s.fixes[0].apply is not None} for s in SYMPTOMS.values()])


def diagnose(frame: pd.DataFrame) -> pd.DataFrame:
    """The symptoms in a ``probe.trace`` frame, one row each, in ``SYMPTOMS`` order; empty if healthy.

    Columns ``FINDING_COLUMNS``: ``modules``/``layers`` (tuples) are the affected rows, ``value`` the worst
    measured value (the per-layer factor for depth trends), ``evidence`` a sentence with the numbers,
    ``fixes`` the symptom's fixes (texts; ``SYMPTOMS[name].fixes`` has the applicable ones). Columns a
    frame lacks make the symptoms that read them silent, so a partial frame can be diagnosed.

    Raises:
        ValueError: ``frame`` lacks ``module`` or ``layer``.
    """
    missing = {"module", "layer"} - set(frame.columns)
    if missing:
        raise ValueError(f"a trace frame needs columns module and layer; missing {', '.join(sorted(missing))}")
    if "kind" not in frame.columns:
        frame = frame.assign(kind="linear")
    rows = []
    for s in SYMPTOMS.values():
        found = s.detect(frame, s)
        if found is None:
            continue
        rows.append({"symptom": s.name, "problem": s.problem, "statistic": s.statistic, "threshold": s.threshold,
                     "modules": found["modules"], "layers": found["layers"], "n_affected": len(found["modules"]),
                     "n_checked": found["n_checked"], "value": found["value"], "evidence": found["evidence"],
                     "fixes": tuple(f.text for f in s.fixes)})
    out = pd.DataFrame(rows, columns=list(FINDING_COLUMNS))
    return out.astype({"n_affected": "int64", "n_checked": "int64", "value": "float64", "threshold": "float64"})


def first_fixes(findings: pd.DataFrame) -> dict[str, Fix]:
    """Symptom name -> its first fix, for each symptom in ``findings``."""
    return {name: SYMPTOMS[name].fixes[0] for name in findings["symptom"]}


def format_findings(findings: pd.DataFrame, n_fixes: int = 2, health: pd.DataFrame | None = None) -> str:
    """The findings as text: each symptom, its evidence and its first ``n_fixes`` fixes; or "healthy".

    ``health``: an ``explain_health`` table of the same model, whose rows the notebook's rules flag and
    no design explains count as a symptom too: the text then says the one ``verdict`` of both.
    """
    if findings.empty:
        if health is not None:
            return verdict(findings, health) + "\n"
        return f"healthy: no symptom found (checked: {', '.join(SYMPTOMS)})\n"
    lines = []
    for row in findings.itertuples(index=False):
        lines.append(f"{row.problem} [{row.symptom}]: {row.evidence}")
        lines.extend(f"  fix: {text}" for text in row.fixes[:n_fixes])
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------------
# The notebook's health report (InitializationUtils.print_initialization_report)
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class HealthRule:
    """One of the notebook's per-layer checks: an issue name and the test that raises it."""

    issue: str
    condition: str
    test: Callable[[pd.DataFrame], pd.Series]  # stats -> bool per layer


HEALTH_RULES: tuple[HealthRule, ...] = (
    HealthRule("NaN values", "nan_count > 0", lambda s: s["nan_count"] > 0),
    HealthRule("Inf values", "inf_count > 0", lambda s: s["inf_count"] > 0),
    HealthRule("Mean too large", "|mean| > 0.1", lambda s: s["mean"].abs() > 0.1),
    # as the notebook: NaN std fails neither comparison, and counts as no issue here
    HealthRule("Poor variance", "std < 0.1 or std > 10", lambda s: (s["std"] < 0.1) | (s["std"] > 10)),
)
HEALTH_COLUMNS = ("module", "mean", "std", "min", "max", "nan_count", "inf_count", "issues", "healthy")


def health_table(stats: pd.DataFrame) -> pd.DataFrame:
    """Per-layer health by the notebook's rules (``HEALTH_RULES``): ``stats`` plus ``issues`` and ``healthy``.

    ``stats`` has one row per layer with ``module, mean, std, min, max, nan_count, inf_count`` (as
    ``initcore.health.collect`` gives, or ``health_from_trace``). ``issues`` is the rules' issue names
    joined by ", " ("" when healthy).
    """
    missing = [c for c in HEALTH_COLUMNS[:7] if c not in stats.columns]
    if missing:
        raise ValueError(f"health stats need columns {', '.join(HEALTH_COLUMNS[:7])}; missing {', '.join(missing)}")
    out = stats.loc[:, list(HEALTH_COLUMNS[:7])].reset_index(drop=True)
    flags = pd.DataFrame({r.issue: r.test(out).to_numpy(dtype=bool) for r in HEALTH_RULES}, index=out.index)
    out["issues"] = [", ".join(name for name, on in row.items() if on) for _, row in flags.iterrows()]
    out["healthy"] = ~flags.any(axis=1) if len(out) else pd.Series(dtype=bool)
    return out


def _block_of(module: str, blocks: list[str]) -> str | None:
    inside = [b for b in blocks if module.startswith(b + ".")]
    return max(inside, key=len) if inside else None


# The notebook's |mean| > 0.1 is absolute: on a layer of std 1.4 (a He-initialized ReLU network's) a mean of
# 0.105 is 0.3% of the second moment, seed noise. A mean is a symptom when it is also a fair share of the
# signal: above a quarter of the std, 1/17 (6%) of the second moment, a shift the next layer sees.
MEAN_SHARE = 0.25


def explain_health(table: pd.DataFrame, frame: pd.DataFrame, findings: pd.DataFrame | None = None) -> pd.DataFrame:
    """``health_table``'s ``table`` with ``why`` (a sentence per flagged row, "" for a healthy one) and
    ``symptom`` (whether the flag is a symptom), judged with the trace ``frame`` of the same model.

    The notebook's "Poor variance" (std outside 0.1..10) is a symptom of a layer whose output feeds the
    next layer as it is. It is not one for a branch inside a residual block (a row under a block row
    of ``frame``, kind "block"): its output is added to the residual stream, which the next branch reads
    (through its norm, where there is one), so its own scale is its share of the stream, and a residual
    projection scaled down on purpose (GPT-2's c_proj: 0.02 / sqrt(2 n_layer)) is small by design. The
    stream itself is judged by ``diagnose``'s symptoms (its depth trend, the gradients): a branch in a
    block that one of ``findings`` names stays a symptom, as does a std above 10. "Mean too large" is a
    symptom where the mean is also above ``MEAN_SHARE`` of the std; NaN and Inf always are.
    """
    blocks = [str(m) for m in frame.loc[frame["kind"] == "block", "module"]] if "kind" in frame.columns else []
    stream = frame.set_index("module")["act_std"] if "act_std" in frame.columns else pd.Series(dtype=float)
    named = set() if findings is None or findings.empty else {m for ms in findings["modules"] for m in ms}
    out = table.copy()
    whys, symptoms = [], []
    for row in out.itertuples(index=False):
        issues = [i for i in row.issues.split(", ") if i]
        reasons, symptom = [], False
        for issue in issues:
            block = _block_of(str(row.module), blocks) if issue == "Poor variance" else None
            if issue == "Mean too large" and abs(row.mean) <= MEAN_SHARE * row.std:
                reasons.append(f"not a symptom: |mean| {abs(row.mean):.3g} is {abs(row.mean) / row.std:.2g} of "
                               f"the std {row.std:.3g}, {(row.mean / row.std) ** 2:.1%} of the second moment")
            elif block is not None and row.std < 0.1 and block not in named and row.module not in named:
                after = float(stream.get(block, math.nan))
                reasons.append(f"not a symptom: a branch of residual block {block}, added to a stream of std "
                               f"{after:.3g} ({row.std / after:.2g} of it); a residual projection is small by "
                               f"design (GPT-2 scales c_proj by 1/sqrt(2 n_layer))")
            elif issue == "Poor variance":
                symptom = True
                where = f" in residual block {block}, which a symptom above names" if block else \
                    ", on a layer whose output feeds the next layer as it is"
                reasons.append(f"a symptom: std {row.std:.3g} outside 0.1..10{where}")
            else:
                symptom = True
                reasons.append(f"{issue}: a symptom")
        whys.append("; ".join(reasons))
        symptoms.append(symptom)
    out["why"], out["symptom"] = whys, pd.array(symptoms, dtype=bool)
    return out


def verdict(findings: pd.DataFrame, health: pd.DataFrame | None = None) -> str:
    """One line for a model: healthy, or not and why, from ``diagnose``'s findings and (optionally) an
    ``explain_health`` table, whose flags by design do not count against it."""
    unexplained = health[health["symptom"]] if health is not None else None
    by_design = int((~health["healthy"] & ~health["symptom"]).sum()) if health is not None else 0
    design = f"; {_count(by_design, 'layer')} the notebook's rules flag are no symptom (why: below)" if by_design \
        else ""
    if findings.empty and (unexplained is None or unexplained.empty):
        checked = ", ".join([*SYMPTOMS, *(["the notebook's rules"] if health is not None else [])])
        return f"healthy: no symptom found (checked: {checked}){design}"
    parts = [f"{_count(len(findings), 'symptom')} ({', '.join(findings['symptom'])})"] if len(findings) else []
    if unexplained is not None and len(unexplained):
        parts.append(f"{_count(len(unexplained), 'layer')} the notebook's rules flag ({_names(unexplained['module'])})")
    return f"not healthy: {' and '.join(parts)}{design}"


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _names(modules) -> str:
    names = list(modules)
    return ", ".join(names) if len(names) <= 3 else f"{names[0]}, {names[1]}, ..., {names[-1]}"


def health_from_trace(frame: pd.DataFrame) -> pd.DataFrame:
    """A probe trace's output statistics in ``health_table``'s input shape (module, mean, std, ...)."""
    names = {"act_mean": "mean", "act_std": "std", "act_min": "min", "act_max": "max"}
    return frame.rename(columns=names).loc[:, ["module", *names.values(), "nan_count", "inf_count"]]


def health_summary(table: pd.DataFrame) -> dict:
    """``healthy`` and ``total`` layer counts and the notebook's verdict on them."""
    healthy, total = int(table["healthy"].sum()), len(table)
    if total == 0:
        verdict = "no layers measured"
    elif healthy == total:
        verdict = "Initialization looks good!"
    elif healthy > total * 0.8:
        verdict = "Mostly good, minor issues"
    else:
        verdict = "Initialization needs improvement"
    return {"healthy": healthy, "total": total, "verdict": verdict}


def format_health(table: pd.DataFrame, findings: pd.DataFrame | None = None) -> str:
    """The health table as the notebook printed it, one line per layer, then the summary.

    An ``explain_health`` table prints each flag's ``why`` under its row, marks a flag by design as
    such, and ends with the one ``verdict`` (with ``findings``, ``diagnose``'s of the same model)
    instead of the notebook's, which counts every flag against the model.
    """
    explained = "symptom" in table.columns
    width = max([len("module"), *map(len, table["module"])])
    lines = [f"{'module':<{width}}  {'mean':>9}  {'std':>9}  {'range':>21}  issues",
             "-" * (width + 56)]
    for row in table.itertuples(index=False):
        issues = row.issues or "healthy"
        if explained and row.issues and not row.symptom:
            issues = f"{row.issues} (no symptom)"
        lines.append(f"{row.module:<{width}}  {row.mean:9.4f}  {row.std:9.4f}  [{row.min:8.2f}, {row.max:8.2f}]  "
                     f"{issues}")
        if explained and row.why:
            lines.append(f"{'':<{width}}    why: {row.why}")
    s = health_summary(table)
    if explained:
        found = findings if findings is not None else pd.DataFrame(columns=list(FINDING_COLUMNS))
        design = int((~table["healthy"] & ~table["symptom"]).sum())
        lines.append(f"SUMMARY: {s['healthy']}/{s['total']} layers within the notebook's rules, {design} more "
                     f"flagged but no symptom: {verdict(found, table).split(':')[0]}")
    else:
        lines.append(f"SUMMARY: {s['healthy']}/{s['total']} layers healthy: {s['verdict']}")
    return "\n".join(lines) + "\n"
