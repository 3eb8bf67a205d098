"""Writing the report: each section as ``<name>.png`` beside ``<name>.csv``, and ``index.html`` with a summary
at the top (what was checked, against which theory or baseline, and whether it held) and relative links,
so the page opens from disk with no server. Every file is written atomically (a temporary file in the same
folder, then ``os.replace``).

matplotlib is an optional extra (``pip install 'initcore[plot]'``), imported only to draw. Figures are
``matplotlib.figure.Figure`` objects saved through the Agg canvas, never pyplot: no global backend is
switched, so calling this from a notebook leaves its inline backend alone.
"""

from __future__ import annotations

import html
import io
import os
from collections.abc import Sequence
from pathlib import Path

from initcore.files import atomic_write
from initcore.report.sections import Check, Section

INSTALL_HINT = "matplotlib is not installed; pip install 'initcore[plot]'"
# Set on <body> once the page has loaded: "N images, M loaded". A browser (or a headless one in a test) reads
# whether every figure arrived; a figure that did not is named at the top of the page.
IMAGE_CHECK = """<script>
window.addEventListener("load", function () {
  var images = Array.prototype.slice.call(document.images);
  var broken = images.filter(function (i) { return !(i.complete && i.naturalWidth > 0); });
  document.body.setAttribute("data-images", images.length + " images, " + (images.length - broken.length)
                             + " loaded");
  if (broken.length) {
    var note = document.createElement("p");
    note.className = "broken";
    note.textContent = broken.length + " figure(s) did not load: " + broken.map(function (i) {
      return i.getAttribute("src"); }).join(", ") + ". Run initcore report again.";
    document.body.insertBefore(note, document.body.firstChild);
  }
});
</script>"""

_STYLE = """body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222}
img{max-width:100%;border:1px solid #ddd}table{border-collapse:collapse;font-size:12px;margin:.5em 0}
td,th{border:1px solid #ccc;padding:2px 6px;text-align:right}th{background:#f3f3f3}
td:first-child,th:first-child{text-align:left}summary{cursor:pointer;color:#036}p.caption{max-width:900px}
table.summary td{text-align:left}td.pass{color:#060;font-weight:bold}td.fail{color:#b00;font-weight:bold}
td.info{color:#555}p.broken{background:#fdd;padding:.5em;border:1px solid #b00}
div.scroll{overflow-x:auto;max-width:100%}table.summary td{overflow-wrap:anywhere}
table.summary td:last-child{min-width:20em}"""


class PlottingUnavailable(RuntimeError):
    """matplotlib cannot be imported: the report cannot draw."""


def require_matplotlib() -> None:
    """Raise ``PlottingUnavailable`` (with ``INSTALL_HINT``) unless matplotlib imports."""
    try:
        import matplotlib  # noqa: F401
        from matplotlib.figure import Figure  # noqa: F401
    except ImportError as e:
        raise PlottingUnavailable(INSTALL_HINT) from e


def png(section: Section, dpi: int) -> bytes:
    from matplotlib.figure import Figure

    fig = Figure(figsize=section.size, layout="constrained")
    section.draw(fig)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    return buffer.getvalue()


def _outcome(check: Check) -> tuple[str, str]:
    return {True: ("pass", "pass"), False: ("fail", "FAIL"), None: ("info", "measured")}[check.passed]


def summary(sections: Sequence[Section]) -> str:
    """The top of the page: how many checks held, then one row per check (section, against what, outcome)."""
    checks = [c for s in sections for c in s.checks]
    titles = {s.name: s.title for s in sections}
    decided = [c for c in checks if c.passed is not None]
    failed = [c for c in decided if not c.passed]
    head = (f"<p><b>{len(decided) - len(failed)} of {len(decided)} checks passed</b>"
            + (f", <b>{len(failed)} failed</b>" if failed else "")
            + f"; {len(checks) - len(decided)} more figures compare measurement and theory by the numbers below "
            "(their pass/fail is the bench's, with its own tolerances: <code>make bench</code>).</p>")
    rows = "".join(
        f"<tr><td><a href='#{c.section}'>{html.escape(titles.get(c.section, c.section))}</a></td>"
        f"<td>{html.escape(c.against)}</td><td class='{_outcome(c)[0]}'>{_outcome(c)[1]}</td>"
        f"<td>{html.escape(c.detail)}</td></tr>" for c in checks)
    return (f"<h2 id='summary'>Summary</h2>{head}<div class='scroll'><table class='summary'><tr><th>figure</th>"
            f"<th>compared against</th><th>result</th><th>detail</th></tr>{rows}</table></div>")


def page(sections: Sequence[Section], seed: int, seconds: float, title: str, source: str) -> str:
    parts = [f"<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
             f"<style>{_STYLE}</style></head><body>",
             f"<h1>{html.escape(title)}</h1>",
             f"<p>Regenerated by <code>initcore report</code> from <code>initcore.probe</code> traces of "
             f"{source}, seed {seed}, in {seconds:.1f} s. Each figure's numbers are in the table below it and in "
             f"the CSV beside it.</p>",
             summary(sections), "<h2>Figures</h2><ul>"]
    parts += [f"<li><a href='#{s.name}'>{html.escape(s.title)}</a></li>" for s in sections]
    parts.append("</ul>")
    for s in sections:
        parts.append(f"<h2 id='{s.name}'>{html.escape(s.title)}</h2><p class='caption'>{html.escape(s.caption)}</p>")
        if s.draw is not None:
            parts.append(f"<img src='{s.name}.png' alt='{html.escape(s.title, quote=True)}'>")
        table = s.table.to_html(index=False, float_format=lambda v: f"{v:.4g}", na_rep="", border=0)
        table = f"<div class='scroll'>{table}</div>"  # a wide table scrolls inside the page, not off it
        open_ = " open" if s.draw is None else ""
        parts.append(f"<details{open_}><summary>table: {len(s.table)} rows (<a href='{s.name}.csv'>{s.name}.csv"
                     f"</a>)</summary>{table}</details>")
    parts.append(IMAGE_CHECK)
    parts.append("</body></html>\n")
    return "\n".join(parts)


def write(sections: Sequence[Section], out: str | os.PathLike, seed: int = 0, seconds: float = 0.0,
          dpi: int = 110, title: str = "Signal propagation at initialization",
          source: str = "the experiments in <code>initcore.experiments</code>") -> Path:
    """Render ``sections`` into ``out`` (created if needed): PNGs, CSVs and ``index.html``; its path.

    ``seed`` and ``seconds`` (how long the collection took) are stated on the page; ``source`` is HTML.

    Raises:
        PlottingUnavailable: matplotlib cannot be imported (nothing is written).
    """
    require_matplotlib()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for s in sections:
        if s.draw is not None:
            atomic_write(out / f"{s.name}.png", png(s, dpi))
        atomic_write(out / f"{s.name}.csv", s.table.to_csv(index=False).encode())
    index = out / "index.html"
    atomic_write(index, page(sections, seed, seconds, title, source).encode())
    return index
