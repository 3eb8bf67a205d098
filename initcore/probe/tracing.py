"""``trace``: one forward and one backward pass of any model, per-row statistics into a DataFrame.

Rows are the measurement points of ``initcore.probe.select`` (the model's declarations, or a selection).
Hooks reduce what they see at once (``initcore.probe.reduce``); no activation is kept unless asked for.
A module called more than once in a pass gives a row per call: the first is named after the module, the
k-th (k >= 1, counting from 0) ``name#k``; its parameters' gradients, which accumulate over the calls,
are on the first row. Attention statistics come from ``scaled_dot_product_attention`` calls
(``initcore.probe.attention``): they join the row of the innermost point declared ``attention``
(``Measure(attention=True)``: initcore's ``blocks.i.attn``) that made the call; otherwise each call gets
a row of its own, of kind "attn", named ``<module>:sdpa`` after the module whose forward made it
(``h.0.attn:sdpa``; a second call in one pass ``h.0.attn:sdpa#1``), beside that module's own row
when it is selected: no name stands for two things. A model that declares its rows itself
(``MEASURE`` on the model) and none of them ``attention`` (initcore's MLP) makes no call to watch: its
pass runs without the watch. A model that only contains such a model is watched as any other.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from initcore.probe import attention as attn
from initcore.probe import reduce
from initcore.probe.select import Point, Selection, _plain, block_indices, first_tensor, layer_of, points

ID_COLUMNS = ("module", "kind", "layer")
STATISTICS: dict[str, str] = {
    "act_mean": "mean of the row's output (an MLP row: after the activation)",
    "act_std": "std of the output (torch's unbiased .std(), as the notebook)",
    "act_rms": "root mean square of the output, sqrt(mean(a^2))",
    "act_min": "smallest output value",
    "act_max": "largest output value",
    "dead_frac": "fraction of output entries exactly 0",
    "saturated_frac": "fraction with |a| > 0.9; bounded activations (tanh, sigmoid) only, else NaN",
    "nan_count": "number of NaN output entries",
    "inf_count": "number of +-Inf output entries",
    "preact_mean": "mean of the pre-activation (an MLP row: the Linear's output; an activation module: its input)",
    "preact_std": "std of the pre-activation",
    "grad_norm": "L2 norm of the loss gradient wrt the row's parameters (an MLP row: its weight)",
    "grad_mean": "mean of those gradient entries",
    "grad_std": "std of those gradient entries (unbiased)",
    "out_grad_norm": "L2 norm of the loss gradient wrt the row's output",
    "logit_std": "attention: std of the finite pre-softmax logits",
    "attn_entropy": "attention: softmax entropy in nats, mean over batch, heads and queries",
    "attn_entropy_norm": "attention: per-query entropy / log(keys it sees), mean over queries seeing >= 2 keys",
    "attn_max": "attention: largest attention weight of a query, mean over batch, heads and queries",
    "act_change_rms": "rms of (output - the reference's output for the row), with trace(..., reference=...)",
}
COLUMNS = (*ID_COLUMNS, *STATISTICS)
SDPA_SUFFIX = ":sdpa"  # an attention row's name: the calling module's, and this
LOSSES = ("mean", "square", "random")
# Named selections of statistics. "lean" is the cheapest useful trace: each output's mean, std and rms
# (one sum and one sum of squares) and no gradient statistic, with the backward pass still run; it is
# what bench/test_probe_overhead.py times against a bare forward+backward.
PRESETS: dict[str, tuple[str, ...]] = {
    "all": tuple(s for s in STATISTICS if s != "act_change_rms"),
    "forward": ("act_mean", "act_std", "act_rms", "act_min", "act_max", "dead_frac", "saturated_frac", "nan_count",
                "inf_count", "preact_mean", "preact_std", *attn.ATTENTION_STATISTICS),
    "lean": ("act_mean", "act_std", "act_rms"),
}
PRESETS["precision"] = PRESETS["all"]  # and frame.attrs["precision"]: initcore.probe.precision

_HOST_REDUCTIONS = True  # tests switch it off to run, on a CPU, the path every other device takes
# Inside the hooks, torch functions skip the attention watch's TorchFunctionMode: ~10 tensor calls per
# hook would each go through it (211 of a 10-layer MLP trace's 230 dispatches), ~8% of a bare pass.
_QUIET = torch._C.DisableTorchFunction()


class Outputs(dict):
    """Row name -> detached output, kept by ``trace(..., keep_outputs=True)`` in ``frame.attrs["outputs"]``.

    pandas deep-copies ``attrs`` along with a frame; this dict is handed on as it is instead of copying
    every tensor each time.
    """

    def __deepcopy__(self, memo) -> Outputs:
        return self


def _loss_fn(loss) -> Callable[[torch.Tensor], torch.Tensor] | None:
    if loss is None or callable(loss):
        return loss
    if loss == "mean":
        return lambda out: out.mean()
    if loss == "square":
        return lambda out: out.float().square().mean()
    if loss == "random":
        return _random_projection
    raise ValueError(f"unknown loss {loss!r}; valid: {', '.join(LOSSES)}, a callable output -> scalar, or None")


def _random_projection(out: torch.Tensor) -> torch.Tensor:
    # A final LayerNorm (weight 1, bias 0) makes mean(out) 0 and mean(out^2) ~1 whatever its input, so
    # "mean" and "square" give transformers no gradient; a fixed random direction r ~ N(0, 1) does.
    r = torch.randn(out.shape, generator=torch.Generator().manual_seed(0)).to(out.device, out.dtype)
    return (out * r).mean()


def statistics_of(statistics: str | Iterable[str]) -> frozenset[str]:
    """The statistic names that ``statistics`` (a preset name, or names of ``STATISTICS``) stands for."""
    if isinstance(statistics, str):
        if statistics not in PRESETS:
            raise ValueError(f"unknown statistics preset {statistics!r}; valid: {', '.join(PRESETS)}, "
                             f"or a list of names of initcore.probe.STATISTICS")
        return frozenset(PRESETS[statistics])
    names = frozenset(statistics)
    unknown = sorted(names - set(STATISTICS))
    if unknown or not names:
        raise ValueError(f"unknown statistics {unknown or '(none given)'}; valid: {', '.join(STATISTICS)}, "
                         f"or a preset: {', '.join(PRESETS)}")
    return names


class _Row:
    __slots__ = ("point", "name", "kind", "layer", "raws", "seq", "pending")

    def __init__(self, point: Point | None, name: str, kind: str, layer: int, seq: int) -> None:
        self.point, self.name, self.kind, self.layer, self.seq = point, name, kind, layer, seq
        self.raws: list[reduce.Raw] = []
        self.pending = True  # its module's output is still to come


class _Recorder:
    """The rows of one pass: created as their modules run, one per call (see the module docstring)."""

    def __init__(self, sink: reduce.Sink, wants: reduce.Wants, unpack: bool, keep: Outputs | None,
                 reference: Mapping[str, torch.Tensor] | None) -> None:
        self.sink, self.wants, self.unpack, self.keep, self.reference = sink, wants, unpack, keep, reference
        self.rows: list[_Row] = []
        self.calls: dict[int, list[_Row]] = {}  # id(point or module) -> its rows, one per call
        self.seq = itertools.count()

    def current(self, key: int, point: Point | None, name: str, kind: str, layer: int) -> _Row:
        """The row of the call in progress of ``key``'s module, a new one if its last call has finished."""
        rows = self.calls.setdefault(key, [])
        if rows and rows[-1].pending:
            return rows[-1]
        row = _Row(point, name if not rows else f"{name}#{len(rows)}", kind, layer, next(self.seq))
        rows.append(row)
        self.rows.append(row)
        return row

    def hooks(self, point: Point, preact_from: dict[int, list[Point]]) -> list:
        """Register ``point``'s module hooks; return their handles."""
        wants, sink, key = self.wants, self.sink, id(point)

        def row() -> _Row:
            return self.current(key, point, point.name, point.kind, point.layer)

        def on_output(module, args, output):
            with _QUIET:
                _on_output(module, output)

        def _on_output(module, output):
            target = row()
            target.pending = False
            out = first_tensor(output, point.output) if self.unpack or isinstance(output, torch.Tensor) else None
            if out is None:
                if self.unpack or isinstance(output, torch.Tensor):
                    raise ValueError(f"module {point.module_name!r} ({type(module).__name__}) returned no tensor to "
                                     f"measure (got {type(output).__name__}); select modules that return "
                                     f"tensors, or declare which output to measure (Measure(output=...))")
                return
            if not out.is_floating_point():
                raise ValueError(f"module {point.module_name!r} ({type(module).__name__}) returned a "
                                 f"{out.dtype} tensor; the probe measures floating-point outputs")
            if wants.forward:
                reference = None
                if wants.change:
                    reference = self.reference.get(target.name)
                    if reference is not None and reference.shape != out.shape:
                        raise ValueError(f"reference output of {target.name!r} has shape {tuple(reference.shape)}, "
                                         f"the output now {tuple(out.shape)}")
                target.raws.append(reduce.output_raw(out, point.bounded, sink, wants, reference))
            if wants.preact and point.preact is module:  # the module's own output is its pre-activation
                target.raws.append(_SAME)
            if self.keep is not None:
                self.keep[target.name] = out.detach().clone()
            if wants.out_grad and out.requires_grad:
                out.register_hook(lambda g: target.raws.append(reduce.out_grad_raw(g, sink)))

        handles = [point.module.register_forward_hook(on_output)]
        if wants.preact and point.preact == "input":
            def on_input(module, args):
                with _QUIET:
                    _on_input(args)

            def _on_input(args):
                x = args[0] if args else None
                if isinstance(x, torch.Tensor) and x.is_floating_point():
                    row().raws.append(reduce.preact_raw(x, sink))  # before an in-place activation overwrites it

            handles.append(point.module.register_forward_pre_hook(on_input))
        elif wants.preact and isinstance(point.preact, nn.Module) and point.preact is not point.module:
            preact_from.setdefault(id(point.preact), []).append(point)
        return handles

    def preact_hooks(self, module: nn.Module, owners: list[Point]) -> Any:
        """One forward hook on a module whose output is the pre-activation of ``owners``' rows."""
        sink = self.sink

        def on_output(mod, args, output):
            with _QUIET:
                _on_preact(output)

        def _on_preact(output):
            out = first_tensor(output)
            if out is None:
                return
            raw = reduce.preact_raw(out, sink)  # now, before an in-place activation overwrites it
            for point in owners:
                self.current(id(point), point, point.name, point.kind, point.layer).raws.append(raw)

        return module.register_forward_hook(on_output)

    def attention(self, owner_of: Callable[[nn.Module | None], Point | None], names: dict[int, str],
                  layer_of: Callable[[str], int]):
        sink = self.sink

        def on_call(module: nn.Module | None, att: torch.Tensor) -> None:
            with torch.no_grad():
                raw = attn.attention_raw(att, sink)
            point = owner_of(module)
            if point is not None:
                self.current(id(point), point, point.name, point.kind, point.layer).raws.append(raw)
                return
            name = names.get(id(module), "") if module is not None else ""
            # keyed by the module, a selected point's row by the point: the two rows stay apart
            target = self.current(id(module), None, f"{name or '(model)'}{SDPA_SUFFIX}", "attn", layer_of(name))
            target.raws.append(raw)
            target.pending = False

        return on_call


_SAME = reduce.Raw(lambda v: {}, slice(0, 0))  # a row whose pre-activation is its output: _to_frame copies it


def _call(model: nn.Module, inputs):
    if isinstance(inputs, Mapping):
        return model(**inputs)
    return model(*inputs) if isinstance(inputs, (tuple, list)) else model(inputs)


def _device(model: nn.Module, inputs) -> torch.device:
    p = next(model.parameters(), None)
    if p is not None:
        return p.device
    values = inputs.values() if isinstance(inputs, Mapping) else inputs if isinstance(inputs, (tuple, list)) \
        else (inputs,)
    return next((v.device for v in values if isinstance(v, torch.Tensor)), torch.device("cpu"))


def trace(model: nn.Module, inputs, loss: str | Callable | None = "mean", *, select: Selection = None,
          statistics: str | Iterable[str] = "all", train: bool | None = False, unpack: bool = True,
          keep_outputs: bool = False, reference: Mapping[str, torch.Tensor] | None = None,
          formats: str | torch.dtype | Iterable | None = None, loss_scale: float | None = None) -> pd.DataFrame:
    """One forward and one backward pass of ``model`` on ``inputs``; per-row statistics, in the order rows ran.

    Columns are ``COLUMNS`` (see ``STATISTICS``), all statistics float64, NaN where one does not apply
    or was not asked for. Stds are unbiased, as torch's ``.std()`` and the notebook. The model runs in
    eval mode (no dropout) unless ``train`` (None: as it is), and every module's training flag, and in
    training mode every buffer (BatchNorm's running statistics), is restored afterwards; the model's
    ``.grad``s are set to None first, so the gradients are this pass's alone (they are left in place).
    Works on whatever device the model and inputs are on; off the CPU the statistics cross to the host
    in one copy.

    Args:
        model: any ``nn.Module``. Rows: its modules' ``MEASURE`` declarations (initcore's MLP: rows
            ``layers.i``; Transformer: ``blocks.i.attn``, ``blocks.i.ffn``, ``blocks.i``), or ``select``.
        inputs: a tensor, a tuple of positional arguments, or a dict of keyword arguments (``model(**inputs)``).
        loss: ``"mean"`` (the notebook's), ``"square"`` (mean of output²), ``"random"`` (mean of
            output·r, r ~ N(0, 1) drawn from seed 0: for models that end in a norm, where the other two
            give no gradient), a callable from the output tensor to a scalar, or None: forward only
            (under ``torch.no_grad``; no gradient statistics). The output tensor is the first floating
            tensor of what the model returns (a Hugging Face output's ``logits``, or its ``loss`` if it has one).
        select: which modules are rows; see ``initcore.probe.select`` (default: the declarations, else
            every module owning parameters and every activation module).
        statistics: a preset (``PRESETS``: "all", "forward", "lean", "precision": "all" and the table of
            ``initcore.probe.precision`` in ``frame.attrs["precision"]``) or names of ``STATISTICS``, with
            "precision" among them for the table beside those (alone: beside "lean"); the hooks take only
            what these need.
        train: trace in training mode (True), eval mode (False), or as the model is (None).
        unpack: measure the first floating tensor of a tuple, list, dict or dataclass output; False
            measures bare tensor outputs only (other modules give no output statistics).
        keep_outputs: keep every row's output (detached) in ``frame.attrs["outputs"]`` (``Outputs``).
        reference: row name -> an earlier output (``keep_outputs``' dict): adds ``act_change_rms``.
        formats: with ``statistics="precision"``: a format, several, or None: all of ``precision.FORMATS``.
        loss_scale: with ``statistics="precision"``: what gradients are multiplied by before their unscaled
            cast (> 0; None: 1).

    Raises:
        ValueError: unknown ``loss`` or statistics, a bad selection (see ``select.points``), a selected
            module that returns no tensor, or a reference of another shape; an unknown format, one this
            torch lacks, or a loss scale that is not a positive number (each listing what is valid), or
            either given without "precision" in ``statistics``.

    >>> from initcore.models import MLP
    >>> trace(MLP(4, 4, 2), torch.randn(3, 4))[["module", "kind", "layer"]].values.tolist()
    [['layers.0', 'linear', 0], ['layers.1', 'linear', 1]]
    """
    named = not isinstance(statistics, str) and isinstance(statistics, Iterable)
    if statistics == "precision" or (named and "precision" in (statistics := list(statistics))):
        from initcore.probe import precision  # every statistic (or those named), and the precision table

        rest = "all" if isinstance(statistics, str) else [s for s in statistics if s != "precision"] or "lean"
        return precision.trace(model, inputs, loss, formats=formats, loss_scale=1.0 if loss_scale is None
                               else loss_scale, select=select, statistics=rest, train=train, unpack=unpack,
                               keep_outputs=keep_outputs, reference=reference)
    if formats is not None or loss_scale is not None:
        raise ValueError(f"formats and loss_scale are the precision table's: pass statistics=\"precision\" "
                         "(or \"precision\" among the names) "
                         f"(got statistics={statistics!r})")
    loss_fn = _loss_fn(loss)
    wanted = statistics_of(statistics) | ({"act_change_rms"} if reference is not None else set())
    if loss_fn is None:
        wanted -= {"grad_norm", "grad_mean", "grad_std", "out_grad_norm"}
    wants = reduce.Wants.of(wanted, reference is not None)
    by_name = dict(model.named_modules())
    chosen = points(model, select, modules=by_name)
    modules = {id(m): (n, m) for n, m in by_name.items()}
    names = {key: n for key, (n, _) in modules.items()}
    device = _device(model, inputs)
    params = {id(p): p for pt in chosen for p in pt.params if p.requires_grad} if wants.grads else {}
    if device.type == "cpu" and _HOST_REDUCTIONS:
        sink: reduce.Sink = reduce.HostSink()
    else:
        sink = reduce.DeviceSink(16 * len(chosen) + 2 * len(params), device)  # <= 15 numbers a row, 2 a parameter
    keep = Outputs() if keep_outputs else None
    recorder = _Recorder(sink, wants, unpack, keep, reference)
    grads: dict[int, tuple[slice, int, bool | None]] = {}
    flipped = [m for _, m in modules.values() if train is not None and m.training != train]
    buffers = _buffers(model) if train or (train is None and model.training) else None
    handles = []
    try:
        for m in flipped:  # the flag alone, as Module.train sets it, without Module.__setattr__'s checks (~4 us each)
            object.__setattr__(m, "training", train)
        preact_from: dict[int, list[Point]] = {}
        for point in chosen:
            handles += recorder.hooks(point, preact_from)
        handles += [recorder.preact_hooks(modules[key][1], owners) for key, owners in preact_from.items()]
        norm_only = wants.grads == 1

        def on_grad(p: torch.Tensor) -> None:  # as each .grad is accumulated, while it is still in cache
            grads[id(p)] = reduce.grad_raw(p.grad, sink, norm_only)

        handles += [p.register_post_accumulate_grad_hook(on_grad) for p in params.values()]
        model.zero_grad(set_to_none=True)
        # the model itself declares its rows and none is attention: it makes no call to watch
        unwatched = bool(_plain(model, "MEASURE")) and all(p.declared and not p.attention for p in chosen)
        watch = attn.SDPAWatch(set(names), recorder.attention(_attention_owner(chosen, names), names,
                                                              _lazy_layers(model))) \
            if wants.attention and not unwatched else None
        with torch.set_grad_enabled(loss_fn is not None and torch.is_grad_enabled()):
            if watch is not None:
                with watch:
                    output = _call(model, inputs)
            else:
                output = _call(model, inputs)
        if loss_fn is not None:
            out = first_tensor(output)
            if out is None:
                raise ValueError(f"{type(model).__name__} returned no floating-point tensor to take a loss of "
                                 f"(got {type(output).__name__}); pass loss=<callable> or loss=None")
            loss_fn(out).backward()
    finally:
        for handle in handles:
            handle.remove()
        for m in flipped:
            object.__setattr__(m, "training", not train)
        if buffers is not None:
            _restore(model, buffers)
    frame = _to_frame(recorder.rows, chosen, grads, sink.to_host(), wanted)
    if keep is not None:
        frame.attrs["outputs"] = keep
    return frame


def _attention_owner(chosen: list[Point], names: dict[int, str]) -> Callable[[nn.Module | None], Point | None]:
    """module making an SDPA call -> the declared point whose row takes its statistics, or None: a row of
    its own (see the module docstring)."""
    declared = [(p.module_name, p) for p in chosen if p.attention]

    def owner(module: nn.Module | None) -> Point | None:
        if module is None or not declared:
            return None
        name = names.get(id(module), "")
        inside = [(len(n), p) for n, p in declared if name == n or name.startswith(n + ".") or not n]
        return max(inside, key=lambda t: t[0])[1] if inside else None

    return owner


def _lazy_layers(model: nn.Module) -> Callable[[str], int]:
    """name -> layer (``select.layer_of``), the model's blocks found at the first attention row that needs them."""
    found: list[dict[str, int]] = []

    def layer(name: str) -> int:
        if not found:
            found.append(block_indices(model))
        return layer_of(name, found[0])

    return layer


def _buffers(model: nn.Module) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(b, b.detach().clone()) for b in model.buffers()]


def _restore(model: nn.Module, saved: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
    with torch.no_grad():
        for b, before in saved:
            b.copy_(before)


def _to_frame(rows: list[_Row], chosen: list[Point], grads: dict[int, tuple[slice, int, bool | None]],
              host: list[float], wanted: frozenset[str]) -> pd.DataFrame:
    moments = {key: (host[where], n, centred) for key, (where, n, centred) in grads.items()}
    first = {id(r.point): r for r in reversed(rows) if r.point is not None}  # each point's first call
    found: list[tuple[int, _Row | Point, dict[str, float]]] = []
    for row in rows:
        stats: dict[str, float] = {}
        same = False
        for raw in row.raws:
            if raw is _SAME:
                same = True
                continue
            stats.update(raw.decode(host[raw.where]))
        if same and "act_mean" in stats:
            stats.update(preact_mean=stats["act_mean"], preact_std=stats["act_std"])
        if row.point is not None and first.get(id(row.point)) is row:
            stats.update(_grads(row.point, moments))
        found.append((row.seq, row, stats))
    late = len(rows)
    for point in chosen:  # a point whose module never ran (a Linear applied functionally) keeps its gradients
        if id(point) not in first:
            stats = _grads(point, moments)
            if stats:
                found.append((late, point, stats))
                late += 1
    found.sort(key=lambda t: t[0])
    column = {k: j for j, k in enumerate(STATISTICS) if k in wanted}
    values = np.full((len(found), len(STATISTICS)), math.nan)
    for i, (_, _, stats) in enumerate(found):
        for k, v in stats.items():
            j = column.get(k)
            if j is not None:
                values[i, j] = v
    frame = pd.DataFrame(values, columns=list(STATISTICS))  # one float64 block: a third less time than by column
    frame.insert(0, "layer", np.array([r.layer for _, r, _ in found], dtype=np.int64))
    frame.insert(0, "kind", pd.array([r.kind for _, r, _ in found], dtype=_TEXT))  # typed: no inference
    frame.insert(0, "module", pd.array([r.name for _, r, _ in found], dtype=_TEXT))
    return frame


_TEXT = pd.Series(["text"]).dtype  # the dtype pandas gives strings (str in pandas 3, object before)


def _grads(point: Point, moments: dict) -> dict[str, float]:
    return reduce.merge_grads([moments[id(p)] for p in point.params if id(p) in moments])


__all__ = ["COLUMNS", "ID_COLUMNS", "LOSSES", "PRESETS", "SDPA_SUFFIX", "STATISTICS", "Outputs", "statistics_of",
           "trace"]
