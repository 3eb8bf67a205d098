"""Attention statistics of any model whose attention goes through ``F.scaled_dot_product_attention``.

While a trace runs its forward pass, ``SDPAWatch`` (a ``TorchFunctionMode``) sees every call of
``scaled_dot_product_attention`` (initcore's attention, ``nn.MultiheadAttention``, Hugging Face models'
"sdpa" attention, ...), rebuilds the pre-softmax logits from the call's own query, key, mask, causal
flag and scale, reduces them at once (``attention_raw``) and tells the trace which module made the
call (the innermost module on the Python stack), so no attention class needs to expose its logits.

What it cannot see: attention that computes its softmax by hand (``nn.MultiheadAttention`` with
``need_weights=True``, its inference fast path, eager attention implementations); such models give no
attention statistics.
"""

from __future__ import annotations

import contextlib
import math
import sys
from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from initcore.probe.reduce import Raw, Sink

_SDPA = torch._C._nn.scaled_dot_product_attention  # what F.scaled_dot_product_attention is
SDPA_ARGS = ("query", "key", "value", "attn_mask", "dropout_p", "is_causal", "scale", "enable_gqa")
ATTENTION_STATISTICS = ("logit_std", "attn_entropy", "attn_entropy_norm", "attn_max")


def logits(query: torch.Tensor, key: torch.Tensor, attn_mask: torch.Tensor | None = None, is_causal: bool = False,
           scale: float | None = None, enable_gqa: bool = False) -> torch.Tensor:
    """The pre-softmax logits (..., L, S) that ``scaled_dot_product_attention`` computes, -inf where masked.

    As torch documents the call: ``q @ k^T * scale`` (scale 1/sqrt(E) by default), a causal mask keeping
    the lower triangle, a boolean ``attn_mask`` keeping where True, a float mask added (entries at or
    below half the dtype's lowest value, the way Hugging Face masks, count as -inf); with fewer key heads
    than query heads (grouped-query attention) each key head serves its group.
    """
    q, k = query.detach().float(), key.detach().float()
    if q.dim() >= 3 and k.size(-3) != q.size(-3):
        k = k.repeat_interleave(q.size(-3) // k.size(-3), dim=-3)
    att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(q.size(-1)) if scale is None else scale)
    L, S = att.shape[-2:]
    if is_causal:
        att = att.masked_fill(~torch.ones(L, S, dtype=torch.bool, device=att.device).tril(), float("-inf"))
    if attn_mask is not None:
        mask = attn_mask.detach()
        if mask.dtype == torch.bool:
            att = att.masked_fill(~mask, float("-inf"))
        else:
            masked = mask <= torch.finfo(mask.dtype).min / 2
            att = torch.where(masked, float("-inf"), att + mask.float())
    return att


def attention_raw(att: torch.Tensor, sink: Sink) -> Raw:
    """[logit_std, attn_entropy, attn_entropy_norm, attn_max] of logits (..., L, S), -inf where masked.

    Torch ops on either sink: softmax and entropies are no job for numpy.
    """
    finite = torch.isfinite(att)
    n = finite.sum()
    mean = torch.where(finite, att, 0.0).sum() / n
    std = (torch.where(finite, att - mean, 0.0).square().sum() / (n - 1)).sqrt()  # no masked_select: no sync
    p = torch.softmax(att, dim=-1)
    entropy = -torch.special.xlogy(p, p).sum(-1)  # (..., L), 0 * log 0 = 0
    log_keys = (finite.sum(-1) * 1.0).log()  # a causal query t sees t + 1 keys
    several = log_keys > 0  # a query seeing one key has entropy 0 of a maximum 0: left out
    norm = torch.where(several, entropy / log_keys.clamp_min(1e-12), 0.0).sum() / several.sum()
    values = [std, entropy.mean(), norm, p.amax(-1).mean()]
    return Raw(_decode, sink.put(torch.stack(values).tolist() if sink.host else values))


def _decode(v: list[float]) -> dict[str, float]:
    return dict(zip(ATTENTION_STATISTICS, v, strict=True))


class SDPAWatch(TorchFunctionMode):
    """Calls ``on_call(module, logits)`` for every ``scaled_dot_product_attention`` call in its context.

    ``module`` is the innermost ``nn.Module`` on the Python stack whose ``forward`` made the call (one of
    ``modules``; None if there is none). ``nn.functional.multi_head_attention_forward`` calls SDPA from
    inside a torch function, where this mode is off; for that call alone the module-level name it looks
    up is pointed at a watcher.
    """

    def __init__(self, modules: set[int], on_call: Callable[[nn.Module | None, torch.Tensor], None]) -> None:
        super().__init__()
        self.modules, self.on_call = modules, on_call

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is _SDPA:
            self._seen(args, kwargs)
        elif func is F.multi_head_attention_forward:
            with self._inner_sdpa():
                return func(*args, **kwargs)
        return func(*args, **kwargs)

    def _seen(self, args, kwargs) -> None:
        call = dict(zip(SDPA_ARGS, args, strict=False))  # positional arguments, then keywords
        call.update(kwargs or {})
        self.on_sdpa(self._caller(), call)

    def on_sdpa(self, module: nn.Module | None, call: dict) -> None:
        """One call: the module that made it and its arguments by name (``SDPA_ARGS``). This one computes the
        logits for ``on_call``; a subclass records what it needs instead (the muP lint, the scale)."""
        att = logits(call["query"], call["key"], call.get("attn_mask"), bool(call.get("is_causal", False)),
                     call.get("scale"), bool(call.get("enable_gqa", False)))
        self.on_call(module, att)

    def _caller(self) -> nn.Module | None:
        frame = sys._getframe(2)
        while frame is not None:
            owner = frame.f_locals.get("self")
            if isinstance(owner, nn.Module) and id(owner) in self.modules:
                return owner
            frame = frame.f_back
        return None

    @contextlib.contextmanager
    def _inner_sdpa(self) -> Iterator[None]:
        def watched(*args, **kwargs):
            self._seen(args, kwargs)
            return _SDPA(*args, **kwargs)

        F.scaled_dot_product_attention = watched
        try:
            yield
        finally:
            F.scaled_dot_product_attention = _SDPA


__all__ = ["ATTENTION_STATISTICS", "SDPA_ARGS", "SDPAWatch", "attention_raw", "logits"]
