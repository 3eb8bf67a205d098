"""initcore.cli._memory: parameter counts are the models' own, the search finds the edge of what fits, and a
traced pass's measured peak stays under the estimate."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from initcore.cli import _memory
from initcore.models import MLP, TorchMHATransformer, Transformer

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("in_features, width, depth", [(3, 5, 1), (7, 16, 4), (512, 512, 10)])
def test_mlp_parameters_are_the_models(in_features, width, depth):
    model = MLP(in_features, width, depth)
    assert _memory.mlp_parameters(in_features, width, depth) == sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("cls", [Transformer, TorchMHATransformer])
@pytest.mark.parametrize("norm, ffn", [("layernorm", "relu"), ("rmsnorm", "gelu"), ("layernorm", "swiglu")])
def test_transformer_parameters_are_the_models(cls, norm, ffn):
    model = cls(50, 16, 2, 24, 3, norm, "pre", ffn)
    counted = _memory.transformer_parameters(50, 16, 24, 3, norm=norm, ffn=ffn)
    assert counted == sum(p.numel() for p in model.parameters())


def test_largest_fitting_is_the_edge():
    def estimate(v):
        return _memory.Estimate(0, 0, 3 * v * v)

    best = _memory.largest_fitting(estimate, 10**9, 10**6)
    assert 3 * best**2 <= 10**6 < 3 * (best + 1) ** 2
    assert _memory.largest_fitting(estimate, 10, 2) is None  # not even 1 fits


def test_sizes_read_as_short_figures():
    assert [_memory.size(n) for n in (512, 3_100_000, 80 * 10**9, 4 * 10**18)] == ["512 B", "3.1 MB", "80 GB",
                                                                                    "4e+09 GB"]


def test_available_memory_is_read():
    available = _memory.available_bytes()
    if not Path("/proc/meminfo").exists() and not hasattr(os, "sysconf"):
        pytest.skip("no /proc/meminfo and no sysconf here")
    assert isinstance(available, int) and 0 < available


# A fresh interpreter runs each case after giving freed memory back (malloc_trim) and resetting the peak
# (/proc/self/clear_refs, "5"): the peak a case adds is VmHWM after it less VmRSS before it. One process for
# all cases, since starting one costs more than the cases.
_PEAKS = """
import contextlib, ctypes, io, sys, torch
from initcore import cli
torch.set_num_threads(1)
libc = ctypes.CDLL("libc.so.6")

def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1]) * 1024

for argv in sys.argv[1:]:
    args = cli.build_parser().parse_args(argv.split())
    libc.malloc_trim(0)
    base = status("VmRSS:")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    with contextlib.redirect_stdout(io.StringIO()):
        assert args._run(args) == 0
    print(status("VmHWM:") - base)
"""

# GELU keeps its input and its output per layer, the tightest case (peak 358 MB against 436 estimated); a
# transformer's is the probe's recomputed (seq, seq) logits, ~5.3 of them at once (178 MB against 218).
CASES = {
    "trace --width 64 --depth 4 --batch 131072 --activation gelu": _memory.mlp_estimate(64, 64, 4, 131072),
    "trace --model transformer --seq-len 512 --batch 8 --n-layers 2 --d-model 32 --d-ff 64":
        _memory.transformer_estimate(1000, 32, 4, 64, 2, 8, 512),
}


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux's /proc/self/clear_refs")
def test_a_traced_pass_peaks_under_its_estimate():
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    done = subprocess.run([sys.executable, "-c", _PEAKS, *CASES], env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    peaks = [int(line) for line in done.stdout.split()]
    for (case, estimate), peak in zip(CASES.items(), peaks, strict=True):
        assert peak <= estimate.total, f"{case}: peak {_memory.size(peak)} over the estimate, {estimate.describe()}"
