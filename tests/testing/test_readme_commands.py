"""The README's commands, as printed: every line of every fenced ```sh block is run or checked.

How each command is checked is decided here, in ``COMMANDS``, by its exact text (a trailing ``# comment``
dropped): a command the README gains or changes fails ``test_every_readme_command_is_classified`` until
someone adds it below, saying how to check it. Commands run from the repository root with the test's own
interpreter's directory (.venv/bin under ``make test``) first on PATH, as after ``source .venv/bin/activate``.

- RUN: run as printed; it must exit 0 (or the status given) without a traceback. Only the cheap ones.
- PARSE: the slow or writing ones, checked to parse and start: ``pytest ... --collect-only -q`` (options,
  plugins and collection, nothing run or written), ``make -n`` (the target and variables, nothing run),
  ``initcore ...`` through the CLI's own parser (``initcore.cli.build_parser``).
- SKIP: a placeholder stands in the command (DIR, OLD.json, URL-OF-...): there is nothing to run as printed;
  the reason says which part is a placeholder. Its options are covered by a RUN or PARSE neighbour.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
README = REPO / "README.md"
RUN, PARSE, SKIP = "run", "parse", "skip"

# command -> (how, why). Keep the README's order; say why a command is not RUN.
COMMANDS: dict[str, tuple[str, str]] = {
    # Quick start
    "make bench": (PARSE, "the whole bench; make test runs this test, so make -n"),
    "make test": (PARSE, "runs this very test"),
    "source .venv/bin/activate": (RUN, ""),
    "pytest bench --benchmark-skip -k depth_init": (RUN, ""),
    "initcore list": (RUN, ""),
    'make bench PYTEST_ARGS="--benchmark-skip --seed 7"': (PARSE, "the whole bench"),
    "make test PYTHON=/path/to/python-with-torch": (SKIP, "/path/to/python-with-torch is a placeholder"),
    'make test TORCH="torch==2.5.1"': (PARSE, "would rebuild .venv with another torch"),
    'make test TORCH="torch --index-url URL-OF-A-CUDA-WHEEL-INDEX"': (SKIP, "URL-OF-A-CUDA-WHEEL-INDEX"),
    # What pytest bench checks: options
    "pytest bench": (PARSE, "minutes"),
    "pytest bench --benchmark-skip": (PARSE, "30-60 s; a -k subset of it runs above"),
    "pytest bench --benchmark-only": (PARSE, "timings, tens of seconds"),
    "pytest bench --device cpu": (PARSE, "minutes"),
    "pytest bench --seed 7": (PARSE, "minutes"),
    "pytest bench -m large": (PARSE, "minutes"),
    "pytest bench -n 2": (PARSE, "minutes; tests/testing/test_plugin.py runs -n 2 on a small suite"),
    "pytest bench --update-baselines": (PARSE, "writes baselines/"),
    "pytest bench -n 2 --update-baselines": (PARSE, "writes baselines/; tests/testing/test_update_parallel.py"),
    "pytest bench --baselines-dir DIR": (SKIP, "DIR is a placeholder"),
    # Timings
    "pytest bench --benchmark-only --benchmark-autosave": (PARSE, "timings; writes .benchmarks/"),
    "pytest bench --benchmark-only --benchmark-compare --benchmark-compare-fail=median:10%":
        (SKIP, "compares with the run the line above saved"),
    "initcore compare .benchmarks/*/0001_*.json": (SKIP, "reads the run the autosave line saved"),
    "initcore compare OLD.json NEW.json --threshold 0.10": (SKIP, "OLD.json, NEW.json are placeholders"),
    # Command line
    "initcore trace --width 512 --depth 10 --activation tanh --init xavier_uniform --theory": (RUN, ""),
    "initcore trace --init normal:0.01 --format csv": (RUN, ""),
    "initcore trace --model transformer --init gpt2 --n-layers 12": (RUN, ""),
    "initcore diagnose --init normal:0.001 --activation relu --depth 6 --width 256 --loss square": (RUN, ""),
    "initcore report --out report": (PARSE, "about a minute of experiments; writes report/"),
    "initcore report --out report-mlp --model mlp --width 256 --depth 6 --activation relu":
        (PARSE, "writes report-mlp/"),
    "initcore compare RESULTS.json [OTHER.json]": (SKIP, "RESULTS.json, OTHER.json are placeholders"),
    "initcore trace --model mynet:build --input-shape 32,64": (SKIP, "mynet is the reader's module"),
    "initcore diagnose --model mynet:build --input-shape 32,64 --init kaiming_normal": (SKIP, "mynet"),
    "initcore report --out report-mynet --model mynet:build --input-shape 32,64": (SKIP, "mynet"),
    "initcore trace --model hfgpt:build --input-shape 4,32 --vocab 512 --init gpt2 --roles gpt2-roles.txt":
        (SKIP, "hfgpt and gpt2-roles.txt are the reader's; tests/cli/test_roles.py runs --roles from a file"),
    # Check your own model: the files the README shows the reader writing
    "pytest test_init_health.py --update-baselines": (SKIP, "test_init_health.py is the reader's file"),
    "pytest test_init_health.py": (SKIP, "test_init_health.py is the reader's file"),
    "initcore trace --model test_init_health:make": (SKIP, "test_init_health.py is the reader's file"),
    "initcore diagnose --model test_init_health:make": (SKIP, "test_init_health.py is the reader's file"),
    # Audit
    "initcore audit --model transformer --init gpt2 --n-layers 2 --d-model 64": (RUN, ""),
    "initcore audit --model mygpt:make --meta": (SKIP, "mygpt is the reader's module; tests/cli/test_audit.py runs it"),
    "initcore audit --model mygpt:make --expect '*.c_proj.weight=normal(0.02/sqrt(2L));*=torch_default'":
        (SKIP, "mygpt is the reader's module; tests/cli/test_audit.py runs --expect on one"),
    # Precision headroom
    "initcore trace --model mlp --depth 4 --width 64 --precision float8_e4m3fn": (RUN, ""),
    "initcore trace --model transformer --init gpt2 --n-layers 2 --d-model 64 --precision float16 --loss-scale 1024":
        (RUN, ""),
    "pytest bench/test_probe_overhead.py --benchmark-only -p no:cacheprovider -k precision":
        (PARSE, "times 160 pairs of traces, minutes"),
    "pytest bench/test_precision_headroom.py --benchmark-skip": (RUN, ""),
    "pytest bench/test_precision_headroom.py --benchmark-skip -m large": (PARSE, "four 12-layer traces, ~30 s"),
    # Sharded init
    "initcore shards --strategy gpt2 --parallel tp --world-size 4": (PARSE, "starts processes"),
    "initcore shards --naive --parallel fsdp --world-size 2": (PARSE, "starts processes"),
    "pytest bench/test_sharded_init.py": (PARSE, "starts processes"),
    "initcore shards --recipe mygpt:fsdp": (SKIP, "mygpt is the reader's; tests/cli/test_shards.py runs recipes"),
    "initcore shards --recipe mygpt:fsdp_naive": (SKIP, "mygpt is the reader's module"),
    "initcore shards --recipe mygpt:fsdp --recipe mygpt:tp --world-size 2": (SKIP, "mygpt is the reader's module"),
    "initcore shards --model mygpt:build --init gpt2 --roles 'h.*.c_proj.weight=attn_out' --placements":
        (SKIP, "mygpt is the reader's module"),
    "initcore shards --model mygpt:build --init mygpt:init_weights": (SKIP, "mygpt is the reader's module"),
    "initcore shards --model mygpt:build --init kaiming_normal --parallel hsdp --world-size 4":
        (SKIP, "mygpt is the reader's module"),
    "initcore coord --model mymodels:make --init mup --roles 'qkv.weight=qkv:q,k,v'":
        (SKIP, "mymodels is the reader's module; tests/cli/test_coord.py runs a user's model"),
    "initcore coord --model mymodels:make": (SKIP, "mymodels is the reader's module"),
    # muP lint
    "initcore mup-lint --model mygpt:make --optimizer mygpt:adamw":
        (PARSE, "mygpt is the reader's module: parsed only; tests/cli/test_mup_lint.py runs a user's module"),
    "initcore mup-lint --model mygpt:make_mup --optimizer mygpt:adamw_mup": (PARSE, "mygpt is the reader's module"),
    # Hyperparameter transfer
    "pytest bench/test_mup_transfer.py -m large": (PARSE, "about 1.5 minutes of training"),
    "initcore report --out transfer --transfer": (PARSE, "about 2 minutes of training; writes transfer/"),
}


def readme_commands(text: str) -> list[str]:
    """The command lines of the fenced ```sh blocks of ``text``: comments and blank lines dropped, a
    trailing ``# comment`` cut, continuation lines (``\\``) joined."""
    commands, block, pending = [], False, ""
    for line in text.splitlines():
        fence = line.strip()
        if fence.startswith("```"):
            block = fence == "```sh" if not block else False
            continue
        if not block:
            continue
        line = pending + line.strip()
        if line.endswith("\\"):
            pending = line[:-1].rstrip() + " "
            continue
        pending = ""
        command = re.sub(r"\s+#(\s.*)?$", "", line).strip()  # a comment after the command ("  # ...")
        if command and not command.startswith("#"):
            commands.append(command)
    return commands


def test_the_extractor_reads_sh_blocks_only():
    text = "\n".join([
        "```sh", "make test    # a comment", "# a whole-line comment", "", "pytest bench \\", "  -k depth", "```",
        "```", "not a command", "```", "```python", "import torch", "```", "```sh", "initcore list", "```",
    ])
    assert readme_commands(text) == ["make test", "pytest bench -k depth", "initcore list"]


def test_every_readme_command_is_classified():
    commands = readme_commands(README.read_text())
    assert commands, "the README has no ```sh block"
    unknown = [c for c in commands if c not in COMMANDS]
    assert not unknown, ("README commands that tests/testing/test_readme_commands.py does not know; add each to "
                         "COMMANDS with how to check it:\n" + "\n".join(unknown))
    stale = [c for c in COMMANDS if c not in commands]
    assert not stale, "COMMANDS lists commands the README no longer has:\n" + "\n".join(stale)


def _environment() -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"  # as `source .venv/bin/activate`
    env.pop("PYTEST_ADDOPTS", None)
    env.pop("PYTEST_XDIST_WORKER", None)
    env.pop("PYTEST_XDIST_WORKER_COUNT", None)
    return env


def _check_parse(command: str) -> subprocess.CompletedProcess | None:
    argv = shlex.split(command)
    if argv[0] == "pytest":
        argv = [*argv, "--collect-only", "-q", "-p", "no:cacheprovider"]
    elif argv[0] == "make":
        argv = ["make", "-n", *argv[1:]]
    elif argv[0] == "initcore":
        from initcore import cli

        cli.build_parser().parse_args(argv[1:])  # argparse exits 2 on a usage error: SystemExit fails the test
        return None
    else:
        raise AssertionError(f"no parse check for {argv[0]!r}: classify {command!r} as RUN or SKIP")
    return subprocess.run(argv, cwd=REPO, env=_environment(), capture_output=True, text=True, timeout=300)


def _cases(how: str) -> list:
    return [pytest.param(command, id=command[:60]) for command, (kind, _) in COMMANDS.items() if kind == how]


@pytest.mark.parametrize("command", _cases(RUN))
def test_cheap_commands_run_as_printed(command):
    done = subprocess.run(["bash", "-c", command], cwd=REPO, env=_environment(), capture_output=True, text=True,
                          timeout=600)
    output = done.stdout + done.stderr
    assert done.returncode == 0, f"{command} exited {done.returncode}:\n{output[-3000:]}"
    assert "Traceback" not in output, output[-3000:]


@pytest.mark.parametrize("command", _cases(PARSE))
def test_slow_commands_parse_and_start(command):
    done = _check_parse(command)
    if done is not None:
        output = done.stdout + done.stderr
        assert done.returncode == 0, f"{command} (checked as {done.args}) exited {done.returncode}:\n{output[-3000:]}"
        assert "Traceback" not in output and "INTERNALERROR" not in output, output[-3000:]


def test_the_activated_venv_runs_its_own_pytest_and_initcore():
    """The issue's trap: with pytest in the base Python, .venv/bin had none, and after activation `pytest`
    was the base one, which cannot import initcore."""
    venv = REPO / ".venv"
    if Path(sys.executable).parent != venv / "bin":
        pytest.skip("not running from the repository's .venv (make test runs from it)")
    done = subprocess.run(["bash", "-c", "source .venv/bin/activate && command -v pytest initcore && "
                           "pytest --version && initcore list >/dev/null"], cwd=REPO, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.splitlines()[:2] == [str(venv / "bin" / "pytest"), str(venv / "bin" / "initcore")]
