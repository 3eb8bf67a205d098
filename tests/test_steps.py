"""initcore.steps: the probe's frame over training steps, against the same steps replayed by hand."""

from __future__ import annotations

import copy
import math

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from initcore import init, probe
from initcore.models import MLP
from initcore.probe import precision
from initcore.steps import PARAM_STATISTICS, Batch, trace_steps


def _setup(seed: int = 0, width: int = 16):
    g = torch.Generator().manual_seed(seed)
    model = init.apply(MLP(6, width, 3, "tanh"), "kaiming_normal", generator=g)
    batch = Batch(torch.randn(5, 6, generator=g), torch.randn(5, 2, generator=g))
    return model, batch


def _readout(out):
    return out[:, :2]


def _loss(pred, y):
    return F.mse_loss(pred, y)


def _rms(x: torch.Tensor) -> float:
    return float(x.detach().double().square().mean().sqrt())


def _rows(model, x) -> dict[str, torch.Tensor]:
    """Each row's output, as the MLP declares it: after the activation (the last layer's own output)."""
    out, rows = x, {}
    for i, (linear, act) in enumerate(zip(model.layers, model.acts, strict=True)):
        out = act(linear(out))
        rows[f"layers.{i}"] = out.detach()
    return rows


def _replay(model, batches, steps, lr):
    """The same SGD steps by hand: states of the model after 0 .. steps steps."""
    model = copy.deepcopy(model)
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    states = [copy.deepcopy(model)]
    for t in range(steps):
        x, y = batches[t]
        opt.zero_grad()
        _loss(_readout(model(x)), y).backward()
        opt.step()
        states.append(copy.deepcopy(model))
    return states


def test_the_frame_holds_what_the_steps_did():
    model, batch = _setup()
    states = _replay(model, [batch] * 3, 3, lr=0.1)
    frame = trace_steps(model, batch, torch.optim.SGD(model.parameters(), lr=0.1), 3, _loss, readout=_readout)
    assert sorted(frame["step"].unique()) == [0, 1, 2, 3]
    h0 = _rows(states[0], batch.inputs)
    for t, state in enumerate(states):
        at = frame[frame["step"] == t].set_index("module")
        ht = _rows(state, batch.inputs)
        for name, out in ht.items():
            assert at.loc[name, "act_rms"] == pytest.approx(_rms(out), rel=1e-6)
            assert at.loc[name, "act_change_rms"] == pytest.approx(_rms(out - h0[name]), rel=1e-5, abs=1e-9)
        pred, pred0 = _readout(state(batch.inputs)), _readout(states[0](batch.inputs))
        assert at.loc["output", "kind"] == "output"
        assert at.loc["output", "act_rms"] == pytest.approx(_rms(pred), rel=1e-6)
        assert at.loc["output", "act_change_rms"] == pytest.approx(_rms(pred - pred0), rel=1e-5, abs=1e-9)
        for name, w in state.named_parameters():
            w0 = dict(states[0].named_parameters())[name]
            assert at.loc[name, "kind"] == "param"
            assert at.loc[name, "param_rms"] == pytest.approx(_rms(w), rel=1e-6)
            assert at.loc[name, "update_rms"] == pytest.approx(_rms(w - w0), rel=1e-5, abs=1e-9)
            if _rms(w0) > 0:
                assert at.loc[name, "update_ratio"] == pytest.approx(_rms(w - w0) / _rms(w0), rel=1e-5, abs=1e-9)
            else:  # the zero biases of kaiming_normal: no ratio
                assert math.isnan(at.loc[name, "update_ratio"])
    assert (frame.loc[frame["step"] == 0, "act_change_rms"].dropna() == 0).all()
    assert (frame.loc[frame["step"] == 3, "update_rms"].dropna() > 0).all()  # every parameter moved


def test_a_stream_is_measured_on_its_first_batch_and_stepped_on_each():
    model, _ = _setup()
    g = torch.Generator().manual_seed(1)
    batches = [Batch(torch.randn(5, 6, generator=g), torch.randn(5, 2, generator=g)) for _ in range(2)]
    states = _replay(model, batches, 2, lr=0.1)
    frame = trace_steps(model, iter(batches), torch.optim.SGD(model.parameters(), lr=0.1), 2, _loss,
                        readout=_readout)
    for t, state in enumerate(states):
        at = frame[frame["step"] == t].set_index("module")
        assert at.loc["layers.2", "act_rms"] == pytest.approx(_rms(_rows(state, batches[0].inputs)["layers.2"]),
                                                              rel=1e-6)
    for name, w in model.named_parameters():  # the model trained on batch 0, then batch 1
        torch.testing.assert_close(w, dict(states[-1].named_parameters())[name])


def test_probe_columns_come_with_a_step_and_the_parameter_statistics():
    model, batch = _setup()
    frame = trace_steps(model, batch, torch.optim.SGD(model.parameters(), lr=0.01), 1, _loss, readout=_readout)
    assert list(frame.columns[:4]) == ["step", *probe.ID_COLUMNS]
    assert set(probe.STATISTICS) <= set(frame.columns) and set(PARAM_STATISTICS) <= set(frame.columns)
    per_step = frame.groupby("step")["module"].apply(list)
    assert per_step[0] == per_step[1] == ["layers.0", "layers.1", "layers.2", "output",
                                          *(n for n, _ in model.named_parameters())]


def test_one_pass_per_step_on_a_fixed_batch():
    model, batch = _setup()
    calls = []
    model.register_forward_hook(lambda *a: calls.append(1))
    trace_steps(model, batch, torch.optim.SGD(model.parameters(), lr=0.01), 3, _loss, readout=_readout)
    assert len(calls) == 4  # steps 0..3 traced; each trace's backward made the next step's gradients


def test_numbers_cross_to_the_host_once_per_pass(monkeypatch):
    """On the device path (forced on the CPU) a trace copies once (``tolist``); the steps' own numbers once
    at the end (``cpu``); no ``item``."""
    from initcore.probe import tracing

    monkeypatch.setattr(tracing, "_HOST_REDUCTIONS", False)
    model, batch = _setup()  # before counting: init.apply's check of its draws reads samples on the host
    counts = {"item": 0, "tolist": 0, "cpu": 0}
    for method in counts:
        original = getattr(torch.Tensor, method)

        def counted(self, *args, _original=original, _method=method, **kwargs):
            counts[_method] += 1
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, method, counted)
    trace_steps(model, batch, torch.optim.SGD(model.parameters(), lr=0.01), 2, _loss, readout=_readout,
                statistics="lean")
    assert counts == {"item": 0, "tolist": 3, "cpu": 1}


def test_zero_steps_is_one_trace():
    model, batch = _setup()
    frame = trace_steps(model, batch, torch.optim.SGD(model.parameters(), lr=0.01), 0, _loss, readout=_readout)
    assert set(frame["step"]) == {0}
    assert np.all(frame.loc[frame["kind"] == "param", "update_rms"] == 0)


@pytest.mark.parametrize("steps, data, match", [
    (-1, None, "steps must be a non-negative integer"),
    (3, "two", "data ran out after 2 batches; 3 steps need 3"),
    (1, "tensors", "data must yield initcore.steps.Batch"),
])
def test_bad_input_says_what_is_valid(steps, data, match):
    model, batch = _setup()
    if data == "two":
        data = [batch, batch]
    elif data == "tensors":
        data = [batch.inputs]
    else:
        data = batch
    with pytest.raises(ValueError, match=match):
        trace_steps(model, data, torch.optim.SGD(model.parameters(), lr=0.01), steps, _loss, readout=_readout)


# --- precision over the steps (opt-in: formats=) -------------------------------------------------------------

PRECISION_FORMATS = ("float16", "float8_e4m3fn", "float8_e5m2")


def _replay_tensors(model, batch, steps, lr):
    """Adam's steps by hand, and per step what the precision table measures: each row's output and its
    gradient, each weight and its gradient, and the update the next step adds (x: the table scales them)."""
    model = copy.deepcopy(model)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    found = []
    for t in range(steps + 1):
        model.zero_grad(set_to_none=True)
        out, rows = batch.inputs, {}
        for i, (linear, act) in enumerate(zip(model.layers, model.acts, strict=True)):
            out = act(linear(out))
            out.retain_grad()
            rows[f"layers.{i}"] = out
        _loss(_readout(out), batch.targets).backward()
        tensors = {}
        for name, h in rows.items():
            tensors[(name, "output", "")] = h.detach().clone()
            tensors[(name, "output_grad", "")] = h.grad.clone()
        weights = {f"layers.{i}": linear.weight for i, linear in enumerate(model.layers)}
        for name, w in weights.items():
            tensors[(name, "weight", f"{name}.weight")] = w.detach().clone()
            tensors[(name, "weight_grad", f"{name}.weight")] = w.grad.clone()
        found.append(tensors)
        if t == steps:
            break
        before = {name: w.detach().clone() for name, w in weights.items()}
        opt.step()
        for name, w in weights.items():
            tensors[(name, "update", f"{name}.weight")] = w.detach() - before[name]
    return found


def _cast_fractions(x: torch.Tensor, scale: float, dtype: torch.dtype) -> tuple[float, float, float]:
    """flushed, subnormal, overflow fractions of x's nonzero entries by a cast of x·scale (limits from finfo)."""
    info = torch.finfo(dtype)
    y = x * scale
    c = y.to(dtype).float()
    over = ~torch.isfinite(c) | ((y / 2).to(dtype).float().abs() * 2 > info.max)  # a saturating cast clips
    nz = x != 0
    n = nz.sum().item()
    return (((c == 0) & nz).sum().item() / n, ((c != 0) & (c.abs() < info.smallest_normal)).sum().item() / n,
            (over & nz).sum().item() / n)


def test_precision_per_step_equals_a_direct_cast_of_the_steps_tensors():
    from initcore.steps import UPDATE

    model, batch = _setup()
    steps, lr, loss_scale = 3, 0.01, 1024.0
    expected = _replay_tensors(model, batch, steps, lr)
    frame = trace_steps(model, batch, torch.optim.Adam(model.parameters(), lr=lr), steps, _loss, readout=_readout,
                        formats=PRECISION_FORMATS, loss_scale=loss_scale)
    table = frame.attrs["precision"]
    assert list(table.columns[:2]) == ["step", "module"]
    checked = set()
    for t, tensors in enumerate(expected):
        at = table[table["step"] == t]
        kinds = set(at["tensor"])
        assert kinds == {"output", "output_grad", "weight", "weight_grad"} | ({UPDATE} if t < steps else set())
        for (module, kind, param), x in tensors.items():
            rows = at[(at["module"] == module) & (at["tensor"] == kind) & (at["param"] == param)]
            assert len(rows) == 2 * len(PRECISION_FORMATS), (t, module, kind)
            for _, r in rows.iterrows():
                dtype = getattr(torch, r["format"])
                if r["scaling"] == "none":  # gradients under the loss scale, the rest as they are
                    assert r["scale"] == (loss_scale if kind.endswith("_grad") else 1.0)
                fractions = _cast_fractions(x, r["scale"], dtype)
                assert (r["flushed"], r["subnormal"], r["overflow"]) == pytest.approx(fractions, abs=0), \
                    (t, module, kind, r["format"], r["scaling"])
                amax = float(x.abs().max()) * r["scale"]
                assert r["amax"] == pytest.approx(amax, rel=1e-6)
                assert r["headroom_bits"] == pytest.approx(math.log2(torch.finfo(dtype).max / amax), abs=1e-6)
                checked.add((kind, r["format"]))
    assert len(checked) == 5 * len(PRECISION_FORMATS)
    # Adam's first update is lr·sign(g): every entry (of a nonzero gradient) +-lr, below e4m3fn's 2^-6
    first = table[(table["step"] == 0) & (table["tensor"] == UPDATE) & (table["scaling"] == "none")]
    assert np.allclose(first["amax"], lr, rtol=1e-5)
    assert (first.loc[first["format"] == "float8_e4m3fn", "subnormal"] == 1).all()


def test_precision_is_opt_in_and_changes_nothing_else():
    model, batch = _setup()
    twin = copy.deepcopy(model)
    plain = trace_steps(model, batch, torch.optim.Adam(model.parameters(), lr=0.01), 2, _loss, readout=_readout)
    asked = trace_steps(twin, batch, torch.optim.Adam(twin.parameters(), lr=0.01), 2, _loss, readout=_readout,
                        formats="bfloat16")
    assert "precision" not in plain.attrs
    assert set(asked.attrs["precision"]["format"]) == {"bfloat16"}
    assert set(asked.attrs["precision"]["step"]) == {0, 1, 2}
    asked.attrs.clear()
    pd.testing.assert_frame_equal(plain, asked)
    for (name, w), v in zip(model.named_parameters(), twin.parameters(), strict=True):
        torch.testing.assert_close(w, v, rtol=0, atol=0, msg=name)  # the same steps taken
    everything = trace_steps(model, batch, torch.optim.SGD(model.parameters(), lr=0.01), 1, _loss,
                             readout=_readout, statistics="precision")
    assert set(everything.attrs["precision"]["format"]) == set(precision.FORMATS)


@pytest.mark.parametrize("formats, loss_scale, match", [
    ("float17", 1.0, "unknown format 'float17'; valid: float16, bfloat16"),
    ("float16", 0.0, "loss_scale must be a positive finite number"),
])
def test_bad_precision_input_says_what_is_valid(formats, loss_scale, match):
    model, batch = _setup()
    with pytest.raises(ValueError, match=match):
        trace_steps(model, batch, torch.optim.Adam(model.parameters(), lr=0.01), 1, _loss, readout=_readout,
                    formats=formats, loss_scale=loss_scale)


def test_precision_on_the_device_path_equals_the_hosts(monkeypatch):
    """Off the CPU the counts stay on the device (precision's torch path, forced here on the CPU): the same table."""
    from initcore.probe import tracing

    model, batch = _setup()
    twin = copy.deepcopy(model)
    host = trace_steps(model, batch, torch.optim.Adam(model.parameters(), lr=0.01), 2, _loss, readout=_readout,
                       formats=PRECISION_FORMATS, loss_scale=64.0).attrs["precision"]
    monkeypatch.setattr(precision, "_HOST", False)
    monkeypatch.setattr(tracing, "_HOST_REDUCTIONS", False)
    device = trace_steps(twin, batch, torch.optim.Adam(twin.parameters(), lr=0.01), 2, _loss, readout=_readout,
                         formats=PRECISION_FORMATS, loss_scale=64.0).attrs["precision"]
    counts = ["step", "module", "tensor", "param", "format", "scaling", "scale", "n", "nonzero", "amax", "flushed",
              "subnormal", "overflow", "headroom_bits"]
    pd.testing.assert_frame_equal(host[counts], device[counts], check_exact=True)
    # mean and std: numpy's pairwise sums against torch's, float32 (1e-5 as tests/probe/test_precision.py)
    np.testing.assert_allclose(host[["mean", "std"]], device[["mean", "std"]], rtol=1e-5, atol=1e-12)
