r"""What an init strategy promises for each weight: the distribution its entries are drawn from.

One source of truth. Every registered strategy declares, beside its rule, a function
``targets(site) -> Target`` (``register(name, ..., targets=fn)`` in ``initcore.init.strategies``): for
one matrix, described by a ``Site`` (its role, fans, the model's depth and widths, its block, its q/k/v
part, how many matrices its parameter packs, the gain and the strategy's options), the family and the
scale of the entries the rule draws. Biases, norm weights and gates take the registry's defaults
(``DEFAULT_TARGETS``: 0, 1, 0) unless the strategy treats the role apart.

Everything that needs a strategy's promise reads it through ``initcore.init.promise(name, role, fan_in,
fan_out, ...)`` (a ``Target``; ``.variance`` is Var(w)): the mean-field predictions of
``probe.mlp_theory``, the runs of ``initcore.experiments`` (``run.promised(role)``), the bench's depth
and attention theory, the report. ``initcore.theory`` stays free of torch and of strategy names: it
takes variances as numbers. The registry-wide test (tests/init/test_targets.py) draws every strategy x
every role it touches x square and non-square shapes and checks the weights against these declarations
(Kolmogorov-Smirnov and variance), so a strategy registered later is checked without anyone listing it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType

import numpy as np

from initcore import theory

FAMILIES = ("normal", "uniform", "trunc_normal", "orthogonal", "constant")


@dataclass(frozen=True)
class Site:
    """One matrix as a strategy sees it: the facts its promised distribution may depend on."""

    role: str  # see initcore.models.ROLES
    fan_in: int  # columns of the (fan_out, fan_in) matrix; an embedding's is the vocabulary
    fan_out: int
    n_layers: int = 1  # residual blocks of a transformer, Linear layers of an MLP (the rules' ctx.n_layers)
    block: int | None = None  # 0-based index of the residual block that owns it
    d_model: int | None = None  # residual width (None for a model without one, e.g. an MLP)
    d_ff: int | None = None  # feed-forward width
    part: str = ""  # "q", "k" or "v" of a qkv matrix, where its module names it
    chunks: int = 1  # matrices packed along dim 0 of its parameter (3 for nn.MultiheadAttention's in_proj)
    gain: float | None = None  # None: the strategy's own default
    options: Mapping[str, object] = field(default_factory=lambda: MappingProxyType({}))


@dataclass(frozen=True)
class Target:
    r"""The distribution of every entry of one matrix.

    ``scale`` is the family's parameter: the std of a normal (before truncation for ``trunc_normal``,
    which is cut at ±``n_sigma``·scale), the bound a of U(-a, a), the gain of a (semi-)orthogonal matrix
    whose unit rows or columns have ``n`` = max(fan_in, fan_out) entries, the value of a constant.
    """

    family: str
    scale: float
    n: int = 0  # orthogonal only
    n_sigma: float = 3.0  # trunc_normal only

    def __post_init__(self) -> None:
        if self.family not in FAMILIES:
            raise ValueError(f"unknown family {self.family!r}; valid: {', '.join(FAMILIES)}")
        if not math.isfinite(self.scale) or (self.family != "constant" and self.scale < 0):
            raise ValueError(f"a {self.family} target needs a finite scale >= 0, got {self.scale!r}")

    @property
    def mean(self) -> float:
        return self.scale if self.family == "constant" else 0.0

    @property
    def variance(self) -> float:
        r"""Var(w): σ² (normal), a²/3 (uniform), σ²·c(n_sigma) (truncated normal, c < 1), g²/n (orthogonal:
        n squares of a unit vector sum to 1), 0 (constant)."""
        s2 = self.scale**2
        if self.family == "normal":
            return s2
        if self.family == "uniform":
            return s2 / 3.0
        if self.family == "trunc_normal":
            return s2 * truncated_variance_factor(self.n_sigma)
        if self.family == "orthogonal":
            return s2 / self.n
        return 0.0

    @property
    def std(self) -> float:
        return math.sqrt(self.variance)

    def times(self, factor: float) -> Target:
        """The same family with every entry multiplied by ``factor`` >= 0."""
        if self.family == "constant":
            return replace(self, scale=self.scale * factor)
        return replace(self, scale=self.scale * abs(factor))

    def cdf(self, x) -> np.ndarray:
        """P(w <= x) for each x (numpy), for a Kolmogorov-Smirnov test of drawn weights."""
        x = np.asarray(x, dtype=np.float64)
        s = self.scale
        if self.family == "constant" or s == 0:
            return (x >= self.mean).astype(np.float64)
        if self.family == "normal":
            return theory.normal_cdf(x / s)
        if self.family == "uniform":
            return np.clip((x + s) / (2 * s), 0.0, 1.0)
        if self.family == "trunc_normal":
            lo = float(theory.normal_cdf(-self.n_sigma))
            z = np.clip(x / s, -self.n_sigma, self.n_sigma)
            return (theory.normal_cdf(z) - lo) / (1.0 - 2.0 * lo)
        return _unit_coordinate_cdf(x / s, self.n)

    def __str__(self) -> str:
        s = f"{self.scale:.4g}"
        return {"normal": f"N(0, {s}^2)", "uniform": f"U(-{s}, {s})",
                "trunc_normal": f"N(0, {s}^2) cut at ±{self.n_sigma:g} std",
                "orthogonal": f"orthogonal x {s} (n={self.n})", "constant": s}[self.family]


def truncated_variance_factor(n_sigma: float) -> float:
    """Var of N(0, 1) truncated at ±n_sigma: 1 - 2 n φ(n) / (2 Φ(n) - 1) (0.9733 at 3)."""
    mass = math.erf(n_sigma / math.sqrt(2))
    return 1.0 - 2.0 * n_sigma * math.exp(-0.5 * n_sigma**2) / math.sqrt(2 * math.pi) / mass


def _unit_coordinate_cdf(u: np.ndarray, n: int) -> np.ndarray:
    """CDF of one coordinate of a uniformly random unit vector in R^n: density ∝ (1 - u²)^((n-3)/2) on [-1, 1].

    The rows (or columns) of a Haar-random semi-orthogonal matrix are such vectors. Integrated on a grid
    fine enough (8193 points, Simpson) that its error is far below any KS distance a test can resolve.
    """
    if n < 2:
        return (u >= 0).astype(np.float64) * 0.5 + (u >= 1).astype(np.float64) * 0.5  # ±1 each half
    grid = np.linspace(-1.0, 1.0, 8193)
    log_c = math.lgamma(n / 2) - math.lgamma((n - 1) / 2) - 0.5 * math.log(math.pi)
    with np.errstate(divide="ignore"):
        density = np.exp(log_c + (n - 3) / 2 * np.log1p(-grid**2)) if n != 3 else np.full_like(grid, math.exp(log_c))
    density[~np.isfinite(density)] = 0.0  # n = 2: an integrable 1/sqrt(1-u²) at the ends
    steps = (density[1:] + density[:-1]) / 2 * np.diff(grid)
    cumulative = np.concatenate([[0.0], np.cumsum(steps)])
    cumulative /= cumulative[-1]
    return np.interp(u, grid, cumulative, left=0.0, right=1.0)


# --- the families, in the words of the papers and of torch.nn.init ------------------------------------------


def normal(std: float) -> Target:
    return Target("normal", float(std))


def uniform(bound: float) -> Target:
    return Target("uniform", float(bound))


def trunc_normal(std: float, n_sigma: float = 3.0) -> Target:
    return Target("trunc_normal", float(std), n_sigma=float(n_sigma))


def constant(value: float) -> Target:
    return Target("constant", float(value))


def orthogonal(gain: float, fan_in: int, fan_out: int) -> Target:
    """A (semi-)orthogonal (fan_out, fan_in) matrix times ``gain``: Var = gain²/max(fan_in, fan_out)."""
    return Target("orthogonal", float(gain), n=max(fan_in, fan_out))


def xavier_uniform(fan_in: int, fan_out: int, gain: float = 1.0) -> Target:
    """U(-a, a), a = gain·sqrt(6/(fan_in + fan_out)) (Glorot & Bengio, 2010): Var = gain²·2/(fan_in + fan_out)."""
    return uniform(gain * math.sqrt(6.0 / (fan_in + fan_out)))


def xavier_normal(fan_in: int, fan_out: int, gain: float = 1.0) -> Target:
    return normal(gain * math.sqrt(2.0 / (fan_in + fan_out)))


def fan_in_uniform(fan_in: int, gain: float) -> Target:
    """U(-a, a), a = gain·sqrt(3/fan_in): Var = gain²/fan_in (He et al., 2015, fan_in mode)."""
    return uniform(gain * math.sqrt(3.0 / fan_in))


def fan_in_normal(fan_in: int, gain: float) -> Target:
    """N(0, gain²/fan_in): He (gain sqrt(2)) and LeCun (gain 1), fan_in mode."""
    return normal(gain / math.sqrt(fan_in))


# --- torch's per-module defaults ---------------------------------------------------------------------------

_NORMS = ("LayerNorm", "GroupNorm", "RMSNorm", "BatchNorm1d", "BatchNorm2d", "BatchNorm3d", "InstanceNorm1d",
          "InstanceNorm2d", "InstanceNorm3d", "SyncBatchNorm", "LocalResponseNorm")
_FAN_IN_UNIFORM = ("Linear", "NonDynamicallyQuantizableLinear", "LazyLinear", "Conv1d", "Conv2d", "Conv3d",
                   "ConvTranspose1d", "ConvTranspose2d", "ConvTranspose3d", "Identity")
_RNNS = ("RNN", "LSTM", "GRU", "RNNCell", "LSTMCell", "GRUCell")


def _stored_fans(shape: tuple[int, ...]) -> tuple[int, int]:
    """torch.nn.init's (fan_in, fan_out) of a stored tensor: size(1) and size(0) times the receptive field."""
    field_size = math.prod(shape[2:]) if len(shape) > 2 else 1
    return shape[1] * field_size, shape[0] * field_size


def module_default(module: str, attr: str, shape: tuple[int, ...], weight_fan_in: int,
                   hidden_size: int = 0) -> Target | None:
    """What a torch module's own ``reset_parameters`` draws for its parameter ``attr`` (torch 2.x), by the
    module's type name; None for a module torch does not define (Hugging Face's Conv1D, a bare parameter).

    Linear, Conv and their biases: ``kaiming_uniform_(a=sqrt(5))``, U(+-1/sqrt(fan_in)) (``weight_fan_in``: the
    weight's, for a bias too); Bilinear U(+-1/sqrt(in1)); Embedding N(0, 1); norms 1 and 0;
    nn.MultiheadAttention Xavier uniform over its packed (3E, E) in_proj, 0 for its biases and its out_proj's;
    RNNs U(+-1/sqrt(hidden_size)) everywhere."""
    if module == "NonDynamicallyQuantizableLinear" and attr == "bias":
        return constant(0.0)  # nn.MultiheadAttention's out_proj: it zeroes the bias its Linear drew
    if module in _FAN_IN_UNIFORM and attr in ("weight", "bias"):
        return uniform(1.0 / math.sqrt(weight_fan_in))
    if module == "Bilinear" and attr in ("weight", "bias"):
        return uniform(1.0 / math.sqrt(shape[1] if attr == "weight" else weight_fan_in))
    if module in ("Embedding", "EmbeddingBag") and attr == "weight":
        return normal(1.0)
    if module in _NORMS:
        return constant(1.0 if attr == "weight" else 0.0)
    if module == "MultiheadAttention":
        if attr in ("in_proj_weight", "q_proj_weight", "k_proj_weight", "v_proj_weight"):
            return xavier_uniform(shape[1], shape[0])  # over the packed (3E, E): Var 1/(2E)
        if attr in ("bias_k", "bias_v"):
            return xavier_normal(*_stored_fans(shape))
        if attr == "in_proj_bias":
            return constant(0.0)
    if module in _RNNS:
        return uniform(1.0 / math.sqrt(hidden_size or shape[-1]))
    return None


DEFAULT_TARGETS: Mapping[str, Target] = MappingProxyType({
    "bias": constant(0.0), "norm": constant(1.0), "gate": constant(0.0)})


__all__ = ["DEFAULT_TARGETS", "FAMILIES", "Site", "Target", "constant", "fan_in_normal", "fan_in_uniform",
           "module_default",
           "normal", "orthogonal", "trunc_normal", "truncated_variance_factor", "uniform", "xavier_normal",
           "xavier_uniform"]
