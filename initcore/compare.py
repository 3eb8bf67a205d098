"""Read pytest-benchmark JSON results: CPU against CUDA per case and pass, and one run against another.

``table`` puts the CPU and CUDA medians of each case and pass side by side, with the speedup, the
achieved GFLOP/s and its fraction of the device's measured matmul rate (both from each benchmark's
``extra_info``: ``flops`` and ``matmul_gflops``, written by ``bench/test_timing.py``). ``ratio`` divides
each benchmark's median in a later run by the earlier one; ``check`` raises ``PerformanceRegression``
past a threshold. pandas only: results are numbers, no torch needed.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

import pandas as pd

DEVICES = ("cpu", "cuda")  # the table's device columns, in order (initcore.testing.devices.DEVICES)
DEFAULT_THRESHOLD = 0.10  # a benchmark slower by more than 10% at the median is a regression

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


def records(results: Results | str | Path) -> pd.DataFrame:
    """One row per benchmark: name, fullname, case, pass, device, median_ms, flops, gflops, matmul_gflops.

    Case, pass and device come from ``extra_info`` (``case``, ``pass``, ``device_type``); a benchmark
    without them is its own case (its group, else its name), pass "", device ``params['device']`` or cpu.
    """
    rows = []
    for bench in _results(results)["benchmarks"]:
        info = bench.get("extra_info") or {}
        params = bench.get("params") or {}
        median = float(bench["stats"]["median"])
        flops = _number(info.get("flops"))
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
        })
    columns = ["name", "fullname", "case", "pass", "device", "median_ms", "flops", "gflops", "matmul_gflops"]
    return pd.DataFrame(rows, columns=columns)


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


def ratio(a: Results | str | Path, b: Results | str | Path) -> pd.DataFrame:
    """Each benchmark's median in ``b`` over its median in ``a`` (> 1: ``b`` is slower), matched by fullname.

    Benchmarks found in only one run are kept, with NaN on the other side and no ratio.
    """
    ra, rb = records(a), records(b)
    both = ra[["fullname", "name", "median_ms"]].merge(rb[["fullname", "name", "median_ms"]], on="fullname",
                                                         how="outer", suffixes=("_a", "_b"))
    out = pd.DataFrame({"a_ms": both["median_ms_a"].astype(float), "b_ms": both["median_ms_b"].astype(float)})
    out["ratio"] = out["b_ms"] / out["a_ms"]
    out.index = pd.Index(both["name_a"].fillna(both["name_b"]).astype(object), name="name")
    return out.sort_index()


def regressions(ratios: pd.DataFrame, threshold: float = DEFAULT_THRESHOLD) -> pd.DataFrame:
    """The rows of ``ratio(...)`` whose median slowed by more than ``threshold`` (0.10: ratio > 1.10)."""
    if not threshold >= 0:
        raise ValueError(f"threshold must be a fraction >= 0 (0.10 for 10%), got {threshold!r}")
    return ratios[ratios["ratio"] > 1 + threshold]


def check(ratios: pd.DataFrame, threshold: float = DEFAULT_THRESHOLD) -> None:
    """Raise ``PerformanceRegression`` if any benchmark slowed by more than ``threshold``."""
    slow = regressions(ratios, threshold)
    if len(slow):
        lines = [f"  {name}: {r.a_ms:.3f} ms -> {r.b_ms:.3f} ms (x{r.ratio:.2f})" for name, r in slow.iterrows()]
        raise PerformanceRegression(
            f"{len(slow)} benchmark(s) slowed by more than {threshold:.0%} at the median:\n" + "\n".join(lines)
            + "\nRerun them on a quiet machine (pytest bench --benchmark-only -k 'NAME') to rule out noise,"
            " then look for the change that slowed them."
        )


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


def format_ratios(frame: pd.DataFrame) -> str:
    """The ``ratio`` frame as text."""
    if frame.empty:
        return "no benchmarks"
    fmts = {"a_ms": _fmt(".3f"), "b_ms": _fmt(".3f"), "ratio": _fmt(".3f")}
    return frame.to_string(formatters=fmts, header=["before ms", "after ms", "after/before"], na_rep="-")


def _describe(path: str, data: Results) -> str:
    m = data.get("machine_info") or {}
    cpu = (m.get("cpu") or {}).get("brand_raw") if isinstance(m.get("cpu"), dict) else None
    parts = [p for p in (str(data.get("datetime", ""))[:19].replace("T", " "),
                         m.get("torch_version") and f"torch {m['torch_version']}",
                         cpu and f"cpu {cpu}", m.get("gpu") and f"gpu {m['gpu']}") if p]
    return f"{path}: " + ", ".join(parts) if parts else path


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The ``compare`` command's arguments, for ``initcore.cli`` (or any parser)."""
    parser.add_argument("results", metavar="RESULTS.json", help="pytest-benchmark JSON (--benchmark-json, autosave)")
    parser.add_argument("other", metavar="OTHER.json", nargs="?",
                        help="a later run: print each benchmark's median ratio OTHER/RESULTS instead")
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
    """Print the table (one file) or the ratios (two). Exit status 0; 1 on a regression; 2 on a bad file."""
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
    print(f"before: {_describe(args.results, first)}")
    print(f"after:  {_describe(args.other, second)}")
    print(format_ratios(ratios))
    if ratios["ratio"].isna().all():
        print("initcore compare: error: no benchmark is in both files; nothing was compared", file=sys.stderr)
        return 2
    try:
        check(ratios, args.threshold)
    except PerformanceRegression as e:
        print(f"REGRESSION: {e}")
        return 1
    print(f"ok: no benchmark slowed by more than {args.threshold:.0%}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m initcore.compare RESULTS.json [OTHER.json] [--threshold 0.10]``."""
    parser = add_arguments(argparse.ArgumentParser(prog="initcore compare", description=__doc__.splitlines()[0]))
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
