"""Initializer functions: each matches torch's in the base case, as mup's tests do for its variants."""

import math

import torch
from torch import nn

from initcore.init import kaiming_normal_gain_, kaiming_uniform_gain_, lecun_normal_, trunc_normal_sigma_


def _pair(shape=(64, 200)):
    return torch.empty(shape), torch.empty(shape)


def test_kaiming_with_gain_sqrt2_is_torch_kaiming_relu():
    a, b = _pair()
    kaiming_normal_gain_(a, math.sqrt(2), generator=torch.Generator().manual_seed(3))
    nn.init.kaiming_normal_(b, nonlinearity="relu", generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(a, b, rtol=1e-6, atol=0)
    kaiming_uniform_gain_(a, math.sqrt(2), generator=torch.Generator().manual_seed(3))
    nn.init.kaiming_uniform_(b, nonlinearity="relu", generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(a, b, rtol=1e-6, atol=0)


def test_lecun_normal_is_torch_kaiming_linear():
    a, b = _pair()
    lecun_normal_(a, generator=torch.Generator().manual_seed(5))
    nn.init.kaiming_normal_(b, nonlinearity="linear", generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(a, b, rtol=1e-6, atol=0)


def test_trunc_normal_sigma_bounds_in_units_of_std():
    w = trunc_normal_sigma_(torch.empty(200_000), std=0.02, n_sigma=3.0, generator=torch.Generator().manual_seed(0))
    assert w.abs().max() <= 0.06
    # std of N(0,1) truncated at +-3: sqrt(1 - 2*3*phi(3)/(2*Phi(3)-1)) = 0.98658
    phi3 = math.exp(-4.5) / math.sqrt(2 * math.pi)
    expected = 0.02 * math.sqrt(1 - 6 * phi3 / math.erf(3 / math.sqrt(2)))
    # standard error of a sample std over 200k draws: std / sqrt(2n) ~ 3e-5 relative to 0.02
    assert abs(w.std().item() - expected) < 5 * expected / math.sqrt(2 * 200_000)
    # torch's own bounds are absolute: with its defaults (+-2) std 0.02 truncates nothing
    t = nn.init.trunc_normal_(torch.empty(200_000), std=0.02, generator=torch.Generator().manual_seed(0))
    assert t.abs().max() > 0.06
