"""The ``initcore`` command line: ``trace`` a model at init layer by layer, ``diagnose`` it, draw the
figures as a ``report``, ``compare`` benchmark timings, ``list`` what there is.

Commands are discovered, not registered: every module of this package whose name does not start with
``_`` is a command, and exposes

- ``add_parser(subparsers) -> argparse.ArgumentParser``: add the command with
  ``subparsers.add_parser(NAME, ...)``, its options, and return the parser it added;
- ``run(args: argparse.Namespace) -> int``: do the command, return the exit status.

So adding ``initcore shards`` is writing ``initcore/cli/shards.py``; no shared file changes. A module is
named after its command, with a trailing ``_`` where that name is a builtin's (``list_.py`` is
``initcore list``), so that importing it cannot shadow the builtin in this package's namespace.
``initcore.cli._common`` holds what commands share: the parser class, option types, the model options
(``add_model_options``) and ``build_model_and_inputs``.

Bad input: a ``ValueError`` raised by ``run`` (the library's, or the command's own) becomes one line on
stderr and exit status 2, never a traceback; so does an argparse error.
"""

from __future__ import annotations

import argparse
import importlib
import os
import pkgutil
import sys
from collections.abc import Sequence
from types import ModuleType

from initcore.cli._common import CliParser, build_model_and_inputs

__all__ = ["build_parser", "build_model_and_inputs", "command_modules", "main"]


def command_modules(package: ModuleType | None = None) -> dict[str, ModuleType]:
    """The command modules of ``package`` (this one by default), by module name, in alphabetical order.

    Raises TypeError for a public module that lacks ``add_parser`` or ``run``: a command half written is a
    programming error, found at start-up rather than when a user types its name.
    """
    package = package or importlib.import_module(__name__)
    found = {}
    for info in sorted(pkgutil.iter_modules(package.__path__), key=lambda i: i.name):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{package.__name__}.{info.name}")
        missing = [name for name in ("add_parser", "run") if not callable(getattr(module, name, None))]
        if missing:
            raise TypeError(f"{module.__name__} is in the command package but lacks {' and '.join(missing)}; "
                            "a command module exposes add_parser(subparsers) and run(args) -> int "
                            "(prefix a helper module's name with _)")
        found[info.name] = module
    return found


def build_parser(package: ModuleType | None = None) -> argparse.ArgumentParser:
    """The ``initcore`` parser with one subcommand per module of :func:`command_modules`."""
    parser = CliParser(prog="initcore", description="Does your network still propagate signal at init?")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in command_modules(package).values():
        sub = module.add_parser(subparsers)
        if not isinstance(sub, argparse.ArgumentParser):
            raise TypeError(f"{module.__name__}.add_parser must return the parser it added, got {type(sub).__name__}")
        sub.set_defaults(_run=module.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (2, via SystemExit, on bad input)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args._run(args)
    except ValueError as e:  # the library's word on bad sizes, strategies, gains: one line, no traceback
        parser.error(str(e))
        raise AssertionError("parser.error exits") from e
    except BrokenPipeError:  # `initcore list | head`: the reader left; nothing more to say to it
        try:  # Python's recipe: point stdout at /dev/null, so that the interpreter's final flush is silent
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except (AttributeError, OSError, ValueError):  # a stdout with no file descriptor has nothing to flush
            pass
        return 141  # 128 + SIGPIPE, as a shell reports a command killed by it
