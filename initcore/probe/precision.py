"""Precision headroom: would each traced tensor survive a cast to float16, bfloat16 or an fp8 format?

For every row of a trace, four kinds of tensor (``TENSORS``: the output, the gradient wrt the output,
each parameter and each parameter's gradient) are reduced to, per format of ``FORMATS`` and per
``SCALINGS`` ("none": as it is, gradients times ``loss_scale``; "tensor": times the power of two 2^k
that brings its amax closest below the format's max, as delayed or current scaling would choose it):
amax, the fractions of its nonzero entries that a round-to-nearest cast flushes to zero, makes
subnormal, or overflows (inf, NaN, or clipped to max by a saturating cast such as torch's
float8_e4m3fn), and the headroom log2(max / amax) in bits. The result is a long frame
(``COLUMNS``), in ``frame.attrs["precision"]`` of ``trace(model, x, statistics="precision")``.

Limits come from ``torch.finfo`` (max, smallest normal, bits); the mantissa width from bits and the
exponent range (finfo's eps for float8_e5m2fnuz is 0.125, not the 0.25 its two mantissa bits give), and
how ties round at each boundary from a cast of the boundary itself. Counting is exact: the float32 bit
patterns of |x| are ordered as |x| is, so "|x| < t" is "bits < key(t)"; a per-tensor scale is a power of
two, so x·2^k crosses a boundary exactly where x crosses boundary·2^-k: every key of a tensor, of every
format and both scalings, is counted in one sweep over its bits (``_below``). A float64 tensor is measured
as float32 (the cast it would take on its way down).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import cache, lru_cache

import numpy as np
import pandas as pd
import torch
from torch import nn

from initcore import theory
from initcore.probe import reduce
from initcore.probe.select import Selection, first_tensor, owned_params, points

# Formats measured, where this torch has them (float8_e8m0fnu, a scale format without zero, is not one).
KNOWN_FORMATS = ("float16", "bfloat16", "float8_e4m3fn", "float8_e5m2", "float8_e4m3fnuz", "float8_e5m2fnuz")
FORMATS = tuple(name for name in KNOWN_FORMATS if hasattr(torch, name))
SCALINGS = ("none", "tensor")
TENSORS = ("output", "output_grad", "weight", "weight_grad")  # weight: any parameter, named in "param"
COLUMNS = ("module", "kind", "layer", "tensor", "param", "format", "scaling", "scale", "n", "nonzero", "amax",
           "mean", "std", "flushed", "subnormal", "overflow", "headroom_bits")
_MASK = 0x7FFFFFFF  # float32 bits without the sign
_HOST = True  # tests switch it off to run, on a CPU, the torch path every other device takes
_QUIET = torch._C.DisableTorchFunction()  # as in tracing: skip the attention watch inside hooks


@dataclass(frozen=True)
class Format:
    """A format's limits (from ``torch.finfo``) and its rounding boundaries as float32 bit keys of |x|."""

    name: str
    dtype: torch.dtype
    max: float
    tiny: float  # smallest normal
    smallest: float  # smallest subnormal
    flush: tuple[float, bool]  # (boundary, inclusive): |x| below it (or at it) becomes 0
    normal: tuple[float, bool]  # |x| below it (or at it) becomes subnormal
    overflow: tuple[float, bool]  # |x| above it (or at it) overflows

    @cache  # noqa: B019 (a handful of formats, each with a few shifts, live as long as the module)
    def keys(self, shift: float) -> tuple[int, int, int]:
        """Keys K (count of |x|·shift ... as ``bits(|x|) < K``) of the flush, subnormal and overflow
        boundaries for a tensor that is multiplied by ``shift`` before the cast."""
        (f, f_in), (s, s_in), (o, o_in) = self.flush, self.normal, self.overflow
        return (_key(f / shift, f_in), _key(s / shift, s_in), _key(o / shift, not o_in))


def _key(t: float, inclusive: bool) -> int:
    """K with: for a float32 y >= 0, y < t (``inclusive``: y <= t) exactly when bits(y) < K."""
    t32 = np.float32(t) if t < 3.5e38 else np.float32(np.inf)
    if inclusive:
        if float(t32) > t:
            t32 = np.nextafter(t32, np.float32(0))
        return int(t32.view(np.uint32)) + 1
    if float(t32) < t:
        t32 = np.nextafter(t32, np.float32(np.inf))
    return int(t32.view(np.uint32))


def _cast(v: float, dtype: torch.dtype) -> float:
    return float(torch.tensor([v], dtype=torch.float32).to(dtype).float())


def _overflows(v: float, dtype: torch.dtype, top: float) -> bool:
    """Whether a cast of v rounds beyond max: inf or NaN, or (a saturating cast) what v/2 rounds to, doubled."""
    return not math.isfinite(_cast(v, dtype)) or abs(_cast(v / 2, dtype)) * 2 > top


@cache
def format_of(dtype: str | torch.dtype) -> Format:
    """The ``Format`` of a dtype or its name (``"float8_e4m3fn"``, ``"torch.float16"``).

    Raises:
        ValueError: a name that is no format, or a format this torch does not have; the message lists ``FORMATS``.
    """
    name = str(dtype).removeprefix("torch.")
    if name not in KNOWN_FORMATS:
        raise ValueError(f"unknown format {str(dtype)!r}; valid: {', '.join(FORMATS)}")
    if name not in FORMATS:
        raise ValueError(f"torch {torch.__version__} has no {name}; valid here: {', '.join(FORMATS)}")
    dt = getattr(torch, name)
    info = torch.finfo(dt)
    top, tiny = float(info.max), float(info.smallest_normal)
    e_max, e_min = math.floor(math.log2(top)), round(math.log2(tiny))
    exponent_bits = math.ceil(math.log2(e_max - e_min + 2))  # normal exponents, the subnormal code, inf/NaN
    mantissa = info.bits - 1 - exponent_bits
    smallest = tiny * 2.0**-mantissa
    f, s, o = smallest / 2, tiny - smallest / 2, top + 2.0 ** (e_max - mantissa) / 2  # midpoints
    return Format(name, dt, top, tiny, smallest,
                  flush=(f, _cast(f, dt) == 0), normal=(s, _cast(s, dt) != tiny),
                  overflow=(o, _overflows(o, dt, top)))


def formats_of(formats: str | torch.dtype | Iterable[str | torch.dtype] | None) -> tuple[Format, ...]:
    """``Format``s of a dtype, a name, several, or None (all of ``FORMATS``)."""
    if formats is None:
        formats = FORMATS
    elif isinstance(formats, (str, torch.dtype)):
        formats = (formats,)
    found = tuple(format_of(f) for f in formats)
    if not found:
        raise ValueError(f"no format given; valid: {', '.join(FORMATS)}")
    return found


def check_loss_scale(loss_scale: float) -> float:
    if not (isinstance(loss_scale, (int, float)) and math.isfinite(loss_scale) and loss_scale > 0):
        raise ValueError(f"loss_scale must be a positive finite number (1: none; a power of two such as 65536 "
                         f"keeps the counts exact), got {loss_scale!r}")
    return float(loss_scale)


def _exponent(amax: float, fmt: Format) -> int:
    """k of the per-tensor scale 2^k: the largest with amax·2^k <= max (0 for a zero or non-finite amax),
    within [-126, 127], where 2^k is a normal float32 (a scale for bfloat16 would pass it)."""
    if not (amax > 0 and math.isfinite(amax)):
        return 0
    return min(max(math.floor(math.log2(fmt.max / amax)), _K[0]), _K[1])


_K = (-126, 127)


def _float32(f: torch.Tensor) -> torch.Tensor:
    return f if f.dtype == torch.float32 else f.float()


_BUFFERS: list[np.ndarray] = [np.empty(0, np.uint32), np.empty(0, bool)]


def _scratch(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Buffers of n bits and n flags, reused across tensors: a fresh megabyte a tensor costs its page
    faults each time (a third of the reduction of a 512 x 512 weight on a busy CPU, measured)."""
    if _BUFFERS[0].size < n:
        _BUFFERS[:] = [np.empty(n, np.uint32), np.empty(n, bool)]
    return _BUFFERS[0][:n], _BUFFERS[1][:n]


def _host_moments(a: np.ndarray) -> tuple[float, float]:
    """mean and unbiased std: numpy's pairwise float32 sum and BLAS dots (``reduce.moments`` sums large
    tensors with torch, whose thread pool stalls for milliseconds when called from inside a pass on a busy
    CPU: 24 ms on a 512 x 512 weight, measured); two passes where one would lose digits."""
    n = a.size
    if n == 0:
        return math.nan, math.nan
    with np.errstate(all="ignore"):  # past float32's range: inf and NaN, as in torch
        total = float(a.sum(dtype=np.float32))
        squares = reduce._host_squares(a)
        if not (math.isfinite(squares) and 2 * total * total <= n * squares):
            squares = reduce._host_squares(a - np.float32(total / n))
            total_dev = 0.0
        else:
            total_dev = total * total / n
    return total / n, reduce.sqrt(max(squares - total_dev, 0.0) / (n - 1)) if n > 1 else math.nan


_SMALL = 1024  # at most this many entries: one sort, and every key by binary search
_SAMPLE = 512  # entries of a larger tensor's sample (a strided view, sorted: ~2 us)
_TAIL = 64  # a key with at most 1/_TAIL of the sample beyond it is in a tail


def _below(ab: np.ndarray, keys: Sequence[int], top: int, less: np.ndarray) -> dict[int, int]:
    """key -> count of ``ab`` (float32 bits of |x|) below it, exactly, for sorted distinct keys.

    A pass per key (a compare and a count, 30 us on 256k entries) cost two thirds of a 512 x 512 weight's
    reduction: 20 keys inside its range, most with a few entries or none beyond them. A sorted sample
    of ``_SAMPLE`` entries (an odd stride: a power-of-two row length does not make it one column) says
    which keys lie in either tail; the entries of a tail that holds two keys or more are gathered in one
    pass and its keys counted on them (``_on_tail``); only keys in the bulk take a full pass. The sample
    decides only how a key is counted, never its count: one that misjudges costs time, not exactness.
    """
    n = ab.size
    found = {key: n for key in keys if key > top}
    inside = [key for key in keys if key <= top]
    if not inside:
        return found
    if n <= _SMALL:
        found.update(_on_tail(ab, inside, less))
        return found
    sample = np.sort(ab[:: (n // _SAMPLE) | 1])
    seen = np.searchsorted(sample, np.array(inside, dtype=np.uint32)).tolist()
    edge = sample.size // _TAIL
    low = [key for key, c in zip(inside, seen, strict=True) if c <= edge]
    high = [key for key, c in zip(inside, seen, strict=True) if c >= sample.size - edge and c > edge]
    low, high = (low if len(low) > 1 else []), (high if len(high) > 1 else [])
    for key in inside[len(low): len(inside) - len(high)]:  # the bulk: a pass each
        found[key] = int(np.count_nonzero(np.less(ab, key, out=less)))
    if low:  # the entries below the tail's largest key hold every count of its keys
        found.update(_on_tail(ab[np.less(ab, low[-1], out=less)], low, less))
    if high:  # those at or above its smallest key: the rest lie below each of its keys
        tail = ab[np.greater_equal(ab, high[0], out=less)]
        found.update((key, n - tail.size + c) for key, c in _on_tail(tail, high, less, up=True).items())
    return found


def _on_tail(sub: np.ndarray, keys: list[int], less: np.ndarray, up: bool = False) -> dict[int, int]:
    """key -> count of ``sub`` below it. Keys one by one from the far end of ``sub`` inward (``up``: from the
    smallest), each on the entries the one before kept (gathered once its count falls below an eighth of
    them), and once at most ``_SMALL`` entries are left, the remaining keys at once on those, sorted:
    most keys of a tail have a few entries beyond them or none, and a call per key cost more than they."""
    found, dropped = {}, 0  # dropped: entries below every key left (``up``), no longer in ``sub``
    order = list(keys) if up else list(reversed(keys))
    for i, key in enumerate(order):
        if sub.size <= _SMALL:
            rest = np.array(order[i:], dtype=np.uint32)
            found.update(zip(order[i:], (dropped + np.searchsorted(np.sort(sub), rest)).tolist(), strict=True))
            break
        mask = np.greater_equal(sub, key, out=less[: sub.size]) if up else np.less(sub, key, out=less[: sub.size])
        c = int(np.count_nonzero(mask))
        found[key] = dropped + sub.size - c if up else c
        if 8 * c < sub.size:
            if up:
                dropped += sub.size - c
            sub = sub[mask]
    return found


def host_counts(f: torch.Tensor, fmts: Sequence[Format], factor: float) -> list[float]:
    """numpy: [n, nonzero, amax, mean, std] then per format [k, 3 counts unscaled, 3 counts scaled]
    (counts: entries with bits(|x|) below each ``Format.keys``), every count of the tensor at once (``_below``:
    formats share boundaries, and keys above amax cost nothing)."""
    f = _float32(f)
    n = f.numel()
    ab, less = _scratch(n)
    np.bitwise_and(f.numpy().view(np.uint32), np.uint32(_MASK), out=ab)
    top = int(ab.max()) if n else 0
    mean, std = _host_moments(f.numpy())
    amax = float(np.uint32(top).view(np.float32))
    ks = tuple(_exponent(amax, fmt) for fmt in fmts)
    rows, keys = _keys_of(tuple(fmts), factor, ks)
    below = _below(ab, keys, top, less)
    values = [float(n), float(n - below[1]), amax, mean, std]
    for k, row in zip(ks, rows, strict=True):
        values += [float(k), *(float(below[key]) for key in row)]
    return values


@lru_cache(maxsize=1024)
def _keys_of(fmts: tuple[Format, ...], factor: float, ks: tuple[int, ...]) -> tuple[tuple[tuple[int, ...], ...],
                                                                                     tuple[int, ...]]:
    """Per format its six keys (unscaled under ``factor``, scaled by 2^k), and all of them sorted and distinct
    with 1 (the zeros): the same few combinations recur tensor after tensor (10 us a tensor to rebuild)."""
    rows = tuple((*fmt.keys(factor), *fmt.keys(2.0**k)) for k, fmt in zip(ks, fmts, strict=True))
    return rows, tuple(sorted({1, *(key for row in rows for key in row)}))


def device_counts(f: torch.Tensor, fmts: Sequence[Format], factor: float) -> torch.Tensor:
    """torch, on the tensor's device, no sync: what ``host_counts`` gives, as one float64 tensor.

    The scaled tensor is x·2^k itself, compared with the unshifted keys (the direct route ``host_counts``
    shortcuts)."""
    f = _float32(f)
    ab = f.view(torch.int32) & _MASK
    n = f.numel()
    amax = ab.max().view(torch.float32) if n else torch.zeros((), device=f.device)
    moments, centred, _ = reduce.moments(f, False)
    mean = moments[0].double()
    std = (moments[1].double() / (n - 1)).sqrt() if n > 1 else torch.tensor(math.nan, device=f.device)
    parts = [torch.tensor(float(n), device=f.device, dtype=torch.float64), torch.count_nonzero(ab).double(),
             amax.double(), mean, std]
    for fmt in fmts:
        a = amax.double()
        ok = (a > 0) & torch.isfinite(a)
        k = torch.where(ok, torch.floor(torch.log2(fmt.max / torch.where(ok, a, 1.0))), 0.0).clamp(*_K)
        scaled = (f * torch.exp2(k).float()).view(torch.int32) & _MASK
        parts += [k.double(), *((ab < key).sum().double() for key in fmt.keys(factor)),
                  *((scaled < key).sum().double() for key in fmt.keys(1.0))]
    return torch.stack(parts)


def counts(f: torch.Tensor, fmts: Sequence[Format], factor: float = 1.0) -> list[float] | torch.Tensor:
    """``host_counts`` on a CPU (unless switched off), ``device_counts`` elsewhere."""
    f = reduce.flat(f)
    return host_counts(f, fmts, factor) if f.device.type == "cpu" and _HOST else device_counts(f, fmts, factor)


def decode(values: Sequence[float], fmts: Sequence[Format], factor: float) -> list[dict]:
    """``counts``' numbers -> a record per format and scaling (``COLUMNS`` from "format" on), as the table has them."""
    table = _table([(("", "", 0, "", ""), factor, list(values))], fmts)
    return table[list(COLUMNS[5:])].to_dict("records")


def trace(model: nn.Module, inputs, loss: str | Callable | None = "mean", *,
          formats: str | torch.dtype | Iterable | None = None, loss_scale: float = 1.0, select: Selection = None,
          statistics: str | Iterable[str] = "all", train: bool | None = False, unpack: bool = True,
          **kwargs) -> pd.DataFrame:
    """``probe.trace`` (with ``statistics``), and in the same pass the precision table of every row:
    ``frame.attrs["precision"]``, a long frame of ``COLUMNS`` (see the module docstring).

    Args:
        formats: a format, several, or None: all of ``FORMATS``.
        loss_scale: what gradients are multiplied by before their unscaled cast (> 0; a power of two
            keeps the counts exact).
        the rest: as ``probe.trace``.

    Raises:
        ValueError: an unknown format, one this torch lacks, a non-positive loss scale; or what
            ``probe.trace`` raises.
    """
    from initcore.probe import tracing

    fmts, factor = formats_of(formats), check_loss_scale(loss_scale)
    if statistics == "precision":  # tracing's preset: every statistic, and this table
        statistics = "all"
    chosen = points(model, select)
    found: list[tuple[tuple, float, list | torch.Tensor]] = []  # (ids, factor, counts)
    calls: dict[int, int] = {}
    handles = []

    def hook(point):
        def on_output(module, args, output):
            with _QUIET:
                out = first_tensor(output, point.output) if unpack or isinstance(output, torch.Tensor) else None
                if out is None or not out.is_floating_point():
                    return
                k = calls.get(id(point), 0)
                calls[id(point)] = k + 1
                ids = (f"{point.name}#{k}" if k else point.name, point.kind, point.layer)
                found.append(((*ids, "output", ""), 1.0, counts(out, fmts)))
                if out.requires_grad:
                    out.register_hook(lambda g: found.append(((*ids, "output_grad", ""), factor,
                                                              counts(g, fmts, factor))))
        return on_output

    try:
        handles = [p.module.register_forward_hook(hook(p)) for p in chosen]
        frame = tracing.trace(model, inputs, loss, select=select, statistics=statistics, train=train,
                              unpack=unpack, **kwargs)
    finally:
        for handle in handles:
            handle.remove()
    with torch.no_grad():
        for point, param, p in owned_params(model, chosen):
            ids = (point.name, point.kind, point.layer)
            found.append(((*ids, "weight", param), 1.0, counts(p, fmts)))
            if p.grad is not None:
                found.append(((*ids, "weight_grad", param), factor, counts(p.grad, fmts, factor)))
    frame.attrs["precision"] = _table(found, fmts)
    return frame


def loss_scale_for(tensor: torch.Tensor, dtype: str | torch.dtype, *, flushed: float = 0.01) -> float:
    """The smallest power of two L such that a cast of tensor·L to ``dtype`` flushes at most ``flushed`` of
    its nonzero entries to zero (NaN for a tensor with none); whether tensor·L then overflows is for the
    caller to check (``headroom_bits`` of the table at that scale, or amax·L against the format's max).

    Exact: the entry that must survive is the (floor(flushed·nonzero)+1)-th smallest nonzero |x|, and x·L is
    exact for a power of two L.
    """
    fmt = format_of(dtype)
    if not 0 <= flushed < 1:
        raise ValueError(f"flushed must be a fraction in [0, 1), got {flushed!r}")
    a = np.abs(_float32(reduce.flat(tensor)).cpu().numpy())
    a = a[a != 0]
    if a.size == 0:
        return math.nan
    m = int(flushed * a.size)
    q = float(np.partition(a, m)[m])  # every smaller entry may flush: at most m of them
    bound, inclusive = fmt.flush
    e = math.ceil(math.log2(bound / q))
    if q * 2.0**e < bound or (inclusive and q * 2.0**e == bound):
        e += 1
    return 2.0**e


def parameters(model: nn.Module, formats: str | torch.dtype | Iterable | None = None) -> pd.DataFrame:
    """The precision table of ``model``'s parameters alone (tensor "weight"; module: the parameter's own),
    with no pass: what an init leaves, before any input."""
    fmts = formats_of(formats)
    with torch.no_grad():
        found = [((name.rpartition(".")[0], "param", -1, "weight", name), 1.0, counts(p, fmts))
                 for name, p in model.named_parameters()]
    return _table(found, fmts)


def _table(found: list, fmts: Sequence[Format]) -> pd.DataFrame:
    """The long table, in numpy arrays of (tensor, format, scaling) raveled in that order, one float64 block
    (records of dicts took 10 ms a trace of 40 tensors; a block per format and scaling, reordered, 1.5)."""
    on_device = [v for _, _, v in found if isinstance(v, torch.Tensor)]
    one_device = len({v.device for v in on_device}) == 1
    stacked = torch.stack(on_device).cpu() if one_device else torch.stack([v.cpu() for v in on_device]) \
        if on_device else None
    host = iter(stacked.tolist() if stacked is not None else [])  # on one device: one copy for the whole pass
    t, f = len(found), len(fmts)
    v = np.array([next(host) if isinstance(values, torch.Tensor) else values for _, _, values in found],
                 dtype=np.float64).reshape(t, 5 + 7 * f)
    n, nonzero, amax, mean, std = (c[:, None, None] for c in v[:, :5].T)
    per = v[:, 5:].reshape(t, f, 7)  # per format: k, then 3 counts unscaled and 3 scaled
    scale = np.empty((t, f, 2))
    scale[:, :, 0] = np.array([factor for _, factor, _ in found])[:, None]
    scale[:, :, 1] = np.exp2(per[:, :, 0])
    flushed, subnormal, normal = np.moveaxis(per[:, :, 1:].reshape(t, f, 2, 3), 3, 0)  # each (t, f, 2)
    top = np.array([fmt.max for fmt in fmts])[None, :, None]
    with np.errstate(all="ignore"):  # no nonzero entry: NaN fractions; amax 0: infinite headroom
        of = np.where(nonzero > 0, nonzero, np.nan)  # fractions of the nonzero entries
        cast_amax = amax * scale
        values = [scale, np.broadcast_to(n, scale.shape), np.broadcast_to(nonzero, scale.shape), cast_amax,
                  mean * scale, std * scale, (flushed - (n - nonzero)) / of, (subnormal - flushed) / of,
                  (n - normal) / of, np.where(cast_amax > 0, np.log2(top / cast_amax), np.inf)]
    block = np.stack([x.reshape(-1) for x in values], axis=1)
    table = pd.DataFrame(block, columns=list(COLUMNS[7:]))
    rows = 2 * f  # per tensor: each format, unscaled then scaled
    for j, name in enumerate(COLUMNS[:5]):
        column = np.repeat(np.array([ids[j] for ids, _, _ in found], dtype=np.int64 if name == "layer" else object),
                           rows)
        table.insert(j, name, column if name == "layer" else pd.array(column, dtype=_TEXT))
    table.insert(5, "format", pd.array(np.tile(np.repeat(np.array([fmt.name for fmt in fmts], dtype=object), 2), t),
                                       dtype=_TEXT))
    table.insert(6, "scaling", pd.array(np.tile(np.array(SCALINGS, dtype=object), t * f), dtype=_TEXT))
    return table


_TEXT = pd.Series(["text"]).dtype  # the dtype pandas gives strings (str in pandas 3, object before)


def with_theory(table: pd.DataFrame) -> pd.DataFrame:
    """``table`` with ``flushed_gaussian``, ``subnormal_gaussian``, ``overflow_gaussian`` beside the measured
    fractions: those of a Gaussian with each row's measured mean and std (``theory.gaussian_cast_fractions``;
    NaN where the std is 0 or not finite). Far from them: a heavy tail, or a spike at zero."""
    out = table.copy()
    for name in ("flushed", "subnormal", "overflow"):
        out[f"{name}_gaussian"] = math.nan
    ok = (table["std"] > 0) & np.isfinite(table["std"]) & np.isfinite(table["mean"])
    for name, rows in table[ok].groupby("format", sort=False):
        fmt = format_of(name)
        predicted = theory.gaussian_cast_fractions(rows["std"].to_numpy(), rows["mean"].to_numpy(), fmt.flush[0],
                                                   fmt.normal[0], fmt.overflow[0])
        for key, values in predicted.items():
            out.loc[rows.index, f"{key}_gaussian"] = values
    return out


SHOWN = ("module", "tensor", "param", "scaling", "scale", "amax", "headroom_bits", "flushed", "flushed_gaussian",
         "subnormal", "subnormal_gaussian", "overflow", "overflow_gaussian")


def table_of(frame: pd.DataFrame) -> pd.DataFrame:
    """The precision table of a ``trace(..., statistics="precision")`` frame, or ``frame`` if it is one."""
    if "precision" in frame.attrs:
        return frame.attrs["precision"]
    if set(COLUMNS) <= set(frame.columns):
        return frame
    raise ValueError("no precision table here: trace with statistics=\"precision\" (or initcore.probe.precision."
                     "trace), and pass its frame or frame.attrs[\"precision\"]")


def view(frame: pd.DataFrame, dtype: str | torch.dtype) -> pd.DataFrame:
    """One format's rows of the precision table, measured beside Gaussian predictions (``SHOWN``)."""
    fmt = format_of(dtype)
    table = table_of(frame)
    table = table[table["format"] == fmt.name]
    return with_theory(table)[list(SHOWN)].reset_index(drop=True)


def misfits(frame: pd.DataFrame, dtype: str | torch.dtype, *, flushed: float = 0.01, overflow: float = 0.0,
            scaling: str = "none", tensors: Iterable[str] | None = None) -> pd.DataFrame:
    """The tensors whose flushed or overflowed fraction (of their nonzero entries) exceeds its tolerance in
    ``dtype`` under ``scaling``, worst first (``excess``: the larger overshoot of the two).

    Raises:
        ValueError: an unknown format, scaling or tensor kind, or a tolerance outside [0, 1].
    """
    if scaling not in SCALINGS:
        raise ValueError(f"unknown scaling {scaling!r}; valid: {', '.join(SCALINGS)}")
    tensors = TENSORS if tensors is None else tuple([tensors] if isinstance(tensors, str) else tensors)
    unknown = sorted(set(tensors) - set(TENSORS))
    if unknown or not tensors:
        raise ValueError(f"unknown tensors {unknown or '(none given)'}; valid: {', '.join(TENSORS)}")
    for name, tol in (("flushed", flushed), ("overflow", overflow)):
        if not 0 <= tol <= 1:
            raise ValueError(f"{name} tolerance must be a fraction in [0, 1], got {tol!r}")
    rows = view(frame, dtype)
    rows = rows[(rows["scaling"] == scaling) & rows["tensor"].isin(tensors)]
    excess = np.maximum(rows["flushed"] - flushed, rows["overflow"] - overflow)
    rows = rows.assign(excess=excess)[excess > 0]
    return rows.sort_values("excess", ascending=False, kind="stable").reset_index(drop=True)


__all__ = ["COLUMNS", "FORMATS", "KNOWN_FORMATS", "SCALINGS", "SHOWN", "TENSORS", "Format", "check_loss_scale",
           "counts", "decode", "format_of", "formats_of", "loss_scale_for", "misfits", "parameters", "table_of",
           "trace", "view", "with_theory"]
