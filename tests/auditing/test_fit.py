"""initcore.auditing.fit: the pure statistics of the audit, on numpy draws (no torch), against scipy and theory."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from initcore.auditing import fit as F


def _evidence(x: np.ndarray) -> F.Evidence:
    return F.Evidence(np.sort(x.astype(np.float64)), len(x), 0)


def test_erf_is_within_its_stated_error_of_math_erf():
    x = np.linspace(-6, 6, 2001)
    assert np.max(np.abs(F.erf(x) - np.array([math.erf(v) for v in x]))) < 1.5e-7  # A&S 7.1.26's bound


@pytest.mark.parametrize("d,m", [(0.01, 4096), (0.02, 1000), (0.005, 65536), (0.03, 200)])
def test_the_ks_p_value_is_kolmogorovs(d, m):
    # scipy's kstwo is the exact finite-m law; Stephens' correction brings the asymptotic one within 5% of it.
    assert F.ks_pvalue(d, m) == pytest.approx(stats.kstwo.sf(d, m), rel=0.05, abs=1e-9)


@pytest.mark.parametrize("cut", [1.0, 2.0, 3.0, 5.0])
def test_the_cut_of_a_truncated_normal_is_recovered_from_its_peak(cut):
    peak = cut / math.sqrt(F.trunc_variance_factor(cut))
    assert F.cut_from_peak(peak) == pytest.approx(cut, rel=1e-6)
    # scipy's truncnorm agrees with the variance and kurtosis formulas
    dist = stats.truncnorm(-cut, cut)
    assert F.trunc_variance_factor(cut) == pytest.approx(dist.var(), rel=1e-9)
    assert F.trunc_kurtosis(cut) == pytest.approx(dist.stats(moments="k") + 3, rel=1e-6)


RNG_DRAWS = {
    "normal": lambda r, n: r.normal(0, 0.02, n),
    "uniform": lambda r, n: r.uniform(-0.05, 0.05, n),
    "trunc_normal": lambda r, n: stats.truncnorm(-3, 3, scale=0.02).rvs(n, random_state=r),
}


@pytest.mark.parametrize("family", list(RNG_DRAWS))
def test_fit_names_the_family_from_4096_draws(family):
    # 4096 draws of a normal stay below its truncation's largest |z| (3.04 std) with probability
    # 0.99763^4096 = 6e-5, far below ALPHA_BOUNDED = 5e-3, the rate at which a normal is named bounded (measured:
    # 0.35% of 4000 draws, 0 of 2000 truncated ones named normal); a uniform is bounded at |z| = 1.73.
    for seed in range(20):
        f = F.fit(_evidence(RNG_DRAWS[family](np.random.default_rng(seed), 4096)))
        assert f.family == family, (seed, f)
    f = F.fit(_evidence(RNG_DRAWS["trunc_normal"](np.random.default_rng(0), 65536)))
    assert f.n_sigma == pytest.approx(3.0, abs=0.02) and f.scale == pytest.approx(0.02, rel=0.01)


def test_fit_names_constants_and_non_finite_values():
    assert F.fit(_evidence(np.zeros(10))).family == "zeros"
    assert F.fit(_evidence(np.ones(10))).family == "ones"
    assert F.fit(_evidence(np.full(10, 0.5))).family == "constant"
    assert F.fit(F.Evidence(np.zeros(3), 4, 1)).family == "nonfinite"


def test_fit_finds_no_family_in_what_empty_memory_holds():
    # to_empty's memory, imitated: a tail of leftover values from another tensor beside zeroed pages
    r = np.random.default_rng(0)
    x = np.concatenate([np.zeros(3000), r.normal(0, 1.0, 1096)])
    assert F.fit(_evidence(x)).family == "none"
    assert F.fit(_evidence(r.normal(0.5, 0.02, 4096))).family == "normal"  # a shifted normal is a normal
    assert F.fit(_evidence(np.concatenate([r.normal(0, 0.02, 2048), r.normal(0, 0.2, 2048)]))).family == "none"


def _matches(x, family, scale, n_sigma=3.0):
    ev = _evidence(x)
    return F.match(ev, F.fit(ev), family, scale, n_sigma).ok


def test_false_alarm_rate_of_match_is_below_its_stated_bound():
    # ALPHA = 1e-6 for the shape and tail tests, 3.8e-8 for the scale: 600 draws of the right target must all
    # match (a failure here would be a 1-in-1e3 event at the stated rates even summed over all 600).
    r = np.random.default_rng(1)
    for _ in range(200):
        assert _matches(r.normal(0, 0.02, 4096), "normal", 0.02)
        assert _matches(r.uniform(-0.1, 0.1, 4096), "uniform", 0.1)
        assert _matches(stats.truncnorm(-2, 2, scale=0.02).rvs(4096, random_state=r), "trunc_normal", 0.02, 2.0)


def test_a_scale_five_percent_off_is_caught_from_65536_entries():
    # A normal's std from m draws has a relative standard error sqrt(1/(2m)) = 0.28% at 65536: 5% is 18 of them,
    # far beyond Z_SCALE = 5.5; a uniform's is sqrt(0.8/(4m)) = 0.17%.
    r = np.random.default_rng(2)
    for seed in range(10):
        assert not _matches(r.normal(0, 0.021, 65536), "normal", 0.02), seed
        assert not _matches(r.normal(0, 0.019, 65536), "normal", 0.02), seed
        assert not _matches(r.uniform(-0.105, 0.105, 65536), "uniform", 0.1), seed
    assert F.Z_SCALE * F.scale_stderr("normal", 65536) < 0.05 / 2  # the margin: under half of 5%


def test_match_tells_a_normal_from_its_truncation_and_from_a_uniform():
    r = np.random.default_rng(3)
    normal, cut = r.normal(0, 0.02, 16384), stats.truncnorm(-3, 3, scale=0.02).rvs(16384, random_state=r)
    pre = 0.02  # the truncated draws' std before the cut: their std is 0.02 * sqrt(0.9733)
    assert not _matches(normal, "trunc_normal", pre * 1.0137, 3.0)  # entries beyond the cut
    assert not _matches(cut, "normal", 0.02 * math.sqrt(F.trunc_variance_factor(3.0)))  # too few large entries
    assert not _matches(r.uniform(-0.0346, 0.0346, 16384), "normal", 0.02)  # uniform of std 0.02: bounded
    assert _matches(cut, "trunc_normal", pre, 3.0) and _matches(normal, "normal", 0.02)


def test_orthogonality_is_read_from_the_gram_error():
    ev = F.Evidence(np.sort(np.random.default_rng(0).normal(0, 0.05, 4096)), 4096, 0, gram_error=1e-7, gram_gain=1.0)
    f = F.fit(ev)
    assert f.family == "orthogonal" and f.scale == 1.0
    assert F.match(ev, f, "orthogonal", 1.0).ok and not F.match(ev, f, "orthogonal", math.sqrt(2)).ok
    assert not F.match(ev, f, "normal", 0.05).ok  # orthogonal, not i.i.d.
