"""pytest-benchmark wiring: machine_info with the GPU and torch versions, the fixtures timing tests share,
and a compact table: one per pass (not one per case and pass), in fewer columns.

Registered from the root conftest.py next to ``initcore.testing.plugin``. The hooks are optional, so
the suite still loads with pytest-benchmark disabled (``-p no:benchmark``).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable

import pytest
import torch

from initcore import timing


def gpu_name() -> str:
    """The first CUDA device's name, or "none"."""
    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"


# pytest-benchmark's default columns make a table 200 characters wide; these keep it within 120. The
# median is what ``initcore compare`` and --benchmark-compare judge, the IQR is its noise, rounds its base.
# An explicit --benchmark-columns is left as it is.
DEFAULT_COLUMNS = ["min", "max", "mean", "stddev", "median", "iqr", "outliers", "ops", "rounds", "iterations"]
COMPACT_COLUMNS = ["median", "iqr", "mean", "rounds"]


@pytest.hookimpl(tryfirst=True)  # before pytest-benchmark's pytest_configure reads the option
def pytest_configure(config: pytest.Config) -> None:
    if config.pluginmanager.hasplugin("benchmark") and config.getoption("benchmark_columns") == DEFAULT_COLUMNS:
        config.option.benchmark_columns = list(COMPACT_COLUMNS)
        config.option.benchmark_name = "short"  # "forward[mlp-w256-d4-cpu]", without "test_"


@pytest.hookimpl(optionalhook=True)
def pytest_benchmark_group_stats(config: pytest.Config, benchmarks: list, group_by: str) -> list | None:
    """Under the default grouping, one table per pass: a group "forward mlp-w256-d4" (one case, its
    devices) goes to the table "forward" with every other case, instead of a table of one or two rows."""
    if group_by != "group":
        return None
    groups: dict[str | None, list] = defaultdict(list)
    for bench in benchmarks:
        groups[(bench["group"] or "").split(" ", 1)[0] or None].append(bench)  # in the order they ran
    return sorted(groups.items(), key=lambda pair: pair[0] or "")


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
