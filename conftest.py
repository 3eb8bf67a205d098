"""Root conftest: loads initcore's pytest plugin for both suites.

Commands (see README):
    make test                         unit tests of the library (tests/)
    make bench                        the benchmark suite (bench/): invariants, baselines, timings
    pytest bench --benchmark-skip     invariants only, no timings
    pytest bench --benchmark-only     timings only
    pytest bench --device cpu|cuda|all --seed S
    pytest bench --update-baselines   regenerate baselines/ (review the diff)
    pytest bench -m large             the notebook's full sizes and large depths/widths
"""

import pytest

pytest_plugins = ["initcore.testing.plugin", "initcore.testing.benchmarking"]


@pytest.fixture(autouse=True)
def _nested_runs_are_not_xdist_workers(monkeypatch: pytest.MonkeyPatch) -> None:
    # A pytest a test starts (pytester, a subprocess) inherits an xdist worker's environment, and
    # pytest-benchmark then disables itself with a warning that filterwarnings = error makes an INTERNALERROR.
    # The worker itself knows what it is from its config (workerinput), not from this variable.
    monkeypatch.delenv("PYTEST_XDIST_WORKER", raising=False)
