"""2. One Xavier layer per shape: the notebook's ``demonstrate_xavier_theory``, measured correctly.

For y = W x with Var(w) = 2/(fan_in + fan_out) (Glorot & Bengio 2010), zero bias:

    forward   Var(y) / Var(x)         = fan_in  * Var(w) = 2 fan_in  / (fan_in + fan_out)
    backward  Var(dL/dx) / Var(dL/dy) = fan_out * Var(w) = 2 fan_out / (fan_in + fan_out)

Both are 1 only for a square layer; Xavier's choice is the compromise between them. The notebook claims
the forward ratio is ~1 "regardless of layer shape" (bottleneck 512->128 gives 1.6, expansion 128->512
gives 0.4), and its gradient measurement crashes: it takes y from a ``torch.no_grad()`` block, so
``loss.backward()`` never reaches the layer. Here the gradient flows, and dL/dy is a fixed random
projection r ~ N(0, 1) (L = sum(y * r)): the notebook's L = sum(y) gives dL/dy = 1 everywhere, a
gradient with zero variance, for which the backward ratio is 0/0.
"""

from __future__ import annotations

import math

import pandas as pd
import pytest
import torch
from torch import nn

from initcore import experiments, probe, theory
from initcore.testing import measure

EXPERIMENT = "xavier_shapes"
RUNS = experiments.XAVIER_RUNS
STATISTICS = {"linear": ("forward_ratio", "backward_ratio", "preact_std", "grad_norm"),
              "param": measure.PARAM_STATISTICS}


def measure_layer(run: experiments.MLPRun, seed: int, device: str) -> pd.DataFrame:
    """The probe frame of the one-layer run with L = sum(y * r), plus ``forward_ratio`` and
    ``backward_ratio`` on its row, and the parameter rows. r is drawn from the run's generator after
    the weights and x, on the CPU, like them."""
    model, x, generator = measure.build(run, seed, device)
    r = torch.randn(run.batch, run.model.width, generator=generator).to(device)
    x.requires_grad_(True)
    frame = probe.trace(model, x, loss=lambda y: (y * r).sum())
    with torch.no_grad():
        y = model(x)
        frame.loc[0, "forward_ratio"] = (y.var() / x.var()).item()
        frame.loc[0, "backward_ratio"] = (x.grad.var() / r.var()).item()  # dL/dy = r
    return pd.concat([frame, measure.parameter_stats(model)], ignore_index=True)


def predicted(name: str) -> tuple[float, float]:
    fan_in, fan_out = experiments.XAVIER_SHAPES[name]
    var = experiments.XAVIER_RUNS[name].promised(0).variance
    forward, backward = theory.forward_ratio(fan_in, var), theory.backward_ratio(fan_out, var)
    assert forward == pytest.approx(2 * fan_in / (fan_in + fan_out))  # the closed forms of the docstring
    assert backward == pytest.approx(2 * fan_out / (fan_in + fan_out))
    return forward, backward


def ratios(name, trace_run, baseline):
    run = RUNS[name]
    frame = trace_run(run, measure=measure_layer, statistics=STATISTICS)
    rows = baseline.rows(EXPERIMENT, run, measure=measure_layer, statistics=STATISTICS)
    return frame, rows


@pytest.mark.parametrize("name", list(RUNS))
def test_matches_baseline(name, trace_run, baseline):
    run = RUNS[name]
    frame = trace_run(run, measure=measure_layer, statistics=STATISTICS)
    baseline.check(EXPERIMENT, run, frame, measure=measure_layer, statistics=STATISTICS)


@pytest.mark.parametrize("name", list(RUNS))
def test_ratios_match_theory(name, trace_run, baseline):
    """Both ratios within K seed spreads (stored with the baseline, + 2%) of the closed forms. The spread
    is the sampling noise of one layer: the mean of fan_in * fan_out squared uniform weights (relative
    std sqrt(0.8 / (fan_in fan_out)), 0.9% for 100x100) and of the batch's input covariance."""
    frame, rows = ratios(name, trace_run, baseline)
    forward, backward = predicted(name)
    measured = measure.tidy(frame, {"linear": ("forward_ratio", "backward_ratio")})
    theory_rows = pd.DataFrame({"layer": ["layers.0", "layers.0"], "statistic": ["forward_ratio", "backward_ratio"],
                                "value": [forward, backward]})
    measure.assert_theory(measured, theory_rows, rows, what=RUNS[name].key)


@pytest.mark.parametrize("name", list(RUNS))
def test_notebook_claim_ratio_near_one(name, trace_run, baseline):
    """"Xavier keeps variance ratios close to 1.0 ... regardless of layer shape": true for square layers
    (1 is inside the measured band), false for bottleneck and expansion (1 is far outside it), forward
    and backward alike."""
    frame, rows = ratios(name, trace_run, baseline)
    fan_in, fan_out = experiments.XAVIER_SHAPES[name]
    for statistic in ("forward_ratio", "backward_ratio"):
        value = frame.loc[0, statistic]
        tol, _ = measure.theory_tolerance(rows, "layers.0", statistic)
        one_inside = abs(math.log(value)) <= tol
        assert one_inside == (fan_in == fan_out), f"{statistic} = {value:.4f} (band ±{tol:.3f} in log)"


def test_notebook_gradient_measurement_crashes():
    """The notebook's code, verbatim in effect: y made under no_grad has no graph, so after
    ``y.requires_grad_(True); y.sum().backward()`` the layer's weight has no gradient and
    ``layer.weight.grad.var()`` raises. And the gradient that sum(y) would give is constant."""
    layer = nn.Linear(100, 100)
    x = torch.randn(1000, 100)
    with torch.no_grad():
        y = layer(x)
    y.requires_grad_(True)
    y.sum().backward()
    assert layer.weight.grad is None
    with pytest.raises(AttributeError):
        layer.weight.grad.var()
    assert y.grad.var().item() == 0.0  # dL/dy of sum(y): all ones, no variance to take a ratio of
