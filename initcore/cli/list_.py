"""``initcore list``: the init strategies (with summaries), models and activations."""

from __future__ import annotations

import argparse

from initcore import init
from initcore.models import ACTIVATIONS, MODELS


def add_parser(subparsers) -> argparse.ArgumentParser:
    return subparsers.add_parser("list", help="the init strategies, models and activations",
                                 description="Print the init strategies (with summaries), models and activations.")


def run(args: argparse.Namespace) -> int:
    strategies = init.describe()
    width = max(map(len, strategies))
    print("strategies:")
    for name, summary in strategies.items():
        print(f"  {name:<{width}}  {summary}")
    print("models: " + ", ".join(MODELS))
    print("activations: " + ", ".join(ACTIVATIONS))
    return 0
