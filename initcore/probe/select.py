"""Which modules of a model become rows of a trace: its declarations, or a selection the caller gives.

A model whose modules declare ``MEASURE`` (``initcore.models.points``) is measured as declared. Any
other model is measured by a selection:

- ``"default"``: every module that owns parameters itself (Linear, Conv, norms, Embedding, ...; a
  parametrized weight's, ``weight_norm``'s or ``orthogonal``'s, counts as its module's own), every
  activation module (``is_activation``: torch's ``ACTIVATION_TYPES``, and other libraries' by the
  declared ``ACTIVATION_LIBRARIES`` or a class name ending in "Activation"), whose input is then its
  pre-activation, and the residual stream: the output of each block (``"blocks"``), when there are any;
- ``"blocks"``: the repeated blocks of ``initcore.models.structure.blocks`` (children of an
  ``nn.ModuleList`` / ``nn.Sequential`` whose type occurs at least twice there and which have children
  themselves; nothing inside a block already chosen): the residual-stream view. A flat
  ``nn.Sequential(Linear, ReLU, ...)`` has none, and ``"blocks"`` on it raises ValueError;
- a module type or a tuple of types; a name pattern (``fnmatch``: ``"h.*.mlp"``); a list of patterns
  or names; or a callable ``(name, module) -> bool``.

``select=None`` takes the declarations if there are any, else ``"default"``; ``"declared"`` insists on
them. Each row measures the output of its module (the first floating tensor of a tuple, list, dict or
dataclass output), and the gradients of every parameter under it. A row's ``layer`` is the index of
the block it lies in (counting every block of the model in order), else the first integer of its name.
Attention statistics are rows of their own (``initcore.probe.tracing``: ``<module>:sdpa``).
"""

from __future__ import annotations

import dataclasses
import fnmatch
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from torch import nn

from initcore.models import structure
from initcore.models.points import Measure

ACTIVATION_TYPES: tuple[type[nn.Module], ...] = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.RReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU, nn.Mish,
    nn.Tanh, nn.Sigmoid, nn.Hardtanh, nn.Hardsigmoid, nn.Hardswish, nn.Softplus, nn.Softsign, nn.Tanhshrink,
    nn.LogSigmoid, nn.Threshold, nn.GLU,
)
# Modules where other libraries define their activation modules (Hugging Face's NewGELUActivation,
# GELUTanh, SiLUActivation, ...; timm's GELU, Swish, ...): a class defined in one of them is an activation.
ACTIVATION_LIBRARIES = ("transformers.activations", "timm.layers.activations", "timm.layers.activations_me",
                        "timm.models.layers.activations", "diffusers.models.activations")
BOUNDED_TYPES: tuple[type[nn.Module], ...] = (nn.Tanh, nn.Sigmoid)  # saturated_frac (|a| > 0.9) applies
SELECTIONS = ("declared", "default", "blocks")

Selection = str | type | tuple | list | Callable[[str, nn.Module], bool] | None


@dataclass(frozen=True)
class Point:
    """A measurement point: one row of a trace (one per call of its module; see ``initcore.probe.trace``)."""

    name: str  # the row's name: a module path
    kind: str
    layer: int  # the residual block's index, else the first integer of the name, else -1
    module: nn.Module  # whose output is measured
    module_name: str
    params: tuple[nn.Parameter, ...]  # whose gradients make grad_norm, grad_mean, grad_std
    preact: nn.Module | str | None = None  # whose output is the pre-activation; "input": the module's input
    bounded: bool = False
    attention: bool = False  # takes the attention statistics of the SDPA calls made inside its module
    output: int | str | None = None  # which element of a container output; None: the first floating tensor
    declared: bool = False  # from a MEASURE declaration


def points(model: nn.Module, select: Selection = None, *, modules: dict[str, nn.Module] | None = None) -> list[Point]:
    """The measurement points of ``model`` for ``select`` (see the module docstring), in module order.
    ``modules``: ``dict(model.named_modules())``, where the caller has walked the model already.

    Raises:
        ValueError: a selection that is none of the forms above, ``"declared"`` on a model that declares
            nothing, a declaration naming a module or parameter that does not exist, or a selection that
            matches no module (the message lists the model's modules).
    """
    names = dict(model.named_modules()) if modules is None else modules
    if select is None:
        found = _declared(model, names)
        return found if found else _check_found(_default(model), "default", model)
    if isinstance(select, str) and select in SELECTIONS:
        chosen = {"declared": lambda: _declared(model, names), "default": lambda: _default(model),
                  "blocks": lambda: _blocks(model)}[select]()
        return _check_found(chosen, select, model)
    match = _matcher(select)
    chosen = [_generic(model, name, m) for name, m in model.named_modules() if match(name, m)]
    return _check_found(chosen, select, model)


def _check_found(found: list[Point], select, model: nn.Module) -> list[Point]:
    if found:
        return found
    listed = [f"{n or '(root)'} ({type(m).__name__})" for n, m in model.named_modules()]
    shown = ", ".join(listed[:12]) + (f", ... ({len(listed)} in all)" if len(listed) > 12 else "")
    what = "declares no MEASURE" if select == "declared" else f"has no module matching select={select!r}"
    raise ValueError(f"{type(model).__name__} {what}; its modules: {shown}. Select by type, name pattern, "
                     f"list of names, callable, or one of {', '.join(SELECTIONS)}")


def _matcher(select) -> Callable[[str, nn.Module], bool]:
    if isinstance(select, type) and issubclass(select, nn.Module):
        return lambda name, m: isinstance(m, select)
    if isinstance(select, str):
        return lambda name, m: fnmatch.fnmatchcase(name, select)
    if isinstance(select, (tuple, list, set, frozenset)) and select:
        parts = [_matcher(s) for s in select]
        return lambda name, m: any(p(name, m) for p in parts)
    if callable(select) and not isinstance(select, type):
        return select
    raise ValueError(f"select={select!r}: give a module type, a name pattern, a list of those, a callable "
                     f"(name, module) -> bool, or one of {', '.join(SELECTIONS)}")


def _layer(name: str, blocks: dict[str, int] | None = None) -> int:
    if blocks:
        owner = max((p for p in blocks if name == p or name.startswith(p + ".")), key=len, default=None)
        if owner is not None:
            return blocks[owner]
    return next((int(part) for part in name.split(".") if part.isdigit()), -1)


def _join(prefix: str, rel: str) -> str:
    return f"{prefix}.{rel}" if prefix and rel else prefix or rel


def _all_params(module: nn.Module) -> tuple[nn.Parameter, ...]:
    return tuple(module.parameters())


def is_activation(module: nn.Module) -> bool:
    """Whether ``module`` is an activation: one of torch's ``ACTIVATION_TYPES``, a class defined in one of
    ``ACTIVATION_LIBRARIES``, or a leaf module whose class name ends in "Activation" (the convention of
    Hugging Face and others). A declared list and a naming convention, not torch.nn membership alone."""
    if isinstance(module, ACTIVATION_TYPES):
        return True
    cls = type(module)
    if cls.__module__ in ACTIVATION_LIBRARIES:
        return True
    return cls.__name__.endswith("Activation") and next(module.children(), None) is None


def block_indices(model: nn.Module) -> dict[str, int]:
    """Block name -> its index among all the model's blocks (``structure.blocks``), in module order."""
    return {name: i for i, (name, _) in enumerate(structure.blocks(model))}


def layer_of(name: str, blocks: dict[str, int]) -> int:
    """A row's ``layer``: the index of the innermost block ``name`` lies in, else its first integer, else -1."""
    return _layer(name, blocks)


def _generic(model: nn.Module, name: str, module: nn.Module, kind: str | None = None,
             blocks: dict[str, int] | None = None) -> Point:
    activation = is_activation(module)
    return Point(name, kind or type(module).__name__.lower(), _layer(name, blocks), module, name,
                 _all_params(module), preact="input" if activation else None,
                 bounded=isinstance(module, BOUNDED_TYPES))


def _default(model: nn.Module) -> list[Point]:
    alone = len(list(model.modules())) == 1  # a bare Linear is its own row; a model's root otherwise is not
    blocks = block_indices(model)
    found, inner = [], []  # inner: the parametrizations of parametrized modules, whose weights are theirs
    for name, m in model.named_modules():
        if any(name == p or name.startswith(p + ".") for p in inner):
            continue
        if name in blocks:
            found.append(_generic(model, name, m, kind="block", blocks=blocks))
            continue
        parametrized = isinstance(getattr(m, "parametrizations", None), nn.ModuleDict)  # torch's parametrize
        if parametrized:
            inner.append(_join(name, "parametrizations"))
        owns = parametrized or next(m.parameters(recurse=False), None) is not None
        if (owns and (name or alone)) or is_activation(m):
            found.append(_generic(model, name, m, blocks=blocks))
    return found


def _blocks(model: nn.Module) -> list[Point]:
    found = structure.blocks(model)
    blocks = {name: i for i, (name, _) in enumerate(found)}
    return [_generic(model, name, m, kind="block", blocks=blocks) for name, m in found]


def _plain(module: nn.Module, name: str):
    """A plain attribute of ``module`` (its own, or its class's), or None, without nn.Module.__getattr__'s
    search of parameters, buffers and submodules (a third of a 10-layer MLP trace's selection time)."""
    found = module.__dict__.get(name)
    return found if found is not None else getattr(type(module), name, None)


def _declared(model: nn.Module, names: dict[str, nn.Module]) -> list[Point]:
    blocks = {n: m.block_index for n, m in names.items() if isinstance(_plain(m, "block_index"), int)}
    params: dict[str, nn.Parameter] = {}  # filled at the first declaration that names parameters
    found = []
    for prefix, module in names.items():
        for rel, decl in (_plain(module, "MEASURE") or {}).items():
            if not isinstance(decl, Measure):
                raise ValueError(f"{type(module).__name__}.MEASURE[{rel!r}] must be an initcore.models.Measure, "
                                 f"got {type(decl).__name__}")
            name = _join(prefix, rel)
            target = _join(prefix, decl.module if decl.module is not None else rel)
            if target not in names:
                raise ValueError(f"{type(module).__name__}.MEASURE[{rel!r}] measures module {target!r}, "
                                 f"which {type(model).__name__} does not have")
            preact = decl.preact
            if preact not in (None, "input"):
                preact_name = _join(prefix, preact)
                if preact_name not in names:
                    raise ValueError(f"{type(module).__name__}.MEASURE[{rel!r}] takes its pre-activation from "
                                     f"module {preact_name!r}, which {type(model).__name__} does not have")
                preact = names[preact_name]
            if decl.params is None:
                owned = _all_params(names[target])
            else:
                params = params or dict(model.named_parameters())
                missing = [p for p in decl.params if _join(prefix, p) not in params]
                if missing:
                    raise ValueError(f"{type(module).__name__}.MEASURE[{rel!r}] names parameters {missing} "
                                     f"that {type(model).__name__} does not have")
                owned = tuple(params[_join(prefix, p)] for p in decl.params)
            found.append(Point(name, decl.kind, _layer(name, blocks), names[target], target, owned, preact,
                               decl.bounded, decl.attention, decl.output, declared=True))
    return found


def owned_params(model: nn.Module, chosen: list[Point]) -> Iterator[tuple[Point, str, nn.Parameter]]:
    """(row, parameter name, parameter) for each parameter of the ``chosen`` rows, once, on the innermost row
    that holds it (a block's row and its Linear's both hold the Linear's weight: the Linear's row has it)."""
    names = {id(p): n for n, p in model.named_parameters()}
    owner: dict[int, int] = {}
    for i, point in sorted(enumerate(chosen), key=lambda t: -len(t[1].module_name)):
        for p in point.params:
            owner.setdefault(id(p), i)
    for i, point in enumerate(chosen):
        for p in point.params:
            if owner[id(p)] == i:
                yield point, names.get(id(p), ""), p


def first_tensor(output, key: int | str | None = None, what: str = "output"):
    """The tensor of a module's (or model's) ``output`` to measure: ``output[key]`` if ``key`` is given,
    else the first floating-point tensor of a tensor, tuple, list, dict (a Hugging Face ``ModelOutput``
    included) or dataclass; None if there is none."""
    import torch

    if key is not None:
        try:
            chosen = output[key] if not dataclasses.is_dataclass(output) or isinstance(output, dict) \
                else getattr(output, key)
        except (KeyError, IndexError, TypeError, AttributeError):
            return None
        return chosen if isinstance(chosen, torch.Tensor) else None
    if isinstance(output, torch.Tensor):
        return output if output.is_floating_point() else None
    if isinstance(output, dict):
        items: Iterable = output.values()
    elif isinstance(output, (tuple, list)):
        items = output
    elif dataclasses.is_dataclass(output) and not isinstance(output, type):
        items = (getattr(output, f.name) for f in dataclasses.fields(output))
    else:
        return None
    for item in items:
        if isinstance(item, torch.Tensor) and item.is_floating_point():
            return item
    return None


__all__ = ["ACTIVATION_LIBRARIES", "ACTIVATION_TYPES", "BOUNDED_TYPES", "SELECTIONS", "Point", "block_indices",
           "first_tensor", "is_activation", "layer_of", "points"]
