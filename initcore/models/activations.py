"""The activation functions a model may use, by name."""

from __future__ import annotations

from torch import nn

_FACTORIES = {
    "linear": nn.Identity,
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
    "relu": nn.ReLU,
    "leaky_relu": lambda: nn.LeakyReLU(0.01),  # torch's default slope
    "gelu": nn.GELU,  # exact erf form, torch's default
    "silu": nn.SiLU,
    "selu": nn.SELU,
}
ACTIVATIONS = tuple(_FACTORIES)


def check_activation(name: str) -> str:
    """Return ``name`` if it is a known activation, else raise ValueError listing the valid ones."""
    if name not in _FACTORIES:
        raise ValueError(f"unknown activation {name!r}; valid: {', '.join(ACTIVATIONS)}")
    return name


def make_activation(name: str) -> nn.Module:
    """A fresh activation module for ``name``."""
    return _FACTORIES[check_activation(name)]()
