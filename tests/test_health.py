"""Tests for initcore.health: which modules the notebook's hooks see, and their statistics by hand."""

from __future__ import annotations

import os
import re
import textwrap

import pytest
import torch
from torch import nn

from initcore import diagnose, health, probe, zoo


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


needs_zoo = pytest.mark.skipif(zoo.missing() is not None and not os.environ.get("INITCORE_REQUIRE_ZOO"),
                               reason=f"{zoo.missing()}")  # under INITCORE_REQUIRE_ZOO (CI) they run, and fail


@needs_zoo
def test_gpt2s_scaled_residual_projections_are_one_verdict_with_the_symptoms(tmp_path, monkeypatch, capsys):
    """Hugging Face GPT-2, its own init (c_proj N(0, (0.02 / sqrt(2 n_layer))^2)): every c_proj's output std is
    below the notebook's 0.1, by design. `initcore diagnose --health` as a user runs it says healthy once, and
    each c_proj's flag says why it is no symptom; it once printed "Poor variance" on them under "healthy"."""
    from initcore import cli

    (tmp_path / "hfmods.py").write_text(textwrap.dedent("""
        from initcore import zoo

        def gpt2(seed=0):
            return zoo.gpt2(seed, n_layer=2, n_embd=64, n_head=4, vocab_size=128, batch=2, seq_len=16)
    """))
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    assert cli.main(["diagnose", "--model", "hfmods:gpt2", "--loss", "random", "--health"]) == 0
    out = capsys.readouterr().out.splitlines()
    c_proj = [i for i, line in enumerate(out) if re.match(r"transformer\.h\.\d\.(attn|mlp)\.c_proj ", line)]
    assert len(c_proj) == 4  # the notebook's hooks see Hugging Face's Conv1D as the Linear it is
    for i in c_proj:
        assert out[i].endswith("Poor variance (no symptom)"), out[i]
        assert re.match(r"\s+why: not a symptom: a branch of residual block transformer\.h\.\d, added to a stream "
                        r"of std [\d.]+ \([\d.]+ of it\); a residual projection is small by design", out[i + 1])
    top = next(line for line in out if not line.startswith("#"))  # under the comment lines naming the run
    assert top.startswith("healthy: no symptom found (checked: vanishing_gradients,")
    assert top.endswith("; 4 layers the notebook's rules flag are no symptom (why: below)")
    assert re.fullmatch(r"SUMMARY: \d+/\d+ layers within the notebook's rules, 4 more flagged but no symptom: healthy",
                        out[-1])
    assert {p.name for p in tmp_path.iterdir()} <= {"hfmods.py", "__pycache__"}  # nothing else left behind


def test_a_small_layer_outside_any_block_is_a_symptom_in_the_one_verdict():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 4))
    nn.init.normal_(model[2].weight, std=0.001)  # layer 2's output std ~0.01: it feeds layer 4 as it is
    x = torch.randn(32, 16)
    frame = probe.trace(model, x)
    findings = diagnose.diagnose(frame)
    table = diagnose.explain_health(health.health_report(model, x), frame, findings).set_index("module")
    assert table.loc["2", "symptom"]
    assert "outside 0.1..10, on a layer whose output feeds the next" in table.loc["2", "why"]
    assert diagnose.verdict(findings, table.reset_index()).startswith("not healthy:")
