"""What is done with a trace frame afterwards: its tidy form, and mean-field predictions beside an MLP's rows."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pandas as pd

from initcore import theory
from initcore.init import strategies
from initcore.probe.tracing import ID_COLUMNS


def to_long(frame: pd.DataFrame) -> pd.DataFrame:
    """Tidy form of a ``trace`` frame: columns ``module, statistic, value``, module by module, NaN dropped.

    Every column but ``kind`` and ``layer`` is a statistic (added ones such as ``*_theory`` included).
    """
    values = [c for c in frame.columns if c not in ID_COLUMNS]
    long = frame.melt(id_vars=["module"], value_vars=values, var_name="statistic", ignore_index=False)
    long = long.sort_index(kind="stable").dropna(subset=["value"]).reset_index(drop=True)
    return long.astype({"value": "float64"})[["module", "statistic", "value"]]


def mlp_theory(config, init: str, *, gain: float | str | None = None, bias: float = 0.0,
               input_second_moment: float = 1.0) -> pd.DataFrame:
    """Mean-field predictions (``theory.mlp_mean_field``) for an MLP's rows, one per Linear layer.

    σw² of layer l is fan_in·Var(w), Var(w) as strategy ``init`` declares it for the layer's role ("hidden",
    "head" for the last; ``initcore.init.promise``): every registered strategy has one, torch_default's
    U(±1/√fan_in) included (Var = 1/(3·fan_in)). ``gain="auto"`` is the activation's ``calculate_gain``.
    A strategy that needs a transformer (deepnorm, rezero) raises ValueError.
    The bias is the constant ``bias``: torch_default's random biases are not modelled.
    Returns columns ``layer`` and ``preact_std_theory, act_std_theory, act_mean_theory, dead_frac_theory,
    saturated_frac_theory`` (NaN where the measured ``saturated_frac`` is NaN).
    """
    cfg = getattr(config, "config", config)
    strategies.config_for(init, cfg)  # a strategy that refuses an MLP (deepnorm, rezero) says so
    if gain == "auto":
        gain = strategies.activation_gain(SimpleNamespace(config=cfg))
    sigma_w2 = []
    for i in range(cfg.depth):
        fan_in = cfg.in_features if i == 0 else cfg.width
        role = "head" if i == cfg.depth - 1 else "hidden"
        sigma_w2.append(fan_in * strategies.promise(init, role, fan_in, cfg.width, n_layers=cfg.depth,
                                                    gain=gain).variance)
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
