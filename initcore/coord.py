r"""The coordinate check over training steps (Yang et al., 2021; the mup package's ``coord_check``), as data.

A ``CoordRun`` names a model family, an init strategy, an optimizer with its learning rate, the widths
and the number of steps. ``measure(run, seed)`` trains a fresh model at every width on one fixed small
task (``TASKS``) with ``initcore.steps.trace_steps`` and returns one frame; ``slopes`` fits, per
coordinate and step, log(size) against log(width); ``summary`` is what a baseline keeps; ``draw`` plots
mup's layout (one panel per step, size against width, a line per coordinate, log-log).
bench/test_coord_check.py asserts on these numbers; ``initcore coord`` prints and draws them.

A model of your own takes the place of the family: ``CoordRun(factory, init)`` with
``factory(seed, width) -> (model, inputs)`` or ``(model, inputs, targets)``. It builds the model at
``width`` (the dimension that grows: hidden size, d_model) and draws the inputs from ``seed`` before
anything that depends on the width, so that every width sees the same batch (checked). The loss is the
cross-entropy of the prediction's last dimension against integer targets, the mean squared error
against float ones, or, without targets, against a fixed N(0, 1) target of the prediction's shape (which
must not grow with width: a readout). The prediction is the output, its ``logits`` (Hugging Face), or
its first element. Which dimensions grow is read from the model's shapes at two widths (as the mup
package's ``set_base_shapes`` does): a matrix whose fan-in grows and whose fan-out does not is a readout,
under ``init="mup"`` the head (initialized at 0) at every width, the base's included. muP is
``init.apply(model, "mup", base=<shapes at base_width>, inputs=...)`` and ``init.param_groups`` with the
same base (``initcore.init.mup.classify``): an embedding table tied to the readout keeps its init and its
readout's output is multiplied by sqrt(base)/width. The modules that apply the traced readout are the
``output`` row's, left out. ``init=None`` keeps the factory's own init and trains with one learning rate.

``verdicts`` says per coordinate and step whether it is flat in width (|slope| <= ``MAX_SLOPE``),
grows, shrinks, did not move at some width (no slope), or is one of the run's declared exceptions;
``passed`` is True when none grows, what muP promises and the standard parametrization breaks.

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

import fnmatch
import functools
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from initcore import init
from initcore.models import MLP, Transformer, TransformerConfig, readout
from initcore.models.readout import prediction
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

# The verdict's bound on |slope|: half the smallest slope theory gives the standard parametrization a
# growing coordinate (SGD's hidden rows, 1/2; see THEORY_SLOPES). Measured over seeds 0..2 at widths 64..1024,
# 3 steps: muP's largest slope is 0.085 (transformer, SGD, blocks.0.ffn at t = 2; MLP 0.053), while under
# the standard parametrization some coordinate grows with slope >= 0.76 at every step (transformer, SGD,
# output at t = 3), so the bound sits 3x from each.
MAX_SLOPE = 0.25
# A coordinate that grows blows up at width; a non-finite one already has. One that shrinks learns less at
# width than at the base (the kernel regime): shown, not failed. "not moved": 0 at some width, no slope (under
# muP's zero readout the hidden rows first move at t = 2).
VERDICTS = ("flat", "grows", "shrinks", "not moved", "not finite", "excepted")
FAILING = ("grows", "not finite")
# Coordinates muP lets grow or shrink by design, none by default: a run declares its own (``exceptions``,
# ``COORDINATE`` or ``COORDINATE@tSTEP``, fnmatch patterns; e.g. "output@t1" for a readout that starts
# nonzero, whose first change is its own init's scale).

Tamper = Callable[[nn.Module, list[dict], int], None]  # (model, param groups, width): inject a fault
Factory = Callable[[int, int], tuple]  # factory(seed, width) -> (model, inputs) or (model, inputs, targets)
USER_STATISTICS = ("act_rms", "logit_std")  # a model of the user's: the logits' std wherever it calls SDPA
USER_MUP_OPTIONS = {"readout": "zero"}  # its q, k, v are not named: no zero query (see init.mup)


def check_exceptions(patterns: Iterable[str]) -> tuple[str, ...]:
    """``patterns`` as a tuple, each ``COORDINATE`` or ``COORDINATE@tSTEP`` (fnmatch; STEP an integer >= 1).

    Raises:
        ValueError: naming the first malformed one and the form.
    """
    if isinstance(patterns, str):
        raise ValueError(f"exceptions must be a tuple of COORDINATE[@tSTEP] patterns, not the string {patterns!r}")
    out = tuple(patterns)
    for pattern in out:
        name, at, step = pattern.partition("@t") if isinstance(pattern, str) else ("", "", "")
        if not name or (at and not (step.isdigit() and int(step) >= 1)):
            raise ValueError(f"exception {pattern!r}: the form is COORDINATE or COORDINATE@tSTEP (fnmatch, STEP >= 1), "
                             "e.g. output@t1 or '*:logits'")
    return out


def excepted(coordinate: str, step: int, patterns: Iterable[str]) -> bool:
    """Whether ``coordinate`` at ``step`` matches one of ``patterns`` (see ``check_exceptions``)."""
    for pattern in patterns:
        name, at, at_step = pattern.partition("@t")
        if fnmatch.fnmatchcase(coordinate, name) and (not at or int(at_step) == step):
            return True
    return False


def factory_name(factory: Callable) -> str:
    """``module:qualname`` of a factory, as the command line names it."""
    return f"{getattr(factory, '__module__', '?')}:{getattr(factory, '__qualname__', repr(factory))}"


@dataclass(frozen=True)
class CoordRun:
    """One coordinate check: ``model`` family (or a ``factory(seed, width)`` of yours) at each of ``widths``,
    init ``init`` (None: a factory's own), ``steps`` steps of ``optimizer`` at ``lr`` (muP: at
    ``base_width``, default the smallest width, with ``MUP_OPTIONS``); ``exceptions``: coordinates the
    verdict lets be (``COORDINATE[@tSTEP]``, fnmatch patterns); ``roles``: what ``init.apply`` takes as
    ``roles`` for a factory's model, as pairs (a fused q/k/v projection, say)."""

    model: str | Factory
    init: str | None
    optimizer: str = "adam"
    widths: tuple[int, ...] = (64, 128, 256, 512, 1024)
    steps: int = 3
    lr: float | None = None  # None: DEFAULT_LR[optimizer]
    base_width: int | None = None
    options: tuple[tuple[str, object], ...] = field(default=())  # strategy options, as pairs (muP: MUP_OPTIONS)
    exceptions: tuple[str, ...] = ()
    roles: tuple[tuple[str, object], ...] = ()  # a factory's model: (pattern, role) pairs for init.apply

    def __post_init__(self) -> None:
        if not callable(self.model) and self.model not in MODELS:
            raise ValueError(f"unknown model {self.model!r}; the coordinate check knows: {', '.join(MODELS)}, "
                             "or a factory(seed, width) -> (model, inputs) of yours")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"unknown optimizer {self.optimizer!r}; valid: {', '.join(OPTIMIZERS)}")
        if self.init is None and not self.is_factory:
            raise ValueError(f"init None keeps a factory's own init; model {self.model!r} needs a strategy")
        if self.init is not None:
            init.get(self.init)  # a ValueError naming the strategies
        check_exceptions(self.exceptions)
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
    def is_factory(self) -> bool:
        return callable(self.model)

    @property
    def name(self) -> str:
        """The model's name in titles and keys: the family, or a factory's ``module:qualname``."""
        return factory_name(self.model) if self.is_factory else self.model

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
        if self.init != "mup":
            return {}
        return dict(USER_MUP_OPTIONS if self.is_factory else MUP_OPTIONS[self.model])

    @property
    def key(self) -> str:
        widths = f"w{self.widths[0]}-{self.widths[-1]}x{len(self.widths)}"
        opts = "".join(f"-{k}{v}" for k, v in self.options)
        return f"coord-{self.name}-{widths}-t{self.steps}/{self.init or 'own'}{opts}-{self.optimizer}" \
               f"{self.learning_rate:g}"

    def task(self) -> MLPTask | TransformerTask:
        if self.is_factory:
            raise ValueError(f"a model of yours ({self.name}) has no built-in task; its factory gives the batch")
        return TASKS[self.model]


def build(run: CoordRun, width: int, seed: int, device: str | torch.device = "cpu",
          tamper: Tamper | None = None) -> tuple[nn.Module, Batch, torch.optim.Optimizer]:
    """Model, batch and optimizer of ``run`` at ``width``: from ``Generator().manual_seed(seed)``, the batch
    first (the same task at every width), then the weights, on the CPU; then moved to ``device``. A model
    of yours: ``factory(seed, width)`` after ``torch.manual_seed(seed)``, then ``run.init`` drawn from the
    generator (see the module docstring)."""
    if run.is_factory:
        return _build_user(run, width, seed, device, tamper)
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
    return model, batch, _optimizer(run, groups)


def _optimizer(run: CoordRun, groups: list[dict]) -> torch.optim.Optimizer:
    if run.optimizer == "adam":
        return torch.optim.Adam(groups, fused=True)  # one kernel per parameter: a third of the time
    return torch.optim.SGD(groups)


def _made(run: CoordRun, width: int, seed: int) -> tuple[nn.Module, Any, Any]:
    """``(model, inputs, targets)`` from the factory (targets None where it gave none), checked."""
    torch.manual_seed(seed)
    made = run.model(seed, width)
    if isinstance(made, tuple) and len(made) in (2, 3) and isinstance(made[0], nn.Module):
        return (*made, None) if len(made) == 2 else made
    got = f"a tuple of {len(made)}" if isinstance(made, tuple) else type(made).__name__
    raise ValueError(f"{run.name}(seed, width) returned {got}; it must return (model, inputs) or "
                     "(model, inputs, targets)")


@functools.lru_cache(maxsize=32)
def _shapes_at(run: CoordRun, seed: int, width: int) -> dict[str, tuple[int, ...]]:
    return {n: tuple(p.shape) for n, p in _made(run, width, seed)[0].named_parameters()}


def _delta(run: CoordRun, seed: int) -> dict[str, tuple[int, ...]] | None:
    """The shapes at a width of the run other than the base (mup's delta model): what grows, at every width."""
    other = next((w for w in run.widths if w != run.base), None)
    return None if other is None else _shapes_at(run, seed, other)


def readouts(run: CoordRun, model: nn.Module, seed: int) -> set[str]:
    """Parameters of a factory's model whose fan-in grows with width and whose fan-out does not (read from
    its shapes at the base width and another width of the run): the output weights, muP's heads."""
    classes = init.mup.classify(model, _shapes_at(run, seed, run.base), roles=dict(run.roles) or None,
                                delta=_delta(run, seed))
    return {name for name, c in classes.items() if c.kind == "output"}


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.shape == b.shape \
            and a.dtype == b.dtype and bool(torch.equal(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (tuple, list)) and isinstance(b, (tuple, list)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return a == b


class FactoryLoss:
    """The loss of a factory's model (see the module docstring); remembers the prediction's shape, which
    must be the same at every width."""

    def __init__(self, name: str, seed: int) -> None:
        self.name, self.seed, self.shape = name, seed, None

    def __call__(self, pred: torch.Tensor, targets: Any) -> torch.Tensor:
        if self.shape is None:
            self.shape = tuple(pred.shape)
        elif tuple(pred.shape) != self.shape:
            raise ValueError(f"{self.name}: the prediction's shape changes with width ({self.shape} -> "
                             f"{tuple(pred.shape)}); a coordinate check trains a readout of fixed size")
        if targets is None:  # fixed: the same numbers at every width
            targets = torch.randn(self.shape, generator=torch.Generator().manual_seed(self.seed)).to(pred)
        if not targets.is_floating_point():
            return F.cross_entropy(pred.reshape(-1, pred.shape[-1]).float(), targets.reshape(-1))
        return F.mse_loss(pred.float(), targets.to(pred.device, torch.float32))


def _build_user(run: CoordRun, width: int, seed: int, device, tamper: Tamper | None):
    model, inputs, targets = _made(run, width, seed)
    roles = dict(run.roles)
    base = {}
    if run.init == "mup":
        # which dimensions grow: the shapes at the base width and another (mup's delta: at the base width
        # itself no dimension has grown); the readout traced on the inputs (a tied one gets its multiplier)
        base = {"base": _shapes_at(run, seed, run.base), "delta": _delta(run, seed)}
    roles = roles or None
    if run.init is not None:
        init.apply(model, run.init, generator=torch.Generator().manual_seed(seed), roles=roles,
                   **base, **({"inputs": inputs} if base else {}), **run.strategy_options)
    model.to(device)
    batch = Batch(_to(inputs, device), _to(targets, device))
    groups = init.param_groups(model, run.init or "standard", lr=run.learning_rate, optimizer=run.optimizer,
                               roles=roles, **base, **({"inputs": batch.inputs} if base else {}))
    if tamper is not None:
        tamper(model, groups, width)
    return model, batch, _optimizer(run, groups)


def readout_modules(model: nn.Module, inputs: Any) -> set[str]:
    """Names of the modules that apply a factory's readout to ``inputs`` (traced, ``initcore.models.readout``):
    their rows are the ``output`` row's. A tied table's readout is the module that multiplies by it, not
    its embedding."""
    params = dict(model.named_parameters())
    return {name for weight in readout.traced(model, inputs)
            for name, m in readout.modules_using(model, params[weight])
            if not isinstance(m, (nn.Embedding, nn.EmbeddingBag))}


def _to(x: Any, device) -> Any:
    if isinstance(x, torch.Tensor):
        return x.to(device)
    if isinstance(x, dict):
        return {k: _to(v, device) for k, v in x.items()}
    if isinstance(x, (tuple, list)):
        return type(x)(_to(v, device) for v in x)
    return x


def head_rows(model: nn.Module) -> set[str]:
    """Names of the modules that own a ``head`` parameter: their rows are the readout's, left out for ``output``."""
    return {p.name.rsplit(".", 1)[0] for p in init.strategies.param_roles(model) if p.role == "head"}


def measure(run: CoordRun, seed: int, device: str | torch.device = "cpu", tamper: Tamper | None = None) -> pd.DataFrame:
    """``trace_steps`` of ``run`` at every width, one frame with a ``width`` column (the head's rows left out).

    Raises:
        ValueError: a factory whose inputs or targets differ between widths, or whose prediction's shape does.
    """
    if run.is_factory:
        return _measure_user(run, seed, device, tamper)
    frames = []
    task = run.task()
    for width in run.widths:
        model, batch, optimizer = build(run, width, seed, device, tamper)
        frame = trace_steps(model, batch, optimizer, run.steps, task.loss, readout=task.readout,
                            statistics=STATISTICS[run.model])
        frame.insert(0, "width", width)
        frames.append(frame[~frame["module"].isin(head_rows(model))])
    return pd.concat(frames, ignore_index=True)  # the same columns at every width: pandas' fast path


def _measure_user(run: CoordRun, seed: int, device, tamper: Tamper | None) -> pd.DataFrame:
    frames, first = [], None
    loss = FactoryLoss(run.name, seed)
    for width in run.widths:
        model, batch, optimizer = build(run, width, seed, device, tamper)
        if first is None:
            first = batch
        elif not _same(batch, first):
            raise ValueError(f"{run.name}: the inputs or targets differ between widths {run.widths[0]} and {width}; "
                             "draw them from the seed before anything that depends on the width")
        frame = trace_steps(model, batch, optimizer, run.steps, loss, readout=prediction, statistics=USER_STATISTICS)
        frame.insert(0, "width", width)
        frames.append(frame[~frame["module"].isin(readout_modules(model, batch.inputs))])
    return pd.concat(frames, ignore_index=True)


def coordinates(frame: pd.DataFrame) -> pd.DataFrame:
    """The coordinates of a ``measure`` frame, tidy: ``coordinate, kind, step, width, value``.

    ``value`` is ``act_change_rms`` for every probe row and ``output``, and for attention rows also their
    ``logit_std`` as coordinate ``<row>:logits`` (kind ``logits``).
    """
    rows = frame[frame["kind"] != "param"]
    change = rows[rows["module"].isin(measured(frame))][["module", "kind", "step", "width", "act_change_rms"]]
    change = change.rename(columns={"module": "coordinate", "act_change_rms": "value"})
    attn = rows[rows["logit_std"].notna()] if "logit_std" in rows else rows.iloc[:0]
    logits = pd.DataFrame({"coordinate": attn["module"] + ":logits", "kind": "logits", "step": attn["step"],
                           "width": attn["width"], "value": attn["logit_std"]})
    return pd.concat([change, logits], ignore_index=True)[["coordinate", "kind", "step", "width", "value"]]


def measured(frame: pd.DataFrame) -> set[str]:
    """Rows whose output the probe measured (``act_rms`` at step 0 somewhere): an attention row that holds
    only its logits' statistics (an SDPA call's own row) has no change to follow, only its ``:logits``."""
    first = frame[(frame["step"] == 0) & (frame["kind"] != "param")]
    return set(first.loc[first["act_rms"].notna(), "module"])


def _fit(widths: np.ndarray, values: np.ndarray) -> float | None:
    if len(values) < 2 or not (np.isfinite(values).all() and (values > 0).all()):
        return None
    return float(np.polyfit(np.log(widths), np.log(values), 1)[0])


def _by_coordinate(frame: pd.DataFrame) -> dict[tuple[str, str, int], tuple[np.ndarray, np.ndarray]]:
    """(coordinate, kind, step) -> (widths, values), as ``coordinates`` (plain Python: a run has ~100 of them)."""
    found: dict[tuple[str, str, int], tuple[list, list]] = {}
    logit = frame["logit_std"].to_numpy() if "logit_std" in frame else np.full(len(frame), np.nan)
    columns = (frame[c].to_numpy() for c in ("module", "kind", "step", "width", "act_change_rms"))
    moved_rows = measured(frame)
    for name, kind, step, width, change, logits in zip(*columns, logit, strict=True):
        if kind == "param":
            continue
        for key, value in (((name, kind, int(step)), change if name in moved_rows else None),
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


def verdicts(frame: pd.DataFrame, max_slope: float = MAX_SLOPE, exceptions: Iterable[str] = ()) -> pd.DataFrame:
    """Per coordinate and step >= 1: ``coordinate, kind, step, slope, verdict`` (one of ``VERDICTS``; slope NaN
    where there is none). ``exceptions``: ``COORDINATE[@tSTEP]`` patterns whose verdict is ``excepted``."""
    patterns = check_exceptions(exceptions)
    out = []
    for (name, kind, step), (widths, values) in _by_coordinate(frame).items():
        if step < 1:
            continue
        slope = _fit(widths, values)
        if excepted(name, step, patterns):
            verdict = "excepted"
        elif not np.isfinite(values).all():
            verdict = "not finite"
        elif slope is None:
            verdict = "not moved"
        else:
            verdict = "grows" if slope > max_slope else "shrinks" if slope < -max_slope else "flat"
        out.append((name, kind, step, math.nan if slope is None else slope, verdict))
    return pd.DataFrame(out, columns=["coordinate", "kind", "step", "slope", "verdict"])


def passed(verdict_frame: pd.DataFrame) -> bool:
    """Whether no coordinate of a ``verdicts`` frame fails (grows with width or is not finite)."""
    return not verdict_frame["verdict"].isin(FAILING).any()


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


def table(frame: pd.DataFrame, max_slope: float = MAX_SLOPE, exceptions: Iterable[str] = ()) -> pd.DataFrame:
    """The printed table: a row per coordinate and step >= 1 (at 0 every change is 0), a column per width
    (rms of h_t - h_0, or the logit std), the fitted ``slope`` and the ``verdict`` (see ``verdicts``)."""
    coords = coordinates(frame)
    coords = coords[coords["step"] >= 1]
    wide = coords.pivot_table(index=["step", "coordinate"], columns="width", values="value", aggfunc="first",
                              sort=False, dropna=False)
    wide.columns = [f"w{w}" for w in wide.columns]
    judged = verdicts(frame, max_slope, exceptions).set_index(["step", "coordinate"])[["slope", "verdict"]]
    return wide.join(judged).reset_index()


def draw(fig, frame: pd.DataFrame, title: str = "", verdicts: pd.DataFrame | None = None) -> None:
    """mup's coordinate-check layout on a matplotlib ``Figure`` (``initcore.report.coord_check.draw``)."""
    from initcore.report import coord_check

    coord_check.draw(fig, frame, title, verdicts)
