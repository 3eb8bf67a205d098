"""Headroom over training steps: which rows of a precision table lose room in a format as the first steps
change their scale, and by how many bits.

A row (a coordinate: module, tensor, parameter) has room on two sides in a format: above, ``headroom_bits``
= log2(max / amax) before it overflows (the precision table's own column); below, ``floor_bits`` =
log2(rms / smallest normal) before its typical entry turns subnormal and then flushes. A weight that grows
loses the first, a gradient or an update that shrinks (Adam's lr·m/sqrt(v) as m and v settle) the second.
``falls`` measures, per coordinate, format and scaling, how far each fell from the first step to its lowest
later step; ``flag`` keeps those that fell by more than ``bits``. Pure pandas over
``initcore.steps.trace_steps(..., formats=...)``'s ``frame.attrs["precision"]``.

Why ``DEFAULT_BITS = 2``: a power-of-two scale chosen from an earlier step's amax (a loss scale, delayed
scaling's per-tensor 2^k, the table's "tensor" scaling) leaves 0 to 1 bit spare, so that a fall of 1 bit
may be absorbed and one of more than 2 bits never is, whatever the spare was; and under a per-tensor scale
the room below itself moves by up to a bit as that power of two steps (0.97 bits measured on healthy
steps, tests/probe/test_headroom.py). Adam's first update is lr·sign(g) (rms lr); as m and g part, its
entries spread over [0, lr] and its rms falls by about a bit (uniform on [0, lr]: rms lr/sqrt(3), 0.8
bits) without anything going wrong: on the 12-layer transformer (3 Adam steps at lr 1e-3, 4 strategies,
8 seeds; bench/test_precision_headroom.py) no update fell by more than 1.75 bits, no weight by more than
0.2. On small models (4 steps, seeds 0-5) healthy steps moved no row by more than 0.12 bits unscaled;
weights grown by a large lr lost 3.6 bits, a saturating layer's gradient 3.4-4.1.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import pandas as pd

from initcore.probe import precision

DEFAULT_BITS = 2.0  # see the module docstring
SIDES = ("overflow", "underflow")  # headroom_bits falls / floor_bits falls
COORDINATE = ("module", "kind", "layer", "tensor", "param")
FALLS = (*COORDINATE, "format", "scaling", "first_step", "last_step", "headroom_first", "headroom_low",
         "headroom_fall", "headroom_step", "floor_first", "floor_low", "floor_fall", "floor_step")


def adam_update_bound(step: int, betas: tuple[float, float] = (0.9, 0.999)) -> float:
    """The largest |update| / lr Adam's ``step``-th step (1, 2, ...) can make, whatever the gradients: with
    bias-corrected m = sum_i a_i g_i and v = sum_i b_i g_i² (a_i = (1-β1) β1^(t-i) / (1-β1^t), b_i likewise
    with β2), Cauchy-Schwarz gives |m| / sqrt(v) <= sqrt(sum_i a_i² / b_i), reached when g_i is proportional
    to a_i / b_i; eps only lowers it. 1 at the first step (the update is lr·sign(g)); for the default betas
    1.0014 at the second, 1.0036 at the third, 1.0108 at the fifth: an update's amax hardly grows, its room
    above hardly falls.

    >>> adam_update_bound(1)
    1.0
    """
    if isinstance(step, bool) or not isinstance(step, int) or step < 1:
        raise ValueError(f"step must be a positive integer (the first step is 1), got {step!r}")
    b1, b2 = betas
    i = np.arange(1, step + 1)
    a = (1 - b1) * b1 ** (step - i) / (1 - b1**step)
    b = (1 - b2) * b2 ** (step - i) / (1 - b2**step)
    return float(np.sqrt(np.sum(a * a / b)))


def floor_bits(table: pd.DataFrame) -> pd.Series:
    """log2(rms / smallest normal) per row of a precision table (rms from its mean and std: sqrt(mean² +
    std²·(n-1)/n)); -inf for a tensor of zeros, NaN for one with no finite entries."""
    tiny = table["format"].map({name: precision.format_of(name).tiny for name in table["format"].unique()})
    n = table["n"].to_numpy(dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        ms = table["mean"].to_numpy() ** 2 + table["std"].fillna(0).to_numpy() ** 2 * np.where(n > 1, (n - 1) / n, 0)
        return pd.Series(np.log2(np.sqrt(ms) / tiny.to_numpy(dtype=np.float64)), index=table.index)


def _check(table: pd.DataFrame) -> pd.DataFrame:
    missing = sorted({"step", *precision.COLUMNS} - set(table.columns))
    if missing:
        raise ValueError(f"not a precision table over steps (missing {', '.join(missing)}): pass "
                         "initcore.steps.trace_steps(..., formats=...).attrs[\"precision\"]")
    return table


def falls(table: pd.DataFrame) -> pd.DataFrame:
    """Per coordinate, format and scaling (``FALLS``): its first and last step, and on each side the room at
    the first step, the lowest room at a later step, the fall (first - lowest, 0 if it never fell) and the step
    where it was lowest. NaN where there is nothing to compare: a coordinate seen at one step only, or one
    that is all zeros at its first step (a zero bias: infinite room above, none below)."""
    table = _check(table).assign(floor_bits=lambda t: floor_bits(t))
    keys = [*COORDINATE, "format", "scaling"]
    table = table.sort_values("step", kind="stable")
    groups = table.groupby(keys, sort=False, dropna=False)
    out = groups["step"].agg(first_step="min", last_step="max")
    for side, column in (("headroom", "headroom_bits"), ("floor", "floor_bits")):
        first = groups[column].first().where(lambda v: np.isfinite(v))  # a tensor of zeros has no room to lose
        later = table[table["step"] > table.groupby(keys, sort=False, dropna=False)["step"].transform("min")]
        # a tensor that became zeros: infinite room above (nothing to overflow), -inf below (all of it lost)
        later = later[later[column] < np.inf]  # NaN and +inf out
        low_at = later.groupby(keys, sort=False, dropna=False)[column].idxmin()
        low = later.loc[low_at.dropna(), [*keys, "step", column]].set_index(keys)
        out[f"{side}_first"] = first
        out[f"{side}_low"] = low[column].reindex(out.index)
        with np.errstate(invalid="ignore"):
            out[f"{side}_fall"] = np.maximum(out[f"{side}_first"] - out[f"{side}_low"], 0.0)
        out[f"{side}_step"] = low["step"].reindex(out.index)
    return out.reset_index()[list(FALLS)]


def flag(table: pd.DataFrame, bits: float = DEFAULT_BITS, *, formats: Iterable[str] | str | None = None,
         scaling: str = "none") -> pd.DataFrame:
    """The coordinates whose room fell by more than ``bits`` over the steps, one row per side that fell, worst
    first: ``COORDINATE``, format, scaling, ``side`` (``SIDES``), ``fall``, ``first`` and ``low`` (room in
    bits at the first step and at its lowest), ``step`` (where lowest).

    Under scaling "none" the fall is the same in every format (log2 of amax or rms moved); the formats
    differ in the room left (``low``; below 0: overflowing, or typically subnormal).

    Raises:
        ValueError: bits not positive and finite, an unknown scaling or format, or not a precision table.
    """
    if not (isinstance(bits, (int, float)) and np.isfinite(bits) and bits > 0):
        raise ValueError(f"bits must be a positive number (default {DEFAULT_BITS:g}), got {bits!r}")
    if scaling not in precision.SCALINGS:
        raise ValueError(f"unknown scaling {scaling!r}; valid: {', '.join(precision.SCALINGS)}")
    table = _check(table)
    table = table[table["scaling"] == scaling]
    if formats is not None:
        names = [f.name for f in precision.formats_of(formats)]
        table = table[table["format"].isin(names)]
    found = falls(table)
    parts = []
    for side, prefix in zip(SIDES, ("headroom", "floor"), strict=True):
        rows = found[found[f"{prefix}_fall"] > bits]
        parts.append(pd.DataFrame({**{c: rows[c] for c in (*COORDINATE, "format", "scaling")}, "side": side,
                                   "fall": rows[f"{prefix}_fall"], "first": rows[f"{prefix}_first"],
                                   "low": rows[f"{prefix}_low"], "step": rows[f"{prefix}_step"]}))
    out = pd.concat(parts, ignore_index=True)
    return out.sort_values("fall", ascending=False, kind="stable").reset_index(drop=True)


__all__ = ["COORDINATE", "DEFAULT_BITS", "FALLS", "SIDES", "adam_update_bound", "falls", "flag", "floor_bits"]
