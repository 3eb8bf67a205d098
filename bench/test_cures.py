"""The debugging guide's fixes, tested: each failure mode of the bench shows its symptom, and the first
fix that ``initcore.diagnose`` suggests for it, applied to the run, removes it.

The failure modes are ``experiments.FAILURE_RUNS`` (a 6-layer, 256-wide MLP, batch 100, loss mean of the
squared output); each fix is data (``diagnose.SYMPTOMS[name].fixes[0].apply``: run -> fixed run, a
``dataclasses.replace``). Weights and inputs are drawn on the CPU from the run's seed, then moved.

    pytest bench/test_cures.py --seed S --device cpu|cuda|all
"""

from __future__ import annotations

import pytest
import torch

from initcore import diagnose, experiments, probe, theory

# failure mode -> the symptom it is built to show
FAILURES = {
    "vanishing": "vanishing_gradients",
    "exploding": "exploding_gradients",
    "dead_relu": "dead_relu",
    "saturation": "saturation",
}


def _trace(run, seed: int, device: str):
    model, inputs = run.build(torch.Generator().manual_seed(seed))
    return probe.trace(model.to(device), inputs.to(device), loss=run.loss)


def test_every_failure_mode_is_covered():
    assert set(FAILURES) == set(experiments.FAILURE_RUNS)


@pytest.mark.parametrize("mode", list(FAILURES))
def test_failure_shows_its_symptom(mode, device, seed):
    found = diagnose.diagnose(_trace(experiments.FAILURE_RUNS[mode], seed, device))
    assert FAILURES[mode] in set(found["symptom"]), f"{mode}: found only {list(found['symptom'])}"


@pytest.mark.parametrize("mode", list(FAILURES))
def test_first_fix_cures(mode, device, seed):
    """The first fix removes the symptom, and leaves no other behind (measured over seeds 0..29: the
    fixed runs are He for ReLU, Xavier for tanh and a 0.01 bias; none shows any symptom)."""
    run = experiments.FAILURE_RUNS[mode]
    fix = diagnose.SYMPTOMS[FAILURES[mode]].fixes[0]
    assert fix.apply is not None, f"the first fix for {mode} must be applicable to a run"
    fixed = fix.apply(run)
    assert fixed != run
    before = diagnose.diagnose(_trace(run, seed, device))
    after = diagnose.diagnose(_trace(fixed, seed, device))
    assert FAILURES[mode] in set(before["symptom"])
    assert after.empty, f"{mode} after {fix.text!r} ({fixed.key}):\n{diagnose.format_findings(after)}"


def test_vanishing_and_exploding_share_their_cure():
    # Both are the same ReLU network at the wrong scale (N(0, 0.001²), N(0, 2²)); the cure sets the scale
    # He derived for ReLU, Var = 2/fan_in, so both fixed runs are one run.
    vanishing, exploding = (diagnose.SYMPTOMS[FAILURES[m]].fixes[0].apply(experiments.FAILURE_RUNS[m])
                            for m in ("vanishing", "exploding"))
    assert vanishing == exploding
    assert vanishing.init == "kaiming_normal"


def test_leaky_relu_removes_the_zeros_not_the_collapse(device, seed):
    """The guide's second fix for dead ReLUs, LeakyReLU, clears the symptom only by its definition.

    With the bias still at -0.5, no output is exactly 0 any more (dead_frac 0), but most units sit on
    the 0.01 slope, and the signal still collapses as the mean field predicts (theory.mlp_mean_field,
    leaky_relu, sigma_w² = 2, b = -0.5: act_std 0.66, 0.44, 0.24, 0.063, ...); the first fix, a 0.01
    bias, keeps it at He's unit scale. Measured last-layer std ratio leaky / first fix: < 0.02 (seeds
    0..29); asserted < 0.1.
    """
    run = experiments.FAILURE_RUNS["dead_relu"]
    first, leaky = (f.apply(run) for f in diagnose.SYMPTOMS["dead_relu"].fixes[:2])
    assert leaky.model.activation == "leaky_relu"
    frame_leaky, frame_first = _trace(leaky, seed, device), _trace(first, seed, device)
    assert "dead_relu" not in set(diagnose.diagnose(frame_leaky)["symptom"])
    assert frame_leaky["dead_frac"].max() == 0.0
    assert frame_leaky["act_std"].iloc[-1] < 0.1 * frame_first["act_std"].iloc[-1]
    predicted = theory.mlp_mean_field("leaky_relu", run.model.depth, 2.0, bias=run.bias)["act_std"]
    # the first two layers, where width 256 is still close to the mean field (measured within 5%)
    assert frame_leaky["act_std"].iloc[:2].to_numpy() == pytest.approx(predicted[:2], rel=0.1)
