"""The probe's default rows on models initcore did not write, each held to what plain forward hooks see.

Hugging Face decoders (GPT-2, Llama), an encoder (BERT) and an encoder-decoder (T5) from tiny configs,
torchvision's ResNet-18 and a tiny VisionTransformer (weights=None), an LSTM and a GRU, routed experts,
parametrized weights (weight_norm, orthogonal), nn.TransformerEncoder and a nanoGPT-style model whose
block makes the attention call itself. For each: every row named after a module (``name``, or ``name#k``
for its k-th call) carries the statistics of that module's output as a forward hook registered by the
test sees it in the same pass; an attention row (``<module>:sdpa``) is named after a module that exists
and carries attention statistics only; no two rows share a name.
"""

from __future__ import annotations

import math
import os
import re

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrizations

from initcore import probe, zoo

MISSING = zoo.missing()
needs_zoo = pytest.mark.skipif(MISSING is not None and not os.environ.get("INITCORE_REQUIRE_ZOO"),
                               reason=f"{MISSING}")  # under INITCORE_REQUIRE_ZOO (CI) they run, and fail

# The test's statistics are float64 reductions of the very tensors the probe reduced in float32 (numpy's
# pairwise sums, or sum and sum of squares for the std): the relative error is a few float32 eps times
# log2(n) for n <= 1e5 entries, ~1e-6 (every model here passes at rtol 1e-6, atol 1e-7); 1e-5 leaves room
# across platforms' BLAS. atol 1e-6 for means of ~0 (LayerNorm outputs).
TOL = {"rtol": 1e-5, "atol": 1e-6}
STATS = ("act_mean", "act_std", "act_rms", "act_min", "act_max", "dead_frac", "nan_count")


def _first_float(output) -> torch.Tensor | None:
    """What a user reads as a module's output: the tensor, or the first floating tensor of a tuple, list or dict."""
    if isinstance(output, torch.Tensor):
        return output if output.is_floating_point() else None
    items = output.values() if isinstance(output, dict) else output if isinstance(output, (tuple, list)) else ()
    return next((t for t in items if isinstance(t, torch.Tensor) and t.is_floating_point()), None)


def _expected(a: torch.Tensor) -> dict[str, float]:
    a = a.detach().double()
    return {"act_mean": a.mean().item(), "act_std": a.std().item(), "act_rms": a.square().mean().sqrt().item(),
            "act_min": a.min().item(), "act_max": a.max().item(), "dead_frac": (a == 0).double().mean().item(),
            "nan_count": float(a.isnan().sum().item())}


def check_rows(model: nn.Module, inputs, **trace_kw):
    """Trace ``model`` with plain hooks on every module beside the probe's; assert each row against them."""
    outputs: dict[str, list[torch.Tensor | None]] = {}
    inputs_seen: dict[str, list[torch.Tensor | None]] = {}

    def keep_output(name):
        def hook(module, args, output):
            out = _first_float(output)
            outputs.setdefault(name, []).append(None if out is None else out.detach().clone())
        return hook

    def keep_input(name):  # before an in-place activation overwrites it
        def hook(module, args):
            x = args[0] if args and isinstance(args[0], torch.Tensor) else None
            inputs_seen.setdefault(name, []).append(None if x is None else x.detach().clone())
        return hook

    modules = dict(model.named_modules())
    handles = [m.register_forward_hook(keep_output(n)) for n, m in modules.items()]
    handles += [m.register_forward_pre_hook(keep_input(n)) for n, m in modules.items() if probe.is_activation(m)]
    try:
        frame = probe.trace(model, inputs, **trace_kw)
    finally:
        for h in handles:
            h.remove()
    names = frame["module"].tolist()
    assert len(set(names)) == len(names), f"rows sharing a name: {sorted({n for n in names if names.count(n) > 1})}"
    checked = 0
    for _, row in frame.iterrows():
        name, k = re.fullmatch(r"(.*?)(?:#(\d+))?", row["module"]).groups()
        k = int(k or 0)
        if row["kind"] == "attn":  # <module>:sdpa: attention statistics only, named after the calling module
            owner = name.removesuffix(probe.SDPA_SUFFIX)
            assert name.endswith(probe.SDPA_SUFFIX) and owner in modules, row["module"]
            assert math.isfinite(row["logit_std"]) and math.isnan(row["act_std"]), row["module"]
            continue
        assert name in modules, f"row {row['module']!r} names no module"
        if k:
            assert (f"{name}#{k - 1}" if k > 1 else name) in names, f"{row['module']}: calls not counted 0, 1, ..."
        if name not in outputs:  # never called (MultiheadAttention's out_proj, used functionally): gradients only
            assert row[list(STATS)].isna().all() and math.isfinite(row["grad_norm"]), row["module"]
            continue
        expected = _expected(outputs[name][k])
        if row["kind"] != "block" and probe.is_activation(modules[name]):
            expected["preact_std"] = inputs_seen[name][k].double().std().item()
        torch.testing.assert_close(torch.tensor([float(row[s]) for s in expected], dtype=torch.float64),
                                   torch.tensor(list(expected.values()), dtype=torch.float64), equal_nan=True,
                                   **TOL, msg=lambda m, n=row["module"], e=list(expected): f"{n} ({', '.join(e)}): {m}")
        checked += 1
    assert checked >= 3
    return frame


# --- Hugging Face, from tiny configs (no download) -------------------------------------------------------------


@pytest.fixture(scope="module")
def hf():
    """transformers, imported once for the module (~1.3 s), after torchvision's shim (``initcore.zoo``)."""
    zoo.torchvision_ops_shim()
    import transformers

    return transformers


def _ids(vocab: int, batch: int = 2, seq: int = 8, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, vocab, (batch, seq), generator=torch.Generator().manual_seed(seed))


@needs_zoo
def test_gpt2(hf):
    model, inputs = zoo.gpt2(0, n_layer=2, n_embd=32, n_head=4, vocab_size=64, batch=2, seq_len=8)
    frame = check_rows(model, inputs, loss="random")
    kinds = dict(zip(frame["module"], frame["kind"], strict=True))
    # the rows: the block's own output (the residual stream), the activation module, attention apart
    assert kinds["transformer.h.0"] == "block" and kinds["transformer.h.0.attn:sdpa"] == "attn"
    assert kinds["transformer.h.0.mlp.act"] == "newgeluactivation"


@needs_zoo
def test_llama(hf):
    config = hf.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32)
    torch.manual_seed(0)
    model = hf.LlamaForCausalLM._from_config(config, attn_implementation="sdpa").eval()
    frame = check_rows(model, {"input_ids": _ids(64)}, loss="random")
    assert {"model.layers.0", "model.layers.0.self_attn:sdpa", "model.layers.0.mlp.act_fn"} <= set(frame["module"])


@needs_zoo
def test_bert(hf):
    config = hf.BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                           intermediate_size=64, max_position_embeddings=32, hidden_dropout_prob=0.0,
                           attention_probs_dropout_prob=0.0)
    torch.manual_seed(0)
    model = hf.BertModel._from_config(config, attn_implementation="sdpa").eval()
    mask = torch.ones(2, 8, dtype=torch.long)
    mask[1, 6:] = 0  # padding: an additive mask in the attention call
    frame = check_rows(model, {"input_ids": _ids(64), "attention_mask": mask}, loss="random")
    assert {"encoder.layer.0", "encoder.layer.0.intermediate.intermediate_act_fn"} <= set(frame["module"])
    assert (frame["kind"] == "attn").sum() == 2


@needs_zoo
def test_t5(hf):
    config = hf.T5Config(vocab_size=64, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_decoder_layers=2,
                         num_heads=4, dropout_rate=0.0, decoder_start_token_id=0)
    torch.manual_seed(0)
    model = hf.T5Model._from_config(config).eval()
    frame = check_rows(model, {"input_ids": _ids(64), "decoder_input_ids": _ids(64, seq=5, seed=2)}, loss="random")
    assert {"encoder.block.0", "decoder.block.1"} <= set(frame["module"])
    blocks = frame[frame["kind"] == "block"]
    assert blocks["layer"].tolist() == [0, 1, 2, 3]  # encoder then decoder blocks, counted in module order


# --- torchvision (weights=None) --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tv():
    zoo.torchvision_ops_shim()
    import torchvision

    return torchvision


@needs_zoo
def test_resnet18(tv):
    torch.manual_seed(0)
    model = tv.models.resnet18(weights=None, num_classes=10)
    frame = check_rows(model, torch.randn(2, 3, 32, 32), loss="random")
    assert "layer1.0.relu#1" in set(frame["module"])  # BasicBlock calls its ReLU twice
    assert frame.loc[frame["kind"] == "block", "layer"].tolist() == list(range(8))


@needs_zoo
def test_vision_transformer(tv):
    torch.manual_seed(0)
    model = tv.models.VisionTransformer(image_size=16, patch_size=8, num_layers=2, num_heads=2, hidden_dim=16,
                                        mlp_dim=32, num_classes=5)
    frame = check_rows(model, torch.randn(2, 3, 16, 16), loss="random")
    assert "encoder.layers.encoder_layer_1" in set(frame["module"])


# --- plain torch ---------------------------------------------------------------------------------------------


class Recurrent(nn.Module):
    def __init__(self, cell: type[nn.Module]) -> None:
        super().__init__()
        self.embed, self.rnn = nn.Embedding(20, 8), cell(8, 16, num_layers=2, batch_first=True)
        self.head = nn.Linear(16, 4)

    def forward(self, idx):
        return self.head(self.rnn(self.embed(idx))[0])


@pytest.mark.parametrize("cell", [nn.LSTM, nn.GRU])
def test_recurrent(cell):
    torch.manual_seed(0)
    frame = check_rows(Recurrent(cell), _ids(20, seq=6))
    assert frame["module"].tolist() == ["embed", "rnn", "head"]


class Experts(nn.Module):
    """Top-1 routed experts: each token through the expert its router picks, scaled by the router's weight."""

    def __init__(self, d: int, n: int) -> None:
        super().__init__()
        self.norm, self.router = nn.LayerNorm(d), nn.Linear(d, n)
        self.experts = nn.ModuleList(nn.Sequential(nn.Linear(d, 2 * d), nn.SiLU(), nn.Linear(2 * d, d))
                                     for _ in range(n))

    def forward(self, x):
        h = self.norm(x)
        weight, choice = F.softmax(self.router(h), -1).max(-1)
        out = torch.zeros_like(x)
        for i, expert in enumerate(self.experts):
            routed = choice == i
            if routed.any():
                out[routed] = weight[routed, None] * expert(h[routed])
        return x + out


class MoE(nn.Module):
    def __init__(self, d: int = 16, n: int = 4, depth: int = 2) -> None:
        super().__init__()
        self.inp, self.layers = nn.Linear(6, d), nn.ModuleList(Experts(d, n) for _ in range(depth))

    def forward(self, x):
        h = self.inp(x)
        for layer in self.layers:
            h = layer(h)
        return h


def test_routed_experts():
    torch.manual_seed(0)
    frame = check_rows(MoE(), torch.randn(64, 6))
    assert {"layers.0", "layers.1.experts.3.1"} <= set(frame["module"])


def test_parametrized_weights():
    torch.manual_seed(0)
    model = nn.Sequential(parametrizations.weight_norm(nn.Linear(8, 16, bias=False)), nn.Tanh(),
                          parametrizations.orthogonal(nn.Linear(16, 16)), nn.Tanh(), nn.Linear(16, 2))
    frame = check_rows(model, torch.randn(32, 8))
    # the parametrized Linears are their own rows (the first owns no parameter but its parametrization's),
    # and the flat Sequential has no blocks
    assert frame["module"].tolist() == ["0", "1", "2", "3", "4"]
    assert frame["grad_norm"].notna().tolist() == [True, False, True, False, True]


def test_transformer_encoder():
    torch.manual_seed(0)
    model = nn.TransformerEncoder(nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0, batch_first=True), 2,
                                  enable_nested_tensor=False)
    frame = check_rows(model, torch.randn(3, 7, 16), loss="random")
    assert {"layers.0", "layers.0.self_attn", "layers.0.self_attn:sdpa"} <= set(frame["module"])


class InlineBlock(nn.Module):
    """A nanoGPT-style block whose own forward makes the attention call (the issue's ``h.0``)."""

    def __init__(self, d: int, heads: int) -> None:
        super().__init__()
        self.ln_1, self.ln_2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.c_attn, self.c_proj, self.heads = nn.Linear(d, 3 * d), nn.Linear(d, d), heads
        self.mlp = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d))

    def forward(self, x):
        B, T, C = x.shape
        q, k, v = (t.view(B, T, self.heads, C // self.heads).transpose(1, 2)  # (B, heads, T, d_head)
                   for t in self.c_attn(self.ln_1(x)).split(C, dim=2))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(B, T, C)
        x = x + self.c_proj(y)
        return x + self.mlp(self.ln_2(x))


class InlineGPT(nn.Module):
    def __init__(self, vocab: int = 50, d: int = 16, heads: int = 2, n: int = 3) -> None:
        super().__init__()
        self.wte, self.h = nn.Embedding(vocab, d), nn.ModuleList(InlineBlock(d, heads) for _ in range(n))
        self.ln_f = nn.LayerNorm(d)

    def forward(self, idx):
        x = self.wte(idx)
        for block in self.h:
            x = block(x)
        return self.ln_f(x)


@pytest.mark.parametrize("select", [None, "blocks"])
def test_a_block_making_the_attention_call_keeps_its_own_row(select):
    # Before: the attention row took the name h.0 and the block's own row, act_std NaN where hooks see ~1.4.
    torch.manual_seed(0)
    frame = check_rows(InlineGPT(), _ids(50, seq=9), loss="random", select=select)
    rows = frame.set_index("module")
    assert rows.loc["h.0", "kind"] == "block" and rows.loc["h.0", "act_std"] > 0.5
    assert rows.loc["h.0:sdpa", "kind"] == "attn" and math.isnan(rows.loc["h.0:sdpa", "act_std"])
