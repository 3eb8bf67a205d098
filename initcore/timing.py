"""FLOP counts of a forward and a backward pass, and a timer that waits for the device.

What is counted: the matrix multiplications, which hold nearly all the arithmetic of these models.
A multiply-add is 2 FLOPs, so ``(N, in) @ (in, out)`` is ``2*N*in*out``; a Linear's bias adds ``N*out``
forward and its gradient (a sum over rows) ``N*out`` backward. Backward computes the weight gradient
(``2*N*in*out``) and the input gradient (``2*N*in*out``), so it is about twice the forward; the input
gradient of a layer fed by a tensor that needs no gradient (an MLP's first layer) is not computed and
not counted. Attention adds ``Q @ K^T`` and ``A @ V`` per block, ``2*B*T*T*d_model`` each forward and
twice that backward; the full T x T is counted even when the mask is causal.

What is ignored: norms, softmax, activations and SwiGLU's product, attention scaling and masks,
residual adds, dropout, the embedding gather (and its scatter-add backward) and the loss. For the
models timed here these are under a few percent of the matmul FLOPs.

The timing cases (which models ``bench/test_timing.py`` times, at which sizes) are built from
``initcore.experiments`` run types, so each model and its inputs are drawn on the CPU from a generator.
"""

from __future__ import annotations

import platform
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import torch

from initcore.experiments import DEPTH_MLP, NOTEBOOK_TRANSFORMER, TRANSFORMER_RUNS_FULL, MLPRun, TransformerRun
from initcore.models import MLPConfig, TransformerConfig

PASSES = ("forward", "backward")


@dataclass(frozen=True)
class PassFlops:
    """FLOPs of one forward and one backward pass; ``+`` adds the counts."""

    forward: int
    backward: int

    def __add__(self, other: PassFlops) -> PassFlops:
        return PassFlops(self.forward + other.forward, self.backward + other.backward)

    def __mul__(self, k: int) -> PassFlops:
        return PassFlops(self.forward * k, self.backward * k)

    def of(self, pass_: str) -> int:
        """The count of ``pass_`` ("forward" or "backward")."""
        if pass_ not in PASSES:
            raise ValueError(f"unknown pass {pass_!r}; valid: {', '.join(PASSES)}")
        return getattr(self, pass_)


def linear_flops(rows: int, in_features: int, out_features: int, bias: bool = True,
                 input_grad: bool = True) -> PassFlops:
    """A Linear applied to ``rows`` vectors: ``2*rows*in*out`` (+ ``rows*out`` for the bias) forward.

    Backward: weight gradient ``2*rows*in*out``, input gradient the same (only if ``input_grad``),
    bias gradient ``rows*out``.

    >>> linear_flops(64, 256, 256)
    PassFlops(forward=8404992, backward=16793600)
    """
    mm = 2 * rows * in_features * out_features
    b = rows * out_features if bias else 0
    return PassFlops(mm + b, mm * (2 if input_grad else 1) + b)


def attention_flops(batch: int, seq: int, d_model: int) -> PassFlops:
    """``Q @ K^T`` and ``A @ V`` over all heads: ``2*B*T*T*d_model`` each; backward twice the forward."""
    fwd = 2 * (2 * batch * seq * seq * d_model)
    return PassFlops(fwd, 2 * fwd)


def mlp_flops(cfg: MLPConfig, batch: int) -> PassFlops:
    """An ``MLP`` on a (batch, in_features) input that needs no gradient (so layer 0 has no input gradient)."""
    total = PassFlops(0, 0)
    for i in range(cfg.depth):
        total += linear_flops(batch, cfg.in_features if i == 0 else cfg.width, cfg.width, cfg.bias,
                              input_grad=i > 0)
    return total


def transformer_flops(cfg: TransformerConfig, batch: int, seq: int) -> PassFlops:
    """A ``Transformer`` stack on (batch, seq) token ids: per block 4 projections, attention, feed-forward.

    The embedding output needs a gradient (the table is a parameter), so every block computes input gradients.
    """
    n, d, f = batch * seq, cfg.d_model, cfg.d_ff
    block = PassFlops(0, 0)
    for _ in range(4):  # q, k, v, o (a packed in_proj costs the same as three projections)
        block += linear_flops(n, d, d, cfg.bias)
    block += attention_flops(batch, seq, d)
    if cfg.ffn == "swiglu":  # gate and up d->f, down f->d, never a bias
        block += linear_flops(n, d, f, False) + linear_flops(n, d, f, False) + linear_flops(n, f, d, False)
    else:
        block += linear_flops(n, d, f, cfg.bias) + linear_flops(n, f, d, cfg.bias)
    return block * cfg.n_layers


def run_flops(run: MLPRun | TransformerRun) -> PassFlops:
    """FLOPs of one pass of an experiment run (``initcore.experiments``): the run's own ``flops()``."""
    flops = getattr(run, "flops", None)
    if not callable(flops):
        raise TypeError(f"run_flops takes a run that counts its FLOPs (MLPRun, TransformerRun), "
                        f"got {type(run).__name__}")
    return flops()


# --- timing --------------------------------------------------------------------------------------


def synchronize(device: str | torch.device) -> None:
    """Wait for the work queued on ``device``: ``torch.cuda.synchronize`` on CUDA, nothing on the CPU.

    A CUDA kernel launch returns before the kernel runs; reading a clock without this times the launch.
    """
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Timer:
    """Context manager: wall-clock seconds of its block, synchronizing the device on entry and exit.

    >>> with Timer("cpu") as t:
    ...     _ = torch.ones(8) * 2
    >>> t.elapsed >= 0
    True
    """

    def __init__(self, device: str | torch.device = "cpu", clock: Callable[[], float] = time.perf_counter) -> None:
        self.device = torch.device(device)
        self.clock = clock
        self.elapsed: float | None = None

    def __enter__(self) -> Timer:
        synchronize(self.device)  # work queued before the block is not the block's
        self._start = self.clock()
        return self

    def __exit__(self, *exc) -> None:
        synchronize(self.device)
        self.elapsed = self.clock() - self._start


def time_pass(fn: Callable[..., object], device: str | torch.device = "cpu", *, rounds: int = 10, warmup: int = 2,
              setup: Callable[[], Sequence[object]] | None = None,
              clock: Callable[[], float] = time.perf_counter) -> list[float]:
    """Seconds of ``fn(*setup())`` per round, after ``warmup`` untimed rounds; ``setup`` runs outside the timer.

    Example: the backward pass alone, a fresh graph each round::

        time_pass(lambda loss: loss.backward(), "cuda", setup=lambda: (model(x).square().mean(),))
    """
    if rounds < 1 or warmup < 0:
        raise ValueError(f"rounds must be >= 1 and warmup >= 0, got rounds={rounds}, warmup={warmup}")
    times = []
    for i in range(warmup + rounds):
        args = setup() if setup is not None else ()
        with Timer(device, clock) as t:
            fn(*args)
        if i >= warmup:
            times.append(t.elapsed)
    return times


def gflops(flops: int, seconds: float) -> float:
    """Achieved GFLOP/s."""
    return flops / seconds / 1e9


def device_name(device: str | torch.device) -> str:
    """A readable name: the GPU's (``torch.cuda.get_device_name``) or the CPU model."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    if device.type == "cpu":
        try:
            with open("/proc/cpuinfo") as fh:
                for line in fh:
                    if line.startswith("model name"):
                        return line.split(":", 1)[1].strip()
        except OSError:
            pass
        return platform.processor() or platform.machine() or "cpu"
    return str(device)


def matmul_rate(device: str | torch.device, n: int | None = None, dtype: torch.dtype = torch.float32,
                reps: int = 5, warmup: int = 2) -> float:
    """The device's achieved GFLOP/s on an n x n matmul (``2*n**3`` FLOPs), from the fastest of ``reps``.

    ``n`` defaults to 1024 on the CPU (a few tens of ms per product) and 4096 on a GPU (smaller products
    do not fill it). The fastest rep stands for what the device can do; models are compared against it.
    """
    device = torch.device(device)
    if n is None:
        n = 1024 if device.type == "cpu" else 4096
    g = torch.Generator().manual_seed(0)
    a = torch.randn(n, n, generator=g).to(device=device, dtype=dtype)
    b = torch.randn(n, n, generator=g).to(device=device, dtype=dtype)
    times = time_pass(lambda: a @ b, device, rounds=reps, warmup=warmup)
    return gflops(2 * n**3, min(times))


# --- what bench/test_timing.py times --------------------------------------------------------------


@dataclass(frozen=True)
class TimingCase:
    """One model, size and input shape to time; ``name`` is its id in test names and benchmark groups."""

    name: str
    run: MLPRun | TransformerRun
    rounds: int = 10  # timed rounds per pass
    warmup: int = 2  # untimed rounds first (CUDA: kernel selection, allocator, clocks)
    large: bool = False  # behind ``-m large``

    @property
    def flops(self) -> PassFlops:
        return run_flops(self.run)

    def build(self, generator: torch.Generator, device: str | torch.device,
              dtype: torch.dtype = torch.float32) -> tuple[torch.nn.Module, torch.Tensor]:
        """Model and input drawn on the CPU from ``generator``, then moved to ``device`` (and ``dtype``)."""
        model, x = self.run.build(generator)
        model = model.to(device=device, dtype=dtype)
        x = x.to(device=device, dtype=dtype if x.is_floating_point() else x.dtype)
        return model, x


def _mlp_case(width: int, depth: int, rounds: int) -> TimingCase:
    run = MLPRun(replace(DEPTH_MLP, in_features=width, width=width, depth=depth), "xavier_uniform", batch=64)
    return TimingCase(f"mlp-w{width}-d{depth}", run, rounds=rounds)


_SMALL_TRANSFORMER = replace(NOTEBOOK_TRANSFORMER, d_model=128, n_heads=4, d_ff=512, n_layers=4)

TIMING_CASES: tuple[TimingCase, ...] = (
    _mlp_case(256, 4, rounds=20),
    _mlp_case(256, 16, rounds=20),
    _mlp_case(1024, 4, rounds=15),
    _mlp_case(1024, 16, rounds=10),
    TimingCase("transformer-d128-l4-t64", TransformerRun(_SMALL_TRANSFORMER, "standard", batch=8, seq_len=64),
               rounds=10),
    # The notebook's 12 blocks, d_model 512, 8 heads, d_ff 2048 at batch 32 x seq 128: ~0.32 TFLOP forward,
    # seconds per pass on a laptop CPU, so few rounds.
    TimingCase("transformer-d512-l12-t128", TRANSFORMER_RUNS_FULL["standard"], rounds=3, warmup=1, large=True),
)
