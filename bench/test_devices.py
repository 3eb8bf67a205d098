"""Devices: one configuration measured on two devices (or at two precisions) gives the same statistics.

Weights and inputs are drawn on the CPU from the run's seed and then moved (``measure.build``), so a
CUDA run starts from the CPU run's very numbers, and what differs is float32 rounding alone. Every bench
test's ``trace_run`` already checks a CUDA measurement against its CPU twin (``measure.Tracer``); this
module states it for one configuration of each family, and on the CPU, where there is no second device,
runs the same check (``measure.assert_agree``, same tolerances) of float32 against float64: the rounding
of float32 itself, which bounds what any float32 device can differ by.

Tolerances (``measure.DEVICE_RTOL`` = 2e-2 relative for scales and means, ``DEVICE_ATOL`` = 2e-3
absolute for fractions): twice the worst float32-vs-float64 difference over all bench configurations,
1.0e-2, in the chaotic tanh stack "too_large", where chi ~ 15 per layer amplifies rounding; stable
networks differ by < 1e-4.
"""

from __future__ import annotations

import pytest
import torch

from initcore import experiments
from initcore.testing import measure

RUNS = {
    "depth-too_large": experiments.DEPTH_RUNS["too_large"],  # chaotic: the worst case for rounding
    "depth-xavier": experiments.DEPTH_RUNS["xavier"],
    "xavier-large": experiments.XAVIER_RUNS["large"],
    "relu-he": experiments.ACTIVATION_RUNS[("relu", "kaiming_uniform")],
    "failure-vanishing": experiments.FAILURE_RUNS["vanishing"],  # float32 underflow
    "failure-exploding": experiments.FAILURE_RUNS["exploding"],  # 1e15 gradients
    "variant-prenorm": experiments.VARIANT_RUNS["prenorm"],
    "variant-torch_mha": experiments.VARIANT_RUNS["torch_mha"],
}


def float64(run, seed: int, device: str):
    return measure.measure(run, seed, device, dtype=torch.float64)


@pytest.mark.parametrize("name", list(RUNS))
def test_same_statistics_on_every_device(name, device, seed, trace_run, trace_cache):
    run = RUNS[name]
    frame = trace_run(run)  # on cuda: already compared with the CPU inside trace_run
    if device == "cpu":
        reference = trace_cache.get(float64, run, seed, "cpu")
        what = f"{run.key} at seed {seed}: float32 against float64 on the cpu"
    else:
        reference = trace_cache.get(measure.measure, run, seed, "cpu")
        what = f"{run.key} at seed {seed}: {device} against cpu"
    measure.assert_agree(frame, reference, measure.statistics_for(run), what=what)
