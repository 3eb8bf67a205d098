"""``initcore trace``: per-layer statistics of one forward and backward pass at init, as a table, CSV or JSON."""

from __future__ import annotations

import argparse
import sys

from initcore import init, probe
from initcore.cli._common import (
    add_model_options,
    add_probe_options,
    build_model_and_inputs,
    comment,
    describe,
    print_frame,
    strategy_of,
    trace_model,
)


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("trace", help="per-layer statistics of one forward and backward pass at init",
                              description="Trace one forward and backward pass of a freshly initialized model "
                                          "and print per-layer statistics (see initcore.probe.STATISTICS).")
    add_model_options(p, roles=True)
    add_probe_options(p)
    p.add_argument("--format", choices=("table", "csv", "json"), default="table", help="default: table")
    p.add_argument("--theory", action="store_true",
                   help="mlp: add mean-field predictions (preact_std_theory, ...) beside the measured columns")
    return p


def run(args: argparse.Namespace) -> int:
    if args.theory and args.model != "mlp":
        raise ValueError("--theory predicts MLPs only; use --model mlp")
    model, inputs = build_model_and_inputs(args)
    if args.theory:  # before the trace, so that a strategy theory does not know fails at once
        gain = init.activation_gain(model) if args.gain == "auto" else args.gain
        predicted = probe.mlp_theory(model, strategy_of(args), gain=gain, bias=args.bias or 0.0)
    frame, loss = trace_model(args, model, inputs)
    if args.theory:
        frame = probe.with_theory(frame, predicted)
    if args.format == "table":
        sys.stdout.write(comment(f"{describe(args, model, inputs)}, loss {loss}"))
    print_frame(frame, args.format)
    return 0
