"""initcore trace: formats, theory columns, transformers."""

import io
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from initcore import cli

ROOT = Path(__file__).resolve().parents[1]
SMALL = ["trace", "--width", "16", "--depth", "4", "--batch", "8"]
SMALL_TRANSFORMER = ["trace", "--d-model", "16", "--n-heads", "2", "--d-ff", "32", "--n-layers", "2",
                     "--seq-len", "5", "--batch", "2", "--vocab-size", "50"]
REQUIRED = ["layer", "preact_std", "act_std", "act_mean", "dead_frac", "saturated_frac", "grad_norm"]
THEORY = ["preact_std_theory", "act_std_theory", "act_mean_theory", "dead_frac_theory", "saturated_frac_theory"]


def _run(capsys, argv) -> str:
    assert cli.main(argv) == 0
    out, err = capsys.readouterr()
    assert err == ""
    return out


def test_csv_is_only_csv_one_row_per_layer(capsys):
    out = _run(capsys, [*SMALL, "--format", "csv"])
    assert out.startswith("module,")
    frame = pd.read_csv(io.StringIO(out))
    assert set(REQUIRED) <= set(frame.columns)
    assert frame.layer.tolist() == [0, 1, 2, 3]
    assert frame[REQUIRED].iloc[:, :-1].drop(columns="saturated_frac").notna().all().all()
    assert (frame.grad_norm > 0).all()


def test_theory_adds_predicted_columns_and_he_relu_is_constant(capsys):
    out = _run(capsys, [*SMALL, "--format", "csv", "--activation", "relu", "--init", "kaiming_normal", "--theory"])
    frame = pd.read_csv(io.StringIO(out))
    assert set(THEORY) <= set(frame.columns)
    # He: q_{l+1} = 2 E[relu(h)^2] = q_l, from q_0 = 2 E[x^2] = 2.
    np.testing.assert_allclose(frame.preact_std_theory, math.sqrt(2), rtol=1e-9)
    np.testing.assert_allclose(frame.dead_frac_theory.iloc[:-1], 0.5, rtol=1e-9)
    without = pd.read_csv(io.StringIO(_run(capsys, [*SMALL, "--format", "csv"])))
    assert not set(THEORY) & set(without.columns)


def test_theory_follows_gain_and_bias(capsys):
    args = [*SMALL, "--format", "csv", "--init", "xavier_uniform", "--theory"]
    plain = pd.read_csv(io.StringIO(_run(capsys, args)))
    tanh_gain = pd.read_csv(io.StringIO(_run(capsys, [*args, "--gain", "auto", "--bias", "0.25"])))
    np.testing.assert_allclose(tanh_gain.preact_std_theory[0] / plain.preact_std_theory[0], 5 / 3, rtol=1e-9)
    assert tanh_gain.act_mean_theory.iloc[-1] == pytest.approx(0.25)  # the last layer's output mean is b


def test_json_and_table(capsys):
    records = json.loads(_run(capsys, [*SMALL, "--format", "json"]))
    assert [r["module"] for r in records] == [f"layers.{i}" for i in range(4)]
    assert set(REQUIRED) <= set(records[0])
    table = _run(capsys, [*SMALL, "--format", "table", "--theory"])
    assert table.startswith("# mlp 16->16 x4 tanh, init torch_default")
    assert "layers.3" in table and "preact_std_theory" in table
    assert "attn_entropy" not in table  # columns empty for an MLP are left out of the table


@pytest.mark.parametrize("model", ["transformer", "torch_mha_transformer"])
def test_transformers(capsys, model):
    out = _run(capsys, [*SMALL_TRANSFORMER, "--model", model, "--causal", "--format", "csv"])
    frame = pd.read_csv(io.StringIO(out))
    assert frame.kind.tolist() == ["attn", "ffn", "block"] * 2
    assert (frame.grad_norm > 1e-4).all()  # the default loss for transformers has a gradient
    assert frame.attn_entropy_norm.notna().sum() == 2


def test_precision_prints_the_formats_table(capsys):
    out = _run(capsys, [*SMALL, "--format", "csv", "--precision", "float8_e4m3fn", "--loss-scale", "1024"])
    frame = pd.read_csv(io.StringIO(out))
    assert set(frame["tensor"]) == {"output", "output_grad", "weight", "weight_grad"}
    assert set(frame["scaling"]) == {"none", "tensor"}
    grads = frame[(frame["tensor"] == "weight_grad") & (frame["scaling"] == "none")]
    assert (grads["scale"] == 1024).all()
    assert frame[["flushed", "headroom_bits"]].notna().all().all()
    # a Gaussian prediction wherever the std is not 0 (the mean loss's output gradient is constant)
    assert frame.loc[frame["tensor"] != "output_grad", "flushed_gaussian"].notna().all()


@pytest.mark.parametrize("argv, message", [
    (["--precision", "float9"], "unknown format 'float9'; valid: float16, bfloat16, float8_e4m3fn"),
    (["--precision", "float16", "--loss-scale", "-1"], "loss_scale must be a positive finite number"),
    (["--precision", "float16", "--theory"], "--precision and --theory are separate tables"),
])
def test_precision_bad_input_is_one_line_and_exit_2(capsys, argv, message):
    with pytest.raises(SystemExit) as e:
        cli.main([*SMALL, *argv])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
