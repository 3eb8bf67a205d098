"""initcore.steps: the probe's frame over training steps, against the same steps replayed by hand."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from initcore import init, probe
from initcore.models import MLP
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
