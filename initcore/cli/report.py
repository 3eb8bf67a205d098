"""``initcore report``: the figures, with theory, as PNGs and an index.html (the work is ``initcore.report``'s)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from initcore.cli._common import seed


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "report", help="the notebook's figures from the probe, with theory, as PNGs and an index.html",
        description="Run the experiments of initcore.experiments, write each figure as DIR/<name>.png with its "
                    "table as DIR/<name>.csv, and DIR/index.html to open in a browser. Needs matplotlib "
                    "(pip install 'initcore[plot]').",
        epilog="Exit status: 0 when written, 2 on bad input or without matplotlib.")
    p.add_argument("--out", required=True, metavar="DIR", help="folder to write into (created if missing)")
    p.add_argument("--seed", type=seed, default=0, help="seeds weights and inputs (default 0)")
    return p


def check_out(text: str) -> Path:
    """The folder ``--out`` names, if the report can be written there (it, or the nearest folder above it
    that exists, is a writable folder); else ValueError. Checked before any experiment runs."""
    if not text.strip():
        raise ValueError(f"--out {text!r}: give the folder to write the report into, e.g. --out report "
                         "(created if missing)")
    out = Path(text)
    existing = out
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        what = "exists and is not a folder" if existing == out else f"cannot be made: {existing} is not a folder"
        raise ValueError(f"--out {text}: {what}; give a folder (created if missing)")
    if not os.access(existing, os.W_OK | os.X_OK):
        where = "" if existing == out else f" ({existing}, where it would be made)"
        raise ValueError(f"--out {text}: the folder{where} is not writable; give one you can write to")
    return out


def run(args: argparse.Namespace) -> int:
    from initcore import report

    check_out(args.out)
    try:
        index = report.write_report(args.out, seed=args.seed)
    except report.PlottingUnavailable as e:
        print(f"initcore: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # an unwritable --out
        raise ValueError(f"--out {args.out}: {e.strerror or e}") from None
    print(f"wrote {index} (open it in a browser)")
    return 0
