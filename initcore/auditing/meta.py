"""Meta-device builds, as large-model trainers make them: construct on ``meta``, ``to_empty``, then the
model's own init. Every parameter is filled with NaN between the two, so that one the init never reaches
reads NaN in the audit (``uninitialized``), whatever the fresh memory happened to hold.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

# The methods a model's own init goes by, in the order tried: torchtitan's and Hugging Face's init_weights(),
# torch's reset_parameters(), nanoGPT's _init_weights(module) applied to every module.
OWN_INIT = ("init_weights", "reset_parameters", "_init_weights")


def own_init(model: nn.Module) -> str:
    """Run the model's own init (``OWN_INIT``) and say which; else every module's ``reset_parameters``.

    Raises:
        ValueError: nothing in the model can initialize it.
    """
    for name in OWN_INIT:
        method = getattr(model, name, None)
        if callable(method):
            if name == "_init_weights":
                model.apply(method)
                return f"model.apply(model.{name})"
            method()
            return f"model.{name}()"
    resets = [m for m in model.modules() if callable(getattr(m, "reset_parameters", None))]
    if not resets:
        raise ValueError(f"{type(model).__name__} has no init of its own ({', '.join(OWN_INIT)}) and no module "
                         "with reset_parameters: nothing can initialize it after to_empty")
    for m in reversed(resets):  # children before parents, as construction runs them
        m.reset_parameters()
    return "reset_parameters() of each module"


def ties(model: nn.Module) -> list[tuple[str, ...]]:
    """The groups of names that are one parameter (tied) in ``model``."""
    names: dict[int, list[str]] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        names.setdefault(id(p), []).append(name)
    return [tuple(group) for group in names.values() if len(group) > 1]


def materialize(factory: Callable[[], nn.Module], device: str | torch.device = "cpu",
                init: Callable[[nn.Module], object] | None = None) -> tuple[nn.Module, str, list[tuple[str, ...]]]:
    """Build ``factory()`` on the meta device, ``to_empty`` on ``device``, poison every parameter with NaN,
    then initialize it with ``init(model)`` or the model's own init (``own_init``).

    Returns the model, what initialized it, and the ties of the meta model (``audit(..., tied=)`` flags those
    that ``to_empty`` or the init broke)."""
    with torch.device("meta"):
        made = factory()
    model = made[0] if isinstance(made, tuple) else made
    if not isinstance(model, nn.Module):
        raise ValueError(f"the factory returned {type(model).__name__}, not an nn.Module")
    tied = ties(model)
    model.to_empty(device=device)
    with torch.no_grad():
        for p in model.parameters():
            if p.is_floating_point():
                p.fill_(math.nan)
        if init is not None:
            init(model)
            how = getattr(init, "__name__", "init")
        else:
            how = own_init(model)
    return model, how, tied


__all__ = ["OWN_INIT", "materialize", "own_init", "ties"]
