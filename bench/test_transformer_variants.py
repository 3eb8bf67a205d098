"""7. The transformer variants of the models, each probed at a small size against its baseline and theory.

4 blocks, d_model 128, 4 heads, d_ff 512, batch 4 x seq 32, the "standard" strategy
(``experiments.VARIANT_RUNS``): pre-norm LayerNorm (the reference), post-norm, RMSNorm, GELU and SwiGLU
feed-forwards, ``nn.MultiheadAttention`` (packed in_proj) and causal attention. What holds for each:
- every feed-forward sees a normalized input (second moment 1 per token), so its output std is
  sqrt(s_out E[phi(a)^2]), a ~ N(0, s_in) with s = fan_in Var(w) (Xavier: s_in = 0.4, s_out = 1.6);
  SwiGLU's is sqrt(s_out E[silu(a)^2] s_in) (the gate times an independent linear unit, no biases);
- attention logits have std s_qk m2 with m2 the second moment of the attention input: 1 after a norm,
  the embedding's variance (0.01) for post-norm's first block, which sees the raw embedding;
- post-norm renormalizes the stream after every block: its std is 1 (LayerNorm, weight 1, bias 0);
- RMSNorm is LayerNorm without the centring; a token's features have mean ~0 at init, so its statistics
  lie within the LayerNorm stack's seed bands;
- with the per-chunk init of ``initcore.init`` (each of q, k, v drawn as its own (E, E) matrix, in order),
  the torch-MHA model computes exactly what the separate-projection model computes, to float rounding.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from initcore import baselines, experiments, theory
from initcore.testing import measure

EXPERIMENT = "transformer_variants"
RUNS = experiments.VARIANT_RUNS
REFERENCE = "prenorm"


def probe_rows(frame):
    return frame[frame["kind"] != "param"]


def frame_and_rows(name, trace_run, baseline):
    run = RUNS[name]
    return run, trace_run(run), baseline.rows(EXPERIMENT, run)


def ffn_std(run) -> float:
    cfg = run.model
    d, f = cfg.d_model, cfg.d_ff
    s_in, s_out = d * run.promised("mlp_in").variance, f * run.promised("mlp_out").variance
    if cfg.ffn == "swiglu":
        silu = theory.activation_fn("silu")
        return math.sqrt(s_out * s_in * theory.gaussian_expectation(lambda a: silu(a) ** 2, 0.0, s_in))
    phi = theory.activation_fn(cfg.ffn)
    return math.sqrt(s_out * theory.gaussian_expectation(lambda a: phi(a) ** 2, 0.0, s_in))


@pytest.mark.parametrize("name", list(RUNS))
def test_matches_baseline(name, trace_run, baseline):
    run = RUNS[name]
    baseline.check(EXPERIMENT, run, trace_run(run))


@pytest.mark.parametrize("name", list(RUNS))
def test_branches_match_theory(name, trace_run, baseline):
    """Pooled over the blocks: feed-forward output std (relu 0.566, gelu 0.483, swiglu 0.280) and the
    geometric mean of the per-block logit std predictions, within K seed spreads of the baseline."""
    run, frame, rows = frame_and_rows(name, trace_run, baseline)
    cfg = run.model
    s_qk = cfg.d_model * math.sqrt(run.promised("qkv", part="q").variance * run.promised("qkv", part="k").variance)
    m2 = np.ones(cfg.n_layers)
    if cfg.norm_position == "post":
        m2[0] = frame.loc[frame["module"] == "embed.weight", "param_std"].item() ** 2
    logit = float(np.exp(np.mean(np.log(s_qk * m2))))
    predicted = pd.DataFrame({"layer": ["blocks.*.ffn", "blocks.*.attn"], "statistic": ["act_std", "logit_std"],
                              "value": [ffn_std(run), logit]})
    measured = measure.tidy(frame, {"ffn": ("act_std",), "attn": ("logit_std",)})
    measured = measured[measured["layer"].str.startswith("blocks.*")]
    measure.assert_theory(measured, predicted, rows, what=f"{run.key}, pooled over blocks")


def test_postnorm_renormalizes_the_stream(trace_run):
    """Each post-norm block ends in LayerNorm (weight 1, bias 0): the stream std is 1 after every block,
    up to LayerNorm's eps (var / (var + 1e-5)) and the n/(n-1) of the unbiased std: within 1e-3."""
    frame = trace_run(RUNS["postnorm"])
    stream = frame.loc[frame["kind"] == "block", "act_std"].to_numpy()
    assert np.abs(stream - 1).max() < 1e-3, stream
    prenorm = trace_run(RUNS[REFERENCE])
    assert prenorm.loc[prenorm["kind"] == "block", "act_std"].iloc[-1] > 1.3  # pre-norm's stream grows


def test_torch_mha_computes_what_sdpa_computes(trace_run):
    """The same draws, the same function: every probe statistic agrees with the separate-projection
    model's within float tolerance (the helper and tolerances of the CUDA-vs-CPU check)."""
    mha, sdpa = probe_rows(trace_run(RUNS["torch_mha"])), probe_rows(trace_run(RUNS[REFERENCE]))
    measure.assert_agree(mha, sdpa, measure.TRANSFORMER_STATISTICS, what="torch_mha against sdpa, same seed")


def test_rmsnorm_within_layernorm_bands(trace_run, baseline):
    """RMSNorm's stream, branch and attention statistics fall inside the LayerNorm stack's baseline bands
    (gradient norms are left out: RMSNorm has no bias, so a block has fewer parameters)."""
    frame = trace_run(RUNS["rmsnorm"])
    reference = RUNS[REFERENCE]
    rows = baseline.rows(EXPERIMENT, reference)
    stats = {"attn": ("act_std", "logit_std", "attn_entropy_norm"), "ffn": ("act_std",), "block": ("act_std",)}
    measured = measure.tidy(frame, stats).assign(config=reference.key)
    keys = set(zip(measured["layer"], measured["statistic"], strict=True))
    rows = rows[[(lay, st) in keys for lay, st in zip(rows["layer"], rows["statistic"], strict=True)]]
    result = baselines.compare(measured, rows)
    assert result["ok"].all(), result[~result["ok"]].to_string(index=False)
