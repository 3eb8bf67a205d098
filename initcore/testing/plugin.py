"""The pytest plugin: options (--device, --seed, --update-baselines, --baselines-dir), the device
parametrization, seeds, and the fixtures bench/ measures with (``trace_run``, ``baseline``).

Registered from the root conftest.py, so ``pytest bench`` and ``pytest tests`` both get it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import torch

from initcore.testing.devices import DEVICE_CHOICES, cuda_available, device_params


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("initcore")
    group.addoption("--device", choices=DEVICE_CHOICES, default="all",
                    help="run device-parametrized tests on cpu, cuda, or all (default: all; cuda skips without a GPU)")
    group.addoption("--seed", type=int, default=0,
                    help="seed for weights and inputs (default 0); the suite holds for any")
    group.addoption("--update-baselines", action="store_true", default=False,
                    help="regenerate the statistical baselines in baselines/ instead of comparing against them")
    group.addoption("--baselines-dir", default=None, metavar="DIR",
                    help="where the baseline CSVs live (default: baselines/ under the rootdir)")


def pytest_configure(config: pytest.Config) -> None:
    # the markers the plugin's parametrization uses, registered for any suite that loads it (--strict-markers)
    config.addinivalue_line("markers", "cuda: needs a CUDA device (initcore's device parametrization)")
    config.addinivalue_line("markers", "large: large sizes; deselect with -m 'not large'")
    if config.getoption("--device") == "cuda" and not cuda_available():
        raise pytest.UsageError("--device cuda: no CUDA device is available here (torch.cuda.is_available() is False)")
    workers = os.environ.get("PYTEST_XDIST_WORKER_COUNT")
    if workers and "OMP_NUM_THREADS" not in os.environ:
        # Under pytest-xdist every worker would start one torch thread per core: -n 2 on 2 cores runs 4
        # spinning OpenMP threads, which on a busy machine is 10-50x slower than sharing the cores out.
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // int(workers)))


@pytest.hookimpl(trylast=True)
def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    # Last, after parametrize marks and module hooks: ids read configuration then device, test[xavier-cpu].
    if "device" in metafunc.fixturenames:
        metafunc.parametrize("device", device_params())


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    want = config.getoption("--device")
    if want == "all":
        return
    keep, drop = [], []
    for item in items:
        dev = item.callspec.params.get("device") if hasattr(item, "callspec") else None
        (drop if dev is not None and dev != want else keep).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


@pytest.fixture(scope="session")
def seed(request: pytest.FixtureRequest) -> int:
    """The run's seed (``--seed``)."""
    return request.config.getoption("--seed")


@pytest.fixture(autouse=True)
def _seed_everything(seed: int) -> None:
    torch.manual_seed(seed)


@pytest.fixture
def generator(seed: int) -> torch.Generator:
    """A CPU generator seeded with the run's seed: draw weights and inputs from it, then move them."""
    return torch.Generator().manual_seed(seed)


if TYPE_CHECKING:  # imported lazily below: the probe, pandas and the experiments load only when a test measures
    from initcore.testing import measure


def baselines_dir(config: pytest.Config) -> Path:
    """``--baselines-dir``, or ``<rootdir>/baselines``."""
    option = config.getoption("--baselines-dir")
    return Path(option).resolve() if option else config.rootpath / "baselines"


@pytest.fixture(scope="session")
def trace_cache() -> measure.TraceCache:
    """The session's measurements, by (measure function, run, seed, device)."""
    from initcore.testing import measure

    return measure.TraceCache()


@pytest.fixture(scope="session")
def baseline_store(pytestconfig: pytest.Config) -> measure.Baselines:
    """The session's baseline store (``--baselines-dir``, ``--update-baselines``)."""
    from initcore.testing import measure

    return measure.Baselines(baselines_dir(pytestconfig), update=pytestconfig.getoption("--update-baselines"))


@pytest.fixture
def trace_run(device: str, seed: int, trace_cache: measure.TraceCache) -> measure.Tracer:
    """``trace_run(run)``: the probe frame of an experiment run at this test's seed and device (cached
    per session; on cuda also checked against the same run on the CPU)."""
    from initcore.testing import measure

    return measure.Tracer(device, seed, trace_cache)


@pytest.fixture
def baseline(device: str, pytestconfig: pytest.Config, baseline_store: measure.Baselines,
             trace_cache: measure.TraceCache) -> measure.BaselineCheck:
    """``baseline.check(experiment, run, frame)``: compare with ``baselines/<experiment>.csv``."""
    from initcore.testing import measure

    only = pytestconfig.getoption("--device")
    writer = device == "cpu" or only == device
    return measure.BaselineCheck(baseline_store, device, trace_cache, writer=writer)
