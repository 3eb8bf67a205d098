"""``initcore report``: the figures, with theory, as PNGs and an index.html (the work is ``initcore.report``'s)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from initcore.cli._common import (
    add_model_options,
    add_probe_options,
    build_model_and_inputs,
    check_select,
    default_loss,
    describe,
    given,
    user_model_errors,
)
from initcore.threads import one_thread


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "report", help="the figures of every experiment, or of one model, with theory and baselines, as a page",
        description="Without --model: run the experiments of initcore.experiments and draw each with its theory "
                    "and the baselines' seed band. With --model (a built-in name or package.module:factory, with "
                    "the options of `initcore trace`): draw that model's rows. Each figure is DIR/<name>.png "
                    "beside its table DIR/<name>.csv; DIR/index.html opens in a browser, with a summary of what "
                    "passed at the top. Needs matplotlib (pip install 'initcore[plot]').",
        epilog="Exit status: 0 when written, 2 on bad input or without matplotlib.")
    p.add_argument("--out", required=True, metavar="DIR", help="folder to write into (created if missing)")
    p.add_argument("--transfer", action="store_true",
                   help="instead of the experiments: the learning-rate sweep of initcore.transfer at widths 64..512, "
                        "SP and muP side by side, seeds SEED..SEED+2 (about 2 minutes on 2 cores)")
    add_model_options(p, default_model=None, model_help="default: none, the experiments", roles=True)
    add_probe_options(p, "the model's")
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
    if args.model is not None and args.transfer:
        raise ValueError("--transfer goes without --model: it sweeps initcore's own MLP (initcore.transfer)")
    if args.model is None:
        typed = sorted(given(args) - {"--seed"}) + [o for o in ("--loss", "--select") if getattr(args, o[2:])]
        if typed and args.transfer:
            raise ValueError(f"--transfer goes without {', '.join(typed)}: it sweeps initcore's own MLP")
        if typed:
            raise ValueError(f"{', '.join(typed)} {'needs' if len(typed) == 1 else 'need'} --model: without it "
                             "the report draws initcore's experiments, whose models and inputs are their own")
    # One intra-op thread: the report's tensors are small, and on this 2-core machine two threads spin more
    # than they compute (a whole report: 28.5 s of CPU on one thread against 74 s on two, 2:27 against 6:27
    # wall on a loaded machine, 2026-12-03). Restored afterwards, for callers of main() in-process.
    try:
        with one_thread():
            report.require_matplotlib()  # before building a model or running anything
            if args.transfer:
                from initcore.report.transfer import write_transfer_report

                index = write_transfer_report(args.out, seed=args.seed)
            elif args.model is None:
                index = report.write_report(args.out, seed=args.seed)
            else:
                model, inputs = build_model_and_inputs(args)
                check_select(args, model)
                with user_model_errors(args, model):
                    index = report.write_model_report(args.out, describe(args, model, inputs), model, inputs,
                                                      loss=default_loss(args), select=args.select, seed=args.seed)
    except report.PlottingUnavailable as e:
        print(f"initcore: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # an unwritable --out
        raise ValueError(f"--out {args.out}: {e.strerror or e}") from None
    print(f"wrote {index} (open it in a browser)")
    return 0
