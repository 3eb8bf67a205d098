"""Will a model of these sizes fit? Bytes of weights, gradients and activations estimated from the options,
and the memory available, read before anything is allocated.

The estimate is arithmetic on Python ints (no tensor is made, and no size overflows), for float32:
weights and their gradients exactly (the parameter count of the model the options build, checked against
``sum(p.numel())`` in the tests), activations as what autograd keeps for the backward pass plus the
probe's transient copies, fitted to peaks measured on a CPU and rounded up (see each estimate).
A size refused here would have ended in an allocation traceback or a killed process; one that passes may
still be slow, which is the user's to choose.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

FLOAT = 4  # bytes of a float32


@dataclass(frozen=True)
class Estimate:
    """Bytes one traced forward and backward pass needs."""

    weights: int
    gradients: int
    activations: int

    @property
    def total(self) -> int:
        return self.weights + self.gradients + self.activations

    def describe(self) -> str:
        return (f"about {size(self.total)} (weights {size(self.weights)}, their gradients {size(self.gradients)}, "
                f"activations {size(self.activations)})")


def size(n: int) -> str:
    """Bytes as a short figure: 512 B, 3.1 MB, 80 GB, 4e+09 GB."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.3g} {unit}"
    return f"{n} B"


def mlp_parameters(in_features: int, width: int, depth: int) -> int:
    """Parameters of ``initcore.models.MLP``: ``depth`` Linear layers with bias, the first from ``in_features``."""
    return in_features * width + width + (depth - 1) * (width * width + width)


def mlp_estimate(in_features: int, width: int, depth: int, batch: int) -> Estimate:
    """Per layer autograd keeps at most two (batch, width) tensors (the Linear's output where the activation
    needs its input, as GELU does, and the activation's output, the next Linear's input); the backward's
    gradients and the probe's reductions hold about four more at a time. Measured peaks: 5.0 GB against
    5.6 estimated (gelu, 2048 wide, 8 deep, batch 32768); tanh keeps one per layer and stays further below."""
    params = mlp_parameters(in_features, width, depth)
    activations = FLOAT * batch * (in_features + 2 * width * depth + 4 * max(in_features, width))
    return Estimate(FLOAT * params, FLOAT * params, activations)


def transformer_parameters(vocab_size: int, d_model: int, d_ff: int, n_layers: int, *, norm: str = "layernorm",
                           ffn: str = "relu", bias: bool = True) -> int:
    """Parameters of ``initcore.models.Transformer`` (either attention: the packed in_proj holds as many)."""
    d = d_model
    norm_params = 2 * d if norm == "layernorm" else d
    attention = 4 * d * d + (4 * d if bias else 0)
    feed_forward = 3 * d * d_ff if ffn == "swiglu" else 2 * d * d_ff + ((d_ff + d) if bias else 0)
    return vocab_size * d + n_layers * (attention + feed_forward + 2 * norm_params) + norm_params


def transformer_estimate(vocab_size: int, d_model: int, n_heads: int, d_ff: int, n_layers: int, batch: int,
                         seq_len: int, *, norm: str = "layernorm", ffn: str = "relu") -> Estimate:
    """Per block autograd keeps what amounts to ~10 (tokens, d_model) tensors and 2 (tokens, d_ff) ones (4
    for SwiGLU); fused attention (scaled_dot_product_attention) keeps no (seq, seq) tensor, but the probe
    recomputes the logits (batch, heads, seq, seq) and reduces them, up to ~5.3 of that size at once
    (measured), six counted. Measured peaks sit 1.2-1.4x below: 1.06 GB against 1.44 estimated (8 blocks,
    d_model 128, seq 1024, batch 8), 178 MB against 218 (2 blocks, d_model 32, seq 512, batch 8), 3.67 GB
    against 5.22 (8 blocks, d_model 256, seq 64, batch 512)."""
    params = transformer_parameters(vocab_size, d_model, d_ff, n_layers, norm=norm, ffn=ffn)
    tokens = batch * seq_len
    scores = batch * n_heads * seq_len * seq_len
    hidden = 4 if ffn == "swiglu" else 2
    activations = FLOAT * (n_layers * tokens * (10 * d_model + hidden * d_ff) + 6 * scores + 4 * tokens * d_model)
    return Estimate(FLOAT * params, FLOAT * params, activations)


def available_bytes() -> int | None:
    """Memory this process may still take: MemAvailable of /proc/meminfo, lowered to a cgroup's limit
    less its usage where one is set (containers); ``os.sysconf`` where there is no /proc; None if unknown."""
    found = []
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                found.append(int(line.split()[1]) * 1024)
                break
    except (OSError, ValueError, IndexError):
        pass
    if not found:
        try:
            found.append(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
        except (ValueError, OSError, AttributeError):
            pass
    for limit_file, usage_file in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                                   ("/sys/fs/cgroup/memory/memory.limit_in_bytes",
                                    "/sys/fs/cgroup/memory/memory.usage_in_bytes")):
        try:
            limit, usage = Path(limit_file).read_text().strip(), Path(usage_file).read_text().strip()
        except OSError:
            continue
        if limit.isdigit() and usage.isdigit() and int(limit) < 2**60:  # "max" or a huge number: no limit
            found.append(max(int(limit) - int(usage), 0))
        break
    return min(found) if found else None


def largest_fitting(estimate: Callable[[int], Estimate], current: int, available: int) -> int | None:
    """The largest value in [1, current) whose estimate fits in ``available``, for an estimate that grows
    with the value; None when not even 1 fits."""
    if estimate(1).total > available:
        return None
    lo, hi = 1, current  # estimate(lo) fits, estimate(hi) does not
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if estimate(mid).total <= available else (lo, mid)
    return lo


def check_fits(what: str, sizes: Mapping[str, int], estimate: Callable[..., Estimate], blame: list[str],
               available: int | None, where: str = "memory", multiples: Mapping[str, int] | None = None) -> None:
    """Raise ValueError (one line) unless ``estimate(**sizes)`` fits in ``available`` bytes.

    ``sizes`` maps each option (``--width``) to its value, in the keyword ``estimate`` takes (``width``);
    the message names the options in ``blame`` and, for each, the largest value that would fit with the
    others as given (a multiple of ``multiples[option]`` where one is set: ``--d-model`` of ``--n-heads``).
    Nothing is checked when ``available`` is None (memory unknown).
    """
    multiples = multiples or {}
    if available is None:
        return
    kwargs = {option.lstrip("-").replace("-", "_"): value for option, value in sizes.items()}
    need = estimate(**kwargs)
    if need.total <= available:
        return
    valid = []
    for option in blame:
        key = option.lstrip("-").replace("-", "_")
        step = multiples.get(option, 1)
        best = largest_fitting(lambda v, key=key, step=step: estimate(**{**kwargs, key: v * step}),
                               -(-kwargs[key] // step), available)
        if best is not None:
            valid.append(f"{option} <= {best * step}")
    given = " ".join(f"{option} {sizes[option]}" for option in blame)
    fix = ("valid with the other options as they are: " + " or ".join(valid)) if valid else \
        "no value of " + ", ".join(blame) + " fits with the other options as they are"
    raise ValueError(f"{given}: {what} would need {need.describe()}, more than the {size(available)} of "
                     f"{where} available; {fix}")
