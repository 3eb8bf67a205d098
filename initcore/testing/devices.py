"""The devices a test may run on, defined once; CUDA cases are always collected and skipped without a GPU."""

from __future__ import annotations

import pytest
import torch

DEVICES = ("cpu", "cuda")
DEVICE_CHOICES = ("cpu", "cuda", "all")


def cuda_available() -> bool:
    return torch.cuda.is_available()


def requires_cuda() -> pytest.MarkDecorator:
    """Mark factory: skip with a reason where there is no CUDA device."""
    return pytest.mark.skipif(not cuda_available(), reason="needs a CUDA device; none is available here")


def device_params() -> list:
    """``pytest.param`` per device with stable ids, the CUDA one marked ``cuda`` and skipped without a GPU."""
    return [pytest.param("cpu", id="cpu"), pytest.param("cuda", id="cuda", marks=[pytest.mark.cuda, requires_cuda()])]
