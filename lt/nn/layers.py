"""Basic components: Linear, Embedding, LayerNorm, RMSNorm, positions, Dropout, CrossEntropy.

Shapes: B batch, T sequence, D hidden (``dim``), V vocabulary.
Each class is frozen hyperparameters; ``init(rng)`` makes its params and
``apply(params, ..., rng=None)`` is pure (dropout only when ``rng`` is given). Each ``spec()``
declares what its leaves are (:class:`lt.nn.Param`'s ``role`` and ``split``).
"""

from __future__ import annotations

import functools

import attrs
import numpy as np

from .. import _checks, ops
from .._checks import number, positive, probability
from .module import Module, Param, Split

__all__ = [
    "Linear",
    "Embedding",
    "LayerNorm",
    "RMSNorm",
    "PositionalEncoding",
    "LearnedPositionalEncoding",
    "Dropout",
    "dropout",
    "CrossEntropy",
]


@attrs.frozen
class Linear(Module):
    """``y = x @ w + b`` with ``w`` stored (in_dim, out_dim), as GPT-2 stores it.

    ``split`` declares where tensor parallelism may cut ``w``: its columns (axis 1, a
    column-parallel layer, whose bias is cut alike) or its rows (axis 0, row-parallel, whose
    bias every rank holds whole); None: never cut. ``role`` is ``w``'s: ``"weight"``, or
    ``"head"`` for the LM head."""

    in_dim: int = attrs.field(validator=positive)
    out_dim: int = attrs.field(validator=positive)
    bias: bool = True
    init_std: float = 0.02
    split: Split | None = attrs.field(default=None, kw_only=True)
    role: str = attrs.field(default="weight", kw_only=True, validator=attrs.validators.in_(("weight", "head")))

    def spec(self):
        spec = {"w": Param((self.in_dim, self.out_dim), "normal", self.init_std, role=self.role, split=self.split)}
        if self.bias:
            columns = self.split is not None and self.split.axis == 1
            bias_split = attrs.evolve(self.split, axis=0) if columns else None
            spec["b"] = Param((self.out_dim,), "zeros", role="bias", split=bias_split)
        return spec

    def apply(self, params, x, *, rng=None):
        """(..., in_dim) -> (..., out_dim)."""
        return ops.linear(x, params["w"], params["b"] if self.bias else None)


@attrs.frozen
class Embedding(Module):
    """A table of ``num_embeddings`` vectors of size ``dim``, looked up by integer id; its rows
    may be cut among tensor-parallel ranks (a vocabulary-parallel table)."""

    num_embeddings: int = attrs.field(validator=positive)
    dim: int = attrs.field(validator=positive)
    init_std: float = 0.02

    def spec(self):
        split = Split(0, (self.num_embeddings,))
        return {"w": Param((self.num_embeddings, self.dim), "normal", self.init_std, role="table", split=split)}

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
        return {"scale": Param((self.dim,), "ones", role="scale"), "bias": Param((self.dim,), "zeros", role="bias")}

    def apply(self, params, x, *, rng=None):
        """(..., dim) -> (..., dim)."""
        return ops.layer_norm(x, params["scale"], params["bias"], self.eps)


@attrs.frozen
class RMSNorm(Module):
    """``x / rms(x) * scale`` over the last axis, no mean and no bias (Llama's ``LlamaRMSNorm``)."""

    dim: int = attrs.field(validator=positive)
    eps: float = attrs.field(default=1e-6, validator=number(0, low_open=True))

    def spec(self):
        return {"scale": Param((self.dim,), "ones", role="scale")}  # [weight]

    def apply(self, params, x, *, rng=None):
        """(..., dim) -> (..., dim)."""
        return ops.rms_norm(x, params["scale"], self.eps)


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
        return {"w": Param((self.max_len, self.dim), "normal", self.init_std, role="positions")}

    def apply(self, params, positions, *, rng=None, dtype=None):
        """(...) integer positions -> (..., dim)."""
        return self.lookup(params, check_positions(positions, self.max_len))

    def lookup(self, params, positions, *, dtype=None):
        """:meth:`apply` for positions already checked by the caller."""
        return ops.embedding(params["w"], positions)


@attrs.frozen
class CrossEntropy(Module):
    """Mean cross-entropy of logits (..., V) against integer targets (...), skipping
    ``ignore_index``: the model's loss, a part a plan may swap (``lt.parallel``'s splits V)."""

    def spec(self):
        return {}

    def apply(self, params, logits, targets, *, ignore_index: int = -100):
        """logits (B, T, V), targets (B, T) -> () float."""
        return ops.cross_entropy(logits, targets, ignore_index)
