"""3. Xavier vs He per activation: the notebook's ``compare_initialization_with_activations``, against theory.

8 Linear layers, 512 wide, batch 1000, tanh / ReLU / GELU / SiLU after each but the last, Xavier uniform
(sigma_w^2 = fan_in Var(w) = 1) or He uniform (sigma_w^2 = 2), plus Xavier with torch's tanh gain 5/3
(``experiments.ACTIVATION_RUNS``). The mean field (``theory.mlp_mean_field``) predicts every layer's
pre-activation and activation std, ReLU's dead fraction and tanh's saturation; the bands around it are
K seed spreads of the baseline wide (``measure.theory_tolerance``).

Besides the probe's rows, each run gets one pooled row "layers.*": ``preact_var_ratio``, the geometric
mean over layers of Var(h_l) / Var(h_{l-1}) (mean field: (q_7/q_0)^(1/7)), and ``dead_frac``, the mean
over the hidden layers. Pooling shrinks the seed spread (a ReLU layer's std wanders ~4% per layer at
width 512), which is what lets He's 1 and Xavier's 1/2 be told apart with room to spare.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from initcore import experiments, probe, theory
from initcore.testing import measure

EXPERIMENT = "activations"
RUNS = {f"{act}-{init}": run for (act, init), run in experiments.ACTIVATION_RUNS.items()}
DEPTH = 8
STATISTICS_EXTRA = {"pooled": ("preact_var_ratio", "dead_frac")}


def statistics(run):
    return {**measure.statistics_for(run), **STATISTICS_EXTRA}


def with_pooled(frame: pd.DataFrame) -> pd.DataFrame:
    """``frame`` plus the pooled row "layers.*" (kind "pooled")."""
    lin = frame[frame["kind"] == "linear"]
    var = lin["preact_std"].to_numpy() ** 2
    ratio = float(np.exp(np.mean(np.diff(np.log(var)))))  # = (q_last / q_0)^(1 / (depth - 1))
    dead = float(lin["dead_frac"].iloc[:-1].mean())
    pooled = pd.DataFrame([{"module": "layers.*", "kind": "pooled", "layer": -1, "preact_var_ratio": ratio,
                            "dead_frac": dead}])
    return pd.concat([frame, pooled], ignore_index=True)


def measure_pooled(run, seed: int, device: str) -> pd.DataFrame:
    return with_pooled(measure.measure(run, seed, device))


def measured(name, trace_run):
    run = RUNS[name]
    return trace_run(run, measure=measure_pooled, statistics=statistics(run))


def baseline_rows(name, baseline):
    run = RUNS[name]
    return baseline.rows(EXPERIMENT, run, measure=measure_pooled, statistics=statistics(run))


def mean_field(run) -> dict[str, np.ndarray]:
    return theory.mlp_mean_field(run.model.activation, run.model.depth, run.sigma_w2())


def predicted_ratio(run) -> float:
    q = mean_field(run)["preact_var"]
    return float((q[-1] / q[0]) ** (1 / (len(q) - 1)))


@pytest.mark.parametrize("name", list(RUNS))
def test_matches_baseline(name, trace_run, baseline):
    run = RUNS[name]
    baseline.check(EXPERIMENT, run, measured(name, trace_run), measure=measure_pooled, statistics=statistics(run))


@pytest.mark.parametrize("name", list(RUNS))
def test_within_theory_band(name, trace_run, baseline):
    """Every layer's preact_std and act_std, ReLU's dead_frac, tanh's saturated_frac, and the pooled
    layer-to-layer variance ratio, against the mean field."""
    run = RUNS[name]
    frame = measured(name, trace_run)
    gain = run.gain if isinstance(run.gain, float) else None
    pred = probe.mlp_theory(run.model, run.init, gain=gain)
    pred["module"] = [f"layers.{i}" for i in pred["layer"]]
    keep = ["preact_std_theory", "act_std_theory"]
    if run.model.activation == "relu":
        keep.append("dead_frac_theory")
    if run.model.activation == "tanh":
        keep.append("saturated_frac_theory")
    long = pred.melt(id_vars=["module"], value_vars=keep).dropna()
    long = long.rename(columns={"module": "layer", "variable": "statistic"})
    long["statistic"] = long["statistic"].str.removesuffix("_theory")
    output = f"layers.{DEPTH - 1}"
    long = long[~((long["statistic"] == "dead_frac") & (long["layer"] == output))]  # a linear output: no zeros
    pooled = pd.DataFrame({"layer": ["layers.*"], "statistic": ["preact_var_ratio"], "value": [predicted_ratio(run)]})
    long = pd.concat([long, pooled], ignore_index=True)
    stats = {"linear": ("preact_std", "act_std", "dead_frac", "saturated_frac"), "pooled": ("preact_var_ratio",)}
    measure.assert_theory(measure.tidy(frame, stats), long, baseline_rows(name, baseline), what=run.key)


def test_relu_he_keeps_variance_xavier_halves_it(trace_run, baseline):
    """ReLU passes E[relu(h)^2] = q/2 on, so Var(h_{l+1}) / Var(h_l) = sigma_w^2 / 2: 1 for He
    (sigma_w^2 = 2), 1/2 for Xavier (sigma_w^2 = 1). Measured as the pooled geometric mean over the 7
    steps; each band (K pooled seed spreads) holds its own theory value and excludes the other's."""
    values = {}
    for init, expected in (("kaiming_uniform", 1.0), ("xavier_uniform", 0.5)):
        name = f"relu-{init}"
        assert predicted_ratio(RUNS[name]) == pytest.approx(expected, rel=1e-9)
        frame = measured(name, trace_run)
        value = frame.loc[frame["module"] == "layers.*", "preact_var_ratio"].item()
        tol, _ = measure.theory_tolerance(baseline_rows(name, baseline), "layers.*", "preact_var_ratio")
        other = 0.5 if expected == 1.0 else 1.0
        assert abs(np.log(value / expected)) <= tol, f"{init}: ratio {value:.3f}, theory {expected}, band ±{tol:.3f}"
        assert abs(np.log(value / other)) > tol, f"{init}: ratio {value:.3f} cannot be told from {other}"
        values[init] = value
    assert values["kaiming_uniform"] > 1.5 * values["xavier_uniform"]


@pytest.mark.parametrize("init", ["xavier_uniform", "kaiming_uniform"])
def test_relu_dead_fraction_is_half(init, trace_run, baseline):
    """A zero-bias ReLU layer zeroes its negative half: dead_frac = P(h <= 0) = 1/2 in every hidden
    layer, whatever the weight scale (the sign pattern of a ReLU net is scale-free, so Xavier and He
    agree exactly). Pooled over the hidden layers, within K pooled seed spreads of 0.5."""
    name = f"relu-{init}"
    frame = measured(name, trace_run)
    value = frame.loc[frame["module"] == "layers.*", "dead_frac"].item()
    tol, _ = measure.theory_tolerance(baseline_rows(name, baseline), "layers.*", "dead_frac")
    assert abs(value - 0.5) <= tol, f"mean dead fraction {value:.4f}, band 0.5 ± {tol:.4f}"


def test_tanh_gain_keeps_signal_alive(trace_run):
    """Xavier with gain 5/3 (sigma_w^2 = 25/9) has a mean-field fixed point q* ~ 1.18: the signal
    settles instead of dying. Xavier with gain 1 sits at tanh's critical point, where q_l decays like
    1/l without end. Measured: the gain-5/3 stack's last hidden act_std stays > 0.5 (theory 0.652) and
    its last step changes the pre-activation std by < 2% (theory 0.1%), while gain 1's last hidden
    act_std is < 0.3 (theory 0.273) and still falling by > 4% per layer (theory 7%)."""
    gain = experiments.ACTIVATION_RUNS[("tanh", "xavier_uniform-gain")]
    plain = experiments.ACTIVATION_RUNS[("tanh", "xavier_uniform")]
    q_gain, q_plain = mean_field(gain)["preact_var"], mean_field(plain)["preact_var"]
    assert q_gain[-1] / q_gain[-2] > 0.99 and q_plain[-1] / q_plain[-2] < 0.9  # theory: fixed point vs decay
    with_gain = measured("tanh-xavier_uniform-gain", trace_run)
    without = measured("tanh-xavier_uniform", trace_run)
    lin_gain, lin_plain = (f[f["kind"] == "linear"].reset_index(drop=True) for f in (with_gain, without))
    last = DEPTH - 2  # the last hidden layer
    assert lin_gain.loc[last, "act_std"] > 0.5
    assert abs(np.log(lin_gain.loc[last, "preact_std"] / lin_gain.loc[last - 1, "preact_std"])) < 0.02
    assert lin_plain.loc[last, "act_std"] < 0.3
    assert lin_plain.loc[last, "preact_std"] / lin_plain.loc[last - 1, "preact_std"] < 0.96


@pytest.mark.parametrize("activation", ["relu", "gelu", "silu"])
def test_he_keeps_more_signal_than_xavier(activation, trace_run):
    """The notebook's recommendation, checked: for ReLU-like activations He's final std exceeds
    Xavier's (mean field: relu 1.41 vs 0.088, gelu 0.96 vs 0.015, silu 0.39 vs 0.011)."""
    he = measured(f"{activation}-kaiming_uniform", trace_run)
    xavier = measured(f"{activation}-xavier_uniform", trace_run)
    final = f"layers.{DEPTH - 1}"
    he_std = he.loc[he["module"] == final, "act_std"].item()
    xavier_std = xavier.loc[xavier["module"] == final, "act_std"].item()
    assert he_std > 4 * xavier_std
