"""initcore shards: a table of the sharded init, exit 0 when every check passes, 1 when one fails, 2 on bad input."""

import pytest

from initcore import cli

SMALL = ["--n-layers", "1", "--d-model", "64", "--d-ff", "96", "--vocab-size", "200"]


def _rows(out: str) -> list[list[str]]:
    return [line.split() for line in out.splitlines() if line.startswith(("embed.", "blocks.", "norm_f."))]


@pytest.mark.parametrize("parallel", ["fsdp", "tp"])
def test_initcore_recipe_prints_one_passing_row_per_parameter(parallel, capsys):
    assert cli.main(["shards", "--strategy", "gpt2", "--parallel", parallel, "--world-size", "2", *SMALL]) == 0
    out, err = capsys.readouterr()
    assert err == ""
    rows = _rows(out)
    assert len(rows) == 19  # embedding, 4 norm tensors, q k v o fc1 fc2 with biases, final norm (2)
    assert max(map(len, out.splitlines())) <= 120
    q = next(r for r in rows if r[0] == "blocks.0.attn.q.weight")
    assert q[1:4] == ["qkv", "64x64", "S(0)x2"]
    assert q[-3:] == ["yes", "yes", "yes"]  # independent, identical, initialized
    assert "every check passes: 19 parameters" in out


def test_the_naive_recipe_exits_1_naming_the_equal_shards(capsys):
    assert cli.main(["shards", "--naive", "--parallel", "tp", "--world-size", "2", *SMALL]) == 1
    out, _ = capsys.readouterr()
    assert "naive nn.init (tp" in out.splitlines()[0]
    q = next(r for r in _rows(out) if r[0] == "blocks.0.attn.q.weight")
    assert q[-3] == "NO"  # not independent
    assert "blocks.0.attn.q.weight (qkv): shards 0 and 1 are equal" in out


@pytest.mark.parametrize("argv, message", [
    (["--strategy", "xavierr"], "unknown strategy 'xavierr'; valid: xavier_uniform"),
    (["--world-size", "0"], "--world-size: must be an integer in 1..64, got '0'"),
    (["--parallel", "ddp"], "invalid choice: 'ddp'"),
    (["--parallel", "tp", "--attention", "torch_mha"], "valid for tp: sdpa"),
    (["--n-heads", "5"], "d_model (128) must be divisible by n_heads (5)"),
    (["--backend", "nccl", "--world-size", "64"], "nccl with 64 ranks needs 64 CUDA devices"),
    (["--naive", "--strategy", "gpt2"], "--naive writes the 'standard' strategy"),
])
def test_bad_input_is_one_line_and_exit_2(argv, message, capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["shards", *argv])
    assert exc.value.code == 2
    out, err = capsys.readouterr()
    assert out == "" and len(err.strip().splitlines()) == 1 and message in err, err
