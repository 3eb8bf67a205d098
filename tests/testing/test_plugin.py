"""initcore.testing.plugin end to end (pytester): device ids and skips, --device, --seed, the baseline
fixture's missing / mismatch / update paths, --baselines-dir."""

from __future__ import annotations

import pytest

from initcore.testing import inprocess
from initcore.testing.devices import cuda_available

pytest_plugins = ["pytester"]

inprocess.warm_up()  # at collection, before any pytester snapshot of sys.modules: see initcore.testing.inprocess

SUITE = '''
import pytest
from initcore.experiments import MLPRun
from initcore.models import MLPConfig

RUN = MLPRun(MLPConfig(8, 8, 3, "relu"), "kaiming_normal", batch=32)


@pytest.mark.parametrize("name", ["tiny"])
def test_tiny(name, trace_run, baseline, seed):
    frame = trace_run(RUN)
    assert frame["module"].iloc[0] == "layers.0"
    baseline.check("tiny", RUN, frame)


def test_seed(seed, generator):
    import torch
    expected = torch.randn(3, generator=torch.Generator().manual_seed(seed))
    assert torch.equal(torch.randn(3, generator=generator), expected)
'''


@pytest.fixture
def suite(pytester: pytest.Pytester) -> pytest.Pytester:
    pytester.makeconftest('pytest_plugins = ["initcore.testing.plugin"]')
    pytester.makepyfile(test_suite=SUITE)
    return pytester


def run(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    # Options with values as one word (--baselines-dir=DIR): before the conftest that registers them is
    # loaded, pytest takes a separate value for a path and looks for conftests from there.
    return pytester.runpytest_inprocess("-p", "no:cacheprovider", "-rs", *args)


def test_ids_are_the_same_everywhere_and_cuda_skips_with_a_reason(suite):
    result = run(suite, "--collect-only", "-q", "--update-baselines")
    result.stdout.fnmatch_lines(["*test_tiny[[]tiny-cpu[]]", "*test_tiny[[]tiny-cuda[]]"])
    if not cuda_available():
        result = run(suite, "--update-baselines", "-k", "test_tiny")
        result.assert_outcomes(passed=1, skipped=1)
        result.stdout.fnmatch_lines(["*needs a CUDA device; none is available here*"])


@pytest.mark.skipif(cuda_available(), reason="checks the behaviour without a GPU")
def test_asking_for_cuda_without_one_is_a_usage_error(suite):
    result = run(suite, "--device", "cuda")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--device cuda: no CUDA device is available here*"])


def test_device_cpu_deselects_cuda(suite):
    result = run(suite, "--device", "cpu", "--update-baselines", "-k", "test_tiny")
    result.assert_outcomes(passed=1, deselected=2)  # test_seed by -k, the cuda case by --device


def test_missing_baseline_names_the_command(suite):
    result = run(suite, "--device", "cpu", "-k", "test_tiny")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*no baseline file*tiny.csv*run `pytest bench --update-baselines` to create it*"])
    result.stdout.no_fnmatch_line("*Traceback*")


def test_update_then_compare_then_a_readable_mismatch(suite, tmp_path):
    where = tmp_path / "store"
    result = run(suite, "--device", "cpu", "--update-baselines", f"--baselines-dir={where}")
    result.assert_outcomes(passed=2)
    assert (where / "tiny.csv").exists() and not (suite.path / "baselines").exists()
    for seed in ("0", "1", "12345"):
        run(suite, "--device", "cpu", f"--baselines-dir={where}", "--seed", seed).assert_outcomes(passed=2)
    # a regression: the init's weight variance x2 (kaiming_normal -> gain 2 instead of sqrt 2)
    suite.makepyfile(test_suite=SUITE.replace('"kaiming_normal", batch=32', '"kaiming_normal", batch=32, gain=2.0'))
    result = run(suite, "--device", "cpu", f"--baselines-dir={where}")
    result.assert_outcomes(failed=1, passed=1)
    # the configuration key names the gain, so this is a new configuration with no baseline yet
    result.stdout.fnmatch_lines(["*no baseline for configuration*gain2*pytest bench --update-baselines*"])


def test_mismatch_prints_the_table(suite, tmp_path):
    where = tmp_path / "store"
    run(suite, "--device", "cpu", "--update-baselines", f"--baselines-dir={where}").assert_outcomes(passed=2)
    # same configuration key, different behaviour: every bias at 0.1 behind the run's back
    suite.makeconftest('''
pytest_plugins = ["initcore.testing.plugin"]
import torch.nn as nn
from initcore.init import strategies

def pytest_configure(config):
    config._old = strategies._DEFAULTS["bias"]
    strategies._DEFAULTS["bias"] = lambda p: nn.init.constant_(p, 0.1)

def pytest_unconfigure(config):
    strategies._DEFAULTS["bias"] = config._old
''')
    result = run(suite, "--device", "cpu", f"--baselines-dir={where}", "-k", "test_tiny")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines([
        "*tiny (*tiny.csv), cpu: * statistics moved from their baseline:",
        "*config*layer*statistic*baseline*measured*band*problem*",
        "*layers.0.bias*param_mean*outside band*",
        "*If the change is intended, run `pytest bench --update-baselines`*",
    ])
    result.stdout.no_fnmatch_line("*Traceback*")
    result.stdout.no_fnmatch_line("*During handling*")
