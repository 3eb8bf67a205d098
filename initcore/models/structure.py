"""The repeated blocks of a model, read from its structure: the residual-stream view of any model.

A block is a child of an ``nn.ModuleList`` or ``nn.Sequential`` whose type occurs at least twice among
that container's children and which has children itself (nanoGPT's ``h``, torchvision's ``layer1`` ..
``layer4``, initcore's ``blocks``); nothing inside a block already found counts. A flat
``nn.Sequential(Linear, ReLU, Linear, ...)`` has none: its layers are layers, not blocks. The probe's
``select="blocks"`` rows and the residual stream of its default rows, and the depth (number of blocks)
and block index that init strategies use on a model that states neither.
"""

from __future__ import annotations

from torch import nn


def blocks(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """``(name, module)`` of every block of ``model``, in module order (see the module docstring)."""
    found: list[tuple[str, nn.Module]] = []
    for name, m in model.named_modules():
        if not isinstance(m, (nn.ModuleList, nn.Sequential)):
            continue
        if any(name == b or name.startswith(b + ".") for b, _ in found):
            continue
        children = list(m.named_children())
        counts: dict[type, int] = {}
        for _, child in children:
            counts[type(child)] = counts.get(type(child), 0) + 1
        found += [(f"{name}.{rel}" if name else rel, child) for rel, child in children
                  if counts[type(child)] >= 2 and _composite(child)]
    return found


def _composite(module: nn.Module) -> bool:
    """Whether ``module`` has children of its own: a parametrized weight's ``parametrizations`` (torch's
    ``weight_norm``, ``orthogonal``) leave a Linear a layer."""
    return any(rel != "parametrizations" for rel, _ in module.named_children())


__all__ = ["blocks"]
