"""Depth: the residual stream of a pre-norm stack grows by its branch variances, as each strategy scales them.

In a pre-norm block x <- x + f(norm(x)) the branch f sees a normalized input, so its output variance does
not depend on the stream, and at init it is uncorrelated with it: variances add
(``theory.residual_variance``). Each branch's variance follows from the strategy's per-role weight
variances (``run.promised(role)``: each strategy's own declaration, which tests/init/test_targets.py
checks its rule against and tests/init/test_modern_strategies.py against the papers' formulas):

- feed-forward (ReLU, zero biases): its input n = LayerNorm(x) has |n|^2 = d m2 per token, with
  m2 = v / (v + eps) for a stream of variance v (LayerNorm's eps = 1e-5 matters for the 0.02-std inits,
  whose stream has v ~ 1e-3); h = W1 n is N(0, d m2 Var(W1)) per unit, E[relu(h)^2] = half that, so
  Var(ffn) = d_ff Var(W2) d Var(W1) m2 / 2, exactly in expectation over the weights;
- attention: y = W_o sum_j p_j W_v n_j, so Var(attn) = d^2 Var(W_v) Var(W_o) C with
  C = |sum_j p_j n_j|^2 / d in [0, m2]: how much averaging over the keys shrinks the values. C depends
  on how correlated the positions of a sequence have become (uniform attention adds the same vector to
  every position), which has no closed form here, so the recursion takes the attention branch as
  measured.

Invariants, for L in experiments.DEPTHS (and 96 under ``-m large``), d_model 64:
- the stream variance after the last block follows the recursion (measured attention, formula
  feed-forward, formula embedding variance);
- the stream's growth over depth follows the strategy's output scaling, a priori (C cancels between
  depths): unscaled (small_normal) ~ L, GPT-2's 1/sqrt(2L) bounded, OLMo's 1/sqrt(2 d (l+1)) ~ log L,
  GPT-NeoX's wang_init 2/(L sqrt(d)) ~ 1/L;
- the feed-forward branch variance equals its formula, block by block (pooled);
- DeepNorm (post-norm): the stream is renormalized (std 1) and each block's update shrinks as
  beta^4 / alpha^2 ~ L^(-3/2);
- fixup and rezero blocks return their input exactly.

Tolerances are the mean deviation plus k = 4 seed spreads of the same measurement over seeds 0..19 on
the CPU (``pytest bench/test_depth_scaling.py --seed S`` draws seed S), quoted at each constant.
"""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
import torch

from initcore import experiments, probe, theory
from initcore.experiments import TransformerRun
from initcore.testing import measure

EPS = 1e-5  # nn.LayerNorm's default eps
STATS = {"attn": ("act_std",), "ffn": ("act_std",), "block": ("act_std",)}  # what CUDA must agree on with the CPU


def _trace(run: TransformerRun, seed: int, device: str) -> pd.DataFrame:
    model, inputs, _ = measure.build(run, seed, device)
    return probe.trace(model, inputs, run.loss)


def _var(run: TransformerRun, role: str, block: int = 0, part: str = "") -> float:
    return run.promised(role, block, part).variance


def _m2(v: float) -> float:
    """Mean square of a LayerNorm output (weight 1, bias 0) whose input has variance v."""
    return v / (v + EPS)


def ffn_variance(run: TransformerRun, block: int, m2: float = 1.0) -> float:
    """Var of a ReLU feed-forward's output for an input of mean square m2 per coordinate."""
    d, ff = run.model.d_model, run.model.d_ff
    return ff * _var(run, "mlp_out", block) * d * _var(run, "mlp_in", block) * m2 / 2


def attn_scale(run: TransformerRun, block: int) -> float:
    """d^2 Var(W_v) Var(W_o): the attention branch variance is this times C, C in [0, m2]."""
    d = run.model.d_model
    return d * d * _var(run, "qkv", block, "v") * _var(run, "attn_out", block)


def embedding_variance(run: TransformerRun) -> float:
    return _var(run, "embedding")


def stream(run: TransformerRun, attn: np.ndarray | float) -> float:
    """Predicted Var of the stream after the last block, attention branch variances ``attn`` per block
    (measured), or, for a scalar ``attn`` = C, d^2 Var(W_v) Var(W_o) C m2 in every block."""
    v0 = embedding_variance(run)
    v, branches = v0, []
    for block in range(run.model.n_layers):
        a = attn[block] if np.ndim(attn) else attn * attn_scale(run, block) * _m2(v)
        f = ffn_variance(run, block, _m2(v + a))
        branches += [a, f]
        v += a + f
    return float(theory.residual_variance(len(branches), branches, v0)[-1])


def _rows(frame: pd.DataFrame, kind: str, stat: str = "act_std") -> np.ndarray:
    return frame.loc[frame["kind"] == kind, stat].to_numpy(dtype=np.float64)


def _param(strategies, depths, large=()):
    return [pytest.param(s, n, id=f"{s}-L{n}", marks=[pytest.mark.large] if n in large else [])
            for s in strategies for n in depths]


# Relative half-width of the recursion. Over seeds 0..19, Var_L / prediction - 1 has mean <= +0.04 and
# seed spread <= 0.16 (small_normal at L = 24, 48; 0.05..0.15 elsewhere): at d_model 64 each block's branch
# correlates with the stream by ~1/sqrt(d) through its one draw of weights, and these cross terms do not
# average away. 0.04 + 4 spreads.
RECURSION_RTOL = 0.7


@pytest.mark.parametrize("strategy, n_layers", _param(experiments.DEPTH_STRATEGIES, [*experiments.DEPTHS,
                                                                                     *experiments.DEPTHS_LARGE],
                                                      experiments.DEPTHS_LARGE))
def test_stream_variance_follows_its_recursion(strategy, n_layers, trace_run):
    run = experiments.depth_run(strategy, n_layers)
    frame = trace_run(run, measure=_trace, statistics=STATS)
    measured = _rows(frame, "block")[-1] ** 2
    predicted = stream(run, _rows(frame, "attn") ** 2)
    assert abs(measured / predicted - 1) <= RECURSION_RTOL, (
        f"{run.key}: Var(stream after block {n_layers}) = {measured:.4g}, recursion {predicted:.4g}")


def growth(run: TransformerRun) -> float:
    """Predicted Var_L - Var_0 for one constant attention factor C = 1/2. Its dependence on L does not
    depend on C (attention and feed-forward outputs carry the same depth scaling) but through eps."""
    return stream(run, 0.5) - embedding_variance(run)


# Slope of log(Var_L - Var_0) against log L over L = 6..48, measured minus theory. Over seeds 0..19: mean
# <= +0.08 (olmo, small_normal: deeper stacks share more of the stream across positions, since each
# uniform attention adds one vector to all of them, so C creeps up with depth) and spread <= 0.09.
# 0.08 + 4 spreads. Theory slopes: small_normal 1.00, gpt2 0, olmo_mitchell 0.29, neox_small_init -1.00.
SLOPE_TOL = 0.45
EXPECTED = {"grows": (0.1, math.inf), "bounded": (-SLOPE_TOL, SLOPE_TOL), "shrinks": (-math.inf, -0.1)}


@pytest.mark.parametrize("strategy", list(experiments.DEPTH_STRATEGIES))
def test_stream_growth_follows_the_output_scaling(strategy, trace_run):
    runs = [experiments.depth_run(strategy, n) for n in experiments.DEPTHS]
    v0 = embedding_variance(runs[0])
    increments = np.array([_rows(trace_run(r, measure=_trace, statistics=STATS), "block")[-1] ** 2 - v0
                           for r in runs])
    predicted = np.array([growth(r) for r in runs])
    x = np.log(experiments.DEPTHS)
    slope, theory_slope = np.polyfit(x, np.log(increments), 1)[0], np.polyfit(x, np.log(predicted), 1)[0]
    table = ", ".join(f"L{n}: {m:.3g} (theory {t:.3g})"
                      for n, m, t in zip(experiments.DEPTHS, increments, predicted, strict=True))
    assert abs(slope - theory_slope) <= SLOPE_TOL, (
        f"{strategy}: Var_L - Var_0 ~ L^{slope:.3f}, theory L^{theory_slope:.3f}: {table}")
    label = experiments.DEPTH_STRATEGIES[strategy]
    lo, hi = EXPECTED[label]
    assert lo <= theory_slope <= hi and lo <= slope <= hi, f"{strategy}: a stream that {label}? L^{slope:.3f}"


# log(Var(ffn) / formula), mean over all blocks of all depths. Over seeds 0..19: mean -0.022..-0.007 (the
# output's mean is taken over all entries, not per coordinate) and spread <= 0.025. 0.022 + 4 spreads.
FFN_LOG_TOL = 0.12


@pytest.mark.parametrize("strategy", [*experiments.DEPTH_STRATEGIES, "deepnorm"])
def test_ffn_branch_variance_matches_its_formula(strategy, trace_run):
    logs = []
    for n in experiments.DEPTHS:
        run = experiments.depth_run(strategy, n)
        frame = trace_run(run, measure=_trace, statistics=STATS)
        ffn, attn, blocks = _rows(frame, "ffn") ** 2, _rows(frame, "attn") ** 2, _rows(frame, "block") ** 2
        if run.model.norm_position == "pre":  # the ffn sees norm2(x + attn): x the previous block's output
            before = np.concatenate([[embedding_variance(run)], blocks[:-1]]) + attn
            m2 = _m2(before)
        else:  # post-norm: it sees norm1(alpha x + attn), mean square 1 up to eps (the stream is O(1))
            m2 = np.ones(n)
        formula = np.array([ffn_variance(run, b, m2[b]) for b in range(n)])
        logs.append(np.log(ffn / formula))
    mean = float(np.concatenate(logs).mean())
    assert abs(mean) <= FFN_LOG_TOL, f"{strategy}: Var(ffn) / formula = {math.exp(mean):.4f} over all blocks"


# DeepNorm: the post-norm stream is a LayerNorm output, std 1 up to eps and the unbiased/biased factor.
# What alpha = (2L)^(1/4) and beta = (8L)^(-1/4) bound is each block's update relative to its skip:
# share_L = mean over blocks of (Var(attn) + Var(ffn)) / alpha^2, both branches ~ beta^4 (two beta-scaled
# matrices each), so share_L ~ beta^4 / alpha^2 = (8L)^(-1) (2L)^(-1/2): slope -3/2 in log L.
# Fitted slope over L = 6..48, seeds 0..19: -1.472 on average (eps and C), spread 0.011. 0.028 + 4 spreads.
DEEPNORM_SLOPE_TOL = 0.08


def test_deepnorm_stream_is_normalized_and_updates_shrink_with_depth(trace_run):
    shares = []
    for n, run in experiments.DEEPNORM_RUNS.items():
        frame = trace_run(run, measure=_trace, statistics=STATS)
        np.testing.assert_allclose(_rows(frame, "block"), 1.0, rtol=1e-3, err_msg=f"{run.key}: post-norm stream")
        alpha = run.model.residual_alpha
        assert alpha == pytest.approx((2 * n) ** 0.25)
        shares.append(np.mean((_rows(frame, "attn") ** 2 + _rows(frame, "ffn") ** 2) / alpha**2))
    slope = np.polyfit(np.log(experiments.DEPTHS), np.log(shares), 1)[0]
    assert abs(slope + 1.5) <= DEEPNORM_SLOPE_TOL, f"deepnorm: update share ~ L^{slope:.3f}, theory L^-1.5 ({shares})"


# --- identity at init --------------------------------------------------------------------------------


def _block_io(run: TransformerRun, seed: int, device: str) -> list[tuple[torch.Tensor, torch.Tensor]]:
    model, idx, _ = measure.build(run, seed, device)
    pairs = []
    with torch.no_grad():
        x = model.embed(idx)
        for block in model.blocks:
            y = block(x)
            pairs.append((x, y))
            x = y
    return pairs


@pytest.mark.parametrize("strategy", experiments.IDENTITY_STRATEGIES)
def test_blocks_are_the_identity_at_init(strategy, device, seed):
    run = experiments.IDENTITY_RUNS[strategy]
    for i, (x, y) in enumerate(_block_io(run, seed, device)):
        assert torch.equal(x, y), f"{run.key}: block {i} changes its input (max |y - x| = {(y - x).abs().max():.3g})"


@pytest.mark.parametrize("run", [
    pytest.param(experiments.depth_run("xavier_normal", 6), id="xavier_normal"),
    pytest.param(replace(experiments.IDENTITY_RUNS["fixup"],
                         model=replace(experiments.IDENTITY_RUNS["fixup"].model, norm_position="post")),
                 id="fixup-postnorm"),
])
def test_identity_check_can_fail(run, device, seed):
    """The same check on blocks that are not the identity: any other init, or fixup in a post-norm block
    (norm(x + 0) = norm(x))."""
    assert not any(torch.equal(x, y) for x, y in _block_io(run, seed, device))
