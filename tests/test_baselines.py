"""Tests for initcore.baselines: hand-computed summaries and bands, messages, CSV layout, atomic and
concurrent updates."""

import math
import multiprocessing
import os

import numpy as np
import pandas as pd
import pytest

from initcore import baselines as bl


def seed_frame(values: dict[tuple[str, str], float]) -> pd.DataFrame:
    return pd.DataFrame(
        [(layer, stat, v) for (layer, stat), v in values.items()], columns=["layer", "statistic", "value"]
    )


def row(config="c", layer="0", statistic="act_std", mean=0.0, spread=0.0, n_seeds=8, scale="log") -> dict:
    return dict(config=config, layer=layer, statistic=statistic, mean=mean, spread=spread, n_seeds=n_seeds, scale=scale)


def measured(*values: tuple[str, str, str, float]) -> pd.DataFrame:
    return pd.DataFrame(values, columns=["config", "layer", "statistic", "value"])


def test_default_scale_registry():
    for name in ["act_std", "grad_norm", "out_rms", "update_ratio", "act_var", "std", "rms"]:
        assert bl.default_scale(name) == "log", name
    for name in ["dead_frac", "act_mean", "stdev", "norm_mean", "kurtosis", "unknown"]:
        assert bl.default_scale(name) == "linear", name


def test_summarize_log_and_linear_by_hand():
    # act_std = e, e^2, e^3 -> log values 1, 2, 3: mean 2, sample std 1.
    # dead_frac = 0.1, 0.2, 0.6: mean 0.3, sample std sqrt((0.04 + 0.01 + 0.09) / 2) = sqrt(0.07).
    frames = [
        seed_frame({("0", "act_std"): math.e**i, ("0", "dead_frac"): f}) for i, f in [(1, 0.1), (2, 0.2), (3, 0.6)]
    ]
    out = bl.summarize(frames, "mlp/xavier").set_index("statistic")
    assert list(out.columns) == ["config", "layer", "mean", "spread", "n_seeds", "scale", "value"]
    assert out["value"].isna().all()  # no seed frame given: no seed values
    assert out.loc["act_std", ["scale", "n_seeds", "config", "layer"]].tolist() == ["log", 3, "mlp/xavier", "0"]
    assert out.loc["act_std", "mean"] == pytest.approx(2.0)
    assert out.loc["act_std", "spread"] == pytest.approx(1.0)
    assert out.loc["dead_frac", "scale"] == "linear"
    assert out.loc["dead_frac", "mean"] == pytest.approx(0.3)
    assert out.loc["dead_frac", "spread"] == pytest.approx(math.sqrt(0.07))


def test_summarize_scale_overrides_and_fallback():
    # "gain" is linear by default; layer 0 takes 1 and 3 (log mean log(3)/2), layer 1 takes 0 and 2
    frames = [seed_frame({("0", "gain"): v, ("1", "gain"): w}) for v, w in [(1.0, 0.0), (3.0, 2.0)]]
    out = bl.summarize(frames, "c", scale_for={"other": "log"})  # a dict falls back to the default
    assert out["scale"].tolist() == ["linear", "linear"]
    assert out["mean"].tolist() == pytest.approx([2.0, 1.0])
    for scale_for in [{"gain": "log"}, lambda statistic: "log"]:
        out = bl.summarize(frames, "c", scale_for=scale_for)
        # log needs positive values: layer 1 has a zero, so it is stored (and compared) linearly
        assert out["scale"].tolist() == ["log", "linear"]
        assert out["mean"].tolist() == pytest.approx([math.log(3) / 2, 1.0])
    # one seed: the spread is unknown, stored as 0 so only the floors apply
    assert bl.summarize(frames[:1], "c")["spread"].tolist() == [0.0, 0.0]


def test_summarize_rejects_bad_input():
    frame = seed_frame({("0", "act_std"): 1.0})
    with pytest.raises(ValueError, match="valid: linear, log"):
        bl.summarize([frame], "c", scale_for={"act_std": "logarithmic"})
    with pytest.raises(ValueError, match="duplicate"):
        bl.summarize([pd.concat([frame, frame])], "c")
    with pytest.raises(ValueError, match="required"):
        bl.summarize([frame.drop(columns="value")], "c")
    with pytest.raises(ValueError, match="at least one"):
        bl.summarize([], "c")


def test_compare_bands_by_hand():
    base = pd.DataFrame(
        [
            row(layer="0", mean=math.log(2), spread=0.1),  # tol 3 * 0.1 + 0.02 = 0.32: 2 e^(±0.32)
            row(layer="0", statistic="dead_frac", mean=0.3, spread=0.05, scale="linear"),  # 0.3 ± 0.16
        ]
    )
    kw = dict(k=3, rel_floor=0.02, abs_floor=0.01)
    ok = bl.compare(measured(("c", "0", "act_std", 2.7), ("c", "0", "dead_frac", 0.45)), base, **kw)
    assert ok["ok"].all() and (ok["problem"] == "").all()
    assert ok["baseline"].tolist() == pytest.approx([2.0, 0.3])
    assert ok["low"].tolist() == pytest.approx([2 * math.exp(-0.32), 0.14])
    assert ok["high"].tolist() == pytest.approx([2 * math.exp(0.32), 0.46])
    # 2 e^0.32 = 2.754 and 2 e^-0.32 = 1.452; 0.3 ± 0.16 = [0.14, 0.46]
    for std, frac in [(2.8, 0.3), (1.4, 0.3), (2.0, 0.47), (2.0, 0.13)]:
        out = bl.compare(measured(("c", "0", "act_std", std), ("c", "0", "dead_frac", frac)), base, **kw)
        expected = ["outside band" if std in (2.8, 1.4) else "", "outside band" if frac != 0.3 else ""]
        assert out["problem"].tolist() == expected, (std, frac)


def test_compare_floors_apply_when_spread_is_zero():
    base = pd.DataFrame([row(layer="0", mean=0.0), row(layer="1", statistic="dead_frac", scale="linear")])
    out = bl.compare(measured(("c", "0", "act_std", 1.0), ("c", "1", "dead_frac", 0.0)), base)
    assert out["low"].tolist() == pytest.approx([math.exp(-bl.REL_FLOOR), -bl.ABS_FLOOR])
    assert out["high"].tolist() == pytest.approx([math.exp(bl.REL_FLOOR), bl.ABS_FLOOR])
    kw = dict(rel_floor=0.02, abs_floor=0.01)  # bands exp(±0.02) = [0.9802, 1.0202] and ±0.01
    cases = [(1.019, 0.009, True), (1.021, 0.0, False), (0.979, 0.0, False), (1.0, 0.011, False), (1.0, -0.011, False)]
    for std, frac, expected in cases:
        out = bl.compare(measured(("c", "0", "act_std", std), ("c", "1", "dead_frac", frac)), base, **kw)
        assert out["ok"].all() == expected, (std, frac)


def test_compare_non_finite_values():
    base = pd.DataFrame([row(layer="0"), row(layer="1", mean=float("nan")), row(layer="2", mean=float("inf"))])
    out = bl.compare(
        measured(
            ("c", "0", "act_std", float("nan")),
            ("c", "1", "act_std", float("nan")),
            ("c", "2", "act_std", float("inf")),
        ),
        base,
    )
    assert out["problem"].tolist() == ["not finite", "", ""]
    out = bl.compare(
        measured(("c", "0", "act_std", 1.0), ("c", "1", "act_std", 1.0), ("c", "2", "act_std", 1e300)), base
    )
    assert out["problem"].tolist() == ["", "outside band", "outside band"]


def test_missing_config_raises_with_the_command(tmp_path):
    base = pd.DataFrame([row(config="a")])
    with pytest.raises(bl.BaselineMissing, match="'b'.*pytest bench --update-baselines"):
        bl.compare(measured(("b", "0", "act_std", 1.0)), base)
    with pytest.raises(bl.BaselineMissing, match="pytest bench --update-baselines"):
        bl.load_config(tmp_path / "absent.csv", "a")
    bl.update(tmp_path / "exp.csv", base)
    assert len(bl.load_config(tmp_path / "exp.csv", "a")) == 1
    with pytest.raises(bl.BaselineMissing, match="'b'.*pytest bench --update-baselines"):
        bl.load_config(tmp_path / "exp.csv", "b")


def test_rows_on_one_side_only_are_reported():
    base = pd.DataFrame([row(layer="0"), row(layer="1"), row(config="other", layer="7")])
    out = bl.compare(measured(("c", "0", "act_std", 1.0), ("c", "2", "act_std", 1.0)), base)
    # the config "other" was not measured, so its rows are not compared at all
    assert out[["layer", "problem"]].values.tolist() == [
        ["0", ""],
        ["1", "not measured"],
        ["2", "missing from baseline"],
    ]
    assert out["ok"].tolist() == [True, False, False]


def test_mismatch_message_lists_failing_rows_and_the_command():
    base = pd.DataFrame([row(layer=str(i)) for i in range(50)])
    values = [("c", str(i), "act_std", 1.0 if i < 5 else 2.0) for i in range(50)]
    with pytest.raises(bl.BaselineMismatch) as info:
        bl.assert_matches(measured(*values), base)
    message = str(info.value)
    lines = message.splitlines()  # title, the config once, header, 40 rows (the cap), "… 5 more", 2 lines: what to do
    assert lines[0] == "45 of 50 statistics moved from their baseline:"
    assert lines[1] == "config c"
    assert lines[2].split() == ["layer", "statistic", "baseline", "measured", "z", "band", "problem"]
    assert "[0.9802, 1.02]" in message and "outside band" in message and " inf " in message  # spread 0: z = inf
    assert len(lines) == 3 + 40 + 3 and lines[-3] == "… 5 more"
    assert lines[-2].startswith("If the change is intended, run `pytest bench --update-baselines`")
    assert "baselines/" in lines[-2] and lines[-1].startswith("If it is not, read the rows from the top")
    assert len(info.value.rows) == 45 and "\n  4 " not in message  # passing rows are not listed
    assert len(bl.assert_matches(measured(*values[:5]), base.head(5))) == 5


def test_mismatch_rows_are_ranked_by_distance_each_config_named_once_within_120_columns():
    long = "transformer-sdpa-prelayernorm-relu-L12-d512-h8-ff2048-b2-t16/standard-" + "x" * 80
    base = pd.DataFrame([row(config=cfg, layer=f"blocks.{i}.a_rather_long_module_name_{'y' * 30}", spread=0.01)
                         for cfg in ("a", long) for i in range(3)])
    # config a: z = 20, 50, 30; the long config: z = 25, 15, 40 -> a first (its furthest row is 50)
    shifts = {("a", 0): 20, ("a", 1): 50, ("a", 2): 30, (long, 0): 25, (long, 1): 15, (long, 2): 40}
    values = [(cfg, f"blocks.{i}.a_rather_long_module_name_{'y' * 30}", "act_std", math.exp(0.01 * z))
              for (cfg, i), z in shifts.items()]
    with pytest.raises(bl.BaselineMismatch) as info:
        bl.assert_matches(measured(*values), base, pooled=False)
    lines = str(info.value).splitlines()
    assert all(len(line) <= 120 for line in lines), max(map(len, lines))
    assert [line for line in lines if line.startswith("config ")] == ["config a", f"config {long}"[:119] + "…"]
    assert sum(long[:60] in line for line in lines) == 1  # the key once, not per row
    assert info.value.rows["z"].round(6).tolist() == [50, 30, 20, 40, 25, 15]


# --- pooled tests --------------------------------------------------------------------------------------------------


def test_normal_score_matches_the_t_quantile():
    stats = pytest.importorskip("scipy.stats")
    t = np.array([0.5, 1.0, 2.0, 4.0, 6.0, 8.3, 10.0, 20.0])
    for dof in (7, 15, 30):
        exact = stats.norm.isf(stats.t.sf(t, dof))
        np.testing.assert_allclose(bl.normal_score(t, dof), exact, rtol=0.01, atol=0.002)
        np.testing.assert_allclose(bl.normal_score(-t, dof), -exact, rtol=0.01, atol=0.002)


def _group(n_rows, spread=0.01, pooled_spread=None, n_seeds=16, statistic="act_std"):
    """A baseline of n_rows rows blocks.i.ffn (log scale, mean 0) and their pooled row blocks.*.ffn, whose
    spread says how the rows co-vary: spread / sqrt(n) for independent rows (the default), spread for rows
    that move together."""
    pooled_spread = spread / math.sqrt(n_rows) if pooled_spread is None else pooled_spread
    rows = [row(layer=f"blocks.{i}.ffn", statistic=statistic, spread=spread, n_seeds=n_seeds) for i in range(n_rows)]
    rows.append(row(layer="blocks.*.ffn", statistic=statistic, spread=pooled_spread, n_seeds=n_seeds))
    return pd.DataFrame(rows)


def _values(shifts_in_spreads, spread=0.01):
    """The rows, shifted by the given numbers of spreads, and their pooled row (the geometric mean)."""
    logs = [spread * z for z in shifts_in_spreads]
    return measured(*[("c", f"blocks.{i}.ffn", "act_std", math.exp(x)) for i, x in enumerate(logs)],
                    ("c", "blocks.*.ffn", "act_std", math.exp(sum(logs) / len(logs))))


def test_mean_test_sees_a_shift_of_every_row_that_no_band_sees():
    base = _group(12)
    shifted = _values([2.0] * 12)  # 2 spreads each: far inside the bands (10 spreads + 2%)
    assert bl.compare(shifted, base)["ok"].all()
    groups = bl.pooled_tests(shifted, base)
    assert groups[["layer", "statistic", "rows"]].values.tolist() == [["blocks.*.ffn", "act_std", 12]]
    # z = 0.02 / sqrt(1e-4 * 17/16 + 1e-3^2) = 1.931, u = normal_score(1.931, 15) = 1.796 for every row;
    # mean_z = 12 * 1.796 / sqrt(12 * r), r = 1 (pooled spread 0.01 / sqrt(12)): 6.22
    assert groups["mean_z"].item() == pytest.approx(6.22, abs=0.01) and groups["problem"].item() == "mean shifted"
    with pytest.raises(bl.BaselineMismatch, match=r"1 of 1 pooled tests failed") as info:
        bl.assert_matches(shifted, base)
    assert "0 of 13 statistics moved" in str(info.value) and "mean shifted" in str(info.value)
    assert bl.pooled_tests(_values([1.0] * 12), base)["ok"].all()  # mean_z 3.2: within chance
    down = bl.pooled_tests(_values([-2.0] * 12), base)  # the same shift downwards: the test is two-sided
    assert down["mean_z"].item() == pytest.approx(-6.22, abs=0.01) and down["problem"].item() == "mean shifted"


def test_mean_test_allows_for_rows_that_move_together():
    # rows that move together (pooled spread = row spread, r = 12): the same 2-spread shift is one draw's worth
    together = _group(12, pooled_spread=0.01)
    groups = bl.pooled_tests(_values([2.0] * 12), together)
    assert groups["r"].item() == pytest.approx(12) and groups["ok"].item()
    assert math.isnan(groups["chi2_z"].item())  # no chi-square for correlated rows


def test_chi_square_sees_rows_scattered_beyond_chance():
    base = _group(12)
    scattered = _values([3.0, -3.0] * 6)  # each 3 spreads off, half each way: every band holds, the mean too
    assert bl.compare(scattered, base)["ok"].all()
    groups = bl.pooled_tests(scattered, base)
    # u = normal_score(0.03 / 0.010356, 15) = 2.54; Q = 12 * 2.54^2 = 77.4; W = ((Q/12)^(1/3) - 1 + 2/108) /
    # sqrt(2/108) = 6.5
    assert abs(groups["mean_z"].item()) < 1e-9
    assert groups["chi2_z"].item() == pytest.approx(6.47, abs=0.01) and groups["problem"].item() == "rows scattered"
    # one row of 4 at 8.5 spreads (10% more variance in one 128 x 128 matrix) is u = 5.05 alone, but only
    # W = 3.9 among 4: the chi-square spreads it over its 4 dof; the row's own band (10 spreads + 2%) holds
    one = _values([0.0, 0.0, 0.0488 / 0.0055, 0.0], spread=0.0055)
    assert bl.pooled_tests(one, _group(4, spread=0.0055))["chi2_z"].item() == pytest.approx(3.86, abs=0.01)


def test_without_a_pooled_row_the_rows_are_taken_to_move_together():
    base = _group(12).iloc[:-1]  # no pooled row (an MLP's layers): how the rows co-vary is unknown
    groups = bl.pooled_tests(_values([3.0] * 12), base)
    assert groups["r"].item() == 12 and groups["ok"].item() and math.isnan(groups["chi2_z"].item())
    common = _values([9.0] * 12).iloc[:-1]  # every row 9 spreads up: inside its band (10 spreads + 2%), 12 times
    assert bl.compare(common, base)["ok"].all()
    assert bl.pooled_tests(common, base)["mean_z"].item() == pytest.approx(5.11, abs=0.01)  # normal_score(8.69, 15)
    assert bl.pooled_tests(_values([3.0] * 2), _group(2)).empty  # fewer than POOLED_MIN_ROWS


def test_pooled_false_alarm_rate_matches_its_derivation():
    # Independent rows, 16-seed baselines drawn afresh each trial, then one new seed: the per-group rate of
    # each test at threshold 3 (where it is measurable) is the normal tail, 2.7e-3 two-sided (mean) and
    # 1.35e-3 one-sided (chi-square): the normal scores make the t's heavy tails normal.
    rng = np.random.default_rng(0)
    trials, m, n = 20000, 12, 16
    seeds = rng.normal(size=(trials, n, m))
    mean, spread = seeds.mean(1), seeds.std(1, ddof=1)
    pooled_spread = seeds.mean(2).std(1, ddof=1)
    t = (rng.normal(size=(trials, m)) - mean) / (spread * math.sqrt(1 + 1 / n))
    u = bl.normal_score(t, n - 1)
    r = np.maximum(1, pooled_spread**2 * m * m / (spread**2).sum(1))
    mean_z = u.sum(1) / np.sqrt(m * r)
    chi2_z = (((u**2).sum(1) / m) ** (1 / 3) - 1 + 2 / (9 * m)) / math.sqrt(2 / (9 * m))
    assert (np.abs(mean_z) > 3).mean() == pytest.approx(2.7e-3, abs=1.5e-3)  # r >= 1 makes it no larger
    assert (chi2_z > 3).mean() == pytest.approx(1.35e-3, abs=1e-3)
    # The formulas above are pooled_tests' own: its statistics on the first trials, as a baseline and a run
    checked_chi2 = 0
    for trial in range(3):
        base = pd.DataFrame([row(layer=f"blocks.{i}.ffn", mean=mean[trial, i], spread=spread[trial, i], n_seeds=n)
                             for i in range(m)] + [row(layer="blocks.*.ffn", mean=mean[trial].mean(),
                                                       spread=pooled_spread[trial], n_seeds=n)])
        new = rng.normal(size=m)
        run = measured(*[("c", f"blocks.{i}.ffn", "act_std", math.exp(new[i])) for i in range(m)],
                       ("c", "blocks.*.ffn", "act_std", math.exp(new.mean())))
        got = bl.pooled_tests(run, base).iloc[0]
        u_trial = bl.normal_score((new - mean[trial]) / (spread[trial] * math.sqrt(1 + 1 / n)), n - 1)
        r_trial = min(m, max(1.0, pooled_spread[trial] ** 2 * m * m / (spread[trial] ** 2).sum()))
        assert got["mean_z"] == pytest.approx(u_trial.sum() / math.sqrt(m * r_trial), rel=1e-3, abs=1e-3)
        w = (((u_trial**2).sum() / m) ** (1 / 3) - 1 + 2 / (9 * m)) / math.sqrt(2 / (9 * m))
        independent = r_trial < bl.INDEPENDENT_R
        assert got["chi2_z"] == pytest.approx(w, rel=1e-3, abs=1e-3) if independent else math.isnan(got["chi2_z"])
        checked_chi2 += independent
    assert checked_chi2  # at least one trial's rows are independent enough for the chi-square
def test_summarize_compare_end_to_end():
    # Synthetic act_std over 10 layers: gain 0.9 per layer, 0.3% seed noise per layer (width ~512).
    # Another seed must pass; 5% more std per layer (10% more weight variance) must fail.
    rng = np.random.default_rng(0)

    def seed(gain):
        noise = np.cumsum(rng.normal(0, 0.003, 10))
        return seed_frame({(str(i), "act_std"): gain ** (i + 1) * math.exp(noise[i]) for i in range(10)})

    base = bl.summarize([seed(0.9) for _ in range(8)], "c")

    def as_measured(frame):
        return frame.assign(config="c")

    assert bl.compare(as_measured(seed(0.9)), base)["ok"].all()
    assert not bl.compare(as_measured(seed(0.9 * 1.05)), base)["ok"].any()


def test_csv_layout_round_trip_and_natural_order(tmp_path):
    rows = pd.DataFrame(
        [
            row(layer="blocks.10.attn", mean=1 / 3, spread=1e-9),
            row(layer="10", statistic="dead_frac", mean=0.25, scale="linear"),
            row(layer="2", mean=-2.0, spread=0.0125),
            row(layer="3", mean=0.123456789, spread=0.0123456),
            row(layer="blocks.2.attn", mean=-46.0517, spread=0.25),
            row(config="b", layer="", mean=123456789.0),
        ]
    )
    first, second = tmp_path / "a" / "first.csv", tmp_path / "second.csv"
    bl.update(first, rows)  # also creates the missing parent directory
    assert first.read_text() == (
        "config,layer,statistic,mean,spread,n_seeds,scale,value\n"
        "b,,act_std,123456789,0,8,log,\n"  # band half-width 0.02: 4 decimals for the mean, 5 for the spread
        "c,2,act_std,-2,0.0125,8,log,\n"  # 10 * 0.0125 + 0.02 = 0.145: 3 and 4
        "c,3,act_std,0.123,0.0123,8,log,\n"  # 0.143: 3 and 4
        "c,10,dead_frac,0.25,0,8,linear,\n"  # 0.01: 4 and 5
        "c,blocks.2.attn,act_std,-46.05,0.25,8,log,\n"  # 2.52: 2 and 3
        "c,blocks.10.attn,act_std,0.3333,0,8,log,\n"  # 0.02: 1e-9 rounds to 0
    )
    loaded = bl.load(first)
    assert loaded["layer"].tolist() == ["", "2", "3", "10", "blocks.2.attn", "blocks.10.attn"]
    assert [pd.api.types.is_string_dtype(loaded[c]) for c in bl.COLUMNS] == [True] * 3 + [False] * 3 + [True]
    assert loaded.dtypes[["mean", "spread", "n_seeds"]].astype(str).tolist() == ["float64", "float64", "int64"]
    bl.update(second, loaded)
    assert second.read_bytes() == first.read_bytes()


def test_stored_digits_follow_the_band_and_reading_then_writing_changes_nothing(tmp_path):
    rng = np.random.default_rng(0)
    spreads = np.concatenate([10 ** rng.uniform(-8, 1, 300), [0.0, 0.008, 0.0079996, 0.00799951, 0.098, 0.0979996]])
    rows = pd.DataFrame([row(layer=str(i), mean=float(m), spread=float(s), scale=scale)
                         for i, (s, m) in enumerate(zip(spreads, rng.normal(0, 3, len(spreads)), strict=True))
                         for scale in ["log"]] +
                        [row(layer=str(i), statistic="dead_frac", mean=float(rng.uniform()), spread=float(s),
                             scale="linear") for i, s in enumerate(spreads)])
    first, second = tmp_path / "first.csv", tmp_path / "second.csv"
    bl.update(first, rows)
    stored = bl.load(first)
    bl.update(second, stored)
    assert second.read_bytes() == first.read_bytes()
    merged = rows.merge(stored, on=bl.KEY, suffixes=("", "_stored"))
    tol = bl.K * merged["spread"] + np.where(merged["scale"] == "log", bl.REL_FLOOR, bl.ABS_FLOOR)
    # each band edge moves by at most half a unit of the mean's last digit plus K half-units of the spread's:
    # <= 1/BAND_RESOLUTION of the half-width (the spread's own rounding can lift it a little: 1.1x)
    moved = (merged["mean"] - merged["mean_stored"]).abs() + bl.K * (merged["spread"] - merged["spread_stored"]).abs()
    assert (moved <= 1.1 * tol / bl.BAND_RESOLUTION).all(), merged[moved > 1.1 * tol / bl.BAND_RESOLUTION]
    assert (moved > 0).mean() > 0.9  # and something is rounded away: the test sees the rounding


@pytest.mark.parametrize("mean, spread", [(float("nan"), 0.1), (float("inf"), 0.1), (0.0, float("nan")), (0.0, -0.1)])
def test_rows_a_load_would_refuse_are_never_written(tmp_path, mean, spread):
    path = tmp_path / "exp.csv"
    bl.update(path, pd.DataFrame([row(layer="0")]))
    before = path.read_bytes()
    with pytest.raises(ValueError, match="cannot store a baseline for 'c', layer '1', act_std"):
        bl.update(path, pd.DataFrame([row(layer="0"), row(layer="1", mean=mean, spread=spread)]))
    assert path.read_bytes() == before


GOOD = (
    "config,layer,statistic,mean,spread,n_seeds,scale\n"
    "c,layers.0,act_std,-0.5,0.01,16,log\n"
    "c,layers.0,dead_frac,0.5,0.02,16,linear\n"
    "c,layers.1,act_std,-0.7,0.01,16,log\n"
)

# Each corruption of the list (and a few more), as bytes, with the line and the words that name it.
CORRUPTIONS = {
    "empty file": (b"", 1, "the file is empty"),
    "blank file": (b"\n\n", 1, "the file is empty"),
    "garbage bytes": (GOOD.encode()[:60] + bytes(range(0x80, 0xA0)) + GOOD.encode()[60:], 2, "not UTF-8"),
    "NUL bytes": (GOOD.encode() + b"\0\0\0\0", 5, "NUL"),
    "truncated row": (GOOD.encode()[: GOOD.index("0.02,16") + 3], 3, "5 fields, expected 7"),
    "truncated scale": (GOOD[:-3].encode(), 4, "scale 'l' is not one of linear, log"),
    "missing column": (GOOD.replace(",spread", "").encode(), 1, "lacks column(s) spread"),
    "renamed column": (GOOD.replace(",scale", ",kind").encode(), 1, "lacks column(s) scale"),
    "reordered columns": (GOOD.replace("mean,spread", "spread,mean").encode(), 1,
                          "header is config,layer,statistic,spread,mean"),
    "duplicate rows": ((GOOD + "c,layers.0,dead_frac,0.5,0.02,16,linear\n").encode(), 5,
                       "repeats the key (config, layer, statistic) ('c', 'layers.0', 'dead_frac') of line 3"),
    "NaN mean": (GOOD.replace("-0.7,", "nan,").encode(), 4, "mean is nan, not a finite number"),
    "infinite mean": (GOOD.replace("-0.7,", "-inf,").encode(), 4, "mean is -inf, not a finite number"),
    "NaN spread": (GOOD.replace("0.5,0.02", "0.5,NaN").encode(), 3, "spread is NaN, not a finite number"),
    "infinite spread": (GOOD.replace("0.5,0.02", "0.5,inf").encode(), 3, "spread is inf, not a finite number"),
    "negative spread": (GOOD.replace("0.5,0.02", "0.5,-0.02").encode(), 3, "spread -0.02 is negative"),
    "mean not a number": (GOOD.replace("-0.7,", "abc,").encode(), 4, "mean 'abc' is not a number"),
    "bad n_seeds": (GOOD.replace("0.02,16", "0.02,1.5").encode(), 3, "n_seeds '1.5' is not a whole number"),
    "zero n_seeds": (GOOD.replace("0.02,16", "0.02,0").encode(), 3, "n_seeds '0' is not a whole number >= 1"),
    "bad scale": (GOOD.replace("linear", "lin").encode(), 3, "scale 'lin' is not one of linear, log"),
    "empty config": (GOOD.replace("c,layers.1", ",layers.1").encode(), 4, "the config is empty"),
    "unterminated quote": (GOOD.encode() + b'"c,layers.2,act_std,0,0,16,log\n', 5, "1 fields, expected 7"),
}


@pytest.mark.parametrize("name", list(CORRUPTIONS))
def test_a_corrupt_file_is_one_line_naming_file_line_and_problem(tmp_path, name):
    data, line, words = CORRUPTIONS[name]
    path = tmp_path / "exp.csv"
    path.write_bytes(data)
    with pytest.raises(bl.BaselineCorrupt) as info:
        bl.load(path)
    message = str(info.value)
    assert message.startswith(f"{path}, line {line}: "), message
    assert words in message, message
    assert "the file is corrupt: restore it from version control or regenerate it" in message
    assert "\n" not in message and "moved" not in message
    assert (info.value.path, info.value.line) == (path, line)
    with pytest.raises(bl.BaselineCorrupt):
        bl.load_config(path, "c")
    with pytest.raises(bl.BaselineCorrupt):  # update keeps what it cannot read: it refuses
        bl.update(path, pd.DataFrame([row(config="d")]))
    assert path.read_bytes() == data


def test_the_good_file_loads(tmp_path):
    path = tmp_path / "exp.csv"
    path.write_text(GOOD)
    frame = bl.load(path)
    assert frame[["layer", "statistic", "mean"]].values.tolist() == [
        ["layers.0", "act_std", -0.5], ["layers.0", "dead_frac", 0.5], ["layers.1", "act_std", -0.7]]
    path.write_text(GOOD.rstrip("\n"))  # no newline after the last row is not corrupt
    assert len(bl.load(path)) == 3
    path.write_text(GOOD.splitlines()[0] + "\n")  # a header alone: a file with no configuration
    assert bl.load(path).empty
    with pytest.raises(bl.BaselineMissing, match="no baseline for configuration 'c'"):
        bl.load_config(path, "c")


def test_replace_configs_drops_a_corrupt_file_and_says_so(tmp_path):
    path = tmp_path / "exp.csv"
    path.write_bytes(CORRUPTIONS["truncated row"][0])
    written = bl.replace_configs(path, pd.DataFrame([row(config="d")]))
    assert bl.load(path)["config"].tolist() == ["d"]
    assert written.dropped == "line 3: 5 fields, expected 7 (config,layer,statistic,mean,spread,n_seeds,scale): " \
                              "a truncated or garbled row"
    assert "the old file was corrupt" in written.describe() and "1 configuration(s) regenerated" in written.describe()


def test_update_replaces_same_config_and_keeps_others(tmp_path):
    path = tmp_path / "exp.csv"
    bl.update(path, pd.DataFrame([row(config="a", layer="0"), row(config="a", layer="1"), row(config="b")]))
    merged = bl.update(path, pd.DataFrame([row(config="a", layer="0", mean=5.0)]))
    assert merged.equals(bl.load(path))
    assert merged[["config", "layer", "mean"]].values.tolist() == [["a", "0", 5.0], ["b", "0", 0.0]]
    with pytest.raises(ValueError, match="valid: linear, log"):
        bl.update(path, pd.DataFrame([row(scale="lin")]))
    with pytest.raises(ValueError, match="duplicate"):
        bl.update(path, pd.DataFrame([row(), row()]))


def test_failed_write_leaves_old_file_and_no_temp_files(tmp_path, monkeypatch):
    path = tmp_path / "exp.csv"
    bl.update(path, pd.DataFrame([row()]))
    before = path.read_bytes()

    def fail(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(OSError, match="disk full"):
        bl.update(path, pd.DataFrame([row(mean=1.0)]))
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exp.csv"]  # no temporary file, and the lock elsewhere
    assert bl.lock_path(path).exists() and bl.lock_path(path).parent != tmp_path


def config_rows(i: int, round_: int) -> pd.DataFrame:
    return pd.DataFrame([row(config=f"cfg{i}", layer=str(j), mean=round_ + i / 8 + j / 64) for j in range(16)])


def test_concurrent_updates_lose_nothing(tmp_path):
    # 8 spawned workers update one file at once, each with its own config, in fresh files each
    # round; without the lock a read-merge-write race drops configs.
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(8) as pool:
        for round_ in range(4):
            path = tmp_path / f"round{round_}" / "exp.csv"
            pool.starmap(bl.update, [(path, config_rows(i, round_)) for i in range(8)], chunksize=1)
            serial = tmp_path / f"serial{round_}.csv"
            for i in reversed(range(8)):
                bl.update(serial, config_rows(i, round_))
            assert sorted(set(bl.load(path)["config"])) == [f"cfg{i}" for i in range(8)]
            assert path.read_bytes() == serial.read_bytes()
            assert sorted(p.name for p in path.parent.iterdir()) == ["exp.csv"]  # the lock is in the temp dir


# --- same seed, same numbers --------------------------------------------------------------------------------------

ENV = (("torch", "2.0"), ("device", "cpu"), ("dtype", "float32"))
RECORD = bl.SeedRecord(0, ENV, "a" * 16, (("l.0.weight", "1" * 16), ("l.1.weight", "2" * 16)))


def seed_rows(values: dict[str, float], spread=0.01) -> pd.DataFrame:
    return pd.DataFrame([{**row(layer=layer, mean=math.log(v), spread=spread), "value": v}
                         for layer, v in values.items()])


def test_compare_seed_by_hand():
    rows = seed_rows({"0": 1.0, "1": 2.0, "2": 4.0})
    # layer 0 half EXACT_RTOL off (within), layer 1 twice (moved), layer 2 equal
    r = bl.EXACT_RTOL
    got = bl.compare_seed(measured(("c", "0", "act_std", 1 + r / 2), ("c", "1", "act_std", 2 * (1 + 2 * r)),
                                   ("c", "2", "act_std", 4.0)), rows).set_index("layer")
    assert got["moved"].tolist() == [False, True, False]
    assert got["rel_diff"].tolist() == pytest.approx([r / 2, 2 * r, 0.0])
    assert got["order"].tolist() == [0, 1, 2]
    # a gradient row gets backward_rtol where that is larger (a chaotic network's rounding)
    grad = seed_rows({"0": 1.0}).assign(statistic="grad_norm")
    assert bl.compare_seed(measured(("c", "0", "grad_norm", 1.002)), grad)["moved"].all()
    assert not bl.compare_seed(measured(("c", "0", "grad_norm", 1.002)), grad, backward_rtol=0.01)["moved"].any()
    # rows without a stored value (an older file) are not compared
    assert bl.compare_seed(measured(("c", "0", "act_std", 9.0)), seed_rows({"0": 1.0}).assign(value=np.nan)).empty


def test_why_not_exact_names_each_reason():
    assert bl.why_not_exact(RECORD, 0, ENV) is None
    assert "holds no seed values" in bl.why_not_exact(None, 0, ENV)
    assert "this run's seed is 7, the baseline's values are seed 0's" in bl.why_not_exact(RECORD, 7, ENV)
    other = (("torch", "2.1"), ("device", "cuda"), ("dtype", "float32"))
    assert ("another environment (torch 2.0 there, 2.1 here, device cpu there, cuda here)"
            in bl.why_not_exact(RECORD, 0, other))


def test_parameters_differ_names_the_first_that_changed_in_the_models_order():
    assert bl.parameters_differ(RECORD, RECORD.params, RECORD.inputs) is None
    swapped = (("l.1.weight", "1" * 16), ("l.0.weight", "2" * 16))  # the draws' order swapped
    line = bl.parameters_differ(RECORD, swapped, RECORD.inputs)
    assert "parameters differ at the same seed (2 of 2: l.1.weight, l.0.weight)" in line
    assert "the inputs differ" in bl.parameters_differ(RECORD, RECORD.params, "b" * 16)


def test_seed_mismatch_ranks_by_relative_difference_with_the_band_verdict():
    rows = seed_rows({"0": 1.0, "1": 2.0, "2": 4.0})
    m = measured(("c", "0", "act_std", 1.0), ("c", "1", "act_std", 2.01), ("c", "2", "act_std", 6.0))
    band = bl.compare(m, rows)
    with pytest.raises(bl.SeedMismatch) as info:
        bl.assert_seed_matches(m, rows, band, 0, command="pytest test_x.py --update-baselines")
    text = str(info.value)
    assert text.startswith("2 of 3 statistics differ from their seed-0 values")
    assert info.value.rows["layer"].tolist() == ["2", "1"]  # 50% before 0.5%
    assert info.value.rows["band"].tolist() == ["outside band", "within band"]  # 0.5% is 0.5 spreads
    assert "first to move in the model's order: 1 act_std" in text
    assert "1 of 2 rows are still within their band" in text
    # the change in seed spreads, in log space: log(2.01 / 2) / 0.01 = 0.499
    assert info.value.rows["shift"].tolist() == pytest.approx([math.log(1.5) / 0.01, math.log(2.01 / 2) / 0.01])
    assert "run `pytest test_x.py --update-baselines`" in text


def test_seed_values_and_records_round_trip_byte_for_byte(tmp_path):
    rows = seed_rows({"0": 1 / 3, "1": 2.0})
    first, second = tmp_path / "a.csv", tmp_path / "b.csv"
    bl.replace_configs(first, rows, records={"c": RECORD})
    text = first.read_text()
    assert "c,0,act_std,-1.099,0.01,8,log,0.333333333\n" in text  # the seed's value to 9 digits
    assert "c,(seed),seed,,,,,0\n" in text and "c,l.0.weight,digest,,,,,1111111111111111\n" in text
    stored = bl.read(first)
    assert stored.records == {"c": RECORD}
    bl.replace_configs(second, stored.rows, records=stored.records)
    assert second.read_bytes() == first.read_bytes()
    # a file of the older 7 columns reads as one without seed values or records
    (tmp_path / "old.csv").write_text(GOOD)
    old = bl.read(tmp_path / "old.csv")
    assert old.records == {} and old.rows["value"].isna().all()


@pytest.mark.parametrize("old, new, words, at", [
    (",0.333333333\n", ",abc\n", "value 'abc' is not a number", None),
    ("digest,,,,,1111111111111111", "digest,,,,,11111111111111zz", "the digest of l.0.weight is '11111111111111zz'",
     None),
    # an edited digest that still looks like one: the (parameters) row no longer matches, and is named
    ("digest,,,,,1111111111111111", "digest,,,,,1111111111111112", "the digest of (parameters) is not that of",
     "c,(parameters)"),
    ("c,(seed),seed,,,,,0", "c,(seed),seed,,,,,x", "the seed row is (seed),x", None),
    ("c,(seed),seed,,,,,0", "c,(seed),seed,1,,,,0", "a seed row has only a value", None),
])
def test_a_corrupt_seed_value_or_digest_is_one_line_naming_file_and_row(tmp_path, old, new, words, at):
    path = tmp_path / "exp.csv"
    bl.replace_configs(path, seed_rows({"0": 1 / 3}), records={"c": RECORD})
    text = path.read_text()
    assert text.count(old) == 1, old
    path.write_text(text.replace(old, new))
    line = text[: text.index(at or old)].count("\n") + 1
    with pytest.raises(bl.BaselineCorrupt) as info:
        bl.read(path)
    message = str(info.value)
    assert words in message and "\n" not in message, message
    assert message.startswith(f"{path}, line {line}: "), message
