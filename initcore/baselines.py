"""Stored statistical baselines for `bench/`: summarize per-seed measurements, compare a new one
against a band, and write `baselines/<experiment>.csv` atomically, safely under pytest-xdist.

A row holds, for one (config, layer, statistic), the mean and sample std ("spread") across seeds,
so the check is statistical rather than bit-exact: another seed, or CPU instead of CUDA, passes;
a changed init scale, activation or residual fails. The device is never part of `config`.

CSV columns: ``config, layer, statistic, mean, spread, n_seeds, scale, value``; with ``scale == "log"``
mean and spread are of log(value). ``value`` is one seed's own value of the row (``SeedRecord``, "same
seed, same numbers"): beside each configuration's rows the file holds that seed's record, rows whose
statistic is ``seed``, ``environment`` or ``digest`` (of the inputs and of each parameter), with only
``value`` filled. Rows are sorted naturally by key ("2" < "10"), and mean and spread are written only to
the digits their band needs (``BAND_RESOLUTION``), so a diff of baselines/ shows real change, not rounding
noise. A file of the older 7 columns reads as one without seed values. Readers need no lock, since
``os.replace`` shows them the old file or the new one. Writers serialize on a lock file in the temporary
directory (``lock_path``: never beside the file a user commits), which stays behind on purpose: deleting
it would let two writers lock different inodes.
"""

from __future__ import annotations

import csv
import fcntl
import hashlib
import io
import math
import os
import re
import tempfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd

from initcore.files import atomic_write

KEY = ["config", "layer", "statistic"]
COLUMNS = [*KEY, "mean", "spread", "n_seeds", "scale"]
FILE_COLUMNS = [*COLUMNS, "value"]  # the file's: the bands' columns and one seed's own value
SCALES = ("linear", "log")
UPDATE_COMMAND = "pytest bench --update-baselines"  # the default; the plugin names the command that ran
CORRUPT_HINT = "the file is corrupt: restore it from version control or regenerate it"
# A seed record's rows (statistic -> what their layer is): the seed, the environment, the digests.
SEED, ENVIRONMENT, INPUTS, PARAMETERS = "(seed)", "(environment)", "(inputs)", "(parameters)"
RECORD_STATISTICS = ("seed", "environment", "digest")
DIGEST_RE = re.compile(r"[0-9a-f]{16}")
# A seed value is written as %.9g: a float32 exactly, a float64 to 5e-10 relative, far inside EXACT_RTOL.
VALUE_FORMAT = "{:.9g}"

# Positive, scale-like statistics vary multiplicatively (a deeper layer is a product of gains), so
# they are summarized and compared in log space: a statistic named exactly one of these words, or
# ending in "_<word>" (act_std, grad_norm, out_rms, update_ratio). Everything else -- fractions in
# [0, 1], signed means, correlations -- is linear.
LOG_STATISTICS = ("std", "var", "norm", "rms", "ratio")

# Band half-width, in spreads. (new - mean) / (s * sqrt(1 + 1/n)) is Student-t with n - 1 dof for a
# new seed, which includes the uncertainty of s itself. With 8 seeds, P(|t_7| > K / 1.06) is 3e-5
# for K = 10 (8e-4 for K = 6), so over 3000 spread-dominated numbers the suite expects 0.1 false
# alarms (2.3 for K = 6). With 4 seeds it is 3e-3 per number: generate baselines with >= 8 seeds.
# The price is sensitivity only where the seed spread is large; 10% more weight variance moves
# layer-0 act_std by 5% (spread ~0.3% at width 512) and compounds with depth, which still fails.
K = 10.0
# Added to K * spread, for rows whose spread is ~0 (deterministic values, exact zeros):
# 2% in log space is far above CPU/CUDA/TF32 rounding (1e-6..1e-3) and below the 5% shift above.
REL_FLOOR = 0.02
# One percentage point for fractions: a single stray unit out of >= 100 (a dead unit that none of
# the baseline seeds happened to show) does not fail, while real regressions move fractions by tens
# of points.
ABS_FLOOR = 0.01
# What is stored is what is reproducible. A row's mean is written to the power of ten at or below
# 1/BAND_RESOLUTION of its band half-width (tol = K * spread + floor), its spread to a tenth of that
# (K = 10 spreads then move the band by as much as the mean's rounding): the band's edges move by at most
# 1/BAND_RESOLUTION of its width, i.e. K acts as 9.95..10.05. Why not more digits: the last bits of a
# statistic follow the order of float32 reductions (kernels, thread count), and a regeneration after a
# change of reduction order (the probe's float32 dot replaced by float64-accumulated chunks; measured
# 2026-12-03 over the 2567 rows of five baseline files) moved means by a median 1e-6 of their band
# half-width, 1e-4 at the 99th percentile, and spreads less; written as %.6g, 562 of 4029 rows of the
# committed files changed under such a regeneration. At 1/100 of the band such a change flips ~1 row in
# 1000. On one machine and torch, with one torch thread (``initcore.testing.measure.one_thread``), a
# regeneration is bit-for-bit the same computation, so the files come out byte for byte the same.
BAND_RESOLUTION = 100
MAX_REPORTED_ROWS = 40


class BaselineMissing(LookupError):
    """No stored baseline for a configuration; the message says how to create one (``command``)."""

    def __init__(self, what: str, command: str = UPDATE_COMMAND):
        self.what, self.command = what, command
        super().__init__(f"{what}; run `{command}` to create it, then review and commit baselines/")


class BaselineCorrupt(ValueError):
    """A baseline file that is not one: the one-line message names the file, the line and what is wrong."""

    def __init__(self, path: str | os.PathLike, line: int, problem: str, command: str = UPDATE_COMMAND):
        self.path, self.line, self.problem = Path(path), line, problem
        super().__init__(f"{path}, line {line}: {problem}; {CORRUPT_HINT} (`{command}`)")


class BaselineMismatch(AssertionError):
    """Measured statistics moved outside their baseline bands, or a pooled test of them failed: ``rows`` holds
    the failing rows (ranked by |z|), ``pooled`` the failing pooled tests.

    The message lists each config's key once, then its rows, furthest first (z: the distance in seed
    spreads), in lines of at most REPORT_WIDTH characters, then the pooled tests that failed, and ends by
    saying what to do: update the baselines only for an intended change, else read the top rows first.
    """

    def __init__(self, rows: pd.DataFrame, n_compared: int | None = None, pooled: pd.DataFrame | None = None,
                 n_pooled: int = 0, *, command: str = UPDATE_COMMAND, note: str | None = None):
        pooled = pd.DataFrame(columns=POOLED_COLUMNS) if pooled is None else pooled
        rows = _ranked(rows)
        self.rows, self.pooled = rows, pooled
        lines = [f"{len(rows)} of {n_compared or len(rows)} statistics moved from their baseline:"]
        shown = rows.head(MAX_REPORTED_ROWS)
        for config, group in shown.groupby("config", sort=False):
            lines.append(_fit(f"config {config}"))
            lines += _table(group)
        if len(rows) > MAX_REPORTED_ROWS:
            lines.append(f"… {len(rows) - MAX_REPORTED_ROWS} more")
        if len(pooled):
            lines.append(f"{len(pooled)} of {n_pooled or len(pooled)} pooled tests failed (|mean_z| or chi2_z "
                         f"over {POOLED_K:g}: a group's rows moved together, or scattered beyond chance):")
            for config, group in pooled.groupby("config", sort=False):
                lines.append(_fit(f"config {config}"))
                lines += _pooled_table(group)
        if note:
            lines.append(note)
        lines.append(f"If the change is intended, run `{command}` and review the diff of baselines/.")
        lines.append("If it is not, read the rows from the top: they moved furthest from their baselines.")
        super().__init__("\n".join(lines))


REPORT_WIDTH = 120


def _fit(line: str) -> str:
    return line if len(line) <= REPORT_WIDTH else line[: REPORT_WIDTH - 1] + "…"


def _ranked(rows: pd.DataFrame) -> pd.DataFrame:
    """Rows by |z|, furthest first (rows without a z, one side missing, last), configs kept together."""
    if not len(rows):
        return rows.reset_index(drop=True)
    z = rows["z"].abs().fillna(-1.0) if "z" in rows else pd.Series(-1.0, index=rows.index)
    first = z.groupby(rows["config"]).transform("max")
    order = pd.DataFrame({"first": -first, "config": rows["config"], "z": -z}).sort_values(
        ["first", "config", "z"], kind="stable").index
    return rows.loc[order].reset_index(drop=True)


def _table(rows: pd.DataFrame) -> list[str]:
    band = ["-" if np.isnan(lo) and np.isnan(hi) else f"[{lo:.4g}, {hi:.4g}]"
            for lo, hi in zip(rows["low"], rows["high"], strict=True)]
    z = rows["z"] if "z" in rows else pd.Series(np.nan, index=rows.index)
    table = pd.DataFrame({"layer": rows["layer"], "statistic": rows["statistic"], "baseline": rows["baseline"],
                          "measured": rows["measured"], "z": z, "band": band, "problem": rows["problem"]})
    return _indented(table, "{:.4g}")


def _pooled_table(groups: pd.DataFrame) -> list[str]:
    return _indented(groups[["layer", "statistic", "rows", "mean_z", "chi2_z", "problem"]], "{:.3g}")


def _indented(table: pd.DataFrame, number: str) -> list[str]:
    """``table`` as text indented by two, its layer names shortened in the middle until its lines fit."""
    def render(t: pd.DataFrame) -> list[str]:
        return ["  " + line for line in t.to_string(index=False, float_format=number.format, na_rep="-").splitlines()]

    lines = render(table)
    excess = max(map(len, lines)) - REPORT_WIDTH
    if excess > 0:
        keep = max(12, int(table["layer"].str.len().max()) - excess - 1)
        table = table.assign(layer=[name if len(name) <= keep else name[: keep // 2] + "…" + name[-(keep - keep // 2):]
                                    for name in table["layer"]])
        lines = render(table)
    return [_fit(line) for line in lines]


def default_scale(statistic: str) -> str:
    """'log' for names in (or ending in '_' + a word of) LOG_STATISTICS, else 'linear'."""
    word = statistic.rsplit("_", 1)[-1]
    return "log" if word in LOG_STATISTICS else "linear"


def summarize(
    frames_by_seed: Sequence[pd.DataFrame],
    config: str,
    scale_for: Callable[[str], str] | Mapping[str, str] | None = None,
    at_seed: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """Baseline rows for `config` from one tidy (layer, statistic, value) frame per seed.

    `scale_for` maps a statistic name to 'log' or 'linear' (a dict falls back to `default_scale`).
    Log needs positive values: a row with a zero, negative or NaN value is stored as linear.
    With one seed the spread is unknown and stored as 0, so only the floors of `compare` apply.
    `at_seed`, a tidy frame of the record's seed, gives each row its ``value`` (NaN without it).
    """
    if not frames_by_seed:
        raise ValueError("summarize needs at least one frame (one per seed)")
    overrides = dict(scale_for) if isinstance(scale_for, Mapping) else {}
    rule = scale_for if callable(scale_for) else default_scale
    parts = []
    for frame in frames_by_seed:
        frame = _strings(_require(frame, ["layer", "statistic", "value"], "a per-seed frame"))
        if frame.duplicated(["layer", "statistic"]).any():
            raise ValueError("a per-seed frame has duplicate (layer, statistic) rows")
        parts.append(frame.astype({"value": float}))
    rows = []
    groups = pd.concat(parts, ignore_index=True).groupby(["layer", "statistic"], sort=False)
    for (layer, statistic), values in groups["value"]:
        v = values.to_numpy()
        scale = _check_scale(overrides.get(statistic) or rule(statistic))
        if scale == "log" and not (v > 0).all():
            scale = "linear"
        x = np.log(v) if scale == "log" else v
        with np.errstate(invalid="ignore"):  # inf - inf in the spread of infinite values is NaN
            spread = float(np.std(x, ddof=1)) if len(x) > 1 else 0.0
        rows.append((config, layer, statistic, float(np.mean(x)), spread, len(x), scale))
    out = pd.DataFrame(rows, columns=COLUMNS)
    if at_seed is not None:
        values = _strings(_require(at_seed, ["layer", "statistic", "value"], "the seed's frame"))
        values = values.astype({"value": float})
        out = out.merge(values, on=["layer", "statistic"], how="left")
    return _normalize(out)


def compare(
    measured: pd.DataFrame,
    baseline: pd.DataFrame,
    k: float = K,
    rel_floor: float = REL_FLOOR,
    abs_floor: float = ABS_FLOOR,
    *,
    command: str = UPDATE_COMMAND,
) -> pd.DataFrame:
    """One row per (config, layer, statistic): baseline, measured, allowed [low, high], ok, problem.

    `measured` has columns config, layer, statistic, value. Log rows allow exp(mean ± tol) with
    tol = k * spread + rel_floor; linear rows allow mean ± (k * spread + abs_floor). A non-finite
    baseline only matches the same non-finite value. Rows of measured configs that only one side
    has are not ok ("missing from baseline", "not measured"). A measured config absent from
    `baseline` raises BaselineMissing.
    """
    measured = _strings(_require(measured, [*KEY, "value"], "measured")).astype({"value": float})
    baseline = _normalize(baseline).drop(columns="value")  # the seed's value is compare_seed's
    absent = sorted(set(measured["config"]) - set(baseline["config"]), key=_natural)
    if absent:
        raise BaselineMissing(f"no baseline for configuration(s) {', '.join(map(repr, absent))}", command)
    baseline = baseline[baseline["config"].isin(set(measured["config"]))]
    m = measured.merge(baseline, on=KEY, how="outer", indicator=True)
    log = (m["scale"] == "log").to_numpy()
    mean, value = m["mean"].to_numpy(), m["value"].to_numpy()
    with np.errstate(invalid="ignore", over="ignore"):
        tol = k * m["spread"].to_numpy() + np.where(log, rel_floor, abs_floor)
        centre = np.where(log, np.exp(mean), mean)
        low = np.where(log, np.exp(mean - tol), mean - tol)
        high = np.where(log, np.exp(mean + tol), mean + tol)
    finite = np.isfinite(mean)
    same = (np.isnan(centre) & np.isnan(value)) | (centre == value)
    z = _z(m)
    problem = np.select(
        [
            m["_merge"] == "left_only",
            m["_merge"] == "right_only",
            finite & ~np.isfinite(value),
            finite & ~((value >= low) & (value <= high)),
            ~finite & ~same,
        ],
        ["missing from baseline", "not measured", "not finite", "outside band", "outside band"],
        default="",
    )
    out = pd.DataFrame(
        {
            "config": m["config"],
            "layer": m["layer"],
            "statistic": m["statistic"],
            "baseline": centre,
            "measured": value,
            "low": low,
            "high": high,
            "z": z,
            "ok": problem == "",
            "problem": problem,
        }
    )
    return _sort(out)


def _z(m: pd.DataFrame) -> np.ndarray:
    """(measured - mean) / spread in the row's scale: the distance in seed spreads (±inf where the spread is 0
    and the value moved, NaN where a side is missing)."""
    log = (m["scale"] == "log").to_numpy()
    value, mean, spread = m["value"].to_numpy(float), m["mean"].to_numpy(float), m["spread"].to_numpy(float)
    with np.errstate(invalid="ignore", divide="ignore"):
        x = np.where(log, np.log(np.where(value > 0, value, np.nan)), value)
        d = x - mean
        return np.where(spread > 0, d / spread, np.where(d == 0, 0.0, np.sign(d) * np.inf))


def assert_matches(measured: pd.DataFrame, baseline: pd.DataFrame, *, pooled: bool = True,
                   command: str = UPDATE_COMMAND, note: str | None = None, **kw) -> pd.DataFrame:
    """`compare`, raising BaselineMismatch if any row is not ok or (``pooled``) any test of ``pooled_tests``
    fails; the exception lists the failing rows, ranked by |z|, and the failing pooled tests, then ``note``
    (why the exact check of the same seed did not apply), and names ``command`` to regenerate."""
    result = compare(measured, baseline, command=command, **kw)
    failed = result[~result["ok"]].reset_index(drop=True)
    groups = pooled_tests(measured, baseline) if pooled else pd.DataFrame(columns=POOLED_COLUMNS)
    failed_groups = groups[~groups["ok"]].reset_index(drop=True)
    if len(failed) or len(failed_groups):
        raise BaselineMismatch(failed, n_compared=len(result), pooled=failed_groups, n_pooled=len(groups),
                               command=command, note=note)
    return result


# --- pooled tests ------------------------------------------------------------------------------------------------
# The per-row band is wide on purpose (K spreads for a Student-t with 15 dof over thousands of rows, plus a 2%
# floor for CPU/CUDA rounding), so a change that moves many rows of a group a little, or one row of a group of
# independent draws by less than the band, passes it. A pooled test combines the rows of one group: one
# config, one statistic, the rows whose names differ only in their indices ("blocks.*.ffn", "layers.*", the
# weights "blocks.*.attn.o.weight"), at least POOLED_MIN_ROWS of them. Where the baseline holds the group's
# pooled row (the mean over the rows at each seed: measure.tidy writes one for a transformer's blocks and for
# parameters), its seed spread s_P measures how correlated the rows are; where it holds none (an MLP's
# layers, a chain), the rows are taken to move together.
#
# Each row's distance z = d / sqrt(s^2 (1 + 1/n) + f^2) (d the deviation from the baseline mean, in the row's
# scale; s its spread over n seeds; f = POOLED_FLOOR, float rounding between devices) is a Student-t with n - 1
# dof for a new seed, and its normal score u (``normal_score``, Wallace 1959) a standard normal. Over the m
# rows of a group:
# - mean test, for a shift of every row the same way: T = sum(u) / sqrt(m r), with r = s_P^2 m^2 / sum(s^2),
#   held to [1, m], the variance of the mean relative to m independent rows (1 for independent rows, m for rows
#   that move together; m without a pooled row: the mean of m unit normals has variance <= 1 however they are
#   correlated), so T is N(0, 1): |T| > POOLED_K = 5 has probability 5.7e-7;
# - chi-square test, for one or a few rows moving further than the rest, where r < INDEPENDENT_R (rows about
#   independent: weight matrices, the branches of different blocks; not a residual stream or a backward
#   chain): Q = sum(u^2) is chi-square with m dof, and its Wilson-Hilferty normal score
#   W = ((Q/m)^(1/3) - 1 + 2/(9m)) / sqrt(2/(9m)) > POOLED_K has probability 2.9e-7.
# Together at most 8.6e-7 per group; the bench's baselines hold 333 groups (138 with a chi-square test), so
# 2.3e-4 false alarms per run, as many as the per-row bands' 2e-4.
# Measured over seeds 0..29 on transformer_variants' prenorm run (17 groups): max |T| 1.8, max W 2.3.
# The gain: a shift that moves every one of m independent rows by delta spreads fails at about
# delta > 5.4 / sqrt(m) (1.6 for 12 blocks) instead of 10 spreads + 2%, and 12 rows each 3 spreads off, half
# each way, fail the chi-square test (W = 6.5). What neither sees is one row of a few moving alone: its
# deviation is spread over the group's dof (one of 4 rows at 8.5 spreads: W = 3.9), and its own band holds it.
POOLED_K = 5.0
POOLED_MIN_ROWS = 3
INDEPENDENT_R = 2.0
POOLED_FLOOR = {"log": 1e-3, "linear": 2e-3}  # measurement.DEVICE_RTOL and DEVICE_ATOL: rounding, not change
POOLED_COLUMNS = ["config", "layer", "statistic", "rows", "mean_z", "chi2_z", "r", "ok", "problem"]


def normal_score(t, dof) -> np.ndarray:
    """The standard-normal quantile of a Student-t value: sign(t) sqrt(dof ln(1 + t^2/dof)) (8 dof + 1)/(8 dof + 3)
    (Wallace, 1959; within 1% of the exact quantile for dof >= 7 and |t| <= 20, a little below it)."""
    t, dof = np.asarray(t, dtype=float), np.asarray(dof, dtype=float)
    return np.sign(t) * np.sqrt(dof * np.log1p(t * t / dof)) * (8 * dof + 1) / (8 * dof + 3)


def pattern(layer: str) -> str:
    """The layer's name with every index replaced by "*": the name of its group and of its pooled row."""
    return ".".join("*" if part.isdigit() else part for part in layer.split("."))


def pooled_tests(measured: pd.DataFrame, baseline: pd.DataFrame) -> pd.DataFrame:
    """One row per group (see above): config, layer (the group's pattern), statistic, rows, mean_z (T),
    chi2_z (W, NaN where the rows are not independent), r, ok, problem ("mean shifted", "rows scattered")."""
    measured = _strings(_require(measured, [*KEY, "value"], "measured")).astype({"value": float})
    baseline = _strings(_require(baseline, COLUMNS, "a baseline frame"))
    m = measured.merge(baseline, on=KEY, how="inner")
    group = m["layer"].map(pattern)
    m = m[(group != m["layer"]).to_numpy() & ~m["layer"].str.contains("*", regex=False).to_numpy()
          & (m["spread"] > 0).to_numpy()].assign(group=group)
    if m.empty:
        return pd.DataFrame(columns=POOLED_COLUMNS)
    d = _z(m.assign(spread=1.0))  # the deviation in the row's scale
    spread, n_seeds = m["spread"].to_numpy(float), m["n_seeds"].to_numpy(float)
    with np.errstate(invalid="ignore"):
        z = d / np.sqrt(spread**2 * (1 + 1 / n_seeds) + m["scale"].map(POOLED_FLOOR).to_numpy(float) ** 2)
    u = normal_score(z, n_seeds - 1)
    keep = np.isfinite(u)
    m, u, spread = m[keep], u[keep], spread[keep]
    codes, groups = pd.MultiIndex.from_arrays([m["config"], m["group"], m["statistic"]]).factorize()
    n = np.bincount(codes, minlength=len(groups)).astype(float)
    log = np.bincount(codes, (m["scale"] == "log").to_numpy(float), minlength=len(groups))
    sum_u = np.bincount(codes, u, minlength=len(groups))
    sum_u2 = np.bincount(codes, u * u, minlength=len(groups))
    sum_s2 = np.bincount(codes, spread**2, minlength=len(groups))
    pooled = baseline.set_index(KEY).reindex(groups)  # each group's pooled row (NaN where none)
    same_scale = (pooled["scale"] == np.where(log == n, "log", "linear")).to_numpy()
    with np.errstate(invalid="ignore", divide="ignore"):
        r = np.where(same_scale & pooled["spread"].notna().to_numpy(),
                     pooled["spread"].to_numpy(float) ** 2 * n * n / sum_s2, n)
    r = np.minimum(n, np.maximum(1.0, np.nan_to_num(r, nan=n)))
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_z = sum_u / np.sqrt(n * r)
        chi2_z = np.where(r < INDEPENDENT_R,
                          (np.cbrt(sum_u2 / n) - 1 + 2 / (9 * n)) / np.sqrt(2 / (9 * n)), np.nan)
    problem = np.where(np.abs(mean_z) > POOLED_K, "mean shifted", np.where(chi2_z > POOLED_K, "rows scattered", ""))
    out = pd.DataFrame({"config": groups.get_level_values(0), "layer": groups.get_level_values(1),
                        "statistic": groups.get_level_values(2), "rows": n.astype(int), "mean_z": mean_z,
                        "chi2_z": chi2_z, "r": r, "ok": problem == "", "problem": problem})
    mixed = (log > 0) & (log < n)  # rows of both scales (a few stored linear for a zero): no test
    return out[(n >= POOLED_MIN_ROWS) & ~mixed].reset_index(drop=True)


# --- one seed, exactly ---------------------------------------------------------------------------------------
# A band holds for any seed and any machine, and so cannot see a change smaller than the seed-to-seed spread.
# At one seed on one machine the weights and inputs are the same bits before and after an edit of the model's
# code, so a forward or backward that computes something else gives other numbers, to the last digits. The file
# stores, per configuration, one seed's own value of every row and that seed's ``SeedRecord``; a run at that
# seed, in that environment, with the same digests, must give every value within EXACT_RTOL (+ EXACT_ATOL).
#
# EXACT_RTOL: what varies at the same seed in one environment is the order of float32 reductions (a torch
# thread count: the baselines are written on one thread, a plain run uses every core, pytest-xdist one per
# worker), and the stored value's own rounding (VALUE_FORMAT: up to 5e-9 relative). Measured 2026-12-07 on this
# machine (torch 2.13 CPU, MKL, AVX512), seed 0, one thread against 1 and 2 threads, repeated: forward rows
# differ by < 3e-14 on initcore's models (transformer_variants' prenorm and swiglu, the 12-block d_model 512
# standard transformer, depth_init's he and too_large), 3.8e-9 on Hugging Face's GPT-2, 7.2e-8 on torchvision's
# ResNet-18 (its convolutions split work by thread); gradient rows by up to 1.6e-9, 5.2e-8 and 9.2e-7 there.
# The bench's summary line ("exact: ... largest relative difference") reports it for every run, serial or -n 2.
# EXACT_RTOL = 1e-6 is 14x the worst forward difference (ResNet-18's) and 200x every other; gradient rows get
# EXACT_BACKWARD_RTOL = 1e-4, 100x theirs, or ``measure.exact_backward_rtol``'s allowance for a chaotic network
# that amplifies rounding where that is larger. The smallest edit of issue 23 (GELU's tanh approximation)
# moves forward rows by > 1e-5. EXACT_ATOL: for values near 0 (a signed mean, a fraction of 0), 1e-9 absolute.
MEASURED_RTOL = 7.2e-8
EXACT_RTOL = 1e-6
EXACT_BACKWARD_RTOL = 1e-4
EXACT_ATOL = 1e-9
SEED_COLUMNS = ["config", "layer", "statistic", "stored", "measured", "rel_diff", "shift", "moved", "order"]


@dataclass(frozen=True)
class SeedRecord:
    """Where one seed's stored values came from: the seed, the environment (``name=value`` pairs: torch, device,
    dtype, CPU kernels, BLAS), and digests of the inputs and of each parameter and buffer, in the model's order
    (16 hex digits each; empty where the run is not built from a generator, e.g. the coordinate check's)."""

    seed: int
    environment: tuple[tuple[str, str], ...]
    inputs: str = ""
    params: tuple[tuple[str, str], ...] = ()

    @property
    def parameters(self) -> str:
        """One digest of all parameters' digests (names included, in the file's order, whatever the model's)."""
        if not self.params:
            return ""
        text = "".join(f"{name}={digest}\n" for name, digest in sorted(self.params, key=lambda p: _natural(p[0])))
        return hashlib.blake2b(text.encode(), digest_size=8).hexdigest()

    def environment_text(self) -> str:
        return " ".join(f"{k}={v}" for k, v in self.environment)

    def rows(self, config: str) -> pd.DataFrame:
        """The record as file rows (statistic seed, environment, digest; only ``value`` filled)."""
        rows = [(SEED, "seed", str(self.seed)), (ENVIRONMENT, "environment", self.environment_text())]
        if self.inputs:
            rows.append((INPUTS, "digest", self.inputs))
        if self.params:
            rows.append((PARAMETERS, "digest", self.parameters))
            rows += [(name, "digest", digest) for name, digest in self.params]
        return pd.DataFrame([{"config": config, "layer": layer, "statistic": statistic, "mean": math.nan,
                              "spread": math.nan, "n_seeds": 0, "scale": "", "value": value}
                             for layer, statistic, value in rows], columns=FILE_COLUMNS)

    def to_dict(self) -> dict:
        """Plain lists (what pytest-xdist carries from a worker)."""
        return {"seed": int(self.seed), "environment": [[str(k), str(v)] for k, v in self.environment],
                "inputs": str(self.inputs), "params": [[str(k), str(v)] for k, v in self.params]}

    @classmethod
    def from_dict(cls, data: Mapping) -> SeedRecord:
        return cls(int(data["seed"]), tuple(map(tuple, data["environment"])), str(data["inputs"]),
                   tuple(map(tuple, data["params"])))


def environment_pairs(text: str) -> tuple[tuple[str, str], ...] | None:
    """``name=value`` words as pairs; None if a word is not one."""
    pairs = [word.split("=", 1) for word in text.split()]
    if not pairs or any(len(p) != 2 or not p[0] or not p[1] for p in pairs):
        return None
    return tuple((k, v) for k, v in pairs)


def why_not_exact(record: SeedRecord | None, seed: int, environment: Iterable[tuple[str, str]]) -> str | None:
    """None when the exact check of the same seed applies; else the one line saying why it does not."""
    if record is None:
        return ("the exact check did not apply: the baseline holds no seed values (an older file); "
                "regenerate it to add them")
    if seed != record.seed:
        return (f"the exact check did not apply: this run's seed is {seed}, the baseline's values are seed "
                f"{record.seed}'s (run without --seed for it)")
    stored, here = dict(record.environment), dict(environment)
    differ = [k for k in dict.fromkeys([*stored, *here]) if stored.get(k) != here.get(k)]
    if differ:
        what = ", ".join(f"{k} {stored.get(k, '-')} there, {here.get(k, '-')} here" for k in differ)
        return f"the exact check did not apply: the baseline was written in another environment ({what})"
    return None


def changed_parameters(record: SeedRecord, params: Sequence[tuple[str, str]]) -> list[str]:
    """Names (in ``params``' order, then the stored names this run lacks) whose digests differ from the record's."""
    stored, here = dict(record.params), dict(params)
    return [n for n, d in params if stored.get(n) != d] + [n for n, _ in record.params if n not in here]


def parameters_differ(record: SeedRecord, params: Sequence[tuple[str, str]], inputs: str, shown: int = 3) -> str | None:
    """The line for a run at the record's seed whose parameters or inputs are not the stored bits, else None."""
    names = changed_parameters(record, params) if record.params else []
    parts = []
    if names:
        more = f" and {len(names) - shown} more" if len(names) > shown else ""
        parts.append(f"parameters differ at the same seed ({len(names)} of {len(record.params)}: "
                     f"{', '.join(names[:shown])}{more}): the init changed, or the order of its random draws")
    if record.inputs and inputs and inputs != record.inputs:
        parts.append("the inputs differ at the same seed")
    if not parts:
        return None
    return "the exact check did not apply: " + "; ".join(parts) + "; the bands decide"


def compare_seed(measured: pd.DataFrame, rows: pd.DataFrame, rtol: float = EXACT_RTOL,
                 atol: float = EXACT_ATOL, backward_rtol: float | None = EXACT_BACKWARD_RTOL) -> pd.DataFrame:
    """Each measured row against its stored seed value: stored, measured, rel_diff (|measured - stored| /
    |stored|), shift (measured - stored in seed spreads, in the row's scale: how large the change is against
    seed noise), moved (beyond ``rtol`` * |stored| + ``atol``; ``backward_rtol`` for gradient statistics), and
    ``order``, the row's place in ``measured`` (the model's order, as ``measure.tidy`` gives it). Rows
    without a stored value are left out."""
    measured = _strings(_require(measured, [*KEY, "value"], "measured")).astype({"value": float})
    measured = measured.assign(order=np.arange(len(measured)))
    stored = rows.assign(**{c: d for c, d in (("value", math.nan), ("spread", math.nan), ("scale", "linear"))
                            if c not in rows})  # a trace has values only: no shift in spreads
    stored = _strings(stored[[*KEY, "value", "spread", "scale"]]).astype({"value": float, "spread": float})
    stored = stored.rename(columns={"value": "stored"})
    m = measured.merge(stored[stored["stored"].notna()], on=KEY, how="inner")
    x, s = m["value"].to_numpy(float), m["stored"].to_numpy(float)
    shift = _z(m.assign(mean=np.where(m["scale"] == "log", np.log(np.where(s > 0, s, np.nan)), s)))
    backward = np.array(["grad" in name for name in m["statistic"]], dtype=bool)
    relative = np.where(backward, rtol if backward_rtol is None else max(rtol, backward_rtol), rtol)
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        diff = np.abs(x - s)
        rel = np.where(diff == 0, 0.0, diff / np.abs(s))
        close = diff <= relative * np.abs(s) + atol
    same = (np.isnan(x) & np.isnan(s)) | (x == s)
    return pd.DataFrame({"config": m["config"], "layer": m["layer"], "statistic": m["statistic"], "stored": s,
                         "measured": x, "rel_diff": rel, "shift": shift, "moved": ~(close | same),
                         "order": m["order"]}, columns=SEED_COLUMNS)


class SeedMismatch(BaselineMismatch):
    """At the baseline's own seed, in its environment, with its parameters and inputs, statistics moved from
    their stored values: the model's code computes something else. ``rows`` holds the moved rows, ranked by
    relative difference, each with the band's z and verdict (how large the change is against seed noise)."""

    def __init__(self, moved: pd.DataFrame, n_compared: int, band: pd.DataFrame, seed: int, *,
                 command: str = UPDATE_COMMAND, note: str | None = None):
        band = band[[*KEY, "z", "ok", "problem"]] if len(band) else pd.DataFrame(columns=[*KEY, "z", "ok", "problem"])
        rows = moved.merge(band, on=KEY, how="left")
        rows = rows.assign(band=np.where(rows["ok"].fillna(True).astype(bool), "within band",
                                         rows["problem"].fillna("").replace("", "outside band")))
        rel = rows["rel_diff"].fillna(np.inf)
        rows = rows.assign(_r=-rel).sort_values(["_r", "order"], kind="stable").drop(columns="_r")
        rows = rows.reset_index(drop=True)
        self.rows, self.pooled = rows, pd.DataFrame(columns=POOLED_COLUMNS)
        lines = [f"{len(rows)} of {n_compared} statistics differ from their seed-{seed} values (same seed, same "
                 f"environment, same parameters and inputs: the code computes something else):"]
        for config, group in rows.head(MAX_REPORTED_ROWS).groupby("config", sort=False):
            lines.append(_fit(f"config {config}"))
            lines += _indented(group[["layer", "statistic", "stored", "measured", "rel_diff", "shift", "band"]],
                               "{:.6g}")
        if len(rows) > MAX_REPORTED_ROWS:
            lines.append(f"… {len(rows) - MAX_REPORTED_ROWS} more")
        forward = rows[~rows["statistic"].str.contains("grad")]
        first = (forward if len(forward) else rows).sort_values("order", kind="stable").iloc[0]
        lines.append(_fit(f"first to move in the model's order: {first['layer']} {first['statistic']} "
                          f"(rel_diff {first['rel_diff']:.3g}): the edit is there or just before it"))
        inside = int((rows["band"] == "within band").sum())
        lines.append(f"shift is the change in seed spreads: {inside} of {len(rows)} rows are still within their band "
                     f"(moved less than seed-to-seed noise allows), which the bands alone would not see")
        if note:
            lines.append(note)
        lines.append(f"If the change is intended, run `{command}` and review the diff of baselines/.")
        lines.append("If it is not, start at the first row to move.")
        AssertionError.__init__(self, "\n".join(lines))


def assert_seed_matches(measured: pd.DataFrame, rows: pd.DataFrame, band: pd.DataFrame, seed: int, *,
                        rtol: float = EXACT_RTOL, atol: float = EXACT_ATOL,
                        backward_rtol: float | None = EXACT_BACKWARD_RTOL,
                        command: str = UPDATE_COMMAND) -> pd.DataFrame:
    """``compare_seed``, raising ``SeedMismatch`` if a row moved (``band``: ``compare``'s table, for the verdicts)."""
    result = compare_seed(measured, rows, rtol, atol, backward_rtol)
    moved = result[result["moved"]]
    if len(moved):
        raise SeedMismatch(moved, len(result), band, seed, command=command)
    return result


# --- the file ----------------------------------------------------------------------------------------------------


class Stored(NamedTuple):
    """A baseline file read: the rows (band columns and ``value``) and each configuration's ``SeedRecord``."""

    rows: pd.DataFrame
    records: dict[str, SeedRecord]


def read(path: str | os.PathLike, command: str = UPDATE_COMMAND) -> Stored:
    """Read and validate a baseline CSV; key and scale columns stay strings (layer "0" is not an int).

    Raises BaselineCorrupt, naming the line, for anything ``update`` would never have written: an empty
    file, bytes that are not UTF-8 text, a header other than FILE_COLUMNS (or the older COLUMNS), a row with
    missing or extra fields, an empty config or statistic, a mean that is not a finite number, a spread that
    is not a finite number >= 0, n_seeds not a whole number >= 1, a scale not in SCALES, a value that is not
    a number, a key repeated, a seed record row that is malformed (a digest not 16 hex digits, a parameters
    digest that does not match its parameters' digests).
    """
    data = Path(path).read_bytes()

    def corrupt(line: int, problem: str) -> BaselineCorrupt:
        return BaselineCorrupt(path, line, problem, command)

    if not data.strip():
        raise corrupt(1, f"the file is empty; expected the header {','.join(FILE_COLUMNS)}")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise corrupt(line, f"byte 0x{data[exc.start]:02x} is not UTF-8 text") from None
    if "\0" in text:
        raise corrupt(text[: text.index("\0")].count("\n") + 1, "a NUL byte: this is not text")
    reader = csv.reader(io.StringIO(text, newline=""))
    columns: dict[str, list] = {c: [] for c in FILE_COLUMNS}
    seen: dict[tuple[str, str, str], int] = {}
    records: dict[str, dict] = {}
    try:
        header = next(reader)
        if header not in (COLUMNS, FILE_COLUMNS):
            missing = [c for c in COLUMNS if c not in header]
            what = f"lacks column(s) {', '.join(missing)}" if missing else f"is {','.join(header)}"
            raise corrupt(1, f"the header {what}; expected {','.join(FILE_COLUMNS)}")
        width = len(header)
        for fields in reader:
            if not fields:  # a blank line
                continue
            line = reader.line_num
            if len(fields) != width:
                raise corrupt(line, f"{len(fields)} fields, expected {width} ({','.join(header)}): a truncated or "
                                    f"garbled row")
            fields = fields + [""] * (len(FILE_COLUMNS) - width)
            key = tuple(fields[:3])
            if key in seen:
                raise corrupt(line, f"repeats the key (config, layer, statistic) {key} of line {seen[key]}")
            seen[key] = line
            if fields[2] in RECORD_STATISTICS:
                problem = _record_row(fields, records.setdefault(fields[0], {"lines": {}}), line)
                if problem:
                    raise corrupt(line, problem)
                continue
            row = _parse_row(fields)
            if isinstance(row, str):
                raise corrupt(line, row)
            for column, value in zip(FILE_COLUMNS, row, strict=True):
                columns[column].append(value)
    except csv.Error as exc:
        raise corrupt(reader.line_num, f"not CSV ({exc})") from None
    frame = pd.DataFrame(columns).astype(
        {"config": str, "layer": str, "statistic": str, "mean": float, "spread": float, "n_seeds": "int64",
         "scale": str, "value": float}
    )
    built = {}
    for config, parts in records.items():
        record = _record(parts)
        if isinstance(record, tuple):
            raise corrupt(*record)
        built[config] = record
    return Stored(_sort(frame), built)


def _record_row(fields: list[str], parts: dict, line: int) -> str | None:
    """Collect one seed record row into ``parts``; what is wrong with it, if anything."""
    config, layer, statistic, mean, spread, n_seeds, scale, value = fields
    if any((mean, spread, n_seeds, scale)):
        return f"a {statistic} row has only a value; mean, spread, n_seeds and scale must be empty"
    if statistic == "seed":
        if layer != SEED or not value.isdigit():
            return f"the seed row is {layer},{value}; expected {SEED} and a whole number >= 0"
        parts["seed"] = int(value)
    elif statistic == "environment":
        pairs = environment_pairs(value)
        if layer != ENVIRONMENT or pairs is None:
            return f"the environment row is {layer},{value!r}; expected {ENVIRONMENT} and name=value words"
        parts["environment"] = pairs
    else:
        if not DIGEST_RE.fullmatch(value):
            return f"the digest of {layer} is {value!r}, not 16 hex digits"
        if layer == INPUTS:
            parts["inputs"] = value
        elif layer == PARAMETERS:
            parts["parameters"] = value
        else:
            parts.setdefault("params", []).append((layer, value))
    parts["lines"].setdefault(layer if layer in (SEED, ENVIRONMENT, INPUTS, PARAMETERS) else "params", line)
    return None


def _record(parts: dict) -> SeedRecord | tuple[int, str]:
    lines = parts["lines"]
    anywhere = min(lines.values())
    if "seed" not in parts or "environment" not in parts:
        return anywhere, f"a seed record without its {'seed' if 'seed' not in parts else 'environment'} row"
    params = sorted(parts.get("params", []), key=lambda p: _natural(p[0]))
    record = SeedRecord(parts["seed"], parts["environment"], parts.get("inputs", ""), tuple(params))
    if record.parameters != parts.get("parameters", ""):
        return (lines.get(PARAMETERS, anywhere),
                f"the digest of {PARAMETERS} is not that of the parameters' digests in the file (one was edited)")
    return record


def load(path: str | os.PathLike, command: str = UPDATE_COMMAND) -> pd.DataFrame:
    """The rows of a baseline CSV (``read``), seed records left out: columns FILE_COLUMNS, ``value`` NaN
    where no seed value is stored."""
    return read(path, command).rows


def _parse_row(fields: list[str]) -> tuple | str:
    """The typed row, or what is wrong with it (a string)."""
    config, layer, statistic, mean, spread, n_seeds, scale, value = fields
    if not config:
        return "the config is empty"
    if not statistic:
        return "the statistic is empty"
    numbers = []
    for name, text in (("mean", mean), ("spread", spread)):
        try:
            number = float(text)
        except ValueError:
            return f"{name} {text!r} is not a number"
        if not math.isfinite(number):
            return f"{name} is {text}, not a finite number"
        numbers.append(number)
    if numbers[1] < 0:
        return f"spread {spread} is negative; a spread is a standard deviation, >= 0"
    if not (n_seeds.isdigit() and int(n_seeds) >= 1):
        return f"n_seeds {n_seeds!r} is not a whole number >= 1"
    if scale not in SCALES:
        return f"scale {scale!r} is not one of {', '.join(SCALES)}"
    try:
        seed_value = float(value) if value else math.nan
    except ValueError:
        return f"value {value!r} is not a number"
    if value and math.isnan(seed_value):
        return "value is nan; a row without a seed value leaves it empty"
    return config, layer, statistic, numbers[0], numbers[1], int(n_seeds), scale, seed_value


def load_config(path: str | os.PathLike, config: str, command: str = UPDATE_COMMAND) -> pd.DataFrame:
    """The rows of `config` in the file at `path`; BaselineMissing if file or config is absent."""
    return load_stored(path, config, command)[0]


def load_stored(path: str | os.PathLike, config: str, command: str = UPDATE_COMMAND,
                stored: Stored | None = None) -> tuple[pd.DataFrame, SeedRecord | None]:
    """The rows of `config` and its seed record (None if the file has none), from ``stored`` if given (a file
    already ``read``) else from `path`; BaselineMissing if file or config is absent."""
    if stored is None:
        if not Path(path).exists():
            raise BaselineMissing(f"no baseline file {path} (looking for {config!r})", command)
        stored = read(path, command)
    rows = stored.rows[stored.rows["config"] == config].reset_index(drop=True)
    if rows.empty:
        raise BaselineMissing(f"no baseline for configuration {config!r} in {path}", command)
    return rows, stored.records.get(config)


def update(path: str | os.PathLike, rows: pd.DataFrame) -> pd.DataFrame:
    """Merge `rows` into the file, replacing all rows of their configs; return the file's frame.

    Holds an exclusive flock on ``lock_path(path)`` around read-merge-write, so parallel xdist workers
    updating the same file lose nothing; output is sorted, so it does not depend on their order.
    An old file that is corrupt raises BaselineCorrupt (``replace_configs`` can drop it instead).
    """
    return replace_configs(path, rows, drop_corrupt=False).frame


def lock_path(path: str | os.PathLike) -> Path:
    """The lock file that writers of ``path`` share: in the temporary directory, named by the file's absolute
    path, so nothing is left beside the baselines a user commits."""
    name = hashlib.blake2b(str(Path(path).resolve()).encode(), digest_size=10).hexdigest()
    folder = Path(tempfile.gettempdir()) / "initcore-locks"
    folder.mkdir(exist_ok=True)
    return folder / f"{Path(path).name}.{name}.lock"


class Written(NamedTuple):
    """What ``replace_configs`` wrote: the file's frame, and the problem of a corrupt old file it dropped."""

    path: Path
    frame: pd.DataFrame
    replaced: int  # configurations written from the new rows
    dropped: str | None

    def describe(self) -> str:
        kept = self.frame["config"].nunique() - self.replaced
        line = f"{self.path}: {self.replaced} configuration(s) regenerated, {kept} kept as they were"
        if self.dropped:
            line += f"; the old file was corrupt ({self.dropped}), so only this run's configurations are in it"
        return line


def replace_configs(path: str | os.PathLike, rows: pd.DataFrame, *, drop_corrupt: bool = True,
                    records: Mapping[str, SeedRecord] | None = None) -> Written:
    """Write the file once: the configurations of `rows` (with their seed ``records``, if any), and those of
    the old file that `rows` lacks, with theirs.

    Locked and atomic as ``update``. With `drop_corrupt`, an old file that is not a baseline file is
    replaced by `rows` alone (``Written.dropped`` says why). `rows` must be storable (``check_storable``).
    """
    path = Path(path)
    rows = _normalize(rows)
    check_storable(rows)
    path.parent.mkdir(parents=True, exist_ok=True)
    dropped = None
    with open(lock_path(path), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            old = Stored(rows.iloc[:0], {})
            if path.exists():
                try:
                    old = read(path)
                except BaselineCorrupt as exc:
                    if not drop_corrupt:
                        raise
                    dropped = f"line {exc.line}: {exc.problem}"
            new = set(rows["config"])
            kept = old.rows[~old.rows["config"].isin(new)]
            merged = _normalize(pd.concat([kept, rows], ignore_index=True))
            keep = {c: r for c, r in old.records.items() if c not in new}
            keep.update({c: r for c, r in (records or {}).items() if c in new})
            _write_atomic(path, merged, keep)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    return Written(path, merged, rows["config"].nunique(), dropped)


def check_storable(rows: pd.DataFrame) -> None:
    """ValueError naming the first row that ``load`` would refuse: a mean or spread that is not finite
    (a seed measured NaN or an infinity), or a negative spread."""
    mean, spread = rows["mean"].to_numpy(dtype=float), rows["spread"].to_numpy(dtype=float)
    bad = ~np.isfinite(mean) | ~np.isfinite(spread) | (spread < 0)
    if bad.any():
        r = rows[bad].iloc[0]
        raise ValueError(
            f"cannot store a baseline for {r['config']!r}, layer {r['layer']!r}, {r['statistic']}: mean "
            f"{r['mean']}, spread {r['spread']} ({int(bad.sum())} such row(s)); a baseline needs finite values "
            f"at every seed: leave such a statistic out of the baseline, or assert it in the test instead"
        )


def _write_atomic(path: Path, frame: pd.DataFrame, records: Mapping[str, SeedRecord] | None = None) -> None:
    frame = frame.astype({"mean": object, "spread": object, "n_seeds": object, "value": object})
    frame["mean"], frame["spread"] = zip(*map(_storable_digits, frame["mean"], frame["spread"], frame["scale"]),
                                         strict=True) if len(frame) else ((), ())
    frame["value"] = ["" if math.isnan(v) else VALUE_FORMAT.format(v) for v in frame["value"].astype(float)]
    parts = [frame] + [r.rows(c).astype({"mean": object, "spread": object, "n_seeds": object}).assign(
        mean="", spread="", n_seeds="") for c, r in (records or {}).items()]
    out = _sort(pd.concat(parts, ignore_index=True)) if len(parts) > 1 else frame
    atomic_write(path, out[FILE_COLUMNS].to_csv(index=False, lineterminator="\n").encode("utf-8"), durable=True)


def _storable_digits(mean: float, spread: float, scale: str) -> tuple[str, str]:
    """Mean and spread as written: rounded to the resolution their band needs (``BAND_RESOLUTION``).

    The spread is rounded first, until rounding leaves it as it is (rounding can lift it over a power of
    ten of the band, which takes a digit away), and the mean's digits follow from the rounded spread: so a
    file read and written again is the same bytes.
    """

    def digits(s: float) -> int:  # decimals of the mean; the spread gets one more
        return -math.floor(math.log10((K * s + (REL_FLOOR if scale == "log" else ABS_FLOOR)) / BAND_RESOLUTION))

    for _ in range(8):
        rounded = round(spread, digits(spread) + 1)
        if rounded == spread:
            break
        spread = rounded
    return _decimal(mean, digits(spread)), _decimal(spread, digits(spread) + 1)


def _decimal(value: float, digits: int) -> str:
    text = f"{round(value, digits):.{max(digits, 0)}f}"
    text = text.rstrip("0").rstrip(".") if "." in text else text
    return "0" if text in ("-0", "") else text


def _require(frame: pd.DataFrame, columns: list[str], what: str) -> pd.DataFrame:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ValueError(f"{what} lacks column(s) {missing}; required: {columns}")
    return frame[columns]


def _strings(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.astype({c: str for c in KEY if c in frame.columns})


def _check_scale(scale: str) -> str:
    if scale not in SCALES:
        raise ValueError(f"unknown scale {scale!r}; valid: {', '.join(SCALES)}")
    return scale


def _normalize(frame: pd.DataFrame) -> pd.DataFrame:
    """The band rows with FILE_COLUMNS (``value`` NaN where a frame has none), typed, checked and sorted."""
    frame = frame if "value" in frame else frame.assign(value=math.nan)
    frame = _strings(_require(frame, FILE_COLUMNS, "a baseline frame"))
    frame = frame.astype({"mean": float, "spread": float, "n_seeds": "int64", "scale": str, "value": float})
    for scale in set(frame["scale"]):
        _check_scale(scale)
    duplicated = frame[frame.duplicated(KEY)]
    if len(duplicated):
        raise ValueError(f"duplicate baseline rows:\n{duplicated[KEY].to_string(index=False)}")
    return _sort(frame)


def _natural(text: str) -> tuple:
    """Sort key with digit runs compared as numbers ("blocks.2" < "blocks.10"), ties by text."""
    parts = re.split(r"(\d+)", text)  # text at even positions, digits at odd: types line up
    return tuple(int(p) if i % 2 else p for i, p in enumerate(parts)), text


def _sort(frame: pd.DataFrame) -> pd.DataFrame:
    keys = [tuple(_natural(v) for v in row) for row in frame[KEY].itertuples(index=False)]
    order = sorted(range(len(frame)), key=keys.__getitem__)
    return frame.iloc[order].reset_index(drop=True)
