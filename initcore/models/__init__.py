"""Models under test: an MLP and transformer pieces, each parameter tagged with its role."""

from initcore.models.activations import ACTIVATIONS, make_activation
from initcore.models.mlp import MLP, MLPConfig
from initcore.models.points import Measure
from initcore.models.roles import ROLES, Role, RoledParam, param_roles
from initcore.models.transformer import (
    FeedForward,
    MultiHeadAttention,
    RMSNorm,
    SwiGLU,
    TorchMHA,
    TorchMHATransformer,
    Transformer,
    TransformerBlock,
    TransformerConfig,
)

MODELS = ("mlp", "transformer", "torch_mha_transformer")

__all__ = [
    "ACTIVATIONS", "MODELS", "ROLES", "MLP", "MLPConfig", "Measure", "Role", "FeedForward", "MultiHeadAttention",
    "RMSNorm", "RoledParam", "SwiGLU", "TorchMHA", "TorchMHATransformer", "Transformer", "TransformerBlock",
    "TransformerConfig", "make_activation", "param_roles",
]
