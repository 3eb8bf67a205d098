"""Figures of the report, each drawn on the ``matplotlib.figure.Figure`` it is handed (no pyplot, no global
backend), from the table its section holds. Conventions: measured values as lines with markers, theory
as a wide pale band under them, the baselines' 16-seed band as a shaded area or error bars, thresholds
as dashed red lines, an MLP's output layer (a Linear with no activation after it) as a hollow marker.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

COLORS = ("tab:red", "tab:orange", "tab:green", "tab:blue", "tab:purple", "tab:brown", "tab:pink", "tab:gray",
          "tab:olive", "tab:cyan")
# Theory as a wide pale band under the measured line: visible where the two coincide, as they mostly do.
THEORY_STYLE = {"linestyle": "-", "linewidth": 7, "alpha": 0.25, "solid_capstyle": "round"}
DENSITY_STYLE = {"linestyle": "--", "linewidth": 1.2, "alpha": 0.9}
THRESHOLD_STYLE = {"color": "red", "linestyle": "--", "linewidth": 1.2, "alpha": 0.8}
BAND_ALPHA = 0.15


def _legend(ax, **kw) -> None:
    handles, _ = ax.get_legend_handles_labels()
    if handles:
        ax.legend(fontsize=kw.pop("fontsize", 7), **kw)


def thresholds(ax, lines: Sequence[tuple[float, str]], horizontal: bool = True) -> None:
    """Dashed red lines at each (value, label): the thresholds a caption cites."""
    for value, label in lines:
        (ax.axhline if horizontal else ax.axvline)(value, label=label, **THRESHOLD_STYLE)


def seed_band(ax, x, low, high, color: str, label: str | None = None) -> None:
    ax.fill_between(x, low, high, color=color, alpha=BAND_ALPHA, linewidth=0, label=label)


def mark_output_layer(ax, x: float, y: float, color: str, annotate: bool) -> None:
    """A hollow marker on an MLP's last layer, which has no activation: its value is the Linear's output."""
    ax.plot([x], [y], "s", markersize=9, markerfacecolor="none", markeredgecolor=color, markeredgewidth=1.5)
    if annotate:
        ax.annotate("output layer: linear,\nno activation", (x, y), xytext=(-70, 18), textcoords="offset points",
                    fontsize=7, arrowprops={"arrowstyle": "->", "color": "gray"})


def per_run(fig, table: pd.DataFrame, y: str, ylabel: str, title: str, theory: str | None = None,
            band: str | None = None, log: bool = True, reference: float | None = None,
            lines: Sequence[tuple[float, str]] = (), output_layer: bool = True) -> None:
    """One line per ``run`` over ``layer``; its theory column as a pale band, its seed band (columns
    ``band + '_low'``, ``band + '_high'``) shaded, threshold lines, the output layer hollow."""
    ax = fig.add_subplot(1, 1, 1)
    for i, (color, (label, rows)) in enumerate(zip(COLORS, table.groupby("run", sort=False), strict=False)):
        if theory is not None and rows[theory].notna().any():
            ax.plot(rows["layer"], rows[theory], color=color, **THEORY_STYLE)
        if band is not None and rows[f"{band}_low"].notna().any():
            seed_band(ax, rows["layer"], rows[f"{band}_low"], rows[f"{band}_high"], color)
        ax.plot(rows["layer"], rows[y], "o-", color=color, label=label, linewidth=1.5, markersize=4)
        if output_layer and len(rows) and np.isfinite(rows[y].iloc[-1]):
            mark_output_layer(ax, rows["layer"].iloc[-1], rows[y].iloc[-1], color, annotate=i == 0)
    if theory is not None:
        ax.plot([], [], color="gray", label="theory", **THEORY_STYLE)
    if band is not None:
        ax.fill_between([], [], [], color="gray", alpha=BAND_ALPHA, label="baseline: 16 seeds, mean ± 2 sd")
    if reference is not None:
        ax.axhline(reference, color="black", linestyle=":", alpha=0.5)
    thresholds(ax, lines)
    ax.set(xlabel="layer", ylabel=ylabel, title=title)
    if log:
        ax.set_yscale("log")
    ax.grid(True, alpha=0.3)
    _legend(ax)


def weights(fig, table: pd.DataFrame, values: Mapping[str, np.ndarray]) -> None:
    axes = fig.subplots(2, 2).ravel()
    for ax, color, row in zip(axes, COLORS, table.itertuples(index=False), strict=False):
        w = values[row.run]
        ax.hist(w, bins=80, density=True, color=color, alpha=0.6, label="measured")
        lim = max(abs(row.weight_min), abs(row.weight_max))
        grid = np.linspace(-lim, lim, 400)
        if row.distribution == "uniform":
            a = row.bound_theory
            density = np.where(np.abs(grid) <= a, 1.0 / (2.0 * a), 0.0)
        else:
            s = row.weight_std_theory
            density = np.exp(-0.5 * (grid / s) ** 2) / (s * math.sqrt(2.0 * math.pi))
        ax.plot(grid, density, color="black", label="theory", **DENSITY_STYLE)
        ax.set_title(f"{row.run}: {row.strategy}, std {row.weight_std:.3g} (theory {row.weight_std_theory:.3g})",
                     fontsize=9)
        ax.set(xlabel="weight value", ylabel="density")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(f"Initialized weights of {table['module'].iloc[0]} ({table['fan_out'].iloc[0]} x "
                 f"{table['fan_in'].iloc[0]})")


def xavier(fig, table: pd.DataFrame) -> None:
    ax = fig.add_subplot(1, 1, 1)
    x = np.arange(len(table))
    width = 0.2
    bars = (("forward_ratio", "forward, measured", "tab:blue", 1.0),
            ("forward_ratio_theory", "forward, theory", "tab:blue", 0.4),
            ("backward_ratio", "backward, measured", "tab:orange", 1.0),
            ("backward_ratio_theory", "backward, theory", "tab:orange", 0.4))
    for i, (col, label, color, alpha) in enumerate(bars):
        at = x + (i - 1.5) * width
        ax.bar(at, table[col], width, label=label, color=color, alpha=alpha, edgecolor=color)
        measured = col.removesuffix("_theory") == col
        if measured and f"{col}_low" in table and table[f"{col}_low"].notna().any():
            centre = table[f"{col}_centre"]
            ax.errorbar(at, centre, yerr=[centre - table[f"{col}_low"], table[f"{col}_high"] - centre], fmt="none",
                        ecolor="black", capsize=3, linewidth=1,
                        label="baseline: 16 seeds, mean ± 2 sd" if col == "forward_ratio" else None)
    ax.axhline(1.0, color="red", linestyle="--", linewidth=1.5, label="the notebook's claim: 1 for every shape")
    ax.set_xticks(x, [f"{s}\n{fi}->{fo}" for s, fi, fo in zip(table["shape"], table["fan_in"], table["fan_out"],
                                                              strict=True)])
    ax.set(ylabel="variance ratio", title="One Xavier layer: forward 2 fan_in/(fan_in+fan_out), "
                                          "backward 2 fan_out/(fan_in+fan_out)")
    ax.grid(True, axis="y", alpha=0.3)
    _legend(ax, fontsize=8)


def activation_grid(fig, table: pd.DataFrame) -> None:
    activations = list(dict.fromkeys(table["activation"]))
    cols = 2
    axes = fig.subplots(math.ceil(len(activations) / cols), cols, squeeze=False).ravel()
    styles = {"Xavier": "tab:blue", "He": "tab:red", "Xavier, gain 5/3": "tab:green"}
    for i, (ax, act) in enumerate(zip(axes, activations, strict=False)):
        rows = table[table["activation"] == act]
        for init_name, r in rows.groupby("init", sort=False):
            color = styles.get(init_name, "gray")
            ax.plot(r["layer"], r["act_std_theory"], color=color, **THEORY_STYLE)
            if r["act_std_low"].notna().any():
                seed_band(ax, r["layer"], r["act_std_low"], r["act_std_high"], color)
            ax.plot(r["layer"], r["act_std"], "o-", color=color, markersize=4, linewidth=1.5,
                    label=f"{init_name} (final {r['act_std'].iloc[-1]:.3g})")
            mark_output_layer(ax, r["layer"].iloc[-1], r["act_std"].iloc[-1], color, annotate=i == 0 and
                              color == "tab:blue")
        ax.plot([], [], color="gray", label="mean-field theory", **THEORY_STYLE)
        ax.axhline(1.0, color="gray", linestyle=":", alpha=0.7)
        ax.set_yscale("log")
        ax.set(title=f"{act}", xlabel="layer", ylabel="activation std")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)


def transformer(fig, table: pd.DataFrame) -> None:
    axes = fig.subplots(1, 3)
    for color, (strategy, rows) in zip(("tab:blue", "tab:green", "tab:red"), table.groupby("strategy", sort=False),
                                       strict=False):
        axes[0].plot(rows["layer"], rows["residual_std_theory"], color=color, **THEORY_STYLE)
        for ax, col in ((axes[0], "residual_std"), (axes[1], "attn_grad_norm"), (axes[2], "ffn_grad_norm")):
            if rows[f"{col}_low"].notna().any():
                seed_band(ax, rows["layer"], rows[f"{col}_low"], rows[f"{col}_high"], color)
        axes[0].plot(rows["layer"], rows["residual_std"], "o-", color=color, label=strategy, linewidth=1.5)
        axes[1].plot(rows["layer"], rows["attn_grad_norm"], "o-", color=color, label=strategy, linewidth=2)
        axes[2].plot(rows["layer"], rows["ffn_grad_norm"], "s-", color=color, label=strategy, linewidth=2)
    axes[0].plot([], [], color="gray", label="sum of branch variances", **THEORY_STYLE)
    axes[0].fill_between([], [], [], color="gray", alpha=BAND_ALPHA, label="baseline: 16 seeds, ± 2 sd")
    titles = ("Residual stream std per block", "Attention gradient norm", "Feed-forward gradient norm")
    for ax, title, ylabel in zip(axes, titles, ("std", "gradient norm", "gradient norm"), strict=True):
        ax.set(title=title, xlabel="block", ylabel=ylabel)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    axes[1].set_yscale("log")
    axes[2].set_yscale("log")


def signal_propagation(fig, table: pd.DataFrame, group: str = "run") -> None:
    """NFNets' signal propagation plot (Brock et al. 2021, Fig. 1): per block, the residual stream's average
    channel squared mean and average channel variance, and the residual branches' average channel variance."""
    panels = (("stream_channel_sq_mean", "average channel squared mean", "stream"),
              ("stream_channel_var", "average channel variance", "stream"),
              ("branch_channel_var", "residual-branch variance", "branch"))
    axes = fig.subplots(1, 3)
    for color, (label, rows) in zip(COLORS, table.groupby(group, sort=False), strict=False):
        for ax, (col, _, _) in zip(axes, panels, strict=True):
            if col == "branch_channel_var":
                for branch, marker in (("attn", "o"), ("ffn", "s")):
                    part = rows[rows["branch"] == branch]
                    ax.plot(part["block"], part[col], marker + "-", color=color, markersize=4, linewidth=1.2,
                            label=f"{label}, {branch}")
            else:
                part = rows[rows["branch"] == "attn"]  # one row per block carries the stream's columns
                ax.plot(part["block"], part[col], "o-", color=color, markersize=4, linewidth=1.5, label=label)
    for ax, (_, title, _) in zip(axes, panels, strict=True):
        ax.set(title=title, xlabel="block", ylabel=title)
        ax.set_yscale("log")
        ax.grid(True, alpha=0.3)
        _legend(ax)


def depth_scaling(fig, final: pd.DataFrame, per_block: pd.DataFrame) -> None:
    """Left: the stream's variance after the last block against depth L (log-log), one line per strategy.
    Right: the stream's variance block by block at the largest L."""
    left, right = fig.subplots(1, 2)
    for color, (strategy, rows) in zip(COLORS, final.groupby("strategy", sort=False), strict=False):
        left.plot(rows["n_layers"], rows["stream_var"], "o-", color=color,
                  label=f"{strategy} (expected: {rows['expected'].iloc[0]})")
        blocks = per_block[per_block["strategy"] == strategy]
        right.plot(blocks["block"], blocks["stream_var"], "-", color=color, label=strategy)
    left.set(xscale="log", yscale="log", xlabel="depth L (blocks)", ylabel="stream variance after block L",
             title="Residual stream against depth")
    right.set(yscale="log", xlabel="block", ylabel="stream variance",
              title=f"Block by block, L = {int(per_block['n_layers'].max())}")
    for ax in (left, right):
        ax.grid(True, alpha=0.3, which="both")
        _legend(ax)


def attention(fig, logits: pd.DataFrame, entropy: pd.DataFrame) -> None:
    """Left: block 0's logit std per strategy against its theory. Right: normalized entropy against
    sequence length."""
    left, right = fig.subplots(1, 2)
    x = np.arange(len(logits))
    left.bar(x - 0.2, logits["logit_std"], 0.4, color="tab:blue", label="measured")
    left.bar(x + 0.2, logits["logit_std_theory"], 0.4, color="tab:blue", alpha=0.35, label="theory")
    left.set_xticks(x, logits["strategy"], rotation=30, ha="right", fontsize=8)
    left.set(yscale="log", ylabel="pre-softmax logit std", title=f"Block 0 logit std, seq {logits['seq_len'].iloc[0]}")
    for color, (strategy, rows) in zip(COLORS, entropy.groupby("strategy", sort=False), strict=False):
        right.plot(rows["seq_len"], rows["attn_entropy_norm"], "o-", color=color, label=strategy)
    right.axhline(1.0, color="gray", linestyle=":", label="uniform attention")
    right.set(xscale="log", xlabel="sequence length", ylabel="entropy / log(keys)",
              title="Softmax entropy, normalized")
    for ax in (left, right):
        ax.grid(True, alpha=0.3)
        _legend(ax)


def mha_trap(fig, table: pd.DataFrame) -> None:
    ax = fig.add_subplot(1, 1, 1)
    blocks = sorted(table["block"].unique())
    runs = list(dict.fromkeys(table["run"]))
    width = 0.8 / len(runs)
    for i, (color, run) in enumerate(zip(COLORS[3:] + COLORS, runs, strict=False)):
        rows = table[table["run"] == run].set_index("block").loc[blocks]
        at = np.arange(len(blocks)) + (i - (len(runs) - 1) / 2) * width
        ax.bar(at, rows["logit_std"], width, color=color, label=f"{run}: measured")
        ax.scatter(at, rows["logit_std_theory"], marker="_", s=400, color="black", zorder=3,
                   label="theory" if i == 0 else None)
    ax.set_xticks(np.arange(len(blocks)), [f"block {b}" for b in blocks])
    ax.set(ylabel="pre-softmax logit std", title="nn.MultiheadAttention's packed in_proj: half the logit std")
    ax.grid(True, axis="y", alpha=0.3)
    _legend(ax)


def width(fig, table: pd.DataFrame) -> None:
    """The coordinate check: each row's size against width, log-log, one line per row, a panel per strategy."""
    strategies = list(dict.fromkeys(table["strategy"]))
    axes = fig.subplots(1, len(strategies), squeeze=False).ravel()
    for ax, strategy in zip(axes, strategies, strict=True):
        rows = table[table["strategy"] == strategy]
        for color, (row, part) in zip(COLORS, rows.groupby("row", sort=False), strict=False):
            slope = part["slope"].iloc[0]
            ax.plot(part["width"], part["size"], "o-", color=color, markersize=4, label=f"{row} (slope {slope:+.2f})")
        ax.set(xscale="log", yscale="log", xlabel="width (d_model)", ylabel="size (std)",
               title=f"{strategy}: expected slope {rows['expected_slope'].iloc[0]:g}")
        widths = sorted(rows["width"].unique())
        ax.set_xticks(widths, [str(w) for w in widths])
        ax.minorticks_off()
        ax.grid(True, alpha=0.3, which="both")
        _legend(ax, fontsize=6)


def failures(fig, table: pd.DataFrame) -> None:
    """Each failure mode's defining statistic per layer, before and after its first fix, with the threshold
    (and, where there is one, the theory and the seed band of the failing run)."""
    modes = list(dict.fromkeys(table["mode"]))
    axes = fig.subplots(math.ceil(len(modes) / 2), 2, squeeze=False).ravel()
    for ax, mode in zip(axes, modes, strict=False):
        rows = table[table["mode"] == mode]
        stat = rows["statistic"].iloc[0]
        for when, color in (("failing", "tab:red"), ("fixed", "tab:green")):
            part = rows[rows["when"] == when]
            if part["theory"].notna().any():
                ax.plot(part["layer"], part["theory"], color=color, **THEORY_STYLE)
            if part["low"].notna().any():
                seed_band(ax, part["layer"], part["low"], part["high"], color)
            ax.plot(part["layer"], part["value"], "o-", color=color, markersize=4,
                    label=f"{when}: {part['run'].iloc[0]}")
        thresholds(ax, [(rows["threshold"].iloc[0], f"threshold {rows['threshold'].iloc[0]:g}")])
        if stat == "grad_norm":
            ax.set_yscale("log")
        ax.set(title=f"{mode}: {stat}", xlabel="layer", ylabel=stat)
        ax.grid(True, alpha=0.3)
        _legend(ax, fontsize=6)


def model_rows(fig, table: pd.DataFrame, columns: Sequence[tuple[str, str]], title: str, log: bool = True,
               lines: Sequence[tuple[float, str]] = ()) -> None:
    """A user model's rows in trace order (x: row, labelled by module name), one line per column."""
    ax = fig.add_subplot(1, 1, 1)
    x = np.arange(len(table))
    for color, (col, label) in zip(COLORS[3:] + COLORS, columns, strict=False):
        if col in table and table[col].notna().any():
            ax.plot(x, table[col], "o-", color=color, markersize=4, label=label)
    thresholds(ax, lines)
    step = max(1, len(table) // 40)
    ax.set_xticks(x[::step], table["module"].astype(str).iloc[::step], rotation=90, fontsize=6)
    ax.set(title=title, xlabel="row (module, in the order it ran)")
    if log:
        ax.set_yscale("log")
    ax.grid(True, alpha=0.3)
    _legend(ax)


def _at_least_a_decade(ax, values) -> None:
    """A log y-axis spanning a decade or more around ``values``: a 7% wiggle then looks like 7%, not a cliff."""
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v) & (v > 0)]
    if len(v):
        lo, hi = v.min(), v.max()
        pad = max(1.0, math.sqrt(10 * lo / hi))  # widen both ends equally up to a ratio of 10
        ax.set_ylim(lo / pad / 1.15, hi * pad * 1.15)


def model_stream(fig, table: pd.DataFrame) -> None:
    """A model's residual stream, one point per block. Left: its std. Right: the gradient norm wrt it."""
    left, right = fig.subplots(1, 2)
    x = np.arange(len(table))
    step = max(1, len(table) // 30)
    for ax, col, color, label in ((left, "act_std", COLORS[0], "stream std"),
                                  (right, "out_grad_norm", COLORS[1], "gradient norm wrt the stream")):
        ax.plot(x, table[col], "o-", color=color, label=label)
        ax.set_yscale("log")
        _at_least_a_decade(ax, table[col])
        ax.set_xticks(x[::step], table["module"].astype(str).iloc[::step], rotation=90, fontsize=6)
        ax.set(xlabel="block, in the order it ran", ylabel=label, title=f"{label[0].upper()}{label[1:]} per block")
        ax.grid(True, alpha=0.3)
        _legend(ax)


def model_attention(fig, table: pd.DataFrame) -> None:
    """A model's attention rows (``<module>:sdpa``) by layer. Left: the pre-softmax logit std. Right: the
    softmax entropy over log(keys seen), 1 for uniform attention, and the mean largest weight."""
    left, right = fig.subplots(1, 2)
    x = np.arange(len(table))
    left.plot(x, table["logit_std"], "o-", color=COLORS[0], label="logit std")
    left.set(yscale="log", ylabel="pre-softmax logit std", title="Attention logit std per layer")
    _at_least_a_decade(left, table["logit_std"])
    right.plot(x, table["attn_entropy_norm"], "o-", color=COLORS[1], label="entropy / log(keys)")
    right.plot(x, table["attn_max"], "s--", color=COLORS[2], label="largest weight")
    right.axhline(1.0, color="gray", linestyle=":", label="uniform attention")
    right.set(ylim=(0, 1.05), ylabel="fraction", title="Softmax entropy and peak per layer")
    step = max(1, len(table) // 30)
    for ax in (left, right):
        ax.set_xticks(x[::step], table["module"].astype(str).iloc[::step], rotation=90, fontsize=6)
        ax.set_xlabel("attention call (module:sdpa, in the order it ran)")
        ax.grid(True, alpha=0.3)
        _legend(ax)
