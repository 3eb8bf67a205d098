"""initcore.mup_lint: each problem flagged, with its where, on a model written to have it (plain torch and
Hugging Face GPT-2 from tiny configs, no download); silent on initcore's muP transformer and on a GPT-2
converted with initcore, tied and untied.

The widths are 32 (base) and 128: m = 4. Every std measured here is of a matrix of at least 97 x 32 entries
(the MLP's head: 10 x 64), so its exponent is known to +- 0.011 (+- 0.023) by the module's formula,
sqrt(1/(2n) + 1/(2n0)) / ln m, against the 0.25 margin between an exponent and the next verdict; the
scales and output multipliers are exact ratios.
"""

from __future__ import annotations

import doctest
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from initcore import init, mup_lint, zoo
from initcore.init import mup
from initcore.models import Transformer, TransformerConfig

BASE, WIDTH, VOCAB = 32, 128, 97
IDS = torch.randint(0, VOCAB, (2, 16), generator=torch.Generator().manual_seed(0))


class Attention(nn.Module):
    def __init__(self, width: int, heads: int, scale: str | None) -> None:
        super().__init__()
        self.heads, self.d_head = heads, width // heads
        self.scale = {None: None, "1/d_head": 1 / self.d_head, "constant": 0.125}[scale]
        self.q, self.k, self.v, self.o = (nn.Linear(width, width) for _ in range(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = (f(x).view(B, T, self.heads, self.d_head).transpose(1, 2) for f in (self.q, self.k, self.v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=self.scale)  # (B, heads, T, d_head)
        return self.o(y.transpose(1, 2).reshape(B, T, C))


class TinyLM(nn.Module):
    """A user's one-block language model: ``scale`` None is sdpa's default 1/sqrt(d_head); ``d_head`` fixed
    makes it grow by heads; ``tied`` shares the embedding with the readout; ``logit_mult`` multiplies the
    logits in the forward."""

    def __init__(self, width: int, scale: str | None = "1/d_head", d_head: int | None = None, tied: bool = False,
                 logit_mult: float = 1.0) -> None:
        super().__init__()
        self.wte = nn.Embedding(VOCAB, width)
        self.attn = Attention(width, width // d_head if d_head else 4, scale)
        self.ln = nn.LayerNorm(width)
        self.head = nn.Linear(width, VOCAB, bias=False)
        if tied:
            self.head.weight = self.wte.weight
        self.logit_mult = logit_mult

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        x = self.wte(idx)
        x = x + self.attn(x)
        return self.head(self.ln(x)) * self.logit_mult


def mup_by_hand(model: TinyLM, width: int, table_std: float = 1.0) -> TinyLM:
    """muP's init written out (Table 3): embedding N(0, 1), hidden N(0, 1/fan_in), the head N(0, base/fan_in^2)
    (a tied table keeps its embedding init)."""
    torch.manual_seed(width)
    with torch.no_grad():
        for lin in (model.attn.q, model.attn.k, model.attn.v, model.attn.o):
            lin.weight.normal_(0, width ** -0.5)
            lin.bias.zero_()
        model.wte.weight.normal_(0, table_std)
        if getattr(model, "head", None) is not None and model.head.weight is not model.wte.weight:
            model.head.weight.normal_(0, math.sqrt(BASE) / width)
    return model


def pair(make, **kwargs):
    return make(WIDTH, **kwargs), make(BASE, **kwargs)


def tiny(width: int, **kwargs) -> TinyLM:
    return mup_by_hand(TinyLM(width, **kwargs), width)


def problems(findings) -> list[tuple[str, str]]:
    return [(f.problem, f.where) for f in findings]


# --- a. the attention scale ------------------------------------------------------------------------------------------


def test_muP_by_hand_is_clean():
    model, base = pair(tiny)
    assert mup_lint.lint(model, base, inputs=IDS) == []


def test_sdpa_s_default_scale_is_flagged_where_d_head_grows():
    model, base = pair(tiny, scale=None)
    findings = mup_lint.lint(model, base, inputs=IDS)
    assert problems(findings) == [("attention_scale", "attn")]
    assert "d_head^-0.50" in findings[0].why and "at d_head 8" in findings[0].why and "d_head 32" in findings[0].why
    # a scale that does not fall at all is no muP either
    model, base = pair(tiny, scale="constant")
    assert problems(mup_lint.lint(model, base, inputs=IDS)) == [("attention_scale", "attn")]


def test_the_default_scale_is_fine_where_the_model_grows_by_heads():
    model, base = pair(tiny, scale=None, d_head=16)
    assert mup_lint.lint(model, base, inputs=IDS) == []


class Encoder(nn.Module):
    """torch's own nn.TransformerEncoder (nn.MultiheadAttention: sdpa's default scale), a zero readout."""

    def __init__(self, width: int) -> None:
        super().__init__()
        torch.manual_seed(width)
        self.emb = nn.Embedding(VOCAB, width)
        layer = nn.TransformerEncoderLayer(width, 4, 4 * width, dropout=0.0, batch_first=True)
        self.enc = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.head = nn.Linear(width, VOCAB)
        nn.init.zeros_(self.head.weight)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.head(self.enc(self.emb(idx)))


def test_torch_s_multihead_attention_is_seen_in_eval_mode_too():
    model, base = pair(lambda w: Encoder(w).eval())  # eval: where nn.MultiheadAttention has a fast path
    assert problems(mup_lint.lint(model, base, inputs=IDS)) == [
        ("attention_scale", "enc.layers.0.self_attn"), ("attention_scale", "enc.layers.1.self_attn")]


def test_hugging_face_gpt2_attention_is_flagged_until_scaled():
    model, inputs = zoo.gpt2(0, n_layer=2, n_embd=WIDTH, n_head=4, vocab_size=VOCAB, n_positions=16, seq_len=16)
    base, _ = zoo.gpt2(0, n_layer=2, n_embd=BASE, n_head=4, vocab_size=VOCAB, n_positions=16, seq_len=16)
    found = [f for f in mup_lint.lint(model, base, inputs=inputs, roles=zoo.GPT2_ROLES)
             if f.problem == "attention_scale"]
    assert [f.where for f in found] == ["transformer.h.0.attn", "transformer.h.1.attn"]
    for m in (model, base):
        mup.scale_attention(m)
    assert not [f for f in mup_lint.lint(model, base, inputs=inputs, roles=zoo.GPT2_ROLES)
                if f.problem == "attention_scale"]


# --- b. a readout initialized like a hidden layer ---------------------------------------------------------------------


def mlp(width: int) -> nn.Sequential:
    torch.manual_seed(width)
    return nn.Sequential(nn.Linear(8, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(), nn.Linear(width, 10))


def measured(finding) -> float:
    """The exponent a finding's why states (fan_in^E)."""
    return float(finding.why.split("fan_in^")[1].split()[0])


X = torch.randn(16, 8, generator=torch.Generator().manual_seed(0))


def test_torch_s_default_readout_is_flagged_with_its_exponent():
    model, base = pair(mlp)  # every Linear U(+-1/sqrt(fan_in)): the readout's std goes as fan_in^-0.5
    findings = mup_lint.lint(model, base, inputs=X)
    assert problems(findings) == [("readout_init", "4.weight")]
    assert abs(measured(findings[0]) + 0.5) < 4 * 0.023  # the std's sampling error (module docstring)


@pytest.mark.parametrize("readout", ["scaled", "zero"])
def test_a_mup_readout_is_clean(readout):
    model, base = pair(mlp)
    with torch.no_grad():
        for m, fan_in in ((model, WIDTH), (base, BASE)):
            m[4].weight.normal_(0, math.sqrt(BASE) / fan_in) if readout == "scaled" else m[4].weight.zero_()
    assert mup_lint.lint(model, base, inputs=X) == []


class MuReadout(nn.Linear):
    """mup's Table 8 readout: a Linear whose forward multiplies its input by base/width (``MuReadout``)."""

    def __init__(self, width: int, out_features: int) -> None:
        super().__init__(width, out_features)
        self.mult = BASE / width

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x * self.mult)


class MuReadoutMLP(nn.Module):
    """An MLP with mup's readout, its init N(0, std^2)."""

    def __init__(self, width: int, std: float) -> None:
        super().__init__()
        torch.manual_seed(width)
        self.body = nn.Sequential(nn.Linear(8, width), nn.ReLU())
        self.head = MuReadout(width, 10)
        nn.init.normal_(self.head.weight, 0, std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


def test_a_forward_multiplier_counts_in_the_readout_s_scale():
    model, base = MuReadoutMLP(WIDTH, BASE ** -0.5), MuReadoutMLP(BASE, BASE ** -0.5)
    assert mup_lint.lint(model, base, inputs=X) == []  # std constant, output x 1/m: effective 1/fan_in
    model, base = MuReadoutMLP(WIDTH, WIDTH ** -0.5), MuReadoutMLP(BASE, BASE ** -0.5)  # 1/sqrt(fan_in) and 1/m
    findings = mup_lint.lint(model, base, inputs=X)
    assert problems(findings) == [("readout_init", "head.weight")]
    assert abs(measured(findings[0]) + 1.5) < 4 * 0.023  # the std's sampling error (module docstring)


def test_hugging_face_gpt2_s_untied_readout_is_flagged():
    model, base = gpt2(WIDTH, tied=False), gpt2(BASE, tied=False)
    found = [f for f in mup_lint.lint(model, base, inputs={"input_ids": IDS}, roles=zoo.GPT2_ROLES)
             if f.problem == "readout_init"]
    assert [f.where for f in found] == ["lm_head.weight"]  # N(0, 0.02^2) at every width: fan_in^0


def test_a_readout_too_small_to_measure_is_refused():
    def small(width):
        torch.manual_seed(width)
        return nn.Sequential(nn.Linear(8, width), nn.ReLU(), nn.Linear(width, 1))

    with pytest.raises(ValueError, match="too coarse to tell muP's -1 from -0.5"):
        mup_lint.lint(small(64), small(32), inputs=X)


# --- d. a tied embedding scaled twice ---------------------------------------------------------------------------------


def test_a_tied_table_with_a_one_over_width_multiplier_is_clean():
    model, base = (tiny(w, tied=True, logit_mult=BASE / w) for w in (WIDTH, BASE))
    assert mup_lint.lint(model, base, inputs=IDS) == []


class FunctionalTied(TinyLM):
    """The tied readout as a product in the forward, no module holding the table: x @ wte.weight.T / width."""

    def __init__(self, width: int, logit_mult: float) -> None:
        super().__init__(width, logit_mult=logit_mult)
        del self.head

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        x = self.wte(idx)
        x = x + self.attn(x)
        return self.ln(x) @ self.wte.weight.T * self.logit_mult


def test_a_tied_readout_in_the_forward_is_measured_too():
    model, base = (mup_by_hand(FunctionalTied(w, logit_mult=BASE / w), w) for w in (WIDTH, BASE))
    assert mup_lint.lint(model, base, inputs=IDS) == []  # traced as tied, its 1/width seen
    model, base = (mup_by_hand(FunctionalTied(w, logit_mult=1.0), w) for w in (WIDTH, BASE))
    findings = mup_lint.lint(model, base, inputs=IDS)
    assert problems(findings) == [("tied_multiplier", "wte.weight")] and "missing" in findings[0].why


def test_mup_s_shared_readout_rescaling_the_table_is_scaled_twice():
    # MuSharedReadout under set_base_shapes: the table times sqrt(width / base), the logits times base / width
    model, base = (mup_by_hand(TinyLM(w, tied=True, logit_mult=BASE / w), w, table_std=math.sqrt(w / BASE))
                   for w in (WIDTH, BASE))
    findings = mup_lint.lint(model, base, inputs=IDS)
    assert problems(findings) == [("tied_init", "wte.weight = head.weight")]
    assert "width^+0.50" in findings[0].why and "scaled twice" in findings[0].why and "mup#55" in findings[0].why


def test_a_user_s_one_over_width_and_initcore_s_multiplier_are_applied_twice():
    meta = TinyLM(BASE, tied=True).to("meta")
    model, base = (init.apply(TinyLM(w, tied=True, logit_mult=BASE / w), "mup", base=meta, inputs=IDS,
                              generator=torch.Generator().manual_seed(w)) for w in (WIDTH, BASE))
    findings = mup_lint.lint(model, base, inputs=IDS)
    assert problems(findings) == [("tied_multiplier", "wte.weight = head.weight")]
    assert "width^-2.00" in findings[0].why and "applied twice" in findings[0].why
    assert f"initcore's hook multiplies head's output by {math.sqrt(BASE) / WIDTH:.4g}" in findings[0].why
    model, base = pair(tiny, tied=True)  # no multiplier at all
    findings = mup_lint.lint(model, base, inputs=IDS)
    assert problems(findings) == [("tied_multiplier", "wte.weight = head.weight")] and "missing" in findings[0].why


def test_hugging_face_gpt2_s_tied_table_rescaled_is_flagged():
    model, base = converted(tied=True)
    with torch.no_grad():
        model.transformer.wte.weight.mul_(math.sqrt(WIDTH / BASE))  # what MuSharedReadout's rescaling does
    found = problems(mup_lint.lint(model, base, inputs={"input_ids": IDS}, roles=zoo.GPT2_ROLES))
    assert found == [("tied_init", "transformer.wte.weight = lm_head.weight")]


# --- c. the optimizer -------------------------------------------------------------------------------------------------


def test_one_learning_rate_for_every_parameter_is_flagged():
    model, base = pair(tiny)
    findings = mup_lint.lint(model, base, inputs=IDS, optimizer=torch.optim.Adam(model.parameters(), lr=1e-3))
    assert problems(findings) == [
        ("optimizer_lr", "param_groups[0]: attn.q.weight +4 more")]
    assert "lr / m_in = lr x 0.25 under Adam" in findings[0].why
    # the same, built at both widths: the lr's ratio between them is 1, muP wants 1/4 for the matrices
    findings = mup_lint.lint(model, base, inputs=IDS, optimizer=lambda m: torch.optim.Adam(m.parameters(), lr=1e-3))
    assert problems(findings) == [
        ("optimizer_lr", "param_groups[0]: attn.q.weight +4 more")]


def test_mup_s_groups_are_clean_and_sgd_needs_its_own():
    model, base = pair(tiny)

    def groups(m, optimizer="adam", **kwargs):
        return init.param_groups(m, "mup", lr=1e-2, optimizer=optimizer, base=base, inputs=IDS, **kwargs)

    assert mup_lint.lint(model, base, inputs=IDS, optimizer=torch.optim.Adam(groups(model))) == []
    assert mup_lint.lint(model, base, inputs=IDS, optimizer=torch.optim.SGD(groups(model, "sgd"))) == []
    # Adam's rates under SGD: Adam's 1/m_in for matrices, 1 for vectors and inputs are SGD's m_out/m_in, m, m_out
    # up to the factor 1/m = 1/4 at these shapes; only the readout's differs (SGD's 1/m_in, not 1/m_in^2)
    findings = mup_lint.lint(model, base, inputs=IDS, optimizer=torch.optim.SGD(groups(model)))
    assert problems(findings) == [("optimizer_lr", "param_groups[1]: head.weight")]
    assert "lr x m_out / m_in = lr x 0.25 under SGD" in findings[0].why


def test_adamw_s_decay_must_keep_lr_times_wd_per_group():
    model, base = pair(tiny)

    def groups(m, **kwargs):
        return init.param_groups(m, "mup", lr=1e-2, optimizer="adamw", base=base, inputs=IDS, **kwargs)

    findings = mup_lint.lint(model, base, inputs=IDS, optimizer=torch.optim.AdamW(groups(model), weight_decay=0.1))
    assert [f.problem for f in findings] == ["optimizer_weight_decay"]
    assert findings[0].where.startswith("param_groups[") and "attn.q.weight" in findings[0].where
    assert "0.0025 x 0.1 = 0.00025" in findings[0].why
    assert mup_lint.lint(model, base, inputs=IDS,
                         optimizer=torch.optim.AdamW(groups(model, weight_decay=0.1))) == []


def test_a_bad_optimizer_names_what_is_valid():
    model, base = pair(tiny)
    with pytest.raises(ValueError, match="a torch.optim.Optimizer over the model's parameters or a callable"):
        mup_lint.lint(model, base, inputs=IDS, optimizer="adam")


# --- silent on initcore's muP transformer and on a GPT-2 converted with initcore ------------------------------------


def test_initcore_s_mup_transformer_is_clean():
    def build(width):
        cfg = mup.mup_config(TransformerConfig(vocab_size=VOCAB, d_model=width, n_heads=4, d_ff=4 * width,
                                               n_layers=2, readout=True, causal=True))
        model = Transformer.from_config(cfg)
        return init.apply(model, "mup", base_width=BASE, generator=torch.Generator().manual_seed(width))

    model, base = build(WIDTH), build(BASE)
    assert mup_lint.lint(model, base, inputs=IDS, optimizer=lambda m: torch.optim.Adam(
        init.param_groups(m, "mup", lr=1e-3, base_width=BASE))) == []


def gpt2(width: int, tied: bool) -> nn.Module:
    transformers = pytest.importorskip("transformers")
    config = transformers.GPT2Config(vocab_size=VOCAB, n_positions=16, n_embd=width, n_layer=2, n_head=4,
                                     resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, use_cache=False,
                                     bos_token_id=VOCAB - 1, eos_token_id=VOCAB - 1, tie_word_embeddings=tied)
    torch.manual_seed(width)
    return transformers.GPT2LMHeadModel._from_config(config, attn_implementation="sdpa").eval()


def converted(tied: bool) -> tuple[nn.Module, nn.Module]:
    """GPT-2 at WIDTH and BASE made muP with initcore: scale_attention, apply(base=)."""
    meta = gpt2(BASE, tied)
    out = []
    for width in (WIDTH, BASE):
        model = gpt2(width, tied)
        mup.scale_attention(model)
        init.apply(model, "mup", base=meta, inputs={"input_ids": IDS}, roles=zoo.GPT2_ROLES,
                   generator=torch.Generator().manual_seed(width))
        out.append(model)
    return out[0], out[1]


@pytest.mark.parametrize("tied", [True, False], ids=["tied", "untied"])
def test_hugging_face_gpt2_converted_with_initcore_is_clean(tied):
    model, base = converted(tied)
    meta = gpt2(BASE, tied)

    def make(m):
        return torch.optim.AdamW(init.param_groups(m, "mup", lr=1e-3, optimizer="adamw", base=meta,
                                                   inputs={"input_ids": IDS}, roles=zoo.GPT2_ROLES, weight_decay=0.1))

    assert mup_lint.lint(model, base, inputs={"input_ids": IDS}, roles=zoo.GPT2_ROLES, optimizer=make) == []
    assert mup_lint.lint(model, base, inputs={"input_ids": IDS}, roles=zoo.GPT2_ROLES, optimizer=make(model)) == []


def test_table_lines_up_the_findings():
    findings = [mup_lint.Finding("readout_init", "head.weight", "why one"), mup_lint.Finding("tied_init", "w", "two")]
    assert mup_lint.table(findings).splitlines() == [
        "problem       where        why",
        "readout_init  head.weight  why one",
        "tied_init     w            two"]


def test_the_docstring_example_runs():
    assert doctest.testmod(mup_lint, optionflags=doctest.ELLIPSIS).failed == 0
