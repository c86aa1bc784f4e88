"""The GPT model: token + position embeddings, pre-norm blocks, final norm, LM head.

Shapes: B batch, T sequence, D hidden, V vocabulary, L layers.

Params tree (GPT-2's layout; Linear weights stored (in, out))::

    wte.w (V, D)   wpe.w (max_seq_len, D) [learned positions only]
    blocks.i.{ln1, ln2}.{scale, bias} (D,)
    blocks.i.attn.qkv.{w (D, 3D), b}   blocks.i.attn.proj.{w (D, D), b}
    blocks.i.ffn.fc.{w (D, F), b}      blocks.i.ffn.proj.{w (F, D), b}
    ln_f.{scale, bias}                 head.w (D, V) [untied head only]
"""

from __future__ import annotations

import math

import functools

import attrs
import numpy as np

from .. import ops, random
from .attention import causal_mask
from .layers import (Embedding, LayerNorm, LearnedPositionalEncoding, Linear,
                     PositionalEncoding, check_ids, dropout)
from .module import Module, check_params, one_of, positive, probability
from .transformer import TransformerBlock

__all__ = ["GPT", "PRESETS"]

# name: (vocab_size, max_seq_len, num_layers, num_heads, hidden_dim, ffn_dim)
PRESETS = {
    "tiny": (500, 128, 2, 2, 32, 128),
    "small": (1000, 256, 4, 4, 64, 256),
    "mini": (256, 256, 4, 4, 128, 512),       # nanoGPT's CPU Shakespeare model; the CLI's default
    "medium": (5000, 512, 6, 6, 192, 768),
    "large": (10000, 1024, 12, 8, 256, 1024),
    "gpt2": (50257, 1024, 12, 12, 768, 3072),
}


@attrs.frozen
class GPT(Module):
    """A GPT-2 style decoder-only language model. Fields are its hyperparameters."""

    vocab_size: int = attrs.field(validator=positive)
    max_seq_len: int = attrs.field(validator=positive)
    num_layers: int = attrs.field(validator=positive)
    num_heads: int = attrs.field(validator=positive)
    hidden_dim: int = attrs.field(validator=positive)
    ffn_dim: int = attrs.field(default=attrs.Factory(lambda self: 4 * self.hidden_dim, takes_self=True),
                               validator=positive)
    dropout: float = attrs.field(default=0.0, validator=probability)
    tie_embeddings: bool = True
    positional: str = attrs.field(default="learned", validator=one_of("learned", "sinusoidal"))
    activation: str = attrs.field(default="gelu", validator=one_of("gelu", "relu"))
    layer_norm_eps: float = 1e-5

    def __attrs_post_init__(self):
        if self.hidden_dim % self.num_heads:
            raise ValueError(f"GPT.hidden_dim ({self.hidden_dim}) must be divisible by "
                             f"GPT.num_heads ({self.num_heads})")

    @classmethod
    def preset(cls, name: str, **overrides) -> "GPT":
        """A named configuration (``GPT.presets()`` lists them); fields may be overridden."""
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
        fields = dict(zip(("vocab_size", "max_seq_len", "num_layers", "num_heads", "hidden_dim",
                           "ffn_dim"), PRESETS[name]))
        return cls(**{**fields, **overrides})

    @staticmethod
    def presets() -> list[str]:
        return list(PRESETS)

    # ----------------------------------------------------------- components

    @functools.cached_property
    def wte(self) -> Embedding:
        return Embedding(self.vocab_size, self.hidden_dim)

    @functools.cached_property
    def wpe(self):
        if self.positional == "learned":
            return LearnedPositionalEncoding(self.max_seq_len, self.hidden_dim)
        return PositionalEncoding(self.max_seq_len, self.hidden_dim)

    @functools.cached_property
    def block(self) -> TransformerBlock:
        return TransformerBlock(self.hidden_dim, self.num_heads, self.ffn_dim, self.dropout,
                                self.activation, 0.02 / math.sqrt(2 * self.num_layers),
                                self.layer_norm_eps)

    @functools.cached_property
    def ln_f(self) -> LayerNorm:
        return LayerNorm(self.hidden_dim, self.layer_norm_eps)

    def spec(self):
        spec = {"wte": self.wte.spec()}
        if self.positional == "learned":
            spec["wpe"] = self.wpe.spec()
        spec["blocks"] = tuple(self.block.spec() for _ in range(self.num_layers))
        spec["ln_f"] = self.ln_f.spec()
        if not self.tie_embeddings:
            spec["head"] = Linear(self.hidden_dim, self.vocab_size, bias=False).spec()
        return spec

    # ----------------------------------------------------------- checks

    def check_params(self, params) -> None:
        """Raise naming the first path whose presence or shape does not fit this model."""
        check_params(self, params, "GPT")

    def check_ids(self, ids, name: str = "ids") -> np.ndarray:
        """``ids`` as a (B, T) or (T,) integer array within the vocabulary and context."""
        ids = check_ids(ids, self.vocab_size, name)
        if ids.ndim not in (1, 2):
            raise ValueError(f"{name} must have shape (T,) or (B, T), got {ids.shape}")
        if ids.shape[-1] > self.max_seq_len:
            raise ValueError(f"{name} has {ids.shape[-1]} positions, more than max_seq_len={self.max_seq_len}")
        return ids

    # ----------------------------------------------------------- forward

    def embed(self, params, ids, positions, rng=None):
        """Token plus position embeddings, then dropout: (B, T) -> (B, T, D)."""
        x = ops.embedding(params["wte"]["w"], ids)                         # (B, T, D)
        if self.positional == "learned":
            x = x + self.wpe.apply(params["wpe"], positions)
        else:
            x = x + self.wpe.apply({}, positions, dtype=x.dtype)
        return dropout(x, self.dropout, None if rng is None else random.fold_in(rng, "embed"))

    def logits(self, params, h):
        """Final norm and LM head: (..., D) -> (..., V); tied head is ``h @ wte.T``."""
        h = self.ln_f.apply(params["ln_f"], h)
        if self.tie_embeddings:
            return self.wte.attend(params["wte"], h)
        return ops.linear(h, params["head"]["w"])

    def apply(self, params, ids, rng=None, *, attention_mask=None, positions=None,
              return_hidden_states: bool = False):
        """Next-token logits (B, T, V) for ``ids`` (B, T); (T,) gives (T, V).

        ``attention_mask`` (B, T) bool marks real tokens (False = padding, never attended
        to); ``positions`` (B, T) overrides ``0..T-1`` (for left padding). Dropout runs
        only with ``rng``. ``return_hidden_states`` also returns a tuple of L + 1 arrays
        (B, T, D): the embeddings and each block's output (before the final norm).
        """
        self.check_params(params)
        ids = self.check_ids(ids)
        single = ids.ndim == 1
        ids = ids[None] if single else ids
        B, T = ids.shape
        positions = np.broadcast_to(np.arange(T), (B, T)) if positions is None else np.asarray(positions)
        mask = causal_mask(T)                                              # (T, T)
        if attention_mask is not None:
            attention_mask = np.asarray(attention_mask, bool)
            if attention_mask.shape != (B, T):
                raise ValueError(f"attention_mask must have shape {(B, T)}, got {attention_mask.shape}")
            mask = mask & attention_mask[:, None, None, :]                 # (B, 1, T, T)
        x = self.embed(params, ids, positions, rng)
        hidden = [x]
        block = self.block
        blocks_rng = None if rng is None else random.fold_in(rng, "blocks")
        for i, block_params in enumerate(params["blocks"]):
            x = block.apply(block_params, x, mask, None if rng is None else random.fold_in(blocks_rng, i))
            hidden.append(x)
        logits = self.logits(params, x)
        if single:
            logits, hidden = logits[0], [h[0] for h in hidden]
        return (logits, tuple(hidden)) if return_hidden_states else logits

    def generate(self, params, prompt_ids, *, rng=None, max_new_tokens: int, **options):
        """Continue ``prompt_ids`` by ``max_new_tokens`` tokens: :func:`lt.generate.generate`
        (``temperature``, ``top_k``, ``top_p``, ``eos_id``, ``callback``, ... as there)."""
        from ..generate import generate           # lazily: generate sits above nn
        return generate(self, params, prompt_ids, rng=rng, max_new_tokens=max_new_tokens, **options)

    def loss(self, params, ids, targets=None, rng=None, *, ignore_index: int = -100,
             attention_mask=None):
        """Mean next-token cross-entropy over positions whose target is not ``ignore_index``.

        With ``targets`` (same shape as ``ids``) position t is scored on ``targets[t]``;
        without, ``ids[:, 1:]`` are predicted from ``ids[:, :-1]`` (padding, where
        ``attention_mask`` is False, is then never a target).
        """
        ids = self.check_ids(ids)
        if targets is None:
            ids, targets = ids[..., :-1], ids[..., 1:]
            if attention_mask is not None:
                attention_mask = np.asarray(attention_mask, bool)
                targets = np.where(attention_mask[..., 1:], targets, ignore_index)
                attention_mask = attention_mask[..., :-1]
        targets = np.asarray(targets)
        if targets.shape != ids.shape:
            raise ValueError(f"targets must have the shape of ids {ids.shape}, got {targets.shape}")
        if not np.issubdtype(targets.dtype, np.integer):
            raise TypeError(f"targets must be an integer array, got dtype {targets.dtype}")
        bad = (targets != ignore_index) & ((targets < 0) | (targets >= self.vocab_size))
        if bad.any():
            raise ValueError(f"targets contain {targets[bad][0]}, outside the vocabulary "
                             f"[0, {self.vocab_size}) and not ignore_index={ignore_index}")
        logits = self.apply(params, ids, rng, attention_mask=attention_mask)
        return ops.cross_entropy(logits, targets, ignore_index)
