"""Which parameters are a model's readout, found by tracing what produces its output rather than by name.

muP treats the readout apart (its init falls as 1/width, its forward output is what the loss reads), and a
model initcore did not write names it anything: GPT-2's ``lm_head`` (tied to ``wte``), wav2vec2's several
Linear layers of which only one is the output (microsoft/mup issue #4), a plain MLP whose last layer is as
wide as its hidden ones. So the readout is read from the autograd graph of one forward: from the output,
walk back through every operation that is not a matrix product (norms, softmax, reshapes, additions); the
first matrix products met are the readout's, and the 2-D (or convolution) parameters that feed them directly
(through transposes, views, casts and scalar multipliers only) are the readout weights.

Tied weights are found without a forward: one tensor registered under two names (``lm_head.weight`` is
``transformer.wte.weight``), or an embedding table that a traced readout multiplies by.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

# Autograd nodes of a matrix product: where the walk from the output stops.
PRODUCTS = ("MmBackward0", "AddmmBackward0", "BmmBackward0", "MvBackward0", "BaddbmmBackward0",
            "LinearBackward0", "ConvolutionBackward0", "MatmulBackward0")
# Nodes that only re-view, cast or scale one tensor: a weight seen through them is still that weight.
_THROUGH = ("TBackward0", "TransposeBackward0", "TransposeBackward1", "PermuteBackward0", "ViewBackward0",
            "UnsafeViewBackward0", "ReshapeAliasBackward0", "ExpandBackward0", "ToCopyBackward0",
            "CloneBackward0", "MulBackward1", "DivBackward1", "AliasBackward0", "SliceBackward0",
            "UnsqueezeBackward0", "SqueezeBackward0", "SqueezeBackward1")

# Products of a tensor and a constant (``w * 0.5``): through them when only one operand has a gradient.
_SCALINGS = ("MulBackward0", "DivBackward0")


def call(model: nn.Module, inputs: Any) -> Any:
    """``model(inputs)``: a dict as keywords, a tuple or list as positional arguments, else one argument."""
    if isinstance(inputs, dict):
        return model(**inputs)
    return model(*inputs) if isinstance(inputs, (tuple, list)) else model(inputs)


def prediction(out: Any) -> torch.Tensor:
    """What a loss reads of a model's output: the output, its ``logits``, or its first tensor."""
    if isinstance(out, torch.Tensor):
        return out
    logits = out.get("logits") if isinstance(out, dict) else getattr(out, "logits", None)
    if isinstance(logits, torch.Tensor):
        return logits
    first = next(iter(out.values()), None) if isinstance(out, dict) else (
        out[0] if isinstance(out, (tuple, list)) and out else None)
    if isinstance(first, torch.Tensor):
        return first
    raise ValueError(f"the model's output is a {type(out).__name__} with no tensor to train on; return a tensor, "
                     "a tuple whose first element is one, or an output with .logits")


def _weights_behind(node, names: dict[int, str]) -> set[str]:
    """Parameters of at least 2 dims reached from ``node`` through re-views, casts and scalings only."""
    found, stack, seen = set(), [node], set()
    while stack:
        n = stack.pop()
        if n is None or n in seen:
            continue
        seen.add(n)
        if type(n).__name__ == "AccumulateGrad":
            var = n.variable
            if id(var) in names and var.dim() >= 2:
                found.add(names[id(var)])
        elif type(n).__name__ in _THROUGH or (type(n).__name__ in _SCALINGS
                                               and sum(f is not None for f, _ in n.next_functions) == 1):
            stack.extend(f for f, _ in n.next_functions)
    return found


def traced(model: nn.Module, inputs: Any) -> set[str]:
    """Names of the readout weights of ``model`` on ``inputs`` (see the module docstring); a tied one is
    named by its first name in ``named_parameters()``. Empty if the output comes from no parameter's
    matrix product. The forward runs with gradients on; the model's parameters are left untouched."""
    names = {id(p): n for n, p in model.named_parameters()}
    with torch.enable_grad():
        out = prediction(call(model, inputs))
    if out.grad_fn is None:
        return set()
    found: set[str] = set()
    stack, seen = [out.grad_fn], set()
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        if type(node).__name__ in PRODUCTS:
            weights = set().union(*(_weights_behind(f, names) for f, _ in node.next_functions))
            if weights:
                found |= weights
                continue  # the readout's input side is the network, not the readout
        stack.extend(f for f, _ in node.next_functions)
    return found


def tied_names(model: nn.Module) -> dict[str, tuple[str, ...]]:
    """First name -> every name of each parameter registered under more than one name (a tied weight)."""
    names: dict[int, list[str]] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        names.setdefault(id(p), []).append(name)
    return {ns[0]: tuple(ns) for ns in names.values() if len(ns) > 1}


def modules_using(model: nn.Module, param: nn.Parameter) -> Iterator[tuple[str, nn.Module]]:
    """(name, module) of every module that holds ``param`` as one of its own parameters."""
    for name, module in model.named_modules(remove_duplicate=False):
        if any(p is param for p in module.parameters(recurse=False)):
            yield name, module


# --- the output multiplier of a tied readout (muP) -----------------------------------------------------------

_MULT = "_initcore_output_multiplier"
_HOOK = "_initcore_output_multiplier_hook"


def _scale_output(module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
    return output * getattr(module, _MULT)


def set_output_multiplier(module: nn.Module, multiplier: float) -> None:
    """Multiply ``module``'s output by ``multiplier`` from now on (one forward hook, set again, not stacked)."""
    setattr(module, _MULT, float(multiplier))
    if getattr(module, _HOOK, None) is None:
        setattr(module, _HOOK, module.register_forward_hook(_scale_output))


def output_multipliers(model: nn.Module) -> dict[str, float]:
    """Module name -> the output multiplier ``set_output_multiplier`` put on it."""
    return {name: getattr(m, _MULT) for name, m in model.named_modules() if getattr(m, _HOOK, None) is not None}


def remove_output_multipliers(model: nn.Module) -> None:
    """Take off every multiplier ``set_output_multiplier`` put on a module of ``model``."""
    for m in model.modules():
        hook = getattr(m, _HOOK, None)
        if hook is not None:
            hook.remove()
            delattr(m, _HOOK)
            delattr(m, _MULT)
