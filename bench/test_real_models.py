"""Real models initcore did not write, built by their own libraries with random weights (``initcore.zoo``,
``experiments.ZOO_RUNS``): Hugging Face transformers' GPT-2 (4 blocks, n_embd 128, 4 heads, vocabulary 512)
and torchvision's ResNet-18 (``weights=None``, 4 images of 3 x 32 x 32), each traced through the generic
probe, checked for health and against its baseline (``baselines/real_models.csv``), and held to what its
library's own init promises.

GPT-2, as transformers 5.17.0's ``GPT2PreTrainedModel._init_weights`` states it: every ``Conv1D`` weight
(c_attn, c_fc) and both embeddings (wte, wpe) N(0, initializer_range^2), initializer_range = 0.02; then
each block's two residual projections (attn.c_proj, mlp.c_proj) N(0, (initializer_range / sqrt(2 n_layer))^2),
"2 residual paths per block"; Conv1D biases 0, LayerNorm weight 1 and bias 0; lm_head is wte (tied). Its
consequence in the trace: block 0's attention logits have std n_embd * initializer_range^2 (q and k are
LayerNorm'd tokens, second moment ~1, times independent N(0, 0.02^2) matrices, over sqrt(d_head)).
initcore's own ``gpt2`` strategy with ``zoo.GPT2_ROLES`` draws from those same distributions, and a
GPT-2 initialized by it traces inside the bands of transformers' own.

ResNet-18, as torchvision 0.28's ``ResNet.__init__`` (models/resnet.py) states it: every Conv2d
``kaiming_normal_(mode="fan_out", nonlinearity="relu")``, N(0, 2 / fan_out) with fan_out = out_channels *
kh * kw (the convs have no bias); every BatchNorm weight 1 and bias 0, the last BatchNorm of each block
included (``zero_init_residual`` is False by default); the fc keeps ``nn.Linear``'s own init, weight and
bias U(-1/sqrt(512), 1/sqrt(512)). Its consequence in training mode: every BatchNorm output has, per
channel, batch mean 0 and batch variance v / (v + eps) (v its input's), i.e. 1.

Distribution checks as tests/init/test_strategies.py: a Kolmogorov-Smirnov test against the exact target,
p > 1e-4, and the same sample rejects a target whose scale is 10% off (sample sizes are chosen for it:
a 10% scale change is a KS distance of 0.023, resolved at p < 1e-4 from ~2e4 numbers on).
"""

from __future__ import annotations

import copy
import functools
import math
import os

import numpy as np
import pandas as pd
import pytest
import torch
from scipy import stats
from torch import nn

from initcore import baselines, experiments, zoo
from initcore.testing import assert_healthy, measure

MISSING = zoo.missing()
if MISSING and os.environ.get("INITCORE_REQUIRE_ZOO"):  # set by .ci/run: in CI these tests must run
    pytest.fail(f"INITCORE_REQUIRE_ZOO is set and the real models cannot run: {MISSING}", pytrace=False)
if MISSING:
    pytest.skip(f"the real models: {MISSING}", allow_module_level=True)

EXPERIMENT = "real_models"


RUNS = experiments.ZOO_RUNS
P_MIN = 1e-4  # PyTorch's init tests use this threshold
INITIALIZER_RANGE = 0.02  # GPT2Config's default, which the zoo's config keeps
BN_EPS = 1e-5  # nn.BatchNorm2d's default eps, torchvision's choice
# Draws per KS test: a 10% scale change is a KS distance of 0.023, against a critical 2.23/sqrt(n) at
# p = 1e-4; at n = 2^15 (critical 0.012) it is rejected with room (each test asserts that power), and a KS
# test of 2^15 numbers costs ~10 ms where the 2^18 of a pooled group would cost ~90.
SAMPLE = 2**15


def _ks(sample: np.ndarray, cdf: str, args: tuple):
    """scipy's one-sample KS test with the asymptotic Kolmogorov p-value: its exact one costs ~8 ms a test at
    these sizes, and from a thousand draws on the two agree far below the 1e-4 threshold's precision."""
    return stats.kstest(sample, cdf, args=args, method="asymp")


def _normal(sample: np.ndarray, std: float, what: str) -> None:
    """KS against N(0, std^2), and power: the sample rejects N(0, (1.1 std)^2)."""
    assert _ks(sample, "norm", args=(0, std)).pvalue > P_MIN, f"{what}: not N(0, {std:.4g}^2)"
    assert _ks(sample, "norm", args=(0, 1.1 * std)).pvalue < P_MIN, f"{what}: too few draws to tell 10%"


def _uniform(sample: np.ndarray, bound: float, what: str) -> None:
    assert _ks(sample, "uniform", args=(-bound, 2 * bound)).pvalue > P_MIN, f"{what}: not U(+-{bound:.4g})"
    assert _ks(sample, "uniform", args=(-1.1 * bound, 2.2 * bound)).pvalue < P_MIN, f"{what}: no power"


@functools.cache
def built(name: str, seed: int) -> tuple[nn.Module, object]:
    """``RUNS[name]``'s model and inputs at ``seed``, built once for the tests below that only read its
    parameters or run it on a copy (a ResNet-18 build, 11.7M draws, is ~0.3 s)."""
    return RUNS[name].factory(seed)


def _sample(values: torch.Tensor, size: int = SAMPLE) -> np.ndarray:
    """About ``size`` of ``values``, evenly strided over all of them: any fixed subset of i.i.d. draws is a
    sample of their distribution, and the stride reaches every block of a pooled group."""
    flat = values.detach().flatten()
    return flat[:: max(1, flat.numel() // size)].double().numpy()


def _pooled(model: nn.Module, suffix: str) -> np.ndarray:
    """A sample of every parameter whose name ends in ``suffix``, as one group (blocks are alike)."""
    found = [p.detach().flatten() for n, p in model.named_parameters() if n.endswith(suffix)]
    assert found, f"no parameter ends in {suffix!r}"
    return _sample(torch.cat(found))


# Each group of GPT-2's weights and the std transformers' _init_weights gives it (n_layer blocks).
def gpt2_promise(n_layer: int) -> dict[str, float]:
    scaled = INITIALIZER_RANGE / math.sqrt(2 * n_layer)  # "2 residual paths (attention and MLP) per block"
    return {"wte.weight": INITIALIZER_RANGE, "wpe.weight": INITIALIZER_RANGE, "attn.c_attn.weight": INITIALIZER_RANGE,
            "mlp.c_fc.weight": INITIALIZER_RANGE, "attn.c_proj.weight": scaled, "mlp.c_proj.weight": scaled}


def _constants_of_gpt2(model: nn.Module) -> None:
    for name, p in model.named_parameters():
        if name.endswith("bias"):
            assert (p == 0).all(), f"{name} is not 0"
        elif ".ln_" in name:
            assert (p == 1).all(), f"{name} is not 1"
    assert model.lm_head.weight is model.transformer.wte.weight  # tied, not a copy


# --- every real model: traced, healthy, against its baseline --------------------------------------------------


@pytest.mark.parametrize("name", ["gpt2", "resnet18"])
def test_matches_baseline(name, trace_run, baseline):
    baseline.check(EXPERIMENT, RUNS[name], trace_run(RUNS[name]))


# ResNet-18's conv1 weight gradient under the random-projection loss measured 8.2, 10.1, 19.5, 8.0, 20.4, 7.7,
# 20.5, 6.7, 15.0, 10.6 at seeds 0-9 (2026-12-07): the notebook's absolute bound of 10, written for its MLP's mean
# loss, flagged this healthy model at 6 seeds in 10. A gradient's scale is the loss's here (a fixed random
# projection of 1000 logits), not the init's; the 16-seed bands of test_matches_baseline hold every grad_norm.
ALLOWED = {"resnet18": ("exploding_gradients",)}


@pytest.mark.parametrize("name", list(RUNS))
def test_healthy_at_init(name, trace_run):
    """No symptom of initcore.diagnose in any of them: their libraries' inits are sound at these sizes (every
    default row: the residual stream and the activation modules included)."""
    assert_healthy(trace_run(experiments.ZOO_RUNS[name]), allow=ALLOWED.get(name, ()))


# --- GPT-2: what transformers' init promises, and initcore's gpt2 strategy ----------------------------------


def test_gpt2_init_is_what_transformers_promises(seed):
    model, _ = built("gpt2", seed)
    assert model.config.initializer_range == INITIALIZER_RANGE
    for suffix, std in gpt2_promise(model.config.n_layer).items():
        _normal(_pooled(model, suffix), std, f"transformers' {suffix}")
    _constants_of_gpt2(model)


def test_initcore_gpt2_draws_what_transformers_draws(seed):
    """initcore's ``gpt2`` with GPT2_ROLES (Conv1D weights transposed, c_attn packed q, k, v) on the same
    model: each group against transformers' stated distribution, and against transformers' own draws
    (two-sample KS); the depth L = 4 comes from the model's repeated blocks (transformer.h)."""
    hf, _ = built("gpt2", seed)
    ours, _ = built("gpt2_initcore", seed)
    for suffix, std in gpt2_promise(hf.config.n_layer).items():
        a, b = _pooled(ours, suffix), _pooled(hf, suffix)
        _normal(a, std, f"initcore's {suffix}")
        assert stats.ks_2samp(a, b, method="asymp").pvalue > P_MIN, f"{suffix}: initcore's and transformers' differ"
    _constants_of_gpt2(ours)


def test_initcore_gpt2_traces_within_transformers_bands(trace_run, baseline):
    """The statistics of the GPT-2 that initcore initialized lie in the baseline bands of transformers' own
    init (K seed spreads): the same distributions, seen through the network."""
    hf, ours = RUNS["gpt2"], RUNS["gpt2_initcore"]
    rows = baseline.rows(EXPERIMENT, hf)
    measured = measure.tidy(trace_run(ours), measure.statistics_for(ours)).assign(config=hf.key)
    result = baselines.compare(measured, rows)
    assert result["ok"].all(), result[~result["ok"]].to_string(index=False)


def test_gpt2_attention_logits_follow_the_init(trace_run, baseline):
    """Block 0's pre-softmax logit std is n_embd * initializer_range^2 (= 0.0512): q = LN(x) W_q and
    k = LN(x) W_k with independent N(0, 0.02^2) entries and LayerNorm'd rows of second moment ~1, so each
    of the d_head products has variance (n_embd 0.02^2)^2 and the sum over sqrt(d_head) keeps it. The
    attention rows exist at all because the probe saw transformers' scaled_dot_product_attention calls."""
    run = RUNS["gpt2"]
    attn = trace_run(run).query("kind == 'attn'")
    assert list(attn["module"]) == [f"transformer.h.{i}.attn:sdpa" for i in range(experiments.ZOO_GPT2["n_layer"])]
    frame = trace_run(run)
    layer = "transformer.h.0.attn:sdpa"
    predicted = pd.DataFrame({"layer": [layer], "statistic": ["logit_std"],
                              "value": [experiments.ZOO_GPT2["n_embd"] * INITIALIZER_RANGE**2]})
    measured = measure.tidy(frame, {"attn": ("logit_std",)})
    rows = baseline.rows(EXPERIMENT, run)
    measure.assert_theory(measured[measured["layer"] == layer], predicted, rows,
                          what=f"{run.key}: block 0 logit std")


# --- ResNet-18: what torchvision's init promises ---------------------------------------------------------------


def test_resnet_init_is_what_torchvision_promises(seed):
    """He-normal with fan_out for every conv: each conv's weights (a sample of 2^14) against N(0, 2/fan_out),
    rejecting fan_in's std wherever it differs (conv1 147 vs 3136, the stride-2 convs and 1x1 downsamples by
    sqrt(2)); the convs' standardized weights together reject a 10% larger std. BatchNorm 1 and 0
    everywhere; the fc torch's Linear default."""
    model, _ = built("resnet18", seed)
    standardized = []
    for name, m in model.named_modules():
        if isinstance(m, nn.Conv2d):
            assert m.bias is None
            w = m.weight.detach().double()
            fan_out, fan_in = w.shape[0] * w[0, 0].numel(), w.shape[1] * w[0, 0].numel()
            sample = _sample(w, 2**14)
            std = math.sqrt(2 / fan_out)
            assert _ks(sample, "norm", args=(0, std)).pvalue > P_MIN, f"{name}: not N(0, 2/fan_out)"
            if fan_in != fan_out:  # conv1 (147 vs 3136), the stride-2 convs and the 1x1 downsamples
                assert _ks(sample, "norm", args=(0, math.sqrt(2 / fan_in))).pvalue < P_MIN, name
            standardized.append(sample[: 2**12] / std)
        elif isinstance(m, nn.BatchNorm2d):
            assert (m.weight == 1).all() and (m.bias == 0).all(), f"{name}: BatchNorm not weight 1, bias 0"
    _normal(np.concatenate(standardized), 1.0, "every conv, standardized by sqrt(2/fan_out)")
    bound = 1 / math.sqrt(model.fc.in_features)  # kaiming_uniform_(a=sqrt(5)): gain sqrt(1/3), bound 1/sqrt(fan_in)
    _uniform(_sample(model.fc.weight), bound, "fc.weight")
    fc_bias = model.fc.bias.detach().double().numpy()  # 1000 draws: its range, not a KS with power
    assert np.abs(fc_bias).max() <= bound and _ks(fc_bias, "uniform", args=(-bound, 2 * bound)).pvalue > P_MIN


def test_resnet_batchnorm_normalizes_every_channel_in_training(device, seed):
    """In training mode each BatchNorm output channel has batch mean 0 and biased variance v / (v + eps),
    v the variance of its input channel: weight 1, bias 0 is the identity after normalizing. Tolerances:
    float32 rounding of a reduction over <= 4096 numbers (1e-5 relative), and the mean 1e-5 absolute."""
    model, x = built("resnet18", seed)
    model, x = copy.deepcopy(model).to(device).train(), x.to(device)
    seen: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def keep(name):
        return lambda m, args, out: seen.__setitem__(name, (args[0].detach().double(), out.detach().double()))

    handles = [m.register_forward_hook(keep(n)) for n, m in model.named_modules() if isinstance(m, nn.BatchNorm2d)]
    with torch.no_grad():
        model(x)
    for h in handles:
        h.remove()
    assert len(seen) == 20  # bn1, 2 per BasicBlock x 8, 3 downsamples
    for name, (inp, out) in seen.items():
        v = inp.var(dim=(0, 2, 3), unbiased=False)
        torch.testing.assert_close(out.mean(dim=(0, 2, 3)), torch.zeros_like(v), rtol=0, atol=1e-5, msg=name)
        torch.testing.assert_close(out.var(dim=(0, 2, 3), unbiased=False), v / (v + BN_EPS), rtol=1e-5, atol=1e-6,
                                   msg=name)
