"""How each parameter is laid out and used, and what the audit reads of its values (torch, no statistics).

For every parameter (tied ones once, with all their names): the module that owns it, its fans as that
module uses them (a Linear's weight is (out, in); Hugging Face's ``Conv1D`` stores (in, out); a conv kernel's
fans include its receptive field; an embedding table is a lookup from ``num_embeddings``), how many
projections it packs (a fused qkv), and the :class:`~initcore.auditing.fit.Evidence` the fit reads: a sorted
sample of at most ``fit.SAMPLE_MAX`` entries (the whole tensor below that, so a small one is read whole),
the count of NaN/Inf over the whole tensor, and for a matrix the Gram matrix of ``GRAM_VECTORS`` of its
shorter side's vectors (what tells an orthogonal matrix from a Gaussian one). Nothing here copies a
parameter whole: one reduction pass (a sum, whose NaN or Inf reveals any), a gather of the sample, and the
few vectors.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from initcore.auditing.fit import SAMPLE_MAX, Evidence
from initcore.models import structure
from initcore.models.roles import Role, looks_fused, param_roles, stores_transposed

GRAM_VECTORS = 32  # rows (or columns) whose Gram matrix tests orthogonality: 496 pairs
@dataclass(frozen=True)
class Layout:
    """One parameter as its module uses it."""

    names: tuple[str, ...]  # every name it has in the model (more than one: tied)
    module: str  # the owning module's type, e.g. "Linear", "Conv1D", "LayerNorm"
    attr: str  # its name inside that module: "weight", "bias", "in_proj_weight", ...
    shape: tuple[int, ...]
    kind: str  # "matrix" (a weight of 2-D or more), "tensor" (another parameter of 2-D or more), "vector", "scalar"
    fan_in: int  # of one packed chunk, as the module uses it (0 for a vector)
    fan_out: int
    stored_fan_in: int  # torch.nn.init's fans of the stored tensor (what nn.init.* would use)
    stored_fan_out: int
    chunks: int  # projections packed along the output dimension (3 for a fused qkv)
    transposed: bool  # stored (in, out): HF Conv1D, and an embedding table (initcore's convention)
    role: str | None  # initcore's role (declared, mapped or inferred), where there is one
    role_inferred: bool
    block: int | None  # index of the repeated block that holds it
    weight_fan_in: int  # a bias's: its module's weight's fan_in (torch's default bias bound); else fan_in
    hidden_size: int  # an RNN's hidden size (torch's default bound for all its parameters); else 0
    storage: int  # data_ptr, to tell equal from tied
    parts: tuple[str, ...] = ()  # the q/k/v its role names ("v" for a separate value projection; q, k, v packed)

    @property
    def name(self) -> str:
        return self.names[0]


def stored_fans(shape: tuple[int, ...]) -> tuple[int, int]:
    """torch.nn.init._calculate_fan_in_and_fan_out, for a shape (1-D: its size both ways)."""
    if len(shape) < 2:
        n = shape[0] if shape else 1
        return n, n
    field = math.prod(shape[2:]) if len(shape) > 2 else 1
    return shape[1] * field, shape[0] * field


def layouts(model: nn.Module,
            roles: Mapping[str, str | tuple | Role] | None = None) -> list[tuple[Layout, torch.Tensor]]:
    """Every distinct parameter of ``model`` with its layout, in ``named_parameters`` order.

    Raises:
        ValueError: a model without parameters, parameters on the meta device, a roles pattern that
            matches nothing (from ``param_roles``).
    """
    named = list(model.named_parameters(remove_duplicate=False))
    if not named:
        raise ValueError(f"{type(model).__name__} has no parameters: nothing to audit")
    meta = [n for n, p in named if p.is_meta]
    if meta:
        shown = ", ".join(meta[:4]) + (f", ... ({len(meta)} in all)" if len(meta) > 4 else "")
        raise ValueError(f"parameters on the meta device hold no values ({shown}): call model.to_empty(device=...) "
                         "and the model's own init first, or audit with meta=True (initcore audit --meta)")
    aliases: dict[int, list[str]] = {}
    params: dict[int, torch.Tensor] = {}
    for name, p in named:
        aliases.setdefault(id(p), []).append(name)
        params[id(p)] = p
    roled = {r.name: r for r in param_roles(model, roles, strict=False)}
    blocks = [name for name, _ in structure.blocks(model)]
    modules = dict(model.named_modules(remove_duplicate=False))
    out = []
    for key, names in aliases.items():
        p = params[key]
        first = names[0]
        owner_name, _, attr = first.rpartition(".")
        module = modules[owner_name] if owner_name or "" in modules else model
        shape = tuple(p.shape)
        r = roled.get(first)
        # How the module really uses it, whatever a role says: a Conv1D given a plain string role is still (in, out).
        table = isinstance(module, (nn.Embedding, nn.EmbeddingBag)) or stores_transposed(module)
        transposed = table and attr == "weight" or (r is not None and r.transposed)
        stored_in, stored_out = stored_fans(shape)
        if len(shape) >= 2:
            chunks = r.chunks if r is not None and r.chunks > 1 else \
                looks_fused(owner_name, attr, module, shape, transposed)
            if isinstance(module, nn.RNNBase) and attr.startswith("weight"):
                chunks = {"LSTM": 4, "GRU": 3}.get(module.mode, 1)
            view_shape = (shape[1], shape[0], *shape[2:]) if transposed and len(shape) == 2 else shape
            rows = view_shape[0] // chunks
            field = math.prod(view_shape[2:]) if len(view_shape) > 2 else 1
            fan_in, fan_out = view_shape[1] * field, rows * field
            # A bare nn.Parameter (ViT's pos_embedding, a class token) has a shape but no fans: no formula reads it.
            kind = "matrix" if "weight" in attr or r is not None else "tensor"
        else:
            chunks, fan_in, fan_out = 1, 0, 0
            kind = "vector" if shape and math.prod(shape) > 1 else "scalar"
        weight = getattr(module, "weight", None)
        weight_fan_in = stored_fans(tuple(weight.shape))[0] if isinstance(weight, torch.Tensor) and weight.dim() >= 2 \
            else fan_in
        if stores_transposed(module) and isinstance(weight, torch.Tensor):
            weight_fan_in = weight.shape[0]
        block = r.block if r is not None and r.block is not None else \
            next((i for i, b in enumerate(blocks) if first.startswith(b + ".")), None)
        out.append((Layout(tuple(names), type(module).__name__, attr, shape, kind, fan_in, fan_out, stored_in,
                           stored_out, chunks, transposed, r.role if r is not None else None,
                           bool(r is not None and r.inferred), block, weight_fan_in,
                           int(getattr(module, "hidden_size", 0)) if isinstance(module, nn.RNNBase) else 0,
                           p.data_ptr(), r.parts if r is not None else ()), p))
    return out


def n_blocks(model: nn.Module) -> int:
    """The depth L that depth-scaled rules divide by: the model's config (n_layers, n_layer,
    num_hidden_layers, depth) where it states one, else its number of repeated blocks."""
    cfg = getattr(model, "config", None)
    for key in ("n_layers", "n_layer", "num_hidden_layers", "num_layers", "depth"):
        value = getattr(cfg, key, None)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return len(structure.blocks(model)) or 1


@torch.no_grad()
def evidence(p: torch.Tensor, generator: torch.Generator, sample_max: int = SAMPLE_MAX) -> Evidence:
    """The sample, NaN/Inf count and Gram test of one parameter (see the module docstring)."""
    t = p.detach()
    flat = t.reshape(-1)
    n = flat.numel()
    # One pass: a NaN or Inf anywhere makes the sum one (so may an overflow, and then the exact count says 0).
    nonfinite = 0 if math.isfinite(float(flat.sum())) else int((~torch.isfinite(flat)).sum())
    if n > sample_max:
        index = torch.randint(n, (sample_max,), generator=generator).to(flat.device)
        x = flat[index]
    else:
        x = flat
    sample = x.to(torch.float64).cpu().numpy()
    sample = np.sort(sample[np.isfinite(sample)])
    gram_error = gram_gain = None
    if t.dim() >= 2 and not nonfinite:
        rows = t.reshape(t.shape[0], -1)
        if rows.shape[0] > rows.shape[1]:
            rows = rows.t()  # orthogonal_ makes the shorter side orthonormal
        k = min(GRAM_VECTORS, rows.shape[0])
        if k >= 2 and rows.shape[1] >= 2:
            pick = torch.randperm(rows.shape[0], generator=generator)[:k].to(rows.device)
            v = rows[pick].to(torch.float64)
            g = v @ v.t()
            g2 = float(torch.diagonal(g).mean())
            if g2 > 0:
                gram_error = float((g - g2 * torch.eye(k, dtype=g.dtype, device=g.device)).abs().max()) / g2
                gram_gain = math.sqrt(g2)
    return Evidence(sample, n, nonfinite, gram_error, gram_gain)


__all__ = ["GRAM_VECTORS", "Layout", "evidence", "layouts", "n_blocks", "stored_fans"]
