"""The report: every experiment of ``initcore.experiments`` traced and drawn with its theory and its baselines'
seed band, or one model of the user's drawn row by row, on one page (``index.html``) with a summary at the
top of what was checked against what.

``collect(seed)`` runs the experiments and returns one ``Section`` per figure (``initcore.report.sections``),
``write(sections, out)`` draws and writes them (``initcore.report.page``), ``write_report`` does both.
``write_model_report`` does the same for any ``nn.Module`` and its inputs. Seed bands and baseline checks
come from ``baselines/`` (``initcore.report.bands``). matplotlib is needed to draw: ``pip install
'initcore[plot]'``.
"""

from __future__ import annotations

import html
import os
import time
from pathlib import Path

import torch

from initcore.report.bands import SeedBands
from initcore.report.page import INSTALL_HINT, PlottingUnavailable, require_matplotlib, write
from initcore.report.sections import Check, ReportRuns, Section, collect, model_sections

__all__ = ["INSTALL_HINT", "Check", "PlottingUnavailable", "ReportRuns", "SeedBands", "Section", "collect",
           "model_sections", "require_matplotlib", "write", "write_model_report", "write_report"]


def write_report(out: str | os.PathLike, seed: int = 0, runs: ReportRuns | None = None, dpi: int = 110,
                 bands: SeedBands | None = None) -> Path:
    """``collect`` then ``write``: the whole report into ``out``; returns the path of ``index.html``.

    Raises:
        PlottingUnavailable: matplotlib cannot be imported (checked first: nothing is run or written).
    """
    require_matplotlib()
    start = time.perf_counter()
    sections = collect(seed, runs, bands)
    return write(sections, out, seed, time.perf_counter() - start, dpi)


def write_model_report(out: str | os.PathLike, label: str, model: torch.nn.Module, inputs, loss="random",
                       select=None, seed: int = 0, dpi: int = 110) -> Path:
    """The report of one model (``model_sections``) into ``out``; returns the path of ``index.html``.

    Raises:
        PlottingUnavailable: matplotlib cannot be imported (checked first: nothing is traced or written).
    """
    require_matplotlib()
    start = time.perf_counter()
    sections = model_sections(label, model, inputs, loss, select)
    return write(sections, out, seed, time.perf_counter() - start, dpi, title=f"Signal propagation at "
                 f"initialization: {label}", source=f"<code>{html.escape(label)}</code>")
