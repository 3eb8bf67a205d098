"""The coordinate check's figure: a colour per coordinate in every panel, 0 and missing coordinates shown as such,
y-limits shared after step 0 and at least a decade wide, the largest slope named on each panel."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from initcore import coord
from initcore.report import coord_check

pytest.importorskip("matplotlib")

WIDTHS = (64, 128, 256, 512)


def _frame(changes: dict[str, dict[int, float]], steps=(0, 1, 2)) -> pd.DataFrame:
    """A ``coord.measure``-shaped frame: row r's change at step t >= 1 is changes[r][t] * width^0 (flat), its size
    at step 0 is 1; a step missing from changes[r] leaves the row out of that step."""
    rows = []
    for width in WIDTHS:
        for t in steps:
            for name, by_step in changes.items():
                if t and t not in by_step:
                    continue
                rows.append({"module": name, "kind": "linear", "layer": 0, "step": t, "width": width, "act_rms": 1.0,
                             "act_change_rms": by_step[t] if t else 0.0, "logit_std": math.nan})
    return pd.DataFrame(rows)


def _draw(frame: pd.DataFrame):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 4), layout="constrained")
    coord_check.draw(fig, frame, title="test")
    return fig


def _lines(ax) -> dict[str, tuple]:
    return {line.get_label(): line.get_color() for line in ax.get_lines() if not line.get_label().startswith("_")}


def test_a_coordinate_keeps_its_colour_in_every_panel_and_the_legend():
    fig = _draw(_frame({"a": {1: 0.1, 2: 0.2}, "b": {1: 0.01, 2: 0.02}, "c": {1: 0.05, 2: 0.05}}))
    axes = fig.axes
    assert [ax.get_title().splitlines()[0] for ax in axes] == ["t = 0: rms(h_0)", "t = 1: rms(h_t - h_0)",
                                                             "t = 2: rms(h_t - h_0)"]
    first = _lines(axes[0])
    assert set(first) == {"a", "b", "c"} and len(set(first.values())) == 3  # three colours
    assert all(_lines(ax) == first for ax in axes[1:])  # the same colour for the same coordinate everywhere
    legend = fig.legends[0]
    assert [t.get_text() for t in legend.get_texts()] == ["a", "b", "c"]
    assert [h.get_color() for h in legend.legend_handles] == [first["a"], first["b"], first["c"]]


def test_zero_and_missing_coordinates_are_shown_as_such():
    # at t = 1 "b" has not moved (0, as hidden rows under muP's zero readout) and "c" is not measured at all
    fig = _draw(_frame({"a": {1: 0.1, 2: 0.2}, "b": {1: 0.0, 2: 0.02}, "c": {2: 0.05}}))
    t1 = fig.axes[1]
    colour = _lines(fig.axes[2])
    zeros = [line for line in t1.get_lines() if line.get_marker() == "v"]
    assert len(zeros) == 1 and zeros[0].get_color() == colour["b"] and len(zeros[0].get_xdata()) == len(WIDTHS)
    note = " ".join(t.get_text() for t in t1.texts)
    assert "at 0: b" in note and "missing: c" in note
    assert not [t for t in fig.axes[2].texts if "at 0" in t.get_text() or "missing" in t.get_text()]


def test_panels_after_step_0_share_y_limits_a_decade_wide_at_least():
    # a 10% change from step 1 to step 2 must not fill a panel: the limits are shared and span >= 1 decade
    fig = _draw(_frame({"a": {1: 0.100, 2: 0.110}}))
    t1, t2 = fig.axes[1].get_ylim(), fig.axes[2].get_ylim()
    assert t1 == pytest.approx(t2)
    assert math.log10(t1[1] / t1[0]) >= coord_check.MIN_DECADES
    assert t1[0] < 0.1 and t1[1] > 0.11


def test_each_panel_names_its_largest_slope_and_a_failing_one_is_red():
    frame = _frame({"flat": {1: 0.1, 2: 0.1}, "steep": {1: 0.1, 2: 0.1}})
    later = (frame["module"] == "steep") & (frame["step"] >= 1)
    frame.loc[later, "act_change_rms"] *= frame.loc[later, "width"] / 64  # slope 1
    fig = _draw(frame)
    assert "largest slope +1.00 (steep)" in fig.axes[1].get_title()
    assert fig.axes[1].title.get_color() == "tab:red"
    flat = _draw(_frame({"flat": {1: 0.1, 2: 0.1}}))
    assert "largest slope +0.00 (flat)" in flat.axes[1].get_title() and flat.axes[1].title.get_color() == "black"


def test_the_coordinate_check_draws_through_coord_draw():
    from matplotlib.figure import Figure

    fig = Figure()
    coord.draw(fig, coord.measure(coord.CoordRun("mlp", "mup", "adam", (16, 32), steps=2), seed=0), title="mlp")
    assert len(fig.axes) == 3 and all(ax.get_xscale() == "log" and ax.get_yscale() == "log" for ax in fig.axes)
    # muP's zero readout: at t = 1 the hidden rows have not moved, and are drawn at 0, in their colours
    assert {line.get_color() for line in fig.axes[1].get_lines() if line.get_marker() == "v"} == \
        {c for n, c in _lines(fig.axes[0]).items() if n.startswith("layers.")}
