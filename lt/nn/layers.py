"""Basic components: Linear, Embedding, LayerNorm, FeedForward, positions, Dropout.

Shapes: B batch, T sequence, D hidden (``dim``), F feed-forward, V vocabulary.
Each class is frozen hyperparameters; ``init(rng)`` makes its params and
``apply(params, ..., rng=None)`` is pure (dropout only when ``rng`` is given).
"""

from __future__ import annotations

import functools

import attrs
import numpy as np

from .. import ops
from .module import Module, Param, one_of, positive, probability

__all__ = ["Linear", "Embedding", "LayerNorm", "FeedForward", "PositionalEncoding",
           "LearnedPositionalEncoding", "Dropout", "check_ids"]


def check_indices(values, size: int, name: str, within: str) -> np.ndarray:
    """``values`` as an integer array inside ``[0, size)``, or a TypeError/ValueError naming
    ``name``, the offending value and the range (``within`` says what the range is)."""
    values = np.asarray(values)
    if not np.issubdtype(values.dtype, np.integer):
        raise TypeError(f"{name} must be an integer array, got dtype {values.dtype}")
    if values.size and (values.min() < 0 or values.max() >= size):
        bad = values.min() if values.min() < 0 else values.max()
        raise ValueError(f"{name} contains {bad}, outside {within} [0, {size})")
    return values


def check_ids(ids, vocab_size: int, name: str = "ids") -> np.ndarray:
    """``ids`` as an integer array within the vocabulary."""
    return check_indices(ids, vocab_size, name, "the vocabulary")


@attrs.frozen
class Linear(Module):
    """``y = x @ w + b`` with ``w`` stored (in_dim, out_dim), as GPT-2 stores it."""

    in_dim: int = attrs.field(validator=positive)
    out_dim: int = attrs.field(validator=positive)
    bias: bool = True
    init_std: float = 0.02

    def spec(self):
        spec = {"w": Param((self.in_dim, self.out_dim), "normal", self.init_std)}
        if self.bias:
            spec["b"] = Param((self.out_dim,), "zeros")
        return spec

    def apply(self, params, x, rng=None):
        """(..., in_dim) -> (..., out_dim)."""
        return ops.linear(x, params["w"], params.get("b"))


@attrs.frozen
class Embedding(Module):
    """A table of ``num_embeddings`` vectors of size ``dim``, looked up by integer id."""

    num_embeddings: int = attrs.field(validator=positive)
    dim: int = attrs.field(validator=positive)
    init_std: float = 0.02

    def spec(self):
        return {"w": Param((self.num_embeddings, self.dim), "normal", self.init_std)}

    def apply(self, params, ids, rng=None):
        """(...) integer ids -> (..., dim)."""
        return ops.embedding(params["w"], check_ids(ids, self.num_embeddings))

    def attend(self, params, h):
        """Scores of ``h`` (..., dim) against every row: ``h @ w.T`` -> (..., num_embeddings)."""
        return ops.unembed(h, params["w"])


@attrs.frozen
class LayerNorm(Module):
    """Normalise the last axis to zero mean, unit variance; then a learned scale and bias."""

    dim: int = attrs.field(validator=positive)
    eps: float = 1e-5

    def spec(self):
        return {"scale": Param((self.dim,), "ones"), "bias": Param((self.dim,), "zeros")}

    def apply(self, params, x, rng=None):
        """(..., dim) -> (..., dim)."""
        return ops.layer_norm(x, params["scale"], params["bias"], self.eps)


@attrs.frozen
class Dropout(Module):
    """Zero activations with probability ``rate`` when given a key; identity otherwise."""

    rate: float = attrs.field(default=0.0, validator=probability)

    def spec(self):
        return {}

    def apply(self, params, x, rng=None):
        return dropout(x, self.rate, rng)


def dropout(x, rate: float, rng=None):
    """``x`` with dropout at ``rate`` when given a key, else ``x`` itself: the function behind
    :class:`Dropout`, for hot paths that should not build a component per call."""
    if rng is None or rate == 0.0:
        return x
    return ops.dropout(x, rate, rng)


@attrs.frozen
class FeedForward(Module):
    """Position-wise MLP: ``proj(act(fc(x)))`` then dropout; act is GELU (tanh) or ReLU."""

    dim: int = attrs.field(validator=positive)
    hidden_dim: int = attrs.field(validator=positive)
    activation: str = attrs.field(default="gelu", validator=one_of("gelu", "relu"))
    dropout: float = attrs.field(default=0.0, validator=probability)
    out_init_std: float = 0.02

    def spec(self):
        return {"fc": Linear(self.dim, self.hidden_dim).spec(),
                "proj": Linear(self.hidden_dim, self.dim, init_std=self.out_init_std).spec()}

    def apply(self, params, x, rng=None):
        """(..., D) -> (..., F) -> (..., D)."""
        h = ops.linear(x, params["fc"]["w"], params["fc"]["b"])           # (..., F)
        h = ops.gelu(h) if self.activation == "gelu" else ops.relu(h)
        y = ops.linear(h, params["proj"]["w"], params["proj"]["b"])       # (..., D)
        return dropout(y, self.dropout, rng)


@functools.lru_cache(maxsize=16)
def _sinusoid_table(max_len: int, dim: int, dtype: str) -> np.ndarray:
    """(max_len, dim): sin on even feature indices, cos on odd ones (Vaswani et al.)."""
    pos = np.arange(max_len, dtype=np.float64)[:, None]                   # (L, 1)
    pair = np.arange(0, dim, 2, dtype=np.float64)                         # 2i
    angle = pos / np.power(10000.0, pair / dim)                           # (L, ceil(D/2))
    table = np.empty((max_len, dim), np.float64)
    table[:, 0::2] = np.sin(angle)
    table[:, 1::2] = np.cos(angle[:, : dim // 2])
    table = table.astype(dtype)
    table.flags.writeable = False
    return table


def _check_positions(positions, max_len: int) -> np.ndarray:
    return check_indices(positions, max_len, "positions", "the positions")


@attrs.frozen
class PositionalEncoding(Module):
    """Fixed sinusoidal position vectors; no parameters."""

    max_len: int = attrs.field(validator=positive)
    dim: int = attrs.field(validator=positive)

    def spec(self):
        return {}

    def apply(self, params, positions, rng=None, dtype=np.float32):
        """(...) integer positions -> (..., dim)."""
        positions = _check_positions(positions, self.max_len)
        return _sinusoid_table(self.max_len, self.dim, np.dtype(dtype).name)[positions]


@attrs.frozen
class LearnedPositionalEncoding(Module):
    """A learned vector per position (GPT-2's ``wpe``)."""

    max_len: int = attrs.field(validator=positive)
    dim: int = attrs.field(validator=positive)
    init_std: float = 0.02

    def spec(self):
        return {"w": Param((self.max_len, self.dim), "normal", self.init_std)}

    def apply(self, params, positions, rng=None, dtype=None):
        """(...) integer positions -> (..., dim)."""
        return ops.embedding(params["w"], _check_positions(positions, self.max_len))
