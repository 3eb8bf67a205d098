"""The report's precision figure: its table is the spans of a fresh trace of the report's transformer run, the
formats' lines are torch.finfo's (checked by casting), and the figure draws."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from initcore.probe import spans
from initcore.report import page
from initcore.report import precision as report_precision

from .conftest import SEED


def test_limits_are_finfos_and_the_smallest_subnormal_survives_a_cast():
    bounds = report_precision.limits().set_index("format")
    assert list(bounds.index) == list(report_precision.FORMATS)
    for name, b in bounds.iterrows():
        dtype = getattr(torch, name)
        info = torch.finfo(dtype)
        assert b["log2_max"] == math.log2(info.max) and b["log2_smallest_normal"] == math.log2(info.smallest_normal)
        smallest = 2.0 ** b["log2_smallest_subnormal"]
        cast = torch.tensor([smallest, smallest / 2, smallest * 1.5], dtype=torch.float64).to(dtype).double()
        assert cast.tolist()[:2] == [smallest, 0.0]  # representable; half of it rounds (to even) to zero
        assert 0 < smallest < info.smallest_normal


def test_the_table_is_the_spans_of_the_reports_transformer_run(built):
    table = pd.read_csv(built.out / "precision.csv")
    label, run = next(iter(built.runs.transformer.items()))
    model, inputs = run.build(torch.Generator().manual_seed(SEED))
    fresh = spans.spans(model, inputs, run.loss, select=run.select, train=run.train)
    assert set(table["run"]) == {label} and len(table) == len(fresh)
    assert set(table["tensor"]) == {"output", "output_grad", "weight", "weight_grad"}
    for column in ("n", "nonzero", "amax", "low", "smallest"):
        np.testing.assert_allclose(table[column], fresh[column], rtol=1e-6, err_msg=column)
    with np.errstate(divide="ignore"):
        np.testing.assert_allclose(table["log2_amax"], np.log2(fresh["amax"]), rtol=1e-6)
    drawn = table[table["nonzero"] > 0]
    assert (drawn["log2_low"] <= drawn["log2_amax"]).all() and (drawn["log2_smallest"] <= drawn["log2_low"]).all()
    assert table.loc[table["nonzero"] == 0, "amax"].isna().all()  # zero biases: no bar


def test_the_check_counts_what_the_figure_shows():
    x = pd.DataFrame({"tensor": "output", "module": ["a", "b", "c"], "param": "", "nonzero": [5.0, 5.0, 0.0],
                      "amax": [2.0**17, 2.0**-3, np.nan], "low": [2.0**-20, 2.0**-10, np.nan],
                      "smallest": [2.0**-30, 2.0**-15, np.nan]})
    table = report_precision.span_table(x)
    counted = report_precision.outside(table, report_precision.limits()).set_index("format")
    # a: amax 2^17 above fp16's and both fp8 maxes, its 1% quantile 2^-20 below every smallest normal but
    # bf16's 2^-126; b: 2^-10 below e4m3fn's 2^-6 smallest normal only (its smallest, 2^-15, is not what counts);
    # c: all zeros, not counted
    assert counted.loc["float16"].tolist() == [2, 1, 1]
    assert counted.loc["bfloat16"].tolist() == [2, 0, 0]
    assert counted.loc["float8_e4m3fn"].tolist() == [2, 1, 2]
    assert counted.loc["float8_e5m2"].tolist() == [2, 1, 1]


def test_the_figure_draws(built):
    pytest.importorskip("matplotlib")
    table = pd.read_csv(built.out / "precision.csv")
    section = report_precision.section(built.runs, SEED)
    numbers = ["n", "nonzero", "amax", "low", "smallest", "log2_amax", "log2_low", "log2_smallest"]
    np.testing.assert_allclose(section.table[numbers].to_numpy(float), table[numbers].to_numpy(float), rtol=1e-12)
    assert section.checks[0].passed is None and "float8_e4m3fn" in section.checks[0].detail
    assert page.png(section, dpi=30).startswith(b"\x89PNG")
    assert (built.out / "precision.png").stat().st_size > 0
