"""muP on a model initcore did not write: which dimensions grow, read from the same model at its base width
(init.mup.classify, apply(base=), param_groups(base=))."""

from __future__ import annotations

import math
import os

import pytest
import torch
from torch import nn

from initcore import init, zoo
from initcore.init import mup
from initcore.models import MLP, Transformer, TransformerConfig, readout

needs_zoo = pytest.mark.skipif(zoo.missing() is not None and not os.environ.get("INITCORE_REQUIRE_ZOO"),
                               reason=f"{zoo.missing()}")  # under INITCORE_REQUIRE_ZOO (CI) it runs, and fails


def plain_mlp(width: int, head: int = 3) -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(), nn.Linear(width, head))


class TiedLM(nn.Module):
    """A nanoGPT-like language model whose lm_head holds the embedding table."""

    def __init__(self, width: int, vocab: int = 23) -> None:
        super().__init__()
        self.wte, self.mix = nn.Embedding(vocab, width), nn.Linear(width, width)
        self.norm = nn.LayerNorm(width)
        self.lm_head = nn.Linear(width, vocab, bias=False)
        self.lm_head.weight = self.wte.weight

    def forward(self, idx):
        return self.lm_head(self.norm(torch.relu(self.mix(self.wte(idx)))))


X = torch.randn(4, 5)
IDS = torch.randint(0, 23, (2, 7), generator=torch.Generator().manual_seed(0))


def test_each_parameter_gets_its_class_from_which_dimensions_grow() -> None:
    classes = mup.classify(plain_mlp(64), plain_mlp(16), inputs=X)
    got = {n: (c.kind, c.mults, c.readout) for n, c in classes.items()}
    assert got == {
        "0.weight": ("input", (1.0, 4.0), False), "0.bias": ("vector", (4.0,), False),
        "2.weight": ("hidden", (4.0, 4.0), False), "2.bias": ("vector", (4.0,), False),
        "4.weight": ("output", (4.0, 1.0), True), "4.bias": ("finite", (1.0,), False),  # the readout's bias
    }
    assert classes["4.weight"].base_fan_in == 16
    # Without inputs the readout is the output-shaped matrix: the same here.
    assert {n: c.kind for n, c in mup.classify(plain_mlp(64), plain_mlp(16)).items()} == \
        {n: c.kind for n, c in classes.items()}


def test_the_trace_names_the_readout_and_the_shapes_give_its_class() -> None:
    # head 64 wide: the trace says it makes the output, but the output grows with width: a hidden matrix.
    classes = mup.classify(plain_mlp(64, head=64), plain_mlp(16, head=16), inputs=X)
    assert classes["4.weight"].readout and classes["4.weight"].kind == "hidden"
    assert not mup.classify(plain_mlp(64, head=64), plain_mlp(16, head=16))["4.weight"].readout


def test_base_gives_initcore_models_the_same_init_and_learning_rates_as_their_config() -> None:
    # The config path (base_width) and the traced path (base=) must agree draw for draw on initcore's MLP,
    # whose head is width x width (only the trace tells it from a hidden layer), and on its transformer.
    x = torch.randn(4, 8)
    by_config, by_base = MLP(8, 64, 3), MLP(8, 64, 3)
    init.apply(by_config, "mup", base_width=16, generator=torch.Generator().manual_seed(1))
    init.apply(by_base, "mup", base=MLP(8, 16, 3), inputs=x, generator=torch.Generator().manual_seed(1))
    for (n, a), (_, b) in zip(by_config.named_parameters(), by_base.named_parameters(), strict=True):
        assert torch.equal(a, b), n
    for optimizer in ("adam", "sgd"):  # under SGD the head's bias (width-sized, read) keeps lr x 1
        assert _lrs(by_config, optimizer, base_width=16) == _lrs(by_base, optimizer, base=MLP(8, 16, 3), inputs=x)

    cfg = mup.mup_config(TransformerConfig(vocab_size=50, d_model=64, n_heads=4, d_ff=256, n_layers=2))
    model, base = Transformer.from_config(cfg), Transformer.from_config(mup.base_config(cfg, 16))
    ids = torch.randint(0, 50, (2, 6))
    for optimizer in ("adam", "sgd"):
        assert _lrs(model, optimizer, base_width=16) == _lrs(model, optimizer, base=base, inputs=ids)


def _lrs(model: nn.Module, optimizer: str = "adam", **kw) -> dict[str, float]:
    groups = init.param_groups(model, "mup", lr=1.0, optimizer=optimizer, **kw)
    names = {id(p): n for n, p in model.named_parameters()}
    return {names[id(p)]: g["lr"] for g in groups for p in g["params"]}


def test_the_readout_of_a_foreign_model_falls_as_one_over_fan_in() -> None:
    model = init.apply(plain_mlp(256), "mup", base=plain_mlp(16), inputs=X,
                       generator=torch.Generator().manual_seed(0))
    # Table 3: head N(0, base/fan_in^2) = (sqrt(16)/256)^2; hidden N(0, 1/fan_in). 768 and 65536 draws: the
    # std's relative standard error is 1/sqrt(2n) <= 2.6%, so 4 standard errors is 10%.
    assert model[4].weight.std().item() == pytest.approx(math.sqrt(16) / 256, rel=0.1)
    assert model[2].weight.std().item() == pytest.approx(1 / math.sqrt(256), rel=0.02)
    assert _lrs(model, base=plain_mlp(16))["4.weight"] == pytest.approx(16 / 256)


def test_a_tied_table_keeps_its_embedding_init_and_its_readout_output_falls_as_one_over_width() -> None:
    model = TiedLM(256)
    init.apply(model, "mup", base=TiedLM(16), inputs=IDS, generator=torch.Generator().manual_seed(0))
    assert model.wte.weight.std().item() == pytest.approx(1.0, rel=0.05)  # 5888 draws: 4 s.e. = 3.7%
    assert readout.output_multipliers(model) == {"lm_head": pytest.approx(math.sqrt(16) / 256)}
    classes = mup.classify(model, TiedLM(16), inputs=IDS)
    assert classes["wte.weight"].tied and classes["wte.weight"].names == ("wte.weight", "lm_head.weight")
    assert _lrs(model, base=TiedLM(16))["wte.weight"] == 1.0  # an input under Adam
    assert _lrs(model, "sgd", base=TiedLM(16))["wte.weight"] == 16.0  # lr x m_out under SGD
    init.apply(model, "mup", base=TiedLM(16), generator=torch.Generator().manual_seed(0))
    assert len(model.lm_head._forward_hooks) == 1  # applied again: one multiplier, not two
    init.apply(model, "xavier_uniform")  # another init: the multiplier was muP's, it goes
    assert readout.output_multipliers(model) == {} and not model.lm_head._forward_hooks


def test_a_tie_done_in_the_forward_is_refused_with_the_multiplier_to_apply() -> None:
    class FunctionalTie(TiedLM):
        def forward(self, idx):
            return torch.nn.functional.linear(self.norm(self.mix(self.wte(idx))), self.wte.weight)

    model = FunctionalTie(64)
    del model.lm_head
    with pytest.raises(ValueError, match=r"no module applies .* = 0\.0625"):  # sqrt(16) / 64
        init.apply(model, "mup", base=FunctionalTie(16), inputs=IDS)


def test_weight_decay_per_group_keeps_lr_times_decay_fixed() -> None:
    groups = init.param_groups(plain_mlp(64), "mup", lr=0.01, optimizer="adamw", base=plain_mlp(16),
                               weight_decay=0.1)
    assert sorted(g["lr"] for g in groups) == [0.0025, 0.01]
    assert all(g["lr"] * g["weight_decay"] == pytest.approx(0.001) for g in groups)
    (sp,) = init.param_groups(plain_mlp(64), "standard", lr=0.01, weight_decay=0.1)
    assert sp["weight_decay"] == 0.1


@pytest.mark.parametrize(("kw", "match"), [
    ({"base": plain_mlp(16), "base_width": 16}, "not both|one of"),
    ({"inputs": X}, "give base= too"),
    ({"base": "mlp"}, "must be the model built at its base width"),
    ({"base": nn.Sequential(nn.Linear(5, 16))}, r"has no parameter 2\.weight"),
    ({"base": {"0.weight": (16,)}}, "has no parameter|shape"),
])
def test_bad_base_input_is_a_clear_error(kw, match) -> None:
    with pytest.raises(ValueError, match=match):
        init.apply(plain_mlp(64), "mup", **kw)


def test_param_groups_refuse_bad_weight_decay_and_two_bases() -> None:
    with pytest.raises(ValueError, match="weight_decay must be a number >= 0"):
        init.param_groups(plain_mlp(64), "mup", lr=0.1, base=plain_mlp(16), weight_decay=-1)
    with pytest.raises(ValueError, match="one of base"):
        init.param_groups(plain_mlp(64), "mup", lr=0.1, base=plain_mlp(16), base_width=16)


@needs_zoo
def test_hugging_face_attention_is_scaled_by_one_over_d_head_once() -> None:
    model, _ = zoo.gpt2(0, n_layer=2, n_embd=64, n_head=4, vocab_size=97)
    ids = torch.randint(0, 97, (2, 8))
    before = model(ids).logits
    names = mup.scale_attention(model)
    assert names == ["transformer.h.0.attn", "transformer.h.1.attn"]
    assert mup.scale_attention(model) == names  # idempotent
    assert all(model.get_submodule(n).scaling == pytest.approx(1 / 16) for n in names)  # d_head 16
    assert not torch.allclose(model(ids).logits, before)


@needs_zoo
def test_a_hugging_face_llama_at_two_widths_gets_table_3s_classes() -> None:
    def llama(hidden: int, intermediate: int):
        return zoo.llama(0, n_layer=2, hidden=hidden, n_head=4, n_kv_head=2, intermediate=intermediate,
                         vocab_size=97, seq_len=8)

    (model, batch), (base, _) = llama(256, 1024), llama(64, 256)
    kinds = {n.replace("model.layers.0.", ""): c.kind for n, c in mup.classify(model, base, inputs=batch).items()
             if ".1." not in n}
    assert kinds == {"model.embed_tokens.weight": "input", **dict.fromkeys(
        ["self_attn.q_proj.weight", "self_attn.k_proj.weight", "self_attn.v_proj.weight", "self_attn.o_proj.weight",
         "mlp.gate_proj.weight", "mlp.up_proj.weight", "mlp.down_proj.weight"], "hidden"),
        "input_layernorm.weight": "vector", "post_attention_layernorm.weight": "vector",
        "model.norm.weight": "vector", "lm_head.weight": "output"}
    init.apply(model, "mup", base=base, inputs=batch,  # LlamaRMSNorm: a norm by its name
               generator=torch.Generator().manual_seed(0))
    assert model.lm_head.weight.std().item() == pytest.approx(math.sqrt(64) / 256, rel=0.1)  # 24832 draws
    # A factory that keeps d_ff fixed makes the feed-forward a bottleneck: gate and up are output weights.
    (fixed, batch), (fixed_base, _) = llama(256, 344), llama(64, 344)
    classes = mup.classify(fixed, fixed_base, inputs=batch)
    assert classes["model.layers.0.mlp.up_proj.weight"].kind == "output"
    assert classes["model.layers.0.mlp.down_proj.weight"].kind == "input"
    assert [n for n, c in classes.items() if c.readout] == ["lm_head.weight"]


def test_at_the_base_width_the_traced_readout_is_still_the_readout() -> None:
    # Nothing has grown at the base width itself: the trace keeps the readout an output weight, so that
    # readout="zero" zeroes it at every width of a coordinate check, the base's included.
    for width in (16, 64):
        model = init.apply(plain_mlp(width), "mup", base=plain_mlp(16), inputs=X, readout="zero")
        assert bool((model[4].weight == 0).all()), width
        assert not bool((model[2].weight == 0).all())


def test_delta_tells_what_grows_at_the_base_width() -> None:
    # A width-sized output (no readout of finite size): at the base width, without delta, the traced last
    # layer can only be taken as the readout; with delta (set_base_shapes' third model) it is hidden.
    square, base = plain_mlp(16, head=16), plain_mlp(16, head=16)
    assert mup.classify(square, base, inputs=X)["4.weight"].kind == "output"
    classes = mup.classify(square, base, inputs=X, delta=plain_mlp(32, head=32))
    assert classes["4.weight"].kind == "hidden" and classes["4.weight"].mults == (1.0, 1.0)
    assert classes["2.bias"].kind == "vector" and classes["4.bias"].kind == "vector"
    with pytest.raises(ValueError, match="the delta model has no parameter"):
        mup.classify(square, base, delta=nn.Sequential(nn.Linear(5, 32)))
    with pytest.raises(ValueError, match="give base= too"):
        init.param_groups(square, "mup", lr=0.1, delta=plain_mlp(32))


@needs_zoo
def test_gpt2s_conv1d_weights_are_read_as_stored_in_out_without_roles() -> None:
    (model, batch), (base, _) = (zoo.gpt2(0, n_layer=1, n_embd=w, n_head=2, vocab_size=97) for w in (128, 32))
    with_roles = mup.classify(model, base, inputs=batch, roles=zoo.GPT2_ROLES)
    without = mup.classify(model, base, inputs=batch)
    assert with_roles == without
    # c_fc is (in 128, out 512) as stored: fan-in 128 from base 32
    fc = without["transformer.h.0.mlp.c_fc.weight"]
    assert (fc.kind, fc.fan_in, fc.base_fan_in) == ("hidden", 128, 32)
