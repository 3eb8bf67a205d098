"""What a probe should measure at initialization, predicted from formulas and mean-field theory.

Pure functions on numbers (numpy only, no torch): activations by name, one layer's forward/backward
variance ratios for a given weight variance (each strategy's own is declared in ``initcore.init``:
``init.promise``), Gaussian expectations by quadrature, the infinite-width (mean-field) recursion for
MLPs, and residual-stream growth. `initcore.diagnose` and `bench/` compare measured per-layer
statistics against these bands.

References: Glorot & Bengio 2010 (Xavier); He et al. 2015 (Kaiming); LeCun et al. 1998; Saxe et al.
2014 (orthogonal); Klambauer et al. 2017 (SELU); Poole et al. 2016 and Schoenholz et al. 2017 (mean
field q-recursion and chi).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np

__all__ = [
    "ACTIVATIONS",
    "SATURATION_THRESHOLD",
    "activation_derivative",
    "activation_fn",
    "backward_ratio",
    "chi",
    "forward_ratio",
    "gaussian_abs_above",
    "gaussian_abs_below",
    "gaussian_cast_fractions",
    "gaussian_expectation",
    "mlp_gradient_ratio",
    "mlp_mean_field",
    "normal_cdf",
    "preserving_gain",
    "residual_variance",
    "uniform_bound",
]

ArrayFn = Callable[[np.ndarray], np.ndarray]

# --------------------------------------------------------------------------------------------------
# Activations
# --------------------------------------------------------------------------------------------------

LEAKY_RELU_SLOPE = 0.01  # torch.nn.LeakyReLU default negative_slope
SELU_ALPHA = 1.6732632423543772848170429916717  # torch.nn.SELU, Klambauer et al. 2017
SELU_SCALE = 1.0507009873554804934193349852946
SATURATION_THRESHOLD = 0.9  # an activation a counts as saturated when |a| > 0.9

_erfc = np.frompyfunc(math.erfc, 1, 1)  # math.erfc is exact to a few ulp; numpy has no erf


def _as_float(x) -> np.ndarray:
    return np.asarray(x, dtype=np.float64)


def normal_cdf(x) -> np.ndarray:
    """Standard normal CDF, Φ(x) = erfc(-x/√2)/2 (erfc keeps the left tail accurate)."""
    return np.asarray(_erfc(-_as_float(x) / math.sqrt(2.0)), dtype=np.float64) * 0.5


def _normal_pdf(x: np.ndarray) -> np.ndarray:
    return np.exp(-0.5 * x * x) / math.sqrt(2.0 * math.pi)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))  # σ(x) = (1 + tanh(x/2))/2, no overflow


def _linear(x):
    return _as_float(x).copy()


def _tanh(x):
    return np.tanh(_as_float(x))


def _sigmoid_fn(x):
    return _sigmoid(_as_float(x))


def _relu(x):
    return np.maximum(_as_float(x), 0.0)


def _leaky_relu(x):
    x = _as_float(x)
    return np.where(x > 0, x, LEAKY_RELU_SLOPE * x)


def _gelu(x):
    x = _as_float(x)
    return x * normal_cdf(x)  # exact GELU x·Φ(x), torch's default (approximate='none')


def _silu(x):
    x = _as_float(x)
    return x * _sigmoid(x)


def _selu(x):
    x = _as_float(x)
    return SELU_SCALE * np.where(x > 0, x, SELU_ALPHA * np.expm1(np.minimum(x, 0.0)))


def _d_linear(x):
    return np.ones_like(_as_float(x))


def _d_tanh(x):
    return 1.0 - np.tanh(_as_float(x)) ** 2


def _d_sigmoid(x):
    s = _sigmoid(_as_float(x))
    return s * (1.0 - s)


def _d_relu(x):
    return (_as_float(x) > 0).astype(np.float64)  # torch's relu gradient is 0 at x = 0


def _d_leaky_relu(x):
    return np.where(_as_float(x) > 0, 1.0, LEAKY_RELU_SLOPE)


def _d_gelu(x):
    x = _as_float(x)
    return normal_cdf(x) + x * _normal_pdf(x)  # d/dx x·Φ(x) = Φ(x) + x·φ(x)


def _d_silu(x):
    x = _as_float(x)
    s = _sigmoid(x)
    return s * (1.0 + x * (1.0 - s))  # d/dx x·σ(x) = σ + x·σ·(1-σ)


def _d_selu(x):
    x = _as_float(x)
    return SELU_SCALE * np.where(x > 0, 1.0, SELU_ALPHA * np.exp(np.minimum(x, 0.0)))


# name -> (φ, φ')
_ACTIVATIONS: dict[str, tuple[ArrayFn, ArrayFn]] = {
    "linear": (_linear, _d_linear),
    "tanh": (_tanh, _d_tanh),
    "sigmoid": (_sigmoid_fn, _d_sigmoid),
    "relu": (_relu, _d_relu),
    "leaky_relu": (_leaky_relu, _d_leaky_relu),
    "gelu": (_gelu, _d_gelu),
    "silu": (_silu, _d_silu),
    "selu": (_selu, _d_selu),
}
ACTIVATIONS: tuple[str, ...] = tuple(_ACTIVATIONS)
_BOUNDED = ("tanh", "sigmoid")  # the activations for which saturated_frac is defined


def _lookup_activation(name: str) -> tuple[ArrayFn, ArrayFn]:
    try:
        return _ACTIVATIONS[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown activation {name!r}; valid: {', '.join(ACTIVATIONS)}") from None


def activation_fn(name: str) -> ArrayFn:
    """The activation φ as a vectorized numpy function, matching torch's default definition.

    >>> activation_fn("relu")([-1.0, 2.0]).tolist()
    [0.0, 2.0]
    """
    return _lookup_activation(name)[0]


def activation_derivative(name: str) -> ArrayFn:
    """The derivative φ' as a vectorized numpy function (at a kink, the value torch's autograd uses).

    >>> activation_derivative("tanh")([0.0]).tolist()
    [1.0]
    """
    return _lookup_activation(name)[1]


# --------------------------------------------------------------------------------------------------
# Initializer variances
# --------------------------------------------------------------------------------------------------

# What each init strategy promises (Var(w) per role and shape) is declared beside its rule, in
# initcore.init (``init.promise(name, role, fan_in, fan_out).variance``); this module takes variances as
# numbers and knows no strategy names.


def _check_fan(name: str, value) -> int:
    if isinstance(value, bool) or int(value) != value or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def uniform_bound(variance: float) -> float:
    """The bound a of U(-a, a) with the given variance: a = √(3·Var), since Var(U(-a, a)) = a²/3."""
    if not variance >= 0:
        raise ValueError(f"variance must be >= 0, got {variance!r}")
    return math.sqrt(3.0 * variance)


# --------------------------------------------------------------------------------------------------
# One linear layer
# --------------------------------------------------------------------------------------------------


def forward_ratio(fan_in: int, weight_variance: float) -> float:
    """Var(y)/E[x²] for y = W x with zero bias and i.i.d. zero-mean weights: fan_in·Var(w).

    For Xavier this is 2·fan_in/(fan_in+fan_out): 1 only for square layers (512→128 gives 1.6; the
    reference notebook's claim that Xavier keeps it ≈ 1 for every shape is wrong).
    """
    return _check_fan("fan_in", fan_in) * float(weight_variance)


def backward_ratio(fan_out: int, weight_variance: float) -> float:
    """Var(∂L/∂x)/Var(∂L/∂y) for y = W x: fan_out·Var(w).

    For Xavier this is 2·fan_out/(fan_in+fan_out): 1 only for square layers (512→128 gives 0.4).
    """
    return _check_fan("fan_out", fan_out) * float(weight_variance)


# --------------------------------------------------------------------------------------------------
# Gaussian expectations
# --------------------------------------------------------------------------------------------------

_Z_RANGE = 12.0  # P(|z| > 12) ≈ 3.6e-33: nothing of the Gaussian is lost outside ±12σ
_GL_CACHE: dict[int, tuple[np.ndarray, np.ndarray]] = {}


def _legendre(n: int) -> tuple[np.ndarray, np.ndarray]:
    if n not in _GL_CACHE:
        _GL_CACHE[n] = np.polynomial.legendre.leggauss(n)
    return _GL_CACHE[n]


def gaussian_expectation(
    f: ArrayFn,
    mean: float = 0.0,
    var: float = 1.0,
    *,
    n: int = 24,
    breakpoints: Sequence[float] = (),
) -> float:
    """E[f(h)] for h ~ N(mean, var), by composite Gauss–Legendre quadrature over mean ± 12σ.

    .. math:: E[f(h)] = \\int f(\\mu + \\sigma z)\\, \\frac{e^{-z^2/2}}{\\sqrt{2\\pi}}\\, dz

    Plain Gauss–Hermite converges slowly on kinks (relu at 0), so the range is cut into panels with
    ``n`` Legendre nodes each: unit panels in z, a cut at h = 0 (where every built-in activation has
    its kink) and at h = ±2^k (geometric panels resolve tanh/sigmoid even when σ is huge), plus the
    caller's ``breakpoints`` (in h) where f jumps or kinks elsewhere. Accurate to ~1e-12 relative for
    the built-in activations. ``f`` must be vectorized. ``var == 0`` returns f(mean).

    >>> round(gaussian_expectation(lambda h: h**2, 0.5, 2.0), 12)
    2.25
    """
    mean, var = float(mean), float(var)
    if not (math.isfinite(mean) and math.isfinite(var)) or var < 0:
        raise ValueError(f"need finite mean and var >= 0, got mean={mean!r}, var={var!r}")
    if var == 0:
        return float(np.asarray(f(np.asarray([mean])), dtype=np.float64)[0])
    sd = math.sqrt(var)
    lo, hi = mean - _Z_RANGE * sd, mean + _Z_RANGE * sd
    reach = max(abs(lo), abs(hi))
    geometric = 2.0 ** np.arange(-2, math.ceil(math.log2(reach)) + 1) if reach > 0.25 else []
    cuts_h = np.concatenate([[0.0], geometric, -np.asarray(geometric), list(breakpoints)])
    cuts_z = (cuts_h - mean) / sd
    cuts_z = cuts_z[(cuts_z > -_Z_RANGE) & (cuts_z < _Z_RANGE)]
    edges = np.unique(np.concatenate([np.arange(-_Z_RANGE, _Z_RANGE + 1.0), cuts_z]))
    a, b = edges[:-1, None], edges[1:, None]
    x, w = _legendre(n)
    z = 0.5 * (a + b) + 0.5 * (b - a) * x  # (panels, n)
    weights = 0.5 * (b - a) * w * _normal_pdf(z)
    values = np.asarray(f(mean + sd * z), dtype=np.float64)
    return float(np.sum(values * weights))


def preserving_gain(activation: str) -> float:
    """Gain g with g²·E[φ(z)²] = 1 for z ~ N(0, 1): Var(w) = g²/fan_in keeps a unit second moment.

    Relu gives √2 (He); linear and selu give 1. This is the fixed point at q = 1, not torch's
    ``calculate_gain`` (tanh: this gives ≈ 1.59, torch says 5/3).
    """
    phi = activation_fn(activation)
    return 1.0 / math.sqrt(gaussian_expectation(lambda h: phi(h) ** 2))


def chi(activation: str, weight_variance_times_fan_in: float, q: float, bias: float = 0.0) -> float:
    """Backward mean-field factor χ = σw²·E[φ'(h)²], h ~ N(bias, q) (Schoenholz et al. 2017).

    Per equal-width layer the gradient's second moment wrt the pre-activations gets multiplied by χ
    going towards the input: χ < 1 vanishing (ordered), χ > 1 exploding (chaotic), χ = 1 critical
    (relu with σw² = 2).
    """
    dphi = activation_derivative(activation)
    return float(weight_variance_times_fan_in) * gaussian_expectation(lambda h: dphi(h) ** 2, bias, q)


# --------------------------------------------------------------------------------------------------
# Mean-field MLP
# --------------------------------------------------------------------------------------------------


_Q_MAX = 1e300  # above this, φ(h)² at h = 12·√q would overflow float64


def _per_layer(sigma_w2, depth: int) -> np.ndarray:
    if isinstance(depth, bool) or int(depth) != depth or depth < 1:
        raise ValueError(f"depth must be a positive integer, got {depth!r}")
    values = np.asarray(sigma_w2, dtype=np.float64)
    if values.ndim == 0:
        values = np.full(int(depth), float(values))
    elif values.shape != (depth,):
        raise ValueError(
            f"weight_variance_times_fan_in must be a scalar or have length depth={depth}, got shape {values.shape}"
        )
    if not np.all(np.isfinite(values) & (values >= 0)):
        raise ValueError("weight_variance_times_fan_in must be finite and >= 0")
    return values


def _saturated_frac(activation: str, bias: float, q: float) -> float:
    """P(|φ(h)| > 0.9), h ~ N(bias, q), in closed form; 0 for unbounded activations."""
    if activation == "tanh":
        t = math.atanh(SATURATION_THRESHOLD)  # |tanh h| > 0.9  ⇔  |h| > atanh 0.9
        lo_t, hi_t = -t, t
    elif activation == "sigmoid":  # σ(h) ∈ (0, 1): |σ(h)| > 0.9 ⇔ h > logit(0.9) = ln 9
        lo_t, hi_t = -math.inf, math.log(SATURATION_THRESHOLD / (1.0 - SATURATION_THRESHOLD))
    else:
        return 0.0
    if q == 0:
        return float(bias < lo_t or bias > hi_t)
    sd = math.sqrt(q)
    below = float(normal_cdf((lo_t - bias) / sd)) if math.isfinite(lo_t) else 0.0
    return below + float(normal_cdf((bias - hi_t) / sd))


def _dead_frac(activation: str, bias: float, q: float) -> float:
    """P(φ(h) == 0): P(h ≤ 0) = Φ(-bias/√q) for relu, 0 for the rest."""
    if activation != "relu":
        return 0.0
    if q == 0:
        return float(bias <= 0)
    return float(normal_cdf(-bias / math.sqrt(q)))


def mlp_mean_field(
    activation: str,
    depth: int,
    weight_variance_times_fan_in: float | Sequence[float],
    bias: float = 0.0,
    input_second_moment: float = 1.0,
) -> dict[str, np.ndarray]:
    """Infinite-width per-layer statistics of an MLP of ``depth`` Linear layers at initialization.

    The activation follows every Linear but the last; weights are i.i.d. zero-mean with
    Var(w) = σw²/fan_in (σw² = ``weight_variance_times_fan_in``, scalar or one per layer), the bias is
    the constant ``bias`` = b. The pre-activation h_l of layer l is N(b, q_l) with (Poole et al. 2016)

    .. math:: q_0 = σ_{w,0}^2 E[x^2], \\qquad q_{l+1} = σ_{w,l+1}^2 E[φ(h_l)^2],\\ h_l \\sim N(b, q_l)

    Returns arrays of length ``depth``, one entry per Linear layer:

    - ``preact_var`` q_l and ``preact_std`` √q_l (the mean of h_l is b);
    - ``act_mean``, ``act_std``: mean and std of φ(h_l); for the last layer the "activation" is the
      linear output itself (b and √q);
    - ``dead_frac``: P(φ(h_l) = 0), i.e. P(h_l ≤ 0) for relu, 0 otherwise;
    - ``saturated_frac``: P(|φ(h_l)| > 0.9) for tanh and sigmoid (for sigmoid only the upper end,
      φ > 0.9, since φ > 0), 0 for the other activations.

    The last layer has ``dead_frac`` = ``saturated_frac`` = 0. Once q_l passes 1e300 (an exploding
    network) ``preact_var``/``preact_std`` are inf from that layer on and the other statistics nan.

    >>> mlp_mean_field("relu", 3, 2.0)["preact_var"].round(12).tolist()
    [2.0, 2.0, 2.0]
    """
    phi = activation_fn(activation)
    sigma_w2 = _per_layer(weight_variance_times_fan_in, depth)
    bias, m2 = float(bias), float(input_second_moment)
    if not math.isfinite(bias):
        raise ValueError(f"bias must be finite, got {bias!r}")
    if not m2 >= 0:
        raise ValueError(f"input_second_moment must be >= 0, got {input_second_moment!r}")

    out = {
        k: np.zeros(len(sigma_w2))
        for k in ("preact_var", "preact_std", "act_mean", "act_std", "dead_frac", "saturated_frac")
    }
    q = float(sigma_w2[0]) * m2
    last = len(sigma_w2) - 1
    for layer in range(len(sigma_w2)):
        if not q <= _Q_MAX:  # exploded beyond what float64 moments can hold: inf from here on
            out["preact_var"][layer:] = out["preact_std"][layer:] = np.inf
            for key in ("act_mean", "act_std", "dead_frac", "saturated_frac"):
                out[key][layer:] = np.nan
            break
        out["preact_var"][layer] = q
        out["preact_std"][layer] = math.sqrt(q)
        if layer == last:
            out["act_mean"][layer], out["act_std"][layer] = bias, math.sqrt(q)
            break
        mean_act = gaussian_expectation(phi, bias, q)
        second = gaussian_expectation(lambda h: phi(h) ** 2, bias, q)
        out["act_mean"][layer] = mean_act
        out["act_std"][layer] = math.sqrt(max(second - mean_act**2, 0.0))
        out["dead_frac"][layer] = _dead_frac(activation, bias, q)
        out["saturated_frac"][layer] = _saturated_frac(activation, bias, q)
        q = float(sigma_w2[layer + 1]) * second  # Python floats overflow to inf without a warning
    return out


def mlp_gradient_ratio(
    activation: str,
    depth: int,
    weight_variance_times_fan_in: float | Sequence[float],
    bias: float = 0.0,
    input_second_moment: float = 1.0,
) -> dict[str, np.ndarray]:
    """Backward mean field of the MLP in :func:`mlp_mean_field`, for equal hidden widths.

    With g_l = ∂L/∂h_l and the usual gradient-independence assumption (backward weights treated
    as independent of the forward pass), E[g_l²] = χ_l·E[g_{l+1}²] with
    χ_l = σ_{w,l+1}²·E[φ'(h_l)²] (see :func:`chi`). Returns arrays of length ``depth`` in units of the
    std of the gradient wrt the network output (so the last ``preact_grad_std`` is 1):

    - ``preact_grad_std``: std of ∂L/∂h_l, √(Π_{k≥l} χ_k);
    - ``weight_grad_std``: std of one example's ∂L/∂W_l = g_l·x_lᵀ, i.e. std(g_l)·√E[x_l²] where x_l is
      the layer's input (x_0 the network input, x_l = φ(h_{l-1})).

    Entries are nan at and below a layer where the forward pass exploded (see :func:`mlp_mean_field`).

    >>> mlp_gradient_ratio("relu", 3, 2.0)["preact_grad_std"].round(12).tolist()
    [1.0, 1.0, 1.0]
    """
    dphi = activation_derivative(activation)
    sigma_w2 = _per_layer(weight_variance_times_fan_in, depth)
    forward = mlp_mean_field(activation, depth, sigma_w2, bias, input_second_moment)
    q = forward["preact_var"]
    depth = len(sigma_w2)
    grad_ms = np.ones(depth)
    phi = activation_fn(activation)

    def moment(f: ArrayFn, layer: int) -> float:  # nan where the forward pass exploded (q = inf)
        return gaussian_expectation(lambda h: f(h) ** 2, bias, q[layer]) if np.isfinite(q[layer]) else np.nan

    for layer in range(depth - 2, -1, -1):
        grad_ms[layer] = sigma_w2[layer + 1] * moment(dphi, layer) * grad_ms[layer + 1]
    # E[x_l²]: the network input for layer 0, else E[φ(h_{l-1})²].
    input_ms = np.array([float(input_second_moment)] + [moment(phi, layer) for layer in range(depth - 1)])
    return {
        "preact_grad_std": np.sqrt(grad_ms),
        "weight_grad_std": np.sqrt(grad_ms * input_ms),
    }


# --------------------------------------------------------------------------------------------------
# Residual stream
# --------------------------------------------------------------------------------------------------


def residual_variance(
    n_blocks: int, branch_variance: float | Sequence[float], input_variance: float = 1.0
) -> np.ndarray:
    """Variance of a pre-norm residual stream after each of ``n_blocks`` blocks.

    In a pre-norm block x ← x + F(norm(x)) the branch sees a normalized input, so its output variance
    v does not depend on the stream, and at init it is uncorrelated with it; variances add:

    .. math:: \\mathrm{Var}_L = \\mathrm{Var}_0 + \\sum_{l=1}^{L} v_l \\quad (= \\mathrm{Var}_0 + L v)

    Returns an array of length ``n_blocks`` (index l = after block l+1). ``branch_variance`` is one v for
    all blocks or one per block. Constant v grows the stream linearly in depth, which is why GPT-2
    scales residual projections by 1/√(2·n_layer).

    >>> residual_variance(3, 0.5).tolist()
    [1.5, 2.0, 2.5]
    """
    if isinstance(n_blocks, bool) or int(n_blocks) != n_blocks or n_blocks < 0:
        raise ValueError(f"n_blocks must be an integer >= 0, got {n_blocks!r}")
    v = np.asarray(branch_variance, dtype=np.float64)
    if v.ndim == 0:
        v = np.full(int(n_blocks), float(v))
    elif v.shape != (n_blocks,):
        raise ValueError(f"branch_variance must be a scalar or have length n_blocks={n_blocks}, got shape {v.shape}")
    if np.any(v < 0) or not input_variance >= 0:
        raise ValueError("variances must be >= 0")
    return float(input_variance) + np.cumsum(v)


# --------------------------------------------------------------------------------------------------
# Precision: what a cast to a narrow format loses of a Gaussian tensor (initcore.probe.precision)
# --------------------------------------------------------------------------------------------------


def gaussian_abs_above(t, sigma, mean=0.0) -> np.ndarray:
    """P(|X| > t) for X ~ N(mean, sigma²): Φ((-t - mean)/σ) + Φ((mean - t)/σ); erfc(t / (σ√2)) at mean 0.

    >>> round(float(gaussian_abs_above(1.0, 1.0)), 6)
    0.317311
    """
    t, sigma, mean = _as_float(t), _as_float(sigma), _as_float(mean)
    if np.any(sigma <= 0):
        raise ValueError(f"sigma must be > 0, got {sigma}")
    return normal_cdf((-t - mean) / sigma) + normal_cdf((mean - t) / sigma)


def gaussian_abs_below(t, sigma, mean=0.0) -> np.ndarray:
    """P(|X| < t) for X ~ N(mean, sigma²): erf(t / (σ√2)) at mean 0, the fraction a cast flushes below t.

    >>> round(float(gaussian_abs_below(1.0, 1.0)), 6)
    0.682689
    """
    return 1.0 - gaussian_abs_above(t, sigma, mean)


def gaussian_cast_fractions(sigma, mean, flush: float, normal: float, overflow: float) -> dict[str, np.ndarray]:
    """Fractions of a N(mean, sigma²) tensor that a cast flushes to zero (|x| < flush), makes subnormal
    (flush <= |x| < normal) and overflows (|x| > overflow), for a format's rounding boundaries (a
    tensor scaled by s: its sigma and mean times s). A measured tensor far from these is not Gaussian:
    a heavy tail overflows more, a spike at zero flushes more.
    """
    below_flush = gaussian_abs_below(flush, sigma, mean)
    return {"flushed": below_flush, "subnormal": gaussian_abs_below(normal, sigma, mean) - below_flush,
            "overflow": gaussian_abs_above(overflow, sigma, mean)}
