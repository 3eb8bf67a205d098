"""initcore.testing.plugin end to end (pytester): device ids and skips, --device, --seed, the baseline
fixture's missing / mismatch / update paths, --baselines-dir."""

from __future__ import annotations

import re

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
    # the command names the test file that ran, as the user reaches it (issue 20: the user's own command)
    result.stdout.fnmatch_lines(["*no baseline file*tiny.csv*run `pytest test_suite.py --update-baselines` to create*"])
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
    result.stdout.fnmatch_lines(
        [f"*no baseline for configuration*gain2*`pytest test_suite.py --update-baselines --baselines-dir {where}`*"])


def test_mismatch_prints_the_table(suite, tmp_path):
    where = tmp_path / "store"
    run(suite, "--device", "cpu", "--update-baselines", f"--baselines-dir={where}").assert_outcomes(passed=2)
    # same configuration key, different behaviour: every bias at 0.1 behind the run's back, after init.apply
    # (whose own check of its draws would stop a changed bias rule: initcore.init.verify)
    suite.makeconftest('''
pytest_plugins = ["initcore.testing.plugin"]
import torch.nn as nn
from initcore.experiments import MLPRun

def pytest_configure(config):
    config._old = MLPRun.build

    def build(self, generator):
        model, x = config._old(self, generator)
        for m in model.modules():
            if isinstance(m, nn.Linear) and m.bias is not None:
                nn.init.constant_(m.bias, 0.1)
        return model, x

    MLPRun.build = build

def pytest_unconfigure(config):
    MLPRun.build = config._old
''')
    result = run(suite, "--device", "cpu", f"--baselines-dir={where}", "-k", "test_tiny")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines([
        "*tiny (*tiny.csv), cpu: * statistics moved from their baseline:",
        "config mlp-relu-d3-w8-in8-b32/kaiming_normal",
        "*layer*statistic*baseline*measured*z*band*problem*",
        "*layers.0.bias*param_mean*outside band*",
        # at the baseline's own seed the biases are other bits: the draws changed, so the bands decide
        "*the exact check did not apply: parameters differ at the same seed (3 of 6: layers.0.bias, layers.1.bias,*",
        "*If the change is intended, run `pytest test_suite.py --update-baselines --baselines-dir *`*",
    ])
    result.stdout.no_fnmatch_line("*Traceback*")
    result.stdout.no_fnmatch_line("*During handling*")


# --- usage errors, corrupt files, the summary, what an update writes and when ----------------------------


@pytest.mark.parametrize("value, words", [("18446744073709551616", "out of range"), ("-1", "out of range"),
                                          ("2**64", "not a whole number"), ("1e3", "not a whole number")])
def test_a_bad_seed_is_one_usage_error_naming_the_option_and_range(suite, value, words):
    result = run(suite, "--seed", value)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    errors = [line for line in result.stderr.lines if line.strip()]
    assert len(errors) == 1, result.stderr.lines
    assert "--seed" in errors[0] and words in errors[0] and "0 .. 2**63 - 1" in errors[0], errors[0]
    assert "Traceback" not in result.stderr.str() and result.stdout.str().count("\n") < 5


def test_the_largest_seed_runs(suite):
    run(suite, "--seed", str(2**63 - 1), "-k", "test_seed").assert_outcomes(passed=1, deselected=2)


def test_baselines_dir_that_is_not_a_directory_is_a_usage_error(suite, tmp_path):
    result = run(suite, f"--baselines-dir={tmp_path / 'absent'}")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--baselines-dir *absent: no such directory (--update-baselines creates it)"])
    (tmp_path / "file").write_text("")
    result = run(suite, f"--baselines-dir={tmp_path / 'file'}", "--update-baselines")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--baselines-dir *file: not a directory"])


def test_a_corrupt_baseline_fails_with_one_line_and_an_update_replaces_it(suite, tmp_path):
    where = tmp_path / "store"
    run(suite, "--device", "cpu", "--update-baselines", f"--baselines-dir={where}").assert_outcomes(passed=2)
    good = (where / "tiny.csv").read_bytes()
    (where / "tiny.csv").write_bytes(good[:-30])  # the last row cut short
    result = run(suite, "--device", "cpu", f"--baselines-dir={where}", "-k", "test_tiny")
    result.assert_outcomes(failed=1)
    lines = [line for line in result.stdout.lines if "the file is corrupt" in line]
    assert len(lines) == 1 and f"{where / 'tiny.csv'}, line " in lines[0], result.stdout.str()
    assert "restore it from version control or regenerate it" in lines[0]
    result.stdout.no_fnmatch_line("*Traceback*")
    result.stdout.no_fnmatch_line("*moved*")
    result = run(suite, "--device", "cpu", "--update-baselines", f"--baselines-dir={where}", "-k", "test_tiny")
    result.assert_outcomes(passed=1, deselected=2)
    summary = " ".join(line.strip() for line in result.stdout.lines)  # the summary wraps to the terminal's width
    assert "tiny.csv: 1 configuration(s) regenerated, 0 kept as they were; the old file was corrupt (line " in summary
    assert (where / "tiny.csv").read_bytes() == good


INTERRUPTING = SUITE + '''

def test_zz_interrupt():
    raise KeyboardInterrupt
'''


def test_an_interrupted_update_leaves_every_file_as_it_was(suite, tmp_path):
    where = tmp_path / "store"
    run(suite, "--device", "cpu", "--update-baselines", f"--baselines-dir={where}").assert_outcomes(passed=2)
    before = (where / "tiny.csv").read_bytes()
    # a different configuration of the same experiment, then an interrupt before the run ends
    suite.makepyfile(test_suite=INTERRUPTING.replace('"relu"), "kaiming_normal"', '"tanh"), "kaiming_normal"'))
    result = suite.runpytest_inprocess("-p", "no:cacheprovider", "--device", "cpu", "--update-baselines",
                                       f"--baselines-dir={where}", no_reraise_ctrlc=True)  # not into this run
    assert result.ret == pytest.ExitCode.INTERRUPTED
    summary = " ".join(line.strip() for line in result.stdout.lines)
    assert "baselines NOT written: the run did not finish (exit status 2)" in summary
    assert (where / "tiny.csv").read_bytes() == before
    # the same run, finished: the file gains the tanh configuration next to the relu one, in one write
    suite.makepyfile(test_suite=SUITE.replace('"relu"), "kaiming_normal"', '"tanh"), "kaiming_normal"'))
    result = run(suite, "--device", "cpu", "--update-baselines", f"--baselines-dir={where}")
    summary = " ".join(line.strip() for line in result.stdout.lines)
    assert "tiny.csv: 1 configuration(s) regenerated, 1 kept as they were" in summary
    from initcore import baselines

    assert sorted(set(baselines.load(where / "tiny.csv")["config"])) == [
        "mlp-relu-d3-w8-in8-b32/kaiming_normal", "mlp-tanh-d3-w8-in8-b32/kaiming_normal"]


SUMMARY_SUITE = SUITE + '''

def test_adds_a_line(summary_line):
    summary_line("probe overhead: trace / bare 1.31 (a line from a test)")
'''


def test_the_end_of_run_summary(suite, tmp_path):
    where = tmp_path / "store"
    suite.makepyfile(test_suite=SUMMARY_SUITE)
    run(suite, "--update-baselines", f"--baselines-dir={where}", "-k", "test_tiny")
    result = run(suite, f"--baselines-dir={where}")
    result.assert_outcomes(passed=3, skipped=0 if cuda_available() else 1)
    lines = result.stdout.lines
    start = next(i for i, line in enumerate(lines) if "initcore" in line and line.startswith("-"))
    summary = lines[start + 1:]
    text = " ".join(line.strip() for line in summary)  # lines wrap at the terminal's width, 80 without one
    assert re.search(r"baselines: \d+ statistics of 1 configurations in 1 experiments .*on cpu", text), summary
    assert "probe overhead: trace / bare 1.31 (a line from a test)" in summary
    if not cuda_available():
        assert sum("cuda: 1 cases skipped, no CUDA device here" in line for line in summary) == 1
    assert all(len(line) <= 120 for line in summary)
    # the line is at the end, not in the middle of the progress dots
    assert not any("probe overhead" in line for line in lines[:start])
