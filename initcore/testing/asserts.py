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


__all__ = ["assert_healthy"]
