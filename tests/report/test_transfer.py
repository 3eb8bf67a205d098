"""The transfer figure's data path: the table it plots (seed mean, range, divergence, the starred argmin), the
two panels with a curve per width, and the page a tiny sweep writes."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from initcore import transfer
from initcore.report import transfer as report_transfer

pytest.importorskip("matplotlib")

LRS = (1e-3, 1e-2, 1e-1)
TINY = tuple(transfer.TransferRun("mlp", p, widths=(8, 16), lrs=(1e-3, 1e-2, 1e6), steps=3, tail=2, seeds=(0, 1))
             for p in transfer.PARAMETRIZATIONS)


def _frame() -> pd.DataFrame:
    """Two seeds; SP's best lr falls from 1e-2 at width 64 to 1e-3 at 512; muP's stays at 1e-2; lr 1e-1 of
    SP at width 512 diverged in seed 1 (inf) though seed 0 was fine there."""
    curves = {("sp", 64): ([2.0, 1.0, 3.0], [2.2, 1.2, 3.2]), ("sp", 512): ([1.0, 2.0, 0.5], [1.0, 2.0, math.inf]),
              ("mup", 64): ([2.0, 1.0, 3.0], [2.0, 1.0, 3.0]), ("mup", 512): ([1.5, 0.5, 2.5], [1.5, 0.7, 2.5])}
    rows = [("mlp", p, w, lr, seed, loss, not math.isfinite(loss))
            for (p, w), by_seed in curves.items() for seed, losses in enumerate(by_seed)
            for lr, loss in zip(LRS, losses, strict=True)]
    return pd.DataFrame(rows, columns=transfer.COLUMNS)


def test_table_holds_the_seed_mean_its_range_and_the_argmin():
    shown = report_transfer.table(_frame()).set_index(["parametrization", "width", "lr"])
    assert list(shown.index.get_level_values(0).unique()) == ["sp", "mup"]  # the figure's panel order
    row = shown.loc[("sp", 64, 1e-2)]
    assert row["loss"] == pytest.approx(1.1) and row["low"] == 1.0 and row["high"] == 1.2 and row["best"]
    assert row["index"] == 1 and row["seeds"] == 2 and row["diverged"] == 0
    best = shown[shown["best"]].reset_index()
    assert list(zip(best["parametrization"], best["width"], best["lr"], strict=True)) == \
        [("sp", 64, 1e-2), ("sp", 512, 1e-3), ("mup", 64, 1e-2), ("mup", 512, 1e-2)]


def test_a_rate_that_diverged_in_one_seed_is_inf_in_the_table_and_not_starred():
    row = report_transfer.table(_frame()).set_index(["parametrization", "width", "lr"]).loc[("sp", 512, 1e-1)]
    assert row["loss"] == math.inf and row["diverged"] == 1 and not row["best"]
    assert row["low"] == row["high"] == 0.5  # the range of the seeds that did not diverge


def test_draw_puts_sp_and_mup_side_by_side_a_curve_per_width():
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 4))
    report_transfer.draw(fig, report_transfer.table(_frame()), base=64)
    sp, mup = fig.axes
    assert sp.get_title().startswith("Standard parametrization") and mup.get_title() == "muP (tuned at width 64)"
    for ax in (sp, mup):
        assert [t.get_text() for t in ax.get_legend().get_texts()] == ["width 64", "width 512"]
    curve = next(line for line in sp.get_lines() if line.get_label() == "width 512")
    np.testing.assert_array_equal(curve.get_xdata(), [1e-3, 1e-2])  # the diverged lr is no point on the curve
    crosses = [line for line in sp.get_lines() if line.get_marker() == "x" and len(line.get_xdata())]
    assert len(crosses) == 1 and list(crosses[0].get_xdata()) == [1e-1]
    stars = [line.get_xdata()[0] for line in mup.get_lines() if line.get_marker() == "*"]
    assert stars == [1e-2, 1e-2]


def test_a_tiny_sweep_writes_its_page(tmp_path):
    index = report_transfer.write_transfer_report(tmp_path / "r", seed=0, sweeps=TINY)
    assert index == tmp_path / "r" / "index.html"
    assert {p.name for p in (tmp_path / "r").iterdir()} == {"index.html", "transfer.png", "transfer.csv"}
    written = pd.read_csv(tmp_path / "r" / "transfer.csv")
    assert len(written) == 2 * 2 * 3  # parametrizations x widths x lrs
    huge = written[(written["lr"] == 1e6) & (written["parametrization"] == "sp")]
    assert (huge["diverged"] == 2).all() and not huge["best"].any()  # both seeds, at both widths
    assert written.groupby(["parametrization", "width"])["best"].sum().eq(1).all()
    page = index.read_text()
    assert "Hyperparameter transfer" in page and "best lr per width: w8: 2^" in page


def test_the_default_sweeps_are_the_bench_s_at_the_seed_given():
    sp, mup = report_transfer.runs(seed=5)
    assert (sp.parametrization, mup.parametrization) == ("sp", "mup")
    assert sp.seeds == mup.seeds == (5, 6, 7) and sp.widths == transfer.WIDTHS and sp.lrs == transfer.LRS
