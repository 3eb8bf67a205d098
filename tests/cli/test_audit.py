"""``initcore audit`` on a model of the user's, as a user runs it: a file in a temporary folder, the console
script in a subprocess. Exit 0 with no flag, 1 on a flag or an unmet expectation, 2 and one line on bad input;
nothing left in the folder but the user's file."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from contextlib import redirect_stdout
from pathlib import Path

import pytest

from initcore import cli

ROOT = Path(__file__).resolve().parents[2]

USER_GPT = '''
import math
import torch
from torch import nn


class Block(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.ln_1, self.ln_2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.c_attn, self.c_proj = nn.Linear(d, 3 * d), nn.Linear(d, d)


class GPT(nn.Module):
    def __init__(self, d=64, n_layer=3, skip_norms=False):
        super().__init__()
        self.n_layer, self.skip_norms = n_layer, skip_norms
        self.wte = nn.Embedding(256, d)
        self.h = nn.ModuleList(Block(d) for _ in range(n_layer))
        self.init_weights()

    def init_weights(self):
        self.apply(self._init_weights)
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, 0.0, 0.02 / math.sqrt(2 * self.n_layer))

    def _init_weights(self, m):
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, 0.0, 0.02)
            if getattr(m, "bias", None) is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm) and not self.skip_norms:
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def make(seed):
    return GPT()


def forgetful(seed):
    return GPT(skip_norms=True)
'''


def _initcore(folder: Path, *argv: str) -> subprocess.CompletedProcess:
    script = Path(sys.executable).with_name("initcore")
    command = [str(script)] if script.exists() else [sys.executable, "-m", "initcore"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    return subprocess.run([*command, "audit", *argv], cwd=folder, env=env, capture_output=True, text=True,
                          timeout=300)


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    (tmp_path / "mygpt.py").write_text(USER_GPT)
    return tmp_path


def test_a_correct_model_passes_and_a_broken_one_fails_as_a_user_runs_it(folder):
    done = _initcore(folder, "--model", "mygpt:make")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[-1] == "no flag" and all(len(line) <= 120 for line in lines)
    assert any(line.startswith("h.*.c_proj.weight") and "normal(0.02/sqrt(2L))" in line for line in lines)
    # the large-model recipe: on meta, to_empty, then the model's own init_weights(), which skips the norms
    done = _initcore(folder, "--model", "mygpt:forgetful", "--meta")
    assert done.returncode == 1, done.stdout + done.stderr
    assert "uninitialized: h.*.ln_1.weight" in done.stdout and "12 of 17 parameters flagged" not in done.stderr
    assert "init_weights()" in done.stdout
    # an expectation not met: c_proj expected at 0.02
    done = _initcore(folder, "--model", "mygpt:make", "--expect", "*.c_proj.weight=normal(0.02)")
    assert done.returncode == 1 and "expected: h.*.c_proj.weight" in done.stdout
    assert sorted(p.name for p in folder.iterdir() if p.name != "__pycache__") == ["mygpt.py"]


def test_init_with_roles_and_machine_readable_output(folder):
    done = _initcore(folder, "--model", "mygpt:make", "--init", "xavier_uniform", "--roles", "*.c_attn.weight=qkv:3",
                     "--format", "json")
    assert done.returncode == 0, done.stderr
    groups = {g["group"]: g for g in json.loads(done.stdout)}
    assert groups["h.*.c_attn.weight"]["rule"] == "xavier_uniform" and groups["h.*.c_attn.weight"]["n"] == 3
    done = _initcore(folder, "--model", "mygpt:make", "--format", "csv", "--all")
    assert done.returncode == 0 and done.stdout.splitlines()[0].startswith("group,name,tied,module")


@pytest.mark.parametrize("argv,message", [
    (["--model", "mygpt:make", "--expect", "normal(0.0.2)"], "rule 'normal(0.0.2)' does not parse"),
    (["--model", "mygpt:make", "--expect", "nope.*=zeros"], "expect pattern 'nope.*' matches no parameter"),
    (["--model", "mygpt.py:make"], "mygpt:make"),
    (["--model", "mlp", "--meta"], "--meta builds a model of yours"),
    (["--model", "mygpt:make", "--init", "xavier_uniform"], "looks like a fused q/k/v projection"),
])
def test_bad_input_is_one_line_and_exit_2(folder, argv, message, monkeypatch, capsys):
    monkeypatch.chdir(folder)  # in process (a subprocess each would cost 5 s of imports): the same main()
    monkeypatch.syspath_prepend(str(folder))
    with pytest.raises(SystemExit) as stop:
        cli.main(["audit", *argv])
    err = capsys.readouterr().err
    assert stop.value.code == 2 and message in err, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err


def test_bad_input_exits_2_from_the_console_script_too(folder):
    done = _initcore(folder, "--model", "mygpt:make", "--expect", "xavier")
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert "did you mean xavier_normal, xavier_uniform" in done.stderr and "Traceback" not in done.stderr


def test_initcores_own_model_in_process():
    out = io.StringIO()
    with redirect_stdout(out):
        code = cli.main(["audit", "--model", "transformer", "--init", "gpt2", "--n-layers", "2", "--d-model", "32"])
    lines = out.getvalue().splitlines()
    assert code == 0 and lines[-1] == "no flag"
    # gpt2's promise explains every Linear weight at once (the residual projections at 0.02/sqrt(2L) included):
    # the audit names the strategy, the rule shared by the module type's parameters
    assert next(line for line in lines if line.startswith("blocks.*.attn.o.weight")).split()[-1] == "gpt2"
