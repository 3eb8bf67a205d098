"""initcore.probe.headroom: falls of headroom over steps, on tables of tensors scaled by exact powers of two
(the falls are then exact), and the flag on models built to lose headroom against healthy ones."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from initcore.probe import headroom, precision
from initcore.steps import Batch, trace_steps

FORMATS = ("float16", "float8_e4m3fn")


def _rows(step: int, module: str, x: torch.Tensor) -> pd.DataFrame:
    fmts = precision.formats_of(FORMATS)
    records = precision.decode(precision.counts(x, fmts), fmts, 1.0)
    return pd.DataFrame([{"step": step, "module": module, "kind": "linear", "layer": 0, "tensor": "output",
                          "param": "", **r} for r in records])[["step", *precision.COLUMNS]]


def _table(scales: dict[str, list[float]]) -> pd.DataFrame:
    """One coordinate per name: the same N(0, 1) draw times each step's scale."""
    x = torch.randn(4096, generator=torch.Generator().manual_seed(0))
    return pd.concat([_rows(t, name, x * s) for name, steps in scales.items() for t, s in enumerate(steps)],
                     ignore_index=True)


def test_floor_bits_is_log2_of_rms_over_the_smallest_normal():
    x = torch.randn(1000, generator=torch.Generator().manual_seed(1)) * 3e-3 + 1e-3
    table = _rows(0, "a", x)
    rms = float(x.double().square().mean().sqrt())
    for _, r in table.assign(floor=headroom.floor_bits(table)).iterrows():
        tiny = torch.finfo(getattr(torch, r["format"])).smallest_normal
        assert r["floor"] == pytest.approx(math.log2(rms * r["scale"] / tiny), abs=1e-6)  # float32 moments


def test_falls_are_the_bits_a_power_of_two_moved_each_side():
    # "grows": amax x8 by step 2 (room above falls 3 bits), "shrinks": rms /8 by step 1 (room below falls 3),
    # "steady": the same tensor at every step (falls 0), "dips": /4 at step 1 and back: the lowest counts
    table = _table({"grows": [1, 2, 8], "shrinks": [1, 2**-3, 2**-2], "steady": [1, 1, 1], "dips": [1, 2**-2, 1]})
    found = headroom.falls(table).set_index(["module", "format", "scaling"])
    for fmt in FORMATS:
        grows, shrinks = found.loc[("grows", fmt, "none")], found.loc[("shrinks", fmt, "none")]
        # exact up to log2's rounding of exact powers of two (1e-12)
        assert (grows["headroom_fall"], grows["floor_fall"]) == pytest.approx((3.0, 0.0), abs=1e-12)
        assert (shrinks["floor_fall"], shrinks["headroom_fall"]) == pytest.approx((3.0, 0.0), abs=1e-12)
        assert (grows["headroom_step"], shrinks["floor_step"]) == (2, 1)
        assert found.loc[("steady", fmt, "none"), ["headroom_fall", "floor_fall"]].tolist() == [0.0, 0.0]
        assert found.loc[("dips", fmt, "none"), "floor_fall"] == pytest.approx(2.0, abs=1e-12)
        # a per-tensor power-of-two scale follows amax: no room is lost on either side
        assert found.loc[("grows", fmt, "tensor"), ["headroom_fall", "floor_fall"]].tolist() == \
            pytest.approx([0.0, 0.0], abs=1e-12)
    assert (found["first_step"] == 0).all() and (found["last_step"] == 2).all()


def test_flag_keeps_falls_beyond_the_threshold_worst_first():
    table = _table({"grows": [1, 8], "shrinks": [1, 2**-5], "steady": [1, 1.5]})
    flagged = headroom.flag(table, 2.0, formats="float16")
    assert flagged[["module", "side"]].values.tolist() == [["shrinks", "underflow"], ["grows", "overflow"]]
    assert flagged["fall"].tolist() == pytest.approx([5.0, 3.0], abs=1e-12)
    assert headroom.flag(table, 3.5, formats="float16")["module"].tolist() == ["shrinks"]
    assert set(headroom.flag(table)["format"]) == set(FORMATS)
    assert headroom.flag(table, scaling="tensor").empty


def test_zeros_have_no_room_to_lose_and_a_tensor_that_becomes_zeros_lost_all():
    x = torch.randn(256, generator=torch.Generator().manual_seed(2))
    table = pd.concat([_rows(0, "zero_bias", x * 0), _rows(1, "zero_bias", x * 0.01),
                       _rows(0, "vanished", x), _rows(1, "vanished", x * 0)], ignore_index=True)
    found = headroom.falls(table).set_index(["module", "format", "scaling"])
    assert np.isnan(found.loc[("zero_bias", "float16", "none"), ["headroom_fall", "floor_fall"]]).all()
    assert found.loc[("vanished", "float16", "none"), "floor_fall"] == np.inf
    assert np.isnan(found.loc[("vanished", "float16", "none"), "headroom_fall"])
    assert headroom.flag(table, formats="float16")[["module", "side"]].values.tolist() == [["vanished", "underflow"]]


def _steps(model: nn.Module, batch: Batch, loss, lr: float, steps: int = 4) -> pd.DataFrame:
    params = [p for p in model.parameters() if p.requires_grad]
    frame = trace_steps(model, batch, torch.optim.Adam(params, lr=lr), steps, loss, formats=FORMATS)
    return frame.attrs["precision"]


def _growing(lr: float, seed: int):
    """A plain torch MLP under a loss that rewards a larger output: Adam moves every weight by ~lr a step."""
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(8, 32), nn.Tanh(), nn.Linear(32, 4))
    return model, Batch(torch.randn(16, 8), None), lambda pred, _: -pred.mean()


def _saturating(lr: float, seed: int):
    """A Linear into a tanh pushed towards the signs of fixed targets: the tanh saturates and the gradient
    through it, 1 - tanh², shrinks."""
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(32, 32), nn.Tanh())
    return model, Batch(torch.randn(16, 32), torch.randn(16, 32).sign()), lambda pred, y: -(pred * y).mean()


# Measured over seeds 0-5 (4 Adam steps, float16, unscaled): at lr 1e-3 no row of either model fell by more than
# 0.12 bits (0.97 under a per-tensor scale, whose power of two steps by one); at lr 0.5 the growing MLP's last
# weight lost 3.57-3.61 bits above, the saturating layer's weight gradient 3.42-4.10 bits below. The default
# threshold (2 bits) sits between, with more than a bit to spare on each side.
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_flag_fires_where_weights_grow_and_where_a_gradient_shrinks(seed: int):
    model, batch, loss = _growing(0.5, seed)
    flagged = headroom.flag(_steps(model, batch, loss, lr=0.5), formats="float16")
    grown = flagged[(flagged["tensor"] == "weight") & (flagged["side"] == "overflow")]
    assert "2.weight" in set(grown["param"]), flagged
    model, batch, loss = _saturating(0.5, seed)
    flagged = headroom.flag(_steps(model, batch, loss, lr=0.5), formats="float16")
    shrunk = flagged[(flagged["tensor"] == "weight_grad") & (flagged["side"] == "underflow")]
    assert "0.weight" in set(shrunk["param"]), flagged


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("build", [_growing, _saturating], ids=["growing", "saturating"])
def test_the_flag_stays_silent_on_healthy_steps(build, seed: int):
    model, batch, loss = build(1e-3, seed)
    table = _steps(model, batch, loss, lr=1e-3)
    assert headroom.flag(table).empty, headroom.flag(table)
    assert set(table["tensor"]) == {"output", "output_grad", "weight", "weight_grad", "update"}  # all looked at


@pytest.mark.parametrize("change, match", [
    ({"bits": 0}, "bits must be a positive number"),
    ({"bits": math.inf}, "bits must be a positive number"),
    ({"scaling": "delayed"}, "unknown scaling 'delayed'; valid: none, tensor"),
    ({"formats": "float17"}, "unknown format 'float17'; valid: float16, bfloat16"),
])
def test_bad_input_says_what_is_valid(change, match):
    table = _table({"a": [1, 2]})
    with pytest.raises(ValueError, match=match):
        headroom.flag(table, **change)


def test_a_table_without_steps_is_refused():
    table = _table({"a": [1, 2]}).drop(columns="step")
    with pytest.raises(ValueError, match="missing step.*trace_steps"):
        headroom.falls(table)


def test_adams_update_bound_is_reached_by_torchs_adam_and_never_passed():
    # step 2 by hand: a = (0.1·0.9, 0.1) / 0.19, b = (0.001·0.999, 0.001) / 0.001999
    a, b = np.array([0.09, 0.1]) / 0.19, np.array([0.000999, 0.001]) / 0.001999
    assert headroom.adam_update_bound(2) == pytest.approx(math.sqrt(np.sum(a * a / b)), rel=1e-12)
    lr, steps = 1e-3, 5
    for t in range(1, steps + 1):
        bound = headroom.adam_update_bound(t)
        i = np.arange(1, t + 1)
        worst = 0.1 * 0.9 ** (t - i) / (0.001 * 0.999 ** (t - i))  # g_i proportional to a_i / b_i
        g = torch.tensor(np.vstack([worst, np.random.default_rng(t).normal(size=(200, t))]).T)  # (t, 201)
        w = torch.zeros(201, dtype=torch.float64, requires_grad=True)
        opt = torch.optim.Adam([w], lr=lr, eps=1e-12)
        for step in range(t):
            before = w.detach().clone()
            w.grad = g[step].clone()
            opt.step()
        moved = (w.detach() - before).abs() / lr
        assert moved[0].item() == pytest.approx(bound, rel=1e-8)  # reached by the worst sequence
        assert (moved[1:] <= bound * (1 + 1e-12)).all()  # and never passed by 200 random ones


def test_adam_update_bound_refuses_step_zero():
    with pytest.raises(ValueError, match="step must be a positive integer"):
        headroom.adam_update_bound(0)
