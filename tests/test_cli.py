"""initcore.cli: trace formats, theory columns, list, and one-line errors with exit status 2."""

import io
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from initcore import cli, init
from initcore.experiments import MLPRun
from initcore.models import ACTIVATIONS, MODELS, MLPConfig

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


def test_build_model_and_inputs_matches_the_experiment_and_the_seed():
    args = cli.build_parser().parse_args([*SMALL, "--init", "xavier_normal", "--bias", "0.5", "--seed", "3"])
    model, x = cli.build_model_and_inputs(args)
    run = MLPRun(MLPConfig(16, 16, 4, "tanh"), "xavier_normal", batch=8, bias=0.5)
    ref_model, ref_x = run.build(torch.Generator().manual_seed(3))
    torch.testing.assert_close(x, ref_x, rtol=0, atol=0)
    for p, q in zip(model.parameters(), ref_model.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=0, atol=0)
    assert all((layer.bias == 0.5).all() for layer in model.layers)
    other, _ = cli.build_model_and_inputs(cli.build_parser().parse_args([*SMALL, "--seed", "4"]))
    assert not torch.equal(other.layers[0].weight, model.layers[0].weight)
    t_args = cli.build_parser().parse_args([*SMALL_TRANSFORMER, "--model", "transformer", "--bias", "0.1"])
    t_model, idx = cli.build_model_and_inputs(t_args)
    assert idx.shape == (2, 5) and idx.dtype == torch.int64 and int(idx.max()) < 50
    assert all((p.detach() == 0.1).all() for n, p in t_model.named_parameters() if n.endswith("bias"))


def test_list_mentions_every_strategy_model_and_activation(capsys):
    out = _run(capsys, ["list"])
    for name in [*init.names(), *MODELS, *ACTIVATIONS]:
        assert name in out
    for summary in init.describe().values():
        assert summary in out


@pytest.mark.parametrize("argv, message", [
    (["trace", "--init", "xavierr"], "unknown strategy 'xavierr'; valid: xavier_uniform"),
    (["trace", "--init", "normal:-1"], "STD must be a positive finite number"),
    (["trace", "--activation", "swish"], "argument --activation: invalid choice"),
    (["trace", "--model", "cnn"], "argument --model: invalid choice"),
    (["trace", "--width", "0"], "argument --width: must be a positive integer"),
    (["trace", "--depth", "-3"], "argument --depth: must be a positive integer"),
    (["trace", "--batch", "two"], "argument --batch: must be a positive integer"),
    (["trace", "--model", "transformer", "--d-model", "10", "--n-heads", "3"], "must be divisible by n_heads"),
    (["trace", "--device", "cuda"] if not torch.cuda.is_available() else ["trace", "--device", "tpu"],
     "cuda" if not torch.cuda.is_available() else "invalid choice"),
    (["trace", "--init", "torch_default", "--gain", "2"], "takes no gain"),
    (["trace", "--gain", "-1"], "argument --gain: must be a positive number or 'auto'"),
    (["trace", "--model", "transformer", "--theory"], "--theory predicts MLPs only"),
    (["trace", "--init", "gpt2", "--theory"], "no mean-field prediction"),
    (["trace", "--format", "xml"], "argument --format: invalid choice"),
    (["bogus"], "invalid choice"),
    ([], "required: COMMAND"),
])
def test_bad_input_exits_2_with_one_line(capsys, argv, message):
    with pytest.raises(SystemExit) as exc:
        cli.main(argv)
    assert exc.value.code == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.count("\n") == 1 and err.startswith("initcore: error: ")
    assert message in err and "Traceback" not in err


def test_python_dash_m_initcore():
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    done = subprocess.run([sys.executable, "-m", "initcore", "trace", "--width", "8", "--depth", "3", "--batch", "4",
                           "--format", "csv"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    frame = pd.read_csv(io.StringIO(done.stdout))
    assert frame.layer.tolist() == [0, 1, 2] and set(REQUIRED) <= set(frame.columns)
