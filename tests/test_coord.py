"""initcore.coord: runs as data, the measurement over widths, slopes, summaries, the table and the figure."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from initcore import coord
from initcore.coord import CoordRun

SMALL_MLP = CoordRun("mlp", "mup", "adam", (16, 32), steps=2)
SMALL_TRANSFORMER = CoordRun("transformer", "mup", "adam", (16, 32), steps=2)


def _synthetic(exponents: dict[str, float], widths=(64, 128, 256, 1024), steps=(0, 1, 2)) -> pd.DataFrame:
    """A ``measure``-shaped frame whose change of row r at step t >= 1 is (t / 10) * width^exponents[r]."""
    rows = []
    for width in widths:
        for t in steps:
            for name, s in exponents.items():
                rows.append({"module": name, "kind": "linear", "layer": 0, "step": t, "width": width,
                             "act_rms": 1.0, "act_change_rms": 0.0 if t == 0 else t / 10 * width**s,
                             "logit_std": math.nan})
    return pd.DataFrame(rows)


def test_slopes_recover_power_laws():
    table = coord.slopes(_synthetic({"a": 0.0, "b": 1.0, "c": -0.5}))
    got = table.set_index(["coordinate", "step"])["slope"]
    assert len(got) == 6  # steps 1 and 2; step 0 has no change to fit
    for (name, _), slope in got.items():
        assert slope == pytest.approx({"a": 0.0, "b": 1.0, "c": -0.5}[name], abs=1e-12)


def test_a_coordinate_that_has_not_moved_somewhere_has_no_slope():
    frame = _synthetic({"a": 1.0})
    frame.loc[(frame["step"] == 1) & (frame["width"] == 64), "act_change_rms"] = 0.0
    assert list(coord.slopes(frame)["step"]) == [2]


def test_summary_is_shaped_as_probe_rows():
    summary = coord.summary(_synthetic({"a": 0.5}, widths=(64, 1024)))
    assert list(summary.columns) == ["module", "kind", "layer", "slope", "change_first_rms", "change_last_rms"]
    row = summary.set_index("module").loc["a@t2"]
    assert row["kind"] == "coord" and row["layer"] == 2
    assert row["slope"] == pytest.approx(0.5)
    assert row["change_first_rms"] == pytest.approx(0.2 * 8) and row["change_last_rms"] == pytest.approx(0.2 * 32)


def test_measure_an_mlp():
    frame = coord.measure(SMALL_MLP, seed=0)
    assert set(frame["width"]) == {16, 32} and set(frame["step"]) == {0, 1, 2}
    modules = set(frame.loc[frame["kind"] != "param", "module"])
    assert modules == {"layers.0", "layers.1", "output"}  # the head's row, layers.2, is the output's
    assert set(coord.table(frame).columns) == {"step", "coordinate", "w16", "w32", "slope"}


def test_measure_a_transformer_has_logits_and_a_readout():
    frame = coord.measure(SMALL_TRANSFORMER, seed=0)
    coords = coord.coordinates(frame)
    assert {"blocks.0.attn", "blocks.0.ffn", "blocks.0", "output", "blocks.0.attn:logits"} == set(coords["coordinate"])
    assert "head" not in set(frame["module"])
    logits = coords[(coords["kind"] == "logits")].set_index(["step", "width"])["value"]
    assert (logits.loc[0] == 0).all()  # muP's zero query: no logits at init
    assert (logits.loc[2] > 0).all()  # the second step moved the query (the first moved only the zero readout)


def test_the_task_is_the_same_at_every_width():
    _, a, _ = coord.build(SMALL_MLP, 16, seed=3)
    _, b, _ = coord.build(SMALL_MLP, 32, seed=3)
    assert torch.equal(a.inputs, b.inputs) and torch.equal(a.targets, b.targets)


def test_the_optimizer_gets_mup_groups_and_sp_one_group():
    _, _, opt = coord.build(SMALL_MLP, 32, seed=0)
    lrs = sorted({g["lr"] for g in opt.param_groups})
    assert lrs == pytest.approx([coord.DEFAULT_LR["adam"] / 2, coord.DEFAULT_LR["adam"]])  # width 32 over base 16
    _, _, opt = coord.build(CoordRun("mlp", "kaiming_normal", "sgd", (16, 32)), 32, seed=0)
    assert [g["lr"] for g in opt.param_groups] == [coord.DEFAULT_LR["sgd"]]


def test_a_tamper_sees_the_model_and_its_groups():
    seen = []
    coord.build(SMALL_MLP, 32, seed=0, tamper=lambda model, groups, width: seen.append((len(groups), width)))
    assert seen == [(2, 32)]


def test_draw_one_panel_per_step():
    pytest.importorskip("matplotlib")
    from matplotlib.figure import Figure

    fig = Figure()
    coord.draw(fig, coord.measure(SMALL_MLP, seed=0), title="mlp")
    assert len(fig.axes) == 3
    assert [ax.get_title() for ax in fig.axes] == ["t = 0: rms(h_0)", "t = 1: rms(h_t - h_0)", "t = 2: rms(h_t - h_0)"]
    assert all(ax.get_xscale() == "log" and ax.get_yscale() == "log" for ax in fig.axes)


def test_theory_slopes_are_zero_under_mup():
    assert all(v == 0.0 for (opt, p), s in coord.THEORY_SLOPES.items() if p == "mup" for v in s.values())
    assert coord.THEORY_SLOPES[("adam", "sp")]["hidden"] == 1.0 and coord.THEORY_SLOPES[("sgd", "sp")]["hidden"] == 0.5


@pytest.mark.parametrize("kwargs, match", [
    ({"model": "cnn"}, "unknown model 'cnn'; the coordinate check knows: mlp, transformer"),
    ({"optimizer": "lion"}, "unknown optimizer 'lion'; valid: adam, sgd"),
    ({"init": "mupp"}, "unknown strategy 'mupp'"),
    ({"widths": (64,)}, "widths must be two or more distinct positive integers"),
    ({"widths": (128, 64)}, "widths must be two or more distinct positive integers"),
    ({"widths": (0, 64)}, "widths must be two or more distinct positive integers"),
    ({"model": "transformer", "widths": (63, 128)}, "multiples of n_heads = 2"),
    ({"steps": 0}, "steps must be an integer in 1..100"),
    ({"lr": -1.0}, "lr must be a positive number"),
])
def test_bad_runs_say_what_is_valid(kwargs, match):
    args = {"model": "mlp", "init": "mup", **kwargs}
    with pytest.raises(ValueError, match=match):
        CoordRun(**args)


def test_keys_tell_runs_apart():
    keys = {CoordRun("mlp", "mup").key, CoordRun("mlp", "mup", "sgd").key, CoordRun("mlp", "mup", steps=2).key,
            CoordRun("mlp", "mup", widths=(64, 128)).key, CoordRun("mlp", "mup", lr=0.1).key,
            CoordRun("transformer", "mup", widths=(64, 128)).key}
    assert len(keys) == 6


def test_fits_use_natural_logs_of_width():
    widths = np.array([64.0, 1024.0])
    assert coord._fit(widths, widths**0.25) == pytest.approx(0.25)
    assert coord._fit(widths, np.array([1.0, 0.0])) is None
