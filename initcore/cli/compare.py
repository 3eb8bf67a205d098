"""``initcore compare``: pytest-benchmark timings, CPU against CUDA, or one run against another
(the work is ``initcore.compare``'s)."""

from __future__ import annotations

import argparse

from initcore import compare


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("compare", help="timings from pytest-benchmark JSON: CPU vs CUDA, or two runs' ratios",
                              description="One file: a table per case and pass with CPU ms, CUDA ms, speedup, "
                                          "GFLOP/s and the fraction of the device's matmul rate. Two files: each "
                                          "benchmark's median ratio OTHER/RESULTS; exit 1 past --threshold.")
    compare.add_arguments(p)
    return p


def run(args: argparse.Namespace) -> int:
    return compare.run(args)
