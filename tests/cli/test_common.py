"""initcore.cli._common: the model options build what initcore.experiments builds, and bad input is one line
with exit status 2."""

import pytest
import torch

from initcore import cli
from initcore.experiments import MLPRun
from initcore.models import MLPConfig

SMALL = ["trace", "--width", "16", "--depth", "4", "--batch", "8"]
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


