"""initcore coord: the table, the figure, CSV output, the verdict's exit status, a model of yours, bad input."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pandas as pd
import pytest

from initcore import cli, report

ROOT = Path(__file__).resolve().parents[2]

SMALL = ["coord", "--widths", "16,32", "--steps", "2"]


def test_table_and_figure(capsys, tmp_path):
    pytest.importorskip("matplotlib")
    assert cli.main([*SMALL, "--out", str(tmp_path)]) == 0
    out, err = capsys.readouterr()
    assert err == ""
    assert out.startswith("# coordinate check: mlp, init mup, adam lr 0.001, base width 16, seed 0")
    for word in ("coordinate", "w16", "w32", "slope", "verdict", "layers.1", "output"):
        assert word in out
    assert out.splitlines()[-1].startswith("# pass: no coordinate grows with width")
    png, csv = tmp_path / "coord-mlp-mup-adam.png", tmp_path / "coord-mlp-mup-adam.csv"
    assert png.read_bytes().startswith(b"\x89PNG")
    table = pd.read_csv(csv)
    assert list(table.columns) == ["step", "coordinate", "w16", "w32", "slope", "verdict"]
    assert not list(tmp_path.glob(".*.tmp"))  # written atomically: no temporary file left


def test_csv_is_only_csv_and_a_growing_coordinate_exits_1(capsys):
    assert cli.main([*SMALL, "--model", "transformer", "--init", "standard", "--format", "csv", "--no-plot"]) == 1
    out, _ = capsys.readouterr()
    table = pd.read_csv(io.StringIO(out))
    assert {"blocks.0.attn", "blocks.0.attn:logits", "output"} <= set(table["coordinate"])
    assert table.loc[table["step"] == 1, "slope"].notna().all()
    assert "grows" in set(table["verdict"])


def test_allow_and_max_slope_change_the_verdict(capsys):
    argv = [*SMALL, "--init", "kaiming_normal", "--no-plot"]
    assert cli.main(argv) == 1
    out, _ = capsys.readouterr()
    assert "# FAIL:" in out and "(grows, slope +" in out
    assert cli.main([*argv, "--allow", "layers.*", "--allow", "output"]) == 0  # every growing one excepted
    out, _ = capsys.readouterr()
    assert "excepted" in out and "except layers.*, output)" in out
    assert cli.main([*argv, "--max-slope", "5"]) == 0



def test_without_matplotlib_it_says_so_before_training(capsys, monkeypatch):
    def unavailable():
        raise report.PlottingUnavailable(report.INSTALL_HINT)

    monkeypatch.setattr(report, "require_matplotlib", unavailable)
    assert cli.main(SMALL) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1 and "pip install 'initcore[plot]'" in err and "--no-plot" in err


@pytest.mark.parametrize("argv, message", [
    (["--widths", "64"], "must be two or more positive integers"),
    (["--widths", "64,32"], "must be distinct and increasing"),
    (["--widths", "64,abc"], "must be two or more positive integers"),
    (["--model", "transformer", "--widths", "63,128"], "multiples of n_heads = 2"),
    (["--steps", "200"], "steps must be an integer in 1..100"),
    (["--init", "mupp"], "unknown strategy 'mupp'"),
    (["--lr", "0"], "must be a positive number"),
    (["--optimizer", "lion"], "invalid choice: 'lion'"),
    (["--widths", "64,1000000"], "the widths up to 64 fit"),
    (["--model", "cnn"], "unknown model 'cnn'; valid: mlp, transformer, or package.module:factory"),
    (["--allow", "output@t0"], "the form is COORDINATE or COORDINATE@tSTEP"),
    (["--model", "initcore_no_such_module:make"], "no module named 'initcore_no_such_module'"),
])
def test_bad_input_exits_2_with_one_line(capsys, argv, message):
    with pytest.raises(SystemExit) as exc:
        cli.main(["coord", "--no-plot", *argv])
    assert exc.value.code == 2
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1 and err.startswith("initcore: error: ")
    assert message in err and "Traceback" not in err


# --- a model of yours, as a user runs it: a file in a folder, the console script, a subprocess --------------

USER_MODEL = textwrap.dedent("""
    import torch
    from torch import nn
    from torch.nn import functional as F


    class TinyGPT(nn.Module):
        def __init__(self, width, vocab=64, heads=2):
            super().__init__()
            self.heads, self.scale = heads, 1.0 / (width // heads)  # muP's 1/d_head
            self.wte = nn.Embedding(vocab, width)
            self.ln1, self.ln2, self.lnf = nn.LayerNorm(width), nn.LayerNorm(width), nn.LayerNorm(width)
            self.q, self.k, self.v = nn.Linear(width, width), nn.Linear(width, width), nn.Linear(width, width)
            self.proj = nn.Linear(width, width)
            self.fc, self.out = nn.Linear(width, 4 * width), nn.Linear(4 * width, width)
            self.lm_head = nn.Linear(width, vocab, bias=False)

        def forward(self, idx):
            x = self.wte(idx)
            B, T, C = x.shape
            h = self.ln1(x)
            q, k, v = (f(h).view(B, T, self.heads, C // self.heads).transpose(1, 2) for f in (self.q, self.k, self.v))
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=self.scale)
            x = x + self.proj(y.transpose(1, 2).reshape(B, T, C))
            x = x + self.out(F.gelu(self.fc(self.ln2(x))))
            return self.lm_head(self.lnf(x))


    def make(seed, width):
        g = torch.Generator().manual_seed(seed)  # the batch first: the same at every width
        idx, targets = torch.randint(0, 64, (4, 8), generator=g), torch.randint(0, 64, (4, 8), generator=g)
        return TinyGPT(width), idx, targets


    def broken(seed, width):
        raise RuntimeError("config has no attribute n_embd")
""")


def _initcore(tmp_path: Path, *argv: str) -> subprocess.CompletedProcess:
    script = Path(sys.executable).with_name("initcore")
    command = [str(script)] if script.exists() else [sys.executable, "-m", "initcore"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    return subprocess.run([*command, *argv], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)


# Widths 32..128 and 2 steps keep it to seconds. Over seeds 0..3 at these widths the largest slope is 0.08 under
# muP and 0.94..1.06 with the model's own (torch default) init and one learning rate (the standard
# parametrization, whose hidden rows grow as width^1 under Adam): far on either side of MAX_SLOPE = 0.25.
USER_RUN = ("coord", "--model", "gpt:make", "--widths", "32,64,128", "--steps", "2")


def test_a_user_model_passes_under_mup_and_fails_with_its_own_init(tmp_path):
    (tmp_path / "gpt.py").write_text(USER_MODEL)
    done = _initcore(tmp_path, *USER_RUN, "--init", "mup")
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.startswith("# coordinate check: gpt:make, init mup, adam lr 0.001, base width 32, seed 0")
    assert "# pass: no coordinate grows with width" in done.stdout
    figure = tmp_path / "report" / "coord-gpt_make-mup-adam.png"
    assert figure.read_bytes().startswith(b"\x89PNG")
    table = pd.read_csv(tmp_path / "report" / "coord-gpt_make-mup-adam.csv")
    assert {"wte", "q", "fc", "output"} <= set(table["coordinate"]) and "lm_head" not in set(table["coordinate"])
    assert any(c.endswith(":logits") for c in table["coordinate"])  # its SDPA call's logits

    naive = _initcore(tmp_path, *USER_RUN, "--no-plot")
    assert naive.returncode == 1, naive.stdout + naive.stderr
    assert naive.stderr == ""
    assert "gpt:make, its own init" in naive.stdout.splitlines()[0]
    assert "# FAIL:" in naive.stdout and "(grows, slope +" in naive.stdout
    # what a user's folder holds afterwards: the model, the figure and table asked for, Python's bytecode cache
    assert {p.name for p in tmp_path.iterdir()} <= {"gpt.py", "report", "__pycache__"}
    assert {p.name for p in (tmp_path / "report").iterdir()} == {"coord-gpt_make-mup-adam.png",
                                                                  "coord-gpt_make-mup-adam.csv"}


@pytest.mark.parametrize("argv, message", [
    (["--model", "gpt:make", "--roles", "q.weight=qkv"], "--roles goes with --init"),
    (["--model", "gpt:nope"], "--model gpt:nope: gpt has no attribute 'nope'; its callables: TinyGPT, broken, make"),
    (["--model", "gpt:broken"], "--model gpt:broken: RuntimeError: config has no attribute n_embd (in factory(seed, "
                                "width) or the model's forward/backward at --widths 32,64)"),
])
def test_a_user_model_s_bad_input_exits_2_with_one_line(tmp_path, argv, message):
    (tmp_path / "gpt.py").write_text(USER_MODEL)
    done = _initcore(tmp_path, "coord", "--widths", "32,64", "--steps", "1", "--no-plot", *argv)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr and message in done.stderr, done.stderr
