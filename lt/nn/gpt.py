"""The GPT model: token + position embeddings, pre-norm blocks, final norm, LM head.

Shapes: B batch, T sequence, D hidden, V vocabulary, L layers.

Params tree (GPT-2's layout; Linear weights stored (in, out))::

    wte.w (V, D)   wpe.w (max_seq_len, D) [learned positions only]
    blocks.i.{ln1, ln2}.{scale, bias} (D,)
    blocks.i.attn.qkv.{w (D, 3D), b}   blocks.i.attn.proj.{w (D, D), b}
    blocks.i.ffn.fc.{w (D, F), b}      blocks.i.ffn.proj.{w (F, D), b}
    ln_f.{scale, bias}                 head.w (D, V) [untied head only]

A Llama-family setting keeps the names: ``ln*`` hold ``scale`` only (RMS norm), there is
no ``wpe`` (rotary positions), ``attn.qkv.w`` is (D, (H + 2 Hkv) d) with the columns of
queries, keys and values in that order (Hkv = ``num_kv_heads``), biases only where
``bias``/``qkv_bias`` say, and the SwiGLU feed-forward is ``ffn.{gate, up, down}.w``.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence

import attrs
import numpy as np

from .. import _checks, ops, random, threads
from .._checks import number, one_of, positive, probability
from ..autodiff import remat
from .layers import (
    CrossEntropy,
    Dropout,
    Embedding,
    LayerNorm,
    LearnedPositionalEncoding,
    Linear,
    PositionalEncoding,
    RMSNorm,
    check_positions,
)
from .module import Module, Parts, Split, check_params, part
from .presets import FAMILY, PRESETS
from .rotary import RopeScaling, RotaryEmbedding
from .transformer import TransformerBlock, make_norm

__all__ = ["GPT"]


def _rope_scaling(value):
    """``rope_scaling`` as a RopeScaling or None: from one, from its fields as ``attrs.asdict``
    writes them (checkpoints, run.json), or from a Hugging Face ``rope_scaling`` dict."""
    if isinstance(value, dict):
        return RopeScaling(**value) if "kind" in value else RopeScaling.from_config(value)
    if value is not None and not isinstance(value, RopeScaling):
        raise ValueError(f"GPT.rope_scaling must be an lt.nn.RopeScaling, a dict of its fields or None, got {value!r}")
    return value


@attrs.frozen
class GPT(Module):
    """A decoder-only language model. Fields are its hyperparameters.

    The defaults are GPT-2's parts (layer norm, learned positions, GELU, biases, multi-head
    attention); the Llama family is a setting of the same fields (``norm="rms"``,
    ``positional="rope"``, ``activation="swiglu"``, ``num_kv_heads``, ``bias=False``;
    Qwen2 adds ``qkv_bias=True``, Mistral ``sliding_window``), run by the same forward.

    Options from the NanoGPT speedrun, off by default: ``qk_norm`` (RMS norm of each head's
    queries and keys), ``activation="relu2"`` (ReLU² feed-forward), ``logit_softcap`` c
    (logits ``c · tanh(logits / c)``), ``zero_init_projections`` (the attention and
    feed-forward output projections start at zero, so every block starts as the identity).

    ``remat`` (a way of computing, not of the model: the params and numbers are the same)
    recomputes each block's activations in the backward pass instead of keeping them
    (``lt.remat``): a gradient then holds one (B, T, D) input per block, for one more forward.
    """

    vocab_size: int = attrs.field(validator=positive)
    max_seq_len: int = attrs.field(validator=positive)
    num_layers: int = attrs.field(validator=positive)
    num_heads: int = attrs.field(validator=positive)
    hidden_dim: int = attrs.field(validator=positive)
    ffn_dim: int = attrs.field(
        default=attrs.Factory(lambda self: 4 * self.hidden_dim, takes_self=True), validator=positive
    )
    dropout: float = attrs.field(default=0.0, validator=probability)
    tie_embeddings: bool = True
    positional: str = attrs.field(default="learned", validator=one_of("learned", "sinusoidal", "rope"))
    activation: str = attrs.field(default="gelu", validator=one_of("gelu", "relu", "relu2", "swiglu"))
    layer_norm_eps: float = attrs.field(default=1e-5, validator=number(0, low_open=True))
    norm: str = attrs.field(default="layer", validator=one_of("layer", "rms"))
    num_kv_heads: int | None = attrs.field(default=None, validator=attrs.validators.optional(positive))
    bias: bool = attrs.field(default=True, validator=attrs.validators.instance_of(bool))
    qkv_bias: bool | None = attrs.field(
        default=None, validator=attrs.validators.optional(attrs.validators.instance_of(bool))
    )
    rope_theta: float = attrs.field(default=10000.0, validator=number(0, low_open=True))
    rope_scaling: RopeScaling | None = attrs.field(default=None, converter=_rope_scaling)
    sliding_window: int | None = attrs.field(default=None, validator=attrs.validators.optional(positive))
    qk_norm: bool = attrs.field(default=False, validator=attrs.validators.instance_of(bool))
    logit_softcap: float | None = attrs.field(
        default=None, validator=attrs.validators.optional(number(0, low_open=True))
    )
    zero_init_projections: bool = attrs.field(default=False, validator=attrs.validators.instance_of(bool))
    remat: bool = attrs.field(default=False, validator=attrs.validators.instance_of(bool))
    parts: Parts = attrs.field(factory=Parts, kw_only=True, repr=False)

    def __attrs_post_init__(self):
        if self.hidden_dim % self.num_heads:
            raise ValueError(
                f"GPT.hidden_dim ({self.hidden_dim}) must be divisible by GPT.num_heads ({self.num_heads})"
            )
        if self.num_heads % self.kv_heads:
            raise ValueError(
                f"GPT.num_heads ({self.num_heads}) must be divisible by GPT.num_kv_heads ({self.kv_heads})"
            )
        if self.num_kv_heads == self.num_heads:  # one spelling of plain multi-head
            object.__setattr__(self, "num_kv_heads", None)
        if self.positional == "rope" and self.head_dim % 2:
            raise ValueError(f"GPT.positional='rope' needs an even head size, got {self.head_dim}")

    @property
    def kv_heads(self) -> int:
        """Heads of keys and values: ``num_kv_heads`` or ``num_heads``."""
        return self.num_heads if self.num_kv_heads is None else self.num_kv_heads

    @property
    def head_dim(self) -> int:
        """d, the size of one attention head: D / H."""
        return self.hidden_dim // self.num_heads

    @property
    def cache_shape(self) -> tuple[int, int, int]:
        """(layers, key/value heads, head size) of what a KV cache stores for this model: the
        attention's own (a tensor-parallel rank's share holds fewer heads)."""
        attn = self.block.attn
        return self.num_layers, attn.kv_heads, attn.head_dim

    @classmethod
    def preset(cls, name: str, **overrides) -> GPT:
        """A named configuration (``GPT.presets()`` lists them); fields may be overridden."""
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
        fields = dict(
            zip(("vocab_size", "max_seq_len", "num_layers", "num_heads", "hidden_dim", "ffn_dim"), PRESETS[name])
        )
        return cls(**{**fields, **FAMILY.get(name, {}), **overrides})

    @staticmethod
    def presets() -> list[str]:
        return list(PRESETS)

    # ----------------------------------------------------------- components

    @part
    def wte(self) -> Embedding:
        return Embedding(self.vocab_size, self.hidden_dim)

    @functools.cached_property
    def wpe(self):
        """Absolute positions added to the embeddings; None with rotary positions (in attention)."""
        if self.positional == "learned":
            return LearnedPositionalEncoding(self.max_seq_len, self.hidden_dim)
        if self.positional == "sinusoidal":
            return PositionalEncoding(self.max_seq_len, self.hidden_dim)
        return None

    @part
    def block(self) -> TransformerBlock:
        rope = None
        if self.positional == "rope":
            rope = RotaryEmbedding(self.head_dim, self.rope_theta, self.rope_scaling)
        return TransformerBlock(
            self.hidden_dim,
            self.num_heads,
            self.ffn_dim,
            self.dropout,
            self.activation,
            0.0 if self.zero_init_projections else 0.02 / math.sqrt(2 * self.num_layers),
            self.layer_norm_eps,
            norm=self.norm,
            num_kv_heads=self.num_kv_heads,
            bias=self.bias,
            qkv_bias=self.qkv_bias,
            rope=rope,
            qk_norm=self.qk_norm,
        )

    @functools.cached_property
    def ln_f(self) -> LayerNorm | RMSNorm:
        return make_norm(self.norm, self.hidden_dim, self.layer_norm_eps)

    @part
    def head(self) -> Linear | None:
        """The untied LM head (D, V); None when the head is the token table (tied)."""
        if self.tie_embeddings:
            return None
        return Linear(self.hidden_dim, self.vocab_size, bias=False, split=Split(1, (self.vocab_size,)), role="head")

    @part
    def criterion(self) -> CrossEntropy:
        """The loss of the logits against the targets."""
        return CrossEntropy()

    @functools.cached_property
    def embed_dropout(self) -> Dropout:
        return Dropout(self.dropout)

    def spec(self):
        spec = {"wte": self.wte.spec()}
        if self.positional == "learned":
            spec["wpe"] = self.wpe.spec()
        spec["blocks"] = tuple(self.block.spec() for _ in range(self.num_layers))
        spec["ln_f"] = self.ln_f.spec()
        if self.head is not None:
            spec["head"] = self.head.spec()
        return spec

    # ----------------------------------------------------------- checks (the public boundary)

    def check_params(self, params) -> None:
        """Raise naming the first path whose presence or shape does not fit this model."""
        check_params(self, params, "GPT")

    def check_ids(self, ids, name: str = "ids") -> np.ndarray:
        """``ids`` as a (B, T) or (T,) integer array within the vocabulary and context."""
        ids = _checks.index_array(ids, self.vocab_size, name)
        if ids.ndim not in (1, 2):
            raise ValueError(f"{name} must have shape (T,) or (B, T), got {ids.shape}")
        if ids.shape[-1] > self.max_seq_len:
            raise ValueError(f"{name} has {ids.shape[-1]} positions, more than max_seq_len={self.max_seq_len}")
        if ids.shape[-1] == 0:
            raise ValueError(f"{name} has no positions (shape {ids.shape}); give at least one token per row")
        return ids

    @staticmethod
    def compute_dtype(params) -> np.dtype:
        """The float dtype the model computes in: its params' (init and loaders give every leaf one)."""
        return params["wte"]["w"].dtype

    def visible(self, start: int, stop: int) -> tuple[np.ndarray | None, bool]:
        """``(mask, causal)``: which keys 0..stop-1 the queries at start..stop-1 may attend.

        Causal (key j <= query i): without ``sliding_window`` that is the ``causal`` flag alone
        (mask None), which lets the blockwise kernel skip tiles; with a window w, the explicit
        (stop - start, stop) bool mask of j <= i and j > i - w."""
        if self.sliding_window is None:
            return None, True
        i = np.arange(start, stop)[:, None]  # query positions (t, 1)
        j = np.arange(stop)[None, :]  # key positions (1, S)
        return (j <= i) & (j > i - self.sliding_window), False

    # ----------------------------------------------------------- the forward pass

    def embed(self, params, ids, positions, *, rng=None):
        """Token plus position embeddings, then dropout: checked ids and positions (B, T) -> (B, T, D)."""
        x = self.wte.lookup(params["wte"], ids)  # (B, T, D)
        if self.wpe is not None:  # (rotary positions act in attention)
            x = x + self.wpe.lookup(params.get("wpe", {}), positions, dtype=x.dtype)
        return self.embed_dropout.apply({}, x, rng=rng)

    def logits(self, params, h):
        """Final norm and LM head: (..., D) -> (..., V); the tied head is ``h @ wte.T``; soft-capped
        with ``logit_softcap``."""
        h = self.ln_f.apply(params["ln_f"], h)
        logits = self.wte.attend(params["wte"], h) if self.head is None else self.head.apply(params["head"], h)
        return logits if self.logit_softcap is None else ops.softcap(logits, self.logit_softcap)

    @threads.adaptive  # BLAS threads: the free cores, decided per call
    def forward(
        self,
        params,
        ids,
        *,
        positions,
        mask,
        causal: bool = True,
        cache: Sequence[Callable] | None = None,
        rng=None,
        last_only: bool = False,
        hidden_states: bool = False,
        kernel: str = "auto",
    ):
        """The one forward pass that ``apply``, ``loss``, prefill, decoding and beam search run.

        ``ids`` (B, T) at ``positions`` (B, T), both already checked; ``mask`` (None, or
        broadcastable to (B, H, T, S), True = may attend) and ``causal`` as :meth:`visible` and
        :meth:`_batch` give them (see ``lt.nn.scaled_dot_product_attention``). ``cache``: one
        key/value hook per layer (``cache[i](k, v) -> (keys, values)``, see
        ``MultiHeadAttention.apply``), with which a KV cache stores this call's keys and values
        and hands back the whole context (S positions); without it S = T. Returns logits
        (B, T, V), or (B, V) for the last position only with
        ``last_only``; with ``hidden_states`` also the L + 1 hidden states (B, T, D).
        ``kernel`` (``"auto"``, ``"full"``, ``"blockwise"``) picks the attention kernel of every
        layer (see ``lt.nn.scaled_dot_product_attention``; the numbers are the same).
        """
        x = self.embed(params, ids, positions, rng=random.fold_in(rng, "embed"))
        hidden = [x] if hidden_states else None
        blocks_rng = random.fold_in(rng, "blocks")
        rope = self.block.rope  # rotary angles: once, for every layer
        rotary = None if rope is None else rope.angles(positions, self.compute_dtype(params))
        apply_block = remat(self.block.apply) if self.remat else self.block.apply
        for i, block_params in enumerate(params["blocks"]):  # a loop over layers
            x = apply_block(
                block_params,
                x,
                mask,
                causal=causal,
                positions=positions,
                rng=random.fold_in(blocks_rng, i),
                kv=None if cache is None else cache[i],
                kernel=kernel,
                rotary=rotary,
            )
            if hidden is not None:
                hidden.append(x)
        logits = self.logits(params, x[:, -1] if last_only else x)  # (B, V) or (B, T, V)
        return (logits, tuple(hidden)) if hidden is not None else logits

    def _batch(self, ids, attention_mask, positions):
        """Checked ids (T,) or (B, T) as a batch (B, T), with positions (B, T), the attention mask
        and causal flag (:meth:`visible`, and padding where ``attention_mask`` is False) and
        whether one row was given."""
        single = ids.ndim == 1
        ids = ids[None] if single else ids
        B, T = ids.shape
        if positions is None:
            positions = np.broadcast_to(np.arange(T), (B, T))
        else:
            positions = check_positions(np.broadcast_to(positions, (B, T)), self.max_seq_len)
        mask, causal = self.visible(0, T)  # None or (T, T)
        if attention_mask is not None:
            attention_mask = np.asarray(attention_mask, bool)
            attention_mask = attention_mask[None] if single and attention_mask.ndim == 1 else attention_mask
            if attention_mask.shape != (B, T):
                raise ValueError(f"attention_mask must have shape {(B, T)}, got {attention_mask.shape}")
            padding = attention_mask[:, None, None, :]  # (B, 1, 1, T)
            mask = padding if mask is None else mask & padding  # (B, 1, T, T)
        return ids, positions, mask, causal, single

    def apply(
        self,
        params,
        ids,
        *,
        rng=None,
        attention_mask=None,
        positions=None,
        return_hidden_states: bool = False,
        kernel: str = "auto",
    ):
        """Next-token logits (B, T, V) for ``ids`` (B, T); (T,) gives (T, V).

        ``attention_mask`` (B, T) bool marks real tokens (False = padding, never attended
        to); ``positions`` (B, T) overrides ``0..T-1`` (for left padding). Dropout runs
        only with ``rng``. ``return_hidden_states`` also returns a tuple of L + 1 arrays
        (B, T, D): the embeddings and each block's output (before the final norm).
        """
        self.check_params(params)
        ids, positions, mask, causal, single = self._batch(self.check_ids(ids), attention_mask, positions)
        out = self.forward(
            params,
            ids,
            positions=positions,
            mask=mask,
            causal=causal,
            rng=rng,
            hidden_states=return_hidden_states,
            kernel=kernel,
        )
        if not single:
            return out
        if return_hidden_states:
            return out[0][0], tuple(h[0] for h in out[1])
        return out[0]

    def loss(
        self,
        params,
        ids,
        targets=None,
        *,
        rng=None,
        ignore_index: int = -100,
        attention_mask=None,
        kernel: str = "auto",
    ):
        """Mean next-token cross-entropy over positions whose target is not ``ignore_index``.

        With ``targets`` (same shape as ``ids``) position t is scored on ``targets[t]``;
        without, ``ids[:, 1:]`` are predicted from ``ids[:, :-1]`` (padding, where
        ``attention_mask`` is False, is then never a target). The targets' values are
        checked by ``lt.ops.cross_entropy``.
        """
        self.check_params(params)
        ids = self.check_ids(ids)
        if targets is None:
            if ids.shape[-1] < 2:
                raise ValueError(
                    f"ids has {ids.shape[-1]} position; predicting each next token needs at least 2 (or give targets)"
                )
            ids, targets = ids[..., :-1], ids[..., 1:]
            if attention_mask is not None:
                attention_mask = np.asarray(attention_mask, bool)
                targets = np.where(attention_mask[..., 1:], targets, ignore_index)
                attention_mask = attention_mask[..., :-1]
        if np.shape(targets) != ids.shape:
            raise ValueError(f"targets must have the shape of ids {ids.shape}, got {np.shape(targets)}")
        ids, positions, mask, causal, _ = self._batch(ids, attention_mask, None)
        logits = self.forward(
            params, ids, positions=positions, mask=mask, causal=causal, rng=rng, kernel=kernel
        )  # (B, T, V)
        return self.criterion.apply({}, logits, np.reshape(targets, ids.shape), ignore_index=ignore_index)

    def generate(self, params, prompt_ids, *, rng=None, max_new_tokens: int, **options):
        """Continue ``prompt_ids`` by ``max_new_tokens`` tokens: :func:`lt.generate.generate`
        (``temperature``, ``top_k``, ``top_p``, ``eos_id``, ``callback``, ... as there).

        A thin forwarder, imported when called: ``lt.generate`` sits above ``lt.nn`` and
        this module never imports it at load time."""
        from ..generate import generate

        return generate(self, params, prompt_ids, rng=rng, max_new_tokens=max_new_tokens, **options)
