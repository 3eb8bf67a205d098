"""initcore.audit on models initcore did not write: the rule each parameter follows, and each flag on the bug it
names (every test below fails when its bug is removed from the model, or its check from the audit)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from initcore import audit, auditing, init
from initcore.models import Role

D = 64


class Attention(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c_attn, self.c_proj = nn.Linear(D, 3 * D), nn.Linear(D, D)


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.ln_1, self.attn, self.ln_2 = nn.LayerNorm(D), Attention(), nn.LayerNorm(D)
        self.mlp = nn.ModuleDict({"c_fc": nn.Linear(D, 4 * D), "c_proj": nn.Linear(4 * D, D)})


class GPT(nn.Module):
    """nanoGPT's parameters and its _init_weights (Karpathy's model.py), with the bugs the audit names as options."""

    def __init__(self, n_layer: int = 4, vocab: int = 512, skip_norms: bool = False, tie: bool = True) -> None:
        super().__init__()
        self.n_layer, self.skip_norms = n_layer, skip_norms
        self.transformer = nn.ModuleDict({"wte": nn.Embedding(vocab, D), "wpe": nn.Embedding(64, D),
                                          "h": nn.ModuleList(Block() for _ in range(n_layer)), "ln_f": nn.LayerNorm(D)})
        self.lm_head = nn.Linear(D, vocab, bias=False)
        if tie:
            self.transformer.wte.weight = self.lm_head.weight
        self.init_weights()

    def init_weights(self) -> None:
        self.apply(self._init_weights)
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, 0.0, 0.02 / math.sqrt(2 * self.n_layer))

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, 0.0, 0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, 0.0, 0.02)
        elif isinstance(module, nn.LayerNorm) and not self.skip_norms:
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)


def _row(frame, name):
    hit = frame[frame["name"] == name]
    assert len(hit) == 1, f"{name} not in {list(frame['name'])}"
    return hit.iloc[0]


def test_a_correct_nanogpt_is_named_rule_by_rule_with_no_flag():
    torch.manual_seed(0)
    frame = audit(GPT())
    assert list(auditing.flagged(frame)["name"]) == []
    assert _row(frame, "transformer.h.0.attn.c_proj.weight")["rule"] == "normal(0.02/sqrt(2L))"  # L = 4
    assert _row(frame, "transformer.h.3.mlp.c_fc.weight")["rule"] == "normal(0.02)"
    assert _row(frame, "transformer.h.0.ln_1.weight")["rule"] == "torch_default"  # 1, LayerNorm's own
    assert _row(frame, "transformer.wte.weight")["tied"] == "lm_head.weight"  # tied: one row, both names
    assert len(frame) == len(list(GPT().parameters()))
    groups = auditing.grouped(frame)
    c_proj = groups[groups["group"] == "transformer.h.*.attn.c_proj.weight"].iloc[0]
    assert c_proj["n"] == 4 and c_proj["rule"] == "normal(0.02/sqrt(2L))"
    assert all(len(line) <= 120 for line in auditing.format_table(groups).splitlines())


def test_a_layernorm_the_init_skips_after_to_empty_is_uninitialized_and_a_lost_tie_is_untied():
    model, how, tied = auditing.materialize(lambda: GPT(skip_norms=True))
    assert how == "model.init_weights()" and tied == [("transformer.wte.weight", "lm_head.weight")]
    frame = audit(model, tied=tied)
    flags = dict(zip(frame["name"], frame["flags"], strict=True))
    assert flags["transformer.h.0.ln_1.weight"] == "uninitialized" and flags["transformer.ln_f.bias"] == "uninitialized"
    assert flags["transformer.h.0.attn.c_attn.weight"] == ""
    assert flags["lm_head.weight"] == "untied" and flags["transformer.wte.weight"] == "untied"  # to_empty broke it
    model, _, tied = auditing.materialize(lambda: GPT(skip_norms=False, tie=False))
    assert auditing.flagged(audit(model, tied=tied)).empty  # the same recipe with the norms initialized


def test_a_new_module_left_at_torchs_default_is_flagged_among_its_peers():
    torch.manual_seed(0)
    model = GPT()
    model.transformer.h[2].mlp["c_fc"] = nn.Linear(D, 4 * D)  # added after init: torch's U(+-1/sqrt(fan_in))
    frame = audit(model)
    row = _row(frame, "transformer.h.2.mlp.c_fc.weight")
    assert row["rule"] == "torch_default" and row["flags"] == "torch_default"
    assert "torch's Linear default" in row["evidence"]
    assert set(auditing.flagged(frame)["name"]) == {"transformer.h.2.mlp.c_fc.weight", "transformer.h.2.mlp.c_fc.bias"}


def test_packed_qkv_drawn_as_one_matrix_is_flagged():
    torch.manual_seed(0)
    model = GPT()
    for block in model.transformer.h:  # what init.apply did before it refused: Xavier over (3E, E)
        nn.init.xavier_uniform_(block.attn.c_attn.weight)
    row = _row(audit(model), "transformer.h.1.attn.c_attn.weight")
    assert row["flags"] == "packed" and "xavier_uniform on the packed (192, 64)" in row["evidence"]
    model = GPT()
    init.apply(model, "xavier_uniform", roles={"*.c_attn.weight": ("qkv", 3)})  # chunk by chunk
    frame = audit(model)
    assert _row(frame, "transformer.h.1.attn.c_attn.weight")["rule"] == "xavier_uniform"
    assert auditing.flagged(frame).empty


class Conv1D(nn.Module):
    """Hugging Face's Conv1D: a Linear whose weight is stored (in, out)."""

    def __init__(self, nf: int, nx: int) -> None:
        super().__init__()
        self.nf, self.weight, self.bias = nf, nn.Parameter(torch.empty(nx, nf)), nn.Parameter(torch.zeros(nf))


def test_a_conv1d_drawn_with_swapped_fans_is_flagged_transposed():
    torch.manual_seed(0)
    mlp = nn.ModuleDict({"c_fc": Conv1D(512, 128), "c_proj": Conv1D(128, 512)})
    for m in mlp.values():
        nn.init.kaiming_normal_(m.weight)  # on the stored (in, out) tensor: torch reads size(1), the output, as fan_in
    frame = audit(mlp)
    row = _row(frame, "c_fc.weight")
    assert row["flags"] == "transposed" and "fan_in read as 512 where the layer's is 128" in row["evidence"]
    for m in mlp.values():
        nn.init.kaiming_normal_(m.weight.t())  # the layer's own view: fan_in = in
    frame = audit(mlp)
    assert auditing.flagged(frame).empty and _row(frame, "c_fc.weight")["rule"] == "kaiming_normal"


def test_equal_but_untied_parameters_and_identical_shards_are_flagged():
    torch.manual_seed(0)
    model = GPT()
    with torch.no_grad():
        model.transformer.h[1].mlp["c_fc"].weight.copy_(model.transformer.h[0].mlp["c_fc"].weight)
        w = model.transformer.h[2].attn.c_proj.weight
        w[D // 2:] = w[: D // 2]  # two ranks that drew the same values
    frame = audit(model)
    assert "equal to transformer.h.1.mlp.c_fc.weight" in _row(frame, "transformer.h.0.mlp.c_fc.weight")["evidence"]
    assert _row(frame, "transformer.h.1.mlp.c_fc.weight")["flags"] == "equal"
    assert "rows 0-31 equal rows 32-63" in _row(frame, "transformer.h.2.attn.c_proj.weight")["evidence"]
    assert _row(frame, "transformer.wte.weight")["flags"] == ""  # tied: reported as tied, not flagged


def test_one_block_initialized_differently_differs_from_its_group():
    torch.manual_seed(0)
    model = GPT()
    nn.init.normal_(model.transformer.h[3].mlp["c_fc"].weight, 0.0, 0.05)
    row = _row(audit(model), "transformer.h.3.mlp.c_fc.weight")
    assert row["flags"] == "differs" and "other 3 of 3 in its group are normal(0.02)" in row["evidence"]


def test_expectations_by_strategy_and_by_pattern():
    torch.manual_seed(0)
    model = GPT()
    expect = {"*.c_proj.weight": "normal(0.02/sqrt(2L))", "*.weight": "normal(0.02)", "*.bias": "zeros"}
    frame = audit(model, expect={k: v for k, v in expect.items()} | {"*ln*": "ones"})
    assert (frame["expected_ok"] == True).sum() > 0  # noqa: E712 (a column of True/False/None)
    wrong = audit(model, expect={"*.c_proj.weight": "normal(0.02)"})
    row = _row(wrong, "transformer.h.0.attn.c_proj.weight")
    assert row["flags"] == "expected" and "expected normal(0.02)" in row["evidence"]
    gpt2 = audit(model, expect="gpt2", roles={"*.c_attn.weight": ("qkv", 3), "*.attn.c_proj.weight": "attn_out",
                                            "*.mlp.c_proj.weight": "mlp_out", "*.c_fc.weight": "mlp_in"})
    assert auditing.flagged(gpt2).empty, auditing.flagged(gpt2)[["name", "evidence"]]


@pytest.mark.parametrize("bad,match", [
    ("normal(0.0.2)", "does not parse; valid: normal\\(std\\)"),
    ("xavier", "unknown rule 'xavier' \\(did you mean xavier_normal, xavier_uniform"),
    ("normal", "normal needs its std"),
    ("normal(0.02/sqrt(2Q))", "does not parse|is not a number"),
    ("kaiming_normal(mode='fan_avg')", "mode is 'fan_in' or 'fan_out'"),
])
def test_a_rule_that_does_not_parse_is_one_clear_error(bad, match):
    with pytest.raises(ValueError, match=match):
        audit(GPT(n_layer=1), expect=bad)


def test_bad_models_and_patterns_are_one_clear_error():
    with pytest.raises(ValueError, match="ReLU has no parameters: nothing to audit"):
        audit(nn.ReLU())
    with torch.device("meta"):
        meta = nn.Linear(4, 4)
    with pytest.raises(ValueError, match="parameters on the meta device hold no values \\(weight, bias\\).*to_empty"):
        audit(meta)
    with pytest.raises(ValueError, match="expect pattern 'nope.\\*' matches no parameter of GPT"):
        audit(GPT(n_layer=1), expect={"nope.*": "zeros"})
    with pytest.raises(ValueError, match="roles pattern 'nope' matches no parameter"):
        audit(GPT(n_layer=1), roles={"nope": Role("hidden")})
