"""Parameter roles: what each parameter *is*, declared by the module that owns it.

Init strategies target roles (``qkv``, ``attn_out``, ...), never substrings of parameter names: the
reference notebook's "scaled" strategy looked for an attribute that nothing set, so its residual
scaling silently never happened. Here a parameter without a declared role is an error.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

ROLES = {
    "embedding": "token embedding table",
    "qkv": "attention query, key and value projections",
    "attn_out": "attention output projection (writes into the residual stream)",
    "mlp_in": "feed-forward input projections (including SwiGLU's gate)",
    "mlp_out": "feed-forward output projection (writes into the residual stream)",
    "hidden": "a Linear layer of a plain MLP",
    "head": "the last Linear layer of a model (MLP output)",
    "norm": "LayerNorm / RMSNorm weight",
    "bias": "any additive bias, norm biases included",
    "gate": "a residual gate (ReZero's alpha)",
}

# Torch's own leaf modules whose roles follow from their type alone.
_TYPE_ROLES: dict[type, dict[str, str]] = {
    nn.LayerNorm: {"weight": "norm", "bias": "bias"},
    nn.Embedding: {"weight": "embedding"},
}


@dataclass(frozen=True)
class RoledParam:
    """One parameter with its role and the facts an initializer needs."""

    name: str  # full name in model.named_parameters()
    role: str
    param: nn.Parameter
    chunks: int = 1  # independent matrices packed along dim 0 (3 for a packed in_proj)
    block: int | None = None  # index of the residual block that owns it, if any
    transposed: bool = False  # stored as (in, out), like an Embedding table
    parts: tuple[str, ...] = ()  # names of the packed matrices in order, where declared: ("q", "k", "v")

    def matrices(self) -> list[torch.Tensor]:
        """Views of the weight as (fan_out, fan_in) matrices, one per packed chunk.

        An Embedding table (num_embeddings, dim) is a Linear from a one-hot of size num_embeddings
        to dim, so its view is transposed: fan_in = num_embeddings, fan_out = dim.
        """
        w = self.param.t() if self.transposed else self.param
        if self.chunks == 1:
            return [w]
        rows = w.shape[0] // self.chunks
        return [w[i * rows : (i + 1) * rows] for i in range(self.chunks)]

    def fans(self) -> tuple[int, int]:
        """(fan_in, fan_out) of one chunk."""
        m = self.matrices()[0]
        if m.dim() < 2:  # norm weights, biases and gates have no fan; report their size
            return m.numel(), m.numel()
        return m.shape[1], m.shape[0]


def _declared(module: nn.Module) -> dict[str, str | tuple[str, int]]:
    for cls, roles in _TYPE_ROLES.items():
        if type(module) is cls:
            return roles
    return getattr(module, "ROLES", {})


def param_roles(model: nn.Module) -> list[RoledParam]:
    """Every parameter of ``model`` with its declared role, in ``named_parameters`` order.

    A module declares roles in a class attribute ``ROLES`` mapping a parameter path relative to
    itself (``"q.weight"``) to a role, or to ``(role, chunks)`` for packed weights, or to ``(role, parts)``
    with ``parts`` a tuple naming each packed matrix (``("qkv", ("q", "k", "v"))``; chunks is then
    ``len(parts)``), for rules that treat the projections differently (DeepNorm). A module with an
    integer ``block_index`` attribute marks its descendants as belonging to that residual block.

    Raises:
        ValueError: a parameter has no role, or a role is not one of ``ROLES``.
    """
    found: dict[str, tuple[str, int, tuple[str, ...]]] = {}
    blocks: dict[str, int] = {}
    for prefix, module in model.named_modules():
        if isinstance(getattr(module, "block_index", None), int):
            blocks[prefix] = module.block_index
        for rel, decl in _declared(module).items():
            role, chunks = (decl, 1) if isinstance(decl, str) else decl
            parts = tuple(chunks) if isinstance(chunks, tuple) else ()
            chunks = len(parts) or chunks
            if role not in ROLES:
                raise ValueError(f"unknown role {role!r} in {type(module).__name__}; valid: {', '.join(ROLES)}")
            name = f"{prefix}.{rel}" if prefix else rel
            found.setdefault(name, (role, chunks, parts))

    out = []
    for name, p in model.named_parameters():
        if name not in found:
            raise ValueError(
                f"parameter {name!r} has no role; declare it in its module's ROLES (valid roles: {', '.join(ROLES)})"
            )
        role, chunks, parts = found[name]
        block = next((i for pre, i in blocks.items() if name.startswith(pre + ".")), None)
        out.append(RoledParam(name, role, p, chunks, block, transposed=role == "embedding", parts=parts))
    return out
