"""Transformer pieces in dependency order: norm, attention, feed-forward, block, stack.

Each module declares the role of every parameter it owns (see ``initcore.models.roles``), so init
strategies never guess from names. Dropout defaults to 0: statistics at init are then deterministic
given the weights and inputs (the notebook left dropout 0.1 active while measuring).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from initcore.models.mlp import _positive
from initcore.models.points import Measure

NORMS = ("layernorm", "rmsnorm")
NORM_POSITIONS = ("pre", "post")
FFNS = ("relu", "gelu", "swiglu")
ATTENTIONS = ("sdpa", "torch_mha")
ATTN_SCALES = ("1/sqrt(d_head)", "1/d_head")  # what q.k is multiplied by; 1/d_head is muP's


def _choice(name: str, value: str, valid: tuple[str, ...]) -> None:
    if value not in valid:
        raise ValueError(f"unknown {name} {value!r}; valid: {', '.join(valid)}")


@dataclass(frozen=True)
class TransformerConfig:
    vocab_size: int = 1000  # token ids are in [0, vocab_size)
    d_model: int = 512  # width of the residual stream
    n_heads: int = 8  # d_model must be divisible by n_heads
    d_ff: int = 2048  # hidden width of the feed-forward
    n_layers: int = 12  # number of residual blocks
    norm: str = "layernorm"  # "layernorm" | "rmsnorm"
    norm_position: str = "pre"  # "pre": x + f(norm(x)); "post": norm(x + f(x))
    ffn: str = "relu"  # "relu" | "gelu" | "swiglu"
    attention: str = "sdpa"  # "sdpa": separate q, k, v, o; "torch_mha": nn.MultiheadAttention (packed in_proj)
    dropout: float = 0.0  # attention and residual dropout
    causal: bool = False  # causal attention mask
    bias: bool = True  # Linear layers carry a bias (SwiGLU never does)
    residual_alpha: float = 1.0  # residual is alpha * x + f(x) (DeepNorm's alpha); 1 is plain
    rezero: bool = False  # each branch gated by a scalar that starts at 0 (ReZero)
    attn_scale: str = "1/sqrt(d_head)"  # logits q.k times this; "1/d_head": muP (Yang et al., 2021), sdpa only
    readout: bool = False  # a Linear d_model -> vocab_size after the final norm: the output is logits

    def __post_init__(self) -> None:
        _positive(vocab_size=self.vocab_size, d_model=self.d_model, n_heads=self.n_heads,
                  d_ff=self.d_ff, n_layers=self.n_layers)
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model ({self.d_model}) must be divisible by n_heads ({self.n_heads})")
        _choice("norm", self.norm, NORMS)
        _choice("norm_position", self.norm_position, NORM_POSITIONS)
        _choice("ffn", self.ffn, FFNS)
        _choice("attention", self.attention, ATTENTIONS)
        _choice("attn_scale", self.attn_scale, ATTN_SCALES)
        if self.attn_scale != ATTN_SCALES[0] and self.attention != "sdpa":
            raise ValueError(f"attn_scale {self.attn_scale!r} needs attention 'sdpa' "
                             "(nn.MultiheadAttention fixes its logits at 1/sqrt(d_head))")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if not self.residual_alpha > 0:
            raise ValueError(f"residual_alpha must be positive, got {self.residual_alpha}")

    @property
    def d_head(self) -> int:
        return self.d_model // self.n_heads


class RMSNorm(nn.Module):
    """Root-mean-square norm: x / rms(x) * weight (Zhang & Sennrich, 2019). No mean, no bias."""

    ROLES = {"weight": "norm"}

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def reset_parameters(self) -> None:
        nn.init.ones_(self.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


def make_norm(cfg: TransformerConfig) -> nn.Module:
    return nn.LayerNorm(cfg.d_model) if cfg.norm == "layernorm" else RMSNorm(cfg.d_model)


class MultiHeadAttention(nn.Module):
    """Self-attention with separate q, k, v and output projections, via scaled_dot_product_attention."""

    ROLES = {"q.weight": ("qkv", ("q",)), "k.weight": ("qkv", ("k",)), "v.weight": ("qkv", ("v",)),
             "o.weight": "attn_out",
             "q.bias": "bias", "k.bias": "bias", "v.bias": "bias", "o.bias": "bias"}

    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__()
        d = cfg.d_model
        self.n_heads, self.causal, self.dropout = cfg.n_heads, cfg.causal, cfg.dropout
        # 1/sqrt(d_head) keeps the logit std at init independent of d_head; 1/d_head keeps the logits' change
        # in training independent of it, once q and k are correlated (muP)
        self.scale = 1.0 / math.sqrt(cfg.d_head) if cfg.attn_scale == "1/sqrt(d_head)" else 1.0 / cfg.d_head
        self.q, self.k, self.v, self.o = (nn.Linear(d, d, bias=cfg.bias) for _ in range(4))

    def _heads(self, t: torch.Tensor) -> torch.Tensor:
        B, T, C = t.shape
        return t.view(B, T, self.n_heads, C // self.n_heads).transpose(1, 2)  # (B, heads, T, d_head)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Pre-softmax attention logits (B, heads, T, T), causal positions set to -inf."""
        q, k = self._heads(self.q(x)), self._heads(self.k(x))
        att = (q @ k.transpose(-2, -1)) * self.scale
        if self.causal:
            T = x.shape[1]
            att = att.masked_fill(torch.ones(T, T, dtype=torch.bool, device=x.device).triu(1), float("-inf"))
        return att

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self._heads(self.q(x)), self._heads(self.k(x)), self._heads(self.v(x))
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0,
                                           is_causal=self.causal, scale=self.scale)
        return self.o(y.transpose(1, 2).reshape(B, T, C))  # (B, T, d_model)


class TorchMHA(nn.Module):
    """``nn.MultiheadAttention`` as the notebook used it: q, k, v packed in one (3E, E) in_proj_weight."""

    ROLES = {"mha.in_proj_weight": ("qkv", ("q", "k", "v")), "mha.in_proj_bias": "bias",
             "mha.out_proj.weight": "attn_out", "mha.out_proj.bias": "bias"}

    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__()
        self.causal, self.n_heads = cfg.causal, cfg.n_heads
        self.mha = nn.MultiheadAttention(cfg.d_model, cfg.n_heads, dropout=cfg.dropout, bias=cfg.bias,
                                         batch_first=True)

    def _mask(self, T: int, device: torch.device) -> torch.Tensor | None:
        return torch.ones(T, T, dtype=torch.bool, device=device).triu(1) if self.causal else None

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Pre-softmax attention logits (B, heads, T, T), recomputed from the packed projection."""
        B, T, C = x.shape
        q, k, _ = F.linear(x, self.mha.in_proj_weight, self.mha.in_proj_bias).chunk(3, dim=-1)
        q = q.view(B, T, self.n_heads, -1).transpose(1, 2)
        k = k.view(B, T, self.n_heads, -1).transpose(1, 2)
        att = (q @ k.transpose(-2, -1)) / math.sqrt(q.shape[-1])
        mask = self._mask(T, x.device)
        return att if mask is None else att.masked_fill(mask, float("-inf"))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mask = self._mask(x.shape[1], x.device)
        y, _ = self.mha(x, x, x, attn_mask=mask, need_weights=False, is_causal=self.causal)
        return y


class FeedForward(nn.Module):
    """Linear, activation (relu or gelu), Linear."""

    ROLES = {"fc1.weight": "mlp_in", "fc2.weight": "mlp_out", "fc1.bias": "bias", "fc2.bias": "bias"}

    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__()
        if cfg.ffn not in ("relu", "gelu"):
            raise ValueError(f"FeedForward takes ffn relu or gelu, got {cfg.ffn!r} (use SwiGLU)")
        self.fc1 = nn.Linear(cfg.d_model, cfg.d_ff, bias=cfg.bias)
        self.act = nn.ReLU() if cfg.ffn == "relu" else nn.GELU()
        self.fc2 = nn.Linear(cfg.d_ff, cfg.d_model, bias=cfg.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class SwiGLU(nn.Module):
    """silu(x W1) * (x W3), then W2 (Shazeer, 2020), without biases as in LLaMA."""

    ROLES = {"w1.weight": "mlp_in", "w3.weight": "mlp_in", "w2.weight": "mlp_out"}

    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__()
        self.w1 = nn.Linear(cfg.d_model, cfg.d_ff, bias=False)  # gate
        self.w3 = nn.Linear(cfg.d_model, cfg.d_ff, bias=False)  # up
        self.w2 = nn.Linear(cfg.d_ff, cfg.d_model, bias=False)  # down

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class TransformerBlock(nn.Module):
    """Attention and feed-forward, each in a residual branch, with pre- or post-norm.

    pre:  x = alpha*x + g*f(norm(x));   post: x = norm(alpha*x + g*f(x));  g is 1, or a ReZero gate.
    """

    ROLES = {"attn_gate": "gate", "ffn_gate": "gate"}
    # rows blocks.i.attn (with the attention statistics of its softmax), blocks.i.ffn and blocks.i (the
    # residual stream after the block), each with the gradients of every parameter under it
    MEASURE = {"attn": Measure("attn", attention=True), "ffn": Measure("ffn"), "": Measure("block")}

    def __init__(self, cfg: TransformerConfig, index: int = 0) -> None:
        super().__init__()
        self.block_index = index
        self.pre = cfg.norm_position == "pre"
        self.alpha = cfg.residual_alpha
        self.norm1, self.norm2 = make_norm(cfg), make_norm(cfg)
        self.attn = MultiHeadAttention(cfg) if cfg.attention == "sdpa" else TorchMHA(cfg)
        self.ffn = SwiGLU(cfg) if cfg.ffn == "swiglu" else FeedForward(cfg)
        self.drop = nn.Dropout(cfg.dropout)
        if cfg.rezero:
            self.attn_gate = nn.Parameter(torch.zeros(()))
            self.ffn_gate = nn.Parameter(torch.zeros(()))
        else:
            self.attn_gate = self.ffn_gate = None

    def reset_parameters(self) -> None:
        if self.attn_gate is not None:
            nn.init.zeros_(self.attn_gate)
            nn.init.zeros_(self.ffn_gate)

    def _branch(self, x: torch.Tensor, f: nn.Module, norm: nn.Module, gate: torch.Tensor | None) -> torch.Tensor:
        y = self.drop(f(norm(x) if self.pre else x))
        if gate is not None:
            y = gate * y
        x = self.alpha * x + y if self.alpha != 1.0 else x + y
        return x if self.pre else norm(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self._branch(x, self.attn, self.norm1, self.attn_gate)
        return self._branch(x, self.ffn, self.norm2, self.ffn_gate)


class Transformer(nn.Module):
    """Token embedding, ``n_layers`` blocks, final norm. Input (batch, seq) ids, output (batch, seq, d_model),
    or with ``readout`` the logits (batch, seq, vocab_size) of a Linear ``head`` after the final norm."""

    ROLES = {"head.weight": "head", "head.bias": "bias"}

    def __init__(self, vocab_size: int = 1000, d_model: int = 512, n_heads: int = 8, d_ff: int = 2048,
                 n_layers: int = 12, norm: str = "layernorm", norm_position: str = "pre", ffn: str = "relu",
                 **options) -> None:
        super().__init__()
        self.config = cfg = TransformerConfig(vocab_size, d_model, n_heads, d_ff, n_layers, norm,
                                              norm_position, ffn, **options)
        self.embed = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.blocks = nn.ModuleList(TransformerBlock(cfg, i) for i in range(cfg.n_layers))
        self.norm_f = make_norm(cfg)
        self.head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=cfg.bias) if cfg.readout else None
        if cfg.readout:
            self.MEASURE = {"head": Measure("head")}  # the logits

    @classmethod
    def from_config(cls, cfg: TransformerConfig) -> Transformer:
        fields = dict(cfg.__dict__)
        return cls(**fields)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        x = self.embed(idx)  # (B, T, d_model)
        for block in self.blocks:
            x = block(x)
        x = self.norm_f(x)
        return x if self.head is None else self.head(x)  # (B, T, vocab_size) with a readout


class TorchMHATransformer(Transformer):
    """The notebook's SimpleTransformer: blocks built on ``nn.MultiheadAttention`` and its packed in_proj.

    Kept on purpose: ``in_proj_weight`` is not an ``nn.Linear``, so init code that walks Linear
    modules misses it, and Xavier on the packed (3E, E) matrix gives half the variance of three
    separate (E, E) projections.
    """

    def __init__(self, *args, **options) -> None:
        options["attention"] = "torch_mha"
        super().__init__(*args, **options)
