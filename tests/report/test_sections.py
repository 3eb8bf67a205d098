"""initcore.report.sections: every experiment's table holds the numbers of a fresh trace of the same run and
seed, its theory column the theory's formula, and its checks what diagnose and the baselines say."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from initcore import diagnose, experiments, init, probe
from initcore.report import page, sections

from .conftest import SEED

FIGURES = ("depth_std", "depth_mean", "depth_grad", "weights", "xavier_ratio", "activation_grid", "failures",
           "transformer", "signal_propagation", "depth_scaling", "attention", "mha_trap", "width", "precision")
TABLES_ONLY = ("diagnosis", "symptoms", "baselines")

_TRACES: dict = {}


def _csv(built, name: str) -> pd.DataFrame:
    return pd.read_csv(built.out / f"{name}.csv")


def _trace(run, loss="run") -> pd.DataFrame:
    """A fresh trace of ``run`` at SEED, independent of the report's (cached across these tests)."""
    if (run, loss) not in _TRACES:
        model, inputs = run.build(torch.Generator().manual_seed(SEED))
        _TRACES[(run, loss)] = probe.trace(model, inputs, loss=run.loss if loss == "run" else loss)
    return _TRACES[(run, loss)]


def _linear(run) -> pd.DataFrame:
    frame = _trace(run)
    return frame[frame["kind"] == "linear"].reset_index(drop=True)


def test_every_figure_and_table_is_written(built):
    names = {p.name for p in built.out.iterdir()}
    expected = {f"{n}.png" for n in FIGURES} | {f"{n}.csv" for n in FIGURES + TABLES_ONLY} | {"index.html"}
    assert names == expected  # and no temporary file left behind
    for name in FIGURES + TABLES_ONLY:
        assert len(_csv(built, name)) > 0, name


def test_depth_tables_hold_the_traced_numbers_theory_and_bands(built):
    std, grad = _csv(built, "depth_std"), _csv(built, "depth_grad")
    bands = pd.read_csv(built.baselines / "depth_init.csv")
    for run in built.runs.depth.values():
        fresh = _linear(run)
        rows = std["key"] == run.key
        np.testing.assert_allclose(std.loc[rows, "act_std"], fresh["act_std"], rtol=1e-12)
        np.testing.assert_allclose(grad.loc[grad["key"] == run.key, "grad_norm"], fresh["grad_norm"], rtol=1e-12)
        predicted = probe.mlp_theory(run.model, run.init)["act_std_theory"]
        np.testing.assert_allclose(std.loc[rows, "act_std_theory"], predicted, rtol=1e-12)
        # the band: exp(mean -+ 2 spreads) of the stored log rows, layer by layer
        stored = bands[(bands["config"] == run.key) & (bands["statistic"] == "act_std")].set_index("layer")
        layers = std.loc[rows, "module"]
        np.testing.assert_allclose(std.loc[rows, "act_std_low"],
                                   np.exp(stored.loc[layers, "mean"] - 2 * stored.loc[layers, "spread"]), rtol=1e-5)
        np.testing.assert_allclose(std.loc[rows, "act_std_high"],
                                   np.exp(stored.loc[layers, "mean"] + 2 * stored.loc[layers, "spread"]), rtol=1e-5)


def test_gradient_theory_is_the_backward_mean_field_anchored_at_the_output(built):
    from initcore import theory

    grad = _csv(built, "depth_grad")
    for run in built.runs.depth.values():
        rows = grad[grad["key"] == run.key]
        sigma_w2 = [(run.model.in_features if i == 0 else run.model.width)
                    * init.promise(run.init, "head" if i == run.model.depth - 1 else "hidden",
                                   run.model.in_features if i == 0 else run.model.width, run.model.width,
                                   n_layers=run.model.depth).variance for i in range(run.model.depth)]
        shape = theory.mlp_gradient_ratio(run.model.activation, run.model.depth, sigma_w2)["weight_grad_std"]
        expected = shape / shape[-1] * rows["grad_norm"].iloc[-1]
        np.testing.assert_allclose(rows["grad_norm_theory"], expected, rtol=1e-9)


def test_activation_grid_holds_the_traced_numbers_and_theory(built):
    grid = _csv(built, "activation_grid")
    for (act, _), run in built.runs.activation.items():
        rows = grid[grid["key"] == run.key]
        assert set(rows["activation"]) == {act}
        np.testing.assert_allclose(rows["act_std"], _linear(run)["act_std"], rtol=1e-12)
        predicted = probe.mlp_theory(run.model, run.init, gain=run.gain)["act_std_theory"]
        np.testing.assert_allclose(rows["act_std_theory"], predicted, rtol=1e-12)
    assert set(grid["init"]) == {"Xavier", "He", "Xavier, gain 5/3"}


def test_weights_table_holds_the_drawn_weights(built):
    table = _csv(built, "weights")
    for run in built.runs.depth.values():
        row = table[table["key"] == run.key].iloc[0]
        model, _ = run.build(torch.Generator().manual_seed(SEED))
        w = model.layers[1].weight.detach().double()
        assert row["weight_std"] == pytest.approx(w.std().item(), rel=1e-12)
        assert (row["weight_min"], row["weight_max"]) == (w.min().item(), w.max().item())
        assert row["weight_std_theory"] == pytest.approx(init.promise(run.init, "hidden", 32, 32, n_layers=4).std)
        if row["distribution"] == "uniform":  # every weight within the bound, the extremes close to it
            assert max(-row["weight_min"], row["weight_max"]) <= row["bound_theory"]
            assert max(-row["weight_min"], row["weight_max"]) > 0.95 * row["bound_theory"]


def test_xavier_table_holds_ratios_measured_by_hand(built):
    table = _csv(built, "xavier_ratio").set_index("shape")
    for name, run in built.runs.xavier.items():
        model, x = run.build(torch.Generator().manual_seed(SEED))
        with torch.no_grad():
            y = model(x)
        row = table.loc[name]
        fan_in, fan_out = run.model.in_features, run.model.width
        assert row["forward_ratio"] == pytest.approx((y.var() / x.var()).item(), rel=1e-5)
        assert row["forward_ratio_theory"] == pytest.approx(2 * fan_in / (fan_in + fan_out), rel=1e-12)
        assert row["backward_ratio_theory"] == pytest.approx(2 * fan_out / (fan_in + fan_out), rel=1e-12)
        # E over a batch of 200 random directions of |W^T g|²/|g|² is tr(W W^T)/(fan_out fan_in) * fan_out;
        # for one drawn W that is fan_out Var_hat(w): within a few percent of theory at these sizes
        assert row["backward_ratio"] == pytest.approx(row["backward_ratio_theory"], rel=0.05)


def test_transformer_tables_hold_the_traced_numbers_and_channel_statistics(built):
    table, spp = _csv(built, "transformer"), _csv(built, "signal_propagation")
    for name, run in built.runs.transformer.items():
        model, idx = run.build(torch.Generator().manual_seed(SEED))
        fresh = probe.trace(model, idx, loss=run.loss, keep_outputs=True)
        outputs = fresh.attrs["outputs"]
        rows = table[table["strategy"] == name]
        blocks = fresh[fresh["kind"] == "block"]
        np.testing.assert_allclose(rows["residual_std"], blocks["act_std"], rtol=1e-12)
        np.testing.assert_allclose(rows["ffn_grad_norm"], fresh.loc[fresh["kind"] == "ffn", "grad_norm"], rtol=1e-12)
        # theory: the stream's variance is the embedding's plus the sum of the branch variances so far
        branch = rows["attn_std"].to_numpy() ** 2 + rows["ffn_std"].to_numpy() ** 2
        expected = np.sqrt(rows["embedding_std"].iloc[0] ** 2 + np.cumsum(branch))
        np.testing.assert_allclose(rows["residual_std_theory"], expected, rtol=1e-12)
        # NFNets' statistics, by hand: per channel (the last dim) over batch and positions
        part = spp[(spp["run"] == name) & (spp["branch"] == "ffn")]
        for block, row in zip(blocks["module"], part.itertuples(), strict=True):
            x = outputs[block].double().reshape(-1, run.model.d_model)
            assert row.stream_channel_sq_mean == pytest.approx(float((x.mean(0) ** 2).mean()), rel=1e-9)
            assert row.stream_channel_var == pytest.approx(float(x.var(0, unbiased=False).mean()), rel=1e-9)
            f = outputs[f"{block}.ffn"].double().reshape(-1, run.model.d_model)
            assert row.branch_channel_var == pytest.approx(float(f.var(0, unbiased=False).mean()), rel=1e-9)


def test_channel_statistics_by_hand():
    x = torch.tensor([[1.0, 2.0], [3.0, 6.0]])  # channel means 2, 4; variances 1, 4
    assert sections.channel_statistics(x) == pytest.approx(((4 + 16) / 2, (1 + 4) / 2))
    conv = torch.zeros(2, 3, 2, 2)
    conv[:, 1] = 5.0  # channel 1 (dim 1 of a 4-D activation) is constant 5: squared mean 25 / 3 channels
    assert sections.channel_statistics(conv) == pytest.approx((25 / 3, 0.0))


def test_depth_scaling_attention_trap_and_width_hold_the_traced_numbers(built):
    scaling = _csv(built, "depth_scaling")
    for (strategy, n_layers), run in built.runs.depth_scaling.items():
        row = scaling[(scaling["strategy"] == strategy) & (scaling["n_layers"] == n_layers)].iloc[0]
        blocks = _trace(run, loss=None)
        assert row["stream_var"] == pytest.approx(blocks[blocks["kind"] == "block"]["act_std"].iloc[-1] ** 2)
        assert row["expected"] == experiments.DEPTH_STRATEGIES[strategy]
    attention = _csv(built, "attention")
    for (strategy, t), run in built.runs.attention.items():
        row = attention[(attention["strategy"] == strategy) & (attention["seq_len"] == t)].iloc[0]
        fresh = _trace(run, loss=None)
        assert row["logit_std"] == pytest.approx(fresh[fresh["kind"] == "attn"]["logit_std"].iloc[0], rel=1e-12)
        # theory: d sqrt(Var(W_q) Var(W_k)) m2. These runs are the bench's at batch 2: log(measured / theory)
        # over seeds 0..19 has |mean| <= 0.022 and spread <= 0.057 (8 tokens; 0.018 at 32), so 0.25 is the
        # mean + 4 spreads (the bench's own runs, with 32x the tokens, hold 0.12: bench/test_attention_init.py)
        assert abs(math.log(row["logit_std"] / row["logit_std_theory"])) <= 0.25, (strategy, t)
    trap = _csv(built, "mha_trap").groupby(["run", "block"])["logit_std_theory"].first()
    # torch's xavier_uniform_ on the packed (3E, E) in_proj: Var 1/(2E) against 1/E for separate projections
    assert trap[("torch_default-packed", 0)] / trap[("xavier_uniform-separate", 0)] == pytest.approx(0.5, rel=1e-3)
    width = _csv(built, "width")
    for _, part in width.groupby(["strategy", "row"]):
        slope = np.polyfit(np.log(part["width"]), np.log(part["size"]), 1)[0]
        assert part["slope"].iloc[0] == pytest.approx(slope, rel=1e-9, abs=1e-12)
    fixed = width[width["strategy"] == "small_normal"].groupby("row")["slope"].first()
    scaled = width[width["strategy"] == "neox_small_init"].groupby("row")["slope"].first()
    assert (fixed > scaled).all()  # a fixed std grows with width where 1/fan_in scaling does not


def test_failures_are_diagnosed_before_and_cured_after(built):
    table = _csv(built, "failures")
    for mode, run in built.runs.failure.items():
        symptom = diagnose.SYMPTOMS[sections.EXPECTED_SYMPTOM[mode]]
        failing = table[(table["mode"] == mode) & (table["when"] == "failing")]
        fixed = table[(table["mode"] == mode) & (table["when"] == "fixed")]
        assert symptom.name in failing["symptoms"].iloc[0] and symptom.name not in fixed["symptoms"].iloc[0]
        np.testing.assert_allclose(failing["value"], _linear(run)[symptom.statistic], rtol=1e-12)
        assert (failing["threshold"] == symptom.threshold).all()


def test_diagnosis_table_is_diagnose_of_each_trace(built):
    table = _csv(built, "diagnosis").fillna("")
    runs = [*built.runs.depth.values(), *built.runs.activation.values()]
    keys = list(table["key"])
    for run in runs:
        row = table.iloc[keys.index(run.key)]
        found = diagnose.diagnose(_trace(run))
        assert row["symptoms"] == (", ".join(found["symptom"]) or "healthy")
    assert list(_csv(built, "symptoms")["symptom"]) == list(diagnose.SYMPTOMS)


def test_a_corrupt_baseline_is_named_not_fatal(built):
    problems = _csv(built, "baselines")["problem"].tolist()
    assert any(str(built.baselines / "activations.csv") in p and "the file is corrupt" in p for p in problems)
    assert any("no xavier_shapes.csv" in p for p in problems)


def test_model_sections_of_a_sequential():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 16), nn.Tanh(), nn.Linear(16, 2))
    x = torch.randn(32, 8)
    found = sections.model_sections("seq", model, x, loss="random")
    names = [s.name for s in found]
    assert names == ["model_scale", "model_grad", "model_fractions", "model_channels", "model_precision",
                     "model_diagnosis", "model_trace"]
    fresh = probe.trace(model, x, loss="random")
    spans = found[4].table.set_index(["module", "tensor", "param"])  # each weight's span: its own, log2
    for i in (0, 2, 4):
        w = model[i].weight.detach().abs()
        assert spans.loc[(str(i), "weight", f"{i}.weight"), "log2_amax"] == math.log2(w.max().item())
        assert spans.loc[(str(i), "weight", f"{i}.weight"), "log2_smallest"] == math.log2(w.min().item())
    trace = found[-1].table
    np.testing.assert_allclose(trace["act_std"], fresh["act_std"], rtol=1e-12)
    np.testing.assert_allclose(found[1].table["grad_norm"], fresh["grad_norm"], rtol=1e-12)
    channels = found[3].table
    assert not math.isnan(channels["channel_var"].iloc[0])
    assert found[0].checks[0].passed is diagnose.diagnose(fresh).empty


def test_model_sections_draw_the_residual_stream_and_attention():
    torch.manual_seed(0)
    model = nn.TransformerEncoder(nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0, batch_first=True), 3,
                                  enable_nested_tensor=False)
    x = torch.randn(2, 6, 16)
    found = {s.name: s for s in sections.model_sections("encoder", model, x, loss="random")}
    assert list(found)[:2] == ["model_residual", "model_attention"]
    fresh = probe.trace(model, x, loss="random").set_index("module")
    stream, attention = found["model_residual"].table, found["model_attention"].table
    assert stream["module"].tolist() == ["layers.0", "layers.1", "layers.2"]
    assert attention["module"].tolist() == [f"layers.{i}.self_attn:sdpa" for i in range(3)]
    np.testing.assert_allclose(stream["act_std"], fresh.loc[stream["module"], "act_std"], rtol=1e-12)
    np.testing.assert_allclose(attention[["logit_std", "attn_entropy_norm"]],
                               fresh.loc[attention["module"], ["logit_std", "attn_entropy_norm"]], rtol=1e-12)
    for name in ("model_residual", "model_attention"):  # each draws
        assert page.png(found[name], dpi=40).startswith(b"\x89PNG")


def test_a_model_without_blocks_or_attention_gets_neither_figure():
    found = sections.model_sections("mlp", nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2)),
                                    torch.randn(8, 4))
    assert not {"model_residual", "model_attention"} & {s.name for s in found}
