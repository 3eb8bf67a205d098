"""The pytest plugin: options (--device, --seed, --update-baselines), the device parametrization, seeds.

Registered from the root conftest.py, so ``pytest bench`` and ``pytest tests`` both get it.
"""

from __future__ import annotations

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


def pytest_configure(config: pytest.Config) -> None:
    if config.getoption("--device") == "cuda" and not cuda_available():
        raise pytest.UsageError("--device cuda: no CUDA device is available here (torch.cuda.is_available() is False)")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
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
