"""``initcore diagnose``: the symptoms of a freshly initialized model, their evidence and first fixes."""

from __future__ import annotations

import argparse
import sys

from initcore.cli._common import (
    add_model_options,
    add_probe_options,
    build_model_and_inputs,
    comment,
    describe,
    trace_model,
    user_model_errors,
)


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "diagnose", help="name the symptoms of a model at init, their evidence and fixes",
        description="Trace one forward and backward pass of a freshly initialized model (the options of "
                    "`initcore trace`) and name each symptom of initcore.diagnose.SYMPTOMS found in it, with its "
                    "evidence and first fixes, or say that it is healthy.",
        epilog="With --health, the notebook's per-layer flags join the one verdict, each with why it is or is "
               "not a symptom (a residual branch's small std is by design). Exit status: 0 whether or not "
               "symptoms are found (a diagnosis is a report, not a test; use "
               "--format json to act on it), 2 on bad input.")
    add_model_options(p, roles=True)
    add_probe_options(p, "diagnosed")
    p.add_argument("--fixes", type=int, default=2, metavar="N", help="fixes shown per symptom (default 2)")
    p.add_argument("--health", action="store_true",
                   help="also print the notebook's per-layer health report (mean, std, range, issues) of every "
                        "nn.Linear and nn.MultiheadAttention output (initcore.health)")
    p.add_argument("--format", choices=("text", "json"), default="text",
                   help="text (default) or json: one record per symptom found")
    return p


def run(args: argparse.Namespace) -> int:
    from initcore import diagnose

    if args.fixes < 0:
        raise ValueError(f"--fixes must be >= 0, got {args.fixes}")
    model, inputs = build_model_and_inputs(args)
    frame, loss = trace_model(args, model, inputs)
    findings = diagnose.diagnose(frame)
    if args.format == "json":
        sys.stdout.write(findings.to_json(orient="records", double_precision=10) + "\n")
        return 0
    table = None
    if args.health:
        from initcore import health

        with user_model_errors(args, model):  # a second forward pass of the user's model
            report = health.health_report(model, inputs)
        table = diagnose.explain_health(report, frame, findings)  # one verdict of both, each flag's why
    sys.stdout.write(comment(f"{describe(args, model, inputs)}, loss {loss}"))
    sys.stdout.write(diagnose.format_findings(findings, n_fixes=args.fixes, health=table).rstrip("\n") + "\n")
    if table is not None:
        sys.stdout.write("\n" + diagnose.format_health(table, findings))
    return 0
