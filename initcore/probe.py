"""Per-layer statistics of one forward and one backward pass, as a wide DataFrame (one row per module).

``trace(model, inputs)`` hooks an MLP's Linear layers, or a transformer's attention, feed-forward and
block outputs, takes each statistic inside the hook as a 0-d tensor on the model's device (no activation
is kept), and copies them all to the host at once. ``to_long`` turns the frame into ``module,
statistic, value`` rows; ``mlp_theory`` gives the mean-field predictions for the same MLP rows.
"""

from __future__ import annotations

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


def _moments(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """mean, unbiased std and sum of squares of all entries, by the two-pass method.

    Exact as ``x.std()`` (no E[x²] - E[x]² cancellation) at a fraction of its CPU time, where
    ``torch.std_mean`` is ~5x slower still.
    """
    if x.dtype not in (torch.float32, torch.float64):
        x = x.float()  # half precision: accumulate in float32
    n = x.numel()
    mean = x.mean()
    d = (x - mean).reshape(-1)
    centred = torch.dot(d, d)
    return mean, (centred / (n - 1)).sqrt(), centred + n * mean.square()


def _output_stats(a: torch.Tensor, bounded: bool) -> dict[str, torch.Tensor]:
    n = a.numel()
    mean, std, squares = _moments(a)
    lo, hi = torch.aminmax(a)
    out = {"act_mean": mean, "act_std": std, "act_rms": (squares / n).sqrt(), "act_min": lo, "act_max": hi,
           "dead_frac": 1 - torch.count_nonzero(a) / n,
           "nan_count": torch.count_nonzero(torch.isnan(a)), "inf_count": torch.count_nonzero(torch.isinf(a))}
    if bounded:
        out["saturated_frac"] = torch.count_nonzero(a.abs() > theory.SATURATION_THRESHOLD) / n
    return out


def _attention_stats(logits: torch.Tensor) -> dict[str, torch.Tensor]:
    """Statistics of pre-softmax logits (B, heads, T, T), -inf where a key is masked."""
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
    return {"logit_std": std, "attn_entropy": entropy.mean(), "attn_entropy_norm": norm,
            "attn_max": p.amax(-1).mean()}


def _grad_stats(params: list[nn.Parameter]) -> dict[str, torch.Tensor]:
    grads = [p.grad.reshape(-1) for p in params if p.grad is not None]
    if not grads:
        return {}
    mean, std, squares = _moments(grads[0] if len(grads) == 1 else torch.cat(grads))
    return {"grad_norm": squares.sqrt(), "grad_mean": mean, "grad_std": std}


class _Target(NamedTuple):
    name: str
    kind: str
    layer: int
    module: nn.Module  # whose output is measured
    params: list[nn.Parameter]  # whose gradients make grad_norm, grad_mean, grad_std
    pre: nn.Module | None = None  # MLP: the Linear whose output is the pre-activation
    bounded: bool = False  # saturated_frac applies
    attn: bool = False  # take attention statistics from module.logits(input)


def _targets(model: nn.Module) -> list[_Target]:
    if hasattr(model, "layers") and hasattr(model, "acts"):
        last = len(model.layers) - 1
        return [_Target(f"layers.{i}", "linear", i, act, [linear.weight], pre=linear,
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


def _hooks(target: _Target, row: dict[str, torch.Tensor]) -> list:
    """Register ``target``'s hooks, each writing 0-d statistics into ``row``; return their handles."""

    def out_grad(g: torch.Tensor) -> None:
        row["out_grad_norm"] = torch.linalg.vector_norm(g.float())

    @torch.no_grad()
    def on_output(module, args, output):
        row.update(_output_stats(output, target.bounded))
        if output.requires_grad:
            output.register_hook(out_grad)  # lives on this tensor only: gone with the graph

    @torch.no_grad()
    def on_preact(module, args, output):
        row["preact_mean"], row["preact_std"], _ = _moments(output)

    @torch.no_grad()
    def on_attn_input(module, args):
        row.update(_attention_stats(module.logits(args[0])))

    handles = [target.module.register_forward_hook(on_output)]
    if target.pre is not None:
        handles.append(target.pre.register_forward_hook(on_preact))
    if target.attn:
        handles.append(target.module.register_forward_pre_hook(on_attn_input))
    return handles


def trace(model: nn.Module, inputs, loss: str | Callable[[torch.Tensor], torch.Tensor] = "mean", *,
          train: bool = False) -> pd.DataFrame:
    """One forward and one backward pass of ``model`` on ``inputs``; per-module statistics, forward order.

    Columns are ``COLUMNS`` (see ``STATISTICS``), all statistics float64, NaN where one does not apply.
    Stds are torch's unbiased ``.std()``, as in the notebook. The model runs in eval mode (no dropout)
    unless ``train``, and every module's training flag is restored afterwards; the model's ``.grad``s
    are set to None first, so the gradients are this pass's alone (they are left in place). Works on
    whatever device the model and inputs are on; the statistics cross to the host in one copy.

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
    rows: list[dict[str, torch.Tensor]] = [{} for _ in targets]
    modes = [(m, m.training) for m in model.modules()]
    handles = []
    try:
        model.train(train)
        for target, row in zip(targets, rows, strict=True):
            handles += _hooks(target, row)
        model.zero_grad(set_to_none=True)
        output = model(*inputs) if isinstance(inputs, (tuple, list)) else model(inputs)
        loss_fn(output).backward()
        for target, row in zip(targets, rows, strict=True):
            row.update(_grad_stats(target.params))
    finally:
        for handle in handles:
            handle.remove()
        for module, mode in modes:
            module.training = mode
    return _to_frame(targets, rows)


def _to_frame(targets: list[_Target], stats: list[dict[str, torch.Tensor]]) -> pd.DataFrame:
    col = {k: j for j, k in enumerate(STATISTICS)}
    table = np.full((len(stats), len(STATISTICS)), np.nan)
    # Floats and counts stacked apart (an int64 count must not round through float32), then one copy.
    cells = {True: [], False: []}
    for r, row in enumerate(stats):
        for k, v in row.items():
            cells[v.is_floating_point()].append((r, col[k], v))
    parts = [torch.stack([v for _, _, v in group]).double() for group in cells.values() if group]
    if parts:
        host = torch.cat(parts).tolist()  # the pass's only device -> host copy
        for (r, j, _), value in zip(cells[True] + cells[False], host, strict=True):
            table[r, j] = value
    frame = pd.DataFrame(table, columns=list(STATISTICS))
    frame.insert(0, "module", [t.name for t in targets])
    frame.insert(1, "kind", [t.kind for t in targets])
    frame.insert(2, "layer", np.array([t.layer for t in targets], dtype=np.int64))
    return frame


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
