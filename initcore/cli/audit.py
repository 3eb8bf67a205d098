"""``initcore audit``: what init each parameter of a model has, grouped by name pattern, with every flag.

Exit 0 when no flag is raised and every expectation holds, 1 otherwise, 2 on bad input.
"""

from __future__ import annotations

import argparse
import sys

from initcore import auditing, init
from initcore.cli import _factory
from initcore.cli._common import (
    DEFAULT_INIT,
    add_model_options,
    build_model_and_inputs,
    comment,
    format_table,
    model_kind,
    print_frame,
)
from initcore.cli._roles import parse_roles


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("audit", help="what init each parameter has, and every sign it is not the intended one",
                              description="Fit each parameter's values to a family (normal, truncated normal, "
                                          "uniform, orthogonal, constant), name the rule of init it matches, and "
                                          "flag uninitialized, packed, transposed, equal-but-untied parameters and "
                                          "modules left at torch's default among peers. Exit 1 on any flag.")
    add_model_options(p, roles=True)
    a = p.add_argument_group("audit")
    a.add_argument("--expect", default=None, metavar="RULE|PATTERN=RULE;...",
                   help="what the init should be: a strategy (see `initcore list`; read by each parameter's role) or "
                        "a rule such as 'normal(0.02)', 'normal(0.02/sqrt(2L))', 'xavier_uniform', 'ones', "
                        "'torch_default'; or PATTERN=RULE pairs separated by ';' (fnmatch names). Default: --init "
                        "when given")
    a.add_argument("--meta", action="store_true",
                   help="build the model on the meta device, to_empty, fill it with NaN, then run its own init "
                        "(init_weights(), reset_parameters() or apply(_init_weights)): the large-model recipe")
    a.add_argument("--all", action="store_true", help="one row per parameter instead of one per group")
    a.add_argument("--format", choices=("table", "csv", "json"), default="table", help="default: table")
    return p


def parse_expect(text: str | None) -> str | dict[str, str] | None:
    """``--expect``: one rule, or ``PATTERN=RULE`` pairs separated by ``;``."""
    if text is None:
        return None
    if "=" not in text.split("(")[0]:
        return text.strip()
    pairs = {}
    for item in filter(None, (s.strip() for s in text.split(";"))):
        pattern, sep, rule = item.partition("=")
        if not sep or not pattern.strip() or not rule.strip():
            raise ValueError(f"--expect {text!r}: write RULE, or PATTERN=RULE pairs separated by ';', e.g. "
                             "'*.c_proj.weight=normal(0.02/sqrt(2L));*=torch_default'")
        pairs[pattern.strip()] = rule.strip()
    return pairs


def _build(args: argparse.Namespace, roles) -> tuple[object, tuple, str]:
    """The model to audit, the ties it should keep, and how it was made."""
    if args.meta:
        if model_kind(args) != "user":
            raise ValueError("--meta builds a model of yours: give --model package.module:factory")
        model, how, tied = auditing.materialize(lambda: _factory.build(args.model, args.seed).model)
        if args.init is not None:
            init.apply(model, args.init, roles=roles)
        return model, tied, f"built on the meta device, to_empty, NaN, then {args.init or how}"
    if model_kind(args) != "user":
        return build_model_and_inputs(args)[0], (), f"initialized by {args.init or DEFAULT_INIT}"
    model = _factory.build(args.model, args.seed).model
    if args.init is not None:
        init.apply(model, args.init, roles=roles)
    return model, (), f"initialized by {args.init}" if args.init else "as its factory built it"


def run(args: argparse.Namespace) -> int:
    roles = parse_roles(args.roles)
    expect = parse_expect(args.expect) or args.init
    model, tied, source = _build(args, roles)
    frame = auditing.audit(model, expect=expect, roles=roles, seed=args.seed, tied=tied)
    shown = frame if args.all else auditing.grouped(frame)
    flagged = auditing.flagged(frame)
    if args.format != "table":
        print_frame(shown, args.format)
        return 1 if len(flagged) else 0
    expected = f", expected {args.expect or args.init}" if expect else ""
    sys.stdout.write(comment(f"{type(model).__name__} ({args.model}), seed {args.seed}, {source}: {len(frame)} "
                             f"parameters{expected}"))
    if args.all:
        sys.stdout.write(format_table(shown[["name", "shape", "fit", "rule", "also", "flags", "evidence"]]))
    else:
        sys.stdout.write(auditing.format_table(shown))
    sys.stdout.write(f"{len(flagged)} of {len(frame)} parameters flagged\n" if len(flagged) else "no flag\n")
    return 1 if len(flagged) else 0
