"""initcore.coord: runs as data, the measurement over widths, slopes, summaries, the table and the figure."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from initcore import coord
from initcore.coord import CoordRun

SMALL_MLP = CoordRun("mlp", "mup", "adam", (16, 32), steps=2)
SMALL_TRANSFORMER = CoordRun("transformer", "mup", "adam", (16, 32), steps=2)


def _synthetic(exponents: dict[str, float], widths=(64, 128, 256, 1024), steps=(0, 1, 2)) -> pd.DataFrame:
    """A ``measure``-shaped frame whose change of row r at step t >= 1 is (t / 10) * width^exponents[r]."""
    rows = []
    for width in widths:
        for t in steps:
            for name, s in exponents.items():
                rows.append({"module": name, "kind": "linear", "layer": 0, "step": t, "width": width,
                             "act_rms": 1.0, "act_change_rms": 0.0 if t == 0 else t / 10 * width**s,
                             "logit_std": math.nan})
    return pd.DataFrame(rows)


def test_slopes_recover_power_laws():
    table = coord.slopes(_synthetic({"a": 0.0, "b": 1.0, "c": -0.5}))
    got = table.set_index(["coordinate", "step"])["slope"]
    assert len(got) == 6  # steps 1 and 2; step 0 has no change to fit
    for (name, _), slope in got.items():
        assert slope == pytest.approx({"a": 0.0, "b": 1.0, "c": -0.5}[name], abs=1e-12)


def test_a_coordinate_that_has_not_moved_somewhere_has_no_slope():
    frame = _synthetic({"a": 1.0})
    frame.loc[(frame["step"] == 1) & (frame["width"] == 64), "act_change_rms"] = 0.0
    assert list(coord.slopes(frame)["step"]) == [2]


def test_summary_is_shaped_as_probe_rows():
    summary = coord.summary(_synthetic({"a": 0.5}, widths=(64, 1024)))
    assert list(summary.columns) == ["module", "kind", "layer", "slope", "change_first_rms", "change_last_rms"]
    row = summary.set_index("module").loc["a@t2"]
    assert row["kind"] == "coord" and row["layer"] == 2
    assert row["slope"] == pytest.approx(0.5)
    assert row["change_first_rms"] == pytest.approx(0.2 * 8) and row["change_last_rms"] == pytest.approx(0.2 * 32)


def test_measure_an_mlp():
    frame = coord.measure(SMALL_MLP, seed=0)
    assert set(frame["width"]) == {16, 32} and set(frame["step"]) == {0, 1, 2}
    modules = set(frame.loc[frame["kind"] != "param", "module"])
    assert modules == {"layers.0", "layers.1", "output"}  # the head's row, layers.2, is the output's
    assert set(coord.table(frame).columns) == {"step", "coordinate", "w16", "w32", "slope", "verdict"}


def test_measure_a_transformer_has_logits_and_a_readout():
    frame = coord.measure(SMALL_TRANSFORMER, seed=0)
    coords = coord.coordinates(frame)
    assert {"blocks.0.attn", "blocks.0.ffn", "blocks.0", "output", "blocks.0.attn:logits"} == set(coords["coordinate"])
    assert "head" not in set(frame["module"])
    logits = coords[(coords["kind"] == "logits")].set_index(["step", "width"])["value"]
    assert (logits.loc[0] == 0).all()  # muP's zero query: no logits at init
    assert (logits.loc[2] > 0).all()  # the second step moved the query (the first moved only the zero readout)


def test_the_task_is_the_same_at_every_width():
    _, a, _ = coord.build(SMALL_MLP, 16, seed=3)
    _, b, _ = coord.build(SMALL_MLP, 32, seed=3)
    assert torch.equal(a.inputs, b.inputs) and torch.equal(a.targets, b.targets)


def test_the_optimizer_gets_mup_groups_and_sp_one_group():
    _, _, opt = coord.build(SMALL_MLP, 32, seed=0)
    lrs = sorted({g["lr"] for g in opt.param_groups})
    assert lrs == pytest.approx([coord.DEFAULT_LR["adam"] / 2, coord.DEFAULT_LR["adam"]])  # width 32 over base 16
    _, _, opt = coord.build(CoordRun("mlp", "kaiming_normal", "sgd", (16, 32)), 32, seed=0)
    assert [g["lr"] for g in opt.param_groups] == [coord.DEFAULT_LR["sgd"]]


def test_a_tamper_sees_the_model_and_its_groups():
    seen = []
    coord.build(SMALL_MLP, 32, seed=0, tamper=lambda model, groups, width: seen.append((len(groups), width)))
    assert seen == [(2, 32)]


def test_theory_slopes_are_zero_under_mup():
    assert all(v == 0.0 for (opt, p), s in coord.THEORY_SLOPES.items() if p == "mup" for v in s.values())
    assert coord.THEORY_SLOPES[("adam", "sp")]["hidden"] == 1.0 and coord.THEORY_SLOPES[("sgd", "sp")]["hidden"] == 0.5


@pytest.mark.parametrize("kwargs, match", [
    ({"model": "cnn"}, "unknown model 'cnn'; the coordinate check knows: mlp, transformer"),
    ({"optimizer": "lion"}, "unknown optimizer 'lion'; valid: adam, sgd"),
    ({"init": "mupp"}, "unknown strategy 'mupp'"),
    ({"widths": (64,)}, "widths must be two or more distinct positive integers"),
    ({"widths": (128, 64)}, "widths must be two or more distinct positive integers"),
    ({"widths": (0, 64)}, "widths must be two or more distinct positive integers"),
    ({"model": "transformer", "widths": (63, 128)}, "multiples of n_heads = 2"),
    ({"steps": 0}, "steps must be an integer in 1..100"),
    ({"lr": -1.0}, "lr must be a positive number"),
    ({"init": None}, "init None keeps a factory's own init"),
    ({"exceptions": "output@t1"}, "not the string"),
    ({"exceptions": ("output@t0",)}, "the form is COORDINATE or COORDINATE@tSTEP"),
    ({"exceptions": ("@t1",)}, "the form is COORDINATE or COORDINATE@tSTEP"),
])
def test_bad_runs_say_what_is_valid(kwargs, match):
    args = {"model": "mlp", "init": "mup", **kwargs}
    with pytest.raises(ValueError, match=match):
        CoordRun(**args)


def test_keys_tell_runs_apart():
    keys = {CoordRun("mlp", "mup").key, CoordRun("mlp", "mup", "sgd").key, CoordRun("mlp", "mup", steps=2).key,
            CoordRun("mlp", "mup", widths=(64, 128)).key, CoordRun("mlp", "mup", lr=0.1).key,
            CoordRun("transformer", "mup", widths=(64, 128)).key}
    assert len(keys) == 6


def test_fits_use_natural_logs_of_width():
    widths = np.array([64.0, 1024.0])
    assert coord._fit(widths, widths**0.25) == pytest.approx(0.25)
    assert coord._fit(widths, np.array([1.0, 0.0])) is None


# --- the verdict ---------------------------------------------------------------------------------------------


def test_verdicts_name_flat_growing_shrinking_unmoved_and_excepted_coordinates():
    frame = _synthetic({"flat": 0.1, "grows": 1.0, "shrinks": -0.5, "still": 0.0, "readout": 1.0})
    frame.loc[(frame["module"] == "still") & (frame["width"] == 64), "act_change_rms"] = 0.0
    judged = coord.verdicts(frame, exceptions=("readout@t1",))
    got = judged.set_index(["coordinate", "step"])["verdict"]
    assert got[("flat", 1)] == "flat" and got[("grows", 2)] == "grows" and got[("shrinks", 1)] == "shrinks"
    assert got[("still", 1)] == "not moved" and math.isnan(judged.set_index(["coordinate", "step"]).loc[("still", 1),
                                                                                                         "slope"])
    assert got[("readout", 1)] == "excepted" and got[("readout", 2)] == "grows"  # only at the step declared
    assert not coord.passed(judged)
    assert coord.passed(coord.verdicts(frame[frame["module"].isin(["flat", "shrinks", "still"])]))
    everywhere = coord.verdicts(frame[frame["module"].isin(["flat", "readout"])], exceptions=("read*",))
    assert coord.passed(everywhere)  # a pattern without a step excuses every step


def test_the_bound_on_slopes_is_the_verdicts_and_a_nan_fails():
    frame = _synthetic({"a": 0.3})
    assert set(coord.verdicts(frame)["verdict"]) == {"grows"}  # 0.3 > MAX_SLOPE = 0.25
    assert set(coord.verdicts(frame, max_slope=0.35)["verdict"]) == {"flat"}
    frame.loc[(frame["step"] == 2) & (frame["width"] == 1024), "act_change_rms"] = math.nan
    judged = coord.verdicts(frame, max_slope=0.35).set_index("step")["verdict"]
    assert judged[1] == "flat" and judged[2] == "not finite"


@pytest.mark.parametrize("run", [CoordRun("mlp", "mup", "sgd", (64, 256)), CoordRun("mlp", "kaiming_normal", "sgd",
                                                                                 (64, 256))],
                         ids=lambda r: r.init)
def test_mup_passes_and_the_standard_parametrization_fails_on_the_built_in_mlp(run):
    # MAX_SLOPE's source (see coord.py): muP's slopes within 0.09, the standard parametrization's largest >= 0.76;
    # SGD's, the smaller slopes of the two optimizers in theory (hidden 1/2), is the case nearer the bound
    assert coord.passed(coord.verdicts(coord.measure(run, seed=0))) == (run.init == "mup")


# --- a model of yours: factory(seed, width) -> (model, inputs[, targets]) -------------------------------------


def mlp_factory(seed: int, width: int):
    """A user's MLP: inputs from the seed first, then the model (torch's default init)."""
    x = torch.randn(16, 32, generator=torch.Generator().manual_seed(seed))
    return nn.Sequential(nn.Linear(32, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(), nn.Linear(width, 8)), x


class TinyLM(nn.Module):
    """A user's language model: embedding, a ReLU block, a readout over the vocabulary."""

    def __init__(self, width: int, vocab: int = 32) -> None:
        super().__init__()
        self.wte = nn.Embedding(vocab, width)
        self.fc = nn.Linear(width, width)
        self.lm_head = nn.Linear(width, vocab, bias=False)

    def forward(self, idx):
        return self.lm_head(torch.relu(self.fc(self.wte(idx))))


def lm_factory(seed: int, width: int):
    g = torch.Generator().manual_seed(seed)
    idx, targets = torch.randint(0, 32, (4, 8), generator=g), torch.randint(0, 32, (4, 8), generator=g)
    return TinyLM(width), idx, targets


WIDTHS = (64, 128, 256, 512)


@pytest.mark.parametrize("factory", [mlp_factory, lm_factory], ids=["mlp", "lm"])
def test_a_factory_passes_under_mup_and_fails_with_its_own_init(factory):
    mup = coord.verdicts(coord.measure(CoordRun(factory, "mup", widths=WIDTHS), seed=0))
    assert coord.passed(mup), mup
    own = coord.verdicts(coord.measure(CoordRun(factory, None, widths=WIDTHS), seed=0))
    assert not coord.passed(own)
    # the standard parametrization's hidden slope under Adam is 1 in theory: what fails is that growth
    grows = own[own["verdict"] == "grows"]
    assert (grows["slope"] > 0.5).any(), own


def test_a_factory_s_readout_is_found_from_its_shapes_and_its_row_is_the_output():
    run = CoordRun(lm_factory, "mup", widths=(16, 32))
    model, _, _ = coord.build(run, 32, seed=0)
    assert coord.readouts(run, model, seed=0) == {"lm_head.weight"}  # wte is (vocab, width): its fan-in is vocab
    assert torch.count_nonzero(model.lm_head.weight) == 0  # muP's zero readout
    assert model.fc.weight.std().item() == pytest.approx(32**-0.5, rel=0.15)  # N(0, 1/fan_in), 1024 draws
    frame = coord.measure(run, seed=0)
    assert "lm_head" not in set(frame["module"]) and "output" in set(frame["module"])
    run = CoordRun(mlp_factory, "mup", widths=(16, 32))
    assert coord.readouts(run, coord.build(run, 16, seed=0)[0], seed=0) == {"4.weight"}


def test_a_factory_gets_mup_learning_rates_from_its_shapes():
    run = CoordRun(mlp_factory, "mup", widths=(16, 64))
    model, _, opt = coord.build(run, 64, seed=0)
    lrs = {id(p): g["lr"] for g in opt.param_groups for p in g["params"]}
    lr = coord.DEFAULT_LR["adam"]
    assert lrs[id(model[0].weight)] == pytest.approx(lr)  # fan-in 32 does not grow
    assert lrs[id(model[2].weight)] == pytest.approx(lr / 4)  # hidden: lr / m_in, m_in = 64 / 16
    assert lrs[id(model[4].weight)] == pytest.approx(lr / 4)  # readout: lr / m_in
    _, _, own = coord.build(CoordRun(mlp_factory, None, widths=(16, 64)), 64, seed=0)
    assert [g["lr"] for g in own.param_groups] == [lr]


class TiedLM(TinyLM):
    """TinyLM whose readout is its embedding table (tied, as GPT-2's lm_head and wte)."""

    def __init__(self, width: int, vocab: int = 32) -> None:
        super().__init__(width, vocab)
        self.lm_head.weight = self.wte.weight


def tied_factory(seed: int, width: int):
    g = torch.Generator().manual_seed(seed)
    idx, targets = torch.randint(0, 32, (4, 8), generator=g), torch.randint(0, 32, (4, 8), generator=g)
    return TiedLM(width), idx, targets


def test_at_the_base_width_the_readout_is_the_zero_head_too():
    # the base width (the smallest) is one of the run's widths: its readout must start as every other
    # width's does, though no dimension has grown there
    run = CoordRun(lm_factory, "mup", widths=(16, 32))
    for width in run.widths:
        model, _, _ = coord.build(run, width, seed=0)
        assert torch.count_nonzero(model.lm_head.weight) == 0, width


def test_a_tied_readout_keeps_its_table_gets_its_multiplier_and_its_row_is_the_output():
    from initcore.models import readout

    run = CoordRun(tied_factory, "mup", widths=(16, 64))
    model, _, opt = coord.build(run, 64, seed=0)
    assert readout.output_multipliers(model) == {"lm_head": pytest.approx(16**0.5 / 64)}  # sqrt(base) / width
    assert model.wte.weight.std().item() == pytest.approx(1.0, rel=0.1)  # the embedding's N(0, 1), 2048 draws
    lrs = {id(p): g["lr"] for g in opt.param_groups for p in g["params"]}
    assert lrs[id(model.wte.weight)] == pytest.approx(coord.DEFAULT_LR["adam"])  # an input weight under Adam
    frame = coord.measure(run, seed=0)
    modules = set(frame["module"])
    assert "lm_head" not in modules and {"wte", "output"} <= modules
    assert coord.passed(coord.verdicts(frame))


def drifting_inputs(seed: int, width: int):
    return nn.Linear(4, 2), torch.randn(3, 4, generator=torch.Generator().manual_seed(seed + width))


def growing_output(seed: int, width: int):
    return nn.Linear(4, width), torch.randn(3, 4, generator=torch.Generator().manual_seed(seed))


def only_a_model(seed: int, width: int):
    return nn.Linear(4, width)


@pytest.mark.parametrize("factory, match", [
    (drifting_inputs, "the inputs or targets differ between widths 16 and 32; draw them from the seed"),
    (growing_output, r"the prediction's shape changes with width \(\(3, 16\) -> \(3, 32\)\)"),
    (only_a_model, r"returned Linear; it must return \(model, inputs\) or \(model, inputs, targets\)"),
])
def test_a_factory_that_breaks_the_contract_is_told_how(factory, match):
    with pytest.raises(ValueError, match=match):
        coord.measure(CoordRun(factory, None, widths=(16, 32), steps=1), seed=0)


def test_prediction_reads_logits_and_first_elements():
    t = torch.ones(2)
    assert coord.prediction(t) is t and coord.prediction((t, 3)) is t and coord.prediction({"logits": t}) is t
    assert coord.prediction(type("Out", (), {"logits": t})()) is t
    with pytest.raises(ValueError, match="no tensor to train on"):
        coord.prediction(("text",))


def hf_gpt2(seed: int, width: int):
    """Hugging Face's GPT-2, tiny, untied: Conv1D weights stored (in, out), a ModelOutput with .logits."""
    from transformers import GPT2Config, GPT2LMHeadModel

    g = torch.Generator().manual_seed(seed)
    idx, targets = torch.randint(0, 64, (2, 8), generator=g), torch.randint(0, 64, (2, 8), generator=g)
    cfg = GPT2Config(vocab_size=64, n_positions=16, n_embd=width, n_layer=1, n_head=2, resid_pdrop=0.0,
                     embd_pdrop=0.0, attn_pdrop=0.0, tie_word_embeddings=False, bos_token_id=0, eos_token_id=0)
    return GPT2LMHeadModel(cfg), {"input_ids": idx}, targets




def test_hugging_face_gpt2_its_own_init_grows_and_mup_reads_its_conv1d_roles():
    pytest.importorskip("transformers")
    from initcore.models.roles import Role

    own = coord.verdicts(coord.measure(CoordRun(hf_gpt2, None, widths=(32, 64, 128), steps=1), seed=0))
    assert not coord.passed(own)  # the standard parametrization under Adam: hidden rows as width^1
    assert {"transformer.h.0.mlp.c_fc", "output"} <= set(own.loc[own["verdict"] == "grows", "coordinate"])
    roles = (("*.c_attn.weight", Role("qkv", parts=("q", "k", "v"), transposed=True)),
             ("*.attn.c_proj.weight", Role("attn_out", transposed=True)),
             ("*.c_fc.weight", Role("mlp_in", transposed=True)),
             ("*.mlp.c_proj.weight", Role("mlp_out", transposed=True)))
    run = CoordRun(hf_gpt2, "mup", widths=(32, 128), steps=1, roles=roles)
    model, _, opt = coord.build(run, 128, seed=0)
    assert coord.readouts(run, model, seed=0) == {"lm_head.weight"}
    lrs = {id(p): g["lr"] for g in opt.param_groups for p in g["params"]}
    lr = coord.DEFAULT_LR["adam"]
    # Conv1D stores (in, out): c_fc's fan-in is its first dimension, and grows 4x, so lr / 4; the position
    # embedding's fan-in (positions) does not grow, so lr
    assert lrs[id(model.transformer.h[0].mlp.c_fc.weight)] == pytest.approx(lr / 4)
    assert lrs[id(model.transformer.wpe.weight)] == pytest.approx(lr)
    assert torch.count_nonzero(model.lm_head.weight) == 0
