"""initcore.probe.tracing on models initcore did not write: each statistic against a hand computation with
plain hooks, the in-place activation, reused modules, container outputs, conv nets with BatchNorm, keyword
and token inputs, half precision, attention of any model that calls scaled_dot_product_attention."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from initcore import probe
from initcore.probe.attention import SDPAWatch

TOL = {"rtol": 1e-5, "atol": 1e-7}  # float32 reductions of a few thousand numbers, in another order


def _close(actual, expected, **tol):
    torch.testing.assert_close(torch.as_tensor(float(actual), dtype=torch.float64),
                               torch.as_tensor(float(expected), dtype=torch.float64), equal_nan=True, **(tol or TOL))


def _outputs_and_grads(model: nn.Module, x, names: list[str], loss=lambda out: out.mean()):
    """A second, plain collector: each named module's output by forward hook, its gradient by autograd."""
    modules = dict(model.named_modules())
    outs: dict[str, torch.Tensor] = {}
    handles = [modules[n].register_forward_hook(lambda m, a, o, n=n: outs.__setitem__(n, o)) for n in names]
    model.zero_grad(set_to_none=True)
    out = model(x)
    for h in handles:
        h.remove()
    grads = torch.autograd.grad(loss(out), [outs[n] for n in names], retain_graph=True)
    loss(out).backward()
    return {n: o.detach().clone() for n, o in outs.items()}, dict(zip(names, grads, strict=True))


def test_a_sequential_mlp_gets_a_row_per_linear_and_activation():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.Tanh(), nn.Linear(32, 32), nn.Tanh(), nn.Linear(32, 4))
    x = torch.randn(50, 16)
    frame = probe.trace(model, x)
    assert frame.module.tolist() == ["0", "1", "2", "3", "4"]
    assert frame.kind.tolist() == ["linear", "tanh", "linear", "tanh", "linear"]
    assert frame.layer.tolist() == [0, 1, 2, 3, 4]
    outs, grads = _outputs_and_grads(model, x, frame.module.tolist())
    for _, row in frame.iterrows():
        a, module = outs[row.module], model[int(row.module)]
        _close(row.act_mean, a.mean())
        _close(row.act_std, a.std())
        _close(row.out_grad_norm, grads[row.module].norm())
        params = list(module.parameters())
        if params:  # weight and bias together
            g = torch.cat([p.grad.flatten() for p in params])
            _close(row.grad_norm, g.norm())
            _close(row.grad_std, g.std())
            assert math.isnan(row.preact_std)
        else:  # an activation: its input is the pre-activation, and tanh is bounded
            _close(row.preact_std, outs[str(int(row.module) - 1)].std())
            _close(row.saturated_frac, (a.abs() > 0.9).double().mean(), rtol=1e-6, atol=0)
            assert math.isnan(row.grad_norm)


class LayersActs(nn.Module):
    """A user's MLP with the attribute names initcore's MLP has, and in-place ReLUs."""

    def __init__(self, width: int = 32, depth: int = 3) -> None:
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(width, width) for _ in range(depth))
        self.acts = nn.ModuleList([*(nn.ReLU(inplace=True) for _ in range(depth - 1)), nn.Identity()])

    def forward(self, x):
        for linear, act in zip(self.layers, self.acts, strict=True):
            x = act(linear(x))
        return x


def test_an_inplace_activation_keeps_its_pre_activation():
    # The old probe took args[0] of the activation's forward hook, which an in-place ReLU has already
    # overwritten: preact_std came out equal to act_std (0.3419 for both; the true preact std 0.5831).
    torch.manual_seed(0)
    model, x = LayersActs(), torch.randn(64, 32)
    frame = probe.trace(model, x).set_index("module")
    with torch.no_grad():
        h, pre = x, []
        for linear in model.layers:
            pre.append(linear(h))
            h = torch.relu(pre[-1])
    for i in range(2):
        row = frame.loc[f"acts.{i}"]
        _close(row.preact_std, pre[i].std())
        _close(row.act_std, torch.relu(pre[i]).std())
        assert row.preact_std > 1.3 * row.act_std  # what the bug hid: a ReLU roughly halves the second moment
        _close(frame.loc[f"layers.{i}"].act_std, pre[i].std())  # the Linear's own row, before the ReLU ran


class Reused(nn.Module):
    """One Linear applied twice (weight tying), a tanh between."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(8, 8)

    def forward(self, x):
        return self.lin(torch.tanh(self.lin(x)))


def test_a_module_called_twice_gives_a_row_per_call():
    torch.manual_seed(0)
    model, x = Reused(), torch.randn(20, 8)
    frame = probe.trace(model, x)
    assert frame.module.tolist() == ["lin", "lin#1"]
    with torch.no_grad():
        first = model.lin(x)
        second = model.lin(torch.tanh(first))
    _close(frame.act_std[0], first.std())
    _close(frame.act_std[1], second.std())
    model.zero_grad()
    model(x).mean().backward()
    g = torch.cat([p.grad.flatten() for p in model.lin.parameters()])  # accumulated over both calls
    _close(frame.grad_norm[0], g.norm())
    assert math.isnan(frame.grad_norm[1])  # the gradient is one, on the first call's row
    _close(frame.out_grad_norm[1], 1 / math.sqrt(second.numel()))  # d mean / d out = 1/n everywhere


@dataclasses.dataclass
class Pair:
    hidden: torch.Tensor
    extra: torch.Tensor


class Containers(nn.Module):
    """Submodules returning a tuple (with a leading integer tensor), a dict and a dataclass."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.c = nn.Linear(6, 6), nn.Linear(6, 6), nn.Linear(6, 6)
        self.t, self.d, self.dc = _Wrap(self.a, "tuple"), _Wrap(self.b, "dict"), _Wrap(self.c, "dataclass")

    def forward(self, x):
        h = self.t(x)[1]
        h = self.d(h)["hidden"]
        return {"logits": self.dc(h).hidden, "count": torch.tensor(3)}


class _Wrap(nn.Module):
    def __init__(self, lin: nn.Module, how: str) -> None:
        super().__init__()
        self.lin, self.how = lin, how

    def forward(self, x):
        h = self.lin(x)
        if self.how == "tuple":
            return torch.tensor([1, 2]), h, 2 * h
        if self.how == "dict":
            return {"hidden": h, "doubled": 2 * h}
        return Pair(h, 2 * h)


def test_container_outputs_are_measured_by_their_first_floating_tensor():
    torch.manual_seed(0)
    model, x = Containers(), torch.randn(10, 6)
    frame = probe.trace(model, x, select=["t", "d", "dc"]).set_index("module")
    with torch.no_grad():
        ha = model.a(x)
        hb = model.b(ha)
        hc = model.c(hb)
    for name, h in (("t", ha), ("d", hb), ("dc", hc)):
        _close(frame.loc[name].act_std, h.std())
    # the model's own output is a dict too: the loss is the mean of its first floating tensor, "logits"
    model.zero_grad()
    hc = model(x)["logits"]
    hc.mean().backward()
    _close(frame.loc["dc"].grad_norm, torch.cat([p.grad.flatten() for p in model.c.parameters()]).norm())


def test_a_declared_output_element_is_measured():
    torch.manual_seed(0)
    model, x = Containers(), torch.randn(10, 6)
    model.MEASURE = {"t": probe_measure("wrapped", output=2), "d": probe_measure("wrapped", output="doubled")}
    frame = probe.trace(model, x).set_index("module")
    with torch.no_grad():
        ha = model.a(x)
        hb = model.b(ha)
    _close(frame.loc["t"].act_std, (2 * ha).std())
    _close(frame.loc["d"].act_std, (2 * hb).std())


def probe_measure(kind: str, **fields):
    from initcore.models import Measure

    return Measure(kind, **fields)


class TinyResNet(nn.Module):
    """A conv net with BatchNorm and residual blocks, as torchvision's BasicBlock."""

    def __init__(self, c: int = 8, blocks: int = 3) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU())
        self.layers = nn.Sequential(*(Basic(c) for _ in range(blocks)))
        self.head = nn.Linear(c, 5)

    def forward(self, x):
        return self.head(self.layers(self.stem(x)).mean((2, 3)))


class Basic(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)
        self.conv2, self.bn2 = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)

    def forward(self, x):
        return F.relu(x + self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x))))))


def test_a_conv_net_with_batchnorm_in_training_mode_and_its_buffers_restored():
    torch.manual_seed(0)
    model, x = TinyResNet(), torch.randn(6, 3, 10, 10)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    frame = probe.trace(model, x, train=True).set_index("module")
    assert model.training  # as it was
    for k, v in model.state_dict().items():  # BatchNorm's running statistics and batch counts came back
        assert torch.equal(v, before[k]), k
    # in training mode BatchNorm (weight 1, bias 0) normalizes each channel over (N, H, W): its output
    # has mean 0 and (biased) variance 1 - eps/(var + eps) per channel, so over all entries std ~1
    for name in ("stem.1", "layers.0.bn1", "layers.2.bn2"):
        _close(frame.loc[name].act_mean, 0.0, rtol=0, atol=1e-6)
        _close(frame.loc[name].act_std, 1.0, rtol=2e-3, atol=0)
    blocks = probe.trace(model, x, select="blocks", train=True)
    assert blocks.module.tolist() == ["layers.0", "layers.1", "layers.2"] and set(blocks.kind) == {"block"}
    outs, _ = _outputs_and_grads(model.train(), x, ["layers.0", "layers.2"])
    _close(blocks.act_std[0], outs["layers.0"].std())
    _close(blocks.act_std[2], outs["layers.2"].std())
    model.load_state_dict(before)


class Tokens(nn.Module):
    """Keyword inputs with integer token ids, as a Hugging Face model takes them."""

    def __init__(self) -> None:
        super().__init__()
        self.embed, self.out = nn.Embedding(30, 12), nn.Linear(12, 30)

    def forward(self, input_ids, scale=1.0):
        return self.out(self.embed(input_ids) * scale)


def test_keyword_inputs_and_token_ids():
    torch.manual_seed(0)
    model = Tokens()
    ids = torch.randint(0, 30, (4, 7))
    frame = probe.trace(model, {"input_ids": ids, "scale": 2.0}).set_index("module")
    with torch.no_grad():
        e = model.embed(ids)
        _close(frame.loc["embed"].act_std, e.std())
        _close(frame.loc["out"].act_std, model.out(2 * e).std())
    assert frame.loc["embed"].grad_norm > 0  # rows the loss reached through the scale


def test_half_precision_models_are_reduced_in_float32():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 16), nn.GELU(), nn.Linear(16, 16)).to(torch.bfloat16)
    x = torch.randn(32, 16).to(torch.bfloat16)
    frame = probe.trace(model, x)
    with torch.no_grad():
        h = model[0](x).float()
    _close(frame.act_std[0], h.std(), rtol=1e-5, atol=0)
    assert frame[["act_std", "out_grad_norm"]].notna().all().all()
    assert frame.grad_norm.notna().tolist() == [True, False, True]  # GELU has no parameters


class NanoBlock(nn.Module):
    """nanoGPT's block: causal attention through F.scaled_dot_product_attention, an MLP, pre-norm."""

    def __init__(self, d: int, heads: int) -> None:
        super().__init__()
        self.ln_1, self.ln_2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.attn = NanoAttention(d, heads)
        self.mlp = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d))

    def forward(self, x):
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class NanoAttention(nn.Module):
    def __init__(self, d: int, heads: int) -> None:
        super().__init__()
        self.c_attn, self.c_proj, self.heads = nn.Linear(d, 3 * d), nn.Linear(d, d), heads

    def split(self, x):
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(C, dim=2)
        return [t.view(B, T, self.heads, C // self.heads).transpose(1, 2) for t in (q, k, v)]  # (B, heads, T, d_head)

    def forward(self, x):
        B, T, C = x.shape
        q, k, v = self.split(x)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.c_proj(y.transpose(1, 2).reshape(B, T, C))


class NanoGPT(nn.Module):
    def __init__(self, vocab: int = 50, d: int = 16, heads: int = 2, n: int = 3) -> None:
        super().__init__()
        self.wte = nn.Embedding(vocab, d)
        self.h = nn.ModuleList(NanoBlock(d, heads) for _ in range(n))
        self.ln_f = nn.LayerNorm(d)

    def forward(self, idx):
        x = self.wte(idx)
        for block in self.h:
            x = block(x)
        return self.ln_f(x)


def _manual_attention(att: torch.Tensor) -> dict[str, float]:
    finite = torch.isfinite(att)
    p = torch.softmax(att, -1)
    entropy = -(p * p.log()).nan_to_num(0.0).sum(-1)
    keys = finite.sum(-1)
    several = keys > 1
    return {"logit_std": att[finite].std(), "attn_entropy": entropy.mean(),
            "attn_entropy_norm": (entropy[several] / keys[several].double().log()).mean(),
            "attn_max": p.max(-1).values.mean()}


def test_a_nanogpt_style_model_gets_blocks_and_attention_rows():
    torch.manual_seed(0)
    model, idx = NanoGPT(), torch.randint(0, 50, (3, 9))
    frame = probe.trace(model, idx, loss="random", select="blocks")
    assert frame.module.tolist() == ["h.0.attn:sdpa", "h.0", "h.1.attn:sdpa", "h.1", "h.2.attn:sdpa", "h.2"]
    assert frame.kind.tolist() == ["attn", "block"] * 3 and frame.layer.tolist() == [0, 0, 1, 1, 2, 2]
    with torch.no_grad():
        x = model.wte(idx)
        for i, block in enumerate(model.h):
            q, k, _ = block.attn.split(block.ln_1(x))
            att = (q @ k.transpose(-2, -1)) / math.sqrt(q.shape[-1])
            att = att.masked_fill(torch.ones(9, 9, dtype=torch.bool).triu(1), float("-inf"))
            row = frame.set_index("module").loc[f"h.{i}.attn:sdpa"]
            for name, value in _manual_attention(att).items():
                _close(row[name], value, rtol=1e-5, atol=1e-6)
            x = block(x)
            _close(frame.set_index("module").loc[f"h.{i}"].act_std, x.std())


def test_a_selected_attention_module_keeps_its_own_row_beside_its_attention_row():
    # The attention statistics once took the selected module's row (and, unselected, its name): act_std
    # of h.0.attn read what the hooks see, or NaN where only the attention row carried the name.
    torch.manual_seed(0)
    model, idx = NanoGPT(), torch.randint(0, 50, (3, 9))
    frame = probe.trace(model, idx, loss="random", select="h.*.attn")
    assert frame.module.tolist() == [f"h.{i}.{r}" for i in range(3) for r in ("attn:sdpa", "attn")]
    own, attention = frame[frame.kind != "attn"], frame[frame.kind == "attn"]
    assert own[["act_std", "grad_norm"]].notna().all().all() and own.logit_std.isna().all()
    assert attention.logit_std.notna().all() and attention[["act_std", "grad_norm"]].isna().all().all()
    outs, _ = _outputs_and_grads(model, idx, ["h.0.attn"], loss=lambda out: out.mean())
    _close(own.act_std.iloc[0], outs["h.0.attn"].std())


def test_nn_transformer_encoder_layer_is_traced_with_its_attention():
    torch.manual_seed(0)
    model = nn.TransformerEncoder(nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0, batch_first=True), 2,
                                  enable_nested_tensor=False)
    x = torch.randn(3, 7, 16)
    frame = probe.trace(model, x, loss="random", select="blocks")
    assert frame.module.tolist() == ["layers.0.self_attn:sdpa", "layers.0", "layers.1.self_attn:sdpa", "layers.1"]
    layer = model.layers[0]
    with torch.no_grad():
        q, k, _ = F.linear(x, layer.self_attn.in_proj_weight, layer.self_attn.in_proj_bias).chunk(3, -1)
        q, k = (t.view(3, 7, 2, 8).transpose(1, 2) for t in (q, k))
        expected = _manual_attention((q @ k.transpose(-2, -1)) / math.sqrt(8))
    for name, value in expected.items():
        _close(frame[name][0], value, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("mask", ["bool", "float_min", "gqa"])
def test_attention_logits_follow_the_sdpa_call(mask):
    torch.manual_seed(0)
    q, k = torch.randn(2, 4, 5, 8), torch.randn(2, 4 if mask != "gqa" else 2, 5, 8)
    keep = torch.rand(5, 5) > 0.3
    keep.fill_diagonal_(True)
    if mask == "bool":
        att = probe.attention.logits(q, k, keep, scale=0.5)
        expected = (q @ k.transpose(-2, -1) * 0.5).masked_fill(~keep, float("-inf"))
    elif mask == "float_min":  # Hugging Face's additive mask: finfo.min where masked
        additive = torch.where(keep, 0.0, torch.finfo(torch.float32).min)
        att = probe.attention.logits(q, k, additive)
        expected = (q @ k.transpose(-2, -1) / math.sqrt(8)).masked_fill(~keep, float("-inf"))
    else:  # 2 key heads serve 4 query heads, 2 each
        att = probe.attention.logits(q, k, None, is_causal=True, enable_gqa=True)
        kk = k.repeat_interleave(2, dim=1)
        expected = (q @ kk.transpose(-2, -1) / math.sqrt(8)).masked_fill(torch.ones(5, 5).triu(1).bool(),
                                                                         float("-inf"))
    torch.testing.assert_close(att, expected)


def test_a_module_without_a_tensor_output_is_named():
    class Nothing(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = nn.Linear(3, 3)

        def forward(self, x):
            self.lin(x)
            return None

    with pytest.raises(ValueError, match=r"module '' \(Nothing\) returned no tensor to measure \(got NoneType\)"):
        probe.trace(Nothing(), torch.randn(2, 3), select=Nothing, loss=None)


def test_a_model_without_a_floating_output_needs_a_loss_of_its_own():
    with pytest.raises(ValueError, match="_Ids returned no floating-point tensor to take a loss of"):
        probe.trace(_Ids(), torch.randn(2, 3))
    assert len(probe.trace(_Ids(), torch.randn(2, 3), loss=None)) == 1


class _Ids(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(3, 3)

    def forward(self, x):
        return self.lin(x).argmax(-1)


def test_keep_outputs_and_reference_measure_the_change():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 8))
    x = torch.randn(16, 8)
    before = probe.trace(model, x, keep_outputs=True)
    outputs = before.attrs["outputs"]
    assert sorted(outputs) == ["0", "1", "2"] and isinstance(outputs, probe.Outputs)
    assert before.copy().attrs["outputs"] is outputs  # carried along, not deep-copied
    assert before.act_change_rms.isna().all()
    with torch.no_grad():
        model[2].weight.add_(0.1)
    after = probe.trace(model, x, reference=outputs).set_index("module")
    _close(after.loc["0"].act_change_rms, 0.0, rtol=0, atol=0)  # upstream of the change: nothing moved
    with torch.no_grad():
        expected = (model(x) - outputs["2"]).square().mean().sqrt()
    _close(after.loc["2"].act_change_rms, expected)
    with pytest.raises(ValueError, match=r"reference output of '0' has shape \(16, 8\), the output now \(4, 8\)"):
        probe.trace(model, x[:4], reference=outputs)


def test_a_lean_trace_takes_only_what_it_needs():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 8))
    x = torch.randn(16, 8)
    full, lean = probe.trace(model, x), probe.trace(model, x, statistics="lean")
    assert tuple(lean.columns) == probe.COLUMNS
    measured = [c for c in probe.STATISTICS if lean[c].notna().any()]
    assert measured == ["act_mean", "act_std", "act_rms"]
    np.testing.assert_allclose(lean[measured].to_numpy(), full[measured].to_numpy(), rtol=1e-12)
    assert model[0].weight.grad is not None  # the backward pass still ran
    norm_only = probe.trace(model, x, statistics=["grad_norm"])
    np.testing.assert_allclose(norm_only.grad_norm.dropna(), full.grad_norm.dropna(), rtol=1e-6)
    assert norm_only.grad_std.isna().all()


def test_forward_only_runs_no_backward():
    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU())
    frame = probe.trace(model, torch.randn(4, 8), loss=None)
    assert model[0].weight.grad is None
    assert frame[["grad_norm", "out_grad_norm"]].isna().all().all() and frame.act_std.notna().all()


def test_hooks_and_the_attention_watch_are_gone_after_a_failure():
    model, idx = NanoGPT(), torch.randint(0, 50, (2, 5))
    with pytest.raises(RuntimeError):
        probe.trace(model, idx.float())  # an Embedding wants integer ids
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())
    assert F.scaled_dot_product_attention is torch._C._nn.scaled_dot_product_attention
    assert not torch.overrides._get_current_function_mode_stack()


def test_a_declared_model_gets_attention_where_it_declares_it(monkeypatch):
    """Declare, don't detect: a model whose declared rows include no attention point runs unwatched (no
    attention rows, nothing intercepted: initcore's MLP pays nothing for the watch); declaring the attention
    module brings its statistics in, and a selection of an undeclared model watches every SDPA call."""
    torch.manual_seed(0)
    idx = torch.randint(0, 50, (3, 9))
    model = NanoGPT()
    watched = []
    monkeypatch.setattr(SDPAWatch, "__enter__", lambda self: watched.append(self) or TorchFunctionMode.__enter__(self))
    model.MEASURE = {f"h.{i}": probe_measure("block") for i in range(3)}
    frame = probe.trace(model, idx, loss="random")
    assert frame.module.tolist() == ["h.0", "h.1", "h.2"] and frame.logit_std.isna().all() and not watched
    model.MEASURE = {**model.MEASURE, **{f"h.{i}.attn": probe_measure("attn", attention=True) for i in range(3)}}
    frame = probe.trace(model, idx, loss="random")
    assert frame.set_index("module").loc[[f"h.{i}.attn" for i in range(3)], "logit_std"].notna().all()
    assert len(watched) == 1
    del model.MEASURE
    frame = probe.trace(model, idx, loss="random", select="blocks")
    assert frame[frame.kind == "attn"].logit_std.notna().sum() == 3 and len(watched) == 2


class _WithDeclaredPart(nn.Module):
    """A foreign model that contains a declared model (initcore's MLP) beside attention it declares nothing of."""

    def __init__(self) -> None:
        super().__init__()
        from initcore.models import MLP

        self.enc = nn.TransformerEncoder(nn.TransformerEncoderLayer(32, 4, 64, batch_first=True), 2,
                                         enable_nested_tensor=False)
        self.head = MLP(32, 16, 2)

    def forward(self, x):
        return self.head(self.enc(x))


def test_a_model_containing_a_declared_model_is_still_watched():
    torch.manual_seed(0)
    frame = probe.trace(_WithDeclaredPart(), torch.randn(2, 10, 32), loss="random")
    attn = frame[frame.kind == "attn"]
    assert attn.module.tolist() == ["enc.layers.0.self_attn:sdpa", "enc.layers.1.self_attn:sdpa"]
    assert attn.logit_std.notna().all() and "head.layers.1" in frame.module.tolist()


@pytest.mark.filterwarnings("ignore:The PyTorch API of nested tensors is in prototype stage:UserWarning")
def test_nested_outputs_count_their_entries_not_padding():
    """nn.TransformerEncoder with a padding mask and no gradient takes torch's fast path, whose layers
    return nested tensors: a row's statistics are over the real tokens' entries only."""
    torch.manual_seed(0)
    enc = nn.TransformerEncoder(nn.TransformerEncoderLayer(32, 4, 64, batch_first=True), 2).eval()
    pad = torch.zeros(2, 10, dtype=torch.bool)
    pad[0, 5:] = True
    batch = {"src": torch.randn(2, 10, 32), "src_key_padding_mask": pad}
    frame = probe.trace(enc, batch, loss=None, statistics="lean", select="blocks").set_index("module")
    with torch.no_grad():
        out = enc.layers[0](batch["src"], src_key_padding_mask=pad)
    real = torch.cat([out[0, :5], out[1]])  # sequence 0 has 5 tokens, sequence 1 all 10
    _close(frame.loc["layers.0"].act_std, real.std())
    _close(frame.loc["layers.0"].act_mean, real.mean(), rtol=0, atol=1e-6)  # a mean near 0: float32 sums


def test_a_sparse_gradient_counts_as_its_dense_tensor():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Embedding(50, 8, sparse=True), nn.Linear(8, 4))
    idx = torch.randint(0, 50, (6, 5))
    frame = probe.trace(model, idx).set_index("module")
    dense = model[0].weight.grad.to_dense()
    _close(frame.loc["0"].grad_norm, dense.norm())
    _close(frame.loc["0"].grad_std, dense.std())
