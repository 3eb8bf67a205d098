"""initcore.auditing.catalogue: the rules, torch's per-module defaults, and the expectations' little language."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from initcore import audit
from initcore.auditing import catalogue as C
from initcore.auditing.layout import layouts


def _site(module: nn.Module, attr: str = "weight", n_layers: int = 4) -> C.Site:
    lay = next(lay for lay, _ in layouts(module) if lay.attr == attr)
    return C.Site(lay, lay.fan_in, lay.fan_out, n_layers)


@pytest.mark.parametrize("make", [lambda: nn.Linear(48, 80), lambda: nn.Conv2d(8, 16, 3),
                                  lambda: nn.Embedding(300, 24)])
def test_every_rule_the_audit_names_parses_back_to_the_same_target(make):
    """A name printed by the audit can be given as an expectation and means the same distribution."""
    site = _site(make())
    for rule in C.catalogue():
        if rule.source != "formula":
            continue
        target = rule(site)
        if target is None:
            continue
        parsed = C.parse(rule.name)(site)
        assert parsed.family == target.family and math.isclose(parsed.scale, target.scale, rel_tol=1e-12), rule.name
        assert parsed.n_sigma == target.n_sigma or target.family != "trunc_normal", rule.name


@pytest.mark.parametrize("module,attr", [
    (lambda: nn.Linear(200, 300), "weight"), (lambda: nn.Linear(200, 300), "bias"),
    (lambda: nn.Conv2d(6, 16, 5), "weight"), (lambda: nn.Conv1d(6, 16, 5), "bias"),
    (lambda: nn.Embedding(5000, 16), "weight"), (lambda: nn.LayerNorm(64), "weight"),
    (lambda: nn.BatchNorm2d(64), "bias"), (lambda: nn.MultiheadAttention(64, 4), "in_proj_weight"),
    (lambda: nn.LSTM(32, 64), "weight_hh_l0"), (lambda: nn.GRU(32, 64), "bias_ih_l0"),
    (lambda: nn.Bilinear(20, 30, 40), "weight"),
])
def test_torch_default_is_what_torch_draws(module, attr):
    """The module's own reset_parameters, at 5 seeds: named torch_default by the audit, no flag."""
    for seed in range(5):
        torch.manual_seed(seed)
        m = module()
        frame = audit(m)
        row = frame[frame["attr"] == attr].iloc[0]
        assert row["rule"] == "torch_default", (seed, row["fit"], row["also"])


def test_mha_zeroes_its_out_proj_bias_and_the_audit_knows():
    frame = audit(nn.MultiheadAttention(64, 4))
    assert frame.set_index("name").loc["out_proj.bias", "rule"] == "torch_default"
    assert frame.set_index("name").loc["out_proj.bias", "family"] == "zeros"


@pytest.mark.parametrize("text,std", [
    ("normal(0.02/sqrt(2L))", 0.02 / math.sqrt(8)), ("normal(0.02 / sqrt(2 * L))", 0.02 / math.sqrt(8)),
    ("kaiming_normal(mode='fan_out')", math.sqrt(2 / 80)), ("kaiming_normal(fan_out)", math.sqrt(2 / 80)),
    ("kaiming_normal(a=sqrt(5))", math.sqrt(1 / 3) / math.sqrt(48)),  # gain sqrt(2 / (1 + 5))
    ("xavier_normal(tanh)", 5 / 3 * math.sqrt(2 / 128)),
    ("lecun_normal", math.sqrt(1 / 48)), ("normal(1e-6)", 1e-6), ("trunc_normal(0.02, 3σ)", 0.02),
])
def test_expectations_read_as_written(text, std):
    target = C.parse(text)(_site(nn.Linear(48, 80)))
    assert math.isclose(target.scale if target.family != "uniform" else target.std, std, rel_tol=1e-12)
