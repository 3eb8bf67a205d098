"""initcore.probe.precision: the fractions are those of a direct cast, on the host and the device path."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from initcore import probe, theory
from initcore.models import MLP
from initcore.probe import precision


def _boundaries(fmt: precision.Format) -> torch.Tensor:
    """Each rounding boundary of ``fmt`` and its two float32 neighbours: where ties are decided."""
    values = []
    for t, _ in (fmt.flush, fmt.normal, fmt.overflow):
        t32 = np.float32(t)
        values += [t32, np.nextafter(t32, np.float32(0)), np.nextafter(t32, np.float32(np.inf))]
    return torch.tensor(np.array(values, dtype=np.float32))


def _tensors(seed: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    normal = [torch.randn(4096, generator=g) * s for s in (1e-9, 1e-6, 1e-4, 1e-2, 1.0, 1e2, 1e4, 1e6)]
    # |x| = 2^u, u uniform over float32's whole range: every region of every format, subnormals of float32 too
    spread = torch.exp2(torch.rand(1 << 16, generator=g, dtype=torch.float64) * 270 - 145).float()
    spread *= torch.randint(0, 2, spread.shape, generator=g) * 2 - 1
    spread[::97] = 0
    bounds = torch.cat([_boundaries(precision.format_of(name)) for name in precision.FORMATS])
    # counting's other routes (precision._below): 1% of outliers past every format's max (keys in the top tail),
    # half the entries zero, as after a ReLU (the count of zeros in the bulk)
    outliers = torch.randn(4096, generator=g) * 1e-3
    outliers[::101] *= 1e8
    relu = torch.randn(4096, generator=g).clamp(min=0)
    # tails of more entries than one sort takes (precision._SMALL), each spread over many binades: counted key
    # by key, each on what the key before kept
    tails = torch.randn(1 << 17, generator=g) * 1e-2
    u = torch.rand(tails.shape, generator=g, dtype=torch.float64)
    tails[::83] = torch.exp2(u[::83] * 130 - 150).float()
    tails[1::83] = torch.exp2(u[1::83] * 19 - 2).float()
    return [*normal, spread, outliers, relu, tails, torch.cat([bounds, -bounds, torch.zeros(3)])]


def _cast_fractions(x: torch.Tensor, scale: float, fmt: precision.Format) -> tuple[float, float, float]:
    """flushed, subnormal, overflow fractions of x's nonzero entries, by casting x·scale to the format."""
    y = x * scale
    c = y.to(fmt.dtype).float()
    # a saturating cast (torch's float8_e4m3fn) clips to max: what y/2 rounds to, doubled, exceeds max then
    over = ~torch.isfinite(c) | ((y / 2).to(fmt.dtype).float().abs() * 2 > fmt.max)
    nz = x != 0
    n = nz.sum().item()
    return (((c == 0) & nz).sum().item() / n, ((c != 0) & (c.abs() < fmt.tiny)).sum().item() / n,
            (over & nz).sum().item() / n)


@pytest.mark.parametrize("factor", [1.0, 1024.0, 2.0**-20], ids=["unscaled", "loss-scale-1024", "scale-2^-20"])
def test_all_formats_at_once_count_as_each_alone(factor: float) -> None:
    # a trace counts every format's keys in one sweep (precision._below), where tails hold many keys: each
    # format's records are those it gets alone, which the direct-cast test below holds to a cast
    fmts = [precision.format_of(name) for name in precision.FORMATS]
    for x in _tensors(0):
        together = precision.decode(precision.counts(x, fmts, factor), fmts, factor)
        alone = [r for fmt in fmts for r in precision.decode(precision.counts(x, [fmt], factor), [fmt], factor)]
        pd.testing.assert_frame_equal(pd.DataFrame(together), pd.DataFrame(alone), check_exact=True)  # NaN == NaN


@pytest.mark.parametrize("host", [True, False], ids=["numpy", "torch"])
@pytest.mark.parametrize("name", precision.FORMATS)
@pytest.mark.parametrize("factor", [1.0, 1024.0, 2.0**-20], ids=["unscaled", "loss-scale-1024", "scale-2^-20"])
def test_fractions_equal_a_direct_cast(name: str, host: bool, factor: float, monkeypatch) -> None:
    monkeypatch.setattr(precision, "_HOST", host)
    fmt = precision.format_of(name)
    for x in _tensors(0):
        records = precision.decode(precision.counts(x, [fmt], factor), [fmt], factor)
        assert [r["scaling"] for r in records] == ["none", "tensor"]
        for r in records:
            expected = _cast_fractions(x, r["scale"], fmt)  # exact: the counts are of the same entries
            assert (r["flushed"], r["subnormal"], r["overflow"]) == expected, (name, r["scaling"], x.abs().max())
            amax = x.abs().max().item() * r["scale"]
            assert r["amax"] == amax
            assert r["headroom_bits"] == pytest.approx(math.log2(fmt.max / amax), rel=1e-9, abs=1e-12)  # float64
        scaled = records[1]
        if 2.0**-126 <= fmt.max / x.abs().max().item() < 2.0**128:  # a scale 2^k in float32's normal range reaches it
            assert 0 <= scaled["headroom_bits"] < 1 and scaled["overflow"] == 0


def test_limits_are_torch_finfo() -> None:
    for name in precision.FORMATS:
        fmt, info = precision.format_of(name), torch.finfo(getattr(torch, name))
        assert (fmt.max, fmt.tiny) == (info.max, info.smallest_normal)
        # the smallest subnormal is the smallest value a cast keeps, and half of it is lost
        assert precision._cast(fmt.smallest, fmt.dtype) == fmt.smallest
        assert precision._cast(fmt.smallest * 0.75, fmt.dtype) == fmt.smallest
        assert precision._cast(fmt.smallest / 2, fmt.dtype) == 0


def test_bad_input_lists_what_is_valid(monkeypatch) -> None:
    with pytest.raises(ValueError, match=r"unknown format 'float9'; valid: float16, bfloat16, float8_e4m3fn"):
        precision.format_of("float9")
    monkeypatch.setattr(precision, "FORMATS", ("float16", "bfloat16"))
    precision.format_of.cache_clear()
    try:
        with pytest.raises(ValueError, match=r"torch .* has no float8_e5m2; valid here: float16, bfloat16$"):
            precision.format_of("float8_e5m2")
    finally:
        precision.format_of.cache_clear()
    for bad in (0, -1.0, math.nan, math.inf, "1024"):
        with pytest.raises(ValueError, match="loss_scale must be a positive finite number"):
            precision.trace(MLP(4, 4, 2), torch.randn(2, 4), loss_scale=bad)


def test_the_probe_takes_the_formats_and_loss_scale() -> None:
    # probe.trace(statistics="precision") hands both to precision.trace, whose table it returns
    model, x = MLP(4, 8, 2), torch.randn(3, 4, generator=torch.Generator().manual_seed(0))
    frame = probe.trace(model, x, statistics="precision", formats=["float16", torch.float8_e5m2], loss_scale=1024)
    direct = precision.trace(model, x, formats=["float16", "float8_e5m2"], loss_scale=1024.0)
    pd.testing.assert_frame_equal(frame.attrs["precision"], direct.attrs["precision"])
    table = frame.attrs["precision"]
    assert list(table["format"].unique()) == ["float16", "float8_e5m2"]
    unscaled = table[table["scaling"] == "none"]
    assert set(unscaled.loc[unscaled["tensor"].str.endswith("grad"), "scale"]) == {1024.0}
    assert set(unscaled.loc[~unscaled["tensor"].str.endswith("grad"), "scale"]) == {1.0}
    everything = probe.trace(model, x, statistics="precision").attrs["precision"]
    assert tuple(everything["format"].unique()) == precision.FORMATS
    assert set(everything.loc[everything["scaling"] == "none", "scale"]) == {1.0}


def test_precision_among_named_statistics_gives_the_table_beside_those_alone() -> None:
    model, x = MLP(4, 8, 2), torch.randn(3, 4, generator=torch.Generator().manual_seed(0))
    named = probe.trace(model, x, statistics=["act_std", "grad_norm", "precision"], formats="float16")
    alone = probe.trace(model, x, statistics=("precision",), formats="float16")
    direct = precision.trace(model, x, formats="float16")
    for frame in (named, alone):
        pd.testing.assert_frame_equal(frame.attrs["precision"], direct.attrs["precision"])
    plain, lean = (probe.trace(model, x, statistics=s) for s in (["act_std", "grad_norm"], "lean"))
    assert "precision" not in plain.attrs and named["act_std"].notna().all() and named["act_mean"].isna().all()
    for frame, same in ((named, plain), (alone, lean)):  # the frame is the one the names (or "lean") give
        frame = frame.copy()
        frame.attrs = {}
        pd.testing.assert_frame_equal(frame, same)


def test_the_probe_lists_what_is_valid(monkeypatch) -> None:
    model, x = MLP(4, 8, 2), torch.randn(3, 4)
    for kwargs, message in (({"formats": "float9"}, r"unknown format 'float9'; valid: float16, bfloat16, float8_e4m"),
                            ({"formats": []}, r"no format given; valid: float16, bfloat16"),
                            ({"loss_scale": 0}, r"loss_scale must be a positive finite number"),
                            ({"loss_scale": -2.0}, r"loss_scale must be a positive finite number")):
        with pytest.raises(ValueError, match=message):
            probe.trace(model, x, statistics="precision", **kwargs)
    monkeypatch.setattr(precision, "FORMATS", ("float16", "bfloat16"))  # a torch without fp8
    precision.format_of.cache_clear()
    try:
        with pytest.raises(ValueError, match=r"torch .* has no float8_e5m2; valid here: float16, bfloat16$"):
            probe.trace(model, x, statistics="precision", formats="float8_e5m2")
    finally:
        precision.format_of.cache_clear()
    for kwargs in ({"formats": "float16"}, {"loss_scale": 8.0}):  # without the table they would be ignored
        with pytest.raises(ValueError, match=r"formats and loss_scale are the precision table's: pass statistics="):
            probe.trace(model, x, **kwargs)


def test_trace_measures_every_tensor_of_each_row() -> None:
    torch.manual_seed(0)
    model, x = MLP(16, 32, 3), torch.randn(8, 16)
    frame = probe.trace(model, x, statistics="precision", keep_outputs=True)
    table = frame.attrs["precision"]
    assert "precision" not in probe.trace(model, x).attrs  # only when asked
    assert list(table.columns) == list(precision.COLUMNS)
    assert set(table["tensor"]) == set(precision.TENSORS)
    params = sum(len(point.params) for point in probe.points(model))  # an MLP row's: its weight (no bias)
    tensors = 3 * 2 + 2 * params  # each row's output and its gradient; each parameter and its gradient
    assert len(table) == tensors * len(precision.FORMATS) * len(precision.SCALINGS)
    unscaled = table[(table["scaling"] == "none") & (table["format"] == "float16")].set_index(["module", "tensor",
                                                                                                "param"])
    outputs = frame.attrs["outputs"]
    for i, layer in enumerate(model.layers):
        name = f"layers.{i}"
        assert unscaled.loc[(name, "output", ""), "amax"] == outputs[name].abs().max().item()
        assert unscaled.loc[(name, "weight", f"{name}.weight"), "amax"] == layer.weight.abs().max().item()
        assert unscaled.loc[(name, "weight_grad", f"{name}.weight"), "amax"] == layer.weight.grad.abs().max().item()
    # the same float32 moments as the trace's (reduce.moments): equal but for the order of float32 sums
    assert unscaled.loc[("layers.0", "output", ""), "std"] == pytest.approx(frame.loc[0, "act_std"], rel=1e-6)
    scaled = precision.trace(model, x, loss_scale=1024.0, formats="float16").attrs["precision"]
    grads = scaled[(scaled["tensor"] == "weight_grad") & (scaled["scaling"] == "none")]
    assert (grads["scale"] == 1024.0).all()
    assert grads["amax"].tolist() == (1024 * unscaled.xs("weight_grad", level="tensor")["amax"]).tolist()


def test_a_parameter_is_measured_once_on_its_innermost_row() -> None:
    model = nn.Sequential(nn.Linear(4, 4), nn.Sequential(nn.Linear(4, 4), nn.ReLU()))
    table = precision.trace(model, torch.randn(2, 4), select=lambda n, m: n in ("0", "1", "1.0"),
                            formats="bfloat16").attrs["precision"]
    weights = table[(table["tensor"] == "weight") & (table["scaling"] == "none")]
    assert sorted(zip(weights["module"], weights["param"], strict=True)) == [
        ("0", "0.bias"), ("0", "0.weight"), ("1.0", "1.0.bias"), ("1.0", "1.0.weight")]


SIGMAS = (1e-6, 1e-4, 3e-3, 0.05, 1.0, 3e3, 2e4)  # across fp8's and fp16's subnormal ranges and fp16's max


@pytest.mark.parametrize("sigma", SIGMAS)
def test_gaussian_fractions_agree_with_erf_within_sampling_error(sigma: float) -> None:
    n = 1 << 20  # 5 sd is 0.004 at p = 0.5: a std off by 2% (0.01 there) fails
    x = torch.randn(n, generator=torch.Generator().manual_seed(1), dtype=torch.float64).float() * sigma
    fmts = precision.formats_of(None)
    table = precision.with_theory(pd.DataFrame(precision.decode(precision.counts(x, fmts), fmts, 1.0)))
    for _, r in table.iterrows():
        for name in ("flushed", "subnormal", "overflow"):
            p = r[f"{name}_gaussian"]
            # binomial: the measured fraction's sd is sqrt(p(1-p)/n); the prediction's from the measured std
            # moves by |dp/dln sigma| times that std's relative sd, 1/sqrt(2n); 5 of their sum (two-sided
            # 6e-7 a comparison, 252 comparisons), plus one entry for p so small that no count is near
            sd = (p * (1 - p) / n) ** 0.5 + abs(_dp_dlnsigma(r, name)) / (2 * n) ** 0.5
            assert abs(r[name] - p) <= 5 * sd + 1 / n, (r["format"], r["scaling"], name, r[name], p, sd)
    # the range is covered: some fraction is substantial somewhere, so the test is not of zeros alone
    assert (table[["flushed", "subnormal", "overflow"]] > 0.05).any().any() or sigma in (0.05, 1.0)


def _dp_dlnsigma(row: pd.Series, name: str) -> float:
    fmt, eps = precision.format_of(row["format"]), 1e-4
    at = [theory.gaussian_cast_fractions(row["std"] * np.exp(s), row["mean"], fmt.flush[0], fmt.normal[0],
                                         fmt.overflow[0])[name] for s in (-eps, eps)]
    return float(at[1] - at[0]) / (2 * eps)


def test_a_heavy_tail_stands_out_from_the_gaussian_prediction() -> None:
    # Student t with 2 degrees of freedom, scaled to std ~ 1e4: fp16 overflows far more often than N(0, std²) would
    g = torch.Generator().manual_seed(0)
    x = (torch.randn(1 << 16, generator=g) / torch.rand(1 << 16, generator=g).sqrt() * 2e3).float()
    fmt = [precision.format_of("float16")]
    row = precision.with_theory(pd.DataFrame(precision.decode(precision.counts(x, fmt), fmt, 1.0))).iloc[0]
    assert row["overflow"] > 10 * row["overflow_gaussian"]


def test_parameters_alone_match_the_traced_weights() -> None:
    model = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 4))
    traced = precision.trace(model, torch.randn(4, 8), formats=["float16", "float8_e5m2"]).attrs["precision"]
    alone = precision.parameters(model, ["float16", "float8_e5m2"])
    weights = traced[traced["tensor"] == "weight"].reset_index(drop=True)
    assert len(alone) == len(weights) == 4 * 2 * 2  # 2 weights, 2 biases; 2 formats; 2 scalings
    pd.testing.assert_frame_equal(alone.drop(columns=["kind", "layer"]), weights.drop(columns=["kind", "layer"]))


def test_the_device_path_gives_the_hosts_table(monkeypatch) -> None:
    # off the CPU the counts stay on the device until one stacked copy; the CPU runs that path when told to
    model, x = MLP(16, 32, 3), torch.randn(8, 16)
    host = precision.trace(model, x, loss_scale=256.0).attrs["precision"]
    monkeypatch.setattr(precision, "_HOST", False)
    device = precision.trace(model, x, loss_scale=256.0).attrs["precision"]
    counted = ["module", "tensor", "param", "format", "scaling", "scale", "n", "nonzero", "amax", "flushed",
               "subnormal", "overflow", "headroom_bits"]
    pd.testing.assert_frame_equal(device[counted], host[counted], check_exact=True)
    # mean and std: float32 sums in another order
    pd.testing.assert_frame_equal(device[["mean", "std"]], host[["mean", "std"]], rtol=1e-5)


@pytest.mark.parametrize("name", ["float16", "float8_e4m3fn", "float8_e5m2"])
@pytest.mark.parametrize("tolerance", [0.0, 0.01, 0.25])
def test_loss_scale_for_is_the_smallest_power_of_two_that_fits(name: str, tolerance: float) -> None:
    fmt = [precision.format_of(name)]
    for x in _tensors(2)[:-1]:
        scale = precision.loss_scale_for(x, name, flushed=tolerance)
        assert math.log2(scale).is_integer()
        at = {s: precision.decode(precision.counts(x, fmt, s), fmt, s)[0]["flushed"] for s in (scale, scale / 2)}
        assert at[scale] <= tolerance < at[scale / 2]  # fits at L, not at L/2: the counts of a direct cast
    assert math.isnan(precision.loss_scale_for(torch.zeros(3), "float16"))
    with pytest.raises(ValueError, match=r"flushed must be a fraction in \[0, 1\)"):
        precision.loss_scale_for(torch.ones(3), "float16", flushed=1.0)
