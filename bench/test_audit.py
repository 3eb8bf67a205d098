"""The audit (``initcore.audit``): does it name the init a model really has, and raise no false alarm?

- Identification: every formula rule of the catalogue, drawn with torch.nn.init's own functions, on square,
  4:1 and 1:4 matrices, a conv kernel and an embedding (4096 entries or more), is named correctly (up to the
  rules that draw the same distribution at that shape, listed) in at least 99% of the cases.
- Sensitivity: a scale 5% off its rule on a 65 536-entry matrix fails the expectation.
- Real models: Hugging Face GPT-2, Llama and BERT (tiny configs, no download) and torchvision's ResNet-18 and
  ViT are named group by group as their libraries document (read from their ``_init_weights`` and
  ``torchvision/models/*.py``), with no flag; initcore's own models under every strategy with no flag. The
  default run takes the run's ``--seed``; ``-m large`` takes 20 seeds (the false-alarm rate per parameter is
  below 1.1e-6 by construction, ``auditing.fit``: 20 seeds of these ~600 parameters raise a false flag with
  probability below 2%).
- Cost (``--benchmark-only``): auditing a GPT-2-small-shaped model (124M parameters) against building it.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
import time

import pytest
import torch
from torch import nn

from initcore import audit, auditing, init, zoo
from initcore.auditing import catalogue as C
from initcore.auditing import fit as F
from initcore.auditing.layout import layouts
from initcore.init import strategies
from initcore.models import MLP, Transformer

MISSING = zoo.missing()
if MISSING and os.environ.get("INITCORE_REQUIRE_ZOO"):  # set by .ci/run: in CI these tests must run
    pytest.fail(f"INITCORE_REQUIRE_ZOO is set and the real models cannot run: {MISSING}", pytrace=False)
needs_zoo = pytest.mark.skipif(MISSING is not None, reason=MISSING or "")

# --- identification ----------------------------------------------------------------------------------------

SHAPES = {  # module -> its weight: (out, in) 128x128, 4:1, 1:4; a conv kernel; an embedding table
    "square": lambda: nn.Linear(128, 128), "4:1": lambda: nn.Linear(64, 256), "1:4": lambda: nn.Linear(256, 64),
    "conv": lambda: nn.Conv2d(16, 32, 3), "embedding": lambda: nn.Embedding(512, 16),
}
GAIN_ARGS = {"linear": ("linear", 0), "relu": ("relu", 0), "tanh": ("tanh", 0), "selu": ("selu", 0),
             "leaky_relu": ("leaky_relu", 0.01), "a=sqrt(5)": ("leaky_relu", math.sqrt(5))}


def _draws() -> dict[str, object]:
    """Each formula rule of the catalogue as torch.nn.init draws it: rule name -> fill(w, L, block)."""
    out = {"zeros": lambda w: nn.init.zeros_(w), "ones": lambda w: nn.init.ones_(w)}
    for gain_name, (nonlinearity, a) in GAIN_ARGS.items():
        g = nn.init.calculate_gain(nonlinearity, a)
        sfx = "" if gain_name == "linear" else f"({gain_name})"
        out[f"xavier_uniform{sfx}"] = lambda w, g=g: nn.init.xavier_uniform_(w, gain=g)
        out[f"xavier_normal{sfx}"] = lambda w, g=g: nn.init.xavier_normal_(w, gain=g)
        out[f"orthogonal{sfx}"] = lambda w, g=g: nn.init.orthogonal_(w, g)
        for mode in ("fan_in", "fan_out"):
            for fam in ("uniform", "normal"):
                fill = getattr(nn.init, f"kaiming_{fam}_")
                if gain_name == "linear" and mode == "fan_in":
                    name = f"lecun_{fam}"
                else:
                    args = ", ".join(x for x in ("" if mode == "fan_in" else mode,
                                                 "" if gain_name == "relu" else gain_name) if x)
                    name = f"kaiming_{fam}({args})" if args else f"kaiming_{fam}"
                out[name] = lambda w, fill=fill, mode=mode, nl=nonlinearity, a=a: fill(w, a=a, mode=mode,
                                                                                      nonlinearity=nl)
    for std in C.STDS:
        out[f"normal({std:g})"] = lambda w, std=std: nn.init.normal_(w, 0.0, std)
        for cut in C.CUTS:
            out[f"trunc_normal({std:g}, {cut:g}σ)"] = lambda w, std=std, cut=cut: nn.init.trunc_normal_(
                w, 0.0, std, -cut * std, cut * std)
    for std in C.DEPTH_STDS:  # L = 1: the single-module models below are one block deep
        out[f"normal({std:g}/sqrt(2L))"] = lambda w, std=std: nn.init.normal_(w, 0.0, std / math.sqrt(2))
    return out


DRAWS = _draws()


def _layout_targets(module: nn.Module) -> dict[str, list]:
    """Every catalogue rule's targets for the module's weight: at the layer's fans and the stored tensor's."""
    lay = next(lay for lay, _ in layouts(module) if lay.attr == "weight")
    sites = [C.Site(lay, lay.fan_in, lay.fan_out, 1), C.Site(lay, lay.stored_fan_in, lay.stored_fan_out, 1)]
    out = {}
    for rule in C.catalogue():
        found = []
        for site in sites:
            try:
                t = rule(site)
            except (ValueError, ZeroDivisionError):
                t = None
            if t is not None:
                found.append(t)
        out.setdefault(rule.name, []).extend(found)
    return out


def _same_answer(a, b, m: int) -> bool:
    """Two targets the audit cannot be asked to tell apart from m entries: one family (a normal and its cut are
    two) and stds within twice the scale test's window (2 x 5.5 standard errors)."""
    if a.family != b.family:
        return False
    if a.family == "constant" or a.family == "orthogonal":
        return math.isclose(a.scale, b.scale, rel_tol=1e-3) and (a.family == "constant" or a.n == b.n)
    window = 2 * F.Z_SCALE * (F.scale_stderr(a.family, m, a.n_sigma) + F.REL_FLOOR)
    return abs(a.std / b.std - 1) <= window and (a.family != "trunc_normal" or a.n_sigma == b.n_sigma)


def test_every_formula_rule_is_named_on_every_shape(seed):
    """A confusion matrix over rules x shapes: >= 99% named right, up to the pairs listed as the same answer."""
    wrong, total, same = [], 0, set()
    gen_seed = seed
    for shape, make in SHAPES.items():
        module = make()
        targets = _layout_targets(module)
        m = min(module.weight.numel(), F.SAMPLE_MAX)
        for truth, fill in DRAWS.items():
            torch.manual_seed(gen_seed)
            gen_seed += 1
            with torch.no_grad():
                fill(module.weight)
                if getattr(module, "bias", None) is not None:
                    nn.init.zeros_(module.bias)
            row = audit(module, seed=seed).iloc[0]
            true_t = targets[truth]
            named_t = targets.get(row["rule"], [])
            total += 1
            ok = any(_same_answer(a, b, m) for a in true_t for b in named_t)
            if ok and row["rule"] != truth:
                same.add((shape, *sorted((truth, row["rule"]))))
            if not ok:
                wrong.append(f"{shape}: {truth} named {row['rule'] or '(none)'} ({row['fit']})")
    print(f"\n{total - len(wrong)} of {total} named right; the same answer at their shape: {len(same)} pairs, e.g. "
          + "; ".join(" = ".join(p[1:]) + f" ({p[0]})" for p in sorted(same)[:6]))
    assert len(wrong) <= 0.01 * total, "\n".join(wrong)


@pytest.mark.parametrize("rule,fill", [
    ("xavier_uniform", lambda w, k: nn.init.xavier_uniform_(w, gain=k)),
    ("kaiming_normal", lambda w, k: nn.init.kaiming_normal_(w).mul_(k)),
    ("trunc_normal(0.02, 3σ)", lambda w, k: nn.init.trunc_normal_(w, 0, 0.02 * k, -0.06 * k, 0.06 * k)),
    ("orthogonal", lambda w, k: nn.init.orthogonal_(w, gain=k)),
])
def test_a_scale_5_percent_off_its_rule_fails_the_expectation(rule, fill, seed):
    # 65 536 entries: a normal's std is known to 0.28%, a uniform's to 0.17% (auditing.fit): 5% is 18 or more
    # standard errors, past the test's 5.5; an orthogonal gain to float precision.
    torch.manual_seed(seed)
    layer = nn.Linear(256, 256, bias=False)
    for k, flagged in ((1.0, False), (1.05, True), (0.95, True)):
        with torch.no_grad():
            fill(layer.weight, k)
        row = audit(layer, expect=rule).iloc[0]
        assert (row["flags"] == "expected") == flagged, (k, row["evidence"])


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
