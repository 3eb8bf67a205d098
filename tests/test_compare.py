"""compare: the CPU-vs-CUDA table, run-to-run ratios judged against the runs' noise, and the command's exit
statuses, on hand-written results shaped like pytest-benchmark 5's ``--benchmark-json`` output (every number
chosen by hand)."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest

from initcore import baselines, compare
from initcore.compare import PerformanceRegression, ResultsError


def _bench(case: str, pass_: str, device: str, median: float, flops: float | None = None,
           matmul_gflops: float | None = None) -> dict:
    """One entry of pytest-benchmark's ``benchmarks`` list, as bench/test_timing.py writes it."""
    name = f"test_{pass_}[{case}-{device}]"
    extra = {"case": case, "pass": pass_, "device_type": device, "device": f"some {device}", "dtype": "float32",
             "threads": 2}
    if flops is not None:
        extra.update(flops=flops, gflops=flops / median / 1e9, matmul_gflops=matmul_gflops)
    data = [median * 0.9, median, median * 1.2]
    return {
        "group": f"{pass_} {case}",
        "name": name,
        "fullname": f"bench/test_timing.py::{name}",
        "params": {"case": case, "device": device},
        "param": f"{case}-{device}",
        "extra_info": extra,
        "options": {"disable_gc": False, "timer": "perf_counter", "min_rounds": 5, "max_time": 1.0,
                    "min_time": 5e-06, "precision": None, "confidence": None, "warmup": False},
        "stats": {"min": min(data), "max": max(data), "mean": sum(data) / 3, "stddev": 0.1 * median, "rounds": 3,
                  "median": median, "iqr": 0.3 * median, "q1": 0.9 * median, "q3": 1.2 * median, "iqr_outliers": 0,
                  "stddev_outliers": 1, "outliers": "1;0", "ld15iqr": min(data), "hd15iqr": max(data),
                  "ops": 1 / median, "total": sum(data), "data": data, "iterations": 1},
    }


def _results(*benchmarks: dict) -> dict:
    return {
        "machine_info": {"node": "vm", "machine": "x86_64", "system": "Linux", "cpu": {"brand_raw": "Some CPU"},
                         "gpu": "Some GPU", "torch_version": "2.13.0", "cuda_version": "12.4", "torch_threads": 2},
        "commit_info": {"id": "0" * 40, "dirty": False, "project": "initcore", "branch": "main"},
        "benchmarks": list(benchmarks),
        "datetime": "2026-01-02T03:04:05.000000+00:00",
        "version": "5.3.1",
    }


# 2e8 FLOPs in 4 ms on the CPU = 50 GFLOP/s, half of its 100 GFLOP/s matmul; in 1 ms on CUDA = 200 GFLOP/s,
# a fifth of its 1000.
RUN = _results(
    _bench("mlp-w256-d4", "forward", "cpu", 0.004, 2e8, 100.0),
    _bench("mlp-w256-d4", "forward", "cuda", 0.001, 2e8, 1000.0),
    _bench("mlp-w256-d4", "backward", "cpu", 0.010, 4e8, 100.0),
)


def _write(tmp_path, name: str, data) -> str:
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return str(path)


# --- table -------------------------------------------------------------------------------------------


def test_table_puts_devices_side_by_side():
    t = compare.table(RUN)
    assert list(t.index) == [("mlp-w256-d4", "forward"), ("mlp-w256-d4", "backward")]
    fwd = t.loc[("mlp-w256-d4", "forward")]
    assert fwd["cpu_ms"] == pytest.approx(4.0)
    assert fwd["cuda_ms"] == pytest.approx(1.0)
    assert fwd["speedup"] == pytest.approx(4.0)
    assert fwd["cpu_gflops"] == pytest.approx(50.0)
    assert fwd["cuda_gflops"] == pytest.approx(200.0)
    assert fwd["cpu_frac"] == pytest.approx(0.5)
    assert fwd["cuda_frac"] == pytest.approx(0.2)


def test_table_has_nan_where_a_device_is_missing():
    bwd = compare.table(RUN).loc[("mlp-w256-d4", "backward")]
    assert bwd["cpu_ms"] == pytest.approx(10.0)
    assert bwd["cpu_gflops"] == pytest.approx(40.0)
    assert math.isnan(bwd["cuda_ms"]) and math.isnan(bwd["speedup"]) and math.isnan(bwd["cuda_frac"])
    cpu_only = compare.table(_results(_bench("tf", "forward", "cpu", 0.002, 1e8, 50.0)))
    assert cpu_only["cuda_ms"].isna().all() and cpu_only["cpu_frac"].iloc[0] == pytest.approx(1.0)


def test_table_keeps_a_benchmark_without_timing_extra_info():
    other = _bench("x", "forward", "cpu", 0.003)
    other.update(extra_info={}, group="my group", params=None)
    t = compare.table(_results(other))
    assert list(t.index) == [("my group", "")]
    assert t["cpu_ms"].iloc[0] == pytest.approx(3.0)
    assert t["cpu_gflops"].isna().all()


def test_format_table_marks_missing_results():
    text = compare.format_table(compare.table(RUN))
    assert "cuda GFLOP/s" in text and "4.000" in text and "50.0%" in text and "NaN" not in text
    assert compare.format_table(compare.table(_results())) == "no benchmarks"


# --- ratio and the regression check -------------------------------------------------------------------


def _run(forward_ms: float, backward_ms: float) -> dict:
    return _results(_bench("c", "forward", "cpu", forward_ms / 1e3), _bench("c", "backward", "cpu", backward_ms / 1e3))


def test_ratio_is_later_over_earlier_by_benchmark():
    r = compare.ratio(_run(2.0, 4.0), _run(3.0, 2.0))
    assert r.loc["test_forward[c-cpu]", "ratio"] == pytest.approx(1.5)
    assert r.loc["test_backward[c-cpu]", "ratio"] == pytest.approx(0.5)
    assert r.loc["test_forward[c-cpu]", "a_ms"] == pytest.approx(2.0)


def test_ratio_keeps_benchmarks_found_in_one_run_only():
    later = _results(_bench("c", "forward", "cpu", 0.002), _bench("new", "forward", "cpu", 0.001))
    r = compare.ratio(_run(2.0, 4.0), later)
    assert math.isnan(r.loc["test_backward[c-cpu]", "ratio"]) and math.isnan(r.loc["test_backward[c-cpu]", "b_ms"])
    assert math.isnan(r.loc["test_forward[new-cpu]", "ratio"])
    assert r.loc["test_forward[c-cpu]", "ratio"] == pytest.approx(1.0)


def test_check_fails_past_the_threshold_only():
    r = compare.ratio(_run(1.0, 1.0), _run(1.09, 0.5))  # forward 9% slower, backward twice as fast
    compare.check(r, 0.10)
    with pytest.raises(PerformanceRegression, match=r"1 benchmark\(s\) slowed by more than 5%") as e:
        compare.check(r, 0.05)
    assert "test_forward[c-cpu]" in str(e.value) and "test_backward" not in str(e.value)
    assert "pytest bench --benchmark-only" in str(e.value)  # says what to run next
    slow = compare.ratio(_run(1.0, 1.0), _run(1.15, 1.0))
    compare.check(slow, 0.20)
    with pytest.raises(PerformanceRegression):
        compare.check(slow)  # default 10%
    with pytest.raises(ValueError, match="threshold"):
        compare.regressions(slow, -0.1)


# --- loading -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("content, message", [
    ("{not json", "is not JSON"),
    ("[]", "no 'benchmarks' list"),
    (json.dumps({"machine_info": {}}), "no 'benchmarks' list"),
    (json.dumps({"benchmarks": [{"name": "t", "stats": {}}]}), "no positive stats.median"),
    (json.dumps({"benchmarks": [{"name": "t", "stats": {"median": "fast"}}]}), "no positive stats.median"),
    (json.dumps({"benchmarks": [{"stats": {"median": 1.0}}]}), "has no name"),
])
def test_load_rejects_what_is_not_benchmark_json(tmp_path, content, message):
    with pytest.raises(ResultsError, match=message):
        compare.load(_write(tmp_path, "r.json", content))


def test_load_reads_a_results_file(tmp_path):
    assert compare.load(_write(tmp_path, "r.json", RUN)) == RUN
    with pytest.raises(ResultsError, match="cannot read"):
        compare.load(tmp_path / "missing.json")


# --- the command -------------------------------------------------------------------------------------


def test_command_prints_the_table(tmp_path, capsys):
    assert compare.main([_write(tmp_path, "r.json", RUN)]) == 0
    out = capsys.readouterr().out
    assert "torch 2.13.0" in out and "gpu Some GPU" in out
    assert "mlp-w256-d4" in out and "speedup" in out and "4.00" in out


def test_command_with_two_files_exits_1_past_the_threshold(tmp_path, capsys):
    before, after = _write(tmp_path, "a.json", _run(1.0, 1.0)), _write(tmp_path, "b.json", _run(1.15, 1.0))
    assert compare.main([before, after]) == 1
    out = capsys.readouterr().out
    assert "1.150" in out and "REGRESSION" in out
    assert compare.main([before, after, "--threshold", "0.2"]) == 0
    assert "ok: 1 slower, 1 same (a regression: slower by more than 20%" in capsys.readouterr().out
    assert compare.main([before, before]) == 0


@pytest.mark.parametrize("files", [["missing.json"], ["good.json", "missing.json"], ["bad.json"],
                                   ["good.json", "bad.json"]])
def test_command_exits_2_on_a_bad_file_with_one_line(tmp_path, capsys, files):
    _write(tmp_path, "good.json", RUN)
    _write(tmp_path, "bad.json", '{"benchmarks": [')
    assert compare.main([str(tmp_path / f) for f in files]) == 2
    err = capsys.readouterr().err
    assert err.startswith("initcore compare: error: ") and err.count("\n") == 1
    assert "Traceback" not in err


@pytest.mark.parametrize("empty_one", [0, 1])
def test_command_exits_2_on_a_file_without_benchmarks(tmp_path, capsys, empty_one):
    files = [_write(tmp_path, "a.json", RUN), _write(tmp_path, "b.json", RUN)]
    files[empty_one] = _write(tmp_path, "empty.json", _results())
    assert compare.main(files[: empty_one + 1]) == 2  # alone (the table) and as the later run
    captured = capsys.readouterr()
    assert captured.err == f"initcore compare: error: {files[empty_one]} holds no benchmarks (was it written with " \
                           "--benchmark-skip or --benchmark-disable?); write one with pytest bench --benchmark-only " \
                           "--benchmark-json=FILE\n"
    assert captured.out == ""


def test_command_exits_2_when_no_benchmark_is_shared(tmp_path, capsys):
    a = _write(tmp_path, "a.json", _results(_bench("a", "forward", "cpu", 0.001)))
    b = _write(tmp_path, "b.json", _results(_bench("b", "forward", "cpu", 0.001)))
    assert compare.main([a, b]) == 2
    assert "no benchmark is in both files" in capsys.readouterr().err


def test_command_rejects_a_negative_threshold(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        compare.main([_write(tmp_path, "r.json", RUN), "--threshold", "-0.1"])
    assert e.value.code == 2
    assert "fraction >= 0" in capsys.readouterr().err


def test_records_are_a_tidy_frame():
    recs = compare.records(RUN)
    assert isinstance(recs, pd.DataFrame) and len(recs) == 3
    assert list(recs["device"]) == ["cpu", "cuda", "cpu"]
    assert recs["median_ms"].tolist() == pytest.approx([4.0, 1.0, 10.0])


# --- noise: a change is judged against the spread of the runs' own rounds -----------------------------------


def _timed(name: str, median_ms: float, q1_ms: float | None, q3_ms: float | None, rounds: int = 20,
           stddev_ms: float | None = None) -> dict:
    """A benchmark with the spread given (quartiles left out where None, as older files may)."""
    bench = _bench(name, "forward", "cpu", median_ms / 1e3)
    stats = bench["stats"]
    stats.update(rounds=rounds, stddev=(stddev_ms or 0.0) / 1e3)
    for key, value in (("q1", q1_ms), ("q3", q3_ms)):
        if value is None:
            del stats[key]
        else:
            stats[key] = value / 1e3
    stats.pop("iqr")
    return bench


def _pair(before: dict, after: dict) -> pd.DataFrame:
    return compare.ratio(_results(before), _results(after))


def test_a_busy_machine_is_within_noise():
    """Issue 15's case: the same code twice on a busy machine, x2 at the median, but a quarter of the slower
    run's rounds (its first quartile, 1.2 ms) as fast as the earlier run's third quartile (1.6 ms)."""
    r = _pair(_timed("c", 1.0, 0.9, 1.6), _timed("c", 2.0, 1.2, 3.0))
    assert r["ratio"].iloc[0] == pytest.approx(2.0)
    assert r["beyond_noise"].iloc[0] is False
    assert list(compare.judge(r)) == [compare.WITHIN_NOISE]
    compare.check(r)  # no regression
    assert compare.regressions(r).empty


def test_a_real_slowdown_is_a_regression():
    r = _pair(_timed("c", 1.0, 0.98, 1.03), _timed("c", 1.5, 1.47, 1.55))  # middle halves apart
    assert r["beyond_noise"].iloc[0] is True
    assert list(compare.judge(r)) == [compare.REGRESSION]
    with pytest.raises(PerformanceRegression, match=r"beyond the runs' noise") as e:
        compare.check(r)
    assert "middle half of the rounds 0.980-1.030 -> 1.470-1.550 ms" in str(e.value)


def test_beyond_noise_but_within_the_threshold_is_only_slower():
    r = _pair(_timed("c", 1.0, 0.99, 1.01), _timed("c", 1.05, 1.04, 1.06))
    assert r["beyond_noise"].iloc[0] is True
    assert list(compare.judge(r, 0.10)) == [compare.SLOWER]
    assert list(compare.judge(r, 0.04)) == [compare.REGRESSION]


def test_faster_beyond_noise_and_touching_quartiles():
    r = _pair(_timed("c", 2.0, 1.9, 2.1), _timed("c", 1.0, 0.9, 1.1))
    assert list(compare.judge(r)) == [compare.FASTER]
    touching = _pair(_timed("c", 1.0, 0.9, 1.2), _timed("c", 1.3, 1.2, 1.4))  # q1 after == q3 before: overlap
    assert list(compare.judge(touching)) == [compare.WITHIN_NOISE]


def test_stddev_stands_in_for_missing_quartiles():
    # 1.0 +- 0.6745 * 0.01 against 1.5 +- 0.6745 * 0.01: apart; with stddev 0.8 (+-0.54) they overlap
    tight = _pair(_timed("c", 1.0, None, None, stddev_ms=0.01), _timed("c", 1.5, None, None, stddev_ms=0.01))
    assert list(compare.judge(tight)) == [compare.REGRESSION]
    assert tight["a_q3_ms"].iloc[0] == pytest.approx(1.0 + 0.6744897501960817 * 0.01)
    wide = _pair(_timed("c", 1.0, None, None, stddev_ms=0.8), _timed("c", 1.5, None, None, stddev_ms=0.8))
    assert list(compare.judge(wide)) == [compare.WITHIN_NOISE]


def test_too_few_rounds_leave_the_threshold_alone_to_decide():
    r = _pair(_timed("c", 1.0, 0.5, 2.0, rounds=compare.MIN_ROUNDS - 1), _timed("c", 1.5, 1.0, 3.0))
    assert r["beyond_noise"].iloc[0] is None  # unknown: the earlier run's quartiles of 4 rounds mean little
    assert list(compare.judge(r)) == [compare.REGRESSION]
    assert list(compare.judge(r, 0.6)) == [compare.SLOWER]


def test_command_says_within_noise_and_exits_0(tmp_path, capsys):
    before = _write(tmp_path, "a.json", _results(_timed("busy", 1.0, 0.9, 1.6), _timed("real", 1.0, 0.98, 1.03),
                                                 _timed("small", 1.0, 0.99, 1.01)))
    after = _write(tmp_path, "b.json", _results(_timed("busy", 2.0, 1.2, 3.0), _timed("real", 1.5, 1.47, 1.55),
                                                _timed("small", 1.05, 1.04, 1.06)))
    assert compare.main([before, after]) == 1
    out = capsys.readouterr().out
    lines = {line.split()[0]: line for line in out.splitlines() if line.startswith("test_")}
    assert lines["test_forward[busy-cpu]"].endswith("within noise") and "0.900-1.600" in lines["test_forward[busy-cpu]"]
    assert lines["test_forward[real-cpu]"].endswith("REGRESSION")
    assert lines["test_forward[small-cpu]"].endswith("slower")
    assert "not ok: 1 REGRESSION, 1 slower, 1 within noise" in out
    assert max(map(len, out.splitlines())) <= 120
    same_code = _write(tmp_path, "c.json", _results(_timed("busy", 2.5, 1.5, 3.2)))
    assert compare.main([_write(tmp_path, "d.json", _results(_timed("busy", 1.0, 0.9, 1.6))), same_code]) == 0
    assert "ok: 1 within noise" in capsys.readouterr().out


def test_moves_both_ways_beyond_noise_warn_of_load():
    """Two runs of the same code on this 2-core machine under load (issue 15's case, measured again here):
    a whole run of one benchmark slowed, another sped up, each with tight rounds. The summary says so."""
    r = compare.ratio(_results(_timed("a", 1.0, 0.98, 1.03), _timed("b", 1.0, 0.98, 1.03)),
                      _results(_timed("a", 1.5, 1.47, 1.55), _timed("b", 0.5, 0.48, 0.52)))
    assert "note: benchmarks moved both ways beyond noise" in compare.summary(r)
    one_way = compare.ratio(_results(_timed("a", 1.0, 0.98, 1.03)), _results(_timed("a", 1.5, 1.47, 1.55)))
    assert "note:" not in compare.summary(one_way)


# --- two traces of one model and seed, number for number -----------------------------------------------------

TRACE = pd.DataFrame({"module": ["layers.0", "layers.1", "layers.2"], "kind": "linear", "layer": [0, 1, 2],
                      "act_std": [0.5, 0.25, 0.125], "act_mean": [0.01, -0.02, 0.0],
                      "grad_norm": [0.03, 0.02, 0.01], "logit_std": math.nan})


def _trace(tmp_path, name: str, frame: pd.DataFrame) -> str:
    path = tmp_path / name
    frame.to_csv(path, index=False)
    return str(path)


def test_two_traces_with_the_same_numbers_exit_0(tmp_path, capsys):
    # a tenth of EXACT_RTOL: a thread count's reduction order, not a change
    after = TRACE.assign(act_std=TRACE["act_std"] * (1 + baselines.EXACT_RTOL / 10))
    assert compare.main([_trace(tmp_path, "a.csv", TRACE), _trace(tmp_path, "b.csv", after)]) == 0
    assert "same numbers: 9 statistics equal" in capsys.readouterr().out  # 3 rows x 3 statistics, NaN left out


def test_two_traces_that_differ_exit_1_ranked_with_the_first_row_to_move(tmp_path, capsys):
    # layers.1's act_std 1% larger (an edit there), layers.2's 3% (downstream, further), gradients upstream
    after = TRACE.assign(act_std=[0.5, 0.25 * 1.01, 0.125 * 1.03], grad_norm=[0.0301, 0.02, 0.01])
    assert compare.main([_trace(tmp_path, "a.csv", TRACE), _trace(tmp_path, "b.csv", after)]) == 1
    out = capsys.readouterr().out
    assert f"3 of 9 statistics differ beyond {baselines.EXACT_RTOL:g} relative" in out
    lines = [line.split() for line in out.splitlines() if line.startswith("  layers.")]
    assert [(l[0], l[1]) for l in lines] == [("layers.2", "act_std"), ("layers.1", "act_std"),
                                              ("layers.0", "grad_norm")]  # largest relative difference first
    assert "first to move in the model's order: layers.1 act_std" in out  # forward rows, not the gradient


@pytest.mark.parametrize("args, words", [
    (["a.csv"], "a trace compares with a second trace"),
    (["a.csv", "bad.csv"], "not a trace CSV (no module and kind columns)"),
    (["a.csv", "missing.csv"], "missing.csv: no such file"),
])
def test_bad_trace_input_exits_2_with_one_line(tmp_path, capsys, args, words):
    _trace(tmp_path, "a.csv", TRACE)
    (tmp_path / "bad.csv").write_text("x,y\n1,2\n")
    assert compare.main([str(tmp_path / a) for a in args]) == 2
    err = capsys.readouterr().err
    assert words in err and len(err.strip().splitlines()) == 1, err
