"""The audit as text: the grouped table within a line width, each flag's evidence below it."""

from __future__ import annotations

import textwrap

import pandas as pd

LINE_WIDTH = 120
COLUMNS = ("group", "n", "shape", "fit", "rule", "flags")


def _clip(text: str, width: int) -> str:
    text = str(text)
    return text if len(text) <= width else text[: width // 2 - 1] + "…" + text[-(width - width // 2):]


def format_table(groups: pd.DataFrame, width: int = LINE_WIDTH) -> str:
    """``grouped(audit(model))`` as lines of at most ``width`` columns: a table of the groups, then one
    wrapped paragraph per flagged group with its evidence, then the tied parameters."""
    if groups.empty:
        return "(no parameters)\n"
    cells = [[str(v) for v in groups[c]] for c in COLUMNS]
    widths = [max(len(c), *(len(v) for v in col)) for c, col in zip(COLUMNS, cells, strict=True)]
    caps = {"group": 40, "fit": 30, "rule": 28, "shape": 12}
    while sum(widths) + 2 * (len(widths) - 1) > width:
        over = sum(widths) + 2 * (len(widths) - 1) - width
        i = max(range(len(COLUMNS)), key=lambda k: widths[k] - caps.get(COLUMNS[k], widths[k]))
        if widths[i] <= caps.get(COLUMNS[i], widths[i]):
            i = max(range(len(COLUMNS)), key=lambda k: widths[k])
        widths[i] = max(len(COLUMNS[i]), widths[i] - over)
    lines = ["  ".join(c.ljust(w) for c, w in zip(COLUMNS, widths, strict=True)).rstrip()]
    for r in range(len(groups)):
        row = [_clip(cells[k][r], widths[k]) for k in range(len(COLUMNS))]
        lines.append("  ".join((v.rjust if COLUMNS[k] == "n" else v.ljust)(widths[k])
                               for k, v in enumerate(row)).rstrip())
    notes = [(g, f, e) for g, f, e in zip(groups["group"], groups["flags"], groups["evidence"], strict=True) if f]
    if notes:
        lines.append("")
        for group, flags, evidence in notes:
            lines += textwrap.wrap(f"{flags}: {group}: {evidence}", width=width, subsequent_indent="    ")
    tied = [(g, t) for g, t in zip(groups["group"], groups["tied"], strict=True) if t]
    for group, names in tied:
        lines += textwrap.wrap(f"tied: {group} = {names}", width=width, subsequent_indent="    ")
    return "\n".join(lines) + "\n"


__all__ = ["LINE_WIDTH", "format_table"]
