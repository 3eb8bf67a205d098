"""initcore.probe.reduce: exact sums over millions of entries, on the host path and the device path."""

from __future__ import annotations

import pytest
import torch

from initcore import probe
from initcore.probe import reduce, tracing


@pytest.mark.parametrize("host", [True, False], ids=["cpu-numpy-path", "device-path"])
def test_the_std_of_a_2048_square_gradient_is_exact(monkeypatch, host):
    # A plain float32 dot over 2048 x 2048 entries was off by 2.5e-5 relative (measured; the issue saw
    # 3e-5 on grad_std): partial sums of 1024 in float32, added in float64, err by ~1e-9. 1e-7 is what
    # float32 inputs allow (their own rounding is 6e-8), 2 orders of magnitude above the exact path's error.
    monkeypatch.setattr(tracing, "_HOST_REDUCTIONS", host)
    torch.manual_seed(0)
    layer = torch.nn.Linear(2048, 2048, bias=False)
    x = torch.randn(8, 2048) + 0.3  # a mean in the gradient, so the sums do not cancel
    frame = probe.trace(torch.nn.Sequential(layer), x, select=torch.nn.Linear)
    g = layer.weight.grad.double()
    for ours, exact in (("grad_norm", g.norm()), ("grad_std", g.std()), ("grad_mean", g.mean())):
        torch.testing.assert_close(torch.tensor(frame[ours][0], dtype=torch.float64), exact, rtol=1e-7, atol=0,
                                   msg=ours)


def test_small_tensors_take_the_plain_dot_and_large_ones_the_chunks():
    torch.manual_seed(0)
    small, large = torch.randn(reduce.EXACT_FROM), torch.randn(reduce.EXACT_FROM + 3 * reduce.CHUNK + 5)
    for t in (small, large):
        exact = t.double().square().sum().item()
        assert reduce._host_squares(t.numpy()) == pytest.approx(exact, rel=1e-6)
        assert reduce._device_squares(t).item() == pytest.approx(exact, rel=1e-6)  # the tail counts too
    assert reduce._device_squares(large).dtype == torch.float64
    assert reduce._device_squares(small).dtype == torch.float32


def test_moments_combine_exactly_over_parameters():
    torch.manual_seed(0)
    a, b = torch.randn(300) * 2 + 1, torch.randn(50) - 3
    for host in (True, False):
        parts = []
        for t in (a, b):
            values, centred, _ = reduce.moments(t, host)
            parts.append(([float(v) for v in values], t.numel(), centred))
        merged = reduce.merge_grads(parts)
        both = torch.cat([a, b]).double()
        assert merged["grad_norm"] == pytest.approx(both.norm().item(), rel=1e-6)
        assert merged["grad_std"] == pytest.approx(both.std().item(), rel=1e-6)
        assert merged["grad_mean"] == pytest.approx(both.mean().item(), rel=1e-5)
