"""What the report shows: every experiment of ``initcore.experiments`` traced, as sections (a table, how to
draw it, and the checks it passed), and the same for a model of the user's.

Each section's table holds exactly what its figure plots: measured columns beside their ``*_theory``
columns and the baselines' seed band (``*_low``, ``*_high``). Each ``Check`` says what a section was
compared against and whether it held: the bench's 16-seed baseline band (``initcore.baselines``), a
symptom ``initcore.diagnose`` must or must not find, or, where the bench's tolerance lives in the bench,
the measured deviation from theory as information. No configuration is defined here: the runs are the
experiments' own (``ReportRuns``), which tests shrink.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch
from torch import nn

from initcore import diagnose, experiments, init, probe, theory
from initcore.report import draw
from initcore.report.bands import SeedBands, Verdict, tidy

LAYERNORM_EPS, RMSNORM_EPS = 1e-5, 1e-6  # nn.LayerNorm's default eps, initcore.models.RMSNorm's
# The symptom each failure run is built to show, as bench/test_cures.py and test_failure_modes.py hold it.
EXPECTED_SYMPTOM = {"vanishing": "vanishing_gradients", "exploding": "exploding_gradients", "dead_relu": "dead_relu",
                    "saturation": "saturation"}
BASELINE_BAND = "the bench's baseline band (16 seeds; initcore.baselines: mean ± (10 spreads + floor))"


@dataclass(frozen=True)
class Check:
    """One line of the page's summary: what a section was compared against, and the outcome."""

    section: str  # the Section's name
    against: str
    passed: bool | None  # None: information, no pass/fail here (the bench decides with its own tolerance)
    detail: str


@dataclass(frozen=True)
class Section:
    """One figure (or a table alone, when ``draw`` is None) of the report."""

    name: str  # file stem: <name>.png, <name>.csv
    title: str
    caption: str  # what to look at, and where the theory comes from
    table: pd.DataFrame  # exactly what the figure plots
    draw: Callable[[object], None] | None = None  # draws on a matplotlib Figure
    size: tuple[float, float] = (8.0, 5.0)  # inches
    checks: tuple[Check, ...] = ()


@dataclass(frozen=True)
class ReportRuns:
    """The runs each figure is made of; the experiments' own by default (the transformer at its reduced
    size, the width check at its default widths). Tests pass smaller ones."""

    depth: Mapping[str, experiments.MLPRun] = field(default_factory=lambda: experiments.DEPTH_RUNS)
    xavier: Mapping[str, experiments.MLPRun] = field(default_factory=lambda: experiments.XAVIER_RUNS)
    activation: Mapping[tuple[str, str], experiments.MLPRun] = field(
        default_factory=lambda: experiments.ACTIVATION_RUNS)
    transformer: Mapping[str, experiments.TransformerRun] = field(
        default_factory=lambda: experiments.TRANSFORMER_RUNS)
    depth_scaling: Mapping[tuple[str, int], experiments.TransformerRun] = field(
        default_factory=lambda: experiments.DEPTH_SCALING_RUNS)
    attention: Mapping[tuple[str, int], experiments.TransformerRun] = field(
        default_factory=lambda: experiments.ATTENTION_RUNS)
    mha_trap: Mapping[str, experiments.TransformerRun] = field(default_factory=lambda: experiments.MHA_TRAP_RUNS)
    width: Mapping[tuple[str, int], experiments.TransformerRun] = field(
        default_factory=lambda: {(s, w): experiments.WIDTH_RUNS[(s, w)]
                                 for s in experiments.WIDTH_STRATEGIES for w in experiments.WIDTHS})
    failure: Mapping[str, experiments.MLPRun] = field(default_factory=lambda: experiments.FAILURE_RUNS)


# --------------------------------------------------------------------------------------------------
# Measuring
# --------------------------------------------------------------------------------------------------


def _build(run, seed: int):
    return run.build(torch.Generator().manual_seed(seed))


def _trace(run, seed: int, loss="run", **kw) -> pd.DataFrame:
    """``probe.trace`` of ``run`` at ``seed`` as the bench traces it (its loss, selection, mode); ``loss=None``
    for the forward pass alone, where a figure needs no gradient."""
    model, inputs = _build(run, seed)
    return probe.trace(model, inputs, loss=run.loss if loss == "run" else loss, select=run.select,
                       train=run.train, **kw)


def _linear_rows(frame: pd.DataFrame) -> pd.DataFrame:
    return frame[frame["kind"] == "linear"].reset_index(drop=True)


def _mlp_promise(run, layer: int) -> init.Target:
    """What the run's strategy declares for ``layers[layer]``'s weight (``init.promise``; role "head" for the
    last layer, else "hidden"; gain "auto" resolved for the run's activation)."""
    m = run.model
    gain = nn.init.calculate_gain(m.activation) if run.gain == "auto" else run.gain
    role = "head" if layer == m.depth - 1 else "hidden"
    return init.promise(run.init, role, m.in_features if layer == 0 else m.width, m.width, n_layers=m.depth,
                        gain=gain)


def _sigma_w2(run) -> list[float]:
    """fan_in Var(w) of each Linear of an MLP run, as its strategy promises: the mean field's sigma_w^2."""
    m = run.model
    return [(m.in_features if i == 0 else m.width) * _mlp_promise(run, i).variance for i in range(m.depth)]


def _grad_theory(run, measured_grad: np.ndarray) -> np.ndarray:
    """The backward mean field's weight-gradient norms (``theory.mlp_gradient_ratio``), anchored at the
    measured output layer: it predicts the change from layer to layer (chi per layer), not the absolute size,
    which the mean loss's batch correlations set."""
    shape = theory.mlp_gradient_ratio(run.model.activation, run.model.depth, _sigma_w2(run), run.bias or 0.0)
    ratio = shape["weight_grad_std"]
    with np.errstate(invalid="ignore", divide="ignore"):
        return ratio / ratio[-1] * measured_grad[-1]


def _with_band(table: pd.DataFrame, column: str, band: pd.DataFrame, on: str = "module") -> pd.DataFrame:
    band = band.set_index("layer")
    for part in ("low", "high", "centre"):
        table[f"{column}_{part}"] = table[on].astype(str).map(band[part]).astype(float) if len(band) else math.nan
    return table


def _mlp_profile(label: str, run, frame: pd.DataFrame, bands: SeedBands, experiment: str) -> pd.DataFrame:
    """One row per Linear layer: the measured statistics the figures use, the mean field and the seed bands."""
    rows = _linear_rows(frame)
    predicted = probe.mlp_theory(run.model, run.init, gain=run.gain, bias=run.bias or 0.0).set_index("layer")
    grad = rows["grad_norm"].to_numpy(dtype=float)
    table = pd.DataFrame({
        "run": label, "key": run.key, "layer": rows["layer"].to_numpy(), "module": rows["module"].to_numpy(),
        "act_std": rows["act_std"].to_numpy(),
        "act_std_theory": rows["layer"].map(predicted["act_std_theory"]).to_numpy(dtype=np.float64),
        "act_mean": rows["act_mean"].to_numpy(), "abs_act_mean": rows["act_mean"].abs().to_numpy(),
        "grad_norm": grad, "grad_norm_theory": _grad_theory(run, grad),
        "dead_frac": rows["dead_frac"].to_numpy(), "saturated_frac": rows["saturated_frac"].to_numpy(),
    })
    for column in ("act_std", "grad_norm"):
        table = _with_band(table, column, bands.band(experiment, run.key, column))
    return table


def _xavier_ratios(name: str, run, seed: int, bands: SeedBands) -> dict:
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
    var = _mlp_promise(run, 0).variance
    out = {"shape": name, "fan_in": fan_in, "fan_out": fan_out, "key": run.key,
           "forward_ratio": row["act_std"] ** 2 / float(x.detach().var()),
           "forward_ratio_theory": theory.forward_ratio(fan_in, var),
           "backward_ratio": in_grad_ms / out_grad_ms,
           "backward_ratio_theory": theory.backward_ratio(fan_out, var)}
    for stat in ("forward_ratio", "backward_ratio"):
        band = bands.band("xavier_shapes", run.key, stat)
        for part in ("low", "high", "centre"):
            out[f"{stat}_{part}"] = float(band[part].iloc[0]) if len(band) else math.nan
    return out


def _weights(label: str, run, model, layer: int = 1) -> tuple[dict, np.ndarray]:
    """The initialized weight matrix of ``layers[layer]``: its statistics against the strategy's theory."""
    w = model.layers[layer].weight.detach().double().numpy().ravel()
    fan_out, fan_in = model.layers[layer].weight.shape
    target = _mlp_promise(run, layer)
    uniform = target.family == "uniform"
    return ({"run": label, "key": run.key, "strategy": run.init, "module": f"layers.{layer}", "fan_in": fan_in,
             "fan_out": fan_out, "weight_std": float(w.std(ddof=1)), "weight_std_theory": math.sqrt(target.variance),
             "weight_min": float(w.min()), "weight_max": float(w.max()),
             "distribution": "uniform" if uniform else "normal",
             "bound_theory": target.scale if uniform else math.nan}, w)


def channel_statistics(output: torch.Tensor) -> tuple[float, float]:
    """(average channel squared mean, average channel variance) of one activation, as NFNets' signal
    propagation plots define them: per channel (dim 1 of a 4-D conv activation, else the last dim) the
    mean and variance over every other dim, then averaged over channels."""
    x = output.detach().double()
    if x.dim() == 4:
        x = x.movedim(1, -1)
    x = x.reshape(-1, x.shape[-1])
    return float(x.mean(0).square().mean()), float(x.var(0, unbiased=False).mean())


def _stream_variance(model, idx: torch.Tensor) -> float:
    with torch.no_grad():
        return float(model.embed(idx).var())


def _transformer_profile(label: str, run, seed: int, bands: SeedBands) -> tuple[pd.DataFrame, pd.DataFrame,
                                                                              pd.DataFrame]:
    """Per block: residual-stream std, measured and as the sum of the measured branch variances predicts
    (``theory.residual_variance``: branch outputs uncorrelated with the stream), the gradient norms and the
    seed bands; the NFNets signal-propagation rows; and the trace."""
    model, idx = _build(run, seed)
    frame = probe.trace(model, idx, loss=run.loss, keep_outputs=True)
    outputs = frame.attrs.pop("outputs")
    input_var = _stream_variance(model, idx)
    by_kind = {k: frame[frame["kind"] == k].set_index("layer") for k in ("attn", "ffn", "block")}
    layers = by_kind["block"].index.to_numpy()
    branch_var = (by_kind["attn"]["act_std"] ** 2 + by_kind["ffn"]["act_std"] ** 2).loc[layers].to_numpy()
    table = pd.DataFrame({
        "strategy": label, "key": run.key, "layer": layers,
        "module": by_kind["block"]["module"].to_numpy(),
        "residual_std": by_kind["block"]["act_std"].to_numpy(),
        "residual_std_theory": np.sqrt(theory.residual_variance(len(layers), branch_var, input_var)),
        "attn_std": by_kind["attn"]["act_std"].loc[layers].to_numpy(),
        "ffn_std": by_kind["ffn"]["act_std"].loc[layers].to_numpy(),
        "attn_grad_norm": by_kind["attn"]["grad_norm"].loc[layers].to_numpy(),
        "ffn_grad_norm": by_kind["ffn"]["grad_norm"].loc[layers].to_numpy(),
        "embedding_std": math.sqrt(input_var),
    })
    table = _with_band(table, "residual_std", bands.band("transformer_strategies", run.key, "act_std"))
    for branch in ("attn", "ffn"):
        names = by_kind[branch]["module"].loc[layers].astype(str)
        band = bands.band("transformer_strategies", run.key, "grad_norm").set_index("layer")
        for part in ("low", "high"):
            table[f"{branch}_grad_norm_{part}"] = names.map(band[part]).astype(float).to_numpy() if len(band) \
                else math.nan
    spp = []
    for layer, block in zip(layers, table["module"], strict=True):
        stream_sq_mean, stream_var = channel_statistics(outputs[block])
        for branch in ("attn", "ffn"):
            _, branch_var_c = channel_statistics(outputs[f"{block}.{branch}"])
            spp.append({"run": label, "key": run.key, "block": layer, "branch": branch,
                        "stream_channel_sq_mean": stream_sq_mean, "stream_channel_var": stream_var,
                        "branch_channel_var": branch_var_c})
    return table, pd.DataFrame(spp), frame


def _promised_variance(run, role: str, block: int, part: str = "") -> float:
    """Var(w) the run's strategy declares for one (E, E) chunk of a transformer's q, k or v (``init.promise``;
    a packed in_proj is 3 chunks, which torch_default initializes as one (3E, E) matrix)."""
    m = run.model
    chunks = 3 if m.attention == "torch_mha" else 1
    return init.promise(run.init, role, m.d_model, m.d_model, n_layers=m.n_layers, block=block, d_model=m.d_model,
                        d_ff=m.d_ff, part=part, chunks=chunks, **dict(run.options)).variance


def _attention_theory(run, d_model: int, block: int, stream_var: float) -> float:
    """Block ``block``'s logit std, d sqrt(Var(W_q) Var(W_k)) m2 (bench/test_attention_init.py), from the
    strategy's promised q and k variances and the mean square m2 of the attention's (normalized) input."""
    cfg = run.model
    var_q, var_k = (_promised_variance(run, "qkv", block, part) for part in ("q", "k"))
    eps = LAYERNORM_EPS if cfg.norm == "layernorm" else RMSNORM_EPS
    m2 = stream_var / (stream_var + eps) if cfg.norm_position == "pre" else stream_var
    return d_model * math.sqrt(var_q * var_k) * m2


def _verdicts_check(section: str, verdicts: list[tuple[str, Verdict]]) -> Check:
    compared = [(label, v) for label, v in verdicts if v.passed is not None]
    if not compared:
        problems = sorted({v.problem for _, v in verdicts})
        return Check(section, BASELINE_BAND, None, "not compared: " + "; ".join(problems))
    failed = [(label, v) for label, v in compared if not v.passed]
    n_stats = sum(v.n_compared for _, v in compared)
    detail = f"{len(compared) - len(failed)} of {len(compared)} runs inside the band ({n_stats} statistics)"
    if failed:
        detail += "; outside: " + "; ".join(f"{label}: {', '.join(v.outside[:3])}" for label, v in failed)
    return Check(section, BASELINE_BAND, not failed, detail)


def _tidy(frame: pd.DataFrame) -> pd.DataFrame:
    return tidy(frame, tuple(probe.STATISTICS))


def _runs_where(table: pd.DataFrame, test: Callable[[pd.Series], pd.Series]) -> str:
    return ", ".join(r for r, t in table.groupby("run", sort=False) if test(t["grad_norm"]).any()) or "none"


def _deviation(measured, predicted) -> float:
    """Largest |measured / predicted - 1| over finite pairs."""
    m, p = np.asarray(measured, dtype=float), np.asarray(predicted, dtype=float)
    ok = np.isfinite(m) & np.isfinite(p) & (p != 0)
    return float(np.max(np.abs(m[ok] / p[ok] - 1))) if ok.any() else math.nan


# --------------------------------------------------------------------------------------------------
# The sections
# --------------------------------------------------------------------------------------------------

_DEPTH_LABELS = {"too_small": "Too small N(0, 0.01²)", "too_large": "Too large N(0, 1)", "xavier": "Xavier",
                 "he": "He"}
_INIT_LABELS = {"xavier_uniform": "Xavier", "kaiming_uniform": "He", "xavier_uniform-gain": "Xavier, gain 5/3"}
_OUTPUT_LAYER = ("The hollow square marks the output layer: the last Linear has no activation after it "
                 "(Identity), so its value is the Linear's output itself, not squashed by tanh; the jump there "
                 "is that missing activation, not a change in propagation (the mean field predicts it too).")


def _grad_thresholds() -> list[tuple[float, str]]:
    return [(diagnose.SYMPTOMS[n].threshold, f"{n.replace('_', ' ')}: {diagnose.SYMPTOMS[n].condition}")
            for n in ("vanishing_gradients", "exploding_gradients")]


def _depth_sections(runs: ReportRuns, seed: int, bands: SeedBands, traced: list) -> list[Section]:
    depth_models = {name: _build(run, seed) for name, run in runs.depth.items()}
    depth_frames = {name: probe.trace(model, inputs, loss=runs.depth[name].loss)
                    for name, (model, inputs) in depth_models.items()}  # weights are read after: tracing keeps them
    traced += [(f"depth: {name}", runs.depth[name], f) for name, f in depth_frames.items()]
    depth = pd.concat([_mlp_profile(_DEPTH_LABELS.get(name, name), runs.depth[name], f, bands, "depth_init")
                       for name, f in depth_frames.items()], ignore_index=True)
    verdicts = [(_DEPTH_LABELS.get(n, n), bands.check("depth_init", runs.depth[n].key, _tidy(f)))
                for n, f in depth_frames.items()]
    theory_gap = {r: _deviation(t["act_std"], t["act_std_theory"]) for r, t in depth.groupby("run", sort=False)}
    shape = next(iter(runs.depth.values())).model
    where = f"{shape.depth}-layer {shape.activation} MLP, {shape.width} wide"
    band_note = "Shaded: the bench's baselines, 16 seeds, mean ± 2 sd (this page's seed is another draw)."
    checks = (_verdicts_check("depth_std", verdicts),
              Check("depth_std", "mean-field theory (theory.mlp_mean_field)", None,
                    "largest |measured/theory - 1| of act_std per run: "
                    + ", ".join(f"{r} {g:.1%}" for r, g in theory_gap.items())))
    lines = _grad_thresholds()
    sections = [
        Section("depth_std", "Activation std per layer, four inits",
                f"The notebook's depth experiment ({where}). Pale bands: the mean field "
                "(theory.mlp_mean_field with sigma_w^2 = fan_in Var(w)). Too small vanishes geometrically, "
                "too large saturates tanh at std ~1, Xavier decays slowly (tanh's algebraic q ~ 1/l), He holds. "
                f"{band_note} {_OUTPUT_LAYER}",
                depth[["run", "key", "layer", "module", "act_std", "act_std_theory", "act_std_low", "act_std_high"]],
                lambda fig, t=depth: draw.per_run(fig, t, "act_std", "activation std (log)",
                                                  "Activation std through layers", "act_std_theory", band="act_std",
                                                  reference=1.0), checks=checks),
        Section("depth_mean", "|Activation mean| per layer",
                "The drift of the mean: 0 in theory for tanh (odd) with zero biases; what is left is sampling. "
                + _OUTPUT_LAYER,
                depth[["run", "key", "layer", "module", "act_mean", "abs_act_mean"]],
                lambda fig, t=depth: draw.per_run(fig, t, "abs_act_mean", "|activation mean| (log)",
                                                  "Activation mean drift")),
        Section("depth_grad", "Weight gradient norm per layer (log scale), with the guide's thresholds",
                "Loss = mean of the output, as the notebook. Dashed red: initcore.diagnose's thresholds, below "
                f"{lines[0][0]:g} vanishing and above {lines[1][0]:g} exploding (the notebook's debugging guide). "
                "Pale bands: the backward mean field (theory.mlp_gradient_ratio: chi per layer), anchored at the "
                "measured output layer, since the mean loss's gradient is the same for every example and its "
                f"absolute size depends on batch correlations the mean field leaves out. {band_note}",
                depth[["run", "key", "layer", "module", "grad_norm", "grad_norm_theory", "grad_norm_low",
                       "grad_norm_high"]],
                lambda fig, t=depth: draw.per_run(fig, t, "grad_norm", "gradient norm (log)",
                                                  "Gradient flow through layers", "grad_norm_theory",
                                                  band="grad_norm", lines=lines, output_layer=False),
                checks=(Check("depth_grad", "the guide's thresholds (initcore.diagnose)", None,
                              f"runs below {lines[0][0]:g} somewhere: {_runs_where(depth, lambda g: g < lines[0][0])};"
                              f" above {lines[1][0]:g}: {_runs_where(depth, lambda g: g > lines[1][0])}"),)),
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
        "density the strategy declares (init.promise: its family and scale).",
        weights, lambda fig, t=weights, w=weight_values: draw.weights(fig, t, w), size=(10.0, 7.0),
        checks=(Check("weights", "init.promise (the strategy's declared distribution)", None,
                      f"largest |std/theory - 1|: {_deviation(weights['weight_std'], weights['weight_std_theory']):.2%}"
                      ),)))
    return sections


def _xavier_section(runs: ReportRuns, seed: int, bands: SeedBands) -> Section:
    xavier = pd.DataFrame([_xavier_ratios(name, run, seed, bands) for name, run in runs.xavier.items()])
    verdicts = [(row.shape, bands.check("xavier_shapes", row.key, pd.DataFrame(
        {"layer": "layers.0", "statistic": ["forward_ratio", "backward_ratio"],
         "value": [row.forward_ratio, row.backward_ratio]}))) for row in xavier.itertuples()]
    gap = max(_deviation(xavier["forward_ratio"], xavier["forward_ratio_theory"]),
              _deviation(xavier["backward_ratio"], xavier["backward_ratio_theory"]))
    return Section(
        "xavier_ratio", "Xavier variance ratio per layer shape, against theory",
        "Forward Var(y)/Var(x) = fan_in Var(w) = 2 fan_in/(fan_in+fan_out) and backward Var(dL/dx)/Var(dL/dy) = "
        "2 fan_out/(fan_in+fan_out) (theory.forward_ratio, backward_ratio): 1 only for square layers; the "
        "notebook's claim of ~1 for every shape is wrong for the bottleneck (1.6, 0.4) and expansion (0.4, 1.6). "
        "Error bars: the bench's baselines, 16 seeds, mean ± 2 sd.",
        xavier, lambda fig, t=xavier: draw.xavier(fig, t), size=(9.0, 5.0),
        checks=(_verdicts_check("xavier_ratio", verdicts),
                Check("xavier_ratio", "theory.forward_ratio, theory.backward_ratio", None,
                      f"largest |measured/theory - 1|: {gap:.1%}")))


def _activation_section(runs: ReportRuns, seed: int, bands: SeedBands, traced: list) -> Section:
    grid_parts, verdicts = [], []
    for (act, strategy), run in runs.activation.items():
        frame = _trace(run, seed)
        label = f"{act}, {_INIT_LABELS.get(strategy, strategy)}"
        traced.append((f"activation: {act}, {strategy}", run, frame))
        verdicts.append((label, bands.check("activations", run.key, _tidy(frame))))
        part = _mlp_profile(label, run, frame, bands, "activations")
        part.insert(1, "activation", act)
        part.insert(2, "init", _INIT_LABELS.get(strategy, strategy))
        grid_parts.append(part)
    grid = pd.concat(grid_parts, ignore_index=True)
    grid = grid[["run", "activation", "init", "key", "layer", "module", "act_std", "act_std_theory", "act_std_low",
                 "act_std_high", "dead_frac"]]
    return Section(
        "activation_grid", "Activation std per layer: Xavier vs He for each activation (log scale)",
        "The notebook's activation comparison. Pale bands: the mean field; shaded: the bench's baselines (16 "
        "seeds, mean ± 2 sd). He keeps ReLU's variance (Var(w) = 2/fan_in undoes the halving), Xavier halves it "
        "per layer; GELU and SiLU lose more under Xavier; tanh with Xavier's gain 5/3 keeps its signal (though "
        "its first layer is over 30% saturated). " + _OUTPUT_LAYER,
        grid, lambda fig, t=grid: draw.activation_grid(fig, t), size=(11.0, 8.0),
        checks=(_verdicts_check("activation_grid", verdicts),
                Check("activation_grid", "mean-field theory (theory.mlp_mean_field)", None,
                      "largest |measured/theory - 1| of act_std: "
                      f"{_deviation(grid['act_std'], grid['act_std_theory']):.1%}")))


def _transformer_sections(runs: ReportRuns, seed: int, bands: SeedBands) -> list[Section]:
    profiles = {name: _transformer_profile(name, run, seed, bands) for name, run in runs.transformer.items()}
    table = pd.concat([p[0] for p in profiles.values()], ignore_index=True)
    spp = pd.concat([p[1] for p in profiles.values()], ignore_index=True)
    verdicts = [(name, bands.check("transformer_strategies", runs.transformer[name].key, _tidy(p[2])))
                for name, p in profiles.items()]
    cfg = next(iter(runs.transformer.values()))
    where = (f"{cfg.model.n_layers} pre-norm blocks, d_model {cfg.model.d_model}, batch {cfg.batch} x seq "
             f"{cfg.seq_len}")
    return [
        Section(
            "transformer", "Transformer strategies: residual stream and gradient norms",
            f"{where}, loss a fixed random projection of the output (the final norm makes mean and square flat). "
            "Pale bands: the stream's variance as the embedding's plus the measured branch variances "
            "(theory.residual_variance: pre-norm branches add uncorrelated variance), which grows linearly. "
            "Shaded: the bench's baselines, 16 seeds, mean ± 2 sd.",
            table, lambda fig, t=table: draw.transformer(fig, t), size=(15.0, 4.8),
            checks=(_verdicts_check("transformer", verdicts),
                    Check("transformer", "theory.residual_variance (sum of measured branch variances)", None,
                          "largest |measured/theory - 1| of the stream std: "
                          f"{_deviation(table['residual_std'], table['residual_std_theory']):.1%}"))),
        Section(
            "signal_propagation", "Signal propagation per block (NFNets style)",
            f"{where}. As Brock et al. (2021, 'Characterizing signal propagation to close the performance gap in "
            "unnormalized ResNets', Fig. 1): per block, the residual stream's average channel squared mean (how far "
            "the channels' means drift from 0) and average channel variance, and the average channel variance at "
            "the end of each residual branch (attention, feed-forward). In a pre-norm stack the branch variance stays "
            "flat and the stream's variance grows by it, block by block (the figure above). The channel squared "
            "mean grows too, and here faster than the variance: ReLU's positive mean, mapped by the second "
            "feed-forward matrix, adds one fixed vector to every token, and near-uniform attention at init adds "
            "one vector to every position of a sequence; both are shared offsets, what this plot exists to show "
            "(NFNets remove them by centring the weights).",
            spp, lambda fig, t=spp: draw.signal_propagation(fig, t), size=(15.0, 4.8),
            checks=(Check("signal_propagation", "theory.residual_variance: Var grows by the branch variances",
                          None, "stream channel variance, first -> last block: " + ", ".join(
                              f"{r} {g['stream_channel_var'].iloc[0]:.3g} -> {g['stream_channel_var'].iloc[-1]:.3g}"
                              for r, g in spp.groupby("run", sort=False))),)),
    ]


def _depth_scaling_section(runs: ReportRuns, seed: int) -> Section:
    final, per_block = [], []
    deepest = max(n for _, n in runs.depth_scaling)
    for (strategy, n_layers), run in runs.depth_scaling.items():
        frame = _trace(run, seed, loss=None, statistics="forward")
        stream = frame[frame["kind"] == "block"]["act_std"].to_numpy() ** 2
        final.append({"strategy": strategy, "n_layers": n_layers, "key": run.key, "stream_var": stream[-1],
                      "expected": experiments.DEPTH_STRATEGIES.get(strategy, "?")})
        if n_layers == deepest:
            per_block += [{"strategy": strategy, "n_layers": n_layers, "block": b, "stream_var": v}
                          for b, v in enumerate(stream)]
    final_t, block_t = pd.DataFrame(final), pd.DataFrame(per_block)
    growth = {s: g.sort_values("n_layers")["stream_var"].to_numpy() for s, g in final_t.groupby("strategy", sort=False)}
    depths = sorted(final_t["n_layers"].unique())
    cfg = next(iter(runs.depth_scaling.values())).model
    return Section(
        "depth_scaling", "Depth: the residual stream against L, per output-projection scaling",
        f"Pre-norm stacks of L = {', '.join(map(str, depths))} blocks, d_model {cfg.d_model} "
        "(experiments.DEPTH_SCALING_RUNS), forward pass only. Each block adds its branch variance to the stream "
        "(theory.residual_variance); how that variance depends on L is the strategy's: unscaled (small_normal) "
        "grows ~L, GPT-2's 1/sqrt(2L) stays bounded, OLMo's 1/sqrt(2 d (l+1)) grows ~log L, GPT-NeoX's "
        "2/(L sqrt(d)) shrinks towards the embedding's variance. bench/test_depth_scaling.py holds the recursion "
        "to the measurement.",
        final_t, lambda fig, f=final_t, b=block_t: draw.depth_scaling(fig, f, b), size=(12.0, 4.8),
        checks=(Check("depth_scaling", "each strategy's growth law (experiments.DEPTH_STRATEGIES)", None,
                      f"stream variance at L={depths[-1]} over L={depths[0]}: " + ", ".join(
                          f"{s} x{v[-1] / v[0]:.3g} ({experiments.DEPTH_STRATEGIES.get(s, '?')})"
                          for s, v in growth.items())),))


def _attention_section(runs: ReportRuns, seed: int) -> Section:
    rows = []
    for (strategy, seq_len), run in runs.attention.items():
        model, idx = _build(run, seed)
        frame = probe.trace(model, idx, loss=None, statistics="forward")
        attn = frame[frame["kind"] == "attn"].iloc[0]
        d = run.model.d_model
        rows.append({"strategy": strategy, "seq_len": seq_len, "key": run.key, "logit_std": attn["logit_std"],
                     "logit_std_theory": _attention_theory(run, d, 0, _stream_variance(model, idx)),
                     "attn_entropy_norm": attn["attn_entropy_norm"]})
    table = pd.DataFrame(rows)
    lens = sorted(table["seq_len"].unique())
    middle = lens[len(lens) // 2]
    logits = table[table["seq_len"] == middle].reset_index(drop=True)
    return Section(
        "attention", "Attention at init: logit std and softmax entropy per strategy",
        "Block 0 of a pre-norm stack (experiments.ATTENTION_RUNS), forward pass only. Theory (pale bars): "
        "logit std = d sqrt(Var(W_q) Var(W_k)) m2, m2 the mean square of the normalized input, independent of "
        "d_head (the 1/sqrt(d_head) scaling cancels the sum's growth), from each strategy's promised variances "
        "(init.promise). Right: the entropy over log(keys); near 1 is near-uniform attention, "
        "what small logits give at init; its Monte Carlo theory is in bench/test_attention_init.py.",
        table, lambda fig, lg=logits, t=table: draw.attention(fig, lg, t), size=(12.0, 4.8),
        checks=(Check("attention", "logit std = d sqrt(Var(W_q) Var(W_k)) m2", None,
                      f"largest |measured/theory - 1|: {_deviation(table['logit_std'], table['logit_std_theory']):.1%}"
                      f" over {len(table)} runs"),))


def _mha_trap_section(runs: ReportRuns, seed: int) -> Section:
    rows = []
    for name, run in runs.mha_trap.items():
        model, idx = _build(run, seed)
        frame = probe.trace(model, idx, loss=None, statistics="forward")
        attn = frame[frame["kind"] == "attn"].reset_index(drop=True)
        blocks = frame[frame["kind"] == "block"]["act_std"].to_numpy()
        d = run.model.d_model
        stream = [_stream_variance(model, idx), *(blocks[:-1] ** 2)]
        for b, row in attn.iterrows():
            expected = _attention_theory(run, d, b, stream[b])
            rows.append({"run": name, "key": run.key, "block": b, "logit_std": row["logit_std"],
                         "logit_std_theory": expected})
    table = pd.DataFrame(rows)
    by_run = table.groupby("run", sort=False)["logit_std"].mean()
    ratio = by_run.get("torch_default-packed", math.nan) / by_run.get("xavier_uniform-separate", math.nan)
    return Section(
        "mha_trap", "The nn.MultiheadAttention trap: the packed in_proj",
        "torch initializes nn.MultiheadAttention's in_proj_weight as one (3E, E) matrix with xavier_uniform_: "
        "Var = 2/(E + 3E) = 1/(2E) per weight, half of what three separate (E, E) projections get (1/E), so the "
        "logits start at half the std (experiments.MHA_TRAP_RUNS; black ticks: theory). initcore's strategies "
        "hand the rule one (E, E) chunk at a time, so xavier_uniform on the packed model matches the separate one.",
        table, lambda fig, t=table: draw.mha_trap(fig, t), size=(9.0, 5.0),
        checks=(Check("mha_trap", "packed/separate logit std = 1/2 (Var 1/(2E) against 1/E)", None,
                      f"measured torch_default-packed / xavier_uniform-separate: {ratio:.3f}"),))


WIDTH_ROWS = (("attn", "act_std"), ("attn", "logit_std"), ("ffn", "act_std"), ("block", "act_std"))


def _width_section(runs: ReportRuns, seed: int) -> Section:
    rows = []
    for (strategy, width), run in runs.width.items():
        frame = _trace(run, seed, loss=None, statistics="forward")
        for kind, stat in WIDTH_ROWS:
            for r in frame[frame["kind"] == kind].itertuples():
                rows.append({"strategy": strategy, "width": width, "row": f"{r.module} {stat}",
                             "size": getattr(r, stat),
                             "expected_slope": 0.0 if experiments.WIDTH_STRATEGIES_LARGE.get(strategy, True) else 1.0})
    table = pd.DataFrame(rows)
    table["slope"] = _slopes(table)
    widths = sorted(table["width"].unique())
    slopes = table.groupby("strategy", sort=False)["slope"].agg(["min", "max"])
    return Section(
        "width", "Width: the coordinate check, size against width (log-log)",
        f"Two pre-norm blocks at d_model {', '.join(map(str, widths))} (experiments.WIDTH_RUNS; d_ff = 4 d_model, "
        "heads of 32), one line per row and statistic, forward pass, this page's seed (bench/test_width.py fits "
        "the slopes over several seeds and holds them to the seeds' band). Where every weight's variance is "
        "c/fan_in (GPT-NeoX's small_init) each Linear maps unit-scale coordinates to unit-scale coordinates at any "
        "width: slope 0. A fixed std (small_normal's 0.02) multiplies each Linear's output variance by fan_in "
        "0.02^2: the branches and logits grow as d^1 (slope 1).",
        table, lambda fig, t=table: draw.width(fig, t), size=(13.0, 5.0),
        checks=(Check("width", "slope 0 for 1/fan_in scaling, 1 for a fixed std (bench/test_width.py)", None,
                      "fitted slopes per strategy: " + ", ".join(
                          f"{s} {r['min']:+.2f}..{r['max']:+.2f}" for s, r in slopes.iterrows())),))


def _slopes(table: pd.DataFrame) -> pd.Series:
    """Least-squares slope of log(size) on log(width), per (strategy, row), broadcast to its rows."""
    out = pd.Series(math.nan, index=table.index)
    for _, part in table.groupby(["strategy", "row"], sort=False):
        ok = part["size"] > 0
        if ok.sum() >= 2:
            out[part.index] = np.polyfit(np.log(part.loc[ok, "width"]), np.log(part.loc[ok, "size"]), 1)[0]
    return out


def _failure_section(runs: ReportRuns, seed: int, bands: SeedBands, traced: list) -> Section:
    rows, checks = [], []
    for mode, run in runs.failure.items():
        symptom = diagnose.SYMPTOMS[EXPECTED_SYMPTOM.get(mode, mode)]
        fixed = symptom.fixes[0].apply(run) if symptom.fixes[0].apply else run
        for when, r in (("failing", run), ("fixed", fixed)):
            frame = _trace(r, seed)
            traced.append((f"{mode} ({when})", r, frame))
            found = set(diagnose.diagnose(frame)["symptom"])
            lin = _linear_rows(frame)
            values = lin[symptom.statistic].to_numpy(dtype=float)
            if symptom.statistic == "grad_norm":
                predicted = _grad_theory(r, values)
            else:
                column = f"{symptom.statistic}_theory"
                mf = probe.mlp_theory(r.model, r.init, gain=r.gain, bias=r.bias or 0.0).set_index("layer")
                predicted = lin["layer"].map(mf[column]).to_numpy(dtype=float) if column in mf else np.nan
            band = bands.band("failure_modes", r.key, symptom.statistic).set_index("layer") if when == "failing" \
                else pd.DataFrame(columns=["low", "high"])
            rows.append(pd.DataFrame({
                "mode": mode, "when": when, "run": f"{r.init}" + (f", bias {r.bias:g}" if r.bias is not None else ""),
                "key": r.key, "layer": lin["layer"].to_numpy(), "module": lin["module"].to_numpy(),
                "statistic": symptom.statistic, "value": values, "theory": predicted,
                "low": lin["module"].map(band["low"]).astype(float).to_numpy() if len(band) else math.nan,
                "high": lin["module"].map(band["high"]).astype(float).to_numpy() if len(band) else math.nan,
                "threshold": symptom.threshold, "symptoms": ", ".join(sorted(found)) or "healthy"}))
            ok = symptom.name in found if when == "failing" else symptom.name not in found
            claim = "found" if when == "failing" else f"gone after the first fix, {symptom.fixes[0].text!r}"
            checks.append(Check("failures", f"initcore.diagnose: {symptom.name} {claim}", ok,
                                f"{mode} {when} ({r.key}): {', '.join(sorted(found)) or 'healthy'}"))
    table = pd.concat(rows, ignore_index=True)
    return Section(
        "failures", "Failure modes and their cures: dead ReLU, saturation, vanishing and exploding gradients",
        "experiments.FAILURE_RUNS (a 6-layer, 256-wide MLP, batch 100, loss mean of the squared output) in red, "
        "each with the first fix of initcore.diagnose applied in green (the bench's test_cures). Dashed red: "
        "the symptom's threshold (initcore.diagnose.SYMPTOMS: dead_frac > 0.6, saturated_frac > 0.3, grad_norm < "
        "1e-6 or > 10). Pale bands: the mean field (dead and saturated fractions: theory.mlp_mean_field; gradients: "
        "the backward mean field anchored at the output layer); shaded: the failing run's baselines (16 seeds, "
        "mean ± 2 sd). Dead ReLU: He weights with bias -0.5 put the pre-activation at N(-0.5, 2), killing "
        "Phi(-0.5/sqrt(2)) = 64% of layer 0 and more in each following layer; a 0.01 bias brings it back to 50%.",
        table, lambda fig, t=table: draw.failures(fig, t), size=(12.0, 8.0), checks=tuple(checks))


def _diagnosis_table(traced) -> pd.DataFrame:
    rows = []
    for label, run, frame in traced:
        found = diagnose.diagnose(frame)
        rows.append({"run": label, "key": run.key, "symptoms": ", ".join(found["symptom"]) or "healthy",
                     "evidence": " | ".join(found["evidence"])})
    return pd.DataFrame(rows)


def collect(seed: int = 0, runs: ReportRuns | None = None, bands: SeedBands | None = None) -> list[Section]:
    """Run every experiment of the report at ``seed`` and return its sections, in page order."""
    runs = runs or ReportRuns()
    bands = bands if bands is not None else SeedBands()
    traced: list[tuple[str, object, pd.DataFrame]] = []  # (label, run, frame) for the diagnosis table
    sections = _depth_sections(runs, seed, bands, traced)
    sections.append(_xavier_section(runs, seed, bands))
    sections.append(_activation_section(runs, seed, bands, traced))
    sections.append(_failure_section(runs, seed, bands, traced))
    sections += _transformer_sections(runs, seed, bands)
    sections.append(_depth_scaling_section(runs, seed))
    sections.append(_attention_section(runs, seed))
    sections.append(_mha_trap_section(runs, seed))
    sections.append(_width_section(runs, seed))
    from initcore.report import precision  # here: it builds on this module's Section
    sections.append(precision.section(runs, seed))
    sections.append(Section("diagnosis", "Diagnosis of every run (initcore.diagnose)",
                            "The symptoms found in each run's trace, with their evidence; empty means healthy.",
                            _diagnosis_table(traced)))
    guide = diagnose.symptom_table()
    guide["fixes"] = guide["fixes"].map(" | ".join)
    sections.append(Section("symptoms", "The debugging guide as data (initcore.diagnose.SYMPTOMS)",
                            "Each symptom's condition, threshold and why; the first fix is the one "
                            "bench/test_cures.py shows to cure it.", guide))
    if bands.problems:
        sections.append(Section("baselines", "Baselines not shown", "What kept seed bands or baseline checks off "
                                "this page.", pd.DataFrame({"problem": bands.problems})))
    return sections


# --------------------------------------------------------------------------------------------------
# A model of the user's
# --------------------------------------------------------------------------------------------------


def _stream_and_attention(frame: pd.DataFrame, where: str) -> list[Section]:
    """The residual stream (the rows of kind "block") and the attention (kind "attn"), where the model has them."""
    found = []
    stream = frame.loc[frame["kind"] == "block", ["module", "layer", "act_std", "act_rms", "out_grad_norm"]]
    stream = stream.reset_index(drop=True)
    if stream["act_std"].notna().any():
        found.append(Section(
            "model_residual", "The residual stream after each block",
            f"{where}. The output of each repeated block (a child of a ModuleList or Sequential that has children "
            "itself): the residual stream every later block reads. Its std should neither collapse nor grow "
            "geometrically with depth (initcore.diagnose's depth trend reads these rows on a model without "
            "Linear rows); the gradient wrt it should reach the first block.",
            stream,
            lambda fig, t=stream: draw.model_stream(fig, t), size=(11.0, 4.5)))
    attention = frame.loc[frame["kind"] == "attn", ["module", "layer", "logit_std", "attn_entropy",
                                                    "attn_entropy_norm", "attn_max"]].reset_index(drop=True)
    if attention["logit_std"].notna().any():
        found.append(Section(
            "model_attention", "Attention per layer: logit std and entropy",
            "Each scaled_dot_product_attention call (rows named <module>:sdpa): the std of its pre-softmax logits "
            "and its softmax entropy over log(keys seen). Logits of std much above 1 at init make attention "
            "nearly one-hot (entropy near 0, largest weight near 1), whose gradient vanishes; near 0 they make it "
            "uniform (entropy 1).",
            attention, lambda fig, t=attention: draw.model_attention(fig, t), size=(11.0, 4.5)))
    return found


def model_sections(label: str, model: torch.nn.Module, inputs, loss="random", select=None) -> list[Section]:
    """The report of one model, any ``nn.Module``: its trace's per-row statistics drawn (scale, gradients with
    the guide's thresholds, dead and saturated fractions, channel statistics), the residual stream and the
    attention where it has them, every tensor's log2 span against fp16, bf16 and fp8's ranges, its diagnosis,
    the trace."""
    frame = probe.trace(model, inputs, loss=loss, select=select, keep_outputs=True)
    outputs = frame.attrs.pop("outputs")
    channels = [channel_statistics(outputs[m]) if m in outputs else (math.nan, math.nan) for m in frame["module"]]
    frame = frame.assign(channel_sq_mean=[c[0] for c in channels], channel_var=[c[1] for c in channels])
    frame = frame.reset_index(drop=True)
    found = diagnose.diagnose(frame)
    symptoms = ", ".join(found["symptom"])
    grad_lines = _grad_thresholds()
    fraction_lines = [(diagnose.SYMPTOMS[n].threshold, f"{n.replace('_', ' ')}: {diagnose.SYMPTOMS[n].condition}")
                      for n in ("dead_relu", "saturation")]
    where = f"{label}: {len(frame)} rows, traced with loss {loss if isinstance(loss, str) else 'a callable'}"
    scale = frame[["module", "kind", "layer", "act_std", "preact_std", "act_rms"]]
    grads = frame[["module", "kind", "layer", "grad_norm", "out_grad_norm"]]
    fractions = frame[["module", "kind", "layer", "dead_frac", "saturated_frac"]]
    spp = frame[["module", "kind", "layer", "channel_sq_mean", "channel_var"]]
    from initcore.report import precision  # here: it builds on this module's Section
    spans = precision.span_table(precision.spans.spans(model, inputs, loss, select=select))
    return [
        *_stream_and_attention(frame, where),
        Section("model_scale", "Activation scale per row",
                f"{where}. Each row's output std (and its pre-activation's, where the row is an activation "
                "module): a healthy network keeps these within a decade or so from input to output.",
                scale, lambda fig, t=scale: draw.model_rows(fig, t, [("act_std", "output std"),
                                                                     ("preact_std", "pre-activation std"),
                                                                     ("act_rms", "output rms")], "Scale per row"),
                size=(11.0, 5.0),
                checks=(Check("model_scale", "initcore.diagnose: every symptom of the guide", not symptoms,
                              symptoms or "healthy: no symptom found"),)),
        Section("model_grad", "Gradient norms per row, with the guide's thresholds",
                "The norm of the loss gradient wrt each row's parameters, and wrt its output. Dashed red: "
                f"initcore.diagnose's thresholds, below {grad_lines[0][0]:g} vanishing and above "
                f"{grad_lines[1][0]:g} exploding.",
                grads, lambda fig, t=grads: draw.model_rows(fig, t, [("grad_norm", "parameter gradient norm"),
                                                                     ("out_grad_norm", "output gradient norm")],
                                                            "Gradients per row", lines=grad_lines), size=(11.0, 5.0)),
        Section("model_fractions", "Dead and saturated fractions per row",
                "The share of outputs exactly 0 (dead ReLU units) and of bounded activations' outputs past 0.9 "
                "(saturated). Dashed red: the guide's thresholds.",
                fractions, lambda fig, t=fractions: draw.model_rows(fig, t, [("dead_frac", "dead fraction"),
                                                                             ("saturated_frac", "saturated fraction")],
                                                                    "Fractions per row", log=False,
                                                                    lines=fraction_lines), size=(11.0, 5.0)),
        Section("model_channels", "Signal propagation per row (NFNets style)",
                "As Brock et al. (2021): each row's average channel squared mean (drift of the channels' means "
                "from 0) and average channel variance; channels are dim 1 of a 4-D activation, else the last dim.",
                spp, lambda fig, t=spp: draw.model_rows(fig, t, [("channel_sq_mean", "average channel squared mean"),
                                                                 ("channel_var", "average channel variance")],
                                                        "Channel statistics per row"), size=(11.0, 5.0)),
        precision.model_section(spans, where, "model_precision"),
        Section("model_diagnosis", "Diagnosis (initcore.diagnose)", "Each symptom found, with its evidence and "
                "first fix; empty means healthy.",
                found.assign(fix=[diagnose.SYMPTOMS[s].fixes[0].text for s in found["symptom"]])[
                    ["symptom", "problem", "evidence", "fix"]]),
        Section("model_trace", "The trace (initcore.probe.trace)", "Every statistic of every row.",
                frame.drop(columns=["channel_sq_mean", "channel_var"]).dropna(axis=1, how="all")),
    ]
