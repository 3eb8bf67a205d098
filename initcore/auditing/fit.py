r"""Which distribution a parameter's entries were drawn from: pure statistics on a sample (numpy only).

A parameter is described by a sorted sample of its entries (all of them up to ``SAMPLE_MAX``) and, for a
matrix, the Gram matrix of a few of its rows or columns (:class:`Evidence`). From these:

- :func:`fit` names the family: ``zeros``, ``ones``, ``constant``, ``normal``, ``trunc_normal`` (with its cut
  in sigmas), ``uniform`` (with its bound), ``orthogonal`` (with its gain), ``nonfinite`` or ``none``;
- :func:`match` says whether the sample is consistent with one fully specified ``Target``
  (``initcore.init.targets``), by three tests, each with its false-alarm rate:

  * scale: the sample's std against the target's, in standard errors. The relative standard error of a
    std from m draws is sqrt((kappa - 1)/(4 m)) (delta method; kappa the family's kurtosis: 3 normal,
    1.8 uniform); ``Z_SCALE`` = 5.5 of them is a two-sided rate of 3.8e-8;
  * shape: Kolmogorov-Smirnov against the target's CDF, whose parameters are given, not fitted, so
    Kolmogorov's distribution holds: rate ``ALPHA`` = 1e-6;
  * tails: no entry beyond a bounded family's bound, and, for a normal target, a largest |entry| so small
    that m normal draws fall below it with probability < ``ALPHA`` (what tells N(0, s) from its
    truncation).

  A parameter of the right rule is called a mismatch with probability below 1.1e-6 per rule, so 20 seeds
  of a few hundred parameters raise no false flag (P < 1%); a std 5% off is caught from 65 536 entries on
  (5.5 standard errors of a normal's std there are 1.5%).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

SAMPLE_MAX = 1 << 16  # entries sampled from a larger parameter (uniformly, with replacement)
Z_SCALE = 5.5  # standard errors a std may lie from its target's (two-sided rate 3.8e-8)
ALPHA = 1e-6  # false-alarm rate of the shape and tail tests, and of "no family explains it"
ALPHA_BOUNDED = 5e-3  # the fitted family is bounded when m normal draws stay this improbably small
ORTHO_TOL = 1e-3  # |G - g^2 I| / g^2 of an orthogonal matrix's Gram (float32 QR: ~1e-6; Gaussian rows: ~4/sqrt(n))
REL_FLOOR = 1e-4  # relative scale error from float32 rounding of drawn entries, far below any statistical one
CONSTANTS = {0.0: "zeros", 1.0: "ones"}
MIN_CUT = 1.0  # a cut below 1 sigma leaves a density within 1 - exp(-1/2) = 39% of flat: named uniform
DECISIVE = 4096  # a fitted family decides between rules from this many entries on (see core._rules_matched)

_SQRT2 = math.sqrt(2.0)


def erf(x: np.ndarray) -> np.ndarray:
    """erf, vectorized: Abramowitz & Stegun 7.1.26, absolute error below 1.5e-7 (far below a KS distance
    resolvable from 2^16 draws, 1/256)."""
    x = np.asarray(x, dtype=np.float64)
    s, a = np.sign(x), np.abs(x)
    t = 1.0 / (1.0 + 0.3275911 * a)
    poly = t * (0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429))))
    return s * (1.0 - poly * np.exp(-a * a))


def normal_cdf(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + erf(np.asarray(x, dtype=np.float64) / _SQRT2))


def _log_within(c: float, m: int) -> float:
    """log P(max |Z_i| <= c) for m standard normal draws: m log(erf(c/sqrt 2)), accurate in the far tail."""
    if c <= 0:
        return -math.inf
    return m * math.log1p(-math.erfc(c / _SQRT2))


def kolmogorov_sf(lam: float) -> float:
    """P(sqrt(m) D > lam) for large m: 2 sum (-1)^(k-1) exp(-2 k^2 lam^2) (Kolmogorov, 1933)."""
    if lam < 0.2:
        return 1.0
    total = 0.0
    for k in range(1, 101):
        term = math.exp(-2.0 * k * k * lam * lam)
        total += term if k % 2 else -term
        if term < 1e-17:
            break
    return float(min(1.0, max(0.0, 2.0 * total)))


def ks_pvalue(distance: float, m: int) -> float:
    """Kolmogorov's p-value of a KS distance from m draws, with Stephens' (1970) finite-m correction."""
    root = math.sqrt(m)
    return kolmogorov_sf(distance * (root + 0.12 + 0.11 / root))


def ks_distance(sorted_x: np.ndarray, cdf: np.ndarray) -> float:
    """sup |F_m - F| given the sample sorted and F evaluated at it."""
    m = len(sorted_x)
    upper = np.arange(1, m + 1) / m - cdf
    lower = cdf - np.arange(0, m) / m
    return float(max(upper.max(), lower.max()))


def trunc_variance_factor(c: float) -> float:
    """Var of N(0, 1) cut at +-c: 1 - 2 c phi(c) / (2 Phi(c) - 1)."""
    mass = math.erf(c / _SQRT2)
    return 1.0 - 2.0 * c * math.exp(-0.5 * c * c) / math.sqrt(2 * math.pi) / mass


def trunc_kurtosis(c: float) -> float:
    """Kurtosis of N(0, 1) cut at +-c: E z^4 / (E z^2)^2, E z^4 = (3 (Z - 2 c phi) - 2 c^3 phi) / Z."""
    z = math.erf(c / _SQRT2)
    phi = math.exp(-0.5 * c * c) / math.sqrt(2 * math.pi)
    m2 = (z - 2 * c * phi) / z
    m4 = (3 * (z - 2 * c * phi) - 2 * c**3 * phi) / z
    return m4 / m2**2


def _peak_of_cut(c: float) -> float:
    """max |z| / std of a normal cut at +-c sigma: c / sqrt(Var factor); sqrt(3) as c -> 0 (uniform)."""
    return c / math.sqrt(trunc_variance_factor(c))


def cut_from_peak(peak: float) -> float:
    """The cut c (in sigmas of the uncut normal) whose c / sqrt(factor(c)) is ``peak`` (bisection)."""
    lo, hi = 1e-3, 40.0
    if peak <= _peak_of_cut(lo):
        return lo
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if _peak_of_cut(mid) < peak else (lo, mid)
    return 0.5 * (lo + hi)


KURTOSIS = {"normal": 3.0, "uniform": 1.8}


def kurtosis(family: str, n_sigma: float = 3.0) -> float:
    return trunc_kurtosis(n_sigma) if family == "trunc_normal" else KURTOSIS.get(family, 3.0)


def scale_stderr(family: str, m: int, n_sigma: float = 3.0) -> float:
    """Relative standard error of a std estimated from m draws of ``family``: sqrt((kappa - 1) / (4 m))."""
    return math.sqrt(max(kurtosis(family, n_sigma) - 1.0, 0.0) / (4.0 * max(m, 1)))


@dataclass(frozen=True)
class Evidence:
    """What the audit read of one parameter: a sorted sample, and for a matrix its orthogonality."""

    sample: np.ndarray  # float64, sorted, finite entries only
    n: int  # entries of the parameter
    nonfinite: int  # NaN or Inf entries found (in the whole tensor)
    gram_error: float | None = None  # max |G - g^2 I| / g^2 over sampled rows (or columns); None: not a matrix
    gram_gain: float | None = None  # g: the mean norm of those rows (or columns)

    @property
    def m(self) -> int:
        return len(self.sample)


@dataclass(frozen=True)
class Fit:
    """The family that best explains a parameter, with its scale and the goodness of that fit."""

    family: str  # zeros, ones, constant, normal, trunc_normal, uniform, orthogonal, nonfinite, none
    scale: float  # std (normal), bound (uniform), std before the cut (trunc_normal), gain (orthogonal), value
    n_sigma: float  # trunc_normal's cut in sigmas; nan otherwise
    mean: float
    std: float  # of the sample, about its mean
    peak: float  # max |x| / std of the sample
    ks: float  # KS distance to the fitted family (nan for constants and orthogonal)
    p_value: float  # Kolmogorov's p of that distance (conservative: the parameters were fitted)
    m: int

    def describe(self) -> str:
        s = f"{self.scale:.4g}"
        return {"normal": f"N(0, {s}^2)", "uniform": f"U(±{s})", "orthogonal": f"orthogonal x {s}",
                "trunc_normal": f"N(0, {s}^2) cut at ±{self.n_sigma:.2g}σ", "zeros": "0", "ones": "1",
                "constant": f"= {s}", "nonfinite": "NaN/Inf",
                "none": f"no family (mean {self.mean:.3g}, std {self.std:.3g})"}[self.family]


def _cdf(family: str, x: np.ndarray, scale: float, n_sigma: float = math.nan, mean: float = 0.0) -> np.ndarray:
    z = (x - mean) / scale
    if family == "normal":
        return normal_cdf(z)
    if family == "uniform":
        return np.clip((z + 1.0) / 2.0, 0.0, 1.0)
    if family == "trunc_normal":
        lo = 0.5 * math.erfc(n_sigma / _SQRT2)
        return (normal_cdf(np.clip(z, -n_sigma, n_sigma)) - lo) / (1.0 - 2.0 * lo)
    raise ValueError(f"no CDF for family {family!r}")


def fit(ev: Evidence) -> Fit:
    """The family that explains ``ev`` best (see the module docstring); ``none`` when no family passes KS at
    ``ALPHA``, ``nonfinite`` when any entry is NaN or Inf."""
    x, m = ev.sample, ev.m
    nan = math.nan
    if ev.nonfinite or m == 0:
        return Fit("nonfinite", nan, nan, nan, nan, nan, nan, 0.0, m)
    lo, hi = float(x[0]), float(x[-1])
    if lo == hi:
        return Fit(CONSTANTS.get(lo, "constant"), lo, nan, lo, 0.0, nan, nan, 1.0, m)
    mean, std = float(x.mean()), float(x.std())
    if ev.gram_error is not None and ev.gram_error < ORTHO_TOL:
        return Fit("orthogonal", float(ev.gram_gain), nan, mean, std, nan, nan, 1.0, m)
    centred = max(abs(lo - mean), abs(hi - mean))
    peak = centred / std if std > 0 else math.inf
    candidates = [("normal", std, nan)]
    if _log_within(peak, m) < math.log(ALPHA_BOUNDED):  # too narrow for m normal draws: a bounded family
        cut = cut_from_peak(peak)
        candidates = [("uniform", math.sqrt(3.0) * std, nan)]
        if cut >= MIN_CUT:  # a normal cut closer in is a uniform to within what a sample resolves
            candidates.append(("trunc_normal", std / math.sqrt(trunc_variance_factor(cut)), cut))
    best = None
    for family, scale, cut in candidates:
        d = ks_distance(x, _cdf(family, x, scale, cut, mean))
        if best is None or d < best[3]:
            best = (family, scale, cut, d)
    family, scale, cut, d = best
    p = ks_pvalue(d, m)
    if p < ALPHA:
        family = "none"
    return Fit(family, scale, cut, mean, std, peak, d, p, m)


@dataclass(frozen=True)
class Verdict:
    """One sample against one target: consistent or not, and by how much (``z``: scale error in stderrs)."""

    ok: bool
    z: float  # (std / target std - 1) / stderr; 0 for constants
    why: str = ""


def match(ev: Evidence, f: Fit, family: str, scale: float, n_sigma: float = 3.0, n: int = 0,
          mean: float = 0.0, *, shape: bool = True) -> Verdict:
    """Whether the parameter behind ``ev`` (fitted as ``f``) was drawn from the given target.

    ``family``/``scale``/``n_sigma``/``n`` are a ``Target``'s fields (see initcore.init.targets); ``mean``
    its mean (a constant's value); ``shape=False`` leaves out the KS test (the cheap check of what
    ``init.apply`` drew: scale, mean and tails only).
    """
    if f.family == "nonfinite":
        return Verdict(False, math.inf, "not finite")
    if family == "constant":
        is_constant = f.family in ("zeros", "ones", "constant")
        ok = is_constant and math.isclose(f.scale, scale, rel_tol=1e-6, abs_tol=1e-12)
        return Verdict(ok, 0.0 if ok else math.inf, "" if ok else f"not the constant {scale:g}")
    if f.family in ("zeros", "ones", "constant"):
        return Verdict(scale == 0.0, 0.0 if scale == 0.0 else math.inf, "constant")
    if family == "orthogonal":
        if f.family != "orthogonal":
            return Verdict(False, math.inf, "rows not orthogonal")
        z = (f.scale / scale - 1.0) / REL_FLOOR if scale > 0 else math.inf
        return Verdict(abs(z) <= Z_SCALE, z, "" if abs(z) <= Z_SCALE else "gain")
    if f.family == "orthogonal":
        return Verdict(False, math.inf, "orthogonal, not i.i.d.")
    target_std = {"normal": scale, "uniform": scale / math.sqrt(3.0),
                  "trunc_normal": scale * math.sqrt(trunc_variance_factor(n_sigma))}[family]
    if target_std <= 0:
        return Verdict(False, math.inf, "target std 0")
    m = ev.m
    err = scale_stderr(family, m, n_sigma) + REL_FLOOR
    z = (f.std / target_std - 1.0) / err
    if abs(z) > Z_SCALE:
        return Verdict(False, z, "scale")
    if abs(f.mean - mean) > Z_SCALE * target_std / math.sqrt(m):
        return Verdict(False, z, "mean")
    x = ev.sample
    extreme = max(abs(float(x[0]) - mean), abs(float(x[-1]) - mean))
    if family == "uniform" and extreme > scale * (1 + 1e-6):
        return Verdict(False, z, "beyond the bound")
    if family == "trunc_normal" and extreme > scale * n_sigma * (1 + 1e-6):
        return Verdict(False, z, "beyond the cut")
    if family == "normal" and _log_within(extreme / target_std, m) < math.log(ALPHA):
        return Verdict(False, z, "bounded")
    if not shape:
        return Verdict(True, z)
    p = ks_pvalue(ks_distance(x, _cdf(family, x, scale, n_sigma, mean)), m)
    return Verdict(p >= ALPHA, z, "" if p >= ALPHA else f"shape (KS p {p:.1g})")


__all__ = ["ALPHA", "Evidence", "Fit", "SAMPLE_MAX", "Verdict", "Z_SCALE", "cut_from_peak", "erf", "fit",
           "ks_pvalue", "match", "scale_stderr"]
