"""pytest-benchmark wiring: machine_info with the GPU and torch versions, and the fixtures timing tests share.

Registered from the root conftest.py next to ``initcore.testing.plugin``. The hooks are optional, so
the suite still loads with pytest-benchmark disabled (``-p no:benchmark``).
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

from initcore import timing


def gpu_name() -> str:
    """The first CUDA device's name, or "none"."""
    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"


@pytest.hookimpl(optionalhook=True)
def pytest_benchmark_update_machine_info(config: pytest.Config, machine_info: dict) -> None:
    # Only facts that stay put between runs on one machine: --benchmark-compare warns when machine_info
    # differs, so measured numbers (the matmul rate) go into each benchmark's extra_info instead.
    machine_info["gpu"] = gpu_name()
    machine_info["torch_version"] = torch.__version__
    machine_info["cuda_version"] = torch.version.cuda or "none"
    machine_info["torch_threads"] = torch.get_num_threads()


@pytest.fixture(scope="session")
def matmul_rate() -> Callable[[str], float]:
    """``matmul_rate(device)``: the device's measured n x n matmul GFLOP/s, measured once per session."""
    rates: dict[str, float] = {}

    def rate(device: str) -> float:
        if device not in rates:
            rates[device] = timing.matmul_rate(device)
        return rates[device]

    return rate
