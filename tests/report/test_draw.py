"""initcore.report.draw: what a figure must show beyond its numbers: the output layer marked, the thresholds
a caption cites drawn at their values, seed bands where the table has them."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from initcore.report import draw

pytest.importorskip("matplotlib")


def _figure():
    from matplotlib.figure import Figure

    return Figure(figsize=(6, 4))


def _table() -> pd.DataFrame:
    return pd.DataFrame({"run": ["a"] * 4 + ["b"] * 4, "layer": [0, 1, 2, 3] * 2,
                         "grad_norm": [1e-7, 1e-5, 1e-3, 1e-1, 20.0, 5.0, 1.0, 0.5],
                         "grad_norm_theory": np.nan, "grad_norm_low": [0.9e-7, 0.9e-5, 0.9e-3, 0.09] + [np.nan] * 4,
                         "grad_norm_high": [1.1e-7, 1.1e-5, 1.1e-3, 0.11] + [np.nan] * 4})


def test_thresholds_are_drawn_at_their_values():
    fig = _figure()
    draw.per_run(fig, _table(), "grad_norm", "norm", "t", "grad_norm_theory", band="grad_norm",
                 lines=[(1e-6, "vanishing"), (10.0, "exploding")], output_layer=False)
    ax = fig.axes[0]
    horizontal = {line.get_label(): line.get_ydata()[0] for line in ax.lines if line.get_linestyle() == "--"}
    assert horizontal == {"vanishing": 1e-6, "exploding": 10.0}
    assert len(ax.collections) >= 1  # run a's seed band (run b has none)


def test_the_output_layer_is_marked_hollow_and_annotated():
    fig = _figure()
    table = _table().rename(columns={"grad_norm": "act_std"})
    draw.per_run(fig, table, "act_std", "std", "t")
    ax = fig.axes[0]
    hollow = [line for line in ax.lines if line.get_marker() == "s" and line.get_markerfacecolor() == "none"]
    assert [(line.get_xdata()[0], line.get_ydata()[0]) for line in hollow] == [(3, 0.1), (3, 0.5)]
    assert any("no activation" in t.get_text() for t in ax.texts)
    plain = _figure()
    draw.per_run(plain, table, "act_std", "std", "t", output_layer=False)
    assert not any(line.get_marker() == "s" for line in plain.axes[0].lines)
