"""``initcore report``: the figures, with theory, as PNGs and an index.html (the work is ``initcore.report``'s)."""

from __future__ import annotations

import argparse
import sys


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "report", help="the notebook's figures from the probe, with theory, as PNGs and an index.html",
        description="Run the experiments of initcore.experiments, write each figure as DIR/<name>.png with its "
                    "table as DIR/<name>.csv, and DIR/index.html to open in a browser. Needs matplotlib "
                    "(pip install 'initcore[plot]').",
        epilog="Exit status: 0 when written, 2 on bad input or without matplotlib.")
    p.add_argument("--out", required=True, metavar="DIR", help="folder to write into (created if missing)")
    p.add_argument("--seed", type=int, default=0, help="seeds weights and inputs (default 0)")
    return p


def run(args: argparse.Namespace) -> int:
    from initcore import report

    try:
        index = report.write_report(args.out, seed=args.seed)
    except report.PlottingUnavailable as e:
        print(f"initcore: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # an unwritable --out
        raise ValueError(f"--out {args.out}: {e.strerror or e}") from None
    print(f"wrote {index} (open it in a browser)")
    return 0
