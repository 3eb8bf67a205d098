"""Initializers that ``torch.nn.init`` lacks, in its conventions: in place, tensor first, ``generator=``."""

from __future__ import annotations

import math

import torch
from torch import nn


def _fan_in(tensor: torch.Tensor) -> int:
    return nn.init._calculate_fan_in_and_fan_out(tensor)[0]


def lecun_normal_(tensor: torch.Tensor, gain: float = 1.0, generator: torch.Generator | None = None) -> torch.Tensor:
    r"""Fill ``tensor`` from N(0, gain²/fan_in) (LeCun et al., 1998, "Efficient BackProp").

    .. math:: \text{std} = \frac{\text{gain}}{\sqrt{\text{fan\_in}}}

    Args:
        tensor: an n-dimensional tensor, n >= 2, in (fan_out, fan_in, ...) layout.
        gain: a scaling factor.
        generator: the torch Generator to sample from.

    Example:
        >>> w = torch.empty(3, 100)
        >>> _ = lecun_normal_(w)
    """
    std = gain / math.sqrt(_fan_in(tensor))
    return nn.init.normal_(tensor, 0.0, std, generator=generator)


def kaiming_normal_gain_(tensor: torch.Tensor, gain: float, generator: torch.Generator | None = None) -> torch.Tensor:
    r"""He's fan_in normal init with an explicit gain instead of a nonlinearity name.

    .. math:: \text{std} = \frac{\text{gain}}{\sqrt{\text{fan\_in}}}

    With gain = √2 this is ``torch.nn.init.kaiming_normal_(tensor, nonlinearity="relu")``.

    Example:
        >>> _ = kaiming_normal_gain_(torch.empty(3, 100), gain=math.sqrt(2))
    """
    return lecun_normal_(tensor, gain, generator)


def kaiming_uniform_gain_(tensor: torch.Tensor, gain: float, generator: torch.Generator | None = None) -> torch.Tensor:
    r"""He's fan_in uniform init with an explicit gain instead of a nonlinearity name.

    .. math:: \text{bound} = \text{gain} \sqrt{\frac{3}{\text{fan\_in}}}

    With gain = √2 this is ``torch.nn.init.kaiming_uniform_(tensor, nonlinearity="relu")``.

    Example:
        >>> _ = kaiming_uniform_gain_(torch.empty(3, 100), gain=math.sqrt(2))
    """
    bound = gain * math.sqrt(3.0 / _fan_in(tensor))
    return nn.init.uniform_(tensor, -bound, bound, generator=generator)


def trunc_normal_sigma_(tensor: torch.Tensor, std: float, n_sigma: float = 3.0,
                        generator: torch.Generator | None = None) -> torch.Tensor:
    r"""Fill ``tensor`` from N(0, std²) truncated at ±n_sigma·std.

    ``torch.nn.init.trunc_normal_``'s bounds ``a, b`` are absolute values, not multiples of std:
    with its defaults (±2) and std 0.02 it truncates nothing. This takes the bound in units of σ.

    .. math:: w \sim \mathcal{N}(0, \text{std}^2),\ |w| \le n_\sigma \cdot \text{std}

    Example:
        >>> w = trunc_normal_sigma_(torch.empty(1000), std=0.02)
        >>> bool(w.abs().max() <= 0.06)
        True
    """
    bound = n_sigma * std
    return nn.init.trunc_normal_(tensor, 0.0, std, -bound, bound, generator=generator)
