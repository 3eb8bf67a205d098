"""Per-layer statistics of one forward and one backward pass, as a wide DataFrame (one row per module).

``trace(model, inputs)`` hooks an MLP's layers, or a transformer's attention, feed-forward and block
outputs; each hook reduces what it sees to a few numbers at once (no activation is kept). On a GPU the
numbers stay on the device and cross to the host in one copy; on a CPU numpy reads the tensors' own
memory and the numbers are floats at once. ``to_long`` gives ``module, statistic, value``
rows; ``mlp_theory`` and ``with_theory`` put mean-field predictions beside an MLP's measurements.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import numpy as np
import pandas as pd
import torch
from torch import nn

from initcore import theory

ID_COLUMNS = ("module", "kind", "layer")
STATISTICS: dict[str, str] = {
    "act_mean": "mean of the module's output (MLP: after the activation)",
    "act_std": "std of the output (torch's unbiased .std(), as the notebook)",
    "act_rms": "root mean square of the output, sqrt(mean(a^2))",
    "act_min": "smallest output value",
    "act_max": "largest output value",
    "dead_frac": "fraction of output entries exactly 0",
    "saturated_frac": "fraction with |a| > 0.9; bounded activations (tanh, sigmoid) only, else NaN",
    "nan_count": "number of NaN output entries",
    "inf_count": "number of +-Inf output entries",
    "preact_mean": "MLP: mean of the Linear's output, before the activation",
    "preact_std": "MLP: std of the Linear's output, before the activation",
    "grad_norm": "L2 norm of the loss gradient wrt the module's parameters (weight only for an MLP row)",
    "grad_mean": "mean of those gradient entries",
    "grad_std": "std of those gradient entries (unbiased)",
    "out_grad_norm": "L2 norm of the loss gradient wrt the module's output",
    "logit_std": "attention: std of the finite pre-softmax logits",
    "attn_entropy": "attention: softmax entropy in nats, mean over batch, heads and queries",
    "attn_entropy_norm": "attention: per-query entropy / log(keys it sees), mean over queries seeing >= 2 keys",
    "attn_max": "attention: largest attention weight of a query, mean over batch, heads and queries",
}
COLUMNS = (*ID_COLUMNS, *STATISTICS)
LOSSES = ("mean", "square", "random")
_BOUNDED = (nn.Tanh, nn.Sigmoid)


def _loss_fn(loss: str | Callable[[torch.Tensor], torch.Tensor]) -> Callable[[torch.Tensor], torch.Tensor]:
    if callable(loss):
        return loss
    if loss == "mean":
        return lambda out: out.mean()
    if loss == "square":
        return lambda out: out.float().square().mean()
    if loss == "random":
        return _random_projection
    raise ValueError(f"unknown loss {loss!r}; valid: {', '.join(LOSSES)}, or a callable output -> scalar")


def _random_projection(out: torch.Tensor) -> torch.Tensor:
    # A final LayerNorm (weight 1, bias 0) makes mean(out) 0 and mean(out^2) ~1 whatever its input, so
    # "mean" and "square" give transformers no gradient; a fixed random direction r ~ N(0, 1) does.
    r = torch.randn(out.shape, generator=torch.Generator().manual_seed(0)).to(out.device, out.dtype)
    return (out * r).mean()


# Each hook reduces what it sees at once to a few raw numbers (sums, extremes, counts) and puts them in
# the pass's sink; after the pass a decoder per hook turns them into statistics on the host. Two sinks:
# on a CUDA (or any non-CPU) device the reductions are torch ops whose results stay there until the one
# copy at the end (each .item() would be a device sync). On a CPU there is nothing to sync, and what
# costs is the fixed few microseconds of every torch op, whatever its size, and comparisons most; there
# numpy reduces the tensors' own memory to floats directly (on 32k floats: dot 2.3 us against torch's
# 4.5, a count of zeros 4 us against count_nonzero's 18); trace/bare went from 1.31-1.34 to 1.27-1.28.

_HOST_REDUCTIONS = True  # tests switch it off to run, on a CPU, the path every other device takes


class _DeviceSink:
    """Torch reductions, written to one float64 buffer on the device allocated before the pass.

    Results kept as tensors of their own are small allocations that live through the pass between the
    activations' large ones; on a CPU that fragments the heap enough to slow the backward pass by more
    than the statistics cost (a trace took ~15% longer).
    """

    host = False

    def __init__(self, size: int, device: torch.device) -> None:
        self.at, self.buffer = 0, torch.empty(size, dtype=torch.float64, device=device)

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


class _HostSink:
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


_Sink = _DeviceSink | _HostSink


class _Raw(NamedTuple):
    decode: Callable[[list[float]], dict[str, float]]  # raw numbers -> statistics, on the host
    where: slice  # the raw numbers' place in the sink


def _moments(flat: torch.Tensor, host: bool) -> tuple[list, bool, bool]:
    """The first two moments of a 1-D tensor, exact as ``.std()``: (values, centred, finite).

    values are [mean, sum of squared deviations] (``centred``), by the two-pass method, except on the
    host, where reading two sums costs no device sync: when every entry is finite and mean² <= var, so
    that sum(x²) - sum(x)²/n loses less than a digit, the one pass's [sum, sum of squares] suffices (and
    ``finite`` is known). ``torch.std`` is slower than either. On the host the sum is torch's (a third
    of numpy's time on a 1 MB gradient) and the sum of squares numpy's dot (half of torch's on 32k floats).
    """
    n = flat.numel()
    if not host:
        mean = flat.sum() / n
        d = flat - mean
        return [mean, torch.dot(d, d)], True, False
    a = flat.numpy()
    with np.errstate(all="ignore"):  # overflow and inf - inf become inf and NaN, as in torch
        total, squares = float(flat.sum().numpy()), float(a.dot(a))
        if math.isfinite(squares) and 2 * total * total <= n * squares:
            return [total, squares], False, True
        d = a - total / n
        return [total / n, float(d.dot(d))], True, False


def _decode_moments(v0: float, v1: float, n: int, centred: bool) -> tuple[float, float, float]:
    """(mean, sum of squared deviations, unbiased std) from ``_moments``' two values."""
    mean, deviations = (v0, v1) if centred else (v0 / n, max(v1 - v0 * v0 / n, 0.0))
    return mean, deviations, _sqrt(deviations / (n - 1)) if n > 1 else math.nan


def _sqrt(x: float) -> float:
    return x**0.5 if x >= 0 else math.nan


def _summary(flat: torch.Tensor, host: bool, bounded: bool) -> tuple[list, bool]:
    """[moment, moment, min, max, exact zeros, NaNs, infs, (|x| > 0.9 if bounded)] of a 1-D tensor."""
    moments, centred, finite = _moments(flat, host)
    t, n = theory.SATURATION_THRESHOLD, flat.numel()
    if not host:  # NaN is nonzero, and not > 0.9
        values = [*moments, *torch.aminmax(flat), n - torch.count_nonzero(flat),
                  torch.count_nonzero(torch.isnan(flat)), torch.count_nonzero(torch.isinf(flat))]
        return values + ([torch.count_nonzero(flat.abs() > t)] if bounded else []), centred
    a = flat.numpy()
    values = [*moments, float(a.min()), float(a.max()), float(np.count_nonzero(a == 0))]
    values += [0.0, 0.0] if finite else [float(np.count_nonzero(np.isnan(a))), float(np.count_nonzero(np.isinf(a)))]
    return values + ([float(np.count_nonzero(np.abs(a) > t))] if bounded else []), centred


def _output_raw(out: torch.Tensor, bounded: bool, preact: torch.Tensor | None, same: bool, sink: _Sink) -> _Raw:
    """Everything of one module's output (and, for an MLP, its pre-activation ``preact``) in one vector.

    The pre-activation is the output itself where ``same`` (the last MLP layer's Identity).
    """
    flat = _flat(out)
    n = flat.numel()
    values, centred = _summary(flat, sink.host, bounded)
    pre = None
    if preact is not None and not same:
        pflat = _flat(preact)
        pre_moments, pre_centred, _ = _moments(pflat, sink.host)
        values += pre_moments
        pre = (pflat.numel(), pre_centred)

    def decode(v: list[float]) -> dict[str, float]:
        mean, deviations, std = _decode_moments(v[0], v[1], n, centred)
        lo, hi, zeros, nan, inf, *rest = v[2:]
        stats = {"act_mean": mean, "act_std": std, "act_rms": _sqrt((deviations + n * mean * mean) / n),
                 "act_min": lo, "act_max": hi, "dead_frac": zeros / n, "nan_count": nan, "inf_count": inf}
        if bounded:
            stats["saturated_frac"] = rest.pop(0) / n
        if preact is not None:
            pre_mean, _, pre_std = (mean, deviations, std) if same else _decode_moments(*rest, *pre)
            stats.update(preact_mean=pre_mean, preact_std=pre_std)
        return stats

    return _Raw(decode, sink.put(values))


def _grad_raw(grad: torch.Tensor, sink: _Sink) -> tuple[slice, int, bool]:
    flat = _flat(grad)
    moments, centred, _ = _moments(flat, sink.host)
    return sink.put(moments), flat.numel(), centred


def _grads(parts: list[tuple[list[float], int, bool]]) -> dict[str, float]:
    """grad_norm, grad_mean, grad_std over several parameters' gradients, from each one's moments.

    Chan et al.'s pairwise combination: exact as the two-pass over their concatenation, without it.
    """
    if not parts:
        return {}
    moments = [(*_decode_moments(v[0], v[1], k, centred)[:2], k) for v, k, centred in parts]
    n = sum(k for _, _, k in moments)
    mean = sum(m * k for m, _, k in moments) / n
    deviations = sum(c + k * (m - mean) ** 2 for m, c, k in moments)
    return {"grad_norm": _sqrt(deviations + n * mean * mean), "grad_mean": mean,
            "grad_std": _sqrt(deviations / (n - 1)) if n > 1 else math.nan}


def _attention_raw(logits: torch.Tensor, sink: _Sink) -> _Raw:
    """[logit_std, attn_entropy, attn_entropy_norm, attn_max] of logits (B, heads, T, T), -inf where masked.

    Torch ops on either sink: softmax and entropies are no job for numpy.
    """
    logits = logits.float()
    finite = torch.isfinite(logits)
    n = finite.sum()
    mean = torch.where(finite, logits, 0.0).sum() / n
    std = (torch.where(finite, logits - mean, 0.0).square().sum() / (n - 1)).sqrt()  # no masked_select: no sync
    p = torch.softmax(logits, dim=-1)
    entropy = -torch.special.xlogy(p, p).sum(-1)  # (B, heads, T), 0 * log 0 = 0
    log_keys = (finite.sum(-1) * 1.0).log()  # a causal query t sees t + 1 keys
    several = log_keys > 0  # a query seeing one key has entropy 0 of a maximum 0: left out
    norm = torch.where(several, entropy / log_keys.clamp_min(1e-12), 0.0).sum() / several.sum()
    values = [std, entropy.mean(), norm, p.amax(-1).mean()]
    return _Raw(_attention, sink.put(torch.stack(values).tolist() if sink.host else values))


def _attention(v: list[float]) -> dict[str, float]:
    return dict(zip(("logit_std", "attn_entropy", "attn_entropy_norm", "attn_max"), v, strict=True))


def _out_grad_raw(grad: torch.Tensor, sink: _Sink) -> _Raw:
    flat = _flat(grad)
    if sink.host:
        a = flat.numpy()
        with np.errstate(all="ignore"):
            return _Raw(_out_grad, sink.put([float(a.dot(a))]))
    return _Raw(_out_grad, sink.put([torch.dot(flat, flat)]))


def _out_grad(v: list[float]) -> dict[str, float]:
    return {"out_grad_norm": _sqrt(v[0])}


def _flat(x: torch.Tensor) -> torch.Tensor:
    """``x`` flattened, outside the graph (a view: no no_grad context per hook call); half precision in float32."""
    x = x.detach()
    return (x if x.dtype in (torch.float32, torch.float64) else x.float()).reshape(-1)


class _Target(NamedTuple):
    name: str
    kind: str
    layer: int
    module: nn.Module  # whose output is measured
    params: list[nn.Parameter]  # whose gradients make grad_norm, grad_mean, grad_std
    preact: bool = False  # MLP: the module's input is the pre-activation (the Linear's output)
    bounded: bool = False  # saturated_frac applies
    attn: bool = False  # take attention statistics from module.logits(input)


def _targets(model: nn.Module) -> list[_Target]:
    if hasattr(model, "layers") and hasattr(model, "acts"):
        last = len(model.layers) - 1
        return [_Target(f"layers.{i}", "linear", i, act, [linear.weight], preact=True,
                        bounded=i < last and isinstance(act, _BOUNDED))
                for i, (linear, act) in enumerate(zip(model.layers, model.acts, strict=True))]
    if hasattr(model, "blocks"):
        out = []
        for i, block in enumerate(model.blocks):
            out.append(_Target(f"blocks.{i}.attn", "attn", i, block.attn, list(block.attn.parameters()), attn=True))
            out.append(_Target(f"blocks.{i}.ffn", "ffn", i, block.ffn, list(block.ffn.parameters())))
            out.append(_Target(f"blocks.{i}", "block", i, block, list(block.parameters())))
        return out
    raise ValueError(f"trace knows MLPs (layers, acts) and transformers (blocks); got {type(model).__name__}")


def _hooks(target: _Target, row: list[_Raw], sink: _Sink) -> list:
    """Register ``target``'s module hooks, each appending a ``_Raw`` to ``row``; return their handles."""

    def out_grad(g: torch.Tensor) -> None:
        row.append(_out_grad_raw(g, sink))

    def on_output(module, args, output):
        preact = args[0] if target.preact else None  # an MLP's activation: input = Linear output
        row.append(_output_raw(output, target.bounded, preact, args[0] is output, sink))
        if output.requires_grad:
            output.register_hook(out_grad)  # lives on this tensor only: gone with the graph

    def on_attn_input(module, args):
        with torch.no_grad():
            row.append(_attention_raw(module.logits(args[0]), sink))

    handles = [target.module.register_forward_hook(on_output)]
    if target.attn:
        handles.append(target.module.register_forward_pre_hook(on_attn_input))
    return handles


def _on_grad(grads: dict[int, tuple[slice, int, bool]], sink: _Sink):
    # Runs as each .grad is accumulated, while it is still in cache: faster than after the backward.
    def hook(p: torch.Tensor) -> None:
        grads[id(p)] = _grad_raw(p.grad, sink)
    return hook


def trace(model: nn.Module, inputs, loss: str | Callable[[torch.Tensor], torch.Tensor] = "mean", *,
          train: bool = False) -> pd.DataFrame:
    """One forward and one backward pass of ``model`` on ``inputs``; per-module statistics, forward order.

    Columns are ``COLUMNS`` (see ``STATISTICS``), all statistics float64, NaN where one does not apply.
    Stds are unbiased, as torch's ``.std()`` and the notebook. The model runs in eval mode (no dropout)
    unless ``train``, and every module's training flag is restored afterwards; the model's ``.grad``s
    are set to None first, so the gradients are this pass's alone (they are left in place). Works on
    whatever device the model and inputs are on; off the CPU the statistics cross to the host in one copy.

    Args:
        model: an ``initcore.models`` MLP (rows ``layers.i``) or Transformer (rows ``blocks.i.attn``,
            ``blocks.i.ffn``, ``blocks.i``).
        inputs: a tensor, or a tuple of positional arguments.
        loss: ``"mean"`` (output.mean(), the notebook's), ``"square"`` (mean of output²), ``"random"``
            (mean of output·r, r ~ N(0, 1) drawn from seed 0: use it for models that end in a norm,
            where the other two give no gradient), or a callable from the output to a scalar tensor.
        train: trace in training mode.

    Raises:
        ValueError: unknown ``loss``, or a model that is neither an MLP nor a transformer.

    >>> from initcore.models import MLP
    >>> trace(MLP(4, 4, 2), torch.randn(3, 4))[["module", "kind", "layer"]].values.tolist()
    [['layers.0', 'linear', 0], ['layers.1', 'linear', 1]]
    """
    loss_fn = _loss_fn(loss)
    targets = _targets(model)
    rows: list[list[_Raw]] = [[] for _ in targets]
    grads: dict[int, tuple[slice, int, bool]] = {}  # id(parameter) -> its gradient's moments
    params = {id(p): p for t in targets for p in t.params if p.requires_grad}
    flipped = [m for m in model.modules() if m.training != train]  # restored to (not train) afterwards
    device = next(iter(params.values())).device if params else torch.device("cpu")
    if device.type == "cpu" and _HOST_REDUCTIONS:
        sink: _Sink = _HostSink()
    else:
        sink = _DeviceSink(16 * len(targets) + 2 * len(params), device)  # <= 15 numbers a row, 2 a parameter
    handles = []
    try:
        for m in flipped:
            m.training = train
        for target, row in zip(targets, rows, strict=True):
            handles += _hooks(target, row, sink)
        handles += [p.register_post_accumulate_grad_hook(_on_grad(grads, sink)) for p in params.values()]
        model.zero_grad(set_to_none=True)
        output = model(*inputs) if isinstance(inputs, (tuple, list)) else model(inputs)
        loss_fn(output).backward()
    finally:
        for handle in handles:
            handle.remove()
        for m in flipped:
            m.training = not train
    return _to_frame(targets, rows, grads, sink.to_host())


def _to_frame(targets: list[_Target], rows: list[list[_Raw]], grads: dict[int, tuple[slice, int, bool]],
              host: list[float]) -> pd.DataFrame:
    moments = {key: (host[where], n, centred) for key, (where, n, centred) in grads.items()}
    found = []
    for target, row in zip(targets, rows, strict=True):
        stats = _grads([moments[id(p)] for p in target.params if id(p) in moments])
        for raw in row:
            stats.update(raw.decode(host[raw.where]))
        found.append(stats)
    return pd.DataFrame({"module": [t.name for t in targets], "kind": [t.kind for t in targets],
                         "layer": np.array([t.layer for t in targets], dtype=np.int64),
                         **{k: np.array([s.get(k, math.nan) for s in found], dtype=np.float64) for k in STATISTICS}})


def to_long(frame: pd.DataFrame) -> pd.DataFrame:
    """Tidy form of a ``trace`` frame: columns ``module, statistic, value``, module by module, NaN dropped.

    Every column but ``kind`` and ``layer`` is a statistic (added ones such as ``*_theory`` included).
    """
    values = [c for c in frame.columns if c not in ID_COLUMNS]
    long = frame.melt(id_vars=["module"], value_vars=values, var_name="statistic", ignore_index=False)
    long = long.sort_index(kind="stable").dropna(subset=["value"]).reset_index(drop=True)
    return long.astype({"value": "float64"})[["module", "statistic", "value"]]


_THEORY_ALIASES = {"standard": "xavier_uniform", "scaled": "xavier_uniform", "small_init": "normal:0.02"}


def mlp_theory(config, init: str, *, gain: float | None = None, bias: float = 0.0,
               input_second_moment: float = 1.0) -> pd.DataFrame:
    """Mean-field predictions (``theory.mlp_mean_field``) for an MLP's rows, one per Linear layer.

    σw² of layer l is fan_in·Var(w) of strategy ``init`` (``theory.init_variance``; torch_default is
    U(±1/√fan_in), Var = 1/(3·fan_in); "standard" and "scaled" are Xavier uniform on an MLP, "small_init"
    N(0, 0.02²)). The bias is the constant ``bias``: torch_default's random biases are not modelled.
    Returns columns ``layer`` and ``preact_std_theory, act_std_theory, act_mean_theory, dead_frac_theory,
    saturated_frac_theory`` (NaN where the measured ``saturated_frac`` is NaN).
    """
    cfg = getattr(config, "config", config)
    fans = [(cfg.in_features if i == 0 else cfg.width, cfg.width) for i in range(cfg.depth)]
    if init == "torch_default":
        sigma_w2 = [1.0 / 3.0] * cfg.depth  # kaiming_uniform_(a=sqrt(5)): bound 1/sqrt(fan_in)
    else:
        name = _THEORY_ALIASES.get(init, init)
        if name not in theory.STRATEGIES and not name.startswith("normal:"):
            known = ", ".join([*theory.STRATEGIES, "torch_default", *_THEORY_ALIASES])
            raise ValueError(f"no mean-field prediction for strategy {init!r}; theory knows: {known}")
        sigma_w2 = [fi * theory.init_variance(name, fi, fo, gain) for fi, fo in fans]
    pred = theory.mlp_mean_field(cfg.activation, cfg.depth, sigma_w2, bias, input_second_moment)
    saturated = np.array(pred["saturated_frac"], dtype=np.float64)
    if cfg.activation not in ("tanh", "sigmoid"):
        saturated[:] = np.nan
    saturated[-1] = np.nan  # the last layer is linear
    columns = ("preact_std", "act_std", "act_mean", "dead_frac")
    return pd.DataFrame({"layer": np.arange(cfg.depth), **{f"{c}_theory": pred[c] for c in columns},
                         "saturated_frac_theory": saturated})


def with_theory(frame: pd.DataFrame, predicted: pd.DataFrame) -> pd.DataFrame:
    """``frame`` with each ``X_theory`` column of ``predicted`` placed right after its measured ``X``."""
    out = frame.copy()
    by_layer = predicted.set_index("layer")
    for col in by_layer.columns:
        measured = col.removesuffix("_theory")
        at = out.columns.get_loc(measured) + 1 if measured in out.columns else len(out.columns)
        out.insert(at, col, out["layer"].map(by_layer[col]).to_numpy(dtype=np.float64))
    return out


__all__ = ["COLUMNS", "ID_COLUMNS", "LOSSES", "STATISTICS", "mlp_theory", "to_long", "trace", "with_theory"]
