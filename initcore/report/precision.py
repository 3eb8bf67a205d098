"""The report's precision figure: every row's tensors on a log2 scale (largest |x|, the 1% quantile and the
smallest of the nonzero |x|) against the ranges of float16, bfloat16, float8_e4m3fn and float8_e5m2 (their
max, smallest normal and smallest subnormal, from ``torch.finfo`` through ``initcore.probe.precision``).

A span that reaches above a format's max overflows there; one whose low end sits below its smallest normal
has entries that lose precision (subnormal), below half its smallest subnormal entries that flush to zero.
The drawing needs matplotlib (``initcore[plot]``); the tables do not.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import torch

from initcore.probe import precision, spans
from initcore.report.sections import Check, ReportRuns, Section

FORMATS = ("float16", "bfloat16", "float8_e4m3fn", "float8_e5m2")
TENSORS = ("output", "output_grad", "weight", "weight_grad")
FORMAT_COLORS = {"float16": "tab:blue", "bfloat16": "tab:green", "float8_e4m3fn": "tab:red",
                 "float8_e5m2": "tab:purple"}
_TITLES = {"output": "forward outputs", "output_grad": "gradients wrt outputs", "weight": "parameters",
           "weight_grad": "parameter gradients"}


def limits(formats=FORMATS) -> pd.DataFrame:
    """log2 of each format's smallest subnormal, smallest normal and max (``precision.format_of``: finfo's)."""
    rows = []
    for fmt in precision.formats_of(list(formats)):
        rows.append({"format": fmt.name, "log2_smallest_subnormal": math.log2(fmt.smallest),
                     "log2_smallest_normal": math.log2(fmt.tiny), "log2_max": math.log2(fmt.max)})
    return pd.DataFrame(rows)


def span_table(table: pd.DataFrame) -> pd.DataFrame:
    """``spans.spans``' table with ``log2_amax``, ``log2_low`` and ``log2_smallest`` (NaN for all-zero tensors)."""
    out = table.copy()
    with np.errstate(divide="ignore", invalid="ignore"):
        for column, source in (("log2_amax", "amax"), ("log2_low", "low"), ("log2_smallest", "smallest")):
            out[column] = np.log2(out[source].to_numpy(dtype=np.float64))
    return out


def outside(table: pd.DataFrame, bounds: pd.DataFrame) -> pd.DataFrame:
    """Per format, how many tensors reach past its max (amax) or below its smallest normal (the 1% quantile),
    of those with a nonzero entry: what the figure shows, counted."""
    found = []
    drawn = table[table["nonzero"] > 0]
    for b in bounds.itertuples(index=False):
        found.append({"format": b.format, "tensors": len(drawn),
                      "above_max": int((drawn["log2_amax"] > b.log2_max).sum()),
                      "low_below_normal": int((drawn["log2_low"] < b.log2_smallest_normal).sum())})
    return pd.DataFrame(found)


def draw(fig, table: pd.DataFrame, bounds: pd.DataFrame) -> None:
    """One panel per kind of tensor: each tensor a vertical bar from its 1% quantile to its amax (a dot at the
    smallest nonzero), in the order the rows ran; each format's max (solid), smallest normal (dashed) and
    smallest subnormal (dotted) as horizontal lines, its normal range shaded."""
    kinds = [t for t in TENSORS if (table["tensor"] == t).any()]
    axes = fig.subplots(1, max(len(kinds), 1), squeeze=False, sharey=True).ravel()
    drawn = table[table["nonzero"] > 0]
    low, high = _y_range(drawn, bounds)
    for i, (ax, kind) in enumerate(zip(axes, kinds, strict=False)):
        rows = drawn[drawn["tensor"] == kind].reset_index(drop=True)
        x = np.arange(len(rows))
        for b in bounds.itertuples(index=False):
            color = FORMAT_COLORS.get(b.format, "gray")
            seen = low <= b.log2_smallest_subnormal and b.log2_max <= high
            ax.axhspan(b.log2_smallest_normal, b.log2_max, color=color, alpha=0.05, linewidth=0)
            label = (f"{b.format}: 2^{b.log2_smallest_subnormal:.0f}, 2^{b.log2_smallest_normal:.0f}, "
                     f"max 2^{b.log2_max:.2f}" + ("" if seen else " (off the axis)"))
            ax.axhline(b.log2_max, color=color, linewidth=1, label=label if i == 0 else None)
            ax.axhline(b.log2_smallest_normal, color=color, linewidth=1, linestyle="--")
            ax.axhline(b.log2_smallest_subnormal, color=color, linewidth=1, linestyle=":")
        ax.vlines(x, rows["log2_low"], rows["log2_amax"], color="black", linewidth=1.2)
        ax.plot(x, rows["log2_amax"], "_", color="black", markersize=6)
        ax.plot(x, rows["log2_smallest"], ".", color="gray", markersize=3)
        step = max(1, len(rows) // 12)
        labels = rows["param"].where(rows["param"] != "", rows["module"]).astype(str)
        ax.set_xticks(x[::step], labels.iloc[::step], rotation=90, fontsize=5)
        ax.set_title(f"{_TITLES[kind]} ({len(rows)})", fontsize=9)
        ax.set_ylim(low, high)
        ax.grid(True, axis="y", alpha=0.3)
    axes[0].set_ylabel("log2 |x|: 1% quantile to amax; dot: smallest nonzero")
    axes[0].legend(fontsize=6, loc="lower left", title="max (solid), smallest normal (dashed), subnormal (dotted)",
                   title_fontsize=6)


def _y_range(drawn: pd.DataFrame, bounds: pd.DataFrame) -> tuple[float, float]:
    """The data, and every format whose whole range is within 40 binades of it (bfloat16's 2^-133 .. 2^128
    would flatten the rest), with 2 binades of margin."""
    values = drawn[["log2_amax", "log2_low", "log2_smallest"]].to_numpy(dtype=np.float64)
    values = values[np.isfinite(values)]
    lo, hi = (values.min(), values.max()) if values.size else (-24.0, 16.0)
    near = bounds[(bounds["log2_smallest_subnormal"] > lo - 40) & (bounds["log2_max"] < hi + 40)]
    if len(near):
        lo, hi = min(lo, near["log2_smallest_subnormal"].min()), max(hi, near["log2_max"].max())
    return lo - 2, hi + 2


def section(runs: ReportRuns, seed: int) -> Section:
    """The figure for the report's first transformer run (the experiments' 12-layer one, at ``seed``): one more
    trace (``spans.spans``), as the bench traces it (its loss, rows and mode)."""
    label, run = next(iter(runs.transformer.items()))
    model, inputs = run.build(torch.Generator().manual_seed(seed))
    table = span_table(spans.spans(model, inputs, run.loss, select=run.select, train=run.train))
    table.insert(0, "run", label)
    cfg = run.model
    return model_section(table, f"The transformer under {label} ({cfg.n_layers} blocks, d_model {cfg.d_model}, "
                                f"batch {run.batch} x seq {run.seq_len}, loss {run.loss})")


def model_section(table: pd.DataFrame, where: str, name: str = "precision") -> Section:
    """The figure of a ``span_table``, named ``name``: ``where`` says what model was traced, and how."""
    bounds = limits()
    counted = outside(table, bounds)
    return Section(
        name, "Precision: every row's scale against the formats' ranges",
        f"{where}. Each tensor of each row (its output, the gradient wrt it, each parameter and its gradient, "
        "unscaled) as a bar on a log2 scale from the 1% quantile of its nonzero |x| to its largest, with a dot "
        "at its smallest; horizontal lines at each format's max, smallest normal (dashed) and smallest "
        "subnormal (dotted), from torch.finfo. Above a max: overflow; below a smallest normal: subnormal, "
        "below half a smallest subnormal: flushed to 0. A per-tensor scale (initcore.probe.precision) slides "
        "a whole bar; a bar longer than a format's normal range cannot fit it whatever the scale. Zero "
        "tensors (zero biases at init) have no bar.",
        table, lambda fig, t=table, b=bounds: draw(fig, t, b), size=(15.0, 5.5),
        checks=(Check("precision", "torch.finfo's ranges (information: the bench asserts the fractions)", None,
                      "; ".join(f"{r.format}: {r.above_max} of {r.tensors} tensors above max, "
                                f"{r.low_below_normal} with 1% below the smallest normal"
                                for r in counted.itertuples(index=False))),))


__all__ = ["FORMATS", "TENSORS", "draw", "limits", "model_section", "outside", "section", "span_table", "spans"]
