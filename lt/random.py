"""Counter-based random keys and the samplers that take them.

A :class:`Key` is a value (two 64-bit words), not a generator: the same key always gives
the same numbers, and nothing here keeps state. New keys come from ``fold_in(rng, data)``
(a Philox block keyed by ``rng`` at a counter made from ``data``), so
``split(rng, n)[i] == fold_in(rng, i)`` and asking for more keys never changes the first.

Every sampler turns raw Philox-4x64 bits into numbers with lt's own arithmetic, so the
same seed gives the same floats on any NumPy version (NumPy keeps bit generators'
raw streams stable; its distribution code is not part of that promise).
"""

from __future__ import annotations

import hashlib
from typing import overload

import attrs
import numpy as np

from . import _checks

__all__ = [
    "Key",
    "key",
    "fold_in",
    "split",
    "stack",
    "bits",
    "bits_at",
    "uniform",
    "normal",
    "bernoulli",
    "bernoulli_at",
    "categorical",
    "randint",
    "permutation",
]

_MASK64 = (1 << 64) - 1
# The last counter word separates the uses of one key, so they never share bits.
_STREAM, _FOLD_INT, _FOLD_STR, _SEED = 0, 1, 2, 3


@attrs.frozen(repr=False)
class Key:
    """A PRNG key: two unsigned 64-bit words. Immutable, hashable and picklable."""

    words: tuple[int, int] = attrs.field(converter=lambda w: (int(w[0]) & _MASK64, int(w[1]) & _MASK64))

    def __repr__(self) -> str:
        return f"Key(0x{self.words[0]:016x}, 0x{self.words[1]:016x})"


def _philox(k: Key, counter: tuple[int, int, int, int], n: int) -> np.ndarray:
    """``n`` raw uint64 words of the Philox-4x64 stream keyed by ``k`` from ``counter``."""
    gen = np.random.Philox(key=np.array(k.words, dtype=np.uint64), counter=np.array(counter, dtype=np.uint64))
    return gen.random_raw(n)


def _check_key(rng) -> Key:
    if not isinstance(rng, Key):
        if hasattr(rng, "map_keys"):
            raise TypeError(
                "a batch of keys (lt.random.stack under lt.vmap) reached a sampler; under lt.vmap only "
                "fold_in, split and lt.ops.dropout take one: fold_in each member's key outside, or share one key"
            )
        raise TypeError(f"expected an lt.random.Key (from lt.random.key(seed)), got {type(rng).__name__}")
    return rng


def key(seed: int) -> Key:
    """The key for an integer ``seed`` (any size; negative seeds are taken modulo 2**128)."""
    if not _checks.is_int(seed):
        raise TypeError(f"seed must be an integer, got {seed!r}")
    seed = int(seed) % (1 << 128)
    w = _philox(Key((seed, seed >> 64)), (0, 0, 0, _SEED), 2)
    return Key((w[0], w[1]))


@overload
def fold_in(rng: Key, data) -> Key: ...
@overload
def fold_in(rng: None, data) -> None: ...
def fold_in(rng: Key | None, data) -> Key | None:
    """A new key derived from ``rng`` and ``data`` (a non-negative int below 2**128, or a str).

    Different data give independent keys; the same data always give the same key.
    Strings name places in a model: ``fold_in(rng, "attn")``. No key stays no key:
    ``fold_in(None, data)`` is None, so deterministic code (``rng=None``) passes through.
    """
    if rng is None:
        return None
    batched = getattr(rng, "map_keys", None)
    if batched is not None:  # a batch of keys under lt.vmap: each member's own
        return batched(lambda k: fold_in(k, data))
    _check_key(rng)
    if isinstance(data, str):
        h = int.from_bytes(hashlib.blake2b(data.encode("utf-8"), digest_size=16).digest(), "little")
        tag = _FOLD_STR
    elif _checks.is_int(data):
        h, tag = int(data), _FOLD_INT
        if not 0 <= h < (1 << 128):
            raise ValueError(f"fold_in data must be in [0, 2**128), got {h}")
    else:
        raise TypeError(f"fold_in data must be an int or a str, got {type(data).__name__}")
    w = _philox(rng, (h & _MASK64, h >> 64, 0, tag), 2)
    return Key((w[0], w[1]))


def stack(keys) -> np.ndarray:
    """Keys as one batch (a read-only object array, one key per entry) for ``lt.vmap``: inside
    the mapped function each member sees its own key, through ``fold_in``, ``split`` and the
    dropout of ``lt.ops`` (the samplers refuse a batch of keys)."""
    keys = [_check_key(k) for k in keys]
    out = np.empty(len(keys), dtype=object)
    out[:] = keys
    out.flags.writeable = False
    return out


def split(rng: Key, n: int = 2) -> tuple[Key, ...]:
    """``n`` independent keys; ``split(rng, n)[i] == fold_in(rng, i)``."""
    return tuple(fold_in(rng, i) for i in range(_checks.integer(n, "split: n", 0)))


def _shape(shape) -> tuple[int, ...]:
    return (int(shape),) if np.ndim(shape) == 0 else tuple(int(s) for s in shape)


def bits(rng: Key, shape=()) -> np.ndarray:
    """Raw uniform uint64 words of the key's stream, shaped ``shape``."""
    shape = _shape(shape)
    n = int(np.prod(shape, dtype=np.int64))
    return _philox(_check_key(rng), (0, 0, 0, _STREAM), n).reshape(shape)


_GAMMA, _MIX1, _MIX2 = np.uint64(0x9E3779B97F4A7C15), np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)


def _mix64_(z: np.ndarray) -> np.ndarray:
    """SplitMix64's finaliser on uint64 words, in place (multiplication wraps modulo 2**64)."""
    z ^= z >> np.uint64(30)
    z *= _MIX1
    z ^= z >> np.uint64(27)
    z *= _MIX2
    z ^= z >> np.uint64(31)
    return z


def bits_at(rng: Key, counters) -> np.ndarray:
    """Uniform uint64 words at the given integer ``counters`` (any shape): a pure function of
    the key and each counter, so a word never depends on which other counters are asked for.

    Unlike :func:`bits` (one Philox stream read in order), this suits draws indexed by a
    position, such as attention dropout at (row, column), made tile by tile. Each word is
    SplitMix64's finaliser applied twice, keyed by the two key words (SplitMix64 passes
    BigCrush as a counter-based generator; the second round mixes in the key's other word).
    """
    k0, k1 = (np.uint64(w) for w in _check_key(rng).words)
    z = np.asarray(counters, dtype=np.uint64) * _GAMMA  # a new array: counters are never written
    z += k0
    _mix64_(z)
    z ^= k1
    return _mix64_(z)


def bernoulli_at(rng: Key, p: float, counters) -> np.ndarray:
    """Booleans, True with probability ``p``, at the given ``counters`` (see :func:`bits_at`):
    compared on the words' top 53 bits, as :func:`bernoulli`."""
    p = _checks.real(p, "bernoulli_at: p", 0.0, 1.0)
    if p >= 1.0:
        return np.ones(np.shape(counters), bool)
    return bits_at(rng, counters) < np.uint64(int(p * 2.0**53) << 11)  # (w >> 11) < t  <=>  w < t·2**11


def _unit(raw: np.ndarray, dtype) -> np.ndarray:
    """Floats in [0, 1) from raw words: the top 24 (float32) or 53 (float64) bits."""
    dtype = np.dtype(dtype)
    if dtype == np.float32:
        return (raw >> np.uint64(40)).astype(np.float32) * np.float32(2.0**-24)
    if dtype == np.float64:
        return (raw >> np.uint64(11)).astype(np.float64) * 2.0**-53
    raise TypeError(f"expected float32 or float64, got {dtype}")


def uniform(rng: Key, shape=(), dtype=np.float32, minval=0.0, maxval=1.0) -> np.ndarray:
    """Uniform floats in ``[minval, maxval)``."""
    u = _unit(bits(rng, shape), dtype)
    if minval != 0.0 or maxval != 1.0:
        u = u * u.dtype.type(maxval - minval) + u.dtype.type(minval)
    return u


def normal(rng: Key, shape=(), dtype=np.float32) -> np.ndarray:
    """Standard normal floats by the Box–Muller transform (computed in float64)."""
    shape = _shape(shape)
    n = int(np.prod(shape, dtype=np.int64))
    half = (n + 1) // 2
    raw = bits(rng, 2 * half)
    u1 = 1.0 - _unit(raw[:half], np.float64)  # (0, 1]: log is finite
    u2 = _unit(raw[half:], np.float64)
    r = np.sqrt(-2.0 * np.log(u1))
    theta = 2.0 * np.pi * u2
    z = np.concatenate([r * np.cos(theta), r * np.sin(theta)])[:n]
    return z.reshape(shape).astype(dtype, copy=False)


def bernoulli(rng: Key, p: float, shape=()) -> np.ndarray:
    """Booleans that are True with probability ``p`` (compared on 53-bit integers)."""
    p = _checks.real(p, "bernoulli: p", 0.0, 1.0)
    threshold = np.uint64(int(p * 2.0**53))
    return (bits(rng, shape) >> np.uint64(11)) < threshold if p < 1.0 else np.ones(_shape(shape), bool)


def categorical(rng: Key, logits, axis: int = -1) -> np.ndarray:
    """Indices drawn from ``softmax(logits)`` along ``axis`` (the Gumbel-max trick).

    Entries at the dtype's most negative value (masked) are never drawn unless a whole
    row is masked.
    """
    logits = np.asarray(logits, dtype=np.float64)
    u = ((bits(rng, logits.shape) >> np.uint64(11)).astype(np.float64) + 0.5) * 2.0**-53
    gumbel = -np.log(-np.log(u))
    return np.argmax(logits + gumbel, axis=axis)


def randint(rng: Key, shape, minval: int, maxval: int) -> np.ndarray:
    """Integers uniform in ``[minval, maxval)`` (int64)."""
    if maxval <= minval:
        raise ValueError(f"randint: need minval < maxval, got [{minval}, {maxval})")
    span = np.uint64(maxval - minval)
    return (bits(rng, shape) % span).astype(np.int64) + np.int64(minval)


def permutation(rng: Key, n: int) -> np.ndarray:
    """A uniformly random permutation of ``range(n)``."""
    return np.argsort(bits(rng, n), kind="stable")
