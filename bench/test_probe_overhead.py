"""What tracing costs: ``probe.trace`` against a bare forward and backward of the same model, and the notebook's way.

The model is the notebook's depth experiment (``experiments.DEPTH_MLP`` with Xavier uniform: a 10-layer,
512-wide tanh MLP at batch 64). Three contenders share one group in pytest-benchmark's table:

- ``bare``: zero the grads, forward, ``mean()``, backward: the floor;
- ``trace``: ``initcore.probe.trace``, statistics inside hooks, one host copy (target: <= 1.10 x bare on CPU);
- ``notebook``: ``analyze_initialization_impact``'s loop, which clones every activation and calls
  ``.item()`` per number (1.28 x bare measured on a 2-core machine).

Each of the last two also gets its time over bare into ``extra_info["ratio_to_bare"]``, printed too:
the median over rounds of (contender / bare) timed back to back, so load on a shared machine hits both
alike. Nothing here asserts a time.

    pytest bench/test_probe_overhead.py --benchmark-only -p no:cacheprovider
"""

from __future__ import annotations

import statistics
import time

import pandas as pd
import pytest
import torch

from initcore import probe
from initcore.experiments import DEPTH_INITS, DEPTH_MLP, MLPRun
from initcore.timing import synchronize

RUN = MLPRun(DEPTH_MLP, DEPTH_INITS["xavier"], batch=64)  # MLP 512 -> 512 x 10, tanh, Xavier uniform
ROUNDS, WARMUP = 20, 3
CONTENDERS = ("bare", "trace", "notebook")


def bare(model: torch.nn.Module, x: torch.Tensor) -> None:
    model.zero_grad(set_to_none=True)
    model(x).mean().backward()


def traced(model: torch.nn.Module, x: torch.Tensor) -> pd.DataFrame:
    return probe.trace(model, x)


def notebook(model: torch.nn.Module, x: torch.Tensor) -> list[dict[str, float]]:
    """The reference notebook's analyze_initialization_impact, on ``model``'s layers, as it was written."""
    activations = []
    current_input = x
    for i, layer in enumerate(model.layers):
        current_input = layer(current_input)
        if i < len(model.layers) - 1:
            current_input = torch.tanh(current_input)
        activations.append(current_input.clone())
    activations[-1].mean().backward()
    stats = []
    for i, (activation, layer) in enumerate(zip(activations, model.layers, strict=True)):
        stats.append({
            "layer": i, "mean": activation.mean().item(), "std": activation.std().item(),
            "min": activation.min().item(), "max": activation.max().item(),
            "grad_mean": layer.weight.grad.mean().item(), "grad_std": layer.weight.grad.std().item(),
            "grad_norm": layer.weight.grad.norm().item(),
        })
    model.zero_grad()
    return stats


FUNCTIONS = {"bare": bare, "trace": traced, "notebook": notebook}


@pytest.fixture
def model_and_input(device: str, generator: torch.Generator):
    model, x = RUN.build(generator)
    assert model.config.activation == "tanh"  # the notebook contender applies torch.tanh itself
    return model.to(device), x.to(device)


def _synced(fn, model, x, device):
    def run():
        fn(model, x)
        synchronize(device)
    return run


def _paired_ratio(contender, reference, rounds: int) -> tuple[float, float, float]:
    """Median of contender/reference over ``rounds`` back-to-back pairs (order alternating), and both medians."""
    ratios, times_c, times_r = [], [], []
    for i in range(rounds):
        order = (reference, contender) if i % 2 == 0 else (contender, reference)
        spent = {}
        for fn in order:
            start = time.perf_counter()
            fn()
            spent[fn] = time.perf_counter() - start
        times_c.append(spent[contender])
        times_r.append(spent[reference])
        ratios.append(spent[contender] / spent[reference])
    return statistics.median(ratios), statistics.median(times_c), statistics.median(times_r)


@pytest.mark.benchmark(group="probe-overhead")
@pytest.mark.parametrize("contender", CONTENDERS)
def test_probe_overhead(benchmark, contender: str, device: str, model_and_input, capsys) -> None:
    model, x = model_and_input
    run = _synced(FUNCTIONS[contender], model, x, device)
    benchmark.group = f"probe-overhead-{device}"
    benchmark.pedantic(run, rounds=ROUNDS, warmup_rounds=WARMUP)
    benchmark.extra_info.update({"model": RUN.key, "device": device, "threads": torch.get_num_threads()})
    if contender == "bare" or not benchmark.enabled:
        return
    ratio, median, bare_median = _paired_ratio(run, _synced(bare, model, x, device), ROUNDS)
    benchmark.extra_info.update({"ratio_to_bare": ratio, "median_s": median, "bare_median_s": bare_median})
    with capsys.disabled():
        print(f"\n{contender} / bare forward+backward on {device}: {ratio:.3f} "
              f"({median * 1e3:.2f} ms / {bare_median * 1e3:.2f} ms, median of {ROUNDS} back-to-back pairs, "
              f"{torch.get_num_threads()} threads)")


def test_contenders_measure_the_same_pass(device: str, model_and_input) -> None:
    # The comparison is fair only if the notebook's loop and trace see the same numbers.
    model, x = model_and_input
    frame = traced(model, x)  # leaves its gradients in place, as documented
    model.zero_grad(set_to_none=True)  # the notebook's loop zeroes only after it has read them
    reference = pd.DataFrame(notebook(model, x))
    assert len(frame) == len(reference) == RUN.model.depth
    pairs = {"act_mean": "mean", "act_std": "std", "act_min": "min", "act_max": "max", "grad_norm": "grad_norm",
             "grad_std": "grad_std"}
    for ours, theirs in pairs.items():
        torch.testing.assert_close(torch.tensor(frame[ours].to_numpy()), torch.tensor(reference[theirs].to_numpy()),
                                   rtol=1e-4, atol=1e-7, msg=f"{ours} differs from the notebook's {theirs}")
