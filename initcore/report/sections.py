"""The notebook's figures, regenerated from the probe, with theory beside the measurements, on one page.

``collect(seed)`` runs the experiments (``initcore.experiments``) through ``initcore.probe`` and returns
one ``Section`` per figure: the table of what it plots (measured columns beside their ``*_theory``
columns) and how to draw it. ``write(sections, out)`` renders each as ``<name>.png`` beside
``<name>.csv`` and writes ``index.html`` with relative links, so the page opens from disk with no
server. Every file is written atomically (a temporary file in the same folder, then ``os.replace``).

matplotlib is an optional extra (``pip install 'initcore[plot]'``), imported only to draw. Figures are
``matplotlib.figure.Figure`` objects saved through the Agg canvas, never pyplot: no global backend is
switched, so calling this from a notebook leaves its inline backend alone (the effect of
``matplotlib.use("Agg")`` without its side effect).
"""

from __future__ import annotations

import html
import io
import math
import os
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from initcore import diagnose, experiments, probe, theory

__all__ = ["INSTALL_HINT", "PlottingUnavailable", "ReportRuns", "Section", "collect", "require_matplotlib",
           "write", "write_report"]

INSTALL_HINT = "matplotlib is not installed; pip install 'initcore[plot]'"


class PlottingUnavailable(RuntimeError):
    """matplotlib cannot be imported: the report cannot draw."""


def require_matplotlib() -> None:
    """Raise ``PlottingUnavailable`` (with ``INSTALL_HINT``) unless matplotlib imports."""
    try:
        import matplotlib  # noqa: F401
        from matplotlib.figure import Figure  # noqa: F401
    except ImportError as e:
        raise PlottingUnavailable(INSTALL_HINT) from e


@dataclass(frozen=True)
class ReportRuns:
    """The runs each figure is made of; the experiments' own by default (the transformer at its reduced
    size). Tests pass smaller ones."""

    depth: Mapping[str, experiments.MLPRun] = field(default_factory=lambda: experiments.DEPTH_RUNS)
    xavier: Mapping[str, experiments.MLPRun] = field(default_factory=lambda: experiments.XAVIER_RUNS)
    activation: Mapping[tuple[str, str], experiments.MLPRun] = field(
        default_factory=lambda: experiments.ACTIVATION_RUNS)
    transformer: Mapping[str, experiments.TransformerRun] = field(
        default_factory=lambda: experiments.TRANSFORMER_RUNS)


@dataclass(frozen=True)
class Section:
    """One figure (or a table alone, when ``draw`` is None) of the report."""

    name: str  # file stem: <name>.png, <name>.csv
    title: str
    caption: str  # what to look at, and where the theory comes from
    table: pd.DataFrame  # exactly what the figure plots
    draw: Callable[[object], None] | None = None  # draws on a matplotlib Figure
    size: tuple[float, float] = (8.0, 5.0)  # inches


# --------------------------------------------------------------------------------------------------
# Measuring
# --------------------------------------------------------------------------------------------------


def _build(run, seed: int):
    return run.build(torch.Generator().manual_seed(seed))


def _trace(run, seed: int, loss: str | None = None) -> pd.DataFrame:
    model, inputs = _build(run, seed)
    return probe.trace(model, inputs, loss=loss or run.loss)


def _linear_rows(frame: pd.DataFrame) -> pd.DataFrame:
    return frame[frame["kind"] == "linear"].reset_index(drop=True)


def _mlp_profile(label: str, run, frame: pd.DataFrame) -> pd.DataFrame:
    """One row per Linear layer: the measured statistics the figures use, and the mean field beside them."""
    rows = _linear_rows(frame)
    predicted = probe.mlp_theory(run.model, run.init, gain=run.gain, bias=run.bias or 0.0).set_index("layer")
    return pd.DataFrame({
        "run": label, "key": run.key, "layer": rows["layer"].to_numpy(), "module": rows["module"].to_numpy(),
        "act_std": rows["act_std"].to_numpy(),
        "act_std_theory": rows["layer"].map(predicted["act_std_theory"]).to_numpy(dtype=np.float64),
        "act_mean": rows["act_mean"].to_numpy(), "abs_act_mean": rows["act_mean"].abs().to_numpy(),
        "grad_norm": rows["grad_norm"].to_numpy(), "dead_frac": rows["dead_frac"].to_numpy(),
        "saturated_frac": rows["saturated_frac"].to_numpy(),
    })


def _xavier_ratios(name: str, run, seed: int) -> dict:
    """Var(y)/Var(x) and Var(dL/dx)/Var(dL/dy) of one Xavier layer, measured and predicted.

    The backward ratio needs dL/dy with a variance: the loss is a fixed random projection of y
    (probe's "random"), so dL/dy = r/N; the input requires grad, so dL/dx lands in ``x.grad``.
    """
    model, x = _build(run, seed)
    x.requires_grad_(True)
    frame = probe.trace(model, x, loss="random")
    row = _linear_rows(frame).iloc[0]
    fan_in, fan_out = run.model.in_features, run.model.width
    n_out = x.shape[0] * fan_out
    out_grad_ms = row["out_grad_norm"] ** 2 / n_out  # E[(dL/dy)²]
    in_grad_ms = float(x.grad.square().mean())  # E[(dL/dx)²]
    var = theory.init_variance(run.init, fan_in, fan_out)
    return {"shape": name, "fan_in": fan_in, "fan_out": fan_out, "key": run.key,
            "forward_ratio": row["act_std"] ** 2 / float(x.detach().var()),
            "forward_ratio_theory": theory.forward_ratio(fan_in, var),
            "backward_ratio": in_grad_ms / out_grad_ms,
            "backward_ratio_theory": theory.backward_ratio(fan_out, var)}


def _weights(label: str, run, model, layer: int = 1) -> tuple[dict, np.ndarray]:
    """The initialized weight matrix of ``layers[layer]``: its statistics against the strategy's theory."""
    w = model.layers[layer].weight.detach().double().numpy().ravel()
    fan_out, fan_in = model.layers[layer].weight.shape
    var = theory.init_variance(run.init, fan_in, fan_out, run.gain)
    uniform = run.init.endswith("_uniform")
    return ({"run": label, "key": run.key, "strategy": run.init, "module": f"layers.{layer}", "fan_in": fan_in,
             "fan_out": fan_out, "weight_std": float(w.std(ddof=1)), "weight_std_theory": math.sqrt(var),
             "weight_min": float(w.min()), "weight_max": float(w.max()),
             "distribution": "uniform" if uniform else "normal",
             "bound_theory": theory.uniform_bound(var) if uniform else math.nan}, w)


def _transformer_profile(label: str, run, seed: int) -> pd.DataFrame:
    """Per block: residual-stream std, measured and as the sum of the measured branch variances predicts
    (``theory.residual_variance``: branch outputs uncorrelated with the stream), and the gradient norms."""
    model, idx = _build(run, seed)
    frame = probe.trace(model, idx, loss=run.loss)
    with torch.no_grad():
        input_var = float(model.embed(idx).var())
    by_kind = {k: frame[frame["kind"] == k].set_index("layer") for k in ("attn", "ffn", "block")}
    layers = by_kind["block"].index.to_numpy()
    branch_var = (by_kind["attn"]["act_std"] ** 2 + by_kind["ffn"]["act_std"] ** 2).loc[layers].to_numpy()
    return pd.DataFrame({
        "strategy": label, "key": run.key, "layer": layers,
        "residual_std": by_kind["block"]["act_std"].to_numpy(),
        "residual_std_theory": np.sqrt(theory.residual_variance(len(layers), branch_var, input_var)),
        "attn_std": by_kind["attn"]["act_std"].loc[layers].to_numpy(),
        "ffn_std": by_kind["ffn"]["act_std"].loc[layers].to_numpy(),
        "attn_grad_norm": by_kind["attn"]["grad_norm"].loc[layers].to_numpy(),
        "ffn_grad_norm": by_kind["ffn"]["grad_norm"].loc[layers].to_numpy(),
        "embedding_std": math.sqrt(input_var),
    })


# --------------------------------------------------------------------------------------------------
# Drawing (matplotlib imported by the caller of draw: these only use the Figure handed to them)
# --------------------------------------------------------------------------------------------------

_COLORS = ("tab:red", "tab:orange", "tab:green", "tab:blue", "tab:purple", "tab:brown")
# Theory as a wide pale band under the measured line: visible where the two coincide, as they mostly do.
_THEORY_STYLE = {"linestyle": "-", "linewidth": 7, "alpha": 0.25, "solid_capstyle": "round"}
_DENSITY_STYLE = {"linestyle": "--", "linewidth": 1.2, "alpha": 0.9}


def _per_run(fig, table: pd.DataFrame, y: str, ylabel: str, title: str, theory_col: str | None = None,
             log: bool = True, reference: float | None = None) -> None:
    ax = fig.add_subplot(1, 1, 1)
    for color, (label, rows) in zip(_COLORS, table.groupby("run", sort=False), strict=False):
        if theory_col is not None:
            ax.plot(rows["layer"], rows[theory_col], color=color, **_THEORY_STYLE)
        ax.plot(rows["layer"], rows[y], "o-", color=color, label=label, linewidth=1.5, markersize=4)
    if theory_col is not None:
        ax.plot([], [], color="gray", label="mean-field theory", **_THEORY_STYLE)
    if reference is not None:
        ax.axhline(reference, color="black", linestyle=":", alpha=0.5)
    ax.set(xlabel="layer", ylabel=ylabel, title=title)
    if log:
        ax.set_yscale("log")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)


def _draw_weights(fig, table: pd.DataFrame, weights: Mapping[str, np.ndarray]) -> None:
    axes = fig.subplots(2, 2).ravel()
    for ax, color, row in zip(axes, _COLORS, table.itertuples(index=False), strict=False):
        w = weights[row.run]
        ax.hist(w, bins=80, density=True, color=color, alpha=0.6, label="measured")
        lim = max(abs(row.weight_min), abs(row.weight_max))
        grid = np.linspace(-lim, lim, 400)
        if row.distribution == "uniform":
            a = row.bound_theory
            density = np.where(np.abs(grid) <= a, 1.0 / (2.0 * a), 0.0)
        else:
            s = row.weight_std_theory
            density = np.exp(-0.5 * (grid / s) ** 2) / (s * math.sqrt(2.0 * math.pi))
        ax.plot(grid, density, color="black", label="theory", **_DENSITY_STYLE)
        ax.set_title(f"{row.run}: {row.strategy}, std {row.weight_std:.3g} (theory {row.weight_std_theory:.3g})",
                     fontsize=9)
        ax.set(xlabel="weight value", ylabel="density")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle("Initialized weights of layers.1 (512 x 512)")


def _draw_xavier(fig, table: pd.DataFrame) -> None:
    ax = fig.add_subplot(1, 1, 1)
    x = np.arange(len(table))
    width = 0.2
    bars = (("forward_ratio", "forward, measured", "tab:blue", 1.0), ("forward_ratio_theory", "forward, theory",
                                                                      "tab:blue", 0.4),
            ("backward_ratio", "backward, measured", "tab:orange", 1.0),
            ("backward_ratio_theory", "backward, theory", "tab:orange", 0.4))
    for i, (col, label, color, alpha) in enumerate(bars):
        ax.bar(x + (i - 1.5) * width, table[col], width, label=label, color=color, alpha=alpha, edgecolor=color)
    ax.axhline(1.0, color="red", linestyle="--", linewidth=1.5, label="the notebook's claim: 1 for every shape")
    ax.set_xticks(x, [f"{s}\n{fi}->{fo}" for s, fi, fo in zip(table["shape"], table["fan_in"], table["fan_out"],
                                                              strict=True)])
    ax.set(ylabel="variance ratio", title="One Xavier layer: forward 2 fan_in/(fan_in+fan_out), "
                                          "backward 2 fan_out/(fan_in+fan_out)")
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(fontsize=8)


def _draw_activation_grid(fig, table: pd.DataFrame) -> None:
    activations = list(dict.fromkeys(table["activation"]))
    cols = 2
    axes = fig.subplots(math.ceil(len(activations) / cols), cols, squeeze=False).ravel()
    styles = {"Xavier": ("tab:blue", "-"), "He": ("tab:red", "-"), "Xavier, gain 5/3": ("tab:green", "-")}
    for ax, act in zip(axes, activations, strict=False):
        rows = table[table["activation"] == act]
        for init_name, r in rows.groupby("init", sort=False):
            color, line = styles.get(init_name, ("gray", "-"))
            ax.plot(r["layer"], r["act_std_theory"], color=color, **_THEORY_STYLE)
            ax.plot(r["layer"], r["act_std"], "o" + line, color=color, markersize=4, linewidth=1.5,
                    label=f"{init_name} (final {r['act_std'].iloc[-1]:.3g})")
        ax.plot([], [], color="gray", label="mean-field theory", **_THEORY_STYLE)
        ax.axhline(1.0, color="gray", linestyle=":", alpha=0.7)
        ax.set_yscale("log")
        ax.set(title=f"{act}", xlabel="layer", ylabel="activation std")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)


def _draw_transformer(fig, table: pd.DataFrame) -> None:
    axes = fig.subplots(1, 3)
    for color, (strategy, rows) in zip(("tab:blue", "tab:green", "tab:red"), table.groupby("strategy", sort=False),
                                       strict=False):
        axes[0].plot(rows["layer"], rows["residual_std_theory"], color=color, **_THEORY_STYLE)
        axes[0].plot(rows["layer"], rows["residual_std"], "o-", color=color, label=strategy, linewidth=1.5)
        axes[1].plot(rows["layer"], rows["attn_grad_norm"], "o-", color=color, label=strategy, linewidth=2)
        axes[2].plot(rows["layer"], rows["ffn_grad_norm"], "s-", color=color, label=strategy, linewidth=2)
    axes[0].plot([], [], color="gray", label="sum of branch variances", **_THEORY_STYLE)
    titles = ("Residual stream std per block", "Attention gradient norm", "Feed-forward gradient norm")
    for ax, title, ylabel in zip(axes, titles, ("std", "gradient norm", "gradient norm"), strict=True):
        ax.set(title=title, xlabel="block", ylabel=ylabel)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    axes[1].set_yscale("log")
    axes[2].set_yscale("log")


# --------------------------------------------------------------------------------------------------
# The sections
# --------------------------------------------------------------------------------------------------

_DEPTH_LABELS = {"too_small": "Too small N(0, 0.01²)", "too_large": "Too large N(0, 1)", "xavier": "Xavier",
                 "he": "He"}
_INIT_LABELS = {"xavier_uniform": "Xavier", "kaiming_uniform": "He", "xavier_uniform-gain": "Xavier, gain 5/3"}


def collect(seed: int = 0, runs: ReportRuns | None = None) -> list[Section]:
    """Run every experiment of the report at ``seed`` and return its sections, in page order."""
    runs = runs or ReportRuns()
    traced: list[tuple[str, object, pd.DataFrame]] = []  # (label, run, frame) for the diagnosis table

    depth_models = {name: _build(run, seed) for name, run in runs.depth.items()}
    depth_frames = {name: probe.trace(model, inputs, loss=runs.depth[name].loss)
                    for name, (model, inputs) in depth_models.items()}  # weights are read after: tracing keeps them
    traced += [(f"depth: {name}", runs.depth[name], f) for name, f in depth_frames.items()]
    depth = pd.concat([_mlp_profile(_DEPTH_LABELS.get(name, name), runs.depth[name], f)
                       for name, f in depth_frames.items()], ignore_index=True)
    shape = next(iter(runs.depth.values())).model
    where = f"{shape.depth}-layer {shape.activation} MLP, {shape.width} wide"
    sections = [
        Section("depth_std", "Activation std per layer, four inits",
                f"The notebook's depth experiment ({where}). Pale bands: the mean field "
                "(theory.mlp_mean_field with sigma_w^2 = fan_in Var(w)). Too small vanishes geometrically, "
                "too large saturates tanh at std ~1, Xavier decays slowly (tanh's algebraic q ~ 1/l), He holds.",
                depth[["run", "key", "layer", "module", "act_std", "act_std_theory"]],
                lambda fig, t=depth: _per_run(fig, t, "act_std", "activation std (log)", "Activation std through "
                                              "layers", "act_std_theory", reference=1.0)),
        Section("depth_mean", "|Activation mean| per layer",
                "The drift of the mean: 0 in theory for tanh (odd) with zero biases; what is left is sampling.",
                depth[["run", "key", "layer", "module", "act_mean", "abs_act_mean"]],
                lambda fig, t=depth: _per_run(fig, t, "abs_act_mean", "|activation mean| (log)",
                                              "Activation mean drift")),
        Section("depth_grad", "Weight gradient norm per layer (log scale)",
                "Loss = mean of the output, as the notebook. Too small: gradients below 1e-6 (vanishing); "
                "too large: above 10 in the first layers (exploding).",
                depth[["run", "key", "layer", "module", "grad_norm"]],
                lambda fig, t=depth: _per_run(fig, t, "grad_norm", "gradient norm (log)",
                                              "Gradient flow through layers")),
    ]

    weight_rows, weight_values = [], {}
    for name, run in runs.depth.items():
        row, w = _weights(_DEPTH_LABELS.get(name, name), run, depth_models[name][0])
        weight_rows.append(row)
        weight_values[row["run"]] = w
    weights = pd.DataFrame(weight_rows)
    sections.append(Section(
        "weights", "Weight distributions",
        "Histograms of the weights the strategies actually drew (the notebook sampled normals for all four: "
        "Xavier and He are uniform here, as torch's xavier_uniform_ and kaiming_uniform_). Dashed: the "
        "density theory gives (theory.init_variance; uniform bound sqrt(3 Var)).",
        weights, lambda fig, t=weights, w=weight_values: _draw_weights(fig, t, w), size=(10.0, 7.0)))

    xavier = pd.DataFrame([_xavier_ratios(name, run, seed) for name, run in runs.xavier.items()])
    sections.append(Section(
        "xavier_ratio", "Xavier variance ratio per layer shape, against theory",
        "Forward Var(y)/Var(x) = fan_in Var(w) = 2 fan_in/(fan_in+fan_out) and backward Var(dL/dx)/Var(dL/dy) = "
        "2 fan_out/(fan_in+fan_out) (theory.forward_ratio, backward_ratio): 1 only for square layers; the "
        "notebook's claim of ~1 for every shape is wrong for the bottleneck (1.6, 0.4) and expansion (0.4, 1.6).",
        xavier, lambda fig, t=xavier: _draw_xavier(fig, t), size=(9.0, 5.0)))

    grid_parts = []
    for (act, strategy), run in runs.activation.items():
        frame = _trace(run, seed)
        traced.append((f"activation: {act}, {strategy}", run, frame))
        part = _mlp_profile(f"{act}, {_INIT_LABELS.get(strategy, strategy)}", run, frame)
        part.insert(1, "activation", act)
        part.insert(2, "init", _INIT_LABELS.get(strategy, strategy))
        grid_parts.append(part)
    grid = pd.concat(grid_parts, ignore_index=True)
    grid = grid[["run", "activation", "init", "key", "layer", "module", "act_std", "act_std_theory", "dead_frac"]]
    sections.append(Section(
        "activation_grid", "Activation std per layer: Xavier vs He for each activation (log scale)",
        "The notebook's activation comparison. Pale bands: the mean field. He keeps ReLU's variance (Var(w) = 2/fan_in "
        "undoes the halving), Xavier halves it per layer; GELU and SiLU lose more under Xavier; tanh with "
        "Xavier's gain 5/3 keeps its signal (though its first layer is over 30% saturated).",
        grid, lambda fig, t=grid: _draw_activation_grid(fig, t), size=(11.0, 8.0)))

    transformer = pd.concat([_transformer_profile(name, run, seed) for name, run in runs.transformer.items()],
                            ignore_index=True)
    cfg = next(iter(runs.transformer.values()))
    sections.append(Section(
        "transformer", "Transformer strategies: residual stream and gradient norms",
        f"{cfg.model.n_layers} pre-norm blocks, d_model {cfg.model.d_model}, batch {cfg.batch} x seq {cfg.seq_len}, "
        "loss a fixed random projection of the output (the final norm makes mean and square flat). Pale bands: "
        "the stream's variance as the embedding's plus the measured branch variances "
        "(theory.residual_variance: pre-norm branches add uncorrelated variance), which grows linearly.",
        transformer, lambda fig, t=transformer: _draw_transformer(fig, t), size=(15.0, 4.8)))

    sections.append(Section("diagnosis", "Diagnosis of every run (initcore.diagnose)",
                            "The symptoms found in each run's trace, with their evidence; empty means healthy.",
                            _diagnosis_table(traced)))
    guide = diagnose.symptom_table()
    guide["fixes"] = guide["fixes"].map(" | ".join)
    sections.append(Section("symptoms", "The debugging guide as data (initcore.diagnose.SYMPTOMS)",
                            "Each symptom's condition, threshold and why; the first fix is the one "
                            "bench/test_cures.py shows to cure it.", guide))
    return sections


def _diagnosis_table(traced) -> pd.DataFrame:
    rows = []
    for label, run, frame in traced:
        found = diagnose.diagnose(frame)
        rows.append({"run": label, "key": run.key, "symptoms": ", ".join(found["symptom"]) or "healthy",
                     "evidence": " | ".join(found["evidence"])})
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------------


def _atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` all at once: a reader sees the old file or the new one, never half."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o644)  # mkstemp makes it private; a report is for reading
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _png(section: Section, dpi: int) -> bytes:
    from matplotlib.figure import Figure

    fig = Figure(figsize=section.size, layout="constrained")
    section.draw(fig)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    return buffer.getvalue()


_STYLE = """body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222}
img{max-width:100%;border:1px solid #ddd}table{border-collapse:collapse;font-size:12px;margin:.5em 0}
td,th{border:1px solid #ccc;padding:2px 6px;text-align:right}th{background:#f3f3f3}
td:first-child,th:first-child{text-align:left}summary{cursor:pointer;color:#036}p.caption{max-width:900px}"""


def _page(sections: list[Section], seed: int, seconds: float) -> str:
    parts = [f"<!DOCTYPE html>\n<html><head><meta charset='utf-8'><title>initcore report</title>"
             f"<style>{_STYLE}</style></head><body>",
             "<h1>Signal propagation at initialization</h1>",
             f"<p>Regenerated by <code>initcore report</code> from <code>initcore.probe</code> traces of the "
             f"experiments in <code>initcore.experiments</code>, seed {seed}, in {seconds:.1f} s. Each figure's "
             f"numbers are in the table below it and in the CSV beside it.</p><ul>"]
    parts += [f"<li><a href='#{s.name}'>{html.escape(s.title)}</a></li>" for s in sections]
    parts.append("</ul>")
    for s in sections:
        parts.append(f"<h2 id='{s.name}'>{html.escape(s.title)}</h2><p class='caption'>{html.escape(s.caption)}</p>")
        if s.draw is not None:
            parts.append(f"<img src='{s.name}.png' alt='{html.escape(s.title)}'>")
        table = s.table.to_html(index=False, float_format=lambda v: f"{v:.4g}", na_rep="", border=0)
        open_ = " open" if s.draw is None else ""
        parts.append(f"<details{open_}><summary>table: {len(s.table)} rows (<a href='{s.name}.csv'>{s.name}.csv"
                     f"</a>)</summary>{table}</details>")
    parts.append("</body></html>\n")
    return "\n".join(parts)


def write(sections: list[Section], out: str | os.PathLike, seed: int = 0, seconds: float = 0.0,
          dpi: int = 110) -> Path:
    """Render ``sections`` into ``out`` (created if needed): PNGs, CSVs and ``index.html``; its path.

    ``seed`` and ``seconds`` (how long the collection took) are stated on the page.

    Raises:
        PlottingUnavailable: matplotlib cannot be imported (nothing is written).
    """
    require_matplotlib()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for s in sections:
        if s.draw is not None:
            _atomic_write(out / f"{s.name}.png", _png(s, dpi))
        _atomic_write(out / f"{s.name}.csv", s.table.to_csv(index=False).encode())
    index = out / "index.html"
    _atomic_write(index, _page(sections, seed, seconds).encode())
    return index


def write_report(out: str | os.PathLike, seed: int = 0, runs: ReportRuns | None = None, dpi: int = 110) -> Path:
    """``collect`` then ``write``: the whole report into ``out``; returns the path of ``index.html``.

    Raises:
        PlottingUnavailable: matplotlib cannot be imported (checked first: nothing is run or written).
    """
    require_matplotlib()
    start = time.perf_counter()
    sections = collect(seed, runs)
    return write(sections, out, seed, time.perf_counter() - start, dpi)
