"""initcore.testing.assert_init in a user's own test: passes on the intended init, fails with the audit's table
of what differs, and refuses an unknown flag name."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from initcore.testing import assert_init


def _mlp(std: float = 0.02) -> nn.Sequential:
    torch.manual_seed(0)
    model = nn.Sequential(*(nn.Linear(128, 128) for _ in range(4)))
    for layer in model:
        nn.init.normal_(layer.weight, 0.0, std)
        nn.init.zeros_(layer.bias)
    return model


def test_the_intended_init_passes_and_returns_the_audit():
    frame = assert_init(_mlp(), expect={"*.weight": "normal(0.02)", "*.bias": "zeros"})
    assert set(frame["rule"]) == {"normal(0.02)", "zeros"}


def test_a_wrong_std_fails_with_the_table_of_what_differs():
    with pytest.raises(pytest.fail.Exception, match=r"(?s)init not as intended: 4 of 8 parameters.*\*\.weight +4 +"
                                                    r"128x128 +N\(0, 0\.03.*expected: \*\.weight"):
        assert_init(_mlp(std=0.03), expect={"*.weight": "normal(0.02)"})


def test_flags_apply_without_an_expectation_and_can_be_allowed():
    model = _mlp()
    with torch.no_grad():
        model[1].weight.copy_(model[0].weight)
    with pytest.raises(pytest.fail.Exception, match="equal to 1.weight, which is not tied"):
        assert_init(model)
    assert_init(model, allow=["equal"])
    with pytest.raises(ValueError, match="unknown flags \\['equals'\\]; valid: uninitialized, untied"):
        assert_init(model, allow=["equals"])
    assert math.isfinite(float(model[0].weight.detach().std()))
