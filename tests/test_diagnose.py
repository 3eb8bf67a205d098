"""Tests for initcore.diagnose on hand-written trace frames: every symptom at and around its threshold,
the depth-trend fit on exact geometric profiles, fixes applied to stand-in runs, and the notebook's
health rules. No torch: the module reads frames."""

from __future__ import annotations

import math
import subprocess
import sys
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pytest

from initcore import diagnose as D
from initcore import theory


def mlp_frame(**columns) -> pd.DataFrame:
    """An MLP-shaped trace frame with one row per value of the given columns."""
    n = len(next(iter(columns.values())))
    return pd.DataFrame({"module": [f"layers.{i}" for i in range(n)], "kind": "linear", "layer": range(n), **columns})


def symptoms(frame: pd.DataFrame) -> list[str]:
    return list(D.diagnose(frame)["symptom"])


# --- row symptoms ------------------------------------------------------------------------------------


def test_vanishing_gradients_strictly_below_1e_minus_6():
    found = D.diagnose(mlp_frame(grad_norm=[0.0, 1e-7, 1e-6, 0.3]))
    (row,) = found.itertuples()
    assert row.symptom == "vanishing_gradients"
    assert row.modules == ("layers.0", "layers.1")  # 1e-6 itself is not below 1e-6
    assert row.layers == (0, 1)
    assert (row.n_affected, row.n_checked) == (2, 4)
    assert row.value == 0.0  # the worst: an exact zero (underflow)
    assert "2 of 4" in row.evidence


def test_exploding_gradients_above_10_counts_inf():
    found = D.diagnose(mlp_frame(grad_norm=[10.0, 10.5, math.inf]))
    (row,) = found.itertuples()
    assert row.symptom == "exploding_gradients"
    assert row.layers == (1, 2)
    assert row.value == math.inf


def test_nan_statistics_mean_does_not_apply():
    # NaN is the probe's "this statistic does not apply" (saturated_frac of a ReLU, grad of a frozen row)
    assert symptoms(mlp_frame(grad_norm=[math.nan, 0.5], saturated_frac=[math.nan, math.nan])) == []


def test_dead_relu_above_0_6():
    # 0.55 is a healthy ReLU layer plus noise (half its outputs are zero by construction)
    found = D.diagnose(mlp_frame(dead_frac=[0.5, 0.55, 0.6, 0.61, 1.0]))
    (row,) = found.itertuples()
    assert row.symptom == "dead_relu"
    assert row.layers == (3, 4)
    assert row.value == 1.0


def test_saturation_above_0_3():
    found = D.diagnose(mlp_frame(saturated_frac=[0.3, 0.31, math.nan]))
    assert list(found["symptom"]) == ["saturation"]
    assert found["layers"].iloc[0] == (1,)
    assert found["n_checked"].iloc[0] == 2


def test_nan_inf_counts():
    found = D.diagnose(mlp_frame(nan_count=[0.0, 3.0, 0.0], inf_count=[0.0, 0.0, 5.0]))
    (row,) = found.itertuples()
    assert row.symptom == "nan_inf"
    assert row.modules == ("layers.1", "layers.2")
    assert row.value == 5.0
    assert "first at layers.1" in row.evidence


def test_block_rows_are_left_out_of_gradient_checks():
    # A block's gradient sums its attention's and feed-forward's (and its norms'): judge the parts.
    frame = pd.DataFrame({"module": ["blocks.0.attn", "blocks.0.ffn", "blocks.0"], "kind": ["attn", "ffn", "block"],
                          "layer": [0, 0, 0], "grad_norm": [0.5, 0.5, 20.0]})
    assert symptoms(frame) == []


def test_several_symptoms_in_registry_order_and_fixes_attached():
    frame = mlp_frame(grad_norm=[1e-9, 20.0], dead_frac=[0.9, 0.0])
    found = D.diagnose(frame)
    assert list(found["symptom"]) == ["vanishing_gradients", "exploding_gradients", "dead_relu"]
    for row in found.itertuples():
        assert row.fixes == tuple(f.text for f in D.SYMPTOMS[row.symptom].fixes)
    assert list(D.first_fixes(found)) == list(found["symptom"])


def test_healthy_frame_gives_an_empty_frame_with_the_columns():
    found = D.diagnose(mlp_frame(grad_norm=[0.1, 0.2, 0.3], preact_std=[1.0, 1.0, 1.0], dead_frac=[0.5, 0.5, 0.0]))
    assert found.empty
    assert tuple(found.columns) == D.FINDING_COLUMNS
    assert D.format_findings(found).startswith("healthy: no symptom found")


def test_missing_identity_columns_raise_and_missing_statistics_are_silent():
    with pytest.raises(ValueError, match="module and layer"):
        D.diagnose(pd.DataFrame({"grad_norm": [1e-9]}))
    assert symptoms(pd.DataFrame({"module": ["a"], "layer": [0]})) == []  # kind defaults to linear


# --- depth trends -------------------------------------------------------------------------------------


def test_trend_fit_is_exact_on_a_geometric_profile():
    fit = D.depth_trend(mlp_frame(preact_std=[0.5**i for i in range(8)]))
    assert fit["factor"] == pytest.approx(0.5, rel=1e-12)
    assert fit["r2"] == pytest.approx(1.0, abs=1e-12)
    assert fit["statistic"] == "preact_std"
    assert (fit["first"], fit["last"]) == (1.0, 0.5**7)


@pytest.mark.parametrize(("factor", "depth", "expected"), [
    (0.5, 8, ["shrinking_signal"]),
    (2.0, 8, ["growing_signal"]),
    (0.7, 8, ["shrinking_signal"]),  # ReLU under Xavier: 0.7^7 = 0.082, over a decade
    (0.7, 6, []),  # the same rate over 5 steps: 0.17, still inside the decade
    (0.82, 20, []),  # large (0.82^19 = 0.023) but slow: inside [0.8, 1.25]
    (1.0, 10, []),
])
def test_trend_needs_fast_and_large(factor, depth, expected):
    assert symptoms(mlp_frame(preact_std=[factor**i for i in range(depth)])) == expected


def test_trend_needs_a_line():
    # A flat profile that falls off a cliff at the end: steep on average, but not a rate (R² < 0.9).
    frame = mlp_frame(preact_std=[1.0] * 7 + [1e-8])
    fit = D.depth_trend(frame)
    assert fit["factor"] < 1 / D.TREND_FACTOR and fit["factor"] ** 7 < 1 / D.TREND_TOTAL  # fast and large
    assert fit["r2"] < D.TREND_R2
    assert symptoms(frame) == []


def test_trend_on_tanh_under_xavier_is_not_geometric():
    # The mean field of tanh at sigma_w² = 1: q falls fast in the first layer, then as ~1/l. Over 6
    # layers the fitted factor is ~0.8 but the std moves by 3x: no symptom.
    std = theory.mlp_mean_field("tanh", 6, 1.0)["preact_std"]
    fit = D.depth_trend(mlp_frame(preact_std=list(std)))
    assert fit["factor"] < 1 / D.TREND_FACTOR * 1.1
    assert symptoms(mlp_frame(preact_std=list(std))) == []


def test_trend_skips_zero_and_nonfinite_and_needs_three_layers():
    assert D.depth_trend(mlp_frame(preact_std=[1.0, 0.0, math.nan])) is None
    fit = D.depth_trend(mlp_frame(preact_std=[1.0, 0.0, 0.01, 1e-4]))
    assert fit["layers"] == (0, 2, 3)


def test_trend_reads_act_std_of_blocks_in_a_transformer():
    rows = []
    for i in range(6):
        rows += [{"module": f"blocks.{i}.attn", "kind": "attn", "layer": i, "act_std": 1.0},
                 {"module": f"blocks.{i}.ffn", "kind": "ffn", "layer": i, "act_std": 1.0},
                 {"module": f"blocks.{i}", "kind": "block", "layer": i, "act_std": 3.0**i}]
    frame = pd.DataFrame(rows)
    fit = D.depth_trend(frame)
    assert fit["modules"] == tuple(f"blocks.{i}" for i in range(6))
    assert fit["factor"] == pytest.approx(3.0)
    assert symptoms(frame) == ["growing_signal"]
    # the residual stream of a pre-norm stack grows as sqrt(l + 1): algebraic, not flagged
    frame.loc[frame["kind"] == "block", "act_std"] = np.sqrt(theory.residual_variance(6, 1.0, 0.0))
    assert symptoms(frame) == []


# --- the guide as data, and its fixes -------------------------------------------------------------------


def test_symptom_table_is_the_guide():
    table = D.symptom_table()
    assert list(table["symptom"]) == list(D.SYMPTOMS)
    assert {"vanishing_gradients", "exploding_gradients", "dead_relu", "saturation", "nan_inf",
            "shrinking_signal", "growing_signal"} == set(table["symptom"])
    assert table["first_fix_applies"].all()
    assert (table["fixes"].map(len) >= 2).all()
    by_name = table.set_index("symptom")
    assert by_name.loc["vanishing_gradients", "threshold"] == 1e-6  # the notebook's bounds
    assert by_name.loc["exploding_gradients", "threshold"] == 10.0
    assert by_name.loc["saturation", "threshold"] == 0.3


@dataclass(frozen=True)
class FakeMLP:
    activation: str
    depth: int = 6


@dataclass(frozen=True)
class FakeTransformer:
    norm_position: str = "post"


@dataclass(frozen=True)
class FakeRun:
    model: object
    init: str = "normal:2.0"
    gain: float | None = 1.5
    bias: float | None = -0.5


def test_standard_init_by_activation():
    assert set(D.STANDARD_INIT) == set(theory.ACTIVATIONS)
    assert D.standard_init(FakeRun(FakeMLP("relu"))) == FakeRun(FakeMLP("relu"), "kaiming_normal", None, -0.5)
    assert D.standard_init(FakeRun(FakeMLP("tanh"))).init == "xavier_normal"
    assert D.standard_init(FakeRun(FakeMLP("selu"))).init == "lecun_normal"


def test_dead_relu_fixes_change_bias_then_activation():
    first, second = (f.apply(FakeRun(FakeMLP("relu"))) for f in D.SYMPTOMS["dead_relu"].fixes[:2])
    assert first == FakeRun(FakeMLP("relu"), bias=0.01)
    assert second == FakeRun(FakeMLP("leaky_relu"))


def test_fixes_refuse_runs_they_do_not_fit():
    with pytest.raises(ValueError, match="activation"):
        D.standard_init(FakeRun(FakeTransformer()))
    pre_norm = D.SYMPTOMS["vanishing_gradients"].fixes[2]
    assert pre_norm.apply(FakeRun(FakeTransformer())).model.norm_position == "pre"
    with pytest.raises(ValueError, match="norm_position"):
        pre_norm.apply(FakeRun(FakeMLP("relu")))


def test_format_findings_names_symptom_evidence_and_first_fixes():
    text = D.format_findings(D.diagnose(mlp_frame(grad_norm=[1e-9, 1e-8])), n_fixes=1)
    lines = text.splitlines()
    assert lines[0].startswith("Vanishing gradients [vanishing_gradients]: grad_norm < 1e-06 in 2 of 2")
    assert lines[1] == "  fix: " + D.SYMPTOMS["vanishing_gradients"].fixes[0].text
    assert len(lines) == 2


def test_no_torch_import():
    code = "import sys, initcore.diagnose; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


# --- the notebook's health report -------------------------------------------------------------------------


def stats(**columns) -> pd.DataFrame:
    n = len(next(iter(columns.values())))
    base = {"module": [f"m{i}" for i in range(n)], "mean": [0.0] * n, "std": [1.0] * n, "min": [-1.0] * n,
            "max": [1.0] * n, "nan_count": [0] * n, "inf_count": [0] * n}
    return pd.DataFrame({**base, **columns})


def test_health_rules_at_their_bounds():
    table = D.health_table(stats(mean=[0.0, 0.1, -0.11, 0.0, 0.0, 0.0, 0.0, 0.5],
                                 std=[1.0, 1.0, 1.0, 0.1, 0.099, 10.0, 10.5, 0.01],
                                 nan_count=[0, 0, 0, 0, 0, 0, 0, 2], inf_count=[0, 0, 0, 0, 0, 0, 0, 1]))
    assert list(table["issues"]) == ["", "", "Mean too large", "", "Poor variance", "", "Poor variance",
                                     "NaN values, Inf values, Mean too large, Poor variance"]
    assert list(table["healthy"]) == [True, True, False, True, False, True, False, False]
    assert tuple(table.columns) == D.HEALTH_COLUMNS


@pytest.mark.parametrize(("healthy", "total", "verdict"), [
    (5, 5, "Initialization looks good!"),
    (9, 10, "Mostly good, minor issues"),
    (4, 5, "Initialization needs improvement"),  # the notebook's "> 80%" is strict
    (0, 0, "no layers measured"),
])
def test_health_summary_verdicts(healthy, total, verdict):
    table = D.health_table(stats(std=[1.0] * healthy + [0.01] * (total - healthy)) if total else stats(std=[])[:0])
    assert D.health_summary(table) == {"healthy": healthy, "total": total, "verdict": verdict}


def test_format_health_prints_each_layer_and_the_summary():
    text = D.format_health(D.health_table(stats(module=["blocks.0.ffn.fc1", "x"], mean=[0.01234, 0.5])))
    lines = text.splitlines()
    assert lines[0].split() == ["module", "mean", "std", "range", "issues"]
    assert lines[2].split()[:3] == ["blocks.0.ffn.fc1", "0.0123", "1.0000"] and lines[2].endswith("healthy")
    assert lines[3].endswith("Mean too large")
    assert "[   -1.00,     1.00]" in lines[3]
    assert lines[-1] == "SUMMARY: 1/2 layers healthy: Initialization needs improvement"


def test_health_from_trace_renames_the_probe_columns():
    frame = mlp_frame(act_mean=[0.5], act_std=[0.05], act_min=[-1.0], act_max=[2.0], nan_count=[0.0],
                      inf_count=[0.0], grad_norm=[1.0])
    table = D.health_table(D.health_from_trace(frame))
    assert table.loc[0, ["module", "mean", "std", "min", "max"]].tolist() == ["layers.0", 0.5, 0.05, -1.0, 2.0]
    assert table.loc[0, "issues"] == "Mean too large, Poor variance"


def test_health_table_names_missing_columns():
    with pytest.raises(ValueError, match="missing std"):
        D.health_table(stats(mean=[0.0]).drop(columns="std"))


# --- the command line -------------------------------------------------------------------------------------

SMALL_RELU = ["--activation", "relu", "--depth", "4", "--width", "64", "--batch", "32"]


def test_cli_diagnose_names_each_symptom_with_evidence_and_first_fixes(capsys):
    from initcore import cli

    assert cli.main(["diagnose", *SMALL_RELU, "--init", "normal:2.0", "--loss", "square", "--fixes", "1"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("# mlp 64->64 x4 relu, init normal:2.0") and out[0].endswith("loss square")
    assert out[1].startswith("Exploding gradients [exploding_gradients]: grad_norm > 10 in 4 of 4 modules")
    assert out[2] == "  fix: " + D.SYMPTOMS["exploding_gradients"].fixes[0].text
    assert out[3].startswith("Signal grows geometrically with depth [growing_signal]: preact_std growing x")
    assert len(out) == 5


def test_cli_diagnose_says_healthy_and_exits_0(capsys):
    from initcore import cli

    assert cli.main(["diagnose", *SMALL_RELU, "--init", "kaiming_normal", "--health"]) == 0
    out = capsys.readouterr().out
    assert "\nhealthy: no symptom found (checked: vanishing_gradients, " in out
    assert out.rstrip().splitlines()[-1].startswith("SUMMARY: ")


def test_cli_diagnose_json(capsys):
    import json

    from initcore import cli

    assert cli.main(["diagnose", *SMALL_RELU, "--init", "kaiming_normal", "--bias", "-1", "--format", "json"]) == 0
    records = json.loads(capsys.readouterr().out)
    assert [r["symptom"] for r in records] == ["dead_relu"]
    assert records[0]["fixes"][0] == D.SYMPTOMS["dead_relu"].fixes[0].text


def test_cli_diagnose_bad_input_is_one_line_and_status_2(capsys):
    from initcore import cli

    with pytest.raises(SystemExit) as exit_:
        cli.main(["diagnose", "--fixes", "-1"])
    assert exit_.value.code == 2
    assert capsys.readouterr().err == "initcore: error: --fixes must be >= 0, got -1\n"


# --- a model initcore did not write: rows of any kind, layers from names ------------------------------------


def _foreign_trace(model, x):
    import torch

    from initcore import probe

    torch.manual_seed(0)
    return probe.trace(model, x)


@pytest.mark.parametrize("std, symptom", [(1e-4, "vanishing_gradients"), (3.0, "exploding_gradients")])
def test_gradients_of_every_kind_of_row_are_checked(std, symptom):
    """A conv net's rows are conv2d rows: their gradients count as a Linear's do (only block rows, which sum
    their parts', are left out). With every weight N(0, 1e-4^2) the first convs' grad_norm falls below 1e-6
    (8.6e-10 and 6.3e-7); with N(0, 9) the convs' pass 10 (about 3e4)."""
    import torch
    from torch import nn

    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(),
                        nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(16 * 8 * 8, 10))
    for m in net:
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.normal_(m.weight, 0, std)
    frame = _foreign_trace(net, torch.randn(4, 3, 8, 8))
    beyond = frame[(frame.grad_norm < 1e-6) if std < 1 else (frame.grad_norm > 10)]
    assert "conv2d" in set(beyond.kind)  # the case is what it says: convs beyond the bound
    modules = D.diagnose(frame).set_index("symptom").loc[symptom, "modules"]
    assert set(modules) == set(beyond.module), (modules, beyond[["module", "grad_norm"]])


def test_a_sequential_mlp_gets_the_depth_trend_of_initcore_s_mlp():
    """nn.Sequential numbers its Linear layers 0, 2, 4, ...; the trend is per Linear layer all the same, and
    the same network as initcore's MLP gives the same factor (Xavier on ReLU: variance halves per layer)."""
    import torch
    from torch import nn

    from initcore.models import MLP

    torch.manual_seed(0)
    seq = nn.Sequential(*[m for _ in range(10) for m in (nn.Linear(256, 256, bias=False), nn.ReLU())][:-1])
    ours = MLP(256, 256, 10, "relu", bias=False)
    for theirs, mine in zip([m for m in seq if isinstance(m, nn.Linear)], ours.layers, strict=True):
        nn.init.xavier_normal_(theirs.weight)
        mine.weight.data.copy_(theirs.weight)
    x = torch.randn(64, 256)
    fit_seq, fit_ours = D.depth_trend(_foreign_trace(seq, x)), D.depth_trend(_foreign_trace(ours, x))
    assert fit_seq["factor"] == pytest.approx(fit_ours["factor"], rel=1e-4)  # the same activations
    assert fit_seq["layers"] == tuple(range(0, 19, 2)) and fit_seq["steps"] == 9
    assert "shrinking_signal" in set(D.diagnose(_foreign_trace(seq, x))["symptom"])


# --- one verdict: the notebook's flags explained against the trace ------------------------------------------


def _residual_frame(stream_std=(0.03, 0.04)):
    """A pre-norm transformer's trace in miniature: two blocks, each with a small residual projection."""
    rows = []
    for i, s in enumerate(stream_std):
        rows += [{"module": f"h.{i}.c_fc", "kind": "linear", "layer": i, "act_std": 0.2},
                 {"module": f"h.{i}.c_proj", "kind": "linear", "layer": i, "act_std": 0.006},
                 {"module": f"h.{i}", "kind": "block", "layer": i, "act_std": s}]
    rows.append({"module": "head", "kind": "linear", "layer": -1, "act_std": 0.05})
    return pd.DataFrame(rows).assign(grad_norm=0.1)


def _health_of(frame):
    """The notebook's table of the frame's Linear rows (its hooks see no block)."""
    rows = frame[frame["kind"] == "linear"]
    return D.health_table(stats(module=list(rows["module"]), std=list(rows["act_std"])))


def test_poor_variance_inside_a_residual_block_is_by_design_and_outside_one_a_symptom():
    frame = _residual_frame()
    table = D.explain_health(_health_of(frame), frame, D.diagnose(frame))
    flagged = table.set_index("module")
    assert list(table["module"]) == ["h.0.c_fc", "h.0.c_proj", "h.1.c_fc", "h.1.c_proj", "head"]
    assert flagged.loc[["h.0.c_proj", "h.1.c_proj"], "symptom"].tolist() == [False, False]
    why = flagged.loc["h.0.c_proj", "why"]
    assert "a branch of residual block h.0, added to a stream of std 0.03 (0.2 of it)" in why
    assert flagged.loc["head", "symptom"] and "std 0.05 outside 0.1..10, on a layer" in flagged.loc["head", "why"]
    assert flagged.loc["h.0.c_fc", "why"] == "" and not flagged.loc["h.0.c_fc", "symptom"]
    assert D.verdict(D.diagnose(frame), table) == (
        "not healthy: 1 layer the notebook's rules flag (head); 2 layers the notebook's rules flag are no symptom "
        "(why: below)")


def test_one_verdict_top_and_bottom():
    frame = _residual_frame().query("module != 'head'")
    findings = D.diagnose(frame)
    table = D.explain_health(_health_of(frame), frame, findings)
    top = D.format_findings(findings, health=table)
    assert top.startswith("healthy: no symptom found (checked: vanishing_gradients,") and "the notebook's rules" in top
    text = D.format_health(table, findings)
    assert "h.0.c_proj" in text and "Poor variance (no symptom)" in text and "needs improvement" not in text
    assert text.rstrip().splitlines()[-1] == ("SUMMARY: 2/4 layers within the notebook's rules, 2 more flagged but no "
                                              "symptom: healthy")


def test_a_branch_of_a_block_a_symptom_names_stays_a_symptom():
    frame = _residual_frame()
    frame.loc[frame["module"] == "h.1.c_proj", "grad_norm"] = 1e-9  # vanishing gradients there
    findings = D.diagnose(frame)
    table = D.explain_health(_health_of(frame), frame, findings).set_index("module")
    assert table.loc["h.1.c_proj", "symptom"] and not table.loc["h.0.c_proj", "symptom"]
    assert D.verdict(findings, table.reset_index()).startswith(
        "not healthy: 1 symptom (vanishing_gradients) and 2 layers the notebook's rules flag (h.1.c_proj, head)")


def test_a_mean_that_is_a_small_share_of_the_std_is_no_symptom():
    # the notebook's |mean| > 0.1 is absolute: -0.105 on a std of 1.43 (a He ReLU layer, seed 0) is 0.5% of the
    # second moment; 0.5 on a std of 1 is a quarter of it (MEAN_SHARE 0.25: above it, a symptom)
    frame = pd.DataFrame({"module": ["a", "b"], "kind": "linear", "layer": [0, 1], "act_std": [1.43, 1.0]})
    table = D.explain_health(D.health_table(stats(module=["a", "b"], mean=[-0.105, 0.5], std=[1.43, 1.0])), frame)
    assert table["symptom"].tolist() == [False, True]
    assert table["why"][0] == "not a symptom: |mean| 0.105 is 0.073 of the std 1.43, 0.5% of the second moment"
    assert D.verdict(D.diagnose(frame), table).startswith("not healthy: 1 layer the notebook's rules flag (b)")
