"""1. Depth and init: the notebook's ``analyze_initialization_impact``, asserted.

A 10-layer tanh MLP, 512 wide, batch 64, loss = mean of the output, under normal:0.01 (too small),
normal:1.0 (too large), Xavier and He (``experiments.DEPTH_RUNS``). Each shows what the notebook says it
shows, in numbers from the mean-field theory (``theory.mlp_mean_field`` with sigma_w^2 = fan_in * Var(w)
the strategy declares, ``run.sigma_w2()``), and every layer's stds lie in a band around that theory whose width is
the finite-width seed spread stored with the baseline (``measure.theory_tolerance``).
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from initcore import experiments, probe, theory
from initcore.testing import measure

EXPERIMENT = "depth_init"
RUNS = experiments.DEPTH_RUNS
WIDTH = experiments.DEPTH_MLP.width

# The notebook's own verdicts (its "ANALYSIS SUMMARY"): final activation std < 0.1 vanishing, > 10
# exploding; average weight-gradient norm < 1e-6 vanishing, > 1 "large gradients".
HEALTHY_FINAL_STD = (0.1, 10.0)
HEALTHY_GRAD_NORM = (1e-6, 1.0)


def hidden(frame):
    """The Linear rows followed by tanh (all but the last layer)."""
    rows = frame[frame["kind"] == "linear"]
    return rows[rows["layer"] < rows["layer"].max()]


def linear(frame):
    return frame[frame["kind"] == "linear"].reset_index(drop=True)


@pytest.mark.parametrize("name", list(RUNS))
def test_matches_baseline(name, trace_run, baseline):
    run = RUNS[name]
    baseline.check(EXPERIMENT, run, trace_run(run))


@pytest.mark.parametrize("name", list(RUNS))
def test_stds_within_theory_band(name, trace_run, baseline):
    """preact_std, act_std (every layer) and saturated_frac (hidden layers) against the mean field."""
    run = RUNS[name]
    frame = trace_run(run)
    predicted = probe.mlp_theory(run.model, run.init)
    predicted["module"] = [f"layers.{i}" for i in predicted["layer"]]
    long = predicted.melt(id_vars=["module"], value_vars=["preact_std_theory", "act_std_theory",
                                                          "saturated_frac_theory"])
    long = long.dropna().rename(columns={"module": "layer", "variable": "statistic"})
    long["statistic"] = long["statistic"].str.removesuffix("_theory")
    measured = measure.tidy(frame, {"linear": ("preact_std", "act_std", "saturated_frac")})
    measure.assert_theory(measured, long, baseline.rows(EXPERIMENT, run), what=run.key)


def test_too_small_vanishes(trace_run):
    """normal:0.01 at width 512: sigma_w^2 = 512 * 1e-4 = 0.0512. tanh is the identity near 0, so each
    layer multiplies the std by sigma_w = 0.226: after 10 layers 0.226^10 ~ 3e-7. The gradients of the
    weights vanish with it (the notebook's "< 1e-6" rule)."""
    frame = linear(trace_run(RUNS["too_small"]))
    sigma_w = math.sqrt(WIDTH * RUNS["too_small"].promised(1).variance)
    ratios = frame["act_std"].to_numpy()[1:] / frame["act_std"].to_numpy()[:-1]
    # +-10% around sigma_w: the seed spread of one layer's ratio is ~0.5% (log), so this is ~20 spreads wide.
    assert np.all(np.abs(np.log(ratios / sigma_w)) < 0.1), f"per-layer act_std ratios {ratios}, theory {sigma_w:.4f}"
    assert frame["act_std"].iloc[-1] < 1e-3 < HEALTHY_FINAL_STD[0]
    assert frame["grad_norm"].mean() < HEALTHY_GRAD_NORM[0]
    assert (frame["saturated_frac"].dropna() == 0).all()


def test_too_large_saturates_and_explodes(trace_run):
    """normal:1.0 at width 512: sigma_w^2 = 512, so pre-activations have std sqrt(512 E[tanh^2]) ~ 22
    from layer 1 on and tanh saturates: P(|h| > atanh 0.9 = 1.47) = 0.947 (mean field). The output layer
    is linear: its std ~22 is the notebook's "exploding activations" (> 10); the weight gradients near
    the input explode too (chi = 512 E[tanh'(h)^2] ~ 15 per layer backwards)."""
    run = RUNS["too_large"]
    frame = linear(trace_run(run))
    mf = theory.mlp_mean_field("tanh", 10, run.sigma_w2())
    assert mf["saturated_frac"][1] > 0.9 and mf["preact_std"][1] > 20  # what the theory says
    hid = hidden(trace_run(run))
    assert (hid["saturated_frac"] > 0.9).all(), hid["saturated_frac"].tolist()
    assert (hid["preact_std"] > 10).all(), hid["preact_std"].tolist()
    assert frame["act_std"].iloc[-1] > HEALTHY_FINAL_STD[1]
    assert frame["grad_norm"].iloc[0] > 10
    assert theory.chi("tanh", WIDTH, mf["preact_var"][1]) > 10
    assert frame["nan_count"].sum() == 0 and frame["inf_count"].sum() == 0


@pytest.mark.parametrize("name", ["xavier", "he"])
def test_xavier_and_he_are_healthy(name, trace_run):
    """Healthy by the notebook's own rules: final std in [0.1, 10], average gradient norm in [1e-6, 1],
    and the average saturation of the hidden layers below the 30% of its failure-mode guide. Xavier
    (sigma_w^2 = 1) slowly loses signal (q_l ~ 1/l for tanh at criticality); He (sigma_w^2 = 2) keeps a
    fixed point q* ~ 0.62 but saturates ~30% of layer 0 (theory 0.298, on the guide's line)."""
    frame = linear(trace_run(RUNS[name]))
    lo, hi = HEALTHY_FINAL_STD
    assert lo <= frame["act_std"].iloc[-1] <= hi
    lo, hi = HEALTHY_GRAD_NORM
    assert lo <= frame["grad_norm"].mean() <= hi
    assert hidden(frame)["saturated_frac"].mean() < 0.3
    assert frame["nan_count"].sum() == 0 and frame["inf_count"].sum() == 0


def test_he_keeps_more_signal_than_xavier(trace_run):
    """The deepest hidden layer keeps more signal under He than under Xavier: mean field 0.557 vs 0.241."""
    he, xavier = hidden(trace_run(RUNS["he"])), hidden(trace_run(RUNS["xavier"]))
    assert he["act_std"].iloc[-1] > 1.5 * xavier["act_std"].iloc[-1]
