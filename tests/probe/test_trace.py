"""initcore.probe.tracing on initcore's models: every statistic against a hand computation, rows and columns,
hooks, host copies (the declared measurement points; other models: test_any_model.py)."""

import math

import numpy as np
import pandas as pd
import pytest
import torch

from initcore import probe, theory
from initcore.models import MLP, TorchMHATransformer, Transformer
from initcore.probe import reduce, tracing

TOL = {"rtol": 1e-5, "atol": 1e-7}  # float32 reductions of a few hundred numbers, done in another order


def _close(actual, expected, **tol):
    torch.testing.assert_close(torch.as_tensor(float(actual), dtype=torch.float64),
                               torch.as_tensor(float(expected), dtype=torch.float64), equal_nan=True, **(tol or TOL))


def _tiny_mlp(activation: str, seed: int = 0) -> tuple[MLP, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    model = MLP(in_features=5, width=6, depth=3, activation=activation)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.8)
    return model, torch.randn(7, 5, generator=gen) * 2.0  # large enough for tanh to saturate somewhere


def _manual_mlp(model: MLP, x: torch.Tensor, loss):
    """Run the layers by hand; return per-layer (pre-activation, activation, weight grad, output grad)."""
    pres, acts = [], []
    h = x
    for i, linear in enumerate(model.layers):
        pre = h @ linear.weight.T + linear.bias
        h = model.acts[i](pre)
        pres.append(pre)
        acts.append(h)
    weights = [linear.weight for linear in model.layers]
    grads = torch.autograd.grad(loss(h), weights + acts)
    return pres, acts, grads[: len(weights)], grads[len(weights):]


@pytest.mark.parametrize("activation", ["tanh", "relu", "sigmoid"])
@pytest.mark.parametrize("loss", ["mean", "square"])
def test_mlp_statistics_equal_a_hand_computation(activation, loss):
    model, x = _tiny_mlp(activation)
    frame = probe.trace(model, x, loss=loss)
    loss_fn = (lambda out: out.mean()) if loss == "mean" else (lambda out: out.square().mean())
    pres, acts, wgrads, ograds = _manual_mlp(model, x, loss_fn)
    bounded = activation in ("tanh", "sigmoid")
    for i, row in frame.iterrows():
        a, pre, g = acts[i].detach(), pres[i].detach(), wgrads[i]
        _close(row.act_mean, a.mean())
        _close(row.act_std, a.std())  # unbiased, torch's default
        _close(row.act_rms, a.square().mean().sqrt())
        _close(row.act_min, a.min(), rtol=0, atol=0)
        _close(row.act_max, a.max(), rtol=0, atol=0)
        _close(row.dead_frac, (a == 0).double().mean(), rtol=1e-6, atol=0)  # a float32 fraction
        last = i == len(frame) - 1
        expected_sat = (a.abs() > 0.9).double().mean() if bounded and not last else math.nan
        _close(row.saturated_frac, expected_sat, rtol=1e-6, atol=0)
        _close(row.preact_mean, pre.mean())
        _close(row.preact_std, pre.std())
        _close(row.grad_norm, g.norm())
        _close(row.grad_mean, g.mean(), rtol=1e-4, atol=1e-9)  # a mean of signed numbers: relative error larger
        _close(row.grad_std, g.std())
        _close(row.out_grad_norm, ograds[i].norm())
        assert row.nan_count == 0 and row.inf_count == 0
    if activation == "relu":
        assert (frame.dead_frac.iloc[:-1] > 0).all()  # the check above compared something other than 0
    if bounded and activation == "tanh":
        assert (frame.saturated_frac.iloc[:-1] > 0).any()


def test_nan_and_inf_are_counted():
    model, x = _tiny_mlp("linear")
    x[0, 0] = x[2, 3] = math.nan  # rows 0 and 2 of layer 0's output: 12 NaNs
    x[1, 1] = math.inf  # row 1: +-inf times nonzero weights, 6 infinities
    frame = probe.trace(model, x)
    assert frame.nan_count[0] == 12 and frame.inf_count[0] == 6
    _close(frame.act_mean[0], math.nan)


def test_counts_beside_nan_follow_their_definitions():
    model, x = _tiny_mlp("tanh")
    with torch.no_grad():
        model.layers[0].weight[0].zero_()
        model.layers[0].bias[0] = 0.0  # unit 0 of layer 0 is exactly 0: dead
    x[0, 0] = math.nan  # NaN in row 0 of every layer; tanh(+-inf) = +-1 is saturated, not infinite
    x[1, 1] = math.inf
    frame = probe.trace(model, x)
    _, acts, _, _ = _manual_mlp(model, x, lambda out: out.mean())
    for i, row in frame.iterrows():
        a = acts[i].detach()
        assert row.nan_count == int(a.isnan().sum()) and row.inf_count == int(a.isinf().sum())
        _close(row.dead_frac, (a == 0).double().mean(), rtol=1e-6, atol=0)
        if i < 2:
            _close(row.saturated_frac, (a.abs() > 0.9).double().mean(), rtol=1e-6, atol=0)  # NaN > 0.9 is False
    assert frame.dead_frac[0] > 0 and frame.nan_count[0] > 0


def test_an_output_far_from_zero_keeps_its_std():
    # mean 1000, std ~1: sum(x^2) - sum(x)^2/n in float32 would lose every digit; the two passes do not.
    model, x = _tiny_mlp("tanh")
    with torch.no_grad():
        model.layers[2].bias.fill_(1000.0)
    frame = probe.trace(model, x, loss="square")
    _, acts, wgrads, _ = _manual_mlp(model, x, lambda out: out.square().mean())
    _close(frame.act_std[2], acts[2].detach().double().std(), rtol=1e-4, atol=0)
    _close(frame.preact_std[2], acts[2].detach().double().std(), rtol=1e-4, atol=0)
    _close(frame.grad_std[2], wgrads[2].double().std(), rtol=1e-4, atol=0)  # grads ~ 1000 * activations


@pytest.mark.parametrize("activation", ["tanh", "sigmoid", "relu"])
def test_the_cpu_shortcut_equals_the_path_of_other_devices(monkeypatch, activation):
    model, x = _tiny_mlp(activation)
    tmodel, idx = _tiny_transformer(Transformer, causal=True)
    fast = probe.trace(model, x), probe.trace(tmodel, idx, loss="random")
    monkeypatch.setattr(tracing, "_HOST_REDUCTIONS", False)  # torch ops and one host copy, as on CUDA
    slow = probe.trace(model, x), probe.trace(tmodel, idx, loss="random")
    for f, s in zip(fast, slow, strict=True):
        pd.testing.assert_frame_equal(f, s, rtol=1e-5, atol=1e-8)


def test_half_precision_is_reduced_in_float32():
    model, x = _tiny_mlp("tanh")
    frame = probe.trace(model.to(torch.bfloat16), x.to(torch.bfloat16))
    assert frame[["act_std", "preact_std", "grad_norm", "out_grad_norm"]].notna().all().all()
    assert (frame.act_std > 0).all()


def test_mlp_rows_and_columns():
    model, x = _tiny_mlp("tanh")
    frame = probe.trace(model, x)
    assert tuple(frame.columns) == probe.COLUMNS
    assert frame.module.tolist() == ["layers.0", "layers.1", "layers.2"]
    assert frame.kind.tolist() == ["linear"] * 3
    assert frame.layer.tolist() == [0, 1, 2] and frame.layer.dtype == np.int64
    assert all(frame[c].dtype == np.float64 for c in probe.STATISTICS)
    assert frame.saturated_frac.isna().tolist() == [False, False, True]  # the last layer is linear
    attention = ["logit_std", "attn_entropy", "attn_entropy_norm", "attn_max"]
    assert frame[attention].isna().all().all()
    assert probe.trace(*_tiny_mlp("relu")).saturated_frac.isna().all()  # unbounded activation


def _tiny_transformer(cls, causal: bool, seed: int = 0) -> tuple[Transformer, torch.Tensor]:
    torch.manual_seed(seed)
    model = cls(vocab_size=20, d_model=8, n_heads=2, d_ff=16, n_layers=2, causal=causal)
    return model, torch.randint(0, 20, (3, 5), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("cls", [Transformer, TorchMHATransformer])
def test_transformer_rows_and_columns(cls):
    model, idx = _tiny_transformer(cls, causal=False)
    frame = probe.trace(model, idx, loss="random")
    assert tuple(frame.columns) == probe.COLUMNS
    assert frame.module.tolist() == ["blocks.0.attn", "blocks.0.ffn", "blocks.0",
                                     "blocks.1.attn", "blocks.1.ffn", "blocks.1"]
    assert frame.kind.tolist() == ["attn", "ffn", "block"] * 2
    assert frame.layer.tolist() == [0, 0, 0, 1, 1, 1]
    attention = frame[["logit_std", "attn_entropy", "attn_entropy_norm", "attn_max"]]
    assert attention.notna().all(axis=1).tolist() == [True, False, False] * 2
    assert frame[["preact_std", "preact_mean", "saturated_frac"]].isna().all().all()
    assert frame[["act_std", "grad_norm", "out_grad_norm"]].notna().all().all()
    assert (frame.grad_norm > 0).all()


@pytest.mark.parametrize("cls", [Transformer, TorchMHATransformer])
def test_transformer_statistics_equal_a_hand_computation(cls):
    model, idx = _tiny_transformer(cls, causal=True)
    r = torch.randn(3, 5, 8, generator=torch.Generator().manual_seed(1))

    def loss(out):
        return (out * r).sum()

    frame = probe.trace(model, idx, loss=loss).set_index("module")
    x = model.embed(idx)  # a pre-norm block with plain residuals: x + attn(norm1(x)), then + ffn(norm2(.))
    outs = {}
    for i, block in enumerate(model.blocks):
        outs[f"blocks.{i}.attn"] = a = block.attn(block.norm1(x))
        x = x + a
        outs[f"blocks.{i}.ffn"] = f = block.ffn(block.norm2(x))
        outs[f"blocks.{i}"] = x = x + f
    names = list(outs)
    grads = torch.autograd.grad(loss(model.norm_f(x)), [outs[n] for n in names])
    model.zero_grad(set_to_none=True)
    loss(model(idx)).backward()
    for name, grad in zip(names, grads, strict=True):
        row, out = frame.loc[name], outs[name].detach()
        _close(row.act_mean, out.mean(), rtol=1e-4, atol=1e-6)
        _close(row.act_std, out.std(), rtol=1e-4, atol=1e-6)
        _close(row.out_grad_norm, grad.norm(), rtol=1e-4, atol=1e-6)
        i = int(name.split(".")[1])
        module = model.blocks[i] if name.count(".") == 1 else getattr(model.blocks[i], name.split(".")[2])
        g = torch.cat([p.grad.flatten() for p in module.parameters()])  # all of the submodule's parameters
        _close(row.grad_norm, g.norm(), rtol=1e-4, atol=1e-6)
        _close(row.grad_std, g.std(), rtol=1e-4, atol=1e-6)


def _manual_attention(logits: torch.Tensor) -> dict[str, float]:
    finite = torch.isfinite(logits)
    p = torch.softmax(logits, -1)
    entropy = -(p * p.log()).nan_to_num(0.0).sum(-1)  # 0 log 0 = 0 where a key is masked
    keys = finite.sum(-1)
    several = keys > 1
    return {"logit_std": logits[finite].std(), "attn_entropy": entropy.mean(),
            "attn_entropy_norm": (entropy[several] / keys[several].double().log()).mean(),
            "attn_max": p.max(-1).values.mean()}


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("cls", [Transformer, TorchMHATransformer])
def test_attention_statistics_equal_a_manual_softmax(cls, causal):
    model, idx = _tiny_transformer(cls, causal)
    frame = probe.trace(model, idx)
    with torch.no_grad():
        x = model.embed(idx)
        for i, block in enumerate(model.blocks):
            expected = _manual_attention(block.attn.logits(block.norm1(x)))
            row = frame.set_index("module").loc[f"blocks.{i}.attn"]
            for name, value in expected.items():
                _close(row[name], value, rtol=1e-5, atol=1e-6)
            x = block(x)


@pytest.mark.parametrize("cls", [Transformer, TorchMHATransformer])
def test_causal_entropy_is_normalized_by_log_of_keys_seen(cls):
    # Zero queries make every logit 0: query t attends uniformly over its t + 1 keys, entropy log(t + 1).
    model, idx = _tiny_transformer(cls, causal=True)
    with torch.no_grad():
        for block in model.blocks:
            if cls is Transformer:
                block.attn.q.weight.zero_()
                block.attn.q.bias.zero_()
            else:
                block.attn.mha.in_proj_weight[:8].zero_()
                block.attn.mha.in_proj_bias[:8].zero_()
    attn = probe.trace(model, idx).query("kind == 'attn'")
    T = idx.shape[1]
    _close(attn.attn_entropy.iloc[0], np.mean([math.log(t + 1) for t in range(T)]), rtol=1e-5, atol=1e-6)
    _close(attn.attn_entropy_norm.iloc[0], 1.0, rtol=1e-5, atol=1e-6)  # query 0 (one key) is left out
    _close(attn.attn_max.iloc[0], np.mean([1 / (t + 1) for t in range(T)]), rtol=1e-5, atol=1e-6)
    _close(attn.logit_std.iloc[0], 0.0, rtol=0, atol=1e-6)


def _hooks_left(model) -> int:
    modules = sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks)
                  + len(m._backward_pre_hooks) for m in model.modules())
    return modules + sum(len(getattr(p, "_post_accumulate_grad_hooks", None) or {}) for p in model.parameters())


@pytest.mark.parametrize("cls", [MLP, Transformer])
def test_hooks_are_removed_also_when_the_pass_raises(cls):
    model, inputs = _tiny_mlp("tanh") if cls is MLP else _tiny_transformer(cls, causal=False)

    def failing(out):
        raise RuntimeError("loss failed")

    probe.trace(model, inputs)
    assert _hooks_left(model) == 0
    with pytest.raises(RuntimeError, match="loss failed"):
        probe.trace(model, inputs, loss=failing)
    assert _hooks_left(model) == 0
    with pytest.raises(RuntimeError):  # the forward itself fails: wrong input shape
        probe.trace(model, inputs[:, :2].float() if cls is MLP else inputs.float())
    assert _hooks_left(model) == 0


def test_repeated_traces_do_not_accumulate_gradients():
    model, x = _tiny_mlp("tanh")
    first = probe.trace(model, x)
    pd.testing.assert_frame_equal(probe.trace(model, x), first)
    pd.testing.assert_frame_equal(probe.trace(model, x), first)


def test_training_mode_is_restored():
    model, x = _tiny_mlp("tanh")
    model.train()
    model.layers[1].eval()  # a mixed state comes back exactly
    before = [m.training for m in model.modules()]
    seen = []
    model.layers[0].register_forward_hook(lambda m, a, o: seen.append(m.training))
    probe.trace(model, x)
    assert seen == [False]  # traced in eval mode
    assert [m.training for m in model.modules()] == before
    with pytest.raises(IndexError):
        probe.trace(model, x, loss=lambda out: out.sum(dim=99))  # raises between forward and backward
    assert [m.training for m in model.modules()] == before
    model.eval()
    probe.trace(model, x, train=True)
    assert seen[-1] is True and not any(m.training for m in model.modules())


def test_to_long():
    model, x = _tiny_mlp("tanh")
    frame = probe.trace(model, x)
    long = probe.to_long(frame)
    assert list(long.columns) == ["module", "statistic", "value"]
    assert len(long) == int(frame[list(probe.STATISTICS)].notna().sum().sum())
    assert not long.value.isna().any()
    assert long.module.unique().tolist() == frame.module.tolist()  # module by module, in forward order
    first = long[long.module == "layers.0"]
    assert first.statistic.tolist() == [s for s in probe.STATISTICS if not np.isnan(frame.loc[0, s])]
    assert first.set_index("statistic").value["act_std"] == frame.act_std[0]


@pytest.mark.parametrize("host", [False, True], ids=["device-path", "cpu-numpy-path"])
def test_statistics_cross_to_the_host_once(monkeypatch, host):
    # The device path (CUDA's) gathers every number on the device and copies once; the CPU path reads
    # the tensors' memory with numpy and turns no tensor into a number, but for attention's four.
    monkeypatch.setattr(tracing, "_HOST_REDUCTIONS", host)
    model, x = _tiny_mlp("tanh")
    tmodel, idx = _tiny_transformer(Transformer, causal=True)
    calls = []
    real_tolist = torch.Tensor.tolist

    def no_item(self):
        raise AssertionError("a per-number .item() (a device sync on CUDA)")

    def counting_tolist(self):
        calls.append(self.numel())
        return real_tolist(self)

    for name in ("item", "__float__", "__int__"):
        monkeypatch.setattr(torch.Tensor, name, no_item)
    monkeypatch.setattr(torch.Tensor, "tolist", counting_tolist)
    frame = probe.trace(model, x)
    if host:
        assert calls == []
    else:
        assert len(calls) == 1 and calls[0] >= len(frame) * 10  # one copy holding every row's numbers
    calls.clear()
    probe.trace(tmodel, idx, loss="random")
    assert calls == ([4] * len(tmodel.blocks) if host else [calls[0]])
    assert host or calls[0] >= 6 * 8  # 6 rows of at least 8 numbers, in one copy


def test_the_sink_grows_past_its_estimate():
    sink = reduce.DeviceSink(2, torch.device("cpu"))
    first = sink.put([torch.tensor(1.0), torch.tensor(2, dtype=torch.int64)])
    second = sink.put([torch.tensor(3.0, dtype=torch.float64), torch.tensor(4.0), torch.tensor(5.0)])
    host = sink.to_host()
    assert host[first] == [1.0, 2.0] and host[second] == [3.0, 4.0, 5.0]


def test_bad_loss_and_statistics_name_the_choices():
    model, x = _tiny_mlp("tanh")
    with pytest.raises(ValueError, match="unknown loss 'sum'; valid: mean, square, random"):
        probe.trace(model, x, loss="sum")
    with pytest.raises(ValueError, match="unknown statistics preset 'fast'; valid: all, forward, lean"):
        probe.trace(model, x, statistics="fast")
    with pytest.raises(ValueError, match=r"unknown statistics \['act_sd'\]; valid: act_mean, act_std"):
        probe.trace(model, x, statistics=["act_std", "act_sd"])


def test_runs_on_every_device(device):
    model, x = _tiny_mlp("tanh")
    on_cpu = probe.trace(model, x)
    on_device = probe.trace(model.to(device), x.to(device))
    pd.testing.assert_frame_equal(on_device, on_cpu, rtol=1e-4, atol=1e-6)
    tmodel, idx = _tiny_transformer(Transformer, causal=True)
    pd.testing.assert_frame_equal(probe.trace(tmodel.to(device), idx.to(device), loss="random"),
                                  probe.trace(tmodel.cpu(), idx, loss="random"), rtol=1e-4, atol=1e-6)


def test_statistics_registry_describes_every_column():
    assert probe.COLUMNS == (*probe.ID_COLUMNS, *probe.STATISTICS)
    assert all(isinstance(v, str) and v and "\n" not in v for v in probe.STATISTICS.values())


def test_mlp_theory_uses_each_layers_fans():
    model = MLP(in_features=32, width=8, depth=3, activation="tanh")
    predicted = probe.mlp_theory(model, "xavier_normal")
    sigma_w2 = [32 * 2 / 40, 8 * 2 / 16, 8 * 2 / 16]  # fan_in * 2/(fan_in + fan_out)
    expected = theory.mlp_mean_field("tanh", 3, sigma_w2)
    np.testing.assert_allclose(predicted.preact_std_theory, expected["preact_std"], rtol=1e-12)
    assert predicted.saturated_frac_theory.isna().tolist() == [False, False, True]
    default = probe.mlp_theory(model, "torch_default")
    np.testing.assert_allclose(default.preact_std_theory[0], math.sqrt(1 / 3), rtol=1e-12)  # U(+-1/sqrt(fan_in))
    gpt2 = probe.mlp_theory(model, "gpt2")  # every strategy declares its targets: N(0, 0.02^2) on an MLP
    np.testing.assert_allclose(gpt2.preact_std_theory[0], math.sqrt(32) * 0.02, rtol=1e-12)
    with pytest.raises(ValueError, match="strategy 'deepnorm' needs a transformer"):
        probe.mlp_theory(model, "deepnorm")


def test_with_theory_puts_each_prediction_beside_its_measurement():
    model, x = _tiny_mlp("tanh")
    frame = probe.with_theory(probe.trace(model, x), probe.mlp_theory(model, "xavier_uniform"))
    cols = list(frame.columns)
    for measured in ("preact_std", "act_std", "act_mean", "dead_frac", "saturated_frac"):
        assert cols[cols.index(measured) + 1] == f"{measured}_theory"
