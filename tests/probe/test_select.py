"""initcore.probe.select: which modules become rows, and the errors that say what is valid."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from initcore.models import MLP, Measure, Transformer
from initcore.probe import points


def _names(found):
    return [p.name for p in found]


def _model():
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Sequential(nn.Linear(8, 8), nn.LayerNorm(8)), nn.Linear(8, 2))


def test_default_takes_modules_owning_parameters_and_activations():
    found = points(_model())
    assert _names(found) == ["0", "1", "2.0", "2.1", "3"]
    assert [p.kind for p in found] == ["linear", "relu", "linear", "layernorm", "linear"]
    assert found[1].preact == "input" and found[0].preact is None
    assert len(found[0].params) == 2  # weight and bias


def test_select_by_type_pattern_list_and_callable():
    model = _model()
    assert _names(points(model, nn.Linear)) == ["0", "2.0", "3"]
    assert _names(points(model, (nn.ReLU, nn.LayerNorm))) == ["1", "2.1"]
    assert _names(points(model, "2.*")) == ["2.0", "2.1"]
    assert _names(points(model, ["0", "3"])) == ["0", "3"]
    assert _names(points(model, lambda name, m: name.endswith("1"))) == ["1", "2.1"]


def test_blocks_are_the_repeated_children_of_module_lists():
    model = Transformer(vocab_size=10, d_model=8, n_heads=2, d_ff=16, n_layers=3)
    found = points(model, "blocks")
    assert _names(found) == ["blocks.0", "blocks.1", "blocks.2"] and {p.kind for p in found} == {"block"}
    assert [p.layer for p in found] == [0, 1, 2]


def test_declarations_come_first_and_follow_measure():
    found = points(MLP(4, 4, 3))
    assert _names(found) == ["layers.0", "layers.1", "layers.2"]
    assert found[0].module_name == "acts.0" and found[2].module_name == "layers.2"  # the last layer is linear
    model = Transformer(vocab_size=10, d_model=8, n_heads=2, d_ff=16, n_layers=1)
    assert [(p.name, p.kind, p.attention) for p in points(model)] == [
        ("blocks.0.attn", "attn", True), ("blocks.0.ffn", "ffn", False), ("blocks.0", "block", False)]
    assert _names(points(model, "default"))[:2] == ["embed", "blocks.0.norm1"]


def test_a_selection_matching_nothing_lists_the_modules():
    with pytest.raises(ValueError, match=r"Sequential has no module matching select='h\.\*'; its modules: "
                                         r"\(root\) \(Sequential\), 0 \(Linear\), 1 \(ReLU\)"):
        points(_model(), "h.*")
    with pytest.raises(ValueError, match="Sequential declares no MEASURE"):
        points(_model(), "declared")
    with pytest.raises(ValueError, match=r"select=3: give a module type, a name pattern"):
        points(_model(), 3)


def test_bad_declarations_are_named():
    model = _model()
    model.MEASURE = {"x": Measure("linear")}
    with pytest.raises(ValueError, match="measures module 'x', which Sequential does not have"):
        points(model)
    model.MEASURE = {"0": Measure("linear", params=("0.weight", "0.scale"))}
    with pytest.raises(ValueError, match=r"names parameters \['0.scale'\]"):
        points(model)
    model.MEASURE = {"0": "linear"}
    with pytest.raises(ValueError, match="must be an initcore.models.Measure"):
        points(model)
    model.MEASURE = {"1": Measure("relu", preact="9")}
    with pytest.raises(ValueError, match="takes its pre-activation from module '9'"):
        points(model)


def test_a_bare_module_is_its_own_row():
    assert _names(points(nn.Linear(3, 3))) == [""]
    assert points(nn.Linear(3, 3))[0].params[0].shape == torch.Size([3, 3])


class _Residual(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.norm, self.fc = nn.LayerNorm(width), nn.Linear(width, width)

    def forward(self, x):
        return x + self.fc(torch.tanh(self.norm(x)))


def test_default_adds_the_residual_stream_after_each_block():
    model = nn.Sequential(nn.Linear(4, 8), *(_Residual(8) for _ in range(3)), nn.Linear(8, 2))
    found = points(model)
    assert _names(found) == ["0", "1", "1.norm", "1.fc", "2", "2.norm", "2.fc", "3", "3.norm", "3.fc", "4"]
    assert [p.name for p in found if p.kind == "block"] == ["1", "2", "3"]
    # a row's layer is the index of the block it lies in; outside every block, the first integer of its name
    assert [p.layer for p in found] == [0, 0, 0, 0, 1, 1, 1, 2, 2, 2, 4]
    assert _names(points(model, "blocks")) == ["1", "2", "3"]


def test_blocks_leave_a_flat_sequential_of_layers_alone():
    # Linear, ReLU, Linear, ... are each repeated children of the Sequential, but layers, not blocks.
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2))
    assert "block" not in {p.kind for p in points(model)}
    with pytest.raises(ValueError, match=r"has no module matching select='blocks'; its modules: \(root\)"):
        points(model, "blocks")


class SquaredReLUActivation(nn.Module):
    """Another library's activation module: a leaf named by the "...Activation" convention."""

    def forward(self, x):
        return torch.relu(x).square()


class _Scale(nn.Module):
    def forward(self, x):
        return 2 * x


def test_other_libraries_activation_modules_are_rows():
    model = nn.Sequential(nn.Linear(4, 8), SquaredReLUActivation(), _Scale(), nn.Linear(8, 2))
    found = {p.name: p for p in points(model)}
    assert list(found) == ["0", "1", "3"]  # a parameter-free module that is no activation is not a row
    assert found["1"].kind == "squaredreluactivation" and found["1"].preact == "input"
