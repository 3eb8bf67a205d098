"""``initcore mup-lint``: what in a model of yours, or in its optimizer, breaks muP (``initcore.mup_lint``),
read from the model built by its own ``factory(seed, width) -> (model, inputs[, targets])`` at two widths;
exit 0 when nothing does, 1 with the table of findings, 2 on bad input."""

from __future__ import annotations

import argparse
from collections.abc import Callable

import torch

from initcore import mup_lint
from initcore.cli import _factory
from initcore.cli._common import positive_int, seed
from initcore.cli._roles import add_roles_option, cli_words, parse_roles

DEFAULT_WIDTH, DEFAULT_BASE = 128, 32  # m = 4: a 10-output readout's std exponent to +- 0.03 (mup_lint.Z = 4 fits)


def reference(text: str) -> str:
    """``package.module:callable``."""
    if _factory.is_reference(text):
        return text
    raise argparse.ArgumentTypeError(f"must be package.module:callable (a factory of yours), got {text!r}")


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "mup-lint", help="what in a model of yours or its optimizer breaks muP, each with where and why",
        description="Build your model at --base-width and --width with its own factory and init, run one forward "
                    "of each on the factory's inputs, and report what breaks muP: attention scales that do not go "
                    "as 1/d_head where d_head grows, a readout initialized like a hidden layer, a tied embedding "
                    "scaled twice (or its logits' 1/width multiplier missing or doubled), and with --optimizer, "
                    "learning rates or weight decays not per group as muP needs.",
        epilog="Exit status: 0 when nothing breaks muP, 1 when something does (the table says what, where and "
               "why), 2 on bad input.")
    p.add_argument("--model", type=reference, required=True, metavar="MODULE:FACTORY",
                   help="package.module:factory, a callable of yours called as factory(seed, width) that returns "
                        "(model, inputs) or (model, inputs, targets), initialized as you train it; the current folder "
                        "is importable")
    p.add_argument("--width", type=positive_int, default=DEFAULT_WIDTH, help=f"default: {DEFAULT_WIDTH}")
    p.add_argument("--base-width", type=positive_int, default=DEFAULT_BASE,
                   help=f"the width muP's hyperparameters are tuned at, smaller than --width; default: {DEFAULT_BASE}")
    p.add_argument("--optimizer", type=reference, default=None, metavar="MODULE:MAKE_OPTIMIZER",
                   help="package.module:make_optimizer, called as make_optimizer(model) at both widths; its "
                        "learning rates and weight decays are checked against muP's per-class ones")
    add_roles_option(p)
    p.add_argument("--seed", type=seed, default=0, help="passed to the factory, and seeds torch first (default 0)")
    return p


def _resolve(ref: str, option: str) -> Callable:
    try:
        return _factory.resolve(ref)
    except ValueError as e:
        raise ValueError(str(e).replace("--model", option, 1)) from None


def _build(factory: Callable, ref: str, seed_: int, width: int) -> tuple[torch.nn.Module, object]:
    torch.manual_seed(seed_)
    try:
        made = factory(seed_, width)
    except Exception as e:  # the user's code: what and why, not where
        raise ValueError(f"--model {ref}: factory(seed, {width}) raised {_factory.one_line(e)}") from None
    if isinstance(made, tuple) and len(made) in (2, 3) and isinstance(made[0], torch.nn.Module):
        return made[0], made[1]
    got = f"a tuple of {len(made)}" if isinstance(made, tuple) else type(made).__name__
    raise ValueError(f"--model {ref}: factory(seed, {width}) returned {got}; it must return (model, inputs) or "
                     "(model, inputs, targets)")


def _optimizer(ref: str) -> Callable:
    make = _resolve(ref, "--optimizer")

    def built(model: torch.nn.Module) -> torch.optim.Optimizer:
        try:
            optimizer = make(model)
        except Exception as e:
            raise ValueError(f"--optimizer {ref}: make_optimizer(model) raised {_factory.one_line(e)}") from None
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise ValueError(f"--optimizer {ref}: make_optimizer(model) returned {type(optimizer).__name__}; it must "
                             "return a torch.optim.Optimizer over the model's parameters")
        return optimizer
    return built


def run(args: argparse.Namespace) -> int:
    if args.width <= args.base_width:
        raise ValueError(f"--width {args.width} must be larger than --base-width {args.base_width}: muP is read from "
                         "how the model changes from the base width to a larger one")
    factory = _resolve(args.model, "--model")
    optimizer = _optimizer(args.optimizer) if args.optimizer else None
    model, inputs = _build(factory, args.model, args.seed, args.width)
    base, _ = _build(factory, args.model, args.seed, args.base_width)
    try:
        findings = mup_lint.lint(model, base, inputs=inputs, optimizer=optimizer, roles=parse_roles(args.roles))
    except ValueError as e:
        message = cli_words(" ".join(str(e).split()))
        raise ValueError(message if message.startswith("--") else f"--model {args.model}: {message}") from None
    except Exception as e:  # the model's forward: the user's code
        raise ValueError(f"--model {args.model}: {_factory.one_line(e)} (in the model's forward at --width "
                         f"{args.width} or --base-width {args.base_width})") from None
    print(f"# muP lint: {args.model} at width {args.width} against base width {args.base_width}, seed {args.seed}"
          f"{f', optimizer {args.optimizer}' if args.optimizer else ''}")
    if findings:
        print(mup_lint.table(findings))
        print(f"# FAIL: {len(findings)} finding(s) break muP")
        return 1
    unchecked = "" if optimizer else "; the optimizer unchecked (give --optimizer)"
    print(f"# clean: nothing breaks muP in attention scales, readout init, tied readout"
          f"{', optimizer groups' if optimizer else ''}{unchecked}")
    return 0
