"""The report's hyperparameter-transfer figure (the paper's Figure 1: Yang et al., 2021, "Tensor Programs V"):
the final training loss against the learning rate, one curve per width, the standard parametrization and
muP side by side, from ``initcore.transfer.sweep`` frames; each width's best learning rate starred.

The sweep trains hundreds of small models (about 1.5 minutes on 2 cores), so the report draws it only when
asked: ``initcore report --out DIR --transfer``. The table needs no matplotlib; the drawing does.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from initcore import transfer
from initcore.report.page import require_matplotlib, write
from initcore.report.sections import Check, Section

TITLES = {"sp": "Standard parametrization (one learning rate)", "mup": "muP (tuned at width {base})"}
TOP = 4.0  # the y-axis's top, as a multiple of the panel's lowest loss: a curve that leaves it diverges or nearly


def runs(seed: int = 0) -> tuple[transfer.TransferRun, ...]:
    """The report's sweeps: ``initcore.transfer``'s defaults under each parametrization, seeds seed .. seed + 2."""
    seeds = tuple(range(seed, seed + len(transfer.SEEDS)))
    return tuple(transfer.TransferRun("mlp", p, seeds=seeds) for p in transfer.PARAMETRIZATIONS)


def table(frame: pd.DataFrame) -> pd.DataFrame:
    """What the figure plots, per parametrization, width and lr: the seed-mean ``loss`` (inf where a seed
    diverged), its ``low`` and ``high`` over the finite seeds, how many seeds ``diverged``, and ``best``
    (the argmin of ``transfer.best_lr``) with the lr's grid ``index``."""
    finite = frame.assign(loss=frame["loss"].astype(float).where(np.isfinite(frame["loss"].astype(float))))
    keys = ["parametrization", "width", "lr"]
    grouped = finite.groupby(keys, sort=True)
    out = grouped["loss"].agg(low="min", high="max").reset_index()
    out.insert(3, "loss", grouped["loss"].mean().to_numpy())
    out["seeds"] = grouped["seed"].nunique().to_numpy()
    out["diverged"] = frame.groupby(keys, sort=True)["diverged"].sum().to_numpy().astype(int)
    out.loc[out["diverged"] > 0, "loss"] = math.inf  # as best_lr counts it: never the argmin
    grid = np.sort(frame["lr"].unique())
    out["index"] = np.searchsorted(grid, out["lr"])
    best = transfer.best_lr(frame)[["parametrization", "width", "lr"]].assign(best=True)
    out = out.merge(best, on=["parametrization", "width", "lr"], how="left")
    out["best"] = out["best"].eq(True)
    order = {p: i for i, p in enumerate(transfer.PARAMETRIZATIONS)}
    return out.sort_values(["parametrization", "width", "lr"], key=lambda c: c.map(order) if c.name ==
                           "parametrization" else c, kind="stable").reset_index(drop=True)


def draw(fig, shown: pd.DataFrame, base: int | None = None) -> None:
    """Loss against lr (log2), a curve per width (darker: wider), SP and muP side by side on one y-axis; the
    seeds' range shaded, each width's best lr a star, a diverged lr an x at the top of the panel."""
    from matplotlib import colormaps

    parametrizations = [p for p in transfer.PARAMETRIZATIONS if p in set(shown["parametrization"])]
    axes = fig.subplots(1, len(parametrizations), sharey=True, squeeze=False)[0]
    widths = sorted(shown["width"].unique())
    cmap = colormaps["viridis"]
    colour = {w: cmap(0.85 * (1 - i / max(1, len(widths) - 1))) for i, w in enumerate(widths)}
    finite = shown.loc[np.isfinite(shown["loss"]), "loss"]
    low = float(finite.min()) if len(finite) else 1.0
    for ax, p in zip(axes, parametrizations, strict=True):
        here = shown[shown["parametrization"] == p]
        for width, rows in here.groupby("width", sort=True):
            ok = np.isfinite(rows["loss"])
            c = colour[width]
            ax.fill_between(rows["lr"][ok], rows["low"][ok], rows["high"][ok], color=c, alpha=0.15, linewidth=0)
            ax.plot(rows["lr"][ok], rows["loss"][ok], "o-", color=c, markersize=3, label=f"width {width}")
            best = rows[rows["best"]]
            ax.plot(best["lr"], best["loss"], "*", color=c, markersize=14, markeredgecolor="black",
                    markeredgewidth=0.6)
            gone = rows[~ok]
            ax.plot(gone["lr"], [0.97] * len(gone), "x", color=c, transform=ax.get_xaxis_transform())
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_ylim(low / 1.1, low * TOP)
        ax.set_title(TITLES[p].format(base=base if base is not None else widths[0]))
        ax.set_xlabel("learning rate (Adam)")
        ax.grid(True, alpha=0.3, which="both")
        ax.legend(fontsize=8, title="\u2605 best lr, \u00d7 diverged", title_fontsize=8)
    axes[0].set_ylabel("training loss (mean of the last steps, seed mean)")


def _detail(shown: pd.DataFrame, p: str) -> str:
    best = shown[shown["best"] & (shown["parametrization"] == p)].sort_values("width")
    moves = ", ".join(f"w{w}: 2^{math.log2(lr):.0f}" for w, lr in zip(best["width"], best["lr"], strict=True))
    steps = int(best["index"].iloc[-1] - best["index"].iloc[0]) if len(best) else 0
    return f"best lr per width: {moves}; {steps:+d} grid steps from the smallest width to the largest"


def section(sweeps: Sequence[transfer.TransferRun] | None = None, seed: int = 0) -> Section:
    """Run ``sweeps`` (default ``runs(seed)``) and return the figure's Section."""
    sweeps = runs(seed) if sweeps is None else tuple(sweeps)
    frame = pd.concat([transfer.sweep(run) for run in sweeps], ignore_index=True)
    shown = table(frame)
    first = sweeps[0]
    base = next((r.base for r in sweeps if r.parametrization == "mup"), None)
    checks = tuple(Check("transfer", f"{p}: the best lr {'stays' if p == 'mup' else 'falls as 1/width'} "
                                     "(bench/test_mup_transfer.py)", None, _detail(shown, p))
                   for p in transfer.PARAMETRIZATIONS if p in set(shown["parametrization"]))
    return Section(
        "transfer", "Hyperparameter transfer: loss against learning rate per width, SP and muP",
        f"A {first.model.upper()} learns a fixed random teacher (initcore.transfer.TeacherTask) with Adam for "
        f"{first.steps} steps at widths {', '.join(map(str, first.widths))}, {len(first.lrs)} learning rates, "
        f"seeds {', '.join(map(str, first.seeds))}; each point is the mean of the last {first.tail} steps' losses "
        "over the seeds (shaded: their range). Under the standard parametrization one Adam step changes a hidden "
        "layer's output by ~lr * width, so the best lr falls as 1/width (3 grid steps from 64 to 512); muP "
        "scales hidden and output learning rates by 1/width and starts the readout at 0, so the best lr found "
        "at the smallest width is the best at every width. bench/test_mup_transfer.py holds both.",
        shown, lambda fig, t=shown, b=base: draw(fig, t, b), size=(12.0, 5.0), checks=checks)


def write_transfer_report(out: str | os.PathLike, seed: int = 0,
                          sweeps: Sequence[transfer.TransferRun] | None = None, dpi: int = 110) -> Path:
    """The transfer figure alone, as a report page in ``out``; returns the path of ``index.html``.

    Raises:
        PlottingUnavailable: matplotlib cannot be imported (checked first: nothing is trained or written).
    """
    require_matplotlib()
    start = time.perf_counter()
    sections = [section(sweeps, seed)]
    return write(sections, out, seed, time.perf_counter() - start, dpi, title="Hyperparameter transfer",
                 source="the learning-rate sweeps of <code>initcore.transfer</code>")
