"""Read pytest-benchmark JSON results: CPU against CUDA per case and pass, and one run against another; and two
traces of one model at one seed, number for number (``run_traces``).

``table`` puts the CPU and CUDA medians of each case and pass side by side, with the speedup, the
achieved GFLOP/s and its fraction of the device's measured matmul rate (both from each benchmark's
``extra_info``: ``flops`` and ``matmul_gflops``, written by ``bench/test_timing.py``). ``ratio`` divides
each benchmark's median in a later run by the earlier one and judges the change against the runs' own
spread (``judge``); ``check`` raises ``PerformanceRegression`` only for a change beyond that noise AND past
a threshold. pandas only: results are numbers, no torch needed.

Noise. Two runs of the same code on a busy machine differ by x1.6-x2.5 at the median (issue 15): load
slows some rounds of a run, not others. A change is within noise when the middle halves of the two runs'
rounds overlap (the later run's first quartile is not above the earlier run's third quartile, for a
slowdown): a quarter of the slower run's rounds were as fast as the faster run's typical round, so the code
can still run that fast and the difference is the machine's. This uses the spread of the rounds themselves,
not the standard error of the median, which shrinks with more rounds while a busy machine's drift between
runs does not. Where a file lacks quartiles, median +- 0.6745 stddev stands in for them (a normal's
quartiles); with neither, or with fewer than ``MIN_ROUNDS`` rounds, the noise is unknown and the threshold
alone decides.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from initcore import baselines

DEVICES = ("cpu", "cuda")  # the table's device columns, in order (initcore.testing.devices.DEVICES)
DEFAULT_THRESHOLD = 0.10  # a benchmark slowed by more than 10% at the median, beyond noise, is a regression
LINE_WIDTH = 120  # the command's output, as the project's code
MIN_ROUNDS = 5  # fewer rounds give no quartiles worth the name: noise unknown
Z_QUARTILE = 0.6744897501960817  # a normal's quartiles are its mean +- this many standard deviations

# ratio()'s verdicts
WITHIN_NOISE, SLOWER, FASTER, REGRESSION = "within noise", "slower", "faster", "REGRESSION"
ONLY_BEFORE, ONLY_AFTER = "only before", "only after"

Results = Mapping[str, object]


class ResultsError(ValueError):
    """A results file is missing, unreadable, or not pytest-benchmark JSON."""


class PerformanceRegression(AssertionError):
    """Benchmarks slowed past the threshold between two runs."""


def load(path: str | Path) -> dict:
    """A pytest-benchmark JSON file (``--benchmark-json`` or ``--benchmark-autosave``), checked for its shape.

    Raises:
        ResultsError: the file is missing, unreadable, not JSON, or has no ``benchmarks`` list whose
            entries carry a ``name`` and a numeric ``stats.median``.
    """
    path = Path(path)
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise ResultsError(f"cannot read {path}: {getattr(e, 'strerror', None) or e}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise ResultsError(f"{path} is not JSON ({e.msg} at line {e.lineno}, column {e.colno})") from None
    validate(data, str(path))
    return data


def validate(data: object, source: str = "results") -> None:
    """Raise ``ResultsError`` unless ``data`` is shaped like pytest-benchmark's JSON output."""
    hint = "write one with pytest --benchmark-json=FILE or --benchmark-autosave"
    if not isinstance(data, dict) or not isinstance(data.get("benchmarks"), list):
        raise ResultsError(f"{source} has no 'benchmarks' list; {hint}")
    for i, bench in enumerate(data["benchmarks"]):
        stats = bench.get("stats") if isinstance(bench, dict) else None
        median = stats.get("median") if isinstance(stats, dict) else None
        if not isinstance(bench, dict) or not isinstance(bench.get("name"), str):
            raise ResultsError(f"{source}: benchmark {i} has no name; {hint}")
        if isinstance(median, bool) or not isinstance(median, (int, float)) or not median > 0:
            raise ResultsError(f"{source}: benchmark {bench['name']!r} has no positive stats.median; {hint}")


def _results(results: Results | str | Path) -> Results:
    if isinstance(results, (str, Path)):
        return load(results)
    validate(results)
    return results


def _number(value: object) -> float:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else math.nan


RECORD_COLUMNS = ["name", "fullname", "case", "pass", "device", "median_ms", "flops", "gflops", "matmul_gflops",
                  "q1_ms", "q3_ms", "stddev_ms", "rounds"]


def records(results: Results | str | Path) -> pd.DataFrame:
    """One row per benchmark: ``RECORD_COLUMNS`` (the median, FLOPs and rates, the quartiles, stddev, rounds).

    Case, pass and device come from ``extra_info`` (``case``, ``pass``, ``device_type``); a benchmark
    without them is its own case (its group, else its name), pass "", device ``params['device']`` or cpu.
    Spread statistics a file lacks are NaN.
    """
    rows = []
    for bench in _results(results)["benchmarks"]:
        info = bench.get("extra_info") or {}
        params = bench.get("params") or {}
        median = float(bench["stats"]["median"])
        flops = _number(info.get("flops"))
        stats = bench["stats"]
        rows.append({
            "name": bench["name"],
            "fullname": bench.get("fullname") or bench["name"],
            "case": info.get("case") or bench.get("group") or bench["name"],
            "pass": info.get("pass", ""),
            "device": info.get("device_type") or params.get("device") or "cpu",
            "median_ms": median * 1e3,
            "flops": flops,
            "gflops": flops / median / 1e9,
            "matmul_gflops": _number(info.get("matmul_gflops")),
            "q1_ms": _number(stats.get("q1")) * 1e3,
            "q3_ms": _number(stats.get("q3")) * 1e3,
            "stddev_ms": _number(stats.get("stddev")) * 1e3,
            "rounds": _number(stats.get("rounds")),
        })
    return pd.DataFrame(rows, columns=RECORD_COLUMNS)


def table(results: Results | str | Path) -> pd.DataFrame:
    """Per (case, pass): ``<device>_ms`` median, ``speedup`` (cpu_ms / cuda_ms), ``<device>_gflops`` and
    ``<device>_frac`` (GFLOP/s over the device's measured matmul GFLOP/s), for cpu and cuda; NaN where absent."""
    recs = records(results)
    recs = recs.assign(frac=recs["gflops"] / recs["matmul_gflops"])
    # Cases in the order the run wrote them, each case's passes together (forward before backward).
    first = {name: {v: i for i, v in enumerate(dict.fromkeys(recs[name]))} for name in ("case", "pass")}
    pairs = sorted(dict.fromkeys(zip(recs["case"], recs["pass"], strict=True)),
                   key=lambda cp: (first["case"][cp[0]], first["pass"][cp[1]]))
    keys = pd.MultiIndex.from_tuples(pairs, names=["case", "pass"])
    wide = (recs.groupby(["case", "pass", "device"], sort=False)[["median_ms", "gflops", "frac"]].first()
            .unstack("device").reindex(keys))
    out = pd.DataFrame(index=keys)

    def col(value: str, device: str) -> pd.Series:
        return wide[(value, device)] if (value, device) in wide.columns else pd.Series(math.nan, index=keys)

    for dev in DEVICES:
        out[f"{dev}_ms"] = col("median_ms", dev).astype(float)
    out["speedup"] = out["cpu_ms"] / out["cuda_ms"]
    for dev in DEVICES:
        out[f"{dev}_gflops"] = col("gflops", dev).astype(float)
    for dev in DEVICES:
        out[f"{dev}_frac"] = col("frac", dev).astype(float)
    return out


def _quartiles(recs: pd.DataFrame) -> tuple[pd.Series, pd.Series]:
    """Each benchmark's first and third quartile in ms: its own, else median +- 0.6745 stddev; NaN with
    fewer than MIN_ROUNDS rounds or no spread at all."""
    half = Z_QUARTILE * recs["stddev_ms"]
    q1 = recs["q1_ms"].where(recs["q1_ms"].notna(), recs["median_ms"] - half)
    q3 = recs["q3_ms"].where(recs["q3_ms"].notna(), recs["median_ms"] + half)
    enough = recs["rounds"] >= MIN_ROUNDS
    return q1.where(enough), q3.where(enough)


def ratio(a: Results | str | Path, b: Results | str | Path) -> pd.DataFrame:
    """Each benchmark's median in ``b`` over its median in ``a`` (> 1: ``b`` is slower), matched by fullname,
    with each run's quartiles (``a_q1_ms`` ... ``b_q3_ms``) and ``beyond_noise``: True when the middle halves
    of the two runs' rounds do not overlap, False when they do, None when a run's spread is unknown.

    Benchmarks found in only one run are kept, with NaN on the other side and no ratio.
    """
    frames = []
    for recs in (records(a), records(b)):
        q1, q3 = _quartiles(recs)
        frames.append(pd.DataFrame({"fullname": recs["fullname"], "name": recs["name"], "ms": recs["median_ms"],
                                    "q1_ms": q1, "q3_ms": q3}))
    both = frames[0].merge(frames[1], on="fullname", how="outer", suffixes=("_a", "_b"))
    out = pd.DataFrame({"a_ms": both["ms_a"].astype(float), "b_ms": both["ms_b"].astype(float)})
    out["ratio"] = out["b_ms"] / out["a_ms"]
    for run in ("a", "b"):
        for q in ("q1", "q3"):
            out[f"{run}_{q}_ms"] = both[f"{q}_ms_{run}"].astype(float)
    # the slower run's first quartile above the faster run's third: the middle halves are apart
    apart = np.where(out["b_ms"] > out["a_ms"], out["b_q1_ms"] > out["a_q3_ms"], out["a_q1_ms"] > out["b_q3_ms"])
    known = (out[["a_q1_ms", "a_q3_ms", "b_q1_ms", "b_q3_ms"]].notna().all(axis=1) & out["ratio"].notna()).to_numpy()
    out["beyond_noise"] = pd.Series([bool(x) if k else None for x, k in zip(apart, known, strict=True)],
                                    index=out.index, dtype=object)
    out.index = pd.Index(both["name_a"].fillna(both["name_b"]).astype(object), name="name")
    return out.sort_index()


def judge(ratios: pd.DataFrame, threshold: float = DEFAULT_THRESHOLD) -> pd.Series:
    """A verdict per row of ``ratio(...)``: "within noise"; "slower" or "faster" (beyond noise, and for
    "slower" not past ``threshold``); "REGRESSION" (beyond noise, or noise unknown, and slower by more
    than ``threshold``); "only before" or "only after" for a benchmark in one run alone. With noise unknown
    and within the threshold: "slower", "faster" or "same" by the medians alone."""
    _check_threshold(threshold)
    verdicts = []
    for r in ratios.itertuples():
        if math.isnan(r.a_ms) or math.isnan(r.b_ms):
            verdicts.append(ONLY_AFTER if math.isnan(r.a_ms) else ONLY_BEFORE)
        elif r.beyond_noise is False:
            verdicts.append(WITHIN_NOISE)
        elif r.ratio > 1 + threshold:
            verdicts.append(REGRESSION)
        else:
            verdicts.append(SLOWER if r.ratio > 1 else FASTER if r.ratio < 1 else "same")
    return pd.Series(verdicts, index=ratios.index, name="verdict", dtype=object)


def _check_threshold(threshold: float) -> None:
    if not threshold >= 0:
        raise ValueError(f"threshold must be a fraction >= 0 (0.10 for 10%), got {threshold!r}")


def regressions(ratios: pd.DataFrame, threshold: float = DEFAULT_THRESHOLD) -> pd.DataFrame:
    """The rows of ``ratio(...)`` slower by more than ``threshold`` (0.10: ratio > 1.10) and beyond the runs'
    noise (or with noise unknown)."""
    return ratios[judge(ratios, threshold) == REGRESSION]


def check(ratios: pd.DataFrame, threshold: float = DEFAULT_THRESHOLD) -> None:
    """Raise ``PerformanceRegression`` if any benchmark slowed by more than ``threshold``, beyond noise."""
    slow = regressions(ratios, threshold)
    if len(slow):
        lines = [f"  {name}: {r.a_ms:.3f} ms -> {r.b_ms:.3f} ms (x{r.ratio:.2f}; middle half of the rounds "
                 f"{_span(r.a_q1_ms, r.a_q3_ms)} -> {_span(r.b_q1_ms, r.b_q3_ms)} ms)" for name, r in slow.iterrows()]
        raise PerformanceRegression(
            f"{len(slow)} benchmark(s) slowed by more than {threshold:.0%} at the median, beyond the runs' noise:\n"
            + "\n".join(lines)
            + "\nRerun them on a quiet machine (pytest bench --benchmark-only -k 'NAME') to rule out load,"
            " then look for the change that slowed them."
        )


def _span(q1: float, q3: float) -> str:
    return "?" if math.isnan(q1) or math.isnan(q3) else f"{q1:.3f}-{q3:.3f}"


# --- printing and the command line ---------------------------------------------------------------


def _fmt(fmt: str):
    return lambda v: "-" if pd.isna(v) else format(v, fmt)


_TABLE_FORMATS = {"ms": ".3f", "speedup": ".2f", "gflops": ".1f", "frac": ".1%"}


def format_table(frame: pd.DataFrame) -> str:
    """The ``table`` frame as text, "-" where a device has no result."""
    if frame.empty:
        return "no benchmarks"
    fmts = {c: _fmt(_TABLE_FORMATS[c.rsplit("_", 1)[-1] if "_" in c else c]) for c in frame.columns}
    headers = [c.replace("_gflops", " GFLOP/s").replace("_ms", " ms").replace("_frac", " of matmul")
               for c in frame.columns]
    return frame.to_string(formatters=fmts, header=headers, na_rep="-")


def format_ratios(frame: pd.DataFrame, threshold: float = DEFAULT_THRESHOLD) -> str:
    """The ``ratio`` frame as text: medians, their ratio, each run's middle half of rounds, the verdict."""
    if frame.empty:
        return "no benchmarks"
    shown = pd.DataFrame({
        "before ms": frame["a_ms"].map(_fmt(".3f")), "after ms": frame["b_ms"].map(_fmt(".3f")),
        "after/before": frame["ratio"].map(_fmt(".3f")),
        "before q1-q3": [_span(q1, q3) for q1, q3 in zip(frame["a_q1_ms"], frame["a_q3_ms"], strict=True)],
        "after q1-q3": [_span(q1, q3) for q1, q3 in zip(frame["b_q1_ms"], frame["b_q3_ms"], strict=True)],
        "verdict": judge(frame, threshold),
    }, index=frame.index)
    return shown.to_string()


def _describe(path: str, data: Results) -> str:
    m = data.get("machine_info") or {}
    cpu = (m.get("cpu") or {}).get("brand_raw") if isinstance(m.get("cpu"), dict) else None
    parts = [p for p in (str(data.get("datetime", ""))[:19].replace("T", " "),
                         m.get("torch_version") and f"torch {m['torch_version']}",
                         cpu and f"cpu {cpu}", m.get("gpu") and f"gpu {m['gpu']}") if p]
    return f"{path}: " + ", ".join(parts) if parts else path


# --- two traces: same seed, same numbers ---------------------------------------------------------------------
# Two ``initcore trace --format csv`` files of one model at one seed on one machine hold the same numbers, to
# the float nondeterminism of the thread count (``baselines.EXACT_RTOL``, measured there), unless the model's
# code computes something else. A trace file records no seed or digest: traced at another seed, every row
# differs by seed noise, which is what the bench's bands are for.
TRACE_KEY = ("module", "kind", "layer")


def load_trace(path: str | Path) -> pd.DataFrame:
    """An ``initcore trace --format csv`` file as tidy rows ``layer`` (the module), ``statistic``, ``value``, in
    the model's order (NaN statistics dropped). ResultsError for a file that is not one."""
    try:
        frame = pd.read_csv(path)
    except FileNotFoundError:
        raise ResultsError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise ResultsError(f"{path}: not a trace CSV ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})"
                           ) from None
    if not {"module", "kind"} <= set(frame.columns):
        raise ResultsError(f"{path}: not a trace CSV (no module and kind columns); write one with "
                           f"initcore trace ... --format csv > FILE.csv")
    numbers = [c for c in frame.columns if c not in TRACE_KEY and pd.api.types.is_numeric_dtype(frame[c])]
    tidy = frame.melt(id_vars=["module"], value_vars=numbers, var_name="statistic", value_name="value",
                      ignore_index=False).reset_index(names="_row").sort_values(["_row"], kind="stable")
    tidy = tidy.dropna(subset=["value"])
    return pd.DataFrame({"config": "trace", "layer": tidy["module"].astype(str), "statistic": tidy["statistic"],
                         "value": tidy["value"].astype(float)}).reset_index(drop=True)


def compare_traces(before: pd.DataFrame, after: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``baselines.compare_seed`` of ``after`` against ``before`` (rows that moved ranked by relative difference),
    and the (layer, statistic) rows found in one trace only (column ``side``)."""
    result = baselines.compare_seed(after, before)
    keys = ["layer", "statistic"]
    both = before[keys].merge(after[keys], how="outer", indicator=True)
    only = both[both["_merge"] != "both"].assign(side=lambda f: f["_merge"].map(
        {"left_only": "only before", "right_only": "only after"}).astype(str)).drop(columns="_merge")
    return result.sort_values("rel_diff", ascending=False, kind="stable").reset_index(drop=True), only


def run_traces(before_path: str, after_path: str) -> int:
    """``initcore compare BEFORE.csv AFTER.csv``: 0 when every statistic is the same number, 1 when some moved
    (the table, ranked by relative difference, and the first row to move in the model's order)."""
    before, after = load_trace(before_path), load_trace(after_path)
    result, only = compare_traces(before, after)
    moved = result[result["moved"]]
    print(_wrap(f"before: {before_path}\nafter:  {after_path}"))
    if len(only):
        print(f"{len(only)} statistics are in one trace only (another model, or other rows):")
        print("\n".join("  " + line for line in only.head(20).to_string(index=False).splitlines()))
    if not len(moved):
        largest = float(result["rel_diff"].max()) if len(result) else 0.0
        print(_wrap(f"same numbers: {len(result)} statistics equal within {baselines.EXACT_RTOL:g} relative "
                    f"(largest relative difference {largest:.2g}); trace both at one --seed on one machine: "
                    f"at another seed every row differs by seed noise"))
        return 1 if len(only) else 0
    shown = moved.head(40)[["layer", "statistic", "stored", "measured", "rel_diff"]].rename(
        columns={"layer": "module", "stored": "before", "measured": "after"})
    print(f"{len(moved)} of {len(result)} statistics differ beyond {baselines.EXACT_RTOL:g} relative (at one seed "
          f"and machine, the code computes something else), largest first:")
    print("\n".join("  " + line for line in shown.to_string(index=False, float_format="{:.6g}".format).splitlines()))
    forward = moved[~moved["statistic"].str.contains("grad")]
    first = (forward if len(forward) else moved).sort_values("order", kind="stable").iloc[0]
    print(_wrap(f"first to move in the model's order: {first['layer']} {first['statistic']} (rel_diff "
                f"{first['rel_diff']:.3g}): the edit is there or just before it"))
    return 1


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The ``compare`` command's arguments, for ``initcore.cli`` (or any parser)."""
    parser.add_argument("results", metavar="RESULTS.json",
                        help="pytest-benchmark JSON (--benchmark-json, autosave), or a trace CSV (initcore trace "
                             "--format csv) to compare with another")
    parser.add_argument("other", metavar="OTHER.json", nargs="?",
                        help="a later run: print each benchmark's median ratio OTHER/RESULTS instead; or, after a "
                             "trace CSV, a second trace of the same model and seed: exit 1 if a number moved")
    parser.add_argument("--threshold", type=_threshold, default=DEFAULT_THRESHOLD,
                        help="with OTHER.json: exit 1 if a median slowed by more than this fraction (default 0.10)")
    return parser


def _threshold(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not (value >= 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"must be a fraction >= 0 (0.10 for 10%), got {text!r}")
    return value


def run(args: argparse.Namespace) -> int:
    """Print the table (one file) or the ratios (two), or compare two traces (CSV). Exit status 0; 1 on a
    regression or a trace whose numbers moved; 2 on a bad file."""
    if str(args.results).endswith(".csv") or str(args.other or "").endswith(".csv"):
        try:
            if not args.other:
                raise ResultsError(f"{args.results}: a trace compares with a second trace: initcore compare "
                                   f"BEFORE.csv AFTER.csv")
            return run_traces(args.results, args.other)
        except ResultsError as e:
            print(f"initcore compare: error: {e}", file=sys.stderr)
            return 2
    try:
        first = load(args.results)
        second = load(args.other) if args.other else None
    except ResultsError as e:
        print(f"initcore compare: error: {e}", file=sys.stderr)
        return 2
    for path, data in ((args.results, first), (args.other, second)):
        # Exit 2, not 1: 1 says "slower", which CI reads as a regression of the code; a file without timings
        # says nothing about speed. It is unusable input, as a file that is not JSON is.
        if data is not None and not data["benchmarks"]:
            print(f"initcore compare: error: {path} holds no benchmarks (was it written with --benchmark-skip "
                  "or --benchmark-disable?); write one with pytest bench --benchmark-only --benchmark-json=FILE",
                  file=sys.stderr)
            return 2
    if second is None:
        print(_describe(args.results, first))
        print(format_table(table(first)))
        return 0
    ratios = ratio(first, second)
    print(_wrap(f"before: {_describe(args.results, first)}"))
    print(_wrap(f"after:  {_describe(args.other, second)}"))
    print(format_ratios(ratios, args.threshold))
    if ratios["ratio"].isna().all():
        print("initcore compare: error: no benchmark is in both files; nothing was compared", file=sys.stderr)
        return 2
    print(_wrap(summary(ratios, args.threshold)))
    try:
        check(ratios, args.threshold)
    except PerformanceRegression as e:
        print(_wrap(f"REGRESSION: {e}"))
        return 1
    return 0


def _wrap(text: str, width: int = LINE_WIDTH) -> str:
    """Each line of ``text`` within ``width`` columns, continued with an indent."""
    return "\n".join(textwrap.fill(line, width, subsequent_indent="    ", break_long_words=False,
                                   break_on_hyphens=False) for line in text.splitlines())


def summary(ratios: pd.DataFrame, threshold: float = DEFAULT_THRESHOLD) -> str:
    """One line: how many benchmarks got each verdict, and whether that is ok."""
    counts = judge(ratios, threshold).value_counts()
    order = (REGRESSION, SLOWER, FASTER, WITHIN_NOISE, "same", ONLY_BEFORE, ONLY_AFTER)
    parts = ", ".join(f"{counts[v]} {v}" for v in order if v in counts)
    head = "not ok" if REGRESSION in counts else "ok"
    line = (f"{head}: {parts} (a regression: slower by more than {threshold:.0%} at the median and beyond noise, "
            "the middle halves of the two runs' rounds apart)")
    if FASTER in counts and (REGRESSION in counts or SLOWER in counts):
        # A busy machine can slow a whole run of one benchmark (every round), which no spread within the run
        # shows; two such runs then disagree both ways, where a change of code mostly moves one way.
        line += ("\nnote: benchmarks moved both ways beyond noise; unless the code changed so, load on the machine "
                 "did: rerun both on a quiet machine before trusting either direction")
    return line


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m initcore.compare RESULTS.json [OTHER.json] [--threshold 0.10]``."""
    parser = add_arguments(argparse.ArgumentParser(prog="initcore compare", description=__doc__.splitlines()[0]))
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
