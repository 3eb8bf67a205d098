"""The pytest plugin: options (--device, --seed, --update-baselines, --baselines-dir), the device
parametrization, seeds, the fixtures bench/ measures with (``trace_run``, ``baseline``), and the
end-of-run summary (``summary_line`` adds a line to it).

Registered from the root conftest.py, so ``pytest bench`` and ``pytest tests`` both get it. Bad option
values are pytest usage errors, one line each. Under pytest-xdist the workers send what they measured to
the controller, which prints one summary and writes each regenerated baseline file once.
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import torch

from initcore.testing.devices import DEVICE_CHOICES, cuda_available, device_params
from initcore.testing.summary import RunRecord, wrap

# The largest --seed: torch.Generator.manual_seed takes 0 .. 2**64 - 1, and tests derive further seeds
# from the run's (the width check uses S .. S + 3), so the range stops well short of the end.
SEED_MAX = 2**63 - 1
RECORD = pytest.StashKey[RunRecord]()
STORE = pytest.StashKey["measure.Baselines"]()
WRITTEN = pytest.StashKey[list]()
TIMINGS_NOTE = pytest.StashKey[str]()
WORKER_KEY = "initcore"


def seed_value(text: str) -> int:
    """``--seed``'s value: a whole number in 0 .. SEED_MAX; a one-line usage error naming the option if not."""
    try:
        value = int(text)
    except ValueError:
        raise pytest.UsageError(f"--seed {text}: not a whole number; a seed is 0 .. 2**63 - 1") from None
    if not 0 <= value <= SEED_MAX:
        raise pytest.UsageError(f"--seed {text}: out of range; a seed is 0 .. 2**63 - 1 ({SEED_MAX})")
    return value


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("initcore")
    group.addoption("--device", choices=DEVICE_CHOICES, default="all",
                    help="run device-parametrized tests on cpu, cuda, or all (default: all; cuda skips without a GPU)")
    group.addoption("--seed", default="0", metavar="S",
                    help="seed for weights and inputs, 0 .. 2**63 - 1 (default 0); the suite holds for any")
    group.addoption("--update-baselines", action="store_true", default=False,
                    help="regenerate the statistical baselines in baselines/ instead of comparing against them "
                         "(skips timings; each file is written once, when the run ends)")
    group.addoption("--baselines-dir", default=None, metavar="DIR",
                    help="where the baseline CSVs live (default: baselines/ under the rootdir)")


def _xdist_active(config: pytest.Config) -> bool:
    return hasattr(config, "workerinput") or config.getoption("dist", "no") != "no"


def _benchmark_options(config: pytest.Config) -> None:
    """Timings where they can run: none under --update-baselines (it measures statistics, and regenerating
    is slow enough), none under pytest-xdist (pytest-benchmark disables itself there with a warning, which
    filterwarnings = error would turn into an INTERNALERROR; saying so here, before it does, avoids that)."""
    if not config.pluginmanager.hasplugin("benchmark"):
        return
    option = config.option
    if option.collectonly:  # nothing runs, nothing to save: pytest-benchmark would warn "Not saving anything"
        option.benchmark_autosave, option.benchmark_save = False, None
    if config.getoption("--update-baselines"):
        if option.benchmark_only:
            raise pytest.UsageError("--update-baselines runs no timings; drop --benchmark-only, or run timings "
                                    "separately: pytest bench --benchmark-only")
        option.benchmark_skip = True
        config.stash[TIMINGS_NOTE] = "timings: skipped, as always under --update-baselines"
    if _xdist_active(config) and not option.benchmark_skip:
        if option.benchmark_only:
            raise pytest.UsageError("--benchmark-only cannot run under pytest-xdist (-n): timings need the "
                                    "machine to themselves; drop -n")
        option.benchmark_disable = True  # each timing test runs its target once, untimed
        config.stash[TIMINGS_NOTE] = ("timings: each target ran once, untimed: pytest-xdist (-n) shares the "
                                      "machine out; time without -n")


@pytest.hookimpl(tryfirst=True)  # before pytest-benchmark's pytest_configure reads its options
def pytest_configure(config: pytest.Config) -> None:
    # the markers the plugin's parametrization uses, registered for any suite that loads it (--strict-markers)
    config.addinivalue_line("markers", "cuda: needs a CUDA device (initcore's device parametrization)")
    config.addinivalue_line("markers", "large: large sizes; deselect with -m 'not large'")
    config.stash[RECORD] = RunRecord()
    # Checked here rather than by an argparse type: pytest prints a UsageError as one line, argparse's as four.
    config.option.seed = seed_value(str(config.getoption("--seed")))
    if config.getoption("--device") == "cuda" and not cuda_available():
        raise pytest.UsageError("--device cuda: no CUDA device is available here (torch.cuda.is_available() is False)")
    directory = config.getoption("--baselines-dir")
    if directory is not None:
        where = Path(directory)
        if where.exists() and not where.is_dir():
            raise pytest.UsageError(f"--baselines-dir {directory}: not a directory")
        if not where.exists() and not config.getoption("--update-baselines"):
            raise pytest.UsageError(f"--baselines-dir {directory}: no such directory (--update-baselines creates it)")
    _benchmark_options(config)
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

    record = pytestconfig.stash[RECORD]
    store = measure.Baselines(baselines_dir(pytestconfig), update=pytestconfig.getoption("--update-baselines"),
                              on_check=record.record_check)
    pytestconfig.stash[STORE] = store  # for pytest_sessionfinish, which writes what it staged
    return store


@pytest.fixture
def trace_run(device: str, seed: int, trace_cache: measure.TraceCache) -> measure.Tracer:
    """``trace_run(run)``: the probe frame of an experiment run at this test's seed and device (cached
    per session; on cuda also checked against the same run on the CPU)."""
    from initcore.testing import measure

    return measure.Tracer(device, seed, trace_cache)


def update_command(config: pytest.Config, path: Path) -> str:
    """The command that regenerates the baselines a test file reads: ``pytest <that file> --update-baselines``
    (and the run's ``--baselines-dir``), the file as the user reaches it from where they ran pytest."""
    try:
        shown = os.path.relpath(path, config.invocation_params.dir)
    except ValueError:  # another drive
        shown = str(path)
    shown = shown if not shown.startswith("..") else str(path)
    directory = config.getoption("--baselines-dir")
    where = f" --baselines-dir {shlex.quote(directory)}" if directory else ""
    return f"pytest {shlex.quote(shown)} --update-baselines{where}"


@pytest.fixture
def baseline(device: str, seed: int, request: pytest.FixtureRequest, baseline_store: measure.Baselines,
             trace_cache: measure.TraceCache) -> measure.BaselineCheck:
    """``baseline.check(experiment, run, frame)``: compare with ``baselines/<experiment>.csv``."""
    from initcore.testing import measure

    config = request.config
    only = config.getoption("--device")
    writer = device == "cpu" or only == device
    return measure.BaselineCheck(baseline_store, device, trace_cache, writer=writer, seed=seed,
                                 command=update_command(config, request.node.path))


@pytest.fixture
def summary_line(request: pytest.FixtureRequest) -> Callable[[str], None]:
    """``summary_line(text)``: add a line to the end-of-run summary (under xdist too), in test order.

    For a number a test measures and a reader wants at the end (a ratio, a rate) rather than inside the
    progress dots; lines longer than the terminal (at most 120 columns) are wrapped.
    """
    record, nodeid = request.config.stash[RECORD], request.node.nodeid

    def add(text: str) -> None:
        record.lines.append((nodeid, str(text)))

    return add


# --- the end of the run: CUDA skips folded, baselines written once, the summary ----------------------


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> pytest.TestReport:
    report = yield
    if report.skipped and isinstance(report.longrepr, tuple) and item.get_closest_marker("cuda") is not None:
        # One location for every CUDA skip, so -ra folds them into one line instead of one per test line.
        report.longrepr = (str(Path(__file__).with_name("devices.py")), None, report.longrepr[2])
        item.config.stash[RECORD].cuda_skipped += 1
    return report


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    config = session.config
    record = config.stash.get(RECORD, None)
    if record is None:
        return
    store = config.stash.get(STORE, None)
    if store is not None and store.staged:
        record.staged = {experiment: [rows.to_dict("list") for rows in configs.values()]
                         for experiment, configs in store.staged.items()}
        record.staged_records = {experiment: {config: made.to_dict() for config, made in configs.items()}
                                 for experiment, configs in store.records.items()}
        store.staged.clear()
        store.records.clear()
    if hasattr(config, "workerinput"):  # a worker: the controller writes and summarizes
        config.workeroutput[WORKER_KEY] = record.to_dict()
        return
    if record.staged:
        config.stash[WRITTEN] = _write_staged(config, record, exitstatus)


def _write_staged(config: pytest.Config, record: RunRecord, exitstatus: int) -> list[str]:
    if exitstatus not in (pytest.ExitCode.OK, pytest.ExitCode.TESTS_FAILED) or record.workers_failed:
        return [f"baselines NOT written: the run did not finish (exit status {int(exitstatus)}); every file in "
                f"{baselines_dir(config)} is as it was"]
    import pandas as pd

    from initcore.baselines import SeedRecord
    from initcore.testing import measure

    store = measure.Baselines(baselines_dir(config), update=True)
    for experiment, parts in sorted(record.staged.items()):
        staged = record.staged_records.get(experiment, {})
        records = {key: SeedRecord.from_dict(data) for key, data in staged.items()}
        for part in parts:
            store.stage(experiment, pd.DataFrame(part), records)
    return ["baselines written: " + line for line in store.flush()]


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node, error) -> None:
    """xdist, on the controller: a worker finished (or crashed: then no baseline file is written)."""
    record = node.config.stash[RECORD]
    if error:
        record.workers_failed = True
    output = getattr(node, "workeroutput", None) or {}
    if WORKER_KEY in output:
        record.merge(output[WORKER_KEY])


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:
    record = config.stash.get(RECORD, None)
    if record is None:
        return
    note = config.stash.get(TIMINGS_NOTE, None) if not hasattr(config, "workerinput") else None
    lines = [line for line in (record.baseline_line(), record.exact_line(), record.cuda_line(), note) if line]
    timings = _timing_table(config)
    lines += config.stash.get(WRITTEN, [])
    lines += record.test_lines()
    if not lines and not timings:
        return
    terminalreporter.section("initcore", sep="-")
    for text in lines:
        for line in wrap(text):
            terminalreporter.write_line(line)
    if timings:
        terminalreporter.write_line("timings, median per pass (initcore compare):")
        for line in wrap(timings):
            terminalreporter.write_line(line)


def _timing_table(config: pytest.Config) -> str | None:
    """``initcore compare``'s device table of this run's timings (benchmarks that name a case and pass)."""
    session = getattr(config, "_benchmarksession", None)
    benchmarks = [b for b in getattr(session, "benchmarks", []) if getattr(b, "stats", None) is not None]
    data = [b.as_dict(include_data=False) for b in benchmarks]
    data = [d for d in data if {"case", "pass"} <= set(d.get("extra_info") or {})]
    if not data:
        return None
    from initcore import compare

    return compare.format_table(compare.table({"benchmarks": data}))
