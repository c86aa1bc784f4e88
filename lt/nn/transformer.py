"""The pre-norm transformer block of GPT-2: ``x + attn(ln1(x))``, then ``x + ffn(ln2(x))``.

Shapes: B batch, T sequence, D hidden, F feed-forward.
"""

from __future__ import annotations

import functools

import attrs

from .. import random
from .._checks import one_of, positive, probability
from .attention import MultiHeadAttention
from .layers import FeedForward, LayerNorm
from .module import Module

__all__ = ["TransformerBlock"]


@attrs.frozen
class TransformerBlock(Module):
    """Pre-norm block. ``out_init_std`` is the init std of the two residual projections
    (GPT-2 scales it by ``1/sqrt(2 * num_layers)``)."""

    hidden_dim: int = attrs.field(validator=positive)
    num_heads: int = attrs.field(validator=positive)
    ffn_dim: int = attrs.field(validator=positive)
    dropout: float = attrs.field(default=0.0, validator=probability)
    activation: str = attrs.field(default="gelu", validator=one_of("gelu", "relu"))
    out_init_std: float = 0.02
    layer_norm_eps: float = 1e-5

    @functools.cached_property
    def ln(self) -> LayerNorm:
        return LayerNorm(self.hidden_dim, self.layer_norm_eps)

    @functools.cached_property
    def attn(self) -> MultiHeadAttention:
        return MultiHeadAttention(self.hidden_dim, self.num_heads, self.dropout, self.out_init_std)

    @functools.cached_property
    def ffn(self) -> FeedForward:
        return FeedForward(self.hidden_dim, self.ffn_dim, self.activation, self.dropout, self.out_init_std)

    def spec(self):
        return {"ln1": self.ln.spec(), "attn": self.attn.spec(),
                "ln2": self.ln.spec(), "ffn": self.ffn.spec()}

    def apply(self, params, x, mask=None, *, rng=None, kv=None):
        """(B, T, D) -> (B, T, D); ``mask`` broadcastable to (B, H, T, T).

        ``kv``: the attention's key/value hook (see ``MultiHeadAttention.apply``); with a
        KV cache, ``mask`` is then broadcastable to (B, H, T, S) over the cached keys.
        """
        h = self.ln.apply(params["ln1"], x)
        x = x + self.attn.apply(params["attn"], h, h, h, mask, rng=random.fold_in(rng, "attn"), kv=kv)
        h = self.ln.apply(params["ln2"], x)
        return x + self.ffn.apply(params["ffn"], h, rng=random.fold_in(rng, "ffn"))
