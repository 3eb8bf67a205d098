r"""The coordinate check over training steps (Yang et al., 2021; the mup package's ``coord_check``), as data.

A ``CoordRun`` names a model family, an init strategy, an optimizer with its learning rate, the widths
and the number of steps. ``measure(run, seed)`` trains a fresh model at every width on one fixed small
task (``TASKS``) with ``initcore.steps.trace_steps`` and returns one frame; ``slopes`` fits, per
coordinate and step, log(size) against log(width); ``summary`` is what a baseline keeps; ``draw`` plots
mup's layout (one panel per step, size against width, a line per coordinate, log-log).
bench/test_coord_check.py asserts on these numbers; ``initcore coord`` prints and draws them.

The coordinates are the change of each measured output since step 0, rms(h_t - h_0): per hidden row
of the model, and for the prediction the loss sees (row ``output``); for attention rows also the std
of the logits, which under muP's zero query start at 0, so that after a step they are all change. The
model's own head row is left out: ``output`` is the readout (an MLP's head is as wide as its hidden
layers, and the task reads its first ``n_out`` outputs).

Why a row's change grows as width^s, for learning rates small enough that a step is nearly linear:
one step of a matrix W (fan-in n) changes its output by dW x, a sum of n terms that all point the
same way (dW is built from x itself), so dW x ~ n |dW_ij| |x_j|. Adam's entries are ~lr whatever the
gradient (it is normalized): dW x ~ lr n, slope 1 under the standard parametrization (lr fixed), 0
under muP (lr / m_in). SGD's entries are lr * delta_i x_j, with delta the gradient at the output,
~ n^(-1/2) per coordinate behind a 1/sqrt(n) readout: dW x ~ lr n^(1/2), slope 1/2; under muP delta
~ 1/n (a 1/n readout) and slope 0. The readout's own change: Adam lr n (slope 1), SGD lr n (slope 1)
under the standard parametrization; 0 under muP. ``THEORY_SLOPES`` holds these numbers.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from initcore import init
from initcore.models import MLP, Transformer, TransformerConfig
from initcore.steps import Batch, trace_steps

MODELS = ("mlp", "transformer")
OPTIMIZERS = ("adam", "sgd")
# What the probe measures per step (act_change_rms comes with the reference): the logits' std only where
# there is attention (asking for it watches every torch call of the forward pass).
STATISTICS = {"mlp": ("act_rms",), "transformer": ("act_rms", "logit_std")}


@dataclass(frozen=True)
class MLPTask:
    """Regression of a fixed random target: x ~ N(0, 1), y ~ N(0, 1); the loss is the mean squared error of
    the MLP's first ``n_out`` outputs (so that its head, width x width, is read as a width -> n_out readout)."""

    in_features: int = 32  # finite: the input layer's fan-in does not grow
    depth: int = 3  # Linear layers: input, hidden, head
    activation: str = "relu"
    batch: int = 16
    n_out: int = 8  # outputs the loss reads

    def hidden_rows(self) -> tuple[str, ...]:
        """Rows whose fan-in grows with width (the MLP's input layer, layers.0, has a fixed fan-in)."""
        return tuple(f"layers.{i}" for i in range(1, self.depth - 1))

    def build(self, width: int) -> nn.Module:
        with torch.device("meta"):  # every parameter is drawn by the strategy: no default init to pay for
            model = MLP(self.in_features, width, self.depth, self.activation)
        return model.to_empty(device="cpu")

    def data(self, generator: torch.Generator) -> Batch:
        x = torch.randn(self.batch, self.in_features, generator=generator)
        return Batch(x, torch.randn(self.batch, self.n_out, generator=generator))

    def readout(self, out: torch.Tensor) -> torch.Tensor:
        return out[:, : self.n_out]

    def loss(self, prediction: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return F.mse_loss(prediction, targets)


@dataclass(frozen=True)
class TransformerTask:
    """Next-token prediction of fixed random tokens by a pre-norm transformer with a readout (logits over
    ``vocab_size``); heads keep their number, so d_head = width / n_heads grows (what 1/d_head is for)."""

    vocab_size: int = 64
    n_layers: int = 1
    n_heads: int = 2
    ff_ratio: int = 2  # d_ff = ff_ratio * width
    batch: int = 4
    seq_len: int = 8

    def hidden_rows(self) -> tuple[str, ...]:
        return tuple(f"blocks.{i}{part}" for i in range(self.n_layers) for part in (".attn", ".ffn", ""))

    def config(self, width: int) -> TransformerConfig:
        return TransformerConfig(vocab_size=self.vocab_size, d_model=width, n_heads=self.n_heads,
                                 d_ff=self.ff_ratio * width, n_layers=self.n_layers, readout=True)

    def build(self, width: int, strategy: str = "standard") -> nn.Module:
        cfg = init.strategies.config_for(strategy, self.config(width))
        with torch.device("meta"):
            model = Transformer.from_config(cfg)
        return model.to_empty(device="cpu")

    def data(self, generator: torch.Generator) -> Batch:
        shape = (self.batch, self.seq_len)
        tokens = torch.randint(0, self.vocab_size, shape, generator=generator)
        return Batch(tokens, torch.randint(0, self.vocab_size, shape, generator=generator))

    def readout(self, out: torch.Tensor) -> torch.Tensor:
        return out

    def loss(self, prediction: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(prediction.reshape(-1, prediction.shape[-1]), targets.reshape(-1))


TASKS = {"mlp": MLPTask(), "transformer": TransformerTask()}

# Learning rates small enough that under the standard parametrization the widest model's first steps are
# still nearly linear (its output moves by ~0.1 of its size), where the theory's slopes hold; muP, flat at
# any learning rate, runs at the same one. Measured: at Adam lr 1e-3 the MLP's hidden slope under
# kaiming_normal falls from 0.88 at step 1 to 0.45 at step 3, the nonlinearity of a 16x larger step.
DEFAULT_LR = {"adam": 1e-3, "sgd": 1e-3}
# muP's options in a coordinate check: zero readout and query (see initcore.init.mup), the gain of the
# MLP's ReLU (so hidden weights are He's, as kaiming_normal's).
MUP_OPTIONS = {"mlp": {"gain": "auto", "readout": "zero", "query": "zero"},
               "transformer": {"readout": "zero", "query": "zero"}}
# The slope of log(rms(h_t - h_0)) on log(width) that theory gives a row whose fan-in grows (hidden) and the
# readout (output), in the near-linear regime; see the module docstring. "sp": any init with a fan-in scale
# (kaiming, xavier on square or LayerNorm'd inputs, standard), trained with one learning rate.
THEORY_SLOPES = {
    ("adam", "sp"): {"hidden": 1.0, "output": 1.0},
    ("sgd", "sp"): {"hidden": 0.5, "output": 1.0},
    ("adam", "mup"): {"hidden": 0.0, "output": 0.0},
    ("sgd", "mup"): {"hidden": 0.0, "output": 0.0},
}

Tamper = Callable[[nn.Module, list[dict], int], None]  # (model, param groups, width): inject a fault


@dataclass(frozen=True)
class CoordRun:
    """One coordinate check: ``model`` family at each of ``widths``, init ``init``, ``steps`` steps of
    ``optimizer`` at ``lr`` (muP: at ``base_width``, default the smallest width, with ``MUP_OPTIONS``)."""

    model: str
    init: str
    optimizer: str = "adam"
    widths: tuple[int, ...] = (64, 128, 256, 512, 1024)
    steps: int = 3
    lr: float | None = None  # None: DEFAULT_LR[optimizer]
    base_width: int | None = None
    options: tuple[tuple[str, object], ...] = field(default=())  # strategy options, as pairs (muP: MUP_OPTIONS)

    def __post_init__(self) -> None:
        if self.model not in MODELS:
            raise ValueError(f"unknown model {self.model!r}; the coordinate check knows: {', '.join(MODELS)}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"unknown optimizer {self.optimizer!r}; valid: {', '.join(OPTIMIZERS)}")
        init.get(self.init)  # a ValueError naming the strategies
        widths = self.widths
        if len(widths) < 2 or any(isinstance(w, bool) or not isinstance(w, int) or w <= 0 for w in widths) \
                or list(widths) != sorted(set(widths)):
            raise ValueError(f"widths must be two or more distinct positive integers, increasing; got {widths}")
        if self.model == "transformer" and any(w % TASKS["transformer"].n_heads for w in widths):
            raise ValueError(f"transformer widths must be multiples of n_heads = {TASKS['transformer'].n_heads}, "
                             f"got {widths}")
        if isinstance(self.steps, bool) or not isinstance(self.steps, int) or not 1 <= self.steps <= 100:
            raise ValueError(f"steps must be an integer in 1..100, got {self.steps!r}")
        if self.lr is not None and not (isinstance(self.lr, (int, float)) and self.lr > 0 and math.isfinite(self.lr)):
            raise ValueError(f"lr must be a positive number, got {self.lr!r}")

    @property
    def parametrization(self) -> str:
        return "mup" if self.init == "mup" else "sp"

    @property
    def learning_rate(self) -> float:
        return DEFAULT_LR[self.optimizer] if self.lr is None else self.lr

    @property
    def base(self) -> int:
        return self.widths[0] if self.base_width is None else self.base_width

    @property
    def strategy_options(self) -> dict[str, object]:
        if self.options:
            return dict(self.options)
        return dict(MUP_OPTIONS[self.model]) if self.init == "mup" else {}

    @property
    def key(self) -> str:
        widths = f"w{self.widths[0]}-{self.widths[-1]}x{len(self.widths)}"
        opts = "".join(f"-{k}{v}" for k, v in self.options)
        return f"coord-{self.model}-{widths}-t{self.steps}/{self.init}{opts}-{self.optimizer}{self.learning_rate:g}"

    def task(self) -> MLPTask | TransformerTask:
        return TASKS[self.model]


def build(run: CoordRun, width: int, seed: int, device: str | torch.device = "cpu",
          tamper: Tamper | None = None) -> tuple[nn.Module, Batch, torch.optim.Optimizer]:
    """Model, batch and optimizer of ``run`` at ``width``: from ``Generator().manual_seed(seed)``, the batch
    first (the same task at every width), then the weights, on the CPU; then moved to ``device``."""
    task = run.task()
    generator = torch.Generator().manual_seed(seed)
    batch = task.data(generator)
    model = task.build(width, run.init) if run.model == "transformer" else task.build(width)
    options = run.strategy_options
    mup_base = {"base_width": run.base} if run.init == "mup" else {}
    init.apply(model, run.init, generator=generator, **{**mup_base, **options})
    model.to(device)
    groups = init.param_groups(model, run.init, lr=run.learning_rate, optimizer=run.optimizer, **mup_base)
    if tamper is not None:
        tamper(model, groups, width)
    batch = Batch(*(t.to(device) for t in batch))
    if run.optimizer == "adam":
        optimizer = torch.optim.Adam(groups, fused=True)  # one kernel per parameter: a third of the time
    else:
        optimizer = torch.optim.SGD(groups)
    return model, batch, optimizer


def head_rows(model: nn.Module) -> set[str]:
    """Names of the modules that own a ``head`` parameter: their rows are the readout's, left out for ``output``."""
    return {p.name.rsplit(".", 1)[0] for p in init.strategies.param_roles(model) if p.role == "head"}


def measure(run: CoordRun, seed: int, device: str | torch.device = "cpu", tamper: Tamper | None = None) -> pd.DataFrame:
    """``trace_steps`` of ``run`` at every width, one frame with a ``width`` column (the head's rows left out)."""
    frames = []
    task = run.task()
    for width in run.widths:
        model, batch, optimizer = build(run, width, seed, device, tamper)
        frame = trace_steps(model, batch, optimizer, run.steps, task.loss, readout=task.readout,
                            statistics=STATISTICS[run.model])
        frame.insert(0, "width", width)
        frames.append(frame[~frame["module"].isin(head_rows(model))])
    return pd.concat(frames, ignore_index=True)  # the same columns at every width: pandas' fast path


def coordinates(frame: pd.DataFrame) -> pd.DataFrame:
    """The coordinates of a ``measure`` frame, tidy: ``coordinate, kind, step, width, value``.

    ``value`` is ``act_change_rms`` for every probe row and ``output``, and for attention rows also their
    ``logit_std`` as coordinate ``<row>:logits`` (kind ``logits``).
    """
    rows = frame[frame["kind"] != "param"]
    change = rows[["module", "kind", "step", "width", "act_change_rms"]].rename(
        columns={"module": "coordinate", "act_change_rms": "value"})
    attn = rows[rows["logit_std"].notna()] if "logit_std" in rows else rows.iloc[:0]
    logits = pd.DataFrame({"coordinate": attn["module"] + ":logits", "kind": "logits", "step": attn["step"],
                           "width": attn["width"], "value": attn["logit_std"]})
    return pd.concat([change, logits], ignore_index=True)[["coordinate", "kind", "step", "width", "value"]]


def _fit(widths: np.ndarray, values: np.ndarray) -> float | None:
    if len(values) < 2 or not (np.isfinite(values).all() and (values > 0).all()):
        return None
    return float(np.polyfit(np.log(widths), np.log(values), 1)[0])


def _by_coordinate(frame: pd.DataFrame) -> dict[tuple[str, str, int], tuple[np.ndarray, np.ndarray]]:
    """(coordinate, kind, step) -> (widths, values), as ``coordinates`` (plain Python: a run has ~100 of them)."""
    found: dict[tuple[str, str, int], tuple[list, list]] = {}
    logit = frame["logit_std"].to_numpy() if "logit_std" in frame else np.full(len(frame), np.nan)
    columns = (frame[c].to_numpy() for c in ("module", "kind", "step", "width", "act_change_rms"))
    for name, kind, step, width, change, logits in zip(*columns, logit, strict=True):
        if kind == "param":
            continue
        for key, value in (((name, kind, int(step)), change),
                           ((f"{name}:logits", "logits", int(step)), logits if logits == logits else None)):
            if value is not None:
                widths, values = found.setdefault(key, ([], []))
                widths.append(width)
                values.append(value)
    return {key: (np.asarray(w, dtype=np.float64), np.asarray(v, dtype=np.float64)) for key, (w, v) in found.items()}


def slopes(frame: pd.DataFrame) -> pd.DataFrame:
    """Per coordinate and step >= 1, the least-squares slope of log(value) on log(width): ``coordinate, kind,
    step, slope``. A coordinate at a step where some width has not moved (value 0: under muP's zero
    readout the hidden rows move from step 2 on) has no slope and no row."""
    out = []
    for (name, kind, step), (widths, values) in _by_coordinate(frame).items():
        slope = _fit(widths, values) if step >= 1 else None
        if slope is not None:
            out.append((name, kind, step, slope))
    return pd.DataFrame(out, columns=["coordinate", "kind", "step", "slope"])


def summary(frame: pd.DataFrame) -> pd.DataFrame:
    """What a baseline of a coordinate check keeps, shaped as probe rows (``module, kind, layer`` and
    statistics): per coordinate and step (module ``<coordinate>@t<step>``, kind ``coord``) its ``slope``
    and its size at the smallest and the largest width (``change_first_rms``, ``change_last_rms``)."""
    rows = []
    for (name, _, step), (widths, values) in _by_coordinate(frame).items():
        slope = _fit(widths, values) if step >= 1 else None
        if slope is not None:
            order = np.argsort(widths)
            rows.append((f"{name}@t{step}", "coord", step, slope, values[order[0]], values[order[-1]]))
    return pd.DataFrame(rows, columns=["module", "kind", "layer", "slope", "change_first_rms", "change_last_rms"])


def table(frame: pd.DataFrame) -> pd.DataFrame:
    """The printed table: a row per coordinate and step >= 1 (at 0 every change is 0), a column per width
    (rms of h_t - h_0, or the logit std), and the fitted ``slope``."""
    coords = coordinates(frame)
    coords = coords[coords["step"] >= 1]
    wide = coords.pivot_table(index=["step", "coordinate"], columns="width", values="value", aggfunc="first",
                              sort=False)
    wide.columns = [f"w{w}" for w in wide.columns]
    fitted = slopes(frame).set_index(["step", "coordinate"])["slope"]
    return wide.join(fitted).reset_index()


def draw(fig, frame: pd.DataFrame, title: str = "") -> None:
    """mup's coordinate-check layout on a matplotlib ``Figure``: one panel per step (0: the size rms(h_0) at
    init; t >= 1: the change rms(h_t - h_0)), size against width, a line per coordinate, log-log."""
    coords = coordinates(frame)
    init_sizes = frame[(frame["kind"] != "param") & (frame["step"] == 0)]
    steps = sorted(coords["step"].unique())
    axes = fig.subplots(1, len(steps), sharex=True, squeeze=False)[0]
    for ax, step in zip(axes, steps, strict=True):
        if step == 0:
            shown = init_sizes.rename(columns={"module": "coordinate", "act_rms": "value"})
            ax.set_title("t = 0: rms(h_0)")
        else:
            shown = coords[coords["step"] == step]
            ax.set_title(f"t = {step}: rms(h_t - h_0)")
        for name, group in shown.groupby("coordinate", sort=False):
            group = group[group["value"] > 0]
            if len(group):
                ax.plot(group["width"], group["value"], marker="o", label=name)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("width")
    axes[0].set_ylabel("size")
    axes[-1].legend(fontsize="small", loc="best")
    if title:
        fig.suptitle(title)
