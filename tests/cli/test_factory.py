"""initcore.cli._factory: ``--model package.module:factory`` on trace and diagnose, its inputs, and each bad
reference as one line with exit status 2."""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
from torch import nn

from initcore import cli, probe
from initcore.cli import _common, _factory
from initcore.models import MLP

ROOT = Path(__file__).resolve().parents[2]

USER_MODELS = """
import torch
from torch import nn
from initcore.models import MLP

SEEDS = []

def mlp():
    return MLP(16, 16, 3)

def sequential(seed):
    SEEDS.append(seed)
    return nn.Sequential(nn.Linear(16, 32), nn.Tanh(), nn.Linear(32, 32), nn.Tanh(), nn.Linear(32, 4))

def with_inputs():
    return MLP(8, 8, 2, "relu"), torch.randn(4, 8)

class Tokens(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(50, 16)
        self.out = nn.Linear(16, 16)

    def forward(self, idx):
        return self.out(self.emb(idx))

class TokensBT(Tokens):
    def forward(self, idx):
        batch, seq = idx.shape  # a 1-D shape: "not enough values to unpack"
        return super().forward(idx)

class Asserts(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(16, 16)

    def forward(self, x):
        assert x.shape[0] > 8, "expected more than 8 samples"
        return self.lin(x)

def raises():
    return 1 / 0

def wrong_type():
    return 3

def wrong_tuple():
    return MLP(4, 4, 1), torch.zeros(1), "extra"

NOT_CALLABLE = 7
"""

# As transformers' lazy import says it when torchvision fails beneath it: the cause is in the chain.
CHAINED_IMPORT = """
try:
    raise RuntimeError("operator torchvision::nms does not exist")
except RuntimeError as e:
    raise ModuleNotFoundError("Could not import module 'GPT2LMHeadModel'. Are this object's requirements "
                              "defined correctly?") from e
"""


@pytest.fixture
def user_module(tmp_path, monkeypatch) -> str:
    """A module of the user's in the current folder, under a name of its own (sys.modules keeps imports)."""
    name = f"user_models_{abs(hash(tmp_path.name))}"
    (tmp_path / f"{name}.py").write_text(USER_MODELS)
    (tmp_path / "broken_import.py").write_text("import not_installed_dependency_xyz\n")
    (tmp_path / "raises_on_import.py").write_text("raise RuntimeError('no GPU here')\n")
    (tmp_path / "chained_import.py").write_text(CHAINED_IMPORT)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))  # resolve() may put the folder on it: undone afterwards
    for stale in ("broken_import", "raises_on_import", "chained_import"):
        monkeypatch.delitem(sys.modules, stale, raising=False)
    return name


def _csv(capsys, argv) -> pd.DataFrame:
    assert cli.main(argv) == 0
    out, err = capsys.readouterr()
    assert err == ""
    return pd.read_csv(io.StringIO(out))


def test_a_factory_of_an_initcore_mlp_traces_as_the_probe_does(capsys, user_module):
    frame = _csv(capsys, ["trace", "--model", f"{user_module}:mlp", "--input-shape", "8,16", "--seed", "3",
                          "--format", "csv"])
    torch.manual_seed(3)  # as the factory is called: global seed set, then factory()
    model = MLP(16, 16, 3)
    x = torch.randn(8, 16, generator=torch.Generator().manual_seed(3))  # then inputs from the seeded generator
    expected = probe.trace(model, x, loss="random")
    assert frame["module"].tolist() == ["layers.0", "layers.1", "layers.2"]
    pd.testing.assert_series_equal(frame["act_std"], expected["act_std"], rtol=1e-9)
    pd.testing.assert_series_equal(frame["grad_norm"], expected["grad_norm"], rtol=1e-9)
    again = _csv(capsys, ["trace", "--model", f"{user_module}:mlp", "--input-shape", "8,16", "--seed", "3",
                          "--format", "csv"])
    pd.testing.assert_frame_equal(frame, again)
    other = _csv(capsys, ["trace", "--model", f"{user_module}:mlp", "--input-shape", "8,16", "--format", "csv"])
    assert not other["act_std"].equals(frame["act_std"])


def test_a_sequential_of_linear_and_tanh(capsys, user_module):
    frame = _csv(capsys, ["trace", "--model", f"{user_module}:sequential", "--input-shape", "8,16", "--seed", "5",
                          "--format", "csv"])
    assert frame["module"].astype(str).tolist() == ["0", "1", "2", "3", "4"]
    assert frame["kind"].tolist() == ["linear", "tanh", "linear", "tanh", "linear"]
    assert sys.modules[user_module].SEEDS == [5]  # factory(seed): it takes an argument
    tanh = frame[frame["kind"] == "tanh"]
    assert (tanh["act_std"] < 1).all() and tanh["preact_std"].notna().all()  # a tanh row knows its pre-activation
    assert (frame.loc[frame["kind"] == "linear", "grad_norm"] > 0).all()
    table = cli.main(["trace", "--model", f"{user_module}:sequential", "--input-shape", "8,16"])
    out = capsys.readouterr().out
    header = " ".join(line.lstrip("# ") for line in out.splitlines() if line.startswith("#"))
    assert table == 0 and header == (f"{user_module}:sequential (Sequential, 1732 parameters, inputs 8x16), init "
                                     "the factory's own, seed 0, cpu, loss random")


def test_init_and_select_apply_to_a_model_of_yours(capsys, user_module):
    argv = ["trace", "--model", f"{user_module}:sequential", "--input-shape", "64,16", "--format", "csv"]
    own = _csv(capsys, argv)
    xavier = _csv(capsys, [*argv, "--init", "xavier_uniform", "--gain", "1.5"])
    assert not own["act_std"].equals(xavier["act_std"])
    picked = _csv(capsys, [*argv, "--select", "0,4"])
    assert picked["module"].astype(str).tolist() == ["0", "4"]


def test_a_factory_may_return_its_inputs(capsys, user_module):
    frame = _csv(capsys, ["trace", "--model", f"{user_module}:with_inputs", "--format", "csv"])
    assert frame["module"].tolist() == ["layers.0", "layers.1"]
    assert frame["dead_frac"].iloc[0] > 0  # relu


def test_token_inputs_from_vocab_and_shape(capsys, user_module):
    frame = _csv(capsys, ["trace", "--model", f"{user_module}:Tokens", "--vocab", "50", "--input-shape", "4,8",
                          "--format", "csv"])
    assert frame["module"].tolist() == ["emb", "out"]
    assert cli.main(["trace", "--model", f"{user_module}:Tokens", "--vocab", "50", "--input-shape", "4,8"]) == 0
    assert "token ids 4x8" in capsys.readouterr().out


def test_diagnose_a_model_of_yours(capsys, user_module):
    assert cli.main(["diagnose", "--model", f"{user_module}:sequential", "--input-shape", "8,16", "--format",
                     "json"]) == 0
    assert isinstance(json.loads(capsys.readouterr().out), list)


def test_the_built_in_names_still_work(capsys):
    for name in ("mlp", "transformer", "torch_mha_transformer"):
        argv = ["trace", "--model", name, "--format", "csv"]
        argv += ["--width", "8", "--depth", "2"] if name == "mlp" else ["--d-model", "16", "--n-heads", "2",
                                                                         "--seq-len", "4", "--n-layers", "1"]
        assert len(_csv(capsys, argv)) > 0


@pytest.mark.parametrize("reference, extra, message", [
    ("no_such_module_xyz:build", [], "--model no_such_module_xyz:build: no module named 'no_such_module_xyz' (run "
                                     "from the folder that holds it, or put that folder on PYTHONPATH)"),
    ("{m}:missing", [], "{m} has no attribute 'missing'; its callables: Asserts, MLP, Tokens, TokensBT, mlp, raises, "
                        "sequential"),
    ("{m}:raises", [], "--model {m}:raises: the factory raised ZeroDivisionError: division by zero"),
    ("{m}:wrong_type", [], "the factory returned int; it must return an nn.Module, or (nn.Module, inputs)"),
    ("{m}:wrong_tuple", [], "the factory returned a tuple of 3 (MLP, Tensor, str)"),
    ("{m}:NOT_CALLABLE", [], "NOT_CALLABLE is not callable (type int); give a callable that returns a model"),
    ("{m}:mlp:extra", [], "a model of your own is package.module:factory (dotted names, one colon)"),
    ("broken_import:f", [], "importing broken_import failed: ModuleNotFoundError: No module named "
                            "'not_installed_dependency_xyz'"),
    ("raises_on_import:f", [], "importing raises_on_import raised RuntimeError: no GPU here"),
    ("{m}:mlp", None, "returned a model without inputs: give --input-shape"),
    ("{m}:with_inputs", ["--input-shape", "4,8"], "--input-shape: the factory of --model {m}:with_inputs returned "
                                                  "its own inputs"),
    ("{m}:mlp", ["--batch", "4"], "--batch does not apply to --model {m}:mlp (--batch is for the built-in models)"),
    ("{m}:mlp", ["--width", "4"], "--width does not apply to --model {m}:mlp (--width is for an mlp)"),
    ("{m}:mlp", ["--vocab", "10"], "--vocab needs --input-shape"),
    ("{m}:mlp", ["--input-shape", "8,16", "--gain", "2"], "--gain needs --init"),
    ("{m}:mlp", ["--input-shape", "8,16", "--theory"], "--theory predicts MLPs only"),
    ("{m}:mlp", ["--input-shape", "8,16", "--select", "nothing*"], "--select nothing*: MLP has no module matching"),
    ("{m}:mlp", ["--input-shape", "100000000000,100000000000"], "--input-shape 100000000000,100000000000: "
                                                                "10000000000000000000000 inputs of 4 bytes"),
    ("{m}:sequential", ["--input-shape", "8,15"], "--model {m}:sequential failed on --input-shape 8,15: "
                                                  "RuntimeError: mat1 and mat2 shapes cannot be multiplied"),
    ("chained_import:f", [], "--model chained_import:f: importing chained_import failed: ModuleNotFoundError: "
                             "Could not import module 'GPT2LMHeadModel'. Are this object's requirements defined "
                             "correctly? (caused by RuntimeError: operator torchvision::nms does not exist)"),
    ("{m}.py:mlp", [], "--model {m}.py:mlp: no module named '{m}.py'; for the file {m}.py, give --model {m}:mlp"),
    ("models/{m}.py:mlp", [], "for the file models/{m}.py, give --model {m}:mlp from models (or with models on "
                              "PYTHONPATH)"),
    ("{m}:Asserts", [], "--model {m}:Asserts failed on --input-shape 8,16: AssertionError: expected more than 8 "
                        "samples"),
    ("{m}:Tokens", ["--input-shape", "4,8"], "--model {m}:Tokens failed on --input-shape 4,8: RuntimeError: "
                                             "Expected tensor for argument #1 'indices'"),
    ("{m}:Tokens", ["--input-shape", "4,8"], "; its first layer, emb, is an Embedding, which takes token ids: add "
                                             "--vocab N (ids uniform in [0, N), N <= 50)"),
    ("{m}:TokensBT", ["--input-shape", "32", "--vocab", "50"],
     "--model {m}:TokensBT failed on --input-shape 32 --vocab 50: ValueError: not enough values to unpack (expected "
     "2, got 1); token ids are (batch, sequence): give two sizes, e.g. --input-shape 32,16 --vocab 50"),
])
def test_bad_references_and_inputs_exit_2_with_one_line(capsys, user_module, reference, extra, message):
    argv = ["trace", "--model", reference.format(m=user_module), *(["--input-shape", "8,16"] if extra == [] else
                                                                  extra or [])]
    with pytest.raises(SystemExit) as exc:
        cli.main(argv)
    assert exc.value.code == 2
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith("initcore: error: ") and message.format(m=user_module) in err


def test_resolve_finds_nested_attributes():
    assert _factory.resolve("initcore.models:MLP.from_config") == MLP.from_config
    assert _factory.build("torch.nn:Identity", 0).model.__class__ is nn.Identity


def test_the_console_script_imports_from_the_current_folder(tmp_path):
    """The installed ``initcore`` script does not put the current folder on sys.path by itself (python -m
    does): a model in the folder the user runs from must import all the same."""
    (tmp_path / "my_net.py").write_text("from torch import nn\n\ndef build():\n    return nn.Sequential("
                                        "nn.Linear(6, 6), nn.ReLU(), nn.Linear(6, 2))\n")
    script = Path(sys.executable).with_name("initcore")
    command = [str(script)] if script.exists() else [sys.executable, "-m", "initcore"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    done = subprocess.run([*command, "trace", "--model", "my_net:build", "--input-shape", "4,6", "--format", "csv"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert pd.read_csv(io.StringIO(done.stdout))["kind"].tolist() == ["linear", "relu", "linear"]


def test_an_error_raised_in_initcores_own_code_stays_an_error(user_module):
    """Only what the user's model raises is bad input: an exception whose innermost frame is initcore's is a
    bug of initcore's, and keeps its type and traceback."""
    args = cli.build_parser().parse_args(["trace", "--model", f"{user_module}:mlp", "--input-shape", "8,16"])
    with pytest.raises(argparse.ArgumentTypeError, match="must be an integer"):
        with _common.user_model_errors(args):
            _common.integer_in("x", 0, 1)


@pytest.mark.parametrize("reference, extra, message", [
    ("user_net:Asserts", ["--input-shape", "8,16"], "--model user_net:Asserts failed on --input-shape 8,16: "
                                                    "AssertionError: expected more than 8 samples"),
    ("user_net.py:Asserts", ["--input-shape", "8,16"], "for the file user_net.py, give --model user_net:Asserts"),
])
def test_a_users_failing_model_exits_2_with_one_line_as_a_user_runs_it(tmp_path, reference, extra, message):
    (tmp_path / "user_net.py").write_text(USER_MODELS)
    done = subprocess.run([sys.executable, "-m", "initcore", "trace", "--model", reference, *extra], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert (done.returncode, done.stdout, done.stderr.count("\n")) == (2, "", 1), done.stderr
    assert done.stderr.startswith("initcore: error: ") and message in done.stderr
