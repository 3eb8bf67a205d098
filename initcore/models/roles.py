"""Parameter roles: what each parameter *is*, declared by the module that owns it.

Init strategies target roles (``qkv``, ``attn_out``, ...), never substrings of parameter names: the
reference notebook's "scaled" strategy looked for an attribute that nothing set, so its residual
scaling silently never happened. Here a parameter without a declared role is an error.

A model initcore did not write declares nothing. Its roles come, in this order, from a mapping of name
patterns the caller gives (``{"*.c_proj.weight": "attn_out"}``, or a ``Role`` for a packed or
transposed weight), from the ``ROLES`` its modules declare, and, for parameters of modules on whose
path no module declares ``ROLES``, from the module's type where that is unambiguous (``INFERRED_ROLES``:
a Linear or a Conv is "hidden", norms are "norm", any ``bias`` is "bias"). Inferred roles are marked,
so a strategy that treats some roles apart can refuse a model whose roles were only guessed.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import nn

from initcore.models import structure

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

_NORMS = (nn.LayerNorm, nn.GroupNorm, nn.RMSNorm, nn.modules.batchnorm._NormBase)  # BatchNorm, InstanceNorm
# Roles of the parameters of modules that declare none (and have no declaring ancestor), by isinstance in
# this order: unambiguous by type. nn.MultiheadAttention's out_proj is a Linear it applies itself.
INFERRED_ROLES: tuple[tuple[tuple[type, ...], dict[str, str | tuple]], ...] = (
    ((nn.MultiheadAttention,), {"in_proj_weight": ("qkv", ("q", "k", "v")), "in_proj_bias": "bias",
                                "q_proj_weight": ("qkv", ("q",)), "k_proj_weight": ("qkv", ("k",)),
                                "v_proj_weight": ("qkv", ("v",)), "out_proj.weight": "attn_out",
                                "out_proj.bias": "bias", "bias_k": "bias", "bias_v": "bias"}),
    ((nn.Embedding, nn.EmbeddingBag), {"weight": "embedding"}),
    (_NORMS, {"weight": "norm", "bias": "bias"}),
    ((nn.Linear, nn.Bilinear, nn.modules.conv._ConvNd), {"weight": "hidden", "bias": "bias"}),
)


# Names of fused q/k/v projections in the libraries users copy from (nanoGPT's c_attn, torch's in_proj,
# timm's and DINO's qkv, MosaicML's Wqkv, GPT-NeoX's query_key_value).
FUSED_QKV = ("qkv", "c_attn", "in_proj", "wqkv", "query_key_value", "qkv_proj", "w_qkv", "in_proj_weight")


def name_pattern(name: str) -> str:
    """``name`` with every block index made ``*``: ``h.3.attn.c_proj.weight`` -> ``h.*.attn.c_proj.weight``, the
    pattern a roles mapping or an expectation names all blocks' parameters by."""
    return re.sub(r"(?<=\.)\d+(?=\.|$)|^\d+(?=\.)", "*", name)


def stores_transposed(module: nn.Module) -> bool:
    """Hugging Face's ``Conv1D`` (GPT-2 and its descendants): a Linear whose weight is stored (in, out)."""
    return type(module).__name__ == "Conv1D" and hasattr(module, "nf")


def looks_fused(module_name: str, attr: str, module: nn.Module, shape: tuple[int, ...],
                transposed: bool = False) -> int:
    """How many projections a 2-D weight seems to pack along its output dimension: 3 for a module named like a
    fused q/k/v (``FUSED_QKV``) whose output splits in three, or a Linear under an attention path whose output
    is three times its input; else 1. A guess from names and shapes, for refusing to guess further."""
    if len(shape) != 2:
        return 1
    leaf = module_name.rsplit(".", 1)[-1].lower()
    out = shape[1] if transposed else shape[0]
    if (leaf in FUSED_QKV or attr.lower() in FUSED_QKV) and out % 3 == 0:
        return 3
    if isinstance(module, nn.Linear) and shape[0] == 3 * shape[1] and "attn" in module_name.lower():
        return 3
    return 1


@dataclass(frozen=True)
class Role:
    """A role given by a mapping, with how the parameter is laid out.

    ``parts`` names packed matrices along the output dimension (``("q", "k", "v")`` for a fused qkv);
    ``transposed`` says the weight is stored (fan_in, fan_out), as Hugging Face's ``Conv1D`` (GPT-2)
    and an Embedding table store theirs (None: as the role implies, True only for an embedding).
    """

    role: str
    parts: tuple[str, ...] = ()
    transposed: bool | None = None


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
    inferred: bool = False  # the role came from the module's type alone (INFERRED_ROLES), not a declaration

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
        """(fan_in, fan_out) of one chunk; a convolution's include its receptive field, as torch's."""
        m = self.matrices()[0]
        if m.dim() < 2:  # norm weights, biases and gates have no fan; report their size
            return m.numel(), m.numel()
        field = m[0][0].numel() if m.dim() > 2 else 1
        return m.shape[1] * field, m.shape[0] * field


def _declared(module: nn.Module) -> dict[str, str | tuple[str, int]]:
    for cls, roles in _TYPE_ROLES.items():
        if type(module) is cls:
            return roles
    return getattr(module, "ROLES", {})


def _inferred(module: nn.Module) -> dict[str, str | tuple]:
    for types, roles in INFERRED_ROLES:
        if isinstance(module, types):
            return roles
    own = dict(module.named_parameters(recurse=False))
    if _NORM_NAME.search(type(module).__name__) and own and set(own) <= {"weight", "bias"} \
            and all(p.dim() == 1 for p in own.values()):
        return {"weight": "norm", "bias": "bias"}  # LlamaRMSNorm, T5LayerNorm: a norm's per-channel scale
    return {}


# A norm of a library's own class (Hugging Face's LlamaRMSNorm, Qwen2RMSNorm, T5LayerNorm): by name, and only
# where its own parameters are a 1-D weight and bias, as torch's norms'.
_NORM_NAME = re.compile(r"(RMS|Layer|Group|Batch|Instance)Norm(\d+d)?$")


def _parse(decl, where: str) -> tuple[str, int, tuple[str, ...], bool | None]:
    """(role, chunks, parts, transposed) of a declaration: a role, (role, chunks), (role, parts) or a Role."""
    if isinstance(decl, Role):
        role, chunks, parts, transposed = decl.role, len(decl.parts) or 1, tuple(decl.parts), decl.transposed
    elif isinstance(decl, str):
        role, chunks, parts, transposed = decl, 1, (), None
    elif isinstance(decl, tuple) and len(decl) == 2 and isinstance(decl[0], str):
        parts = tuple(decl[1]) if isinstance(decl[1], tuple) else ()
        role, chunks, transposed = decl[0], len(parts) or decl[1], None
    else:
        raise ValueError(f"{where}: a role is a name, (name, chunks), (name, parts) or initcore.models.Role; "
                         f"got {decl!r}")
    if role not in ROLES:
        raise ValueError(f"unknown role {role!r} in {where}; valid: {', '.join(ROLES)}")
    return role, chunks, parts, transposed


def param_roles(model: nn.Module, roles: Mapping[str, str | tuple | Role] | None = None, *,
                strict: bool = True) -> list[RoledParam]:
    """Every parameter of ``model`` with its role, in ``named_parameters`` order.

    A module declares roles in a class attribute ``ROLES`` mapping a parameter path relative to
    itself (``"q.weight"``) to a role, or to ``(role, chunks)`` for packed weights, or to ``(role, parts)``
    with ``parts`` a tuple naming each packed matrix (``("qkv", ("q", "k", "v"))``; chunks is then
    ``len(parts)``), for rules that treat the projections differently (DeepNorm). A module with an
    integer ``block_index`` attribute marks its descendants as belonging to that residual block; in a
    model without one, a parameter belongs to the block (``structure.blocks``) it lies in.

    Args:
        model: any ``nn.Module``.
        roles: parameter-name pattern (``fnmatch``, full names: ``"transformer.h.*.attn.c_proj.weight"``)
            -> role, ``(role, chunks)``, ``(role, parts)`` or ``Role``. The first matching pattern wins,
            over declarations and inferred roles alike.
        strict: raise for parameters without a role (the default); False leaves them out (the audit reads
            every parameter, and wants the roles there are).

    Raises:
        ValueError: parameters without a role (all of them listed), an unknown role, a bad mapping
            value, or a pattern that matches no parameter.
    """
    names = [n for n, _ in model.named_parameters()]
    mapped: dict[str, tuple] = {}
    for pattern, decl in (roles or {}).items():
        parsed = _parse(decl, f"roles[{pattern!r}]")
        hits = [n for n in names if fnmatch.fnmatchcase(n, pattern)]
        if not hits:
            shown = ", ".join(names[:8]) + (", ..." if len(names) > 8 else "")
            raise ValueError(f"roles pattern {pattern!r} matches no parameter of {type(model).__name__} "
                             f"(its parameters: {shown})")
        for n in hits:
            mapped.setdefault(n, parsed)
    found: dict[str, tuple] = {}
    guessed: dict[str, tuple] = {}
    declaring: list[str] = []  # modules with ROLES: their descendants are never inferred
    blocks: dict[str, int] = {}
    for prefix, module in model.named_modules():
        if isinstance(getattr(module, "block_index", None), int):
            blocks[prefix] = module.block_index
        if hasattr(module, "ROLES"):
            declaring.append(prefix)
        for rel, decl in _declared(module).items():
            name = f"{prefix}.{rel}" if prefix else rel
            found.setdefault(name, _parse(decl, type(module).__name__))
        if not any(prefix == d or prefix.startswith(d + ".") or not d for d in declaring):
            for rel, decl in _inferred(module).items():
                name = f"{prefix}.{rel}" if prefix else rel
                guessed.setdefault(name, _parse(decl, type(module).__name__))
            for rel, _ in module.named_parameters(recurse=False):
                if rel == "bias" or rel.endswith("_bias"):
                    guessed.setdefault(f"{prefix}.{rel}" if prefix else rel, ("bias", 1, (), None))
    if not blocks:
        blocks = {name: i for i, (name, _) in enumerate(structure.blocks(model))}

    out, missing = [], []
    for name, p in model.named_parameters():
        inferred = name not in mapped and name not in found and name in guessed
        decl = mapped.get(name) or found.get(name) or guessed.get(name)
        if decl is None:
            missing.append(name)
            continue
        role, chunks, parts, transposed = decl
        block = next((i for pre, i in blocks.items() if name.startswith(pre + ".")), None)
        out.append(RoledParam(name, role, p, chunks, block, transposed=role == "embedding" if transposed is None
                              else transposed, parts=parts, inferred=inferred))
    if missing and strict:
        shown = ", ".join(repr(n) for n in missing[:10]) + (f", ... ({len(missing)} in all)" if len(missing) > 10
                                                             else "")
        what = f"parameter {shown} has" if len(missing) == 1 else f"parameters {shown} have"
        raise ValueError(f"{what} no role; declare it in its module's ROLES, or pass roles={{pattern: role}} "
                         f"(valid roles: {', '.join(ROLES)})")
    return out
