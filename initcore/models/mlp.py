"""A plain multi-layer perceptron, the notebook's network for depth and activation experiments."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from initcore.models.activations import check_activation, make_activation
from initcore.models.points import Measure


def _positive(**sizes: int) -> None:
    for name, value in sizes.items():
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")


@dataclass(frozen=True)
class MLPConfig:
    in_features: int = 512  # size of the input x
    width: int = 512  # output size of every Linear layer
    depth: int = 10  # number of Linear layers
    activation: str = "tanh"  # applied after every layer but the last
    bias: bool = True  # Linear layers carry a bias

    def __post_init__(self) -> None:
        _positive(in_features=self.in_features, width=self.width, depth=self.depth)
        check_activation(self.activation)


class MLP(nn.Module):
    """``depth`` Linear layers, the activation after every layer but the last.

    ``layers[i]`` is the i-th Linear and ``acts[i]`` what follows it (Identity for the last). Row
    ``layers.i`` of a probe trace is declared in ``MEASURE``: the output of ``acts[i]`` (the last
    layer's own output), the Linear's output as its pre-activation, the Linear's weight's gradient.
    """

    def __init__(self, in_features: int = 512, width: int = 512, depth: int = 10,
                 activation: str = "tanh", bias: bool = True) -> None:
        super().__init__()
        self.config = cfg = MLPConfig(in_features, width, depth, activation, bias)
        self.layers = nn.ModuleList(
            nn.Linear(cfg.in_features if i == 0 else cfg.width, cfg.width, bias=cfg.bias) for i in range(cfg.depth)
        )
        self.acts = nn.ModuleList(
            make_activation(cfg.activation) if i < cfg.depth - 1 else nn.Identity() for i in range(cfg.depth)
        )
        last = cfg.depth - 1
        self.ROLES = {f"layers.{i}.weight": "head" if i == last else "hidden" for i in range(cfg.depth)}
        self.ROLES.update({f"layers.{i}.bias": "bias" for i in range(cfg.depth)})
        bounded = cfg.activation in ("tanh", "sigmoid")
        self.MEASURE = {f"layers.{i}": Measure("linear", module=f"acts.{i}" if i < last else f"layers.{i}",
                                               preact=f"layers.{i}", params=(f"layers.{i}.weight",),
                                               bounded=bounded and i < last)
                        for i in range(cfg.depth)}

    @classmethod
    def from_config(cls, cfg: MLPConfig) -> MLP:
        return cls(cfg.in_features, cfg.width, cfg.depth, cfg.activation, cfg.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for linear, act in zip(self.layers, self.acts, strict=True):
            x = act(linear(x))
        return x
