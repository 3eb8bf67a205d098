"""initcore.probe.spans: each row's tensors' largest, 1%-quantile and smallest nonzero |x|, against the tensors
of the same pass computed by hand on a plain torch model."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from initcore.probe import spans


def test_span_of_a_hand_made_tensor():
    x = torch.tensor([0.0, -3.0, 0.5, 0.0, 2.0, -0.25] + [1.0] * 96)  # 100 nonzero entries
    n, nonzero, amax, low, smallest = spans.span_of(x, 0.02)  # int(0.02 * 99) = 1: the second smallest
    assert (n, nonzero, amax, low, smallest) == (102.0, 100.0, 3.0, 0.5, 0.25)
    assert spans.span_of(x, 0.01)[3] == spans.span_of(x, 0.0)[3] == 0.25  # int(0.99) = 0: the smallest
    n, nonzero, *rest = spans.span_of(torch.zeros(7))
    assert (n, nonzero) == (7.0, 0.0) and np.isnan(rest).all()


def _direct(model: nn.Sequential, x: torch.Tensor, q: float) -> dict[tuple[str, str, str], tuple]:
    """The same pass by hand: each module's output and its gradient, each parameter and its gradient."""
    model.zero_grad(set_to_none=True)
    outs, h = {}, x
    for name, module in model.named_children():
        h = module(h)
        h.retain_grad()
        outs[name] = h
    h.square().mean().backward()
    found = {}
    for name, out in outs.items():
        found[(name, "output", "")] = spans.span_of(out, q)
        found[(name, "output_grad", "")] = spans.span_of(out.grad, q)
    for name, p in model.named_parameters():
        module = name.rpartition(".")[0]
        found[(module, "weight", name)] = spans.span_of(p, q)
        found[(module, "weight_grad", name)] = spans.span_of(p.grad, q)
    return found


def _sorted_quantile(t: torch.Tensor, q: float) -> float:
    a = t.detach().abs().flatten()
    a = a[a != 0].sort().values
    return float(a[int(q * (len(a) - 1))])


def test_spans_of_a_plain_model_equal_its_tensors():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 64), nn.ReLU(), nn.Linear(64, 4))
    x = torch.randn(32, 8)
    table = spans.spans(model, x, lambda out: out.square().mean(), quantile=0.05)
    expected = _direct(model, x, 0.05)
    got = {(r.module, r.tensor, r.param): (r.n, r.nonzero, r.amax, r.low, r.smallest)
           for r in table.itertuples(index=False)}
    assert set(got) == set(expected)  # every output, gradient, parameter and its gradient, once
    for key, values in expected.items():
        np.testing.assert_allclose(got[key], values, rtol=1e-6, err_msg=str(key))  # float32 pass vs pass
    relu_out = table[(table["module"] == "1") & (table["tensor"] == "output")].iloc[0]
    assert relu_out["nonzero"] < relu_out["n"]  # ReLU's zeros are not "small": they are left out
    w = model[0].weight
    low = table.loc[(table["param"] == "0.weight") & (table["tensor"] == "weight"), "low"].item()
    assert low == pytest.approx(_sorted_quantile(w, 0.05), rel=0)


def test_bad_quantile():
    with pytest.raises(ValueError, match=r"quantile must be in \[0, 1\)"):
        spans.spans(nn.Linear(2, 2), torch.randn(3, 2), quantile=1.0)
