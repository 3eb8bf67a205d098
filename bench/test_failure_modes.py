"""5. Failure modes: the notebook's ``demonstrate_initialization_failures``, each with its own symptom.

A 6-layer, 256-wide MLP, batch 100, loss = mean of the squared output, ReLU unless said otherwise
(``experiments.FAILURE_RUNS``). Symptoms are read by ``initcore.diagnose`` with the thresholds of the
notebook's debugging guide as that module makes them exact: a weight grad norm < 1e-6 is vanishing, > 10
exploding; a ReLU layer with > 60% zeros is dead (the guide's 50% is what every healthy zero-bias ReLU
layer shows, see ``diagnose.SYMPTOMS["dead_relu"].why``); > 30% of tanh outputs with |a| > 0.9 is
saturation. Each failure must show its own defining symptom and none of the others' (the four are the
guide's: vanishing and exploding gradients, dead units, saturated units). ``diagnose`` also reads the
forward pass: a scale error shows as a geometric trend of the std with depth, which the vanishing and
exploding runs must show (shrinking, growing). A dying ReLU network loses its signal too (its std falls
~190x over 5 layers as units die, accelerating): whether that fall fits the trend's straight line
(R^2 >= 0.9) depends on the seed, so "shrinking_signal" is allowed there, not required.
"""

from __future__ import annotations

import math

import pytest

from initcore import diagnose, experiments, theory

EXPERIMENT = "failure_modes"
RUNS = experiments.FAILURE_RUNS
WIDTH = experiments.FAILURE_MLP.width

# failure -> its defining symptom, the guide's; no failure shows another's
DEFINING = {
    "vanishing": "vanishing_gradients",
    "exploding": "exploding_gradients",
    "dead_relu": "dead_relu",
    "saturation": "saturation",
}
# failure -> the forward-pass (depth trend) symptoms it must show, and those it may show
TRENDS_REQUIRED = {"vanishing": {"shrinking_signal"}, "exploding": {"growing_signal"}}
TRENDS_ALLOWED = {"dead_relu": {"shrinking_signal"}}


def probe_rows(frame):
    return frame[frame["kind"] != "param"]


def symptoms(frame) -> set[str]:
    return set(diagnose.diagnose(probe_rows(frame))["symptom"])


def threshold(name: str) -> float:
    return diagnose.SYMPTOMS[name].threshold


def linear(frame):
    return frame[frame["kind"] == "linear"].reset_index(drop=True)


def test_every_failure_mode_is_covered_and_distinct():
    assert set(DEFINING) == set(RUNS)
    assert len(set(DEFINING.values())) == len(DEFINING)
    assert set(DEFINING.values()) <= set(diagnose.SYMPTOMS)


@pytest.mark.parametrize("name", list(RUNS))
def test_matches_baseline(name, trace_run, baseline):
    run = RUNS[name]
    baseline.check(EXPERIMENT, run, trace_run(run))


@pytest.mark.parametrize("name", list(RUNS))
def test_shows_its_own_symptoms_only(name, trace_run):
    found = symptoms(trace_run(RUNS[name]))
    required = {DEFINING[name]} | TRENDS_REQUIRED.get(name, set())
    allowed = required | TRENDS_ALLOWED.get(name, set())
    assert required <= found <= allowed, f"{name}: found {sorted(found)}, required {sorted(required)}, " \
                                         f"allowed {sorted(allowed)}"


def test_vanishing(trace_run):
    """N(0, 0.001^2) at width 256: sigma_w^2 = 256e-6, and ReLU halves the second moment, so each layer
    multiplies the pre-activation variance by 1.28e-4 (std x0.011): after 6 layers the output is ~1e-12
    and every weight gradient, scaled by it, is far below the 1e-6 of the guide (~1e-22, partly lost to
    float32 underflow near the input). Half the units are zero, as for any zero-bias ReLU: not dead."""
    frame = linear(trace_run(RUNS["vanishing"]))
    per_layer = math.sqrt(RUNS["vanishing"].promised(1).variance * WIDTH / 2)
    assert (frame["grad_norm"] < threshold("vanishing_gradients")).all()
    ratios = (frame["preact_std"].iloc[1:].to_numpy() / frame["preact_std"].iloc[:-1].to_numpy())
    assert (ratios < 10 * per_layer).all(), f"per-layer preact std ratios {ratios}, theory {per_layer:.3g}"
    assert frame["dead_frac"].iloc[:-1].max() <= threshold("dead_relu")


def test_exploding(trace_run):
    """N(0, 2^2) at width 256: sigma_w^2 = 1024, so each ReLU layer multiplies the pre-activation
    variance by 512 (std x22.6): the output std reaches ~1e8 and the weight gradients of the square loss
    ~1e15, beyond the guide's 10 in every layer. Nothing saturates (ReLU is unbounded), nothing is NaN
    in float32 yet, and the sign pattern, hence the dead fraction, is the vanishing run's exactly."""
    frame = linear(trace_run(RUNS["exploding"]))
    per_layer = math.sqrt(RUNS["exploding"].promised(1).variance * WIDTH / 2)
    assert (frame["grad_norm"] > threshold("exploding_gradients")).all()
    ratios = (frame["preact_std"].iloc[1:].to_numpy() / frame["preact_std"].iloc[:-1].to_numpy())
    assert (ratios > per_layer / 10).all(), f"per-layer preact std ratios {ratios}, theory {per_layer:.3g}"
    assert frame["nan_count"].sum() == 0 and frame["inf_count"].sum() == 0
    vanishing = linear(trace_run(RUNS["vanishing"]))
    assert (frame["dead_frac"] == vanishing["dead_frac"]).all()


def test_dead_relu(trace_run):
    """He weights (sigma_w^2 = 2) with every bias -0.5. The notebook's dead-ReLU case (std 1.0, bias -1)
    explodes instead (see test_notebook_dead_relu_explodes). Here layer 0's pre-activation is
    N(-0.5, 2): Phi(-0.5/sqrt 2) = 64% of its units are zero, and each layer shrinks the signal the next
    one sees, so more die: the mean field gives 64%, 68%, 76%, 92%, 100%. Gradients stay in the guide's
    healthy range (1e-4 .. 1e-2): units die, the network does not vanish or explode."""
    run = RUNS["dead_relu"]
    frame = linear(trace_run(run))
    hidden = frame.iloc[:-1]
    mf = theory.mlp_mean_field("relu", run.model.depth, 2.0, bias=run.bias)
    assert (mf["dead_frac"][:-1] > threshold("dead_relu")).all()
    assert (hidden["dead_frac"] > threshold("dead_relu")).all(), hidden["dead_frac"].tolist()
    assert hidden["dead_frac"].is_monotonic_increasing
    assert threshold("vanishing_gradients") < frame["grad_norm"].min()
    assert frame["grad_norm"].max() < threshold("exploding_gradients")


def test_saturation(trace_run):
    """tanh with N(0, 0.2^2) at width 256: sigma_w^2 = 10.24, pre-activation std ~2.7 in every layer (the
    mean-field fixed point), so ~60% of the hidden outputs have |tanh| > 0.9, past the guide's 30%. The
    backward factor chi = sigma_w^2 E[tanh'(h)^2] ~ 1.9 grows gradients only mildly: every weight grad
    norm stays within the guide's 1e-6 .. 10. The notebook's std 3.0 saturates too, but explodes as well
    (see test_notebook_saturation_also_explodes)."""
    run = RUNS["saturation"]
    frame = linear(trace_run(run))
    hidden = frame.iloc[:-1]
    mf = theory.mlp_mean_field("tanh", run.model.depth, run.sigma_w2())
    assert (mf["saturated_frac"][:-1] > threshold("saturation")).all()
    assert (hidden["saturated_frac"] > threshold("saturation")).all(), hidden["saturated_frac"].tolist()
    assert threshold("vanishing_gradients") < frame["grad_norm"].min()
    assert frame["grad_norm"].max() < threshold("exploding_gradients")
    assert theory.chi("tanh", run.sigma_w2()[3], mf["preact_var"][2]) < 2.5


def test_notebook_saturation_also_explodes(trace_run):
    """The notebook's saturation case, tanh with std 3.0 at width 256 (sigma_w^2 = 2304): 97% saturated,
    and chi ~ 26 per layer backwards, so the gradients near the input exceed the guide's 10 by far."""
    run = experiments.SATURATION_NOTEBOOK
    assert symptoms(trace_run(run)) == {"saturation", "exploding_gradients"}
    sigma_w2 = WIDTH * run.promised(1).variance
    assert theory.chi("tanh", sigma_w2, theory.mlp_mean_field("tanh", 6, sigma_w2)["preact_var"][2]) > 10


def test_notebook_dead_relu_explodes(trace_run):
    """The notebook's dead-ReLU case, std 1.0 and bias -1 at width 256: the pre-activation std is ~16 per
    unit of input (sigma_w^2 = 256), so a bias of -1 shifts almost nothing: about half the units are zero,
    as always, and the signal explodes x11 per layer."""
    frame = trace_run(experiments.DEAD_RELU_NOTEBOOK)
    assert symptoms(frame) == {"exploding_gradients", "growing_signal"}
    assert linear(frame)["dead_frac"].iloc[:-1].max() < threshold("dead_relu")
