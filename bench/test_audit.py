"""The audit (``initcore.audit``): does it name the init a model really has, and raise no false alarm?

(Identification of every rule on every shape and the 5%-off sensitivity are properties of the audit alone:
tests/auditing/test_identification.py.)
- Real models: Hugging Face GPT-2, Llama and BERT (tiny configs, no download) and torchvision's ResNet-18 and
  ViT are named group by group as their libraries document (read from their ``_init_weights`` and
  ``torchvision/models/*.py``), with no flag; initcore's own models under every strategy with no flag. The
  default run takes the run's ``--seed``; ``-m large`` takes 20 seeds (the false-alarm rate per parameter is
  below 1.1e-6 by construction, ``auditing.fit``: 20 seeds of these ~600 parameters raise a false flag with
  probability below 2%).
- Cost (``--benchmark-only``): auditing a GPT-2-small-shaped model (124M parameters) against building it.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
import torch
from torch import nn

from initcore import audit, auditing, init, zoo
from initcore.init import strategies
from initcore.models import MLP, Transformer

MISSING = zoo.missing()
if MISSING and os.environ.get("INITCORE_REQUIRE_ZOO"):  # set by .ci/run: in CI these tests must run
    pytest.fail(f"INITCORE_REQUIRE_ZOO is set and the real models cannot run: {MISSING}", pytrace=False)
needs_zoo = pytest.mark.skipif(MISSING is not None, reason=MISSING or "")

# --- real models and initcore's own ------------------------------------------------------------------------

# What each library's own code draws, group by group (the audit's names; equal rules at a shape named by what
# explains the module type's parameters together). Sources: transformers' GPT2PreTrainedModel._init_weights
# (N(0, initializer_range = 0.02), c_proj N(0, 0.02/sqrt(2 n_layer))), LlamaPreTrainedModel and
# BertPreTrainedModel._init_weights (N(0, 0.02), biases 0, norms 1/0), torchvision resnet.py (kaiming_normal_
# mode="fan_out", nonlinearity="relu"; BatchNorm 1/0; fc left at nn.Linear's default) and vision_transformer.py
# (conv_proj trunc_normal_(std=sqrt(1/fan_in)) with torch's absolute +-2 cut, i.e. lecun_normal in effect; MLP
# Xavier uniform, biases N(0, 1e-6); pos_embedding N(0, 0.02); class token and head 0; nn.MultiheadAttention's
# own).
DOCUMENTED: dict[str, dict[str, str]] = {
    "gpt2": {"*wte.weight": "normal(0.02)", "*wpe.weight": "normal(0.02)", "*ln_*": "torch_default",
             "*c_attn.weight": "normal(0.02)", "*c_fc.weight": "normal(0.02)",
             "*c_proj.weight": "normal(0.02/sqrt(2L))", "*.bias": "zeros"},
    "llama": {"*norm.weight": "ones", "*.weight": "normal(0.02)"},
    "bert": {"*LayerNorm.*": "torch_default", "*.bias": "zeros", "*.weight": "normal(0.02)"},
    "resnet18": {"*conv*.weight": "kaiming_normal(fan_out)", "*downsample.0.weight": "kaiming_normal(fan_out)",
                 "*bn*": "torch_default", "*downsample.1.*": "torch_default", "fc.*": "torch_default"},
    "vit": {"class_token": "zeros", "conv_proj.weight": "lecun_normal", "conv_proj.bias": "zeros",
            "encoder.pos_embedding": "normal(0.02)", "*ln*": "torch_default", "*self_attention.*": "torch_default",
            "*mlp.*.weight": "xavier_uniform", "*mlp.*.bias": "normal(1e-06)", "heads.*": "zeros"},
}
REAL = {"gpt2": zoo.gpt2, "llama": zoo.llama, "bert": zoo.bert, "resnet18": zoo.resnet18, "vit": zoo.vit}


def _check_documented(name: str, seed: int) -> None:
    import fnmatch

    model, _ = REAL[name](seed)
    frame = audit(model, seed=seed)
    flagged = auditing.flagged(frame)
    assert flagged.empty, flagged[["name", "flags", "evidence"]].to_string()
    for param, rule in zip(frame["name"], frame["rule"], strict=True):
        expected = next((r for pattern, r in DOCUMENTED[name].items() if fnmatch.fnmatchcase(param, pattern)), None)
        assert expected is not None, f"{name}: {param} is in no documented group"
        assert rule == expected, f"{name}: {param} is {rule or '(no rule)'}, documented {expected}"


@needs_zoo
@pytest.mark.parametrize("name", list(REAL))
def test_real_models_have_their_documented_init_and_no_flag(name, seed):
    _check_documented(name, seed)


@needs_zoo
@pytest.mark.large
@pytest.mark.parametrize("name", list(REAL))
def test_real_models_raise_no_flag_at_20_seeds(name):
    for s in range(20):
        _check_documented(name, s)


def _own_models(strategy: str) -> list[nn.Module]:
    cfg = strategies.config_for(strategy, Transformer(d_model=64, n_heads=4, d_ff=256, n_layers=3,
                                                      vocab_size=256).config)
    out = [Transformer.from_config(cfg) if hasattr(Transformer, "from_config") else Transformer(**vars(cfg))]
    if strategies.get(strategy)[0].config is None:
        out.append(MLP(128, 128, 4))
    return out


OWN = [n if n != "normal:STD" else "normal:0.01" for n in strategies.names()]


def _check_own(strategy: str, seed: int) -> None:
    for model in _own_models(strategy):
        init.apply(model, strategy, generator=torch.Generator().manual_seed(seed))
        frame = audit(model, expect=strategy, seed=seed)
        flagged = auditing.flagged(frame)
        assert flagged.empty, f"{strategy} on {type(model).__name__}:\n" + \
            flagged[["name", "flags", "evidence"]].to_string()


@pytest.mark.parametrize("strategy", OWN)
def test_initcores_models_under_every_strategy_raise_no_flag(strategy, seed):
    _check_own(strategy, seed)


@pytest.mark.large
@pytest.mark.parametrize("strategy", OWN)
def test_initcores_models_raise_no_flag_at_20_seeds(strategy):
    for s in range(20):
        _check_own(strategy, s)


# --- cost ----------------------------------------------------------------------------------------------------


# Peak memory in a fresh process: a model built, the high-water mark reset to the RSS (Linux: 5 to
# /proc/self/clear_refs), the audit, then VmHWM over the RSS before. In the test's own process, memory that earlier
# models freed stays mapped and the audit reuses it, so nothing would seem to grow.
MEMORY = """
import sys
from initcore import audit, zoo
transformers = zoo._import("transformers")
model = transformers.GPT2LMHeadModel(transformers.GPT2Config())
def status(field):
    with open("/proc/self/status") as f:
        return int(next(line for line in f if line.startswith(field + ":")).split()[1]) * 1024
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")
before = status("VmRSS")
audit(model)
print(status("VmHWM") - before, sum(p.numel() * p.element_size() for p in model.parameters()))
"""


@needs_zoo
def test_audit_of_a_124m_model_costs_at_most_twice_its_build(benchmark):
    """GPT-2 small's shape (12 layers, d 768, 50257 tokens): ``GPT2LMHeadModel(config)`` draws every parameter;
    the audit reads each once (a sum), samples 65 536 entries of the large ones and 32 rows for the Gram test.
    Timed back to back, three pairs, the median ratio; the audit's own peak memory is the process's high-water
    mark (VmHWM, reset to the current RSS just before) over its RSS before the audit."""
    transformers = zoo._import("transformers")
    config = transformers.GPT2Config()
    ratios = []
    for _ in range(3):
        t0 = time.perf_counter()
        model = transformers.GPT2LMHeadModel(config)
        t1 = time.perf_counter()
        audit(model)
        t2 = time.perf_counter()
        ratios.append((t2 - t1) / (t1 - t0))
        del model
    model = transformers.GPT2LMHeadModel(config)
    benchmark.pedantic(audit, args=(model,), rounds=1, iterations=1)
    if not os.path.exists("/proc/self/clear_refs"):
        pytest.skip("the peak memory needs Linux's /proc/self/clear_refs")
    done = subprocess.run([sys.executable, "-c", MEMORY], capture_output=True, text=True, timeout=300, check=True)
    grown, size = map(int, done.stdout.split()[-2:])
    ratio = sorted(ratios)[1]
    benchmark.extra_info.update({"audit_over_build": round(ratio, 3), "peak_growth_bytes": grown, "model_bytes": size})
    print(f"\naudit / build: {ratio:.2f} (pairs: {', '.join(f'{r:.2f}' for r in ratios)}); peak memory grew by "
          f"{grown / 2**20:.0f} MiB over a {size / 2**20:.0f} MiB model ({grown / size:.1%})")
    assert ratio <= 2.0
    assert grown <= 0.2 * size  # within 1.2 times the model's own
