"""The pre-norm decoder block: ``x + attn(norm1(x))``, then ``x + ffn(norm2(x))``.

Shapes: B batch, T sequence, D hidden, F feed-forward.

Its parts are fields, not subclasses: GPT-2's block is layer norm, multi-head attention
with biases and a GELU feed-forward; Llama's is RMS norm, grouped-query attention with
rotary positions and a SwiGLU feed-forward, without biases. The params keep GPT-2's names
(``ln1``, ``attn``, ``ln2``, ``ffn``) for every family.
"""

from __future__ import annotations

import functools

import attrs

from .. import random, threads
from .._checks import one_of, positive, probability
from .attention import MultiHeadAttention
from .feedforward import FeedForward, GatedFeedForward
from .layers import LayerNorm, RMSNorm
from .module import Module, Parts, part
from .rotary import RotaryEmbedding

__all__ = ["TransformerBlock", "make_norm"]


def make_norm(kind: str, dim: int, eps: float) -> LayerNorm | RMSNorm:
    """``"layer"``: LayerNorm (scale and bias); ``"rms"``: RMSNorm (scale only)."""
    return LayerNorm(dim, eps) if kind == "layer" else RMSNorm(dim, eps)


@attrs.frozen
class TransformerBlock(Module):
    """Pre-norm block. ``out_init_std`` is the init std of the two residual projections
    (GPT-2 scales it by ``1/sqrt(2 * num_layers)``). ``bias`` puts biases on every linear
    layer; ``qkv_bias`` (None: as ``bias``) on the query/key/value projection alone; ``qk_norm``
    RMS-normalises each head's queries and keys (with ``layer_norm_eps``)."""

    hidden_dim: int = attrs.field(validator=positive)
    num_heads: int = attrs.field(validator=positive)
    ffn_dim: int = attrs.field(validator=positive)
    dropout: float = attrs.field(default=0.0, validator=probability)
    activation: str = attrs.field(default="gelu", validator=one_of("gelu", "relu", "relu2", "swiglu"))
    out_init_std: float = 0.02
    layer_norm_eps: float = 1e-5
    norm: str = attrs.field(default="layer", validator=one_of("layer", "rms"))
    num_kv_heads: int | None = None
    bias: bool = True
    qkv_bias: bool | None = None
    rope: RotaryEmbedding | None = None
    qk_norm: bool = attrs.field(default=False, kw_only=True)
    parts: Parts = attrs.field(factory=Parts, kw_only=True, repr=False)

    @functools.cached_property
    def ln(self) -> LayerNorm | RMSNorm:
        return make_norm(self.norm, self.hidden_dim, self.layer_norm_eps)

    @part
    def attn(self) -> MultiHeadAttention:
        qkv_bias = self.bias if self.qkv_bias is None else self.qkv_bias
        return MultiHeadAttention(
            self.hidden_dim,
            self.num_heads,
            self.dropout,
            self.out_init_std,
            num_kv_heads=self.num_kv_heads,
            qkv_bias=qkv_bias,
            out_bias=self.bias,
            rope=self.rope,
            qk_norm=self.qk_norm,
            norm_eps=self.layer_norm_eps,
        )

    @part
    def ffn(self) -> FeedForward | GatedFeedForward:
        if self.activation == "swiglu":
            return GatedFeedForward(self.hidden_dim, self.ffn_dim, self.out_init_std, self.dropout)
        return FeedForward(
            self.hidden_dim, self.ffn_dim, self.activation, self.dropout, self.out_init_std, bias=self.bias
        )

    def spec(self):
        return {"ln1": self.ln.spec(), "attn": self.attn.spec(), "ln2": self.ln.spec(), "ffn": self.ffn.spec()}

    @threads.adaptive  # BLAS threads: the free cores, decided per call
    def apply(
        self,
        params,
        x,
        mask=None,
        *,
        causal: bool = False,
        positions=None,
        rng=None,
        kv=None,
        kernel: str = "auto",
        rotary=None,
    ):
        """(B, T, D) -> (B, T, D); ``mask`` broadcastable to (B, H, T, T), ``causal`` as in
        ``lt.nn.scaled_dot_product_attention``.

        ``positions`` (B, T): rotary attention's positions (``rotary``: their precomputed angles).
        ``kv``: the attention's key/value hook (see ``MultiHeadAttention.apply``); with a KV cache, ``mask`` is then
        broadcastable to (B, H, T, S) over the cached keys. ``kernel``: the attention kernel.
        """
        h = self.ln.apply(params["ln1"], x)
        x = x + self.attn.apply(
            params["attn"],
            h,
            h,
            h,
            mask,
            causal=causal,
            rng=random.fold_in(rng, "attn"),
            kv=kv,
            positions=positions,
            kernel=kernel,
            rotary=rotary,
        )
        h = self.ln.apply(params["ln2"], x)
        return x + self.ffn.apply(params["ffn"], h, rng=random.fold_in(rng, "ffn"))
