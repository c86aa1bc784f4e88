"""Components: frozen attrs classes of hyperparameters with ``init(rng)`` and a pure ``apply``."""

from .attention import (
    MultiHeadAttention,
    causal_mask,
    merge_heads,
    padding_mask,
    scaled_dot_product_attention,
    split_heads,
)
from .gated import GatedFeedForward, RMSNorm
from .gpt import GPT, PRESETS
from .layers import Dropout, Embedding, FeedForward, LayerNorm, LearnedPositionalEncoding, Linear, PositionalEncoding
from .module import Module, Param, check_params, init_params
from .rotary import RopeScaling, RotaryEmbedding
from .sharded import ShardedGPT
from .transformer import TransformerBlock

__all__ = [
    "Linear",
    "Embedding",
    "LayerNorm",
    "FeedForward",
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
    "RMSNorm",
    "GatedFeedForward",
    "RotaryEmbedding",
    "RopeScaling",
    "PRESETS",
    "Module",
    "Param",
    "init_params",
    "check_params",
    "ShardedGPT",
]
