"""What a bench session did, for the plugin's end-of-run summary: statistics checked against baselines,
their configurations and devices, CUDA cases skipped, baseline rows staged for writing, lines tests added.

One ``RunRecord`` per process; under pytest-xdist each worker sends ``to_dict()`` (plain lists and
numbers, what execnet carries) and the controller ``merge``s them, so the summary and the baseline files
are the whole run's, written once by one process.
"""

from __future__ import annotations

import shutil
import textwrap
from dataclasses import dataclass, field

LINE_WIDTH = 120


@dataclass
class RunRecord:
    """Counts and lines of one run (or, after ``merge``, of all its workers)."""

    checked: dict[str, int] = field(default_factory=dict)  # "experiment/config/device" -> statistics compared
    cuda_skipped: int = 0
    lines: list[tuple[str, str]] = field(default_factory=list)  # (test node id, text) from ``summary_line``
    staged: dict[str, list[dict]] = field(default_factory=dict)  # experiment -> baseline rows, as records
    staged_records: dict[str, dict[str, dict]] = field(default_factory=dict)  # experiment -> config -> seed record
    workers_failed: bool = False
    # "experiment/config/device" -> [why the exact check did not apply ("" where it did), largest rel. difference]
    exact: dict[str, list] = field(default_factory=dict)

    def record_check(self, experiment: str, config: str, device: str, n: int, note: str | None = None,
                     largest: float | None = None) -> None:
        key = f"{experiment}/{config}/{device}"
        self.checked[key] = n
        self.exact[key] = [note or "", largest]

    def to_dict(self) -> dict:
        return {"checked": dict(self.checked), "cuda_skipped": self.cuda_skipped,
                "lines": [list(line) for line in self.lines], "staged": self.staged,
                "staged_records": self.staged_records, "exact": dict(self.exact)}

    def merge(self, data: dict) -> None:
        self.checked.update(data.get("checked", {}))
        self.exact.update(data.get("exact", {}))
        self.cuda_skipped += int(data.get("cuda_skipped", 0))
        self.lines += [(nodeid, text) for nodeid, text in data.get("lines", [])]
        for experiment, records in data.get("staged", {}).items():
            self.staged.setdefault(experiment, []).extend(records)
        for experiment, records in data.get("staged_records", {}).items():
            self.staged_records.setdefault(experiment, {}).update(records)

    def exact_line(self) -> str | None:
        """How many configurations equal their stored seed values (and the largest relative difference seen:
        the float nondeterminism of this run), and why the others were left to the bands."""
        if not self.exact:
            return None
        held = {k: v[1] for k, v in self.exact.items() if not v[0]}
        reasons: dict[str, int] = {}
        for note, _ in self.exact.values():
            if note:
                reasons[note] = reasons.get(note, 0) + 1
        line = f"exact: {len(held)} of {len(self.exact)} configurations equal to their stored seed values"
        if held:
            key = max(held, key=lambda k: held[k] or 0.0)
            line += f" (largest relative difference {held[key] or 0.0:.2g}, in {key})"
        for note, n in sorted(reasons.items(), key=lambda item: -item[1]):
            line += f"\n  {n} by the bands alone: {note}"
        return line

    def baseline_line(self) -> str | None:
        """``N statistics of C configurations in E experiments checked against their baselines (devices)``."""
        if not self.checked:
            return None
        keys = [key.rsplit("/", 1)[0] for key in self.checked]
        experiments = {key.split("/", 1)[0] for key in keys}
        devices = sorted({key.rsplit("/", 1)[1] for key in self.checked})
        return (f"baselines: {sum(self.checked.values())} statistics of {len(set(keys))} configurations in "
                f"{len(experiments)} experiments within their baseline bands, on {', '.join(devices)}")

    def cuda_line(self) -> str | None:
        if not self.cuda_skipped:
            return None
        return (f"cuda: {self.cuda_skipped} cases skipped, no CUDA device here (they run where there is one; "
                f"--device cpu leaves them out)")

    def test_lines(self) -> list[str]:
        """The lines tests added, in test order (node ids sort a module's tests together)."""
        return [text for _, text in sorted(self.lines, key=lambda line: line[0])]


def wrap(text: str, width: int | None = None) -> list[str]:
    """``text`` as lines of at most ``width`` columns (the terminal's, at most LINE_WIDTH), a table's
    lines cut rather than wrapped so its columns stay aligned."""
    width = min(width or shutil.get_terminal_size((LINE_WIDTH, 24)).columns, LINE_WIDTH)
    out = []
    for line in text.splitlines() or [""]:
        if len(line) <= width:
            out.append(line)
        elif "  " in line.strip():  # a table row
            out.append(line[: width - 1] + "…")
        else:
            out += textwrap.wrap(line, width, subsequent_indent="  ", break_on_hyphens=False)
    return out
