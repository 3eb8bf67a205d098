"""Tests for initcore.health: which modules the notebook's hooks see, and their statistics by hand."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from initcore import diagnose, health


def test_statistics_of_a_linear_by_hand():
    lin = nn.Linear(2, 2, bias=False)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 3.0]]))
    x = torch.tensor([[1.0, 1.0], [-1.0, 1.0]])  # outputs [[1, 3], [-1, 3]]
    stats = health.collect(nn.Sequential(lin), x)
    row = stats.iloc[0]
    assert row["module"] == "0" and row["type"] == "Linear"
    assert row["mean"] == pytest.approx(1.5)
    # unbiased std of 1, 3, -1, 3: deviations -0.5, 1.5, -2.5, 1.5, squares sum 11, / 3
    assert row["std"] == pytest.approx((11 / 3) ** 0.5)
    assert (row["min"], row["max"], row["nan_count"], row["inf_count"]) == (-1.0, 3.0, 0, 0)


def test_nan_and_inf_are_counted():
    lin = nn.Linear(1, 3, bias=False)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[1.0], [float("nan")], [float("inf")]]))
    row = health.collect(lin, torch.ones(2, 1)).iloc[0]
    assert (row["module"], row["nan_count"], row["inf_count"]) == ("", 2, 2)
    assert "NaN values, Inf values" in diagnose.health_table(health.collect(lin, torch.ones(2, 1)))["issues"][0]


class Tiny(nn.Module):
    """The notebook's SimpleTransformer layer in miniature: attention, then ff1, relu, ff2."""

    def __init__(self) -> None:
        super().__init__()
        self.attention = nn.MultiheadAttention(8, 2, batch_first=True)
        self.ff1, self.ff2 = nn.Linear(8, 16), nn.Linear(16, 8)

    def forward(self, x):
        a, _ = self.attention(x, x, x)
        x = x + a
        return x + self.ff2(torch.relu(self.ff1(x)))


def test_the_notebooks_selection_drops_attention_and_never_sees_out_proj():
    model, x = Tiny(), torch.randn(2, 5, 8)
    ours = health.collect(model, x)
    notebook = health.collect(model, x, tuple_outputs=False)
    # out_proj is an nn.Linear, but MultiheadAttention applies it functionally: its hook never fires
    assert list(ours["module"]) == ["attention", "ff1", "ff2"]
    assert list(ours["type"]) == ["MultiheadAttention", "Linear", "Linear"]
    assert list(notebook["module"]) == ["ff1", "ff2"]  # a tuple output is not a tensor: dropped
    with torch.no_grad():
        a, _ = model.attention(x, x, x)
    assert ours["std"].iloc[0] == pytest.approx(a.std().item(), rel=1e-6)


def test_hooks_are_removed_even_when_the_forward_fails():
    model = nn.Sequential(nn.Linear(3, 3))
    with pytest.raises(RuntimeError):
        health.collect(model, torch.ones(2, 4))  # wrong input size
    assert not model[0]._forward_hooks
    health.collect(model, torch.ones(2, 3))
    assert not model[0]._forward_hooks


def test_health_report_adds_the_verdicts():
    lin = nn.Linear(4, 4)
    with torch.no_grad():
        lin.weight.fill_(0.001)
        lin.bias.zero_()
    table = health.health_report(nn.Sequential(lin), torch.ones(3, 4))
    assert list(table.columns) == ["module", "type", *diagnose.HEALTH_COLUMNS[1:]]
    assert table["issues"][0] == "Poor variance"  # every output is 0.004: std 0
    assert not table["healthy"][0]
