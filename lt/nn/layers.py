"""Basic components: Linear, Embedding, LayerNorm, FeedForward, positions, Dropout.

Shapes: B batch, T sequence, D hidden (``dim``), F feed-forward, V vocabulary.
Each class is frozen hyperparameters; ``init(rng)`` makes its params and
``apply(params, ..., rng=None)`` is pure (dropout only when ``rng`` is given).
"""

from __future__ import annotations

import functools

import attrs
import numpy as np

from .. import _checks, ops
from .._checks import one_of, positive, probability
from ..ops.collective import Group
from .module import Module, Param
from .parallel import enter, local_size, row_parallel

__all__ = [
    "Linear",
    "Embedding",
    "LayerNorm",
    "FeedForward",
    "PositionalEncoding",
    "LearnedPositionalEncoding",
    "Dropout",
    "dropout",
]


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

    def apply(self, params, x, *, rng=None):
        """(..., in_dim) -> (..., out_dim)."""
        return ops.linear(x, params["w"], params["b"] if self.bias else None)


@attrs.frozen
class Embedding(Module):
    """A table of ``num_embeddings`` vectors of size ``dim``, looked up by integer id."""

    num_embeddings: int = attrs.field(validator=positive)
    dim: int = attrs.field(validator=positive)
    init_std: float = 0.02

    def spec(self):
        return {"w": Param((self.num_embeddings, self.dim), "normal", self.init_std)}

    def apply(self, params, ids, *, rng=None):
        """(...) integer ids -> (..., dim); ids outside the table raise, naming the value."""
        return self.lookup(params, _checks.index_array(ids, self.num_embeddings, "ids"))

    def lookup(self, params, ids):
        """:meth:`apply` for ids already checked by the caller (the model checks them once)."""
        return ops.embedding(params["w"], ids)

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

    def apply(self, params, x, *, rng=None):
        """(..., dim) -> (..., dim)."""
        return ops.layer_norm(x, params["scale"], params["bias"], self.eps)


@attrs.frozen
class Dropout(Module):
    """Zero activations with probability ``rate`` when given a key; identity otherwise."""

    rate: float = attrs.field(default=0.0, validator=probability)

    def spec(self):
        return {}

    def apply(self, params, x, *, rng=None):
        """``x`` (any shape) with dropout when given a key, else ``x`` itself."""
        return dropout(x, self.rate, rng)


def dropout(x, rate: float, rng=None):
    """``x`` with dropout at ``rate`` when given a key, else ``x`` itself (:class:`Dropout`'s maths)."""
    if rng is None or rate == 0.0:
        return x
    return ops.dropout(x, rate, rng)


@attrs.frozen
class FeedForward(Module):
    """Position-wise MLP: ``proj(act(fc(x)))`` then dropout; act is GELU (tanh) or ReLU.

    With ``tp`` (P ranks) this rank holds ~F / P hidden units: ``fc``'s columns (column-parallel,
    entered through ``f``) and ``proj``'s rows (row-parallel: one allreduce, bias once)."""

    dim: int = attrs.field(validator=positive)
    hidden_dim: int = attrs.field(validator=positive)
    activation: str = attrs.field(default="gelu", validator=one_of("gelu", "relu"))
    dropout: float = attrs.field(default=0.0, validator=probability)
    out_init_std: float = 0.02
    bias: bool = True
    tp: Group | None = None

    @functools.cached_property
    def fc(self) -> Linear:
        return Linear(self.dim, local_size(self.hidden_dim, self.tp), bias=self.bias)

    @functools.cached_property
    def proj(self) -> Linear:
        return Linear(local_size(self.hidden_dim, self.tp), self.dim, bias=self.bias, init_std=self.out_init_std)

    @functools.cached_property
    def drop(self) -> Dropout:
        return Dropout(self.dropout)

    def spec(self):
        return {"fc": self.fc.spec(), "proj": self.proj.spec()}

    def apply(self, params, x, *, rng=None):
        """(..., D) -> (..., F) -> (..., D)."""
        h = self.fc.apply(params["fc"], enter(x, self.tp))  # (..., F) [this rank's F / P]
        h = ops.gelu(h) if self.activation == "gelu" else ops.relu(h)
        y = row_parallel(params["proj"], h, self.tp)  # (..., D), "g" with tp
        return self.drop.apply({}, y, rng=rng)


@functools.lru_cache(maxsize=16)
def _sinusoid_table(max_len: int, dim: int, dtype: str) -> np.ndarray:
    """(max_len, dim): sin on even feature indices, cos on odd ones (Vaswani et al.)."""
    pos = np.arange(max_len, dtype=np.float64)[:, None]  # (L, 1)
    pair = np.arange(0, dim, 2, dtype=np.float64)  # 2i
    angle = pos / np.power(10000.0, pair / dim)  # (L, ceil(D/2))
    table = np.empty((max_len, dim), np.float64)
    table[:, 0::2] = np.sin(angle)
    table[:, 1::2] = np.cos(angle[:, : dim // 2])
    table = table.astype(dtype)
    table.flags.writeable = False
    return table


def check_positions(positions, max_len: int) -> np.ndarray:
    """``positions`` as an integer array inside ``[0, max_len)``, or an error naming the value."""
    return _checks.index_array(positions, max_len, "positions", "the positions")


@attrs.frozen
class PositionalEncoding(Module):
    """Fixed sinusoidal position vectors; no parameters."""

    max_len: int = attrs.field(validator=positive)
    dim: int = attrs.field(validator=positive)

    def spec(self):
        return {}

    def apply(self, params, positions, *, rng=None, dtype=np.float32):
        """(...) integer positions -> (..., dim)."""
        return self.lookup(params, check_positions(positions, self.max_len), dtype=dtype)

    def lookup(self, params, positions, *, dtype=np.float32):
        """:meth:`apply` for positions already checked by the caller."""
        return _sinusoid_table(self.max_len, self.dim, np.dtype(dtype).name)[positions]


@attrs.frozen
class LearnedPositionalEncoding(Module):
    """A learned vector per position (GPT-2's ``wpe``)."""

    max_len: int = attrs.field(validator=positive)
    dim: int = attrs.field(validator=positive)
    init_std: float = 0.02

    def spec(self):
        return {"w": Param((self.max_len, self.dim), "normal", self.init_std)}

    def apply(self, params, positions, *, rng=None, dtype=None):
        """(...) integer positions -> (..., dim)."""
        return self.lookup(params, check_positions(positions, self.max_len))

    def lookup(self, params, positions, *, dtype=None):
        """:meth:`apply` for positions already checked by the caller."""
        return ops.embedding(params["w"], positions)
