"""The peer: unit-scaling's ``track_scales`` (graphcore-research/unit-scaling) records each tensor's abs max in
the forward and backward pass; the precision table's ``amax`` must be the same number on the same model and batch.

Exact equality, not a tolerance: a maximum of |x| involves no rounding, and both run the same float32 kernels
on identical copies of the parameters and the batch (track_scales deep-copies the model and replays its graph
with torch's own ops), so any difference would be a different tensor measured, which is what this guards.

unit-scaling's ``FPFormat`` limits are not torch's OCP fp8 ones: ``FPFormat(4, 3)`` has max 240 and smallest
normal 2^-7 (float8_e4m3fnuz's), not float8_e4m3fn's 448 and 2^-6; ``FPFormat(5, 2)`` has 57344 and 2^-15
(float8_e5m2fnuz's; float8_e5m2's smallest normal is 2^-14). Its plots' guide lines are those; the last test
pins the difference, so a comparison of plots states which format it draws.
"""

from __future__ import annotations

import os
import re

import pytest
import torch
from torch import nn

from initcore.probe import precision


def _unit_scaling():
    """The package: make installs it (scripts/install_zoo.py, a peer with --no-deps); elsewhere the tests skip,
    but not in CI (INITCORE_REQUIRE_ZOO), where a missing peer fails them."""
    if os.environ.get("INITCORE_REQUIRE_ZOO"):
        import unit_scaling
        return unit_scaling
    return pytest.importorskip("unit_scaling", reason="unit-scaling is not installed: python scripts/install_zoo.py")


class Block(nn.Module):
    """A pre-norm residual MLP block, written here (a user's module, not initcore's)."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.up = nn.Linear(width, 4 * width)
        self.act = nn.GELU()
        self.down = nn.Linear(4 * width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.down(self.act(self.up(self.norm(x))))


class Net(nn.Module):
    # track_scales traces from the top module's own forward: dynamo does not trace a frame of torch.nn's
    # (an nn.Sequential at the top gives it an empty graph), so the model is a user's class.
    def __init__(self, width: int = 32, depth: int = 2, n_out: int = 10) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(Block(width) for _ in range(depth))
        self.head = nn.Linear(width, n_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return self.head(x)


def _node_module(node) -> str:
    """The innermost module whose forward made the node (dynamo's nn_module_stack: "L['self'].blocks[0].up")."""
    stack = node.meta.get("nn_module_stack") or {}
    if not stack:
        return ""
    path = list(stack.values())[-1][0]
    path = re.sub(r"^L\['\w+'\]\.?", "", path)
    return re.sub(r"\[(\d+)\]", r".\1", path).replace("_modules['", "").replace("']", "")


def _param_name(clean: str) -> str:
    """A placeholder's clean name ("self_modules_blocks_modules_0_modules_up_parameters_weight") ->
    "blocks.0.up.weight"."""
    clean = re.sub(r"^[a-z]+_modules_", "", clean)
    return clean.replace("_modules_", ".").replace("_parameters_", ".")


def _peer_amax(model: nn.Module, x: torch.Tensor) -> dict[tuple[str, str, str], float]:
    """(module, tensor, param) -> abs max, as track_scales records it, keyed as the precision table is."""
    _unit_scaling()
    from unit_scaling.transforms import track_scales

    tracked = track_scales(model)
    tracked(x.clone()).mean().backward()  # initcore's loss="mean"
    found = {}
    nodes = list(tracked.scales_graph().nodes)
    params = {name for name, _ in model.named_parameters()}
    last_of = {}  # a module's output: the last float tensor its forward made
    for node in nodes:
        metrics = node.meta.get("metrics")
        if metrics is None:
            continue
        if node.op == "placeholder":
            name = _param_name(node.meta["clean_name"])
            if name in params:
                found[(name.rpartition(".")[0], "weight", name)] = metrics.fwd.abs_max
                found[(name.rpartition(".")[0], "weight_grad", name)] = metrics.bwd.abs_max
        elif node.op == "call_function":
            last_of[_node_module(node)] = metrics
    for module, metrics in last_of.items():
        found[(module, "output", "")] = metrics.fwd.abs_max
        found[(module, "output_grad", "")] = metrics.bwd.abs_max
    return found


@pytest.mark.parametrize("loss_scale", [1.0, 1024.0])  # a power of two: the scaled amax is exact too
def test_track_scales_abs_max_is_the_tables_amax(loss_scale: float) -> None:
    torch.manual_seed(0)
    model, x = Net(), torch.randn(8, 32) * 3.0
    theirs = _peer_amax(model, x)
    frame = precision.trace(model, x, loss_scale=loss_scale, formats="float16")
    table = frame.attrs["precision"]
    ours = table[table["scaling"] == "none"]
    keys = [(row.module, row.tensor, row.param) for row in ours.itertuples()]
    # the same tensors on both sides: each row's output (a Block's: its residual sum) and output gradient, each
    # parameter and its gradient (2 blocks x (block, norm, up, act, down) + head: 11 outputs; 14 parameters)
    assert sorted(keys) == sorted(theirs) and len(keys) == 2 * 11 + 2 * 14
    for key, amax in zip(keys, ours["amax"], strict=True):
        factor = loss_scale if key[1] in ("output_grad", "weight_grad") else 1.0
        assert amax == theirs[key] * factor, f"{key}: amax {amax} against track_scales' {theirs[key]}"


def test_the_peers_fp8_limits_are_the_fnuz_formats() -> None:
    _unit_scaling()
    from unit_scaling.formats import FPFormat

    e4m3, e5m2 = FPFormat(4, 3), FPFormat(5, 2)
    fn, fnuz = precision.format_of("float8_e4m3fn"), precision.format_of("float8_e4m3fnuz")
    assert (e4m3.max_absolute_value, e4m3.min_absolute_normal) == (fnuz.max, fnuz.tiny) == (240.0, 2.0**-7)
    assert (fn.max, fn.tiny) == (448.0, 2.0**-6)
    e5fnuz = precision.format_of("float8_e5m2fnuz")
    assert (e5m2.max_absolute_value, e5m2.min_absolute_normal) == (e5fnuz.max, e5fnuz.tiny) == (57344.0, 2.0**-15)
    assert precision.format_of("float8_e5m2").tiny == 2.0**-14
