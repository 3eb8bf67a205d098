"""What is done with a trace frame afterwards: its tidy form, and mean-field predictions beside an MLP's rows."""

from __future__ import annotations

import numpy as np
import pandas as pd

from initcore import theory
from initcore.probe.tracing import ID_COLUMNS


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


__all__ = ["mlp_theory", "to_long", "with_theory"]
