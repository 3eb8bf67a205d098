"""Traces over training steps: the probe's frame after every optimizer step, and what the steps changed.

``trace_steps(model, data, optimizer, steps, loss)`` traces the model with ``initcore.probe.trace`` at
step 0 (init) and after each of ``steps`` optimizer steps, on one fixed batch, and adds to every probe
row the change of its output since step 0 (``act_change_rms``, rms of h_t - h_0), to every parameter a
row with its update (rms of W_t - W_0, and that over rms of W_0), and a row for the prediction the loss
sees (kind ``output``): the quantities of the muP papers' coordinate checks (Yang et al., 2021).

When the step's batch is the measured one (a fixed batch, the default), the trace's own backward pass
makes the step's gradients, so a step costs one forward and one backward pass. Off the CPU the probe
copies its numbers to the host once per pass; the update and output sizes computed here stay on the
device until one copy at the end of the run.

Opt-in (``formats=``, or ``statistics="precision"`` for every format), ``frame.attrs["precision"]`` holds
``initcore.probe.precision``'s table at every step, with ``step`` as its first column: the forward
outputs, output gradients, weights and weight gradients of each row, and each weight's update (tensor
``"update"``: W_{t+1} - W_t, what the optimizer adds at the step t + 1 takes, Adam's lr·m/sqrt(v), the
quantity that shrinks as training settles); ``initcore.probe.headroom`` flags rows whose headroom falls.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any, NamedTuple

import numpy as np
import pandas as pd
import torch
from torch import nn

from initcore import probe
from initcore.probe import precision

PARAM_STATISTICS: dict[str, str] = {
    "param_rms": "rms of the parameter now, W_t",
    "update_rms": "rms of W_t - W_0: how far the steps moved it",
    "update_ratio": "update_rms / rms of W_0 (NaN where W_0 is 0)",
}
OUTPUT_ROW = "output"  # the row of the prediction the loss sees (kind "output")
UPDATE = "update"  # the precision table's tensor kind of W_{t+1} - W_t


class Batch(NamedTuple):
    """One batch: what the model takes, and what the loss compares its prediction with."""

    inputs: Any  # a tensor, a tuple of positional arguments, or a dict of keyword arguments
    targets: Any


Loss = Callable[[torch.Tensor, Any], torch.Tensor]  # (prediction, targets) -> scalar


def _batches(data: Batch | Iterable[Batch], steps: int) -> Iterator[Batch]:
    if isinstance(data, Batch):
        while True:
            yield data
    it = iter(data)
    for t in range(steps):
        try:
            batch = next(it)
        except StopIteration:
            raise ValueError(f"data ran out after {t} batches; {steps} steps need {steps}") from None
        if not isinstance(batch, Batch):
            raise ValueError(f"data must yield initcore.steps.Batch(inputs, targets), got {type(batch).__name__}")
        yield batch


def _call(model: nn.Module, inputs):
    if isinstance(inputs, dict):
        return model(**inputs)
    return model(*inputs) if isinstance(inputs, (tuple, list)) else model(inputs)



def trace_steps(model: nn.Module, data: Batch | Iterable[Batch], optimizer: torch.optim.Optimizer, steps: int,
                loss: Loss, *, readout: Callable[[torch.Tensor], torch.Tensor] | None = None,
                measure_on: Batch | None = None, select=None, statistics="all", formats=None,
                loss_scale: float = 1.0) -> pd.DataFrame:
    """Probe frames of ``model`` at step 0 and after each of ``steps`` steps of ``optimizer``, one frame.

    Args:
        model: any model ``initcore.probe.trace`` takes (its rows: see there).
        data: one ``Batch``, used for every step, or an iterable of at least ``steps`` batches.
        optimizer: a ``torch.optim`` optimizer over ``model``'s parameters (``init.param_groups`` gives
            muP's groups).
        steps: how many optimizer steps (>= 0).
        loss: ``loss(prediction, targets)`` -> a scalar tensor.
        readout: the prediction from the model's output (default: the output itself); e.g. the first
            k columns of an MLP whose last layer is as wide as the others.
        measure_on: the batch every step is measured on (default: the first batch), so that h_t - h_0
            compares outputs of one input. A step on another batch costs a second forward-backward pass.
        select, statistics: passed to ``probe.trace``; ``statistics="precision"``: "all", and the precision
            table of every format (``formats=None``).
        formats: opt-in: a format, several (``precision.FORMATS``) or None (no precision table unless
            ``statistics="precision"``): ``frame.attrs["precision"]`` is ``precision.trace``'s table at every
            step (``step`` first), plus, at steps 0 .. steps - 1, tensor ``"update"`` (``UPDATE``) for each
            parameter a row holds: W_{t+1} - W_t, the step t + 1's update, on that row.
        loss_scale: gradients' factor in the precision table (``precision.trace``).

    Returns:
        The probe's columns plus ``step`` (0 .. steps; row t is the model after t steps, its gradients
        those of the step t + 1 takes), ``act_change_rms`` (0 at step 0), and ``PARAM_STATISTICS`` on rows
        of kind ``param`` (one per trainable parameter, ``module`` its name, ``layer`` the first index
        in the name, -1 if none); row ``output`` (kind ``output``) carries the prediction's
        ``act_rms`` and ``act_change_rms``. The probe runs the model in eval mode (dropout off), so
        that the change is the steps' own, not dropout's.

    Raises:
        ValueError: steps negative, data that is not batches or runs out; an unknown format or a bad loss
            scale (``precision.formats_of``, ``check_loss_scale``); the probe's own errors.
    """
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise ValueError(f"steps must be a non-negative integer, got {steps!r}")
    if isinstance(statistics, str) and statistics == "precision":
        statistics, formats = "all", precision.FORMATS if formats is None else formats
    fmts = precision.formats_of(formats) if formats is not None else ()
    factor, named = precision.check_loss_scale(loss_scale), [f.name for f in fmts]
    readout = readout or (lambda out: out)
    batches = _batches(data, steps)
    first = next(batches) if steps else (data if isinstance(data, Batch) else None)
    measured = measure_on or first
    if measured is None:
        measured = next(iter(data), None)
        if not isinstance(measured, Batch):
            raise ValueError("data must be an initcore.steps.Batch(inputs, targets) or yield them")
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    with torch.no_grad():
        w0 = [p.detach().clone() for _, p in params]
        w0_norm = [torch.linalg.vector_norm(w) for w in w0]
        zero = torch.zeros((), device=w0[0].device) if params else None
    predictions: list[torch.Tensor] = []  # the measured batch's prediction at each step

    def measured_loss(out: torch.Tensor) -> torch.Tensor:
        pred = readout(out)
        predictions.append(pred.detach().clone())
        return loss(pred, measured.targets)

    # per step, as 0-d tensors stacked on the device: the norms of W_t and of W_t - W_0 per parameter, then of
    # the prediction and its change (float32 norms: 1e-6 relative, plenty); divided into rms on the host
    frames, numbers = [], []
    tables: list[pd.DataFrame] = []  # per step, the precision table (formats asked for)
    updates: list[pd.DataFrame] = []  # per step: the precision table of W_{t+1} - W_t, parameter by parameter
    reference = None
    batch = first
    for t in range(steps + 1):
        if fmts:
            frame = precision.trace(model, measured.inputs, measured_loss, formats=named, loss_scale=factor,
                                    select=select, statistics=statistics, keep_outputs=t == 0,
                                    reference=reference)
            tables.append(frame.attrs.pop("precision"))
        else:
            frame = probe.trace(model, measured.inputs, measured_loss, select=select, statistics=statistics,
                                keep_outputs=t == 0, reference=reference)
        if t == 0:
            reference = frame.attrs.pop("outputs")
            frame["act_change_rms"] = 0.0
        frame.insert(0, "step", t)
        frames.append(frame)
        with torch.no_grad():
            pred = predictions[-1]
            moved = [torch.dist(p, w) if t else zero for (_, p), w in zip(params, w0, strict=True)]
            numbers.append(torch.stack([*(torch.linalg.vector_norm(p) for _, p in params), *moved,
                                        torch.linalg.vector_norm(pred), torch.dist(pred, predictions[0])]))
        if t == steps:
            break
        if batch is not measured:
            optimizer.zero_grad(set_to_none=True)
            loss(readout(_call(model, batch.inputs)), batch.targets).backward()
        if fmts:
            with torch.no_grad():
                before = [p.detach().clone() for _, p in params]
        optimizer.step()
        if fmts:
            with torch.no_grad():
                moved = nn.ParameterList([nn.Parameter(p.detach() - b, requires_grad=False)
                                          for (_, p), b in zip(params, before, strict=True)])
                updates.append(precision.parameters(moved, named))  # one table, one copy, a step
            del before, moved
        batch = next(batches, None)
    n = len(params)
    host = torch.cat([torch.stack(numbers).flatten()] + ([torch.stack(w0_norm)] if params else []))
    host = host.double().cpu().numpy()  # the run's one copy of its own numbers
    sizes = np.sqrt(np.maximum([p.numel() for _, p in params] * 2 + [pred.numel()] * 2, 1))
    rms = host[: len(numbers) * (2 * n + 2)].reshape(len(numbers), 2 * n + 2) / sizes
    frame = _to_frame(frames, params, rms, host[len(numbers) * (2 * n + 2):] / sizes[:n])
    if fmts:
        frame.attrs["precision"] = _precision_table(tables, updates, [name for name, _ in params])
    return frame


def _precision_table(tables: list[pd.DataFrame], updates: list[pd.DataFrame], names: list[str]) -> pd.DataFrame:
    """The steps' precision tables, each followed by its updates' rows, in one frame (``step`` first).

    An update has rows where its parameter has weight rows in the step's table (the rows ``precision.trace``
    measures, each parameter once): the same module, kind and layer, tensor ``UPDATE``."""
    parts = []
    for t, table in enumerate(tables):
        parts.append(table.assign(step=t))
        if t < len(updates):
            weights = table[table["tensor"] == "weight"].drop_duplicates("param").set_index("param")
            param = np.array(names, dtype=object)[updates[t]["param"].astype(int).to_numpy()]  # "0", "1", ...
            held = pd.Index(param).isin(weights.index)
            where = weights.reindex(param[held])
            moved = updates[t][held].assign(module=where["module"].to_numpy(), kind=where["kind"].to_numpy(),
                                            layer=where["layer"].to_numpy(np.int64), tensor=UPDATE,
                                            param=param[held], step=t)
            parts.append(moved)
    out = pd.concat(parts, ignore_index=True)
    return out[["step", *precision.COLUMNS]]


def _first_index(name: str) -> int:
    return next((int(part) for part in name.split(".") if part.isdigit()), -1)


def _to_frame(frames: list[pd.DataFrame], params: list[tuple[str, nn.Parameter]], numbers: np.ndarray,
              w0_rms: np.ndarray) -> pd.DataFrame:
    """One frame: per step, the probe's rows, then ``output``, then the parameters (every statistic float64).

    Built column by column in numpy: ``pd.concat`` of frames with different columns aligns indexes and
    costs more than a trace of a small model (20 ms against 3 here).
    """
    n, steps = len(params), len(frames)
    names = [name for name, _ in params]
    traced = pd.concat(frames, ignore_index=True)  # the same columns at every step: pandas' fast path
    update = numbers[:, n:2 * n]
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(w0_rms > 0, update / w0_rms, np.nan)
    blank = np.full((steps, n), np.nan)
    # per step: the output row, then the parameters' rows
    extra = {
        "step": np.repeat(np.arange(steps), n + 1),
        "module": np.tile(np.array([OUTPUT_ROW, *names], dtype=object), steps),
        "kind": np.tile(np.array(["output"] + ["param"] * n, dtype=object), steps),
        "layer": np.tile(np.array([-1, *(_first_index(name) for name in names)], dtype=np.int64), steps),
        "act_rms": np.column_stack([numbers[:, 2 * n], blank]).ravel(),
        "act_change_rms": np.column_stack([numbers[:, 2 * n + 1], blank]).ravel(),
        **{c: np.column_stack([np.full(steps, np.nan), v]).ravel()
           for c, v in (("param_rms", numbers[:, :n]), ("update_rms", update), ("update_ratio", ratio))},
    }
    columns = [*traced.columns, *(c for c in extra if c not in traced.columns)]
    order = np.argsort(np.concatenate([traced["step"].to_numpy(), extra["step"]]), kind="stable")
    out = {}
    for c in columns:
        mine = extra[c] if c in extra else np.full(len(extra["step"]), np.nan)
        theirs = traced[c].to_numpy() if c in traced.columns else np.full(len(traced), np.nan)
        out[c] = np.concatenate([theirs, mine])[order]
    return pd.DataFrame(out)
