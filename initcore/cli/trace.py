"""``initcore trace``: per-layer statistics of one forward and backward pass at init, as a table, CSV or JSON."""

from __future__ import annotations

import argparse
import sys

from initcore import init, probe
from initcore.cli._common import (
    add_model_options,
    add_probe_options,
    build_model_and_inputs,
    check_select,
    comment,
    default_loss,
    describe,
    print_frame,
    strategy_of,
    trace_model,
    user_model_errors,
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
    p.add_argument("--precision", metavar="FORMAT",
                   help="instead: each tensor's headroom in FORMAT (float16, bfloat16, float8_e4m3fn, ...: "
                        "initcore.probe.precision), unscaled and per-tensor scaled, beside a Gaussian's")
    p.add_argument("--loss-scale", type=float, default=1.0, help="with --precision: gradients' loss scale (default 1)")
    return p


def _precision(args: argparse.Namespace, model, inputs) -> tuple:
    """``--precision``: the format's rows of ``initcore.probe.precision``'s table, as ``trace_model`` traces."""
    from initcore.probe import precision

    precision.format_of(args.precision)  # before the trace: a bad name fails at once
    precision.check_loss_scale(args.loss_scale)
    loss = default_loss(args)
    check_select(args, model)
    with user_model_errors(args, model):
        frame = precision.trace(model, inputs, loss, select=args.select, formats=args.precision,
                                loss_scale=args.loss_scale, statistics="lean")
    return precision.view(frame, args.precision), loss


def run(args: argparse.Namespace) -> int:
    if args.theory and args.model != "mlp":
        raise ValueError("--theory predicts MLPs only; use --model mlp")
    if args.precision is not None and args.theory:
        raise ValueError("--precision and --theory are separate tables; give one")
    model, inputs = build_model_and_inputs(args)
    if args.precision is not None:
        frame, loss = _precision(args, model, inputs)
        if args.format == "table":
            sys.stdout.write(comment(f"{describe(args, model, inputs)}, loss {loss}, {args.precision}, loss scale "
                                     f"{args.loss_scale:g}"))
        print_frame(frame, args.format)
        return 0
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
