"""initcore.cli: commands are discovered from the package's modules; the console script and
``python -m initcore`` run them."""

import importlib
import io
import os
import subprocess
import sys
import types
from pathlib import Path

import pandas as pd
import pytest

from initcore import cli

ROOT = Path(__file__).resolve().parents[2]
COMMANDS = {"compare", "diagnose", "list", "report", "trace"}


def _package(tmp_path, monkeypatch, modules: dict[str, str]) -> types.ModuleType:
    """A throwaway command package on sys.path, written from ``modules`` (name -> source)."""
    name = f"fake_cli_{tmp_path.name}"  # a name of its own per test: sys.modules keeps what was imported
    root = tmp_path / name
    root.mkdir()
    (root / "__init__.py").write_text("")
    for module, source in modules.items():
        (root / f"{module}.py").write_text(source)
    monkeypatch.syspath_prepend(str(tmp_path))
    return importlib.import_module(name)


def test_every_command_module_becomes_a_command():
    modules = cli.command_modules()
    public = {p.stem for p in Path(cli.__file__).parent.glob("*.py") if not p.stem.startswith("_")}
    assert set(modules) == public  # others add commands (shards, coord) by adding a module, nothing else
    assert {"compare", "diagnose", "list_", "report", "trace"} <= public
    sub = next(a for a in cli.build_parser()._actions if a.dest == "command")
    assert COMMANDS <= set(sub.choices) and len(sub.choices) == len(modules)


HELLO = """
def add_parser(subparsers):
    p = subparsers.add_parser("hello")
    p.add_argument("--times", type=int, default=1)
    return p

def run(args):
    print("hello " * args.times)
    return 7
"""


def test_a_new_module_is_a_new_command_without_editing_any_other(tmp_path, monkeypatch, capsys):
    package = _package(tmp_path, monkeypatch, {"hello": HELLO, "_helper": "X = 1\n"})
    parser = cli.build_parser(package)
    args = parser.parse_args(["hello", "--times", "2"])
    assert args._run(args) == 7
    assert capsys.readouterr().out.strip() == "hello hello"
    with pytest.raises(SystemExit):
        parser.parse_args(["_helper"])  # a module named _x is a helper, not a command


def test_a_half_written_command_module_is_a_programming_error(tmp_path, monkeypatch):
    package = _package(tmp_path, monkeypatch, {"half": "def add_parser(subparsers):\n    return None\n"})
    with pytest.raises(TypeError, match="lacks run"):
        cli.command_modules(package)


def test_add_parser_must_return_the_parser(tmp_path, monkeypatch):
    package = _package(tmp_path, monkeypatch, {"bad": "def add_parser(s):\n    s.add_parser('bad')\n"
                                                      "def run(args):\n    return 0\n"})
    with pytest.raises(TypeError, match="must return the parser it added"):
        cli.build_parser(package)


def test_python_dash_m_initcore():
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    done = subprocess.run([sys.executable, "-m", "initcore", "trace", "--width", "8", "--depth", "3", "--batch", "4",
                           "--format", "csv"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    frame = pd.read_csv(io.StringIO(done.stdout))
    assert frame.layer.tolist() == [0, 1, 2] and "preact_std" in frame.columns


def test_console_script_is_installed_and_runs():
    script = Path(sys.executable).with_name("initcore")
    if not script.exists():
        pytest.skip(f"no console script beside {sys.executable} (install with pip install -e .)")
    done = subprocess.run([str(script), "list"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "strategies:" in done.stdout


def test_a_closed_pipe_ends_quietly(monkeypatch):
    """``initcore list | head -1``: the reader leaves early; exit 141 (SIGPIPE's), no traceback."""
    def closed(args):
        raise BrokenPipeError(32, "Broken pipe")

    monkeypatch.setattr(sys, "stdout", io.StringIO())  # restored after the test, whatever main puts there
    monkeypatch.setattr(cli.command_modules()["list_"], "run", closed)
    assert cli.main(["list"]) == 141
