"""The span of each traced tensor on a log2 scale: its largest |x|, a low quantile and the smallest of its
nonzero |x|, for the report's figure of every row against the formats' ranges (``initcore.report.precision``).

The precision table (``initcore.probe.precision``) counts what a cast loses at each format's boundaries; it
keeps amax, mean and std but not how far down a tensor's small entries reach, which is what a figure of
scales against smallest normals and subnormals needs. Same rows and tensors as ``precision.trace``: each
row's output and the gradient wrt it, each parameter (once, on the innermost row holding it) and its
gradient.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd
import torch
from torch import nn

from initcore.probe.select import Selection, first_tensor, owned_params, points

QUANTILE = 0.01  # "low": the 1% quantile of the nonzero |x|, steadier than the smallest, one entry
COLUMNS = ("module", "kind", "layer", "tensor", "param", "n", "nonzero", "amax", "low", "smallest")


def span_of(x: torch.Tensor, quantile: float = QUANTILE) -> tuple[float, float, float, float, float]:
    """(n, nonzero, amax, the ``quantile`` of the nonzero |x| (lower entry: no interpolation), the smallest
    nonzero |x|), in float32 as a cast would see it; NaN for the last three with no nonzero entry."""
    a = np.abs(x.detach().float().reshape(-1).cpu().numpy())
    n = a.size
    a = a[a != 0]
    if a.size == 0:
        return float(n), 0.0, np.nan, np.nan, np.nan
    k = int(quantile * (a.size - 1))
    part = np.partition(a, (0, k)) if k else np.partition(a, 0)
    return float(n), float(a.size), float(a.max()), float(part[k]), float(part[0])


def spans(model: nn.Module, inputs, loss: str | Callable | None = "random", *, select: Selection = None,
          quantile: float = QUANTILE, train: bool | None = False) -> pd.DataFrame:
    """One forward and backward pass (``initcore.probe.trace``'s, "lean"), and per row and tensor (``COLUMNS``;
    tensor as ``precision.TENSORS``) the span of its entries.

    Raises:
        ValueError: a quantile outside [0, 1); what ``probe.trace`` raises.
    """
    from initcore.probe import tracing

    if not 0 <= quantile < 1:
        raise ValueError(f"quantile must be in [0, 1), got {quantile!r}")
    chosen = points(model, select)
    found: list[tuple] = []
    calls: dict[int, int] = {}

    def hook(point):
        def on_output(module, args, output):
            out = first_tensor(output, point.output)
            if out is None or not out.is_floating_point():
                return
            k = calls.get(id(point), 0)
            calls[id(point)] = k + 1
            ids = (f"{point.name}#{k}" if k else point.name, point.kind, point.layer)
            found.append((*ids, "output", "", *span_of(out, quantile)))
            if out.requires_grad:
                out.register_hook(lambda g: found.append((*ids, "output_grad", "", *span_of(g, quantile))))
        return on_output

    handles = [p.module.register_forward_hook(hook(p)) for p in chosen]
    try:
        tracing.trace(model, inputs, loss, select=select, statistics="lean", train=train)
    finally:
        for handle in handles:
            handle.remove()
    for point, name, p in owned_params(model, chosen):
        ids = (point.name, point.kind, point.layer, name)
        found.append((*ids[:3], "weight", ids[3], *span_of(p, quantile)))
        if p.grad is not None:
            found.append((*ids[:3], "weight_grad", ids[3], *span_of(p.grad, quantile)))
    table = pd.DataFrame(found, columns=list(COLUMNS))
    table["layer"] = table["layer"].astype(np.int64)
    return table


__all__ = ["COLUMNS", "QUANTILE", "span_of", "spans"]
