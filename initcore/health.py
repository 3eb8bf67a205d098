"""The notebook's ``InitializationUtils.analyze_initialization`` for any model: output statistics of every
``nn.Linear`` and ``nn.MultiheadAttention`` under one no-grad forward pass, as a frame.

The rules that judge them, the summary and the printed table live in ``initcore.diagnose`` (pure pandas);
this module is the torch side, with hooks, independent of ``initcore.probe`` (which knows only initcore's
own models).

What the notebook's hooks really saw: ``nn.MultiheadAttention`` returns a tuple ``(output, weights)``,
and the notebook kept only tensor outputs, so no attention row ever reached its report; and the
attention's ``out_proj`` is an ``nn.Linear`` that ``MultiheadAttention`` applies functionally, so its
hook never fires either. ``collect(..., tuple_outputs=False)`` reproduces that selection; the default
takes a tuple's first tensor, so the attention outputs are judged too.
"""

from __future__ import annotations

import pandas as pd
import torch
from torch import nn

from initcore import diagnose

__all__ = ["MODULE_TYPES", "collect", "health_report"]

MODULE_TYPES: tuple[type[nn.Module], ...] = (nn.Linear, nn.MultiheadAttention)  # the notebook's selection


def collect(model: nn.Module, inputs, *, types: tuple[type[nn.Module], ...] = MODULE_TYPES,
            tuple_outputs: bool = True) -> pd.DataFrame:
    """Output statistics of each module of ``types`` in one no-grad forward pass, in the order they ran.

    Columns ``module, type, mean, std, min, max, nan_count, inf_count`` (std unbiased, as the notebook's
    ``.std()``). A module that runs twice keeps its last output, as the notebook's dict did. The model's
    train/eval mode is left as it is (the notebook ran in train mode; its dropout was 0).

    Args:
        model: any ``nn.Module``.
        inputs: a tensor, or a tuple of positional arguments.
        types: the module types to hook.
        tuple_outputs: measure the first tensor of a tuple output (``MultiheadAttention``'s); False skips
            them, as the notebook's ``isinstance(output, torch.Tensor)`` did.

    >>> collect(nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2)), torch.ones(5, 4))["module"].tolist()
    ['0', '2']
    """
    stats: dict[str, dict] = {}

    def hook(name: str, module: nn.Module):
        def record(mod, args, output):
            if isinstance(output, (tuple, list)) and tuple_outputs:
                output = next((o for o in output if isinstance(o, torch.Tensor)), None)
            if not isinstance(output, torch.Tensor):
                return
            a = output.detach()
            a = a.float() if a.dtype not in (torch.float32, torch.float64) else a
            stats[name] = {"module": name, "type": type(module).__name__, "mean": a.mean(), "std": a.std(),
                           "min": a.min(), "max": a.max(), "nan_count": torch.isnan(a).sum(),
                           "inf_count": torch.isinf(a).sum()}

        return record

    handles = [m.register_forward_hook(hook(name, m)) for name, m in model.named_modules() if isinstance(m, types)]
    try:
        with torch.no_grad():
            model(*inputs) if isinstance(inputs, (tuple, list)) else model(inputs)
    finally:
        for h in handles:
            h.remove()
    rows = [{k: (v.item() if isinstance(v, torch.Tensor) else v) for k, v in row.items()} for row in stats.values()]
    frame = pd.DataFrame(rows, columns=["module", "type", "mean", "std", "min", "max", "nan_count", "inf_count"])
    return frame.astype({"mean": "float64", "std": "float64", "min": "float64", "max": "float64",
                         "nan_count": "int64", "inf_count": "int64"})


def health_report(model: nn.Module, inputs, **options) -> pd.DataFrame:
    """``diagnose.health_table`` of ``collect(model, inputs, **options)``: per layer mean, std, range,
    issues and healthy, by the notebook's rules. Print it with ``diagnose.format_health``."""
    stats = collect(model, inputs, **options)
    table = diagnose.health_table(stats)
    table.insert(1, "type", stats["type"].to_numpy())
    return table
