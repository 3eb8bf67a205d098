"""Timings of the forward pass and the backward pass, per model size and device (pytest-benchmark).

The backward pass is timed alone: each round builds a fresh graph (zeroed grads, forward, loss) in
pedantic's ``setup``, outside the timed region, and the target only calls ``loss.backward()``. Every
target ends with a device synchronize, so a CUDA round measures the work, not the kernel launches.
CPU and CUDA timings of one case and pass share a group in pytest-benchmark's table.

    pytest bench/test_timing.py --benchmark-only                  the default cases (tens of seconds)
    pytest bench/test_timing.py --benchmark-only -m large         the notebook's 12-block transformer
    pytest bench --benchmark-autosave; later: pytest bench --benchmark-compare --benchmark-compare-fail=median:10%
    initcore compare .benchmarks/<machine>/0001_*.json [OTHER.json]
"""

from __future__ import annotations

import pytest
import torch

from initcore.timing import TIMING_CASES, TimingCase, device_name, gflops, synchronize

DTYPE = torch.float32

CASES = {case.name: case for case in TIMING_CASES}


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    # Here rather than a parametrize mark: this module's hook runs before the plugin's device
    # parametrization, so ids read case then device, test_forward[mlp-w256-d4-cpu].
    # Parametrized by name, so the saved JSON's params read {"case": "mlp-w256-d4", "device": "cpu"}.
    if "case" in metafunc.fixturenames:
        metafunc.parametrize("case", [pytest.param(name, id=name, marks=[pytest.mark.large] if c.large else [])
                                      for name, c in CASES.items()])


def _projection(model: torch.nn.Module, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """A fixed random direction the size of the output, drawn on the CPU: the loss is <out, r>.

    Not out.mean() or out.square().mean(): the transformer ends in a norm, whose output has mean 0 and
    mean square ~1 whatever its input, so those losses send (almost) no gradient back through the stack.
    """
    with torch.no_grad():
        shape = model(x).shape
    return torch.randn(shape, generator=generator).to(device=x.device, dtype=DTYPE)


def _record(benchmark, case: TimingCase, pass_: str, device: str, matmul_rate) -> None:
    """FLOPs and the rate achieved at pytest-benchmark's own median (the number the table and JSON show)."""
    flops = case.flops.of(pass_)
    info = {
        "case": case.name,
        "pass": pass_,
        "device_type": device,
        "device": device_name(device),
        "dtype": str(DTYPE).removeprefix("torch."),
        "threads": torch.get_num_threads(),
        "flops": flops,
        "matmul_gflops": matmul_rate(device),  # the device's measured n x n matmul rate, for the fraction
    }
    if benchmark.stats is not None:  # None under --benchmark-disable: the target ran once, untimed
        info["gflops"] = gflops(flops, benchmark.stats.stats.median)
    benchmark.extra_info.update(info)


def test_forward(benchmark, case: str, device: str, generator: torch.Generator, matmul_rate) -> None:
    spec = CASES[case]
    model, x = spec.build(generator, device, DTYPE)

    def forward() -> torch.Tensor:
        out = model(x)  # autograd records the graph, as in training
        synchronize(device)
        return out  # freed by pytest-benchmark after the clock stops, not inside the timed region

    benchmark.group = f"forward {case}"
    out = benchmark.pedantic(forward, setup=lambda: synchronize(device), rounds=spec.rounds,
                             warmup_rounds=spec.warmup)
    assert torch.isfinite(out).all()
    _record(benchmark, spec, "forward", device, matmul_rate)


def test_backward(benchmark, case: str, device: str, generator: torch.Generator, matmul_rate) -> None:
    spec = CASES[case]
    model, x = spec.build(generator, device, DTYPE)
    r = _projection(model, x, generator)

    def fresh_graph() -> tuple[tuple[torch.Tensor], dict]:
        model.zero_grad(set_to_none=True)  # as a training step does; backward then writes, not accumulates
        loss = (model(x) * r).sum()
        synchronize(device)  # the forward's queued kernels finish before the clock starts
        return (loss,), {}

    def backward(loss: torch.Tensor) -> None:
        loss.backward()
        synchronize(device)

    benchmark.group = f"backward {case}"
    benchmark.pedantic(backward, setup=fresh_graph, rounds=spec.rounds, warmup_rounds=spec.warmup)
    assert all(p.grad is not None for p in model.parameters())
    _record(benchmark, spec, "backward", device, matmul_rate)
