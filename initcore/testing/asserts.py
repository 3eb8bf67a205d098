"""Assertions for a user's own pytest suite: a traced model is healthy at init, by ``initcore.diagnose``."""

from __future__ import annotations

from collections.abc import Iterable

import pandas as pd
import pytest

from initcore import diagnose


def assert_healthy(frame: pd.DataFrame, *, allow: Iterable[str] = ()) -> None:
    """Fail the test, with diagnose's findings (evidence and fixes) as its message, if ``frame`` shows a
    symptom of ``diagnose.SYMPTOMS``: vanishing or exploding gradients, dead ReLU units, saturation,
    NaN or Inf, a signal that shrinks or grows geometrically with depth (a residual stream's growth).

    Args:
        frame: a ``probe.trace`` frame (the ``trace_run`` fixture's; its parameter rows are ignored).
        allow: names of symptoms that are expected here (``diagnose.SYMPTOMS`` keys).

    Raises:
        ValueError: ``allow`` names a symptom that does not exist.
    """
    allow = set(allow)
    unknown = sorted(allow - set(diagnose.SYMPTOMS))
    if unknown:
        raise ValueError(f"unknown symptoms {unknown}; valid: {', '.join(diagnose.SYMPTOMS)}")
    rows = frame[frame["kind"] != "param"] if "kind" in frame.columns else frame
    findings = diagnose.diagnose(rows)
    findings = findings[~findings["symptom"].isin(allow)]
    if len(findings):
        pytest.fail(f"unhealthy at init: {len(findings)} symptom(s)\n"
                    f"{diagnose.format_findings(findings.reset_index(drop=True))}", pytrace=False)


def assert_init(model, expect=None, *, roles=None, allow: Iterable[str] = (), seed: int = 0) -> pd.DataFrame:
    """Fail the test, with the audit's grouped table of what differs, if any parameter of ``model`` is not
    initialized as ``expect`` says or raises any flag of ``initcore.audit`` (uninitialized, untied, left at
    torch's default among its peers, packed, transposed, equal but untied, a group member that differs);
    return the audit frame.

    Args:
        model: any ``nn.Module``, as its factory built and initialized it.
        expect: a strategy (read by each parameter's role, see ``roles``), a rule (``"normal(0.02)"``), or a
            mapping from name pattern to rule (``{"*.c_proj.weight": "normal(0.02/sqrt(2L))", "*": ...}``);
            None: the flags alone.
        roles: name pattern -> role, for ``expect`` strategies on parameters no module declares.
        allow: flags that are expected here (``auditing.FLAGS``).
    """
    from initcore import auditing

    allow = set(allow)
    unknown = sorted(allow - set(auditing.FLAGS))
    if unknown:
        raise ValueError(f"unknown flags {unknown}; valid: {', '.join(auditing.FLAGS)}")
    frame = auditing.audit(model, expect=expect, roles=roles, seed=seed)
    flags = frame["flags"].map(lambda text: {f for f in text.split(", ") if f} - allow)
    bad = frame[flags.map(bool)]
    if len(bad):
        pytest.fail(f"init not as intended: {len(bad)} of {len(frame)} parameters\n"
                    f"{auditing.format_table(auditing.grouped(bad))}", pytrace=False)
    return frame


__all__ = ["assert_healthy", "assert_init"]


def assert_representable(frame: pd.DataFrame, dtype, *, flushed: float = 0.01, overflow: float = 0.0,
                         scaling: str = "none", tensors=None) -> None:
    """Fail the test if a traced tensor would not survive a cast to ``dtype``: more than ``flushed`` of its
    nonzero entries flushed to zero, or more than ``overflow`` overflowing or saturating. The message ranks
    the tensors that do not fit, worst first, with the fractions a Gaussian of their std would give.

    Args:
        frame: a ``probe.trace(..., statistics="precision")`` frame, or its ``attrs["precision"]``.
        dtype: a format of ``initcore.probe.precision.FORMATS`` (a torch dtype or its name).
        scaling: "none" (as the tensors are; gradients under the trace's loss scale) or "tensor" (each
            scaled by the power of two that brings its amax below the format's max).
        tensors: which of "output", "output_grad", "weight", "weight_grad" (default: all).

    Raises:
        ValueError: an unknown format, a format this torch lacks, an unknown scaling or tensor kind, a
            tolerance outside [0, 1], or a frame without a precision table.
    """
    from initcore.probe import precision

    bad = precision.misfits(frame, dtype, flushed=flushed, overflow=overflow, scaling=scaling, tensors=tensors)
    if len(bad):
        shown = bad.drop(columns=["subnormal_gaussian"]).to_string(index=False, float_format=lambda v: f"{v:.3g}")
        pytest.fail(f"{len(bad)} tensor(s) do not fit {precision.format_of(dtype).name} ({scaling} scaling; "
                    f"tolerances: flushed {flushed}, overflow {overflow}), worst first:\n{shown}", pytrace=False)
