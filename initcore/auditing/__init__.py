"""The audit: what init each parameter of a model actually has, and whether it is the intended one.

``audit(model)`` (also ``initcore.audit``) returns one row per parameter; ``grouped`` folds the rows of a
repeated block into one line; ``format_table`` prints them within 120 columns; ``materialize`` builds a model
on the meta device and runs its own init, as large-model trainers do. Homes: ``fit`` (pure statistics),
``layout`` (fans and the values read, torch), ``catalogue`` (the rules), ``core`` (rows and flags),
``table`` (text), ``meta`` (meta-device builds).

Imported lazily: ``initcore.init`` reads ``auditing.fit`` to check what ``apply`` drew, and the catalogue
reads ``initcore.init``'s promises; neither import may run the other's package first.
"""

from __future__ import annotations

_EXPORTS = {"FLAGS": "core", "audit": "core", "flagged": "core", "group_of": "core", "grouped": "core",
            "materialize": "meta", "format_table": "table"}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(f"initcore.auditing.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'initcore.auditing' has no attribute {name!r}")
