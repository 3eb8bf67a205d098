"""timing: FLOP counts against hand-computed numbers and torch's FlopCounterMode, the synchronizing timer,
the benchmark plugin's machine_info, and the timing suite end to end. No assertion here is on a measured time."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from initcore import timing
from initcore.experiments import NOTEBOOK_TRANSFORMER, MLPRun, TransformerRun
from initcore.models import MLP, MLPConfig, Transformer, TransformerConfig
from initcore.testing import benchmarking
from initcore.timing import (
    TIMING_CASES,
    PassFlops,
    Timer,
    attention_flops,
    linear_flops,
    mlp_flops,
    run_flops,
    time_pass,
    transformer_flops,
)

ROOT = Path(__file__).resolve().parents[1]

# --- FLOP counts -----------------------------------------------------------------------------------


def test_linear_flops_by_hand():
    # 5 rows, 3 -> 4: matmul 2*5*3*4 = 120, bias 5*4 = 20.
    assert linear_flops(5, 3, 4) == PassFlops(forward=140, backward=120 + 120 + 20)
    assert linear_flops(5, 3, 4, bias=False) == PassFlops(120, 240)
    assert linear_flops(5, 3, 4, input_grad=False) == PassFlops(140, 140)  # weight and bias gradients only


def test_attention_flops_by_hand():
    # B=2, T=5, d=8: Q K^T and A V, 2*2*25*8 = 800 each; backward two gradients per matmul.
    assert attention_flops(2, 5, 8) == PassFlops(1600, 3200)


def test_mlp_flops_by_hand():
    # batch 5, 3 -> 4 -> 4 with biases. Layer 0: 120+20 forward, no input gradient: 120+20 backward.
    # Layer 1: 160+20 forward, 160+160+20 backward.
    assert mlp_flops(MLPConfig(in_features=3, width=4, depth=2), batch=5) == PassFlops(320, 480)


def test_transformer_flops_by_hand():
    # B=2, T=5 (N=10 rows), d=8, d_ff=16, 3 blocks, biases, relu feed-forward. Per block:
    #   q, k, v, o: 4 * (2*10*8*8 + 10*8) = 5440 forward, 4 * (2*1280 + 80) = 10560 backward
    #   attention: 1600 / 3200 (test above)
    #   fc1: 2*10*8*16 + 160 = 2720 / 5280;  fc2: 2560 + 80 = 2640 / 5200
    cfg = TransformerConfig(vocab_size=50, d_model=8, n_heads=2, d_ff=16, n_layers=3)
    assert transformer_flops(cfg, batch=2, seq=5) == PassFlops(3 * 12400, 3 * 24240)
    # SwiGLU: three bias-free d<->d_ff projections, 3 * 2560 = 7680 forward, twice that backward.
    assert transformer_flops(replace(cfg, ffn="swiglu"), 2, 5) == PassFlops(3 * 14720, 3 * 29120)


def _counted(model: torch.nn.Module, x: torch.Tensor) -> PassFlops:
    with FlopCounterMode(display=False) as fwd:
        y = model(x)
    with FlopCounterMode(display=False) as bwd:
        y.square().mean().backward()
    return PassFlops(fwd.get_total_flops(), bwd.get_total_flops())


def test_mlp_flops_match_torch_flop_counter():
    # FlopCounterMode counts matmuls only, so compare without biases.
    model = MLP(16, 32, 3, bias=False)
    assert mlp_flops(model.config, batch=5) == _counted(model, torch.randn(5, 16))


@pytest.mark.parametrize("attention", ["sdpa", "torch_mha"])
@pytest.mark.parametrize("ffn", ["relu", "swiglu"])
def test_transformer_flops_match_torch_flop_counter(ffn, attention):
    # FlopCounterMode has no formula for the CPU attention kernel, so it counts the projections and the
    # feed-forward; attention_flops is checked against explicit matmuls below.
    model = Transformer(50, 16, 2, 32, 2, bias=False, ffn=ffn, attention=attention)
    counted = _counted(model, torch.randint(0, 50, (3, 7)))
    ours = transformer_flops(model.config, batch=3, seq=7)
    assert ours == counted + attention_flops(3, 7, 16) * 2


def test_attention_flops_match_explicit_matmuls():
    B, H, T, dh = 2, 4, 6, 8
    q, k, v = (torch.randn(B, H, T, dh, requires_grad=True) for _ in range(3))
    with FlopCounterMode(display=False) as fwd:
        y = torch.softmax(q @ k.transpose(-2, -1), -1) @ v
    with FlopCounterMode(display=False) as bwd:
        y.sum().backward()
    assert attention_flops(B, T, H * dh) == PassFlops(fwd.get_total_flops(), bwd.get_total_flops())


def test_run_flops_asks_the_run():
    mlp = MLPRun(MLPConfig(3, 4, 2), "xavier_uniform", batch=5)
    assert run_flops(mlp) == PassFlops(320, 480)
    tf = TransformerRun(TransformerConfig(50, 8, 2, 16, 3), "standard", batch=2, seq_len=5)
    assert run_flops(tf) == PassFlops(37200, 72720)
    with pytest.raises(TypeError, match=r"a run that counts its FLOPs \(MLPRun, TransformerRun\), got MLPConfig"):
        run_flops(MLPConfig())


def test_pass_flops_of():
    f = PassFlops(3, 7)
    assert (f.of("forward"), f.of("backward")) == (3, 7)
    with pytest.raises(ValueError, match="valid: forward, backward"):
        f.of("both")


# --- the timer -------------------------------------------------------------------------------------


@pytest.fixture
def events(monkeypatch) -> list:
    """Every torch.cuda.synchronize call (recorded, not run: no GPU needed) and clock read, in order."""
    log: list = []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: log.append(("sync", str(device))))
    return log


def _clock(log: list, ticks: list[float]):
    def clock() -> float:
        log.append("clock")
        return ticks.pop(0)

    return clock


def test_timer_synchronizes_cuda_before_each_clock_read(events):
    with Timer("cuda", clock=_clock(events, [10.0, 12.5])) as t:
        events.append("work")
    assert events == [("sync", "cuda"), "clock", "work", ("sync", "cuda"), "clock"]
    assert t.elapsed == 2.5


def test_timer_on_cpu_never_synchronizes_cuda(events):
    with Timer("cpu", clock=_clock(events, [1.0, 1.25])) as t:
        events.append("work")
    assert events == ["clock", "work", "clock"]
    assert t.elapsed == 0.25


def test_synchronize_passes_the_device(events):
    timing.synchronize("cuda:1")
    timing.synchronize(torch.device("cpu"))
    assert events == [("sync", "cuda:1")]


def test_time_pass_runs_setup_outside_the_clock_and_drops_warmup(events):
    now = [0.0]
    calls = {"setup": 0, "fn": 0}

    def setup():
        calls["setup"] += 1
        now[0] += 100.0  # a slow setup; it must not show in the times
        return (calls["setup"],)

    def fn(i):
        calls["fn"] += 1
        now[0] += i  # round i takes i seconds

    times = time_pass(fn, "cuda", rounds=3, warmup=2, setup=setup, clock=lambda: now[0])
    assert calls == {"setup": 5, "fn": 5}
    assert times == [3.0, 4.0, 5.0]  # rounds 1 and 2 were warm-up
    assert len(events) == 2 * 5  # a sync at each start and stop


def test_time_pass_rejects_bad_rounds():
    with pytest.raises(ValueError, match="rounds must be >= 1"):
        time_pass(lambda: None, rounds=0)


def test_matmul_rate_uses_the_fastest_rep(monkeypatch):
    seen = {}

    def fake_time_pass(fn, device, *, rounds, warmup):
        seen.update(device=device, rounds=rounds, warmup=warmup)
        fn()
        return [0.5, 0.25, 1.0]

    monkeypatch.setattr(timing, "time_pass", fake_time_pass)
    assert timing.matmul_rate("cpu", n=64, reps=3) == pytest.approx(2 * 64**3 / 0.25 / 1e9)
    assert seen == {"device": torch.device("cpu"), "rounds": 3, "warmup": 2}


def test_device_name(monkeypatch):
    assert isinstance(timing.device_name("cpu"), str) and timing.device_name("cpu")
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: f"Fake GPU {device}")
    assert timing.device_name("cuda:0") == "Fake GPU cuda:0"


# --- the timing cases ------------------------------------------------------------------------------


def test_timing_cases_build_on_the_cpu_from_the_generator():
    case = TIMING_CASES[0]
    (m1, x1), (m2, x2) = (case.build(torch.Generator().manual_seed(3), "cpu") for _ in range(2))
    torch.testing.assert_close(x1, x2, rtol=0, atol=0)
    for p1, p2 in zip(m1.parameters(), m2.parameters(), strict=True):
        torch.testing.assert_close(p1, p2, rtol=0, atol=0)
    m3, _ = case.build(torch.Generator().manual_seed(4), "cpu")
    assert not torch.equal(next(m1.parameters()), next(m3.parameters()))
    m64, x64 = case.build(torch.Generator().manual_seed(3), "cpu", torch.float64)
    assert next(m64.parameters()).dtype == x64.dtype == torch.float64


def test_timing_cases_are_named_once_and_the_default_run_stays_short():
    names = [c.name for c in TIMING_CASES]
    assert len(set(names)) == len(names)
    # The default run times forward + backward for (warmup + rounds) rounds; at the ~10 GFLOP/s a busy
    # 2-core CPU reaches on these sizes, 150 GFLOP is ~15 s of timed work.
    work = sum((c.flops.forward + c.flops.backward) * (c.rounds + c.warmup) for c in TIMING_CASES if not c.large)
    assert work < 150e9
    large = [c for c in TIMING_CASES if c.large]
    assert [c.run.model for c in large] == [NOTEBOOK_TRANSFORMER]  # the notebook's 12 blocks, behind -m large
    assert (large[0].run.batch, large[0].run.seq_len) == (32, 128)


# --- the benchmark plugin ---------------------------------------------------------------------------


def test_machine_info_gains_gpu_and_versions(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    info = {"node": "x"}
    benchmarking.pytest_benchmark_update_machine_info(config=None, machine_info=info)
    assert info["gpu"] == "none"
    assert info["torch_version"] == torch.__version__
    assert info["cuda_version"] == (torch.version.cuda or "none")
    assert info["node"] == "x"

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Fake GPU")
    benchmarking.pytest_benchmark_update_machine_info(config=None, machine_info=info)
    assert info["gpu"] == "Fake GPU"


def _pytest(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)


def test_benchmark_skip_skips_every_timing_case():
    proc = _pytest("bench/test_timing.py", "--benchmark-skip", "-q", "-rs")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    n = 2 * len([c for c in TIMING_CASES if not c.large]) * 2  # 2 passes x 2 devices
    assert f"{n} skipped" in proc.stdout
    assert "passed" not in proc.stdout


def test_timing_suite_end_to_end(tmp_path):
    """One small case on the CPU: names, groups, extra_info and machine_info as compare reads them."""
    out = tmp_path / "t.json"
    proc = _pytest("bench/test_timing.py", "--benchmark-only", f"--benchmark-json={out}", "-q",
                   "-k", "mlp-w256-d4", "--device", "cpu")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    data = json.loads(out.read_text())
    assert data["machine_info"]["torch_version"] == torch.__version__
    assert "gpu" in data["machine_info"]
    by_name = {b["name"]: b for b in data["benchmarks"]}
    assert set(by_name) == {"test_forward[mlp-w256-d4-cpu]", "test_backward[mlp-w256-d4-cpu]"}
    fwd, bwd = by_name["test_forward[mlp-w256-d4-cpu]"], by_name["test_backward[mlp-w256-d4-cpu]"]
    assert (fwd["group"], bwd["group"]) == ("forward mlp-w256-d4", "backward mlp-w256-d4")
    assert fwd["params"] == {"case": "mlp-w256-d4", "device": "cpu"}
    flops = TIMING_CASES[0].flops
    for bench, pass_ in ((fwd, "forward"), (bwd, "backward")):
        info = bench["extra_info"]
        assert info["flops"] == flops.of(pass_)
        assert (info["pass"], info["device_type"], info["dtype"]) == (pass_, "cpu", "float32")
        assert info["threads"] == torch.get_num_threads()
        assert math.isclose(info["gflops"], info["flops"] / bench["stats"]["median"] / 1e9)
        assert info["matmul_gflops"] > 0
        assert bench["stats"]["rounds"] == TIMING_CASES[0].rounds
