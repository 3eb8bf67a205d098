"""Precision headroom of the 12-layer transformer's parameters at init: which flush or overflow in fp16,
bf16 and fp8, unscaled and with a per-tensor scale, under standard, gpt2, small_init and mup.

The notebook's transformer (``experiments.NOTEBOOK_TRANSFORMER``: 12 pre-norm blocks, d_model 512, d_ff
2048), each strategy on the model config it needs (muP's 1/d_head attention), seed 0;
``precision.parameters`` counts every entry of every parameter (no pass: what the init leaves). Where a
strategy draws a matrix from a normal (gpt2, small_init, mup; standard's embedding), the measured fractions
must be those of N(0, std²), within sampling error; standard's Xavier-uniform matrices are not Gaussian, and
the same comparison must tell them apart. Found, and printed at the end of the run: in float8_e4m3fn
unscaled, every entry of gpt2's residual projections (std 0.02/sqrt(24) = 0.0041) is subnormal or flushed
(19% to zero), small_init's matrices lose 3.9%; a per-tensor scale leaves nothing flushed beyond 0.1%
and nothing overflowing; bfloat16 loses nothing. The fp16 loss scale the weight gradients need takes a
trace of the model per strategy, ~6 s each on this 2-core VM: under ``-m large``.

After the first steps (``-m large``, ~30 s): 3 Adam steps of each strategy (``initcore.steps.trace_steps`` with
formats); Adam's updates and the weights stay within Adam's own bound (exact), and which rows lose more than
``probe.headroom.DEFAULT_BITS`` is held against a spread measured over 8 seeds: the output and weight gradients
fall below (1.8-4.9 bits at the median), gpt2's and small_init's residual stream grows (3.4, 2.4 bits at its
largest), no weight or update is flagged.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from initcore import experiments, init, theory
from initcore.models import Transformer
from initcore.probe import precision

STRATEGIES = ("standard", "gpt2", "small_init", "mup")
FORMATS = ("float16", "bfloat16", "float8_e4m3fn", "float8_e5m2")
SD = 5  # two-sided 6e-7 a comparison; ~5000 comparisons here


@pytest.fixture(scope="module")
def tables() -> dict[str, pd.DataFrame]:
    found = {}
    for strategy in STRATEGIES:
        model = Transformer.from_config(init.strategies.config_for(strategy, experiments.NOTEBOOK_TRANSFORMER))
        init.apply(model, strategy, generator=torch.Generator().manual_seed(0))
        found[strategy] = precision.with_theory(precision.parameters(model, FORMATS))
    return found


def _gaussian(table: pd.DataFrame, strategy: str) -> pd.Series:
    """Rows of matrices drawn from a normal: all but standard's Xavier uniform (its embedding is N(0, 0.1²))."""
    drawn = (table["std"] > 0) & (table["n"] >= 4096)
    return drawn & (table["param"] == "embed.weight") if strategy == "standard" else drawn


def _excess(table: pd.DataFrame) -> pd.DataFrame:
    """|measured - Gaussian| over its sampling sd, per fraction: binomial sqrt(p(1-p)/n), plus the prediction's own
    error from the measured std (|dp/dln sigma| / sqrt(2n)), plus one entry's worth (1/n) for p near 0."""
    out = {}
    for name in ("flushed", "subnormal"):
        p, n = table[f"{name}_gaussian"].to_numpy(), table["n"].to_numpy()
        slope = np.zeros(len(table))
        for fmt_name, rows in table.groupby("format"):
            fmt, idx = precision.format_of(fmt_name), table.index.get_indexer(rows.index)
            std, mean = rows["std"].to_numpy(), rows["mean"].to_numpy()
            bounds = (fmt.flush[0], fmt.normal[0], fmt.overflow[0])
            at = [theory.gaussian_cast_fractions(std * np.exp(s), mean, *bounds)[name] for s in (-1e-4, 1e-4)]
            slope[idx] = (at[1] - at[0]) / 2e-4
        sd = np.sqrt(p * (1 - p) / n) + np.abs(slope) / np.sqrt(2 * n) + 1 / n
        out[name] = np.abs(table[name].to_numpy() - p) / sd
    return pd.DataFrame(out, index=table.index)


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_gaussian_parameters_lose_what_erf_predicts(tables, strategy: str) -> None:
    table = tables[strategy]
    rows = table[_gaussian(table, strategy)]
    assert len(rows) >= len(FORMATS) * 2  # the embedding at least, in every format and scaling
    excess = _excess(rows)
    worst = excess.max(axis=1).idxmax()
    assert (excess <= SD).all().all(), (rows.loc[worst, ["param", "format", "scaling", "std", "flushed",
                                                         "flushed_gaussian", "subnormal", "subnormal_gaussian"]])


def test_uniform_matrices_stand_out_from_the_gaussian_prediction(tables) -> None:
    # standard's Xavier uniform: |x| has no tail below its bound, so fewer entries are small than for N(0, std²)
    table = tables["standard"]
    uniform = table[(table["std"] > 0) & (table["n"] >= 4096) & ~_gaussian(table, "standard")
                    & (table["format"] == "float8_e4m3fn") & (table["scaling"] == "none")]
    assert len(uniform) == 12 * 6  # q, k, v, o, fc1, fc2 of 12 blocks
    assert (_excess(uniform)["subnormal"] > SD).all()


def test_what_flushes_or_overflows(tables, summary_line) -> None:
    for strategy, table in tables.items():
        drawn = table[table["std"] > 0]
        assert (drawn["overflow"] == 0).all()  # the largest weight at init is far below every format's max
        assert (drawn.loc[drawn["format"] == "bfloat16", "flushed"] == 0).all()
        scaled = drawn[drawn["scaling"] == "tensor"]
        assert (scaled["flushed"] <= 1e-3).all()  # 2^k brings amax within a binade of max: <= 1e-3 is below 2^-10 amax
        for fmt in FORMATS:
            parts = []
            for scaling in precision.SCALINGS:
                rows = drawn[(drawn["format"] == fmt) & (drawn["scaling"] == scaling)]
                worst = rows.loc[rows["flushed"].idxmax()]
                parts.append(f"{scaling} {(rows['flushed'] > 0.01).sum()}/{len(rows)} (worst {worst['flushed']:.2g} "
                             f"{worst['param']})")
            summary_line(f"precision at init, {strategy} in {fmt}: parameters flushing > 1%: {'; '.join(parts)}")
    gpt2 = tables["gpt2"]
    projections = gpt2[gpt2["param"].str.endswith(("attn.o.weight", "ffn.fc2.weight"))
                       & (gpt2["format"] == "float8_e4m3fn") & (gpt2["scaling"] == "none")]
    # std 0.02/sqrt(24): erf(2^-6 / (0.0041 sqrt 2)) of the entries sit below e4m3fn's smallest normal: all but 1e-4
    assert len(projections) == 24 and (projections["flushed"] + projections["subnormal"] > 0.999).all()


Z_1PCT = 0.012533469508069276  # P(|X| < z sigma) = 1% for a Gaussian: sqrt(2) erfinv(0.01)


@pytest.mark.large
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_fp16_loss_scale_weight_gradients_need(strategy: str, summary_line) -> None:
    """The smallest power-of-two loss scale at which no matrix's fp16 weight gradient loses more than 1% to
    zero (``precision.loss_scale_for``, exact); one scale must serve all without overflow. Where a gradient is
    Gaussian by the table's own test at that scale (flushed within 5 sd of N(0, std²)'s), the scale is the
    Gaussian's, 2^ceil(log2(flush / (z std))), within a binade (the measured std, and 1% of entries at the
    boundary). ~6 s a strategy on this VM: the batch-2 x 16 tokens trace of experiments.TRANSFORMER_RUNS."""
    cfg = init.strategies.config_for(strategy, experiments.NOTEBOOK_TRANSFORMER)
    model = Transformer.from_config(cfg)
    init.apply(model, strategy, generator=torch.Generator().manual_seed(0))
    idx = torch.randint(0, cfg.vocab_size, (2, 16), generator=torch.Generator().manual_seed(1))
    frame = precision.trace(model, idx, "random", formats="float16", statistics="lean")
    fmt = precision.format_of("float16")
    needed, gaussian = {}, 0
    for name, p in model.named_parameters():
        if p.dim() < 2 or p.grad is None or not p.grad.any():
            continue
        scale = precision.loss_scale_for(p.grad, "float16")
        needed[name] = (scale, p.grad.abs().max().item())
        row = precision.with_theory(pd.DataFrame(precision.decode(precision.counts(p.grad, [fmt], scale), [fmt],
                                                                  scale))).iloc[:1]
        row = row.assign(param=name, format="float16")
        if (_excess(row)["flushed"] <= SD).all():
            gaussian += 1
            std = p.grad.float().std().item()
            predicted = 2.0 ** np.ceil(np.log2(fmt.flush[0] / (Z_1PCT * std)))
            assert predicted / 2 <= scale <= predicted * 2, (name, scale, predicted)
    worst = max(needed, key=lambda n: needed[n][0])
    top = max(scale for scale, _ in needed.values())
    assert top * max(amax for _, amax in needed.values()) < fmt.max  # one loss scale fits every matrix
    assert len(frame.attrs["precision"])
    summary_line(f"precision at init, {strategy}: fp16 weight gradients need loss scale {top:g} ({worst}); "
                 f"{gaussian} of {len(needed)} matrices' gradients Gaussian at it")


# --- after the first steps (-m large) ---------------------------------------------------------------------------
# The 12-layer transformer of each strategy (seed: the run's --seed), 3 steps of Adam (lr 1e-3, default betas and
# eps; muP's groups at the model's own width, where its multipliers are 1) on one fixed batch of 2 x 16 random
# tokens, loss the mean of the output times a fixed N(0, 1) tensor (the probe's "random" loss, which the final
# norm needs: see initcore.probe.trace); initcore.steps.trace_steps with formats: every row's output, output
# gradient, weights, weight gradients and Adam's updates, per step. ~3 s a strategy on an idle 2-core VM (14 s
# loaded), four strategies: too much for the default bench's 3 s, so behind -m large.
STEP_FORMATS = ("float16", "float8_e4m3fn")
STEPS, LR = 3, 1e-3
# Each update row is W_{t+1} - W_t of float32 weights, each rounded to half its spacing: 2^-24 |W| <= 1.2e-7 for
# |W| <= 2 (the largest weights here are LayerNorm gains near 1), the subtraction itself exact (Sterbenz).
UPDATE_ATOL = 2.4e-7
ADAM_EPS = 1e-8  # torch.optim.Adam's default
# Measured at seeds 0-7 (this file's run, 8 seeds; the fall in bits from step 0 to the lowest of steps 1-3,
# float16 unscaled, where the fall is the same in every format): per strategy, (mean, sd) of the largest fall
# above of a forward output, and the median fall below of the output gradients, the weight gradients and the
# updates. The loss falls fast on one fixed batch, and the gradients with it; gpt2's and small_init's small
# residual branches let Adam's coherent first steps (each entry lr, in the direction that lowers the loss:
# ~lr·fan_in on an output) grow the residual stream.
SPREAD = {
    "standard": {"output_above_max": (1.607, 0.162), "output_grad_below_median": (1.985, 0.098),
                 "weight_grad_below_median": (2.993, 0.269), "update_below_median": (0.888, 0.011)},
    "gpt2": {"output_above_max": (3.388, 0.171), "output_grad_below_median": (4.344, 0.081),
             "weight_grad_below_median": (4.912, 0.343), "update_below_median": (0.926, 0.005)},
    "small_init": {"output_above_max": (2.393, 0.249), "output_grad_below_median": (3.054, 0.110),
                   "weight_grad_below_median": (4.540, 0.604), "update_below_median": (0.918, 0.010)},
    "mup": {"output_above_max": (1.472, 0.108), "output_grad_below_median": (1.828, 0.091),
            "weight_grad_below_median": (2.208, 0.161), "update_below_median": (0.902, 0.007)},
}
K_SD, FLOOR_BITS = 6, 0.05  # 6 sample sds (Student t, 7 df: two-sided 5e-4 a comparison, 16 here) + 0.05 bits


def _stepped(strategy: str, seed: int) -> tuple[pd.DataFrame, dict[str, float]]:
    from initcore.steps import Batch, trace_steps

    cfg = init.strategies.config_for(strategy, experiments.NOTEBOOK_TRANSFORMER)
    model = Transformer.from_config(cfg)
    init.apply(model, strategy, generator=torch.Generator().manual_seed(seed))
    g = torch.Generator().manual_seed(seed + 1)
    idx = torch.randint(0, cfg.vocab_size, (2, 16), generator=g)
    r = torch.randn(2, 16, cfg.d_model, generator=g)
    groups = init.param_groups(model, strategy, lr=LR)
    optimizer = torch.optim.Adam(groups)
    names = {id(p): n for n, p in model.named_parameters()}
    lrs = {names[id(p)]: group["lr"] for group in optimizer.param_groups for p in group["params"]}
    frame = trace_steps(model, Batch(idx, r), optimizer, STEPS, lambda pred, y: (pred * y).mean(),
                        statistics="lean", formats=STEP_FORMATS)
    return frame.attrs["precision"], lrs


def _summary(table: pd.DataFrame) -> dict[str, float]:
    from initcore.probe import headroom

    found = headroom.falls(table[(table["format"] == "float16") & (table["scaling"] == "none")])
    by = found.groupby("tensor")
    return {"output_above_max": float(by.get_group("output")["headroom_fall"].max()),
            **{f"{t}_below_median": float(by.get_group(t)["floor_fall"].median())
               for t in ("output_grad", "weight_grad", "update")}}


@pytest.fixture(scope="module")
def stepped(seed: int) -> dict[str, tuple[pd.DataFrame, dict[str, float]]]:
    from initcore.testing import measure as measuring

    with measuring.one_thread():
        return {strategy: _stepped(strategy, seed) for strategy in STRATEGIES}


@pytest.mark.large
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_adams_updates_and_weights_stay_within_adams_bound(stepped, strategy: str) -> None:
    """Theory, exact: Adam's first update is lr·g/(|g| + eps), so an update's amax is lr·G/(G + eps), G its
    gradient's amax; the t-th step's entries are at most lr·adam_update_bound(t); so a weight's amax grows by at
    most lr·(sum of the bounds) in the steps. Up to the float32 rounding of the weights (UPDATE_ATOL a step)."""
    from initcore.probe import headroom

    table, lrs = stepped[strategy]
    rows = table[(table["format"] == "float16") & (table["scaling"] == "none")]
    update = rows[rows["tensor"] == "update"].set_index(["step", "param"])["amax"]
    grad = rows[(rows["tensor"] == "weight_grad") & (rows["step"] == 0)].set_index("param")["amax"]
    weight = rows[rows["tensor"] == "weight"].set_index(["step", "param"])["amax"]
    lr = pd.Series([lrs[p] for _, p in update.index], index=update.index)
    first = update.xs(0, level="step")
    assert len(first) == len(grad) > 100  # every parameter a row holds
    np.testing.assert_allclose(first[grad.index], (lr.xs(0, level="step") * grad / (grad + ADAM_EPS))[grad.index],
                               rtol=1e-6, atol=UPDATE_ATOL)
    bound = lr * [headroom.adam_update_bound(int(s) + 1) for s, _ in update.index]
    assert (update <= bound + UPDATE_ATOL).all(), (update - bound).idxmax()
    w0 = weight.xs(0, level="step")
    for step in range(1, STEPS + 1):
        moved = sum(headroom.adam_update_bound(t) for t in range(1, step + 1))
        lr_of = pd.Series([lrs[p] for p in w0.index], index=w0.index)
        grown = weight.xs(step, level="step")[w0.index] - w0
        assert (grown <= lr_of * moved + step * UPDATE_ATOL).all(), grown.idxmax()
        assert (grown > 0).any()  # the weights did move


@pytest.mark.large
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_which_rows_lose_headroom_in_three_adam_steps(stepped, strategy: str, summary_line) -> None:
    from initcore.probe import headroom

    table, _ = stepped[strategy]
    measured = _summary(table)
    for name, value in measured.items():
        mean, sd = SPREAD[strategy][name]
        assert abs(value - mean) <= K_SD * sd + FLOOR_BITS, (name, value, mean, sd)
    flagged = headroom.flag(table, formats="float16")
    counts = flagged.groupby(["tensor", "side"]).size()
    total = table[(table["step"] == 0) & (table["format"] == "float16") & (table["scaling"] == "none")]
    total = total.groupby("tensor").size()
    assert not len(flagged[flagged["tensor"].isin(["weight", "update"])])  # within Adam's bound, and settling
    summary_line(f"precision after {STEPS} Adam steps, {strategy}: flagged (> {headroom.DEFAULT_BITS:g} bits) "
                 + ", ".join(f"{t} {s} {n}/{total[t]}" for (t, s), n in counts.items())
                 + "; " + ", ".join(f"{k} {v:.2f}" for k, v in measured.items()))
