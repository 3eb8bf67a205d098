"""Tests for initcore.report: every figure and table is written, the page links them relatively, and the
tables hold the numbers of a fresh trace of the same run and seed. The report is built once, from the
experiments shrunk (``dataclasses.replace``) so that it takes seconds."""

from __future__ import annotations

import math
import re
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from initcore import diagnose, experiments, probe, report, theory

pytest.importorskip("matplotlib")

SEED = 3
SMALL_MLP = replace(experiments.DEPTH_MLP, in_features=32, width=32, depth=4)
RUNS = report.ReportRuns(
    depth={name: experiments.MLPRun(SMALL_MLP, strategy, batch=16)
           for name, strategy in experiments.DEPTH_INITS.items()},
    xavier={name: replace(run, batch=200) for name, run in experiments.XAVIER_RUNS.items()},
    activation={key: replace(run, model=replace(run.model, in_features=32, width=32, depth=4), batch=64)
                for key, run in experiments.ACTIVATION_RUNS.items()},
    transformer={name: replace(run, model=replace(run.model, vocab_size=100, d_model=32, n_heads=2, d_ff=64,
                                                  n_layers=3), batch=2, seq_len=8)
                 for name, run in experiments.TRANSFORMER_RUNS.items()},
)
FIGURES = ("depth_std", "depth_mean", "depth_grad", "weights", "xavier_ratio", "activation_grid", "transformer")
TABLES_ONLY = ("diagnosis", "symptoms")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def out(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("report") / "nested" / "out"  # created by the report
    index = report.write_report(directory, seed=SEED, runs=RUNS, dpi=30)
    assert index == directory / "index.html"
    return directory


def _csv(out: Path, name: str) -> pd.DataFrame:
    return pd.read_csv(out / f"{name}.csv")


_TRACES: dict = {}


def _trace(run) -> pd.DataFrame:
    """A fresh trace of ``run`` at SEED, independent of the report's (cached across these tests)."""
    if run not in _TRACES:
        model, inputs = run.build(torch.Generator().manual_seed(SEED))
        _TRACES[run] = probe.trace(model, inputs, loss=run.loss)
    return _TRACES[run]


def _fresh(run) -> pd.DataFrame:
    frame = _trace(run)
    return frame[frame["kind"] == "linear"].reset_index(drop=True) if hasattr(run, "gain") else frame


def test_every_figure_and_table_is_written(out):
    names = {p.name for p in out.iterdir()}
    expected = {f"{n}.png" for n in FIGURES} | {f"{n}.csv" for n in FIGURES + TABLES_ONLY} | {"index.html"}
    assert names == expected  # and no temporary file left behind
    for name in FIGURES:
        data = (out / f"{name}.png").read_bytes()
        assert data.startswith(PNG_SIGNATURE) and len(data) > 1000, name
    for name in FIGURES + TABLES_ONLY:
        assert len(_csv(out, name)) > 0, name


def test_index_links_every_file_relatively(out):
    page = (out / "index.html").read_text()
    links = re.findall(r"(?:src|href)='([^'#]+)'", page)
    assert sorted(links) == sorted([f"{n}.png" for n in FIGURES] + [f"{n}.csv" for n in FIGURES + TABLES_ONLY])
    assert all((out / link).is_file() for link in links)  # relative to the page: opens with no server
    assert page.count("<table") == len(FIGURES) + len(TABLES_ONLY)
    assert f"seed {SEED}" in page


def test_depth_tables_hold_the_traced_numbers(out):
    std, mean, grad = _csv(out, "depth_std"), _csv(out, "depth_mean"), _csv(out, "depth_grad")
    for run in RUNS.depth.values():
        fresh = _fresh(run)
        rows = std["key"] == run.key
        np.testing.assert_allclose(std.loc[rows, "act_std"], fresh["act_std"], rtol=1e-12)
        np.testing.assert_allclose(mean.loc[mean["key"] == run.key, "act_mean"], fresh["act_mean"], rtol=1e-12)
        np.testing.assert_allclose(grad.loc[grad["key"] == run.key, "grad_norm"], fresh["grad_norm"], rtol=1e-12)
        predicted = probe.mlp_theory(run.model, run.init)["act_std_theory"]
        np.testing.assert_allclose(std.loc[rows, "act_std_theory"], predicted, rtol=1e-12)


def test_activation_grid_holds_the_traced_numbers_and_theory(out):
    grid = _csv(out, "activation_grid")
    assert len(grid) == len(RUNS.activation) * 4
    for (act, _), run in RUNS.activation.items():
        rows = grid[grid["key"] == run.key]
        assert set(rows["activation"]) == {act}
        np.testing.assert_allclose(rows["act_std"], _fresh(run)["act_std"], rtol=1e-12)
        predicted = probe.mlp_theory(run.model, run.init, gain=run.gain)["act_std_theory"]
        np.testing.assert_allclose(rows["act_std_theory"], predicted, rtol=1e-12)
    assert set(grid["init"]) == {"Xavier", "He", "Xavier, gain 5/3"}


def test_weights_table_holds_the_drawn_weights(out):
    table = _csv(out, "weights")
    for run in RUNS.depth.values():
        row = table[table["key"] == run.key].iloc[0]
        model, _ = run.build(torch.Generator().manual_seed(SEED))
        w = model.layers[1].weight.detach().double()
        assert row["weight_std"] == pytest.approx(w.std().item(), rel=1e-12)
        assert (row["weight_min"], row["weight_max"]) == (w.min().item(), w.max().item())
        assert row["weight_std_theory"] == pytest.approx(math.sqrt(theory.init_variance(run.init, 32, 32)))
        if row["distribution"] == "uniform":  # every weight within the bound, the extremes close to it
            assert max(-row["weight_min"], row["weight_max"]) <= row["bound_theory"]
            assert max(-row["weight_min"], row["weight_max"]) > 0.95 * row["bound_theory"]


def test_xavier_table_holds_ratios_measured_by_hand(out):
    table = _csv(out, "xavier_ratio").set_index("shape")
    for name, run in RUNS.xavier.items():
        model, x = run.build(torch.Generator().manual_seed(SEED))
        with torch.no_grad():
            y = model(x)
        row = table.loc[name]
        fan_in, fan_out = run.model.in_features, run.model.width
        assert row["forward_ratio"] == pytest.approx((y.var() / x.var()).item(), rel=1e-5)
        assert row["forward_ratio_theory"] == pytest.approx(2 * fan_in / (fan_in + fan_out), rel=1e-12)
        assert row["backward_ratio_theory"] == pytest.approx(2 * fan_out / (fan_in + fan_out), rel=1e-12)
        # E over a batch of 200 random directions of |W^T g|²/|g|² is tr(W W^T)/(fan_out fan_in) * fan_out;
        # for one drawn W that is fan_out Var_hat(w): within a few percent of theory at these sizes
        assert row["backward_ratio"] == pytest.approx(row["backward_ratio_theory"], rel=0.05)


def test_transformer_table_holds_the_traced_numbers(out):
    table = _csv(out, "transformer")
    for name, run in RUNS.transformer.items():
        fresh = _fresh(run)
        rows = table[table["strategy"] == name]
        blocks = fresh[fresh["kind"] == "block"]
        np.testing.assert_allclose(rows["residual_std"], blocks["act_std"], rtol=1e-12)
        np.testing.assert_allclose(rows["attn_grad_norm"], fresh.loc[fresh["kind"] == "attn", "grad_norm"],
                                   rtol=1e-12)
        np.testing.assert_allclose(rows["ffn_grad_norm"], fresh.loc[fresh["kind"] == "ffn", "grad_norm"], rtol=1e-12)
        # theory: the stream's variance is the embedding's plus the sum of the branch variances so far
        branch = rows["attn_std"].to_numpy() ** 2 + rows["ffn_std"].to_numpy() ** 2
        expected = np.sqrt(rows["embedding_std"].iloc[0] ** 2 + np.cumsum(branch))
        np.testing.assert_allclose(rows["residual_std_theory"], expected, rtol=1e-12)


def test_diagnosis_table_is_diagnose_of_each_trace(out):
    table = _csv(out, "diagnosis").fillna("")
    runs = [*RUNS.depth.values(), *RUNS.activation.values()]
    assert list(table["key"]) == [run.key for run in runs]
    for run, row in zip(runs, table.itertuples(), strict=True):
        found = diagnose.diagnose(_trace(run))
        assert row.symptoms == (", ".join(found["symptom"]) or "healthy")
    assert list(_csv(out, "symptoms")["symptom"]) == list(diagnose.SYMPTOMS)


def test_without_matplotlib_nothing_is_run_or_written(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    monkeypatch.setattr(report, "collect", lambda *a, **k: pytest.fail("collected without matplotlib"))
    with pytest.raises(report.PlottingUnavailable, match=re.escape("pip install 'initcore[plot]'")):
        report.write_report(tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_atomic_write_leaves_the_old_file_when_it_fails(tmp_path, monkeypatch):
    target = tmp_path / "index.html"
    target.write_text("old")
    report._atomic_write(target, b"new")
    assert target.read_text() == "new"

    def fail(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(report.os, "replace", fail)
    with pytest.raises(OSError, match="disk full"):
        report._atomic_write(target, b"newer")
    assert target.read_text() == "new"
    assert [p.name for p in tmp_path.iterdir()] == ["index.html"]  # the temporary file is gone
