"""Every ```python block of the README runs as printed, in an empty folder, with warnings as errors, or is
listed here as a fragment with the reason it cannot run alone (it continues with the reader's own model).

A block whose first line names a file (``# mynet.py``) is a file of the reader's; run, it defines what it
defines (its use is tested where the README runs it: tests/testing/test_user_suite.py, the CLI tests).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from initcore import zoo

README = Path(__file__).resolve().parents[2] / "README.md"

# What a block uses of the reader's (a name it does not define) -> why it cannot run alone.
FRAGMENTS = {
    "precision.trace(model, x": "checks the reader's model and batch",
    "trace_steps(model, Batch(x, y)": "steps the reader's model, batch and loss",
    "build_on_meta_and_shard": "the reader's meta-device build and mesh",
    "my_trainer_recipe": "the reader's trainer recipe and model",
    "TinyGPT(width)": "the reader's TinyGPT, in mymodels.py",
}


def _blocks() -> list[tuple[int, str]]:
    """(line number, code) of every ```python block."""
    text = README.read_text()
    return [(text.count("\n", 0, m.start()) + 2, m.group(1)) for m in re.finditer(r"```python\n(.*?)```", text,
                                                                                 flags=re.S)]


def _fragment(code: str) -> str | None:
    return next((why for used, why in FRAGMENTS.items() if used in code), None)


BLOCKS = _blocks()


def test_every_fragment_listed_is_a_block_of_the_readme():
    for used in FRAGMENTS:
        assert sum(used in code for _, code in BLOCKS) == 1, f"{used!r} is in no README block, or several"
    assert sum(_fragment(code) is None for _, code in BLOCKS) >= 6  # most blocks run whole


@pytest.mark.parametrize(("line", "code"), [b for b in BLOCKS if _fragment(b[1]) is None],
                         ids=[f"README.md:{line}" for line, code in BLOCKS if _fragment(code) is None])
def test_a_readme_python_block_runs_as_printed(line, code, tmp_path):
    if "transformers" in code and zoo.missing() is not None and not os.environ.get("INITCORE_REQUIRE_ZOO"):
        pytest.skip(zoo.missing())  # under INITCORE_REQUIRE_ZOO (CI) it runs, and fails
    (tmp_path / "block.py").write_text(code)
    done = subprocess.run([sys.executable, "-W", "error", "block.py"], cwd=tmp_path, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, f"README.md:{line} fails:\n{done.stderr[-3000:]}"
    left = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if "__pycache__" not in p.parts)
    assert left == ["block.py"], f"README.md:{line} leaves {left} in the reader's folder"
