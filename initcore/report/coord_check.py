"""The coordinate check's figure in the mup package's layout, from a ``coord.measure`` frame.

One panel per step: at t = 0 the size rms(h_0) at init, after that the change rms(h_t - h_0); size against
width, log-log, a line per coordinate. A coordinate keeps its colour in every panel (one legend for the
figure); a value of 0, which a log axis cannot show, is a hollow triangle in its colour near the panel's
floor (one height per coordinate, so none hides another) and is named in the panel, as is a coordinate
the step lacks. The panels after step 0 share their y-limits, each spanning
at least ``MIN_DECADES`` decades, so that a 10% change looks like one; each panel names its largest slope.
"""

from __future__ import annotations

import math
import textwrap

import numpy as np
import pandas as pd

from initcore import coord

MIN_DECADES = 1.0  # the least span of a panel's y-axis, in decades: a flat line reads as flat
ZERO_Y = 0.03  # where the first 0 sits, as a fraction of the panel's height from its floor
ZERO_STEP = 0.035  # and how far above it the next coordinate's


def colours(names: list[str]) -> dict[str, tuple]:
    """A colour per coordinate: tab10 up to 10, tab20 up to 20, else evenly along viridis."""
    from matplotlib import colormaps

    if len(names) <= 10:
        cmap, points = colormaps["tab10"], range(len(names))
        return {n: cmap(i) for n, i in zip(names, points, strict=True)}
    if len(names) <= 20:
        cmap = colormaps["tab20"]
        return {n: cmap(i) for i, n in enumerate(names)}
    cmap = colormaps["viridis"]
    return {n: cmap(i / (len(names) - 1)) for i, n in enumerate(names)}


def panels(frame: pd.DataFrame) -> pd.DataFrame:
    """What each panel shows, tidy: ``coordinate, step, width, value``: at step 0 each row's ``act_rms``
    (and each attention row's logit std), after it the change of ``coord.coordinates``."""
    coords = coord.coordinates(frame)
    rows = frame[(frame["kind"] != "param") & (frame["step"] == 0)]
    rows = rows[rows["module"].isin(coord.measured(frame))]  # an SDPA call's own row: only its :logits
    init = pd.DataFrame({"coordinate": rows["module"], "step": 0, "width": rows["width"], "value": rows["act_rms"]})
    logits = coords[(coords["step"] == 0) & (coords["kind"] == "logits")]
    later = coords[coords["step"] >= 1]
    cols = ["coordinate", "step", "width", "value"]
    return pd.concat([init[cols], logits[cols], later[cols]], ignore_index=True)


def _limits(values: np.ndarray) -> tuple[float, float] | None:
    """Log-axis limits around the positive finite ``values``, at least ``MIN_DECADES`` wide, with a margin."""
    shown = values[np.isfinite(values) & (values > 0)]
    if not len(shown):
        return None
    low, high = math.log10(shown.min()), math.log10(shown.max())
    pad = max(0.0, MIN_DECADES - (high - low)) / 2 + 0.08 * max(high - low, MIN_DECADES)
    return 10 ** (low - pad), 10 ** (high + pad)


def draw(fig, frame: pd.DataFrame, title: str = "", verdicts: pd.DataFrame | None = None) -> None:
    """mup's coordinate-check layout on a matplotlib ``Figure`` (see the module docstring). ``verdicts``: a
    ``coord.verdicts`` frame, for the slopes named in each panel (default: computed with no exceptions)."""
    from matplotlib.lines import Line2D

    shown = panels(frame)
    verdicts = coord.verdicts(frame) if verdicts is None else verdicts
    names = list(dict.fromkeys(shown["coordinate"]))
    colour = colours(names)
    steps = sorted(shown["step"].unique())
    axes = fig.subplots(1, len(steps), sharex=True, squeeze=False)[0]
    later = _limits(shown.loc[shown["step"] >= 1, "value"].to_numpy(dtype=float))
    for ax, step in zip(axes, steps, strict=True):
        here = shown[shown["step"] == step]
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        limits = _limits(here["value"].to_numpy(dtype=float)) if step == 0 else later
        if limits is not None:
            ax.set_ylim(*limits)
        zeros = []
        for name, group in here.groupby("coordinate", sort=False):
            values = group["value"].to_numpy(dtype=float)
            moved = np.isfinite(values) & (values > 0)
            if moved.any():
                ax.plot(group["width"][moved], values[moved], marker="o", color=colour[name], label=name)
            if (values == 0).any():  # near the floor: a log axis has no 0
                y = ZERO_Y + ZERO_STEP * len(zeros)
                ax.plot(group["width"][values == 0], [y] * int((values == 0).sum()), linestyle=":", marker="v",
                        markerfacecolor="none", color=colour[name], transform=ax.get_xaxis_transform())
                zeros.append(name)
        missing = [n for n in names if n not in set(here["coordinate"])]
        notes = []
        if zeros:
            notes.append("\u25bd at 0: " + ", ".join(zeros))
        if missing:
            notes.append("missing: " + ", ".join(missing))
        if notes:
            ax.text(0.02, 0.98, textwrap.fill("; ".join(notes), 44), transform=ax.transAxes, va="top",
                    fontsize="x-small")
        if step == 0:
            ax.set_title("t = 0: rms(h_0)", fontsize="medium")
        else:
            judged = verdicts[(verdicts["step"] == step) & verdicts["slope"].notna()]
            line = ""
            if len(judged):
                top = judged.loc[judged["slope"].abs().idxmax()]
                line = f"\nlargest slope {top['slope']:+.2f} ({top['coordinate']})"
            failing = int(judged["verdict"].isin(coord.FAILING).sum())
            ax.set_title(f"t = {step}: rms(h_t - h_0){line}", fontsize="medium",
                         color="tab:red" if failing else "black")
        ax.set_xlabel("width")
    axes[0].set_ylabel("size")
    handles = [Line2D([], [], color=colour[n], marker="o", label=n) for n in names]
    fig.legend(handles=handles, loc="outside right upper", fontsize="small", title="coordinate")
    if title:
        fig.suptitle(title)
