"""A user's own model on the command line: ``--model package.module:factory``.

The factory is any callable in an importable module (the current directory is importable, as under
``python -m``). It is called as ``factory(seed)`` when it takes an argument, else as ``factory()``;
either way ``torch.manual_seed(seed)`` is set first, so the same ``--seed`` gives the same model. It returns
the model (an ``nn.Module``) and the CLI draws the inputs from ``--input-shape`` (and ``--vocab``, for
token ids), or it returns ``(model, inputs)``. Everything that can go wrong here is a ``ValueError`` whose
one line names ``--model`` and what would be valid.
"""

from __future__ import annotations

import importlib
import inspect
import os
import sys
from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import nn


class Built(NamedTuple):
    model: nn.Module
    inputs: object | None  # what the factory returned beside the model, or None


def is_reference(text: str) -> bool:
    """Whether ``--model`` names a factory (``package.module:factory``) rather than a built-in model."""
    return ":" in text


def _one_line(e: BaseException) -> str:
    return f"{type(e).__name__}: {' '.join(str(e).split()) or '(no message)'}"


def root_cause(e: BaseException) -> BaseException:
    """The exception at the bottom of ``e``'s chain (``raise ... from``, or raised while handling another):
    what a traceback shows last. transformers' "Could not import module 'GPT2LMHeadModel'" hides its
    cause there."""
    seen = {id(e)}
    while True:
        below = e.__cause__ if e.__cause__ is not None else (None if e.__suppress_context__ else e.__context__)
        if below is None or id(below) in seen:
            return e
        seen.add(id(below))
        e = below


def one_line(e: BaseException) -> str:
    """``Type: message`` on one line, with the root cause's where the exception has one."""
    root = root_cause(e)
    return _one_line(e) + ("" if root is e else f" (caused by {_one_line(root)})")


def _file_hint(module_name: str, attribute: str) -> str:
    """For ``mygpt.py:make`` or ``models/mygpt.py:make``: the reference to give instead, else ''."""
    if not module_name.endswith(".py"):
        return ""
    folder, stem = os.path.split(os.path.normpath(module_name[:-3]))
    where = f" from {folder} (or with {folder} on PYTHONPATH)" if folder else ""
    return f"; for the file {module_name}, give --model {stem}:{attribute}{where}"


def resolve(reference: str) -> Callable:
    """The callable named by ``package.module:attribute[.attribute...]``.

    Raises:
        ValueError: a malformed reference, a module that cannot be imported, a missing attribute, or one
            that is not callable.
    """
    module_name, _, attribute = reference.partition(":")
    if not module_name or not attribute or ":" in attribute or not all(
            part.isidentifier() for part in (*module_name.split("."), *attribute.split("."))):
        raise ValueError(f"--model {reference!r}: a model of your own is package.module:factory "
                         f"(dotted names, one colon), e.g. mymodels:build{_file_hint(module_name, attribute)}")
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:  # the console script's path lacks it; python -m has ''
        sys.path.insert(0, cwd)
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if _file_hint(module_name, attribute) and e.name in (module_name, module_name[:-3]):
            raise ValueError(f"--model {reference}: no module named {module_name!r}"
                             f"{_file_hint(module_name, attribute)}") from None
        if e.name == module_name or module_name.startswith(f"{e.name}."):  # it, not something it imports
            raise ValueError(f"--model {reference}: no module named {e.name!r} (run from the folder that holds "
                             f"it, or put that folder on PYTHONPATH)") from None
        raise ValueError(f"--model {reference}: importing {module_name} failed: {one_line(e)}") from None
    except Exception as e:  # the user's module raised while importing: say what and why, not where
        raise ValueError(f"--model {reference}: importing {module_name} raised {one_line(e)}") from None
    target = module
    for part in attribute.split("."):
        if not hasattr(target, part):
            names = sorted(n for n, v in vars(target).items() if callable(v) and not n.startswith("_"))
            shown = ", ".join(names[:12]) + (", ..." if len(names) > 12 else "")
            raise ValueError(f"--model {reference}: {getattr(target, '__name__', module_name)} has no attribute "
                             f"{part!r}; its callables: {shown or 'none'}")
        target = getattr(target, part)
    if not callable(target):
        raise ValueError(f"--model {reference}: {attribute} is not callable (type {type(target).__name__}); give "
                         "a callable that returns a model")
    return target


def _takes_an_argument(factory: Callable) -> bool:
    try:
        params = inspect.signature(factory).parameters.values()
    except (TypeError, ValueError):  # a builtin without a signature: call it bare
        return False
    return any(p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.VAR_POSITIONAL) for p in params)


def build(reference: str, seed: int) -> Built:
    """Call the factory of ``reference`` with ``seed`` and check what it returned.

    Raises:
        ValueError: anything ``resolve`` raises, a factory that raised, or one that returned neither an
            ``nn.Module`` nor ``(nn.Module, inputs)``.
    """
    factory = resolve(reference)
    torch.manual_seed(seed)
    try:
        made = factory(seed) if _takes_an_argument(factory) else factory()
    except Exception as e:
        raise ValueError(f"--model {reference}: the factory raised {one_line(e)}") from None
    if isinstance(made, nn.Module):
        return Built(made, None)
    if isinstance(made, tuple) and len(made) == 2 and isinstance(made[0], nn.Module):
        return Built(made[0], made[1])
    got = type(made).__name__ if not isinstance(made, tuple) else \
        f"a tuple of {len(made)} ({', '.join(type(m).__name__ for m in made)})"
    raise ValueError(f"--model {reference}: the factory returned {got}; it must return an nn.Module, or "
                     "(nn.Module, inputs)")
