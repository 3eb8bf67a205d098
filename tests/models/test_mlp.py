"""MLP: layer count, where the activation goes, shapes, bad sizes."""

import pytest
import torch

from initcore.models import ACTIVATIONS, MLP, make_activation


@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_forward_backward_shapes(activation):
    model = MLP(in_features=12, width=16, depth=4, activation=activation)
    x = torch.randn(5, 12, requires_grad=True)
    y = model(x)
    assert y.shape == (5, 16)
    y.square().mean().backward()
    assert x.grad.shape == x.shape
    assert all(p.grad is not None for p in model.parameters())


def test_activation_after_every_layer_but_the_last():
    model = MLP(in_features=6, width=8, depth=3, activation="tanh")
    x = torch.randn(4, 6)
    h = x
    for i, layer in enumerate(model.layers):
        h = layer(h)
        if i < 2:
            h = torch.tanh(h)
    torch.testing.assert_close(model(x), h, rtol=0, atol=0)
    assert len(model.layers) == 3


def test_no_bias():
    model = MLP(4, 4, 2, "relu", bias=False)
    assert all(layer.bias is None for layer in model.layers)


@pytest.mark.parametrize("kwargs, match", [
    ({"width": 0}, "width must be a positive integer"),
    ({"depth": -1}, "depth must be a positive integer"),
    ({"in_features": 2.5}, "in_features must be a positive integer"),
    ({"activation": "relu6"}, "unknown activation 'relu6'; valid: linear, tanh"),
])
def test_bad_input_names_what_is_valid(kwargs, match):
    args = {"in_features": 4, "width": 4, "depth": 2, "activation": "tanh", **kwargs}
    with pytest.raises(ValueError, match=match):
        MLP(**args)


def test_leaky_relu_uses_torch_default_slope():
    assert make_activation("leaky_relu").negative_slope == 0.01
