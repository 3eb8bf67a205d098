"""Reducing tensors inside hooks to a few raw numbers, and decoding them into statistics after the pass.

Each hook reduces what it sees at once to raw numbers (sums, extremes, counts) and puts them in the
pass's sink; after the pass a decoder per hook turns them into statistics on the host. Two sinks: on a
CUDA (or any non-CPU) device the reductions are torch ops whose results stay there until the one copy at
the end (each ``.item()`` would be a device sync). On a CPU there is nothing to sync, and what costs is
the fixed few microseconds of every torch op, whatever its size, and comparisons most; there numpy
reduces the tensors' own memory to floats directly (on 32k floats: dot 2.3 us against torch's 4.5, a
count of zeros 4 us against count_nonzero's 18).

Exactness: sums of squares over more than ``EXACT_FROM`` entries are float32 partial sums of ``CHUNK``
entries (``HOST_CHUNK`` on the host) added in float64 (a plain float32 dot over a 2048 x 2048 gradient is
off by 2.2e-5 relative, measured; the chunked sums by 2e-9 and 1e-8, at 1.2x and 2x the dot's time).
Stds come from two moments, by the two-pass method unless the one pass provably loses less than a digit
(``moments``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch

from initcore import theory

EXACT_FROM = 1 << 16
CHUNK = 1024  # the device path's float32 partial sums
HOST_CHUNK = 1 << 14  # the host path's: one BLAS dot each


class DeviceSink:
    """Torch reductions, written to one float64 buffer on the device allocated before the pass.

    Results kept as tensors of their own are small allocations that live through the pass between the
    activations' large ones; on a CPU that fragments the heap enough to slow the backward pass by more
    than the statistics cost (a trace took ~15% longer).
    """

    host = False

    def __init__(self, size: int, device: torch.device) -> None:
        self.at, self.buffer = 0, torch.empty(max(size, 1), dtype=torch.float64, device=device)

    def put(self, values: list[torch.Tensor]) -> slice:
        if self.at + len(values) > self.buffer.numel():  # more than foreseen: grow
            more = torch.empty(self.buffer.numel() + len(values), dtype=self.buffer.dtype, device=self.buffer.device)
            self.buffer = torch.cat([self.buffer, more])
        where = slice(self.at, self.at + len(values))
        torch.stack(values, out=self.buffer[where])  # promoted to float64 on the way in
        self.at = where.stop
        return where

    def to_host(self) -> list[float]:
        return self.buffer[: self.at].tolist()  # the pass's only device -> host copy


class HostSink:
    """numpy reductions of CPU tensors, kept as Python floats: already on the host, nothing to copy."""

    host = True

    def __init__(self) -> None:
        self.values: list[float] = []

    def put(self, values: list[float]) -> slice:
        where = slice(len(self.values), len(self.values) + len(values))
        self.values += values
        return where

    def to_host(self) -> list[float]:
        return self.values


Sink = DeviceSink | HostSink


class Raw(NamedTuple):
    decode: Callable[[list[float]], dict[str, float]]  # raw numbers -> statistics, on the host
    where: slice  # the raw numbers' place in the sink


@dataclass(frozen=True)
class Wants:
    """Which raw numbers the hooks take, from the statistics asked for (``initcore.probe.STATISTICS``)."""

    moments: bool = True  # act_mean, act_std, act_rms
    extremes: bool = True  # act_min, act_max
    zeros: bool = True  # dead_frac
    nonfinite: bool = True  # nan_count, inf_count
    saturation: bool = True  # saturated_frac
    preact: bool = True  # preact_mean, preact_std
    grads: int = 2  # 0: none; 1: grad_norm only (one pass); 2: grad_norm, grad_mean, grad_std
    out_grad: bool = True  # out_grad_norm
    attention: bool = True  # logit_std, attn_entropy, attn_entropy_norm, attn_max
    change: bool = False  # act_change_rms (with a reference)

    @classmethod
    def of(cls, statistics: frozenset[str], reference: bool) -> Wants:
        has = statistics.__contains__
        return cls(
            moments=any(map(has, ("act_mean", "act_std", "act_rms"))),
            extremes=has("act_min") or has("act_max"), zeros=has("dead_frac"),
            nonfinite=has("nan_count") or has("inf_count"), saturation=has("saturated_frac"),
            preact=has("preact_mean") or has("preact_std"),
            grads=2 if has("grad_mean") or has("grad_std") else 1 if has("grad_norm") else 0,
            out_grad=has("out_grad_norm"),
            attention=any(map(has, ("logit_std", "attn_entropy", "attn_entropy_norm", "attn_max"))),
            change=reference and has("act_change_rms"))

    @property
    def forward(self) -> bool:
        """Whether any statistic of a module's output is asked for."""
        return self.moments or self.extremes or self.zeros or self.nonfinite or self.saturation or self.change


def flat(x: torch.Tensor) -> torch.Tensor:
    """``x`` flattened, outside the graph (a view: no no_grad context per hook call); half precision in float32.

    A nested tensor (nn.TransformerEncoder's fast path with a padding mask) counts its components' entries,
    not padding; a sparse one (an Embedding(sparse=True)'s gradient) counts as the dense tensor it stands for.
    """
    x = x.detach()
    if x.is_nested:
        x = torch.cat([t.reshape(-1) for t in x.unbind()])
    elif x.layout != torch.strided:
        x = x.to_dense()
    return (x if x.dtype in (torch.float32, torch.float64) else x.float()).reshape(-1)


def _host_squares(a: np.ndarray) -> float:
    """sum(a²): a BLAS dot up to EXACT_FROM entries; above, one dot per HOST_CHUNK entries, added in float64
    (on a 512 x 512 gradient 51 us against 88 for float32 partial sums of CHUNK by einsum, 24 for one dot;
    relative error 2e-8, 3e-10 and 4e-7, measured)."""
    n = a.size
    if n <= EXACT_FROM or a.dtype == np.float64:
        return float(a.dot(a))
    m = n - n % HOST_CHUNK
    total = 0.0
    for part in a[:m].reshape(-1, HOST_CHUNK):
        total += float(part.dot(part))
    tail = a[m:]
    return total + float(tail.dot(tail))


_ONES = {np.dtype(np.float32): np.ones(EXACT_FROM, np.float32), np.dtype(np.float64): np.ones(EXACT_FROM)}


def _host_sum(a: np.ndarray, f: torch.Tensor) -> float:
    """sum(a): up to EXACT_FROM entries a BLAS dot with ones (6 us on 32k floats, torch's sum 18-26 us, numpy's
    12), as accurate as float32 allows (1.7e-7 relative there, measured); above, torch's cascade sum."""
    if a.size <= EXACT_FROM:
        return float(a.dot(_ONES[a.dtype][: a.size]))
    return float(f.sum())


def _device_squares(t: torch.Tensor) -> torch.Tensor:
    n = t.numel()
    if n <= EXACT_FROM or t.dtype == torch.float64:
        return torch.dot(t, t)
    m = n - n % CHUNK
    head = t[:m].view(-1, CHUNK)
    return torch.linalg.vecdot(head, head).sum(dtype=torch.float64) + torch.dot(t[m:], t[m:])


def _device_sum(t: torch.Tensor) -> torch.Tensor:
    return t.sum(dtype=torch.float64) if t.numel() > EXACT_FROM else t.sum()


def moments(f: torch.Tensor, host: bool) -> tuple[list, bool, bool]:
    """The first two moments of a 1-D tensor, exact as ``.std()``: (values, centred, finite).

    values are [mean, sum of squared deviations] (``centred``), by the two-pass method, except on the
    host, where reading two sums costs no device sync: when every entry is finite and mean² <= var, so
    that sum(x²) - sum(x)²/n loses less than a digit, the one pass's [sum, sum of squares] suffices (and
    ``finite`` is known). ``torch.std`` is slower than either. On the host the sums are BLAS dots (``_host_sum``,
    ``_host_squares``), torch's sum above EXACT_FROM entries (a third of numpy's time on a 1 MB gradient).
    """
    n = f.numel()
    if not host:
        mean = _device_sum(f) / n
        d = f - mean.to(f.dtype)
        return [mean, _device_squares(d)], True, False
    a = f.numpy()
    total, squares = _host_sum(a, f), _host_squares(a)
    if math.isfinite(squares) and 2 * total * total <= n * squares:
        return [total, squares], False, True
    with np.errstate(all="ignore"):  # overflow and inf - inf become inf and NaN, as in torch
        d = a - np.float32(total / n) if a.dtype == np.float32 else a - total / n
        return [total / n, _host_squares(d)], True, False


def decode_moments(v0: float, v1: float, n: int, centred: bool) -> tuple[float, float, float]:
    """(mean, sum of squared deviations, unbiased std) from ``moments``' two values."""
    mean, deviations = (v0, v1) if centred else (v0 / n, max(v1 - v0 * v0 / n, 0.0))
    return mean, deviations, sqrt(deviations / (n - 1)) if n > 1 else math.nan


def sqrt(x: float) -> float:
    return x**0.5 if x >= 0 else math.nan


def output_raw(out: torch.Tensor, bounded: bool, sink: Sink, wants: Wants,
               reference: torch.Tensor | None = None) -> Raw:
    """What ``wants`` asks of one module's output, in one vector: moments, extremes, zeros, NaN and Inf
    counts, |a| > 0.9 (``bounded`` only), and the sum of squares of (out - reference)."""
    f, host = flat(out), sink.host
    n = f.numel()
    values: list = []
    finite = centred = False
    if wants.moments:
        m, centred, finite = moments(f, host)
        values += m
    a = f.numpy() if host and (wants.extremes or wants.zeros or wants.nonfinite or wants.saturation) else None
    if wants.extremes:
        values += [float(a.min()), float(a.max())] if host else list(torch.aminmax(f))
    if wants.zeros:  # NaN is nonzero
        values.append(float(np.count_nonzero(a == 0)) if host else n - torch.count_nonzero(f))
    if wants.nonfinite:
        if finite:
            values += [0.0, 0.0]
        elif host:
            values += [float(np.count_nonzero(np.isnan(a))), float(np.count_nonzero(np.isinf(a)))]
        else:
            values += [torch.count_nonzero(torch.isnan(f)), torch.count_nonzero(torch.isinf(f))]
    saturation = wants.saturation and bounded
    if saturation:  # NaN is not > 0.9
        t = theory.SATURATION_THRESHOLD
        values.append(float(np.count_nonzero(np.abs(a) > t)) if host else torch.count_nonzero(f.abs() > t))
    change = wants.change and reference is not None
    if change:
        d = f - flat(reference).to(f.device, f.dtype)
        values.append(_host_squares(d.numpy()) if host else _device_squares(d))

    def decode(v: list[float]) -> dict[str, float]:
        stats: dict[str, float] = {}
        i = 0
        if wants.moments:
            mean, deviations, std = decode_moments(v[0], v[1], n, centred)
            stats.update(act_mean=mean, act_std=std, act_rms=sqrt((deviations + n * mean * mean) / n))
            i = 2
        if wants.extremes:
            stats.update(act_min=v[i], act_max=v[i + 1])
            i += 2
        if wants.zeros:
            stats["dead_frac"] = v[i] / n
            i += 1
        if wants.nonfinite:
            stats.update(nan_count=v[i], inf_count=v[i + 1])
            i += 2
        if saturation:
            stats["saturated_frac"] = v[i] / n
            i += 1
        if change:
            stats["act_change_rms"] = sqrt(v[i] / n)
        return stats

    return Raw(decode, sink.put(values))


def preact_raw(pre: torch.Tensor, sink: Sink) -> Raw:
    """preact_mean and preact_std of a pre-activation."""
    f = flat(pre)
    n = f.numel()
    values, centred, _ = moments(f, sink.host)

    def decode(v: list[float]) -> dict[str, float]:
        mean, _, std = decode_moments(v[0], v[1], n, centred)
        return {"preact_mean": mean, "preact_std": std}

    return Raw(decode, sink.put(values))


def grad_raw(grad: torch.Tensor, sink: Sink, norm_only: bool) -> tuple[slice, int, bool | None]:
    """One parameter's gradient: its moments, or only its sum of squares (``norm_only``: centred None)."""
    f = flat(grad)
    if norm_only:
        return sink.put([_host_squares(f.numpy()) if sink.host else _device_squares(f)]), f.numel(), None
    values, centred, _ = moments(f, sink.host)
    return sink.put(values), f.numel(), centred


def merge_grads(parts: list[tuple[list[float], int, bool | None]]) -> dict[str, float]:
    """grad_norm (and grad_mean, grad_std where moments were taken) over several parameters' gradients.

    Chan et al.'s pairwise combination of moments: exact as the two-pass over their concatenation.
    """
    if not parts:
        return {}
    if any(centred is None for _, _, centred in parts):
        return {"grad_norm": sqrt(sum(v[0] for v, _, _ in parts))}
    decoded = [(*decode_moments(v[0], v[1], k, centred)[:2], k) for v, k, centred in parts]
    n = sum(k for _, _, k in decoded)
    mean = sum(m * k for m, _, k in decoded) / n
    deviations = sum(c + k * (m - mean) ** 2 for m, c, k in decoded)
    return {"grad_norm": sqrt(deviations + n * mean * mean), "grad_mean": mean,
            "grad_std": sqrt(deviations / (n - 1)) if n > 1 else math.nan}


def out_grad_raw(grad: torch.Tensor, sink: Sink) -> Raw:
    f = flat(grad)
    if sink.host:
        with np.errstate(all="ignore"):
            return Raw(_out_grad, sink.put([_host_squares(f.numpy())]))
    return Raw(_out_grad, sink.put([_device_squares(f)]))


def _out_grad(v: list[float]) -> dict[str, float]:
    return {"out_grad_norm": sqrt(v[0])}


__all__ = ["CHUNK", "EXACT_FROM", "DeviceSink", "HostSink", "Raw", "Sink", "Wants", "decode_moments", "flat",
           "grad_raw", "merge_grads", "moments", "out_grad_raw", "output_raw", "preact_raw", "sqrt"]
