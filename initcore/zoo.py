"""Real models initcore did not write, built by their own libraries with random weights: Hugging Face
transformers' GPT-2 (from a small ``GPT2Config``) and torchvision's ResNet-18 (``weights=None``).

Each factory is ``seed -> (model, inputs)`` (``initcore.experiments.Case``, whose ``ZOO_RUNS`` name the
sizes): the model is built, and so initialized, by its library's own code under ``torch.manual_seed(seed)``
(in a forked RNG, leaving the caller's untouched), then the inputs are drawn. Nothing is downloaded: the
models come from configurations, never from ``from_pretrained``, so they work under ``HF_HUB_OFFLINE=1``.

transformers and torchvision are the optional extra ``zoo``; they are imported by the factories, not
by this module. ``GPT2_ROLES`` lets ``initcore.init.apply(model, "gpt2", roles=GPT2_ROLES)`` initialize
a Hugging Face GPT-2, whose ``Conv1D`` weights are stored transposed, (in, out).
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import Any

import torch
from torch import nn

from initcore.models.roles import Role
from initcore.torchvision_shim import SHIMMED_SCHEMAS, torchvision_extension_loads, torchvision_ops_shim

MIN_TORCH = "2.5"  # transformers 5.x disables its torch models below it (transformers/utils/import_utils.py)
INSTALL = ("pip install 'initcore[zoo]' and then python scripts/install_zoo.py, which installs the torchvision "
           "built for your torch without replacing it (`make test` or `make bench` in a checkout does both)")

# Roles of a Hugging Face GPT-2 (GPT2Model or GPT2LMHeadModel: "*" matches the "transformer." prefix) for
# initcore.init.apply. Its Conv1D weights are (in, out): c_attn packs q, k and v along the output
# dimension. Embeddings (wte, wpe), LayerNorms and biases get their roles from their types.
GPT2_ROLES: dict[str, Role] = {
    "*h.*.attn.c_attn.weight": Role("qkv", parts=("q", "k", "v"), transposed=True),
    "*h.*.attn.c_proj.weight": Role("attn_out", transposed=True),
    "*h.*.mlp.c_fc.weight": Role("mlp_in", transposed=True),
    "*h.*.mlp.c_proj.weight": Role("mlp_out", transposed=True),
}

# torchvision beside a torch its C++ ops were not built for (PyPI's CUDA wheel beside the CPU torch): the
# environment's .pth runs the shim at torchvision's first import (initcore.torchvision_shim); _import runs it
# too, for an environment without that file.


def _import(name: str) -> Any:
    """``import name`` (transformers or torchvision) after the shim, or an ImportError naming the extra."""
    torchvision_ops_shim()
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        raise ImportError(f"initcore.zoo needs {name} (initcore's optional extra 'zoo'): {INSTALL}. "
                          f"({type(exc).__name__}: {exc})") from exc


def require() -> str:
    """Import what the factories use (transformers' GPT-2 with torch, torchvision's models); return the
    versions as a line. ImportError names the extra."""
    transformers, torchvision = _import("transformers"), _import("torchvision")
    transformers.GPT2LMHeadModel, torchvision.models.resnet18  # noqa: B018 -- transformers imports models lazily
    return f"transformers {transformers.__version__}, torchvision {torchvision.__version__}"


def missing() -> str | None:
    """None if transformers and torchvision are installed (found, not imported) beside a torch they work
    with, else a line saying what is missing and how to install it."""
    if torch.__version__ < MIN_TORCH:
        return f"torch {torch.__version__} is older than the {MIN_TORCH} that transformers' models need"
    absent = [name for name in ("transformers", "torchvision") if importlib.util.find_spec(name) is None]
    if not absent:
        return None
    return f"{' and '.join(absent)} not installed (initcore's optional extra 'zoo'): {INSTALL}"


def gpt2(seed: int, *, n_layer: int = 4, n_embd: int = 128, n_head: int = 4, vocab_size: int = 512,
         n_positions: int = 64, batch: int = 4, seq_len: int = 32) -> tuple[nn.Module, dict[str, torch.Tensor]]:
    """A Hugging Face ``GPT2LMHeadModel`` with its own init (``_init_weights``: N(0, initializer_range^2),
    c_proj scaled by 1/sqrt(2 n_layer)) and ``{"input_ids": (batch, seq_len)}`` uniform token ids.

    Dropout is 0 (statistics at init are then deterministic given weights and inputs), attention goes
    through ``scaled_dot_product_attention`` (``attn_implementation="sdpa"``), so the probe sees it.
    """
    transformers = _import("transformers")
    config = transformers.GPT2Config(vocab_size=vocab_size, n_positions=n_positions, n_embd=n_embd, n_layer=n_layer,
                                     n_head=n_head, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                                     use_cache=False,
                                     # GPT2Config's default 50256 lies outside a small vocabulary (a logged warning)
                                     bos_token_id=vocab_size - 1, eos_token_id=vocab_size - 1)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = transformers.GPT2LMHeadModel._from_config(config, attn_implementation="sdpa")
        ids = torch.randint(0, vocab_size, (batch, seq_len))
    return model.eval(), {"input_ids": ids}


def resnet18(seed: int, *, batch: int = 4, image_size: int = 32,
             num_classes: int = 1000) -> tuple[nn.Module, torch.Tensor]:
    """torchvision's ResNet-18 with its own init (``weights=None``: convs He-normal with fan_out, BatchNorm
    weight 1 and bias 0, the fc torch's default Linear init) and images x ~ N(0, 1) of shape
    (batch, 3, image_size, image_size), as inputs normalized per channel."""
    models = _import("torchvision").models
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = models.resnet18(weights=None, num_classes=num_classes)
        x = torch.randn(batch, 3, image_size, image_size)
    return model, x


def llama(seed: int, *, n_layer: int = 4, hidden: int = 128, n_head: int = 4, n_kv_head: int = 2,
          intermediate: int = 344, vocab_size: int = 512, batch: int = 4,
          seq_len: int = 32) -> tuple[nn.Module, dict[str, torch.Tensor]]:
    """A Hugging Face ``LlamaForCausalLM`` (grouped-query attention, SwiGLU, RMSNorm) with its own init: every
    Linear and the embedding N(0, initializer_range^2 = 0.02^2), RMSNorm weights 1, the head untied."""
    transformers = _import("transformers")
    config = transformers.LlamaConfig(vocab_size=vocab_size, hidden_size=hidden, intermediate_size=intermediate,
                                      num_hidden_layers=n_layer, num_attention_heads=n_head,
                                      num_key_value_heads=n_kv_head, max_position_embeddings=2 * seq_len,
                                      use_cache=False, bos_token_id=0, eos_token_id=1, pad_token_id=None)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = transformers.LlamaForCausalLM._from_config(config, attn_implementation="sdpa")
        ids = torch.randint(0, vocab_size, (batch, seq_len))
    return model.eval(), {"input_ids": ids}


def bert(seed: int, *, n_layer: int = 4, hidden: int = 128, n_head: int = 4, intermediate: int = 512,
         vocab_size: int = 512, batch: int = 4, seq_len: int = 32) -> tuple[nn.Module, dict[str, torch.Tensor]]:
    """A Hugging Face ``BertModel`` (post-norm encoder) with its own init: Linear weights and embeddings
    N(0, 0.02^2), biases 0, LayerNorm 1 and 0, the padding token's embedding row 0."""
    transformers = _import("transformers")
    config = transformers.BertConfig(vocab_size=vocab_size, hidden_size=hidden, num_hidden_layers=n_layer,
                                     num_attention_heads=n_head, intermediate_size=intermediate,
                                     max_position_embeddings=2 * seq_len, hidden_dropout_prob=0.0,
                                     attention_probs_dropout_prob=0.0)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = transformers.BertModel._from_config(config, attn_implementation="sdpa")
        ids = torch.randint(1, vocab_size, (batch, seq_len))
    return model.eval(), {"input_ids": ids}


def vit(seed: int, *, image_size: int = 32, patch_size: int = 8, n_layer: int = 4, n_head: int = 4, hidden: int = 128,
        mlp_dim: int = 512, num_classes: int = 10, batch: int = 4) -> tuple[nn.Module, torch.Tensor]:
    """torchvision's ``VisionTransformer`` at a small size with its own init: the patch convolution truncated
    N(0, 1/fan_in) (cut at +-2 absolute, so in effect untruncated), the position embedding N(0, 0.02^2), the
    class token 0, MLP weights Xavier uniform with biases N(0, 1e-6^2), nn.MultiheadAttention's own (packed
    Xavier in_proj, torch's Linear out_proj), the head 0."""
    models = _import("torchvision").models
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = models.VisionTransformer(image_size=image_size, patch_size=patch_size, num_layers=n_layer,
                                         num_heads=n_head, hidden_dim=hidden, mlp_dim=mlp_dim,
                                         num_classes=num_classes)
        x = torch.randn(batch, 3, image_size, image_size)
    return model, x


__all__ = ["GPT2_ROLES", "INSTALL", "SHIMMED_SCHEMAS", "bert", "gpt2", "llama", "missing", "require", "resnet18", "vit",
           "torchvision_extension_loads", "torchvision_ops_shim"]
