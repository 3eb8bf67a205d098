"""assert_representable on a plain torch model: what does not fit a format fails, ranked; what fits passes."""

from __future__ import annotations

import os
import re

import pytest
import torch
from torch import nn

from initcore import probe, zoo
from initcore.testing import assert_representable


def _model(first_std: float) -> nn.Module:
    g = torch.Generator().manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 8))
    with torch.no_grad():
        model[0].weight.normal_(0, first_std, generator=g)
        model[2].weight.normal_(0, 64**-0.5, generator=g)
    return model


def _frame(first_std: float, scale: float = 1.0):
    x = torch.randn(32, 64, generator=torch.Generator().manual_seed(1)) * scale
    return probe.trace(_model(first_std), x, statistics="precision")


def test_a_weight_drawn_too_small_for_fp8_fails_first_and_fits_once_scaled() -> None:
    frame = _frame(1e-4)  # |w| ~ 1e-4 < e4m3fn's smallest subnormal 2^-9: nearly all of it flushes
    with pytest.raises(pytest.fail.Exception) as failure:
        assert_representable(frame, "float8_e4m3fn", tensors=["weight"])
    lines = str(failure.value).splitlines()
    assert re.match(r"\d+ tensor\(s\) do not fit float8_e4m3fn \(none scaling", lines[0])
    assert lines[2].split()[:3] == ["0", "weight", "0.weight"]  # the worst first: the tiny weight
    assert_representable(frame, torch.float8_e4m3fn, tensors=["weight"], scaling="tensor")
    assert_representable(frame, "bfloat16")  # bfloat16 has float32's range
    assert_representable(_frame(0.125), "float8_e4m3fn", tensors=["weight"], flushed=0.02)


def test_an_input_past_fp16s_max_fails_on_overflow() -> None:
    frame = _frame(0.125, scale=1e5)
    with pytest.raises(pytest.fail.Exception, match=r"overflow 0.0\), worst first"):
        assert_representable(frame, "float16", tensors=["output"], flushed=1.0)
    assert_representable(frame, "float16", tensors=["output"], scaling="tensor")


def test_bad_input_lists_what_is_valid() -> None:
    frame = _frame(0.125)
    for kwargs, message in [({"dtype": "float9"}, "unknown format 'float9'; valid: float16, bfloat16"),
                            ({"scaling": "block"}, "unknown scaling 'block'; valid: none, tensor"),
                            ({"tensors": ["grads"]}, r"unknown tensors \['grads'\]; valid: output, output_grad"),
                            ({"flushed": 2.0}, r"flushed tolerance must be a fraction in \[0, 1\]")]:
        with pytest.raises(ValueError, match=message):
            assert_representable(frame, **{"dtype": "float16", **kwargs})
    with pytest.raises(ValueError, match="no precision table here"):
        assert_representable(probe.trace(_model(0.1), torch.randn(2, 64)), "float16")


@pytest.mark.skipif(zoo.missing() is not None and not os.environ.get("INITCORE_REQUIRE_ZOO"),
                    reason=f"{zoo.missing()}")
def test_hugging_face_gpt2_from_a_tiny_config() -> None:
    # Hugging Face's own init, N(0, 0.02^2): about 4% of each matrix flushes in e4m3fn unscaled (erf(2^-10 /
    # (0.02 sqrt 2))); bfloat16 and a per-tensor scale keep it
    zoo.torchvision_ops_shim()
    model, inputs = zoo.gpt2(0, n_layer=2, n_embd=64, n_head=4, vocab_size=128, batch=2, seq_len=8)
    frame = probe.trace(model, inputs, loss="random", statistics="precision")
    table = frame.attrs["precision"]
    one = table[(table["tensor"] == "weight") & (table["format"] == "bfloat16") & (table["scaling"] == "none")]
    assert sorted(one["param"]) == sorted(name for name, _ in model.named_parameters())  # each once; lm_head tied
    assert_representable(frame, "bfloat16")
    assert_representable(frame, "float8_e4m3fn", tensors=["weight"], scaling="tensor")
    with pytest.raises(pytest.fail.Exception) as failure:
        assert_representable(frame, "float8_e4m3fn", tensors=["weight"], flushed=0.02)
    assert "transformer.h.0.attn.c_attn.weight" in str(failure.value)
