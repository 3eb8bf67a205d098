"""The notebook's ``InitializationUtils.analyze_initialization`` for any model: output statistics of every
``nn.Linear`` (and other libraries' Linear layers) and ``nn.MultiheadAttention`` under one no-grad forward
pass, as a frame.

A selection of the one probe (``initcore.probe.trace`` with ``select`` the module types, forward only);
the rules that judge the statistics, the summary and the printed table live in ``initcore.diagnose``.

What the notebook's hooks really saw: ``nn.MultiheadAttention`` returns a tuple ``(output, weights)``,
and the notebook kept only tensor outputs, so no attention row ever reached its report; and the
attention's ``out_proj`` is an ``nn.Linear`` that ``MultiheadAttention`` applies functionally, so its
hook never fires either. ``collect(..., tuple_outputs=False)`` reproduces that selection; the default
takes a tuple's first tensor, so the attention outputs are judged too.
"""

from __future__ import annotations

import pandas as pd
from torch import nn

from initcore import diagnose, probe

__all__ = ["LINEAR_CLASSES", "MODULE_TYPES", "collect", "health_report"]

MODULE_TYPES: tuple[type[nn.Module], ...] = (nn.Linear, nn.MultiheadAttention)  # the notebook's selection
# Linear layers of other libraries under another type, named (module, qualified name) so that nothing is
# imported: Hugging Face's Conv1D (GPT-2's c_attn, c_proj, c_fc: a Linear whose weight is stored (in, out)).
LINEAR_CLASSES = (("transformers.pytorch_utils", "Conv1D"),)


def collect(model: nn.Module, inputs, *, types: tuple[type[nn.Module], ...] = MODULE_TYPES,
            tuple_outputs: bool = True) -> pd.DataFrame:
    """Output statistics of each module of ``types`` in one no-grad forward pass, in the order they ran.

    Columns ``module, type, mean, std, min, max, nan_count, inf_count`` (std unbiased, as the notebook's
    ``.std()``). A module that runs twice keeps its last output, as the notebook's dict did. The model's
    train/eval mode is left as it is (the notebook ran in train mode; its dropout was 0).

    Args:
        model: any ``nn.Module``.
        inputs: a tensor, a tuple of positional arguments, or a dict of keyword arguments.
        types: the module types to hook; with ``nn.Linear``, other libraries' Linear layers too
            (``LINEAR_CLASSES``: Hugging Face's Conv1D).
        tuple_outputs: measure the first tensor of a tuple output (``MultiheadAttention``'s); False skips
            them, as the notebook's ``isinstance(output, torch.Tensor)`` did.

    >>> import torch
    >>> collect(nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2)), torch.ones(5, 4))["module"].tolist()
    ['0', '2']
    """
    types = tuple(types)
    linear = nn.Linear in types

    def select(name: str, m: nn.Module) -> bool:
        return isinstance(m, types) or (linear and (type(m).__module__, type(m).__qualname__) in LINEAR_CLASSES)

    frame = probe.trace(model, inputs, loss=None, select=select, statistics=_STATISTICS, train=None,
                        unpack=tuple_outputs)
    frame = frame.dropna(subset=["nan_count"])  # a module that never ran, or returned a tuple the notebook skipped
    frame = frame.assign(base=frame["module"].str.replace(r"#\d+$", "", regex=True))
    frame = frame.drop_duplicates("base", keep="last")  # a module run twice: its last output, as the notebook
    kinds = {name: type(m).__name__ for name, m in model.named_modules()}
    out = pd.DataFrame({"module": frame["base"].to_numpy(), "type": frame["base"].map(kinds).to_numpy(),
                        **{ours: frame[theirs].to_numpy() for ours, theirs in _COLUMNS.items()}})
    return out.astype({"mean": "float64", "std": "float64", "min": "float64", "max": "float64",
                       "nan_count": "int64", "inf_count": "int64"}).reset_index(drop=True)


_COLUMNS = {"mean": "act_mean", "std": "act_std", "min": "act_min", "max": "act_max",
            "nan_count": "nan_count", "inf_count": "inf_count"}
_STATISTICS = tuple(_COLUMNS.values())


def health_report(model: nn.Module, inputs, **options) -> pd.DataFrame:
    """``diagnose.health_table`` of ``collect(model, inputs, **options)``: per layer mean, std, range,
    issues and healthy, by the notebook's rules. Print it with ``diagnose.format_health``."""
    stats = collect(model, inputs, **options)
    table = diagnose.health_table(stats)
    table.insert(1, "type", stats["type"].to_numpy())
    return table
