"""Hyperparameter transfer, shown (issue 22; Yang et al., 2021, "Tensor Programs V", Figure 1).

A learning-rate sweep (``initcore.transfer``: 12 Adam learning rates 2^-14 .. 2^-3, 3.3 decades, at widths
64, 128, 256, 512, seeds S .. S + 2 with ``--seed S``, 50 steps on a fixed random teacher MLP) under the
standard parametrization (kaiming_normal, one learning rate) and under muP (tuned at width 64). What holds:

- muP: the argmin learning rate of the seed-mean loss moves by at most one grid step from width 64 to 512,
  and stays within one step across all four widths;
- SP: it moves by at least two grid steps, to a smaller learning rate at the larger width (theory: Adam
  changes a hidden layer's output by ~lr * fan_in per step, so the best lr falls as 1/width, a factor 8 =
  3 grid steps of a factor 2 from 64 to 512).

The tolerances come from the seeds' spread (measured over seeds 0..7, 2026-12-07): a seed's own argmin lies
within one grid step of the seed-mean argmin at 63 of the 64 (parametrization, width, seed) cells (SP at
width 512, seed 5: two steps). muP's 64 -> 512 shift per seed is 0, +1, -1, 0, 0, 0, 0, +1 (theory 0), its
seed-mean shift 0 at seeds 0..2 and at 3..7; SP's per seed -4, -4, -4, -3, -4, -2, -4, -4, its seed-mean
shift -4 at seeds 0..2 and at 3..7 (theory -3). So muP is allowed theory's 0 plus one step of seed jitter,
and SP must show theory's 3 steps less one step: at least 2. ``--seed 3`` (seeds 3..5) passes too.

Only under ``-m large``: the sweep trains 2 x 4 x 12 x 3 = 288 small models, 50 steps each. Measured with
``time pytest bench/test_mup_transfer.py -m large``: 1 min 34 s wall (87 s in pytest) on the 2-core VM, no GPU,
at load average 3.8 before and 5.0 after (other agents at work), 2026-12-07; the issue's bound is 3 minutes.
"""

from __future__ import annotations

import pandas as pd
import pytest

from initcore import transfer

MAX_MUP_SHIFT = 1  # theory 0, plus one grid step of the seeds' spread (see the module docstring)
MIN_SP_SHIFT = 2  # theory 3 (a factor 8 in lr, 2x grid), less one grid step of the seeds' spread


@pytest.fixture(scope="module")
def swept(seed: int) -> pd.DataFrame:
    seeds = tuple(range(seed, seed + len(transfer.SEEDS)))
    return pd.concat([transfer.sweep(transfer.TransferRun("mlp", p, seeds=seeds)) for p in transfer.PARAMETRIZATIONS],
                     ignore_index=True)


def _shown(frame: pd.DataFrame) -> str:
    best = transfer.best_lr(frame)
    per_seed = transfer.best_lr(frame, per_seed=True)
    mean = best.pivot(index="parametrization", columns="width", values="index")
    seeds = per_seed.pivot(index=["parametrization", "seed"], columns="width", values="index")
    return f"argmin grid index per width (seed mean):\n{mean}\nper seed:\n{seeds}"


@pytest.mark.large
def test_mup_keeps_the_best_learning_rate_across_widths(swept):
    shifts = transfer.shift(transfer.best_lr(swept)).set_index("parametrization")
    assert (transfer.best_lr(swept)["index"] >= 0).all(), f"a width diverged at every lr\n{_shown(swept)}"
    assert abs(shifts.loc["mup", "shift"]) <= MAX_MUP_SHIFT, f"muP's best lr moved\n{_shown(swept)}"
    assert shifts.loc["mup", "range"] <= MAX_MUP_SHIFT, f"muP's best lr moved between widths\n{_shown(swept)}"


@pytest.mark.large
def test_sp_best_learning_rate_falls_with_width(swept):
    shifts = transfer.shift(transfer.best_lr(swept)).set_index("parametrization")
    assert shifts.loc["sp", "shift"] <= -MIN_SP_SHIFT, \
        f"SP's best lr did not fall by {MIN_SP_SHIFT} grid steps from width 64 to 512\n{_shown(swept)}"
