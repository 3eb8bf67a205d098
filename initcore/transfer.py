r"""Hyperparameter transfer, shown: a learning-rate sweep at several widths under the standard parametrization
(SP) and under muP, as data (Yang et al., 2021, "Tensor Programs V", Figure 1).

A ``TransferRun`` names the model family, the parametrization, the widths, the learning-rate grid, the
steps and the seeds. ``sweep(run)`` trains a fresh model for every (width, lr, seed) with Adam on one fixed
synthetic task (``TASKS``: regression of a fixed random teacher MLP, no download; a fresh batch every step,
the same batches at every width and lr of a seed) and returns one row per run: its final loss (the mean of
the last ``tail`` steps' losses) and whether it diverged. ``best_lr`` gives the argmin learning rate per
width (of the loss averaged over the seeds, or per seed), as a grid index too, so that a shift reads in
grid steps. bench/test_mup_transfer.py asserts on these numbers; ``initcore report --transfer`` draws them.

Why SP's best learning rate falls as 1/width under Adam and muP's does not (see ``initcore.coord``): Adam's
entries are ~lr whatever the gradient, so one step changes a hidden layer's output by ~lr * fan_in. SP
trains every layer at one lr, so the lr that moves the features by a fixed amount is ~1/width. muP trains
hidden and output matrices at lr / m_in (m_in = fan_in / base fan_in) and starts the readout at 0: the
features move by the same amount at every width for one lr.

A diverged run (a non-finite loss) stops there; its loss is ``inf``, larger than any other, so it is never
the argmin (a width whose every lr diverged has none: NaN).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from initcore import init
from initcore.models import MLP
from initcore.threads import one_thread

MODELS = ("mlp",)
PARAMETRIZATIONS = ("sp", "mup")
# The init each parametrization draws: SP is He's (the MLP's ReLU gain), the coordinate check's SP; muP the
# coordinate check's muP options (initcore.coord.MUP_OPTIONS["mlp"]: He's hidden weights, zero readout).
STRATEGIES = {"sp": ("kaiming_normal", {}), "mup": ("mup", {"gain": "auto", "readout": "zero"})}
WIDTHS = (64, 128, 256, 512)
# Powers of 2 from 2^-14 to 2^-3 (6.1e-5 to 0.125, 3.3 decades): SP's expected shift from width 64 to 512
# under Adam (1/width: a factor 8) is 3 grid steps.
LRS = tuple(2.0 ** k for k in range(-14, -2))
SEEDS = (0, 1, 2)


@dataclass(frozen=True)
class TeacherTask:
    """Regression of a fixed random teacher: x ~ N(0, I), y = teacher(x), the teacher a ReLU MLP drawn once
    from ``teacher_seed`` (the same task for every seed); the student's loss is the mean squared error of
    its first ``n_out`` outputs (its head is width x width: the loss reads ``n_out`` of them, a readout)."""

    in_features: int = 32  # finite: the input layer's fan-in does not grow
    teacher_width: int = 64
    teacher_depth: int = 3  # Linear layers of the teacher
    n_out: int = 4  # outputs the loss reads
    depth: int = 4  # Linear layers of the student: input, 2 hidden, head
    batch: int = 64
    teacher_seed: int = 1234

    def teacher(self) -> nn.Module:
        g = torch.Generator().manual_seed(self.teacher_seed)
        sizes = [self.in_features] + [self.teacher_width] * (self.teacher_depth - 1) + [self.n_out]
        layers: list[nn.Module] = []
        for i, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
            linear = nn.Linear(fan_in, fan_out, bias=False)
            with torch.no_grad():
                linear.weight.copy_(torch.randn(fan_out, fan_in, generator=g) * math.sqrt(2.0 / fan_in))
            layers.append(linear)
            if i < len(sizes) - 2:
                layers.append(nn.ReLU())
        teacher = nn.Sequential(*layers).requires_grad_(False)
        with torch.no_grad():  # unit-variance targets: the loss of predicting 0 is 1
            x = torch.randn(4096, self.in_features, generator=g)
            teacher[-1].weight /= teacher(x).std(0, keepdim=True).T
        return teacher

    def build(self, width: int) -> nn.Module:
        with torch.device("meta"):  # every parameter is drawn by the strategy
            model = MLP(self.in_features, width, self.depth, "relu")
        return model.to_empty(device="cpu")

    def batches(self, teacher: nn.Module, seed: int, steps: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        g = torch.Generator().manual_seed(10_000 + seed)
        with torch.no_grad():
            out = []
            for _ in range(steps):
                x = torch.randn(self.batch, self.in_features, generator=g)
                out.append((x, teacher(x)))
        return out

    def loss(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.mse_loss(out[:, : self.n_out], y)


TASKS = {"mlp": TeacherTask()}


def _check_ints(name: str, values, at_least: int, minimum: int) -> tuple[int, ...]:
    values = tuple(values)
    if len(values) < at_least or any(isinstance(v, bool) or not isinstance(v, int) or v < minimum for v in values) \
            or list(values) != sorted(set(values)):
        raise ValueError(f"{name} must be {at_least} or more distinct integers >= {minimum}, increasing; got {values}")
    return values


@dataclass(frozen=True)
class TransferRun:
    """One sweep: ``model`` family under ``parametrization`` ("sp" or "mup", muP tuned at ``base_width``,
    default the smallest width) at every width, lr and seed; ``steps`` Adam steps, the final loss the mean
    of the last ``tail``."""

    model: str = "mlp"
    parametrization: str = "sp"
    widths: tuple[int, ...] = WIDTHS
    lrs: tuple[float, ...] = LRS
    steps: int = 50
    seeds: tuple[int, ...] = SEEDS
    tail: int = 10  # steps whose losses average into the final loss
    base_width: int | None = None

    def __post_init__(self) -> None:
        if self.model not in MODELS:
            raise ValueError(f"unknown model {self.model!r}; the transfer sweep knows: {', '.join(MODELS)}")
        if self.parametrization not in PARAMETRIZATIONS:
            raise ValueError(f"unknown parametrization {self.parametrization!r}; valid: {', '.join(PARAMETRIZATIONS)}")
        _check_ints("widths", self.widths, 2, 1)
        _check_ints("seeds", self.seeds, 1, 0)
        lrs = tuple(self.lrs)
        if len(lrs) < 2 or any(isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v < math.inf
                               for v in lrs) or list(lrs) != sorted(set(lrs)):
            raise ValueError(f"lrs must be two or more distinct positive finite numbers, increasing; got {lrs}")
        for name, value in (("steps", self.steps), ("tail", self.tail)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.tail > self.steps:
            raise ValueError(f"tail ({self.tail}) must be at most steps ({self.steps}): the final loss averages "
                             "the last tail steps")
        if self.base_width is not None and (isinstance(self.base_width, bool) or not isinstance(self.base_width, int)
                                            or self.base_width < 1):
            raise ValueError(f"base_width must be a positive integer (the width tuned at), got {self.base_width!r}")

    @property
    def base(self) -> int:
        return self.widths[0] if self.base_width is None else self.base_width

    def task(self) -> TeacherTask:
        return TASKS[self.model]


def build(run: TransferRun, width: int, lr: float, seed: int) -> tuple[nn.Module, torch.optim.Optimizer]:
    """The model of ``run`` at ``width``, drawn from ``Generator().manual_seed(seed)`` (the same weights for
    every lr), and its Adam at ``lr`` (muP: per-group learning rates from ``init.param_groups``)."""
    strategy, options = STRATEGIES[run.parametrization]
    model = run.task().build(width)
    mup = {"base_width": run.base} if strategy == "mup" else {}
    gain = {"gain": "auto"} if strategy != "mup" else {}
    init.apply(model, strategy, generator=torch.Generator().manual_seed(seed), **gain, **mup, **options)
    groups = init.param_groups(model, strategy, lr=lr, optimizer="adam", **mup)
    return model, torch.optim.Adam(groups)


def train(model: nn.Module, optimizer: torch.optim.Optimizer, task: TeacherTask,
          batches: list[tuple[torch.Tensor, torch.Tensor]], tail: int) -> tuple[float, bool]:
    """``len(batches)`` Adam steps; (mean loss of the last ``tail`` steps, diverged). A non-finite loss
    stops the run: (inf, True)."""
    losses = []
    for x, y in batches:
        loss = task.loss(model(x), y)
        value = loss.item()
        if not math.isfinite(value):
            return math.inf, True
        losses.append(value)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return float(np.mean(losses[-tail:])), False


COLUMNS = ["model", "parametrization", "width", "lr", "seed", "loss", "diverged"]


def sweep(run: TransferRun) -> pd.DataFrame:
    """Every (width, lr, seed) of ``run`` trained: a frame with ``COLUMNS`` (``loss`` inf where diverged)."""
    task = run.task()
    teacher = task.teacher()
    rows = []
    with one_thread():  # small matrices on a loaded 2-core machine: two threads contend (initcore.threads)
        for seed in run.seeds:
            batches = task.batches(teacher, seed, run.steps)
            for width in run.widths:
                for lr in run.lrs:
                    model, optimizer = build(run, width, lr, seed)
                    loss, diverged = train(model, optimizer, task, batches, run.tail)
                    rows.append((run.model, run.parametrization, width, lr, seed, loss, diverged))
    return pd.DataFrame(rows, columns=COLUMNS)


def best_lr(frame: pd.DataFrame, per_seed: bool = False) -> pd.DataFrame:
    """The argmin learning rate per width (and per seed with ``per_seed``) of a ``sweep`` frame (or several
    concatenated: per parametrization too): ``parametrization, width, [seed,] lr, index, loss``, ``index``
    the lr's position in the sorted grid. Averaged over seeds (``per_seed=False``), a diverged seed makes
    the mean inf. A group whose every lr diverged has lr NaN and index -1.

    Raises:
        ValueError: the frame lacks a column ``sweep`` writes.
    """
    missing = [c for c in ("parametrization", "width", "lr", "seed", "loss") if c not in frame]
    if missing:
        raise ValueError(f"best_lr needs a sweep frame; missing columns: {', '.join(missing)} "
                         f"(a sweep frame has {', '.join(COLUMNS)})")
    grid = np.sort(frame["lr"].unique())
    keys = ["parametrization", "width"] + (["seed"] if per_seed else [])
    losses = frame.assign(loss=frame["loss"].astype(float).where(np.isfinite(frame["loss"].astype(float)), np.inf))
    curves = losses.groupby(keys + ["lr"], sort=True)["loss"].mean().reset_index()
    rows = []
    for key, curve in curves.groupby(keys, sort=True):
        values = curve["loss"].to_numpy()
        if not np.isfinite(values).any():
            rows.append((*key, math.nan, -1, math.inf))
            continue
        at = int(np.argmin(values))
        lr = float(curve["lr"].iloc[at])
        rows.append((*key, lr, int(np.searchsorted(grid, lr)), float(values[at])))
    return pd.DataFrame(rows, columns=keys + ["lr", "index", "loss"])


def shift(best: pd.DataFrame) -> pd.DataFrame:
    """Per parametrization (and seed, if ``best`` has one): the argmin's move in grid steps from the smallest
    width to the largest (negative: a smaller best lr at the larger width), and its range over all widths."""
    keys = ["parametrization"] + (["seed"] if "seed" in best else [])
    rows = []
    for key, part in best.groupby(keys, sort=True):
        part = part.sort_values("width")
        idx = part["index"].to_numpy()
        rows.append((*(key if isinstance(key, tuple) else (key,)), int(idx[-1] - idx[0]), int(idx.max() - idx.min())))
    return pd.DataFrame(rows, columns=keys + ["shift", "range"])


__all__ = ["LRS", "MODELS", "PARAMETRIZATIONS", "SEEDS", "TASKS", "WIDTHS", "TeacherTask", "TransferRun",
           "best_lr", "build", "shift", "sweep", "train"]
