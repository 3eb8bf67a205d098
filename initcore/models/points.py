"""Measurement points: which outputs a probe records as rows, declared by the module that owns them.

Beside ``ROLES`` (what each parameter *is*), a module may declare ``MEASURE``: a mapping from a row's
path, relative to the module (``""`` for the module itself), to a ``Measure`` saying what that row is.
``initcore.probe`` walks these declarations as ``param_roles`` walks roles, so nothing is told apart by
attribute names. A model that declares nothing is measured by a selection its caller gives (see
``initcore.probe.select``). This module holds names only; models import nothing of measurement.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Measure:
    """One row of a probe trace, as the declaring module describes it (every path relative to it)."""

    kind: str  # the row's kind: "linear", "attn", "ffn", "block", ...
    module: str | None = None  # the module whose output is the row's activation; None: the row's own path
    preact: str | None = None  # the module whose output is the pre-activation; "input": the measured module's input
    params: tuple[str, ...] | None = None  # parameters whose gradients make grad_*; None: all under ``module``
    bounded: bool = False  # a bounded activation (tanh, sigmoid): saturated_frac applies
    attention: bool = False  # attention statistics of the scaled_dot_product_attention calls made inside
    output: int | str | None = None  # the element of a tuple or dict output to measure; None: the first tensor
