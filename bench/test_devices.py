"""Devices: one configuration measured on two devices (or at two precisions) gives the same statistics.

Weights and inputs are drawn on the CPU from the run's seed and then moved (``measure.build``), so a
CUDA run starts from the CPU run's very numbers, and what differs is float32 rounding alone. Every bench
test's ``trace_run`` already checks a CUDA measurement against its CPU twin (``measure.Tracer``); this
module states it for one configuration of each family, and on the CPU, where there is no second device,
runs the same check (``measure.assert_agree``, same tolerances) of float32 against float64: the rounding
of float32 itself, which bounds what any float32 device can differ by.

Tolerances (``initcore.testing.measure``, where their measurement is written down): 1e-3 relative for
scales and means (stable networks differ by < 1e-4 between float32 and float64, every forward statistic
by < 3e-4), 2e-3 absolute for fractions; gradient statistics of a network that the mean field says
amplifies rounding (a chaotic tanh stack) get ``device_rtol(run)``, 200 float32 roundoffs times that
amplification: 95% for depth "too_large", whose float32 gradients differ from float64 by 2-8%.
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
    measure.assert_agree(frame, reference, measure.statistics_for(run), what=what,
                         backward_rtol=measure.device_rtol(run))
