"""Measuring an experiment for bench/: build it on the CPU from a seed, move it to a device, trace it,
keep a curated subset of the statistics, and compare them against (or regenerate) the stored baseline.

Plain functions (build, measure, tidy, the device and theory checks) and small classes handed
callbacks rather than the pytest session (a session's trace cache, the baseline store, and the objects
behind the fixtures); ``initcore.testing.plugin`` wires them into ``trace_run`` and ``baseline``.
"""

from __future__ import annotations

import functools
import hashlib
import math
import re
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from initcore import baselines, experiments, probe
from initcore.experiments import Run
from initcore.threads import one_thread  # re-exported: the baselines run on one thread

# Baselines are summaries over these seeds, never over the run's --seed: a fixed set makes the stored
# files reproducible, and a --seed S run is then a genuinely new draw compared against them. Why 16 and
# not the 8 that baselines.K = 10 was sized for: with 8 seeds P(|t_7| > 10/1.06) = 3e-5 per number, and
# the bench compares ~2100 numbers with a real seed spread, so ~7% of --seed values would fail somewhere
# (seen: seed 1 failed the silu/Xavier grad_norm of layers.4, whose 8-seed spread came out at 0.28 of the
# true one, a 1-in-1300 draw). With 16 seeds P(|t_15| > 10/1.03) = 7e-8 per number: 2e-4 per run.
BASELINE_SEEDS: tuple[int, ...] = tuple(range(1000, 1016))
# The seed whose own values a baseline stores beside the bands (``baselines.SeedRecord``): the plugin's default
# --seed, so a plain run is checked exactly, and any other seed by the bands alone.
RECORD_SEED = 0

# Which statistics a baseline holds is a fact of each run type (``run.statistics``; the choice and its
# reasons are in initcore.experiments, beside MLP_STATISTICS).
MLP_STATISTICS = experiments.MLP_STATISTICS
POSITIVE_MEAN_ACTIVATIONS = experiments.POSITIVE_MEAN_ACTIVATIONS
PARAM_STATISTICS = experiments.PARAM_STATISTICS
TRANSFORMER_STATISTICS = experiments.TRANSFORMER_STATISTICS

# --- how closely two devices (or two precisions) must agree -------------------------------------------
# The same weights and inputs on CUDA and on the CPU differ only by float32 rounding (summation order,
# fused kernels; TF32 is off for float32 matmuls by default). A statistic averages >= 10^4 numbers, so
# its own rounding error is ~1e-6 relative; what amplifies rounding is the network. Measured as float32
# against float64 on the CPU (tests/testing/test_measure.py repeats it over every bench configuration):
# stable networks differ by < 1e-4 relative, and every forward statistic by < 3e-4. The gradients of a
# chaotic network are another matter: in the tanh stack of depth "too_large" a perturbation grows ~3.4x
# per layer against the signal, and over seeds 0..29 its early gradient norms differed by 2% (median) to
# 8.4% (worst) between the two precisions. So backward statistics (``grad_norm``, ``out_grad_norm``) get
# ``device_rtol(run)``: DEVICE_RTOL, or, where the mean field says the network amplifies rounding by a
# factor A (``rounding_amplification``), CHAOS_MARGIN * ROUNDOFF * A if that is larger. Calibration:
# worst backward difference / (ROUNDOFF * A) over seeds 0..29 was 18 for "too_large" (A = 8e4) and 58
# for the notebook's saturation case (A = 3.4e3); CHAOS_MARGIN = 200 leaves > 3x. "too_large" then
# allows 95%: its float32 gradients are not reproducible across rounding at all; its forward statistics,
# and everything of every stable network, still pin a device down to 1e-3.
DEVICE_RTOL = 1e-3  # relative, for scales (stds, norms) and means: > 3x the worst forward difference
DEVICE_ATOL = 2e-3  # absolute, for fractions and normalized entropies (5x the worst case, chaos included)
ROUNDOFF = 2.0**-24  # float32 unit roundoff
CHAOS_MARGIN = 200.0
# Below this a float32 scale statistic is underflow, not a number: in the "vanishing" failure mode the
# backward pass's products leave float32's range, so layer 0's grad_norm is 3e-24 in float32 against
# 2.7e-22 in float64, its out_grad_norm 0 against 2e-23, and from seed to seed such values scatter over
# orders of magnitude. ``tidy`` raises every probe scale statistic to at least UNDERFLOW (a baseline then
# holds "underflowed", and a change that lifts the value above it still shows), and two devices agree on
# values below it.
UNDERFLOW = 1e-20
_FRACTIONS = ("_frac", "entropy_norm")


def rounding_amplification(run: Run) -> float:
    """The run's mean-field factor of rounding amplification (``MLPRun.rounding_amplification``); 1 for
    runs that have none (transformers: normalized, residual, measured < 1e-4)."""
    amplification = getattr(run, "rounding_amplification", None)
    return amplification() if callable(amplification) else 1.0


def device_rtol(run: Run) -> float:
    """The relative tolerance two devices (or precisions) are held to for ``run``'s gradient statistics."""
    return max(DEVICE_RTOL, CHAOS_MARGIN * ROUNDOFF * rounding_amplification(run))


class Built(NamedTuple):
    model: nn.Module
    inputs: Any  # a tensor, a tuple of them, or a dict of keyword arguments
    generator: torch.Generator  # the CPU generator, after the model and inputs were drawn from it


def build(run: Run, seed: int, device: str | torch.device = "cpu", dtype: torch.dtype | None = None) -> Built:
    """``run``'s model and inputs drawn on the CPU from ``Generator().manual_seed(seed)``, then moved.

    Drawing on the CPU makes a CUDA run start from exactly the numbers of the CPU run. ``dtype`` casts
    the parameters and floating inputs (token ids stay integers). The generator is returned so a
    caller can draw more (a loss projection) from the same stream.
    """
    generator = torch.Generator().manual_seed(seed)
    model, inputs = run.build(generator)
    model = model.to(device=device, dtype=dtype) if dtype is not None else model.to(device)
    return Built(model, move(inputs, device, dtype), generator)


def move(inputs, device: str | torch.device, dtype: torch.dtype | None = None):
    """``inputs`` (a tensor, or tuples, lists and dicts of them) on ``device``, floating tensors cast to ``dtype``."""
    if isinstance(inputs, torch.Tensor):
        cast = dtype if dtype is not None and inputs.is_floating_point() else inputs.dtype
        return inputs.to(device=device, dtype=cast)
    if isinstance(inputs, Mapping):
        return {k: move(v, device, dtype) for k, v in inputs.items()}
    if isinstance(inputs, (tuple, list)):
        return type(inputs)(move(v, device, dtype) for v in inputs)
    return inputs


def tensor_digest(tensor: torch.Tensor) -> str:
    """16 hex digits of a tensor's dtype, shape and bytes (on the CPU): equal only for the same bits."""
    t = tensor.detach().cpu().contiguous()
    h = hashlib.blake2b(f"{t.dtype} {tuple(t.shape)};".encode(), digest_size=8)
    h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def inputs_digest(inputs) -> str:
    """One digest of a run's inputs (a tensor, tuples, lists and dicts of them; other values by their repr)."""
    h = hashlib.blake2b(digest_size=8)

    def walk(x, name: str) -> None:
        if isinstance(x, torch.Tensor):
            h.update(f"{name}={tensor_digest(x)};".encode())
        elif isinstance(x, Mapping):
            for k in x:
                walk(x[k], f"{name}.{k}")
        elif isinstance(x, (tuple, list)):
            for i, v in enumerate(x):
                walk(v, f"{name}[{i}]")
        else:
            h.update(f"{name}={x!r};".encode())

    walk(inputs, "")
    return h.hexdigest()


def parameter_digests(model: nn.Module) -> tuple[tuple[str, str], ...]:
    """``(name, digest)`` of every parameter and buffer (``state_dict``), in the model's order."""
    return tuple((name, tensor_digest(t)) for name, t in model.state_dict().items())


@functools.cache
def _torch_facts() -> tuple[tuple[str, str], ...]:
    blas = re.search(r"BLAS_INFO=([^,\s]+)", torch.__config__.show())
    # str(): torch.__version__ is a TorchVersion, which pytest-xdist's execnet cannot carry from a worker
    return (("torch", str(torch.__version__)), ("cpu", str(torch.backends.cpu.get_cpu_capability())),
            ("blas", blas.group(1) if blas else "unknown"))


def environment(device: str | torch.device = "cpu", dtype: torch.dtype | None = None) -> tuple[tuple[str, str], ...]:
    """What changes the last digits of a statistic at a fixed seed, as ``name=value`` pairs: torch's version,
    the device type (and the GPU's name), the dtype, the CPU's kernels and the BLAS. The thread count is not
    among them: it changes the order of float32 reductions, within ``baselines.EXACT_RTOL`` (measured)."""
    kind = torch.device(device).type
    pairs = [("torch", dict(_torch_facts())["torch"]), ("device", kind),
             ("dtype", str(dtype or torch.get_default_dtype()).removeprefix("torch."))]
    if kind == "cuda":
        pairs.append(("gpu", torch.cuda.get_device_name(torch.device(device)).replace(" ", "_")))
    return (*pairs, *_torch_facts()[1:])


def seed_record(run: Run, seed: int, device: str | torch.device = "cpu") -> baselines.SeedRecord:
    """The record of ``run`` at ``seed``: this environment, and the digests of the model and inputs that
    ``run.build`` draws from that seed on the CPU (none for a run without ``build``: the coordinate check's)."""
    env = environment(device)
    if not callable(getattr(run, "build", None)):
        return baselines.SeedRecord(seed, env)
    model, inputs, _ = build(run, seed)
    return baselines.SeedRecord(seed, env, inputs_digest(inputs), parameter_digests(model))


def exact_backward_rtol(run: Run) -> float:
    """The exact check's tolerance for gradient statistics: ``baselines.EXACT_BACKWARD_RTOL``, or where the
    network amplifies rounding by A (``rounding_amplification``), CHAOS_MARGIN * ROUNDOFF * A if larger (as
    between devices: a thread count perturbs float32 rounding as a device does)."""
    return max(baselines.EXACT_BACKWARD_RTOL, CHAOS_MARGIN * ROUNDOFF * rounding_amplification(run))


def parameter_stats(model: nn.Module) -> pd.DataFrame:
    """One row per parameter, shaped like probe rows: ``module`` (the parameter's name), ``kind``
    "param", ``layer`` (the first index in the name, -1 if none), ``param_std`` (unbiased; NaN for a
    scalar) and ``param_mean`` (vectors and scalars only: biases, norm weights, gates; a weight
    matrix's mean is a signed number ~0).

    These rows are the init itself: a 10% change in a weight variance moves ``param_std`` by 4.9%,
    against a seed spread of ~0.1% for a 512 x 512 matrix, where the propagated statistics of a deep
    transformer spread by several percent from seed to seed and would let it pass.
    """
    rows = []
    with torch.no_grad():
        for name, p in model.named_parameters():
            x = p.detach().double()
            digits = next((int(part) for part in name.split(".") if part.isdigit()), -1)
            rows.append({"module": name, "kind": "param", "layer": digits,
                         "param_std": x.std().item() if x.numel() > 1 else math.nan,
                         "param_mean": x.mean().item() if x.dim() <= 1 else math.nan})
    return pd.DataFrame(rows, columns=["module", "kind", "layer", "param_std", "param_mean"])


def measure(run: Run, seed: int, device: str | torch.device = "cpu", dtype: torch.dtype | None = None) -> pd.DataFrame:
    """``probe.trace`` of ``run`` at ``seed`` on ``device`` with the run's own loss, followed by the
    ``parameter_stats`` rows of the model (kind "param")."""
    model, inputs, _ = build(run, seed, device, dtype)
    params = parameter_stats(model)
    frame = probe.trace(model, inputs, run.loss, select=run.select, train=run.train)
    return pd.concat([frame, params], ignore_index=True)


def statistics_for(run: Run) -> dict[str, tuple[str, ...]]:
    """The statistics a baseline of ``run`` holds, by probe row kind ("*": any kind): ``run.statistics``."""
    stats = getattr(run, "statistics", None)
    if not isinstance(stats, Mapping):
        raise TypeError(f"statistics_for takes a run with a statistics mapping (MLPRun, TransformerRun, Case), "
                        f"got {type(run).__name__}")
    return dict(stats)


# A transformer's blocks are alike, and with normalized inputs their branches are nearly independent draws:
# the mean over blocks of a statistic (geometric for scales, arithmetic for fractions) has ~1/sqrt(n_layers)
# of a single block's seed spread. These pooled rows (layer "blocks.*.ffn" etc.) catch a change that moves
# every block a little, e.g. the feed-forward activation (relu -> gelu: -17% in every ffn act_std, against
# a per-block spread of ~3.5%, i.e. a band of +-37% at K = 10). Parameters pool the same way, over the
# parameters whose names differ only in their indices ("layers.*.weight", "blocks.*.attn.q.weight"): one
# 256 x 256 matrix's std spreads by 1/sqrt(2 * 65536) = 0.28% from seed to seed, a band of +-4.8% that a
# 10% variance change (+4.9% std) only just leaves; pooled over 6 such matrices the band is +-3.1%.
POOLED_KINDS = ("attn", "ffn", "block")  # pooled over the rows whose names differ only in their indices


def _pooled_name(name: str) -> str:
    return ".".join("*" if part.isdigit() else part for part in name.split("."))


def _pool(values: pd.Series, statistic: str) -> float:
    log = baselines.default_scale(statistic) == "log" and bool((values > 0).all())
    return float(np.exp(np.log(values).mean())) if log else float(values.mean())


def tidy(frame: pd.DataFrame, statistics: Mapping[str, Iterable[str]]) -> pd.DataFrame:
    """The chosen statistics of a ``trace`` frame as baseline rows: ``layer, statistic, value``.

    ``layer`` is the probe's module name. ``statistics`` maps a row kind to its statistics; "*" stands
    for every kind not named. NaN values (a statistic that does not apply) are dropped; ``act_mean`` of
    an MLP's last layer (a linear output, mean ~0) is left out; probe scale statistics below UNDERFLOW
    are raised to it (float32 underflow, see above). The kinds of ``POOLED_KINDS`` also get one pooled
    row per statistic and name pattern ("blocks.*.attn", "h.*"), and parameters one per name pattern
    ("blocks.*.attn.q.weight") that more than one parameter shares.
    """
    parts = []
    last_linear = frame.loc[frame["kind"] == "linear", "layer"].max()
    named = {k: v for k, v in statistics.items() if k != "*"}
    kinds = [*named, *(k for k in dict.fromkeys(frame["kind"]) if k not in named and "*" in statistics)]
    for kind in kinds:
        stats = named.get(kind, statistics.get("*", ()))
        rows = frame[frame["kind"] == kind]
        for stat in stats:
            if stat not in rows:
                continue
            keep = rows if not (kind == "linear" and stat == "act_mean") else rows[rows["layer"] != last_linear]
            values = keep[stat].astype(float)
            if kind != "param" and baselines.default_scale(stat) == "log":
                values = values.where(~(values < UNDERFLOW), UNDERFLOW)  # NaN stays NaN
            parts.append(pd.DataFrame({"layer": keep["module"].astype(str), "statistic": stat,
                                       "value": values, "_order": keep.index.astype(float)}))
            values = values.dropna()
            if kind in POOLED_KINDS:
                names = keep.loc[values.index, "module"].astype(str).map(_pooled_name)
                for name, group in values.groupby(names.to_numpy(), sort=False):
                    if "*" in name and len(group) > 1:
                        parts.append(pd.DataFrame({"layer": [name], "statistic": [stat],
                                                   "value": [_pool(group, stat)], "_order": [len(frame) + 0.5]}))
            if kind == "param":
                names = keep.loc[values.index, "module"].astype(str).map(_pooled_name)
                for name, group in values.groupby(names.to_numpy(), sort=False):
                    if "*" in name and len(group) > 1:
                        parts.append(pd.DataFrame({"layer": [name], "statistic": [stat],
                                                   "value": [_pool(group, stat)], "_order": [len(frame) + 0.5]}))
    if not parts:
        return pd.DataFrame({"layer": [], "statistic": [], "value": []})
    out = pd.concat(parts, ignore_index=True).sort_values("_order", kind="stable")
    return out.dropna(subset=["value"]).drop(columns="_order").reset_index(drop=True)


def disagreements(measured: pd.DataFrame, reference: pd.DataFrame, statistics: Mapping[str, Iterable[str]],
                  rtol: float = DEVICE_RTOL, atol: float = DEVICE_ATOL,
                  backward_rtol: float | None = None) -> pd.DataFrame:
    """Rows of the chosen statistics where two traces of one configuration differ beyond tolerance.

    Allowed difference: fractions (``*_frac``, ``*entropy_norm``) ``atol``; scales (log-scale rows of
    ``baselines.default_scale``) ``rtol * |reference| + UNDERFLOW``, with ``backward_rtol`` (if given)
    instead of ``rtol`` for gradient statistics; other numbers (means) ``rtol * |reference| + atol``.
    NaN matches NaN; a value on one side only is a disagreement. Returns columns ``layer, statistic,
    measured, reference, allowed``.
    """
    a = tidy(measured, statistics)
    b = tidy(reference, statistics)
    m = a.merge(b, on=["layer", "statistic"], how="outer", suffixes=("_measured", "_reference"))
    x, y = m["value_measured"].to_numpy(), m["value_reference"].to_numpy()
    fraction = np.array([s.endswith(_FRACTIONS) for s in m["statistic"]], dtype=bool)
    log = np.array([baselines.default_scale(s) == "log" for s in m["statistic"]], dtype=bool)
    backward = np.array(["grad" in s for s in m["statistic"]], dtype=bool)
    relative = np.where(backward, rtol if backward_rtol is None else backward_rtol, rtol)
    with np.errstate(invalid="ignore", over="ignore"):
        allowed = np.where(fraction, atol, relative * np.abs(y) + np.where(log, UNDERFLOW, atol))
        close = np.abs(x - y) <= allowed
    same = (np.isnan(x) & np.isnan(y)) | (x == y)
    out = pd.DataFrame({"layer": m["layer"], "statistic": m["statistic"], "measured": x, "reference": y,
                        "allowed": allowed})
    return out[~(close | same)].reset_index(drop=True)


def assert_agree(measured: pd.DataFrame, reference: pd.DataFrame, statistics: Mapping[str, Iterable[str]],
                 what: str, rtol: float = DEVICE_RTOL, atol: float = DEVICE_ATOL,
                 backward_rtol: float | None = None) -> None:
    """AssertionError with a table if ``disagreements`` finds any row (``what`` names the comparison)."""
    bad = disagreements(measured, reference, statistics, rtol, atol, backward_rtol)
    if len(bad):
        table = bad.to_string(index=False, float_format=lambda v: f"{v:.6g}")
        backward = "" if backward_rtol is None else f", gradients rtol={backward_rtol:.3g}"
        raise AssertionError(f"{what}: {len(bad)} statistics differ beyond float tolerance (rtol={rtol:g}, "
                             f"atol={atol:g}{backward}):\n{table}")


# --- a session's measurements ----------------------------------------------------------------------------

MeasureFn = Callable[[Run, int, str], pd.DataFrame]  # (run, seed, device) -> a trace-like wide frame


class TraceCache:
    """Measurements of one session by (measure function, run, seed, device): tests of one configuration
    (symptoms, theory bands, baseline) share one trace, and a CUDA test reuses its CPU twin."""

    def __init__(self) -> None:
        self._frames: dict[tuple, pd.DataFrame] = {}

    def get(self, fn: MeasureFn, run: Run, seed: int, device: str) -> pd.DataFrame:
        key = (fn, run, seed, device)
        if key not in self._frames:
            self._frames[key] = fn(run, seed, device)
        return self._frames[key].copy()


class Tracer:
    """The ``trace_run`` fixture: ``trace_run(run)`` measures ``run`` at this test's seed and device.

    On a device other than the CPU it also measures the same configuration and seed on the CPU and
    asserts that the chosen statistics agree within DEVICE_RTOL (gradients: ``device_rtol(run)``) and
    DEVICE_ATOL (``assert_agree``).
    """

    def __init__(self, device: str, seed: int, cache: TraceCache) -> None:
        self.device, self.seed, self.cache = device, seed, cache

    def __call__(self, run: Run, *, measure: MeasureFn = measure,
                 statistics: Mapping[str, Iterable[str]] | None = None) -> pd.DataFrame:
        frame = self.cache.get(measure, run, self.seed, self.device)
        if self.device != "cpu":
            reference = self.cache.get(measure, run, self.seed, "cpu")
            assert_agree(frame, reference, statistics or statistics_for(run),
                         what=f"{run.key} at seed {self.seed}: {self.device} against cpu",
                         backward_rtol=device_rtol(run))
        return frame


# --- baselines -------------------------------------------------------------------------------------------

Remeasure = Callable[[int], pd.DataFrame]  # seed -> tidy rows (layer, statistic, value)


class Baselines:
    """The store of one session: reads ``<directory>/<experiment>.csv``, or regenerates it.

    With ``update``, ``rows`` measures the configuration at every seed of ``BASELINE_SEEDS`` (through
    the ``remeasure`` callback, one seed at a time: only the tidy rows of each seed are kept) and
    summarizes, with the values of RECORD_SEED and its ``SeedRecord`` (through ``record``); if ``write``,
    the rows are staged, and ``flush`` writes each staged file once, merged with the configurations of the
    old file that this session did not measure (atomic, flock-guarded). So an interrupted session, which
    does not flush, leaves every file as it was, and a finished one replaces each file it touched whole.
    Results are cached per (experiment, config, tag), files read once per session.
    """

    def __init__(self, directory: str | Path, *, update: bool = False, seeds: Iterable[int] = BASELINE_SEEDS,
                 on_check: Callable[..., None] | None = None, record_seed: int = RECORD_SEED) -> None:
        self.directory = Path(directory)
        self.update = update
        self.seeds = tuple(seeds)
        self.record_seed = record_seed
        self.on_check = on_check  # (experiment, config, device, statistics compared, exact), for the summary
        self._rows: dict[tuple[str, str, str], tuple[pd.DataFrame, baselines.SeedRecord | None]] = {}
        self._files: dict[Path, baselines.Stored] = {}
        self.staged: dict[str, dict[str, pd.DataFrame]] = {}  # experiment -> config -> rows to write
        self.records: dict[str, dict[str, baselines.SeedRecord]] = {}  # experiment -> config -> its record

    def path(self, experiment: str) -> Path:
        return self.directory / f"{experiment}.csv"

    def rows(self, experiment: str, config: str, remeasure: Remeasure, *, write: bool = True,
             tag: str = "", record: Callable[[int], baselines.SeedRecord] | None = None,
             command: str = baselines.UPDATE_COMMAND) -> pd.DataFrame:
        """The baseline rows of ``config``; raises ``baselines.BaselineMissing`` when there are none and
        ``baselines.BaselineCorrupt`` for a file that is not a baseline file."""
        return self.entry(experiment, config, remeasure, write=write, tag=tag, record=record, command=command)[0]

    def entry(self, experiment: str, config: str, remeasure: Remeasure, *, write: bool = True, tag: str = "",
              record: Callable[[int], baselines.SeedRecord] | None = None,
              command: str = baselines.UPDATE_COMMAND) -> tuple[pd.DataFrame, baselines.SeedRecord | None]:
        """``rows`` and the configuration's ``SeedRecord`` (None where the file holds none)."""
        key = (experiment, config, tag if self.update else "")
        if key not in self._rows:
            if self.update:
                with one_thread():
                    at_seed = remeasure(self.record_seed)
                    rows = baselines.summarize([remeasure(s) for s in self.seeds], config, at_seed=at_seed)
                    made = record(self.record_seed) if record is not None else None
                if write:
                    self.stage(experiment, rows, {config: made} if made is not None else None)
                self._rows[key] = rows, made
            else:
                path = self.path(experiment)
                if path not in self._files and path.exists():
                    self._files[path] = baselines.read(path, command)
                self._rows[key] = baselines.load_stored(path, config, command, self._files.get(path))
        return self._rows[key]

    def stage(self, experiment: str, rows: pd.DataFrame,
              records: Mapping[str, baselines.SeedRecord] | None = None) -> None:
        """Hold ``rows`` (of one or more configurations) and their records for ``flush``, replacing earlier ones."""
        for config, part in rows.groupby("config", sort=False):
            self.staged.setdefault(experiment, {})[str(config)] = part.reset_index(drop=True)
        for config, made in (records or {}).items():
            self.records.setdefault(experiment, {})[config] = made

    def flush(self) -> list[str]:
        """Write every staged file once (``baselines.replace_configs``) and forget what was staged; one line
        per file written, saying how many configurations it holds and whether a corrupt old file was dropped."""
        lines = []
        for experiment in sorted(self.staged):
            rows = pd.concat(list(self.staged[experiment].values()), ignore_index=True)
            result = baselines.replace_configs(self.path(experiment), rows, records=self.records.get(experiment))
            lines.append(result.describe())
        self.staged.clear()
        self.records.clear()
        return lines


class BaselineCheck:
    """The ``baseline`` fixture: ``baseline.check(experiment, run, frame)`` at this test's device and seed.

    Compares the chosen statistics of ``frame`` with ``baselines/<experiment>.csv`` and returns the
    baseline rows (their spreads give theory bands their width), in two steps. At the seed whose values the
    file stores, in the environment it records, every row must equal its stored value within
    ``baselines.EXACT_RTOL``; where rows moved, the run's parameters and inputs are digested: the same bits
    fail the test with ``SeedMismatch`` (the code computes something else), other bits ("parameters differ at
    the same seed") leave it to the bands. Then the bands, as for any seed. A missing baseline or a failure is
    the message alone, a table, no traceback, naming ``command`` to regenerate. Under ``--update-baselines``
    the rows are measured at ``BASELINE_SEEDS`` on this test's device; they are written by the cpu case (by
    the cuda case only under ``--device cuda``), so each file has one writer per configuration and does not
    depend on which devices ran.
    """

    def __init__(self, store: Baselines, device: str, cache: TraceCache, *, writer: bool, seed: int = RECORD_SEED,
                 command: str = baselines.UPDATE_COMMAND) -> None:
        self.store, self.device, self.cache, self.writer = store, device, cache, writer
        self.seed, self.command = seed, command

    def entry(self, experiment: str, run: Run, *, measure: MeasureFn = measure,
              statistics: Mapping[str, Iterable[str]] | None = None
              ) -> tuple[pd.DataFrame, baselines.SeedRecord | None]:
        """The baseline rows of ``run`` and their seed record (or regenerated ones, under ``--update-baselines``)."""
        stats = statistics or statistics_for(run)

        def remeasure(seed: int) -> pd.DataFrame:
            # Not through the session's cache: each seed's frame is needed once, here, and 16 of them for
            # every configuration would be memory the session holds to its end for nothing.
            return tidy(measure(run, seed, self.device), stats)

        try:
            return self.store.entry(experiment, run.key, remeasure, write=self.writer, tag=self.device,
                                    record=lambda seed: seed_record(run, seed, self.device), command=self.command)
        except baselines.BaselineMissing as exc:
            message = f"{experiment}: {exc}"
        except baselines.BaselineCorrupt as exc:
            message = str(exc)
        pytest.fail(message, pytrace=False)  # outside the except: no "During handling..." chain in the report

    def rows(self, experiment: str, run: Run, *, measure: MeasureFn = measure,
             statistics: Mapping[str, Iterable[str]] | None = None) -> pd.DataFrame:
        return self.entry(experiment, run, measure=measure, statistics=statistics)[0]

    def check(self, experiment: str, run: Run, frame: pd.DataFrame, *, measure: MeasureFn = measure,
              statistics: Mapping[str, Iterable[str]] | None = None) -> pd.DataFrame:
        stats = statistics or statistics_for(run)
        rows, record = self.entry(experiment, run, measure=measure, statistics=stats)
        measured = tidy(frame, stats).assign(config=run.key)
        try:
            note, largest = self._exact(run, measured, rows, record)
            compared = baselines.assert_matches(measured, rows, command=self.command, note=note)
            if self.store.on_check is not None:
                self.store.on_check(experiment, run.key, self.device, len(compared), note, largest)
            return rows
        except baselines.BaselineMismatch as exc:
            message = f"{experiment} ({self.store.path(experiment)}), {self.device}: {exc}"
        pytest.fail(message, pytrace=False)

    def _exact(self, run: Run, measured: pd.DataFrame, rows: pd.DataFrame,
               record: baselines.SeedRecord | None) -> tuple[str | None, float | None]:
        """The exact step: ``(None, largest relative difference)`` where it applied and held, ``(why not,
        None)`` where it did not apply; raises ``baselines.SeedMismatch`` where it applied and failed."""
        note = baselines.why_not_exact(record, self.seed, environment(self.device))
        if note is not None:
            return note, None
        backward = exact_backward_rtol(run)
        result = baselines.compare_seed(measured, rows, backward_rtol=backward)
        if not result["moved"].any():
            return None, float(result["rel_diff"].max()) if len(result) else 0.0
        now = seed_record(run, self.seed, self.device)
        note = baselines.parameters_differ(record, now.params, now.inputs)
        if note is not None:
            return note, None
        band = baselines.compare(measured, rows, command=self.command)
        extra = None if record.params else ("this run has no parameter digest (it is not built from one "
                                            "generator): a changed init shows here too")
        raise baselines.SeedMismatch(result[result["moved"]], len(result), band, self.seed, command=self.command,
                                     note=extra)


def spread_of(rows: pd.DataFrame, layer: str, statistic: str) -> tuple[float, str]:
    """``(spread, scale)`` of one baseline row (the seed-to-seed std, of log(value) if scale is log)."""
    hit = rows[(rows["layer"] == layer) & (rows["statistic"] == statistic)]
    if len(hit) != 1:
        raise KeyError(f"no baseline row for layer {layer!r}, statistic {statistic!r}")
    return float(hit["spread"].iloc[0]), str(hit["scale"].iloc[0])


def theory_tolerance(rows: pd.DataFrame, layer: str, statistic: str, k: float = baselines.K) -> tuple[float, str]:
    """``(half-width, scale)`` of a theory band: ``k`` seed spreads of the stored baseline row plus the
    baselines' floor (2% relative, 0.01 absolute, for rows whose spread is ~0).

    The spread is the finite-width, finite-batch fluctuation of that statistic across ``BASELINE_SEEDS``,
    measured when the baseline was generated; ``k`` = baselines.K keeps the false-alarm rate of a
    Student-t with 7 degrees of freedom at ~3e-5 per number. For scale "log" the band is in log units.
    The band tests the measured value against theory, so it does not move when baselines are regenerated
    with a bug: only its width comes from them.
    """
    spread, scale = spread_of(rows, layer, statistic)
    return k * spread + (baselines.REL_FLOOR if scale == "log" else baselines.ABS_FLOOR), scale


def theory_misses(measured: pd.DataFrame, predicted: pd.DataFrame, rows: pd.DataFrame,
                  k: float = baselines.K) -> pd.DataFrame:
    """Rows of tidy ``measured`` (layer, statistic, value) outside the theory band around ``predicted``
    (same columns). Returns ``layer, statistic, measured, theory, low, high``; empty if all inside."""
    m = measured.merge(predicted, on=["layer", "statistic"], suffixes=("", "_theory"))
    if len(m) != len(predicted):
        missing = predicted.merge(measured, on=["layer", "statistic"], how="left", indicator=True)
        raise KeyError(f"theory predicts statistics that were not measured:\n"
                       f"{missing[missing['_merge'] == 'left_only'][['layer', 'statistic']].to_string(index=False)}")
    out = []
    for r in m.itertuples(index=False):
        tol, scale = theory_tolerance(rows, r.layer, r.statistic, k)
        if scale == "log" and r.value_theory > 0:
            low, high = r.value_theory * math.exp(-tol), r.value_theory * math.exp(tol)
        else:
            low, high = r.value_theory - tol, r.value_theory + tol
        if not low <= r.value <= high:
            out.append((r.layer, r.statistic, r.value, r.value_theory, low, high))
    return pd.DataFrame(out, columns=["layer", "statistic", "measured", "theory", "low", "high"])


def assert_theory(measured: pd.DataFrame, predicted: pd.DataFrame, rows: pd.DataFrame, what: str,
                  k: float = baselines.K) -> None:
    """AssertionError with the table of ``theory_misses`` if any measured statistic is outside its band."""
    bad = theory_misses(measured, predicted, rows, k)
    if len(bad):
        table = bad.to_string(index=False, float_format=lambda v: f"{v:.4g}")
        raise AssertionError(f"{what}: {len(bad)} of {len(predicted)} statistics outside the theory band "
                             f"(theory ± {k:g} seed spreads of the baseline + floor):\n{table}")
