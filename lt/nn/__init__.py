"""Components: frozen attrs classes of hyperparameters with ``init(rng)`` and a pure ``apply``."""

from .attention import (
    MultiHeadAttention,
    causal_mask,
    merge_heads,
    padding_mask,
    scaled_dot_product_attention,
    split_heads,
)
from .feedforward import FeedForward, GatedFeedForward
from .gpt import GPT
from .layers import (
    CrossEntropy,
    Dropout,
    Embedding,
    LayerNorm,
    LearnedPositionalEncoding,
    Linear,
    PositionalEncoding,
    RMSNorm,
)
from .layout import decay_mask
from .module import ROLES, Module, Param, Parts, Split, check_params, config, init_params
from .presets import PRESETS
from .rotary import RopeScaling, RotaryEmbedding
from .transformer import TransformerBlock

__all__ = [
    "Linear",
    "Embedding",
    "LayerNorm",
    "RMSNorm",
    "FeedForward",
    "GatedFeedForward",
    "PositionalEncoding",
    "LearnedPositionalEncoding",
    "Dropout",
    "scaled_dot_product_attention",
    "MultiHeadAttention",
    "causal_mask",
    "padding_mask",
    "split_heads",
    "merge_heads",
    "TransformerBlock",
    "GPT",
    "CrossEntropy",
    "RotaryEmbedding",
    "RopeScaling",
    "PRESETS",
    "Module",
    "Param",
    "Split",
    "ROLES",
    "Parts",
    "init_params",
    "check_params",
    "config",
    "decay_mask",
]
