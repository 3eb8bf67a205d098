"""The README's "Check your own model", run exactly as printed in a repository that is not this one.

The conftest.py and test file are the README's python blocks whose first line names the file; the commands
are its sh block's lines (``pytest ...`` as ``python -m pytest ...``: the same pytest, whichever is on the
PATH; ``initcore ...`` as ``python -m initcore ...``). They pass on the model as printed, and fail with
the table of what moved after a one-line change to the model: a 10% larger init std, or a dropped residual.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

pytest_plugins = ["pytester"]

README = Path(__file__).resolve().parents[2] / "README.md"


def _section() -> str:
    text = README.read_text()
    start = text.index("## Check your own model")
    return text[start:text.index("\n## ", start + 1)]


def _files() -> dict[str, str]:
    blocks = re.findall(r"```python\n(# (\S+\.py)\n.*?)```", _section(), flags=re.S)
    return {name: body for body, name in blocks}


def _commands() -> list[list[str]]:
    block = re.search(r"```sh\n(.*?)```", _section(), flags=re.S).group(1)
    return [shlex.split(line, comments=True) for line in block.splitlines() if line.strip()]


def test_the_readme_shows_a_conftest_a_test_file_and_commands():
    assert set(_files()) == {"conftest.py", "test_init_health.py"}
    assert len(_files()["test_init_health.py"].splitlines()) <= 40
    assert [c[0] for c in _commands()] == ["pytest", "pytest", "initcore", "initcore"]


def _run(command: list[str], cwd: Path) -> subprocess.CompletedProcess:
    program = {"pytest": [sys.executable, "-m", "pytest", "-p", "no:cacheprovider"],
               "initcore": [sys.executable, "-m", "initcore"]}[command[0]]
    return subprocess.run([*program, *command[1:]], cwd=cwd, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def user_repo(tmp_path_factory) -> Path:
    """The README's files in an empty folder, baselines written by the README's first command."""
    repo = tmp_path_factory.mktemp("user_repo")
    for name, body in _files().items():
        (repo / name).write_text(body)
    update = _run(_commands()[0], repo)
    assert update.returncode == 0, update.stdout + update.stderr
    assert (repo / "baselines" / "my_model.csv").exists()
    return repo


def test_every_command_runs_as_printed(user_repo):
    for command in _commands()[1:]:
        done = _run(command, user_repo)
        assert done.returncode == 0, f"{shlex.join(command)}:\n{done.stdout}{done.stderr}"
        assert "Traceback" not in done.stderr
    trace = _run(_commands()[2], user_repo).stdout
    assert "1.fc" in trace and "4.norm" in trace  # a row per module of the user's Sequential


@pytest.mark.parametrize(("change", "old", "new"), [
    ("init std 10% larger", "std=width**-0.5)", "std=1.1 * width**-0.5)"),
    ("residual dropped", "return x + self.fc(", "return self.fc("),
])
def test_a_one_line_change_fails_with_the_table_of_what_moved(user_repo, tmp_path, change, old, new):
    changed = tmp_path / "repo"
    changed.mkdir()
    for name, body in _files().items():
        assert name != "test_init_health.py" or body.count(old) == 1, change
        (changed / name).write_text(body.replace(old, new))
    (changed / "baselines").mkdir()
    (changed / "baselines" / "my_model.csv").write_bytes((user_repo / "baselines" / "my_model.csv").read_bytes())
    done = _run(_commands()[1], changed)
    assert done.returncode == 1, done.stdout + done.stderr
    # at seed 0 the exact check sees it first (same parameters, other numbers), else the bands: a table either way
    assert re.search(r"my_model .*: \d+ of \d+ statistics (moved from their baseline|differ from their seed-0 "
                     r"values)", done.stdout), done.stdout
    assert re.search(r"1 failed, 1 passed", done.stdout), done.stdout  # still healthy: only the baseline moved


def test_the_repository_holds_only_what_the_readme_says_to_commit(user_repo):
    """After the update (the fixture) and every command as printed: the README's two files and the baseline
    file it says to commit, nothing else (no lock file beside the baselines, no .benchmarks/). Python's own
    ``__pycache__`` is left out: every interpreter writes it, and every Python .gitignore ignores it;
    pytest's cache is off in these runs (``-p no:cacheprovider``), and ignores itself where it is on."""
    for command in _commands()[1:]:
        assert _run(command, user_repo).returncode == 0
    left = sorted(str(p.relative_to(user_repo)) for p in user_repo.rglob("*")
                  if p.is_file() and "__pycache__" not in p.parts)
    assert left == ["baselines/my_model.csv", "conftest.py", "test_init_health.py"], left
