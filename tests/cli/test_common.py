"""initcore.cli._common: the model options build what initcore.experiments builds; bad input is one line
with exit status 2, caught before anything is allocated; tables fit in 120 columns."""

import io
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

from initcore import cli
from initcore.cli import _common, _memory
from initcore.experiments import MLPRun
from initcore.models import MLPConfig

SMALL = ["trace", "--width", "16", "--depth", "4", "--batch", "8"]
ROOT = Path(__file__).resolve().parents[2]
GiB = 2**30
SMALL_TRANSFORMER = ["trace", "--d-model", "16", "--n-heads", "2", "--d-ff", "32", "--n-layers", "2",
                     "--seq-len", "5", "--batch", "2", "--vocab-size", "50"]


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


CUDA = torch.cuda.is_available()


@pytest.mark.parametrize("argv, message", [
    (["trace", "--init", "xavierr"], "unknown strategy 'xavierr'; valid: xavier_uniform"),
    (["trace", "--init", "xavier"], "unknown strategy 'xavier'; valid: xavier_uniform, xavier_normal, kaiming_uniform"),
    (["trace", "--init", "xavier"], "notebook_he_residual, mup; did you mean xavier_normal, xavier_uniform?"),
    (["trace", "--model", "transfomer"], "invalid choice: 'transfomer' (choose from mlp, transformer, "
                                         "torch_mha_transformer, or package.module:factory for a model of your own); "
                                         "did you mean transformer, torch_mha_transformer?"),
    (["coord", "--model", "transfomer"], "unknown model 'transfomer'; valid: mlp, transformer, or "
                                         "package.module:factory, a factory(seed, width) -> (model, inputs) of "
                                         "yours; did you mean transformer?"),
    (["trace", "--init", "normal:-1"], "STD must be a positive finite number"),
    (["trace", "--activation", "swish"], "argument --activation: invalid choice"),
    (["trace", "--model", "cnn"], "argument --model: invalid choice: 'cnn' (choose from mlp, transformer"),
    (["trace", "--width", "0"], "argument --width: must be an integer in 1..9223372036854775807, got '0'"),
    (["trace", "--depth", "-3"], "argument --depth: must be an integer in 1..9223372036854775807"),
    (["trace", "--batch", "two"], "argument --batch: must be an integer in 1..9223372036854775807"),
    (["trace", "--width", "1" + "0" * 40], "argument --width: must be an integer in 1..9223372036854775807"),
    (["trace", "--model", "transformer", "--d-model", "10", "--n-heads", "3"], "must be divisible by n_heads"),
    (["trace", "--device", "cuda"] if not CUDA else ["trace", "--device", "tpu"],
     "cuda" if not CUDA else "invalid choice"),
    (["trace", "--init", "torch_default", "--gain", "2"], "takes no gain"),
    (["trace", "--gain", "-1"], "argument --gain: must be a positive number or 'auto'"),
    (["trace", "--model", "transformer", "--theory"], "--theory predicts MLPs only"),
    (["trace", "--init", "deepnorm", "--theory"], "strategy 'deepnorm' needs a transformer"),
    (["trace", "--format", "xml"], "argument --format: invalid choice"),
    (["bogus"], "invalid choice"),
    ([], "required: COMMAND"),
    # issue 15: the seed's range is torch's, and named
    (["trace", "--seed", str(2**64)], "argument --seed: must be an integer in 0..18446744073709551615"),
    (["trace", "--seed", "-1"], "argument --seed: must be an integer in 0..18446744073709551615"),
    (["diagnose", "--seed", str(2**64)], "argument --seed: must be an integer in 0..18446744073709551615"),
    # issue 15: options that do not apply to the chosen model are refused when typed, even at their defaults
    (["trace", "--model", "transformer", "--width", "8"],
     "--width does not apply to --model transformer (--width is for an mlp); a transformer's options: --vocab-size"),
    (["trace", "--model", "transformer", "--width", "512"], "--width does not apply to --model transformer"),
    (["trace", "--model", "torch_mha_transformer", "--depth", "3", "--activation", "relu"],
     "--activation, --depth do not apply to --model torch_mha_transformer"),
    (["trace", "--d-model", "16"], "--d-model does not apply to --model mlp (--d-model is for the built-in "
                                   "transformers); an mlp's options: --width"),
    (["diagnose", "--model", "mlp", "--causal"], "--causal does not apply to --model mlp"),
    (["trace", "--input-shape", "8,16"], "--input-shape does not apply to --model mlp (--input-shape is for a "
                                         "model of yours)"),
    (["trace", "--model", "transformer", "--vocab", "10"], "--vocab does not apply to --model transformer"),
    (["trace", "--input-shape", "8,x"], "argument --input-shape: must be positive sizes separated by commas"),
])
def test_bad_input_exits_2_with_one_line(capsys, argv, message):
    with pytest.raises(SystemExit) as exc:
        cli.main(argv)
    assert exc.value.code == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.count("\n") == 1 and err.startswith("initcore: error: ")
    assert message in err and "Traceback" not in err


@pytest.fixture
def nothing_built(monkeypatch):
    """Fail the test if a model or its inputs are made: sizes must be refused before any allocation."""
    def refuse(*args, **kwargs):
        raise AssertionError("a model was built before its sizes were checked")

    for name in ("MLPRun", "Transformer", "TorchMHATransformer"):
        monkeypatch.setattr(_common, name, refuse)
    monkeypatch.setattr(_common.torch, "randint", refuse)


def _one_line_error(capsys, argv) -> str:
    with pytest.raises(SystemExit) as exc:
        cli.main(argv)
    assert exc.value.code == 2
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1 and "Traceback" not in err
    return err


# Issue 15's sizes, on whatever memory this machine has: each estimate is beyond any machine's (10 layers 1e9
# wide: 4e19 bytes of float32 weights, as much for gradients; 1e12 samples of 512 floats: 2e15 bytes; seq 1e6:
# 8 x 4 heads x 1e12 logits, 1e14 bytes).
@pytest.mark.parametrize("argv, option, needs", [
    (["trace", "--width", "1000000000"], "--width 1000000000", "about 8e+10 GB (weights 4e+10 GB"),
    (["trace", "--batch", str(10**12)], "--batch 1000000000000", "would need about"),
    (["diagnose", "--batch", str(10**12)], "--batch 1000000000000", "would need about"),
    (["trace", "--model", "transformer", "--seq-len", "1000000"], "--seq-len 1000000", "would need about"),
    (["trace", "--model", "torch_mha_transformer", "--seq-len", "1000000", "--batch", "2"],
     "--seq-len 1000000 --batch 2", "would need about"),
])
def test_sizes_beyond_memory_are_refused_before_anything_is_allocated(capsys, nothing_built, argv, option, needs):
    err = _one_line_error(capsys, argv)
    assert err.startswith(f"initcore: error: {option}: ")
    assert needs in err and "of memory available; valid with the other options as they are: " in err


def test_the_message_names_what_fits_in_the_memory_available(capsys, nothing_built, monkeypatch):
    monkeypatch.setattr(_memory, "available_bytes", lambda: 24 * GiB)  # this machine's size, whatever is free
    err = _one_line_error(capsys, ["trace", "--width", "100000", "--depth", "2"])
    # 2 layers of 100000^2 + 100000 float32 weights: 80.0 GB, as much again for their gradients
    assert "--width 100000 --depth 2: an mlp 100000->100000 x2 at batch 64 would need about 160 GB (weights " \
           "80 GB, their gradients 80 GB, activations " in err
    assert "more than the 25.8 GB of memory available" in err
    width = int(err.split("--width <= ")[1].split()[0])
    depth_1 = _memory.mlp_estimate(width, width, 2, 64).total
    assert depth_1 <= 24 * GiB < _memory.mlp_estimate(width + 1, width + 1, 2, 64).total
    assert "or --depth <= 1" not in err  # depth 1 at width 100000 (80 GB) does not fit either: not offered


def test_d_model_that_fits_is_a_multiple_of_the_heads(capsys, nothing_built, monkeypatch):
    monkeypatch.setattr(_memory, "available_bytes", lambda: 1 * GiB)
    err = _one_line_error(capsys, ["trace", "--model", "transformer", "--d-model", "30000", "--n-heads", "6"])
    best = int(err.split("--d-model <= ")[1].split()[0])
    assert best % 6 == 0 and best > 0


def test_defaults_and_sizes_that_fit_pass_the_check(monkeypatch, capsys):
    monkeypatch.setattr(_memory, "available_bytes", lambda: 24 * GiB)
    for argv in ([*SMALL], ["trace", "--model", "transformer", "--seq-len", "8", "--batch", "2"]):
        args = cli.build_parser().parse_args(argv)
        _common.check_memory(args)  # no error
    monkeypatch.setattr(_memory, "available_bytes", lambda: None)  # memory unknown: nothing refused
    _common.check_memory(cli.build_parser().parse_args(["trace", "--width", str(10**9)]))


def test_a_huge_sequence_does_not_hang_from_the_console(tmp_path):
    """End to end, as issue 15 found it (past a minute): a subprocess, so a hang is a failure, not a stall."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    done = subprocess.run([sys.executable, "-m", "initcore", "trace", "--model", "transformer", "--seq-len",
                           "1000000"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.startswith("initcore: error: --seq-len 1000000: a transformer") and done.stderr.count("\n") == 1


def test_only_typed_options_count_as_given():
    args = cli.build_parser().parse_args(["trace", "--model", "transformer", "--d-model", "16", "--n-heads", "2",
                                          "--causal"])
    assert _common.given(args) == {"--model", "--d-model", "--n-heads", "--causal"}
    assert args.width == 512 and args.causal is True  # defaults are still there, harmless
    assert _common.given(cli.build_parser().parse_args(["trace"])) == set()


# --- output within 120 columns --------------------------------------------------------------------------


@pytest.mark.parametrize("argv", [
    [*SMALL, "--theory"],
    [*SMALL, "--theory", "--init", "xavier_uniform", "--gain", "auto", "--bias", "0.125", "--in-features", "12"],
    [*SMALL_TRANSFORMER, "--model", "torch_mha_transformer", "--causal", "--norm", "rmsnorm", "--norm-position",
     "post", "--ffn", "swiglu", "--init", "xavier_uniform", "--bias", "0.5"],
])
def test_tables_fit_in_120_columns_and_keep_every_column(capsys, argv):
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    assert max(map(len, out.splitlines())) <= 120
    assert cli.main([*argv, "--format", "csv"]) == 0
    columns = pd.read_csv(io.StringIO(capsys.readouterr().out)).dropna(axis=1, how="all").columns
    header_words = {word for line in out.splitlines() for word in line.split()}
    assert set(columns) <= header_words  # every column with a number is in some block
    blocks = out.strip().split("\n\n")
    assert len(blocks) > 1
    for block in blocks:  # each block's rows are led by the module
        assert block.splitlines()[-1].split()[0].startswith(("layers.", "blocks."))
