"""``pytest bench -n 2 --update-baselines`` loses no entry and writes the same files as a serial run.

The failure-mode baselines (four configurations, one file), regenerated into two scratch directories
(``--baselines-dir``), serially and with two pytest-xdist workers racing on the file (``baselines.update``
holds a flock around read-merge-write and renames atomically). The files must be byte for byte the same,
and hold every configuration. One module only: the cost is the processes' start, torch and pandas
imported three times.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from initcore import baselines, experiments

REPO = Path(__file__).resolve().parents[2]
MODULES = ("bench/test_failure_modes.py",)
FILES = {"failure_modes.csv": experiments.FAILURE_RUNS}


def update(directory: Path, *args: str) -> None:
    cmd = [sys.executable, "-m", "pytest", *MODULES, "-k", "test_matches_baseline", "--update-baselines",
           f"--baselines-dir={directory}", "--device=cpu", "--benchmark-skip", "-p", "no:cacheprovider", "-q", *args]
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]


def test_parallel_update_writes_what_a_serial_one_writes(tmp_path):
    pytest.importorskip("xdist")
    serial, parallel = tmp_path / "serial", tmp_path / "parallel"
    update(serial)
    update(parallel, "-n", "2")
    for name, runs in FILES.items():
        assert (serial / name).read_bytes() == (parallel / name).read_bytes(), name
        stored = set(baselines.load(parallel / name)["config"])
        assert stored == {run.key for run in runs.values()}, name
