"""Rotary position embedding (RoPE): each query/key pair rotated by an angle of its position.

Shapes: B batch, H heads, T positions, d head size (even), P = d/2 rotation pairs.

Pair i of a head (features i and i + P, Hugging Face's "rotate half" layout) turns by
``position * inv_freq[i]`` with ``inv_freq[i] = theta ** (-2i / d)``, so the score of a
query at m and a key at n depends on m - n only. ``rope_scaling`` stretches the
frequencies for longer contexts: ``linear`` divides them all by ``factor``; ``llama3``
(Llama 3.1) divides only the low frequencies and blends the band between. The angles are
computed in float64 and cast to the activations' dtype.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import attrs
import numpy as np

from .. import ops
from .._checks import choice, integer, number, one_of, positive, real
from .module import Module

__all__ = ["RopeScaling", "RotaryEmbedding", "rope_inv_freq"]


@attrs.frozen
class RopeScaling:
    """A ``rope_scaling`` entry of a Hugging Face config: ``linear`` or ``llama3``."""

    kind: str = attrs.field(validator=one_of("linear", "llama3"))
    factor: float = attrs.field(validator=number(0, low_open=True))
    low_freq_factor: float = attrs.field(default=1.0, validator=number(0, low_open=True))
    high_freq_factor: float = attrs.field(default=4.0, validator=number(0, low_open=True))
    original_max_position_embeddings: int = attrs.field(default=8192, validator=positive)

    @classmethod
    def from_config(cls, entry: dict | None) -> RopeScaling | None:
        """The scaling of a config's ``rope_scaling`` dict (None or type ``default``: none);
        another type is refused by name."""
        if entry is None:
            return None
        kind: Any = entry.get("rope_type", entry.get("type"))  # a JSON value, checked below
        if kind == "default":
            return None
        choice(kind, "rope_scaling type (lt implements)", ("linear", "llama3"))
        fields = {
            k: entry[k]
            for k in ("low_freq_factor", "high_freq_factor", "original_max_position_embeddings")
            if k in entry and kind == "llama3"
        }
        return cls(kind, entry["factor"], **fields)


@functools.lru_cache(maxsize=64)
def rope_inv_freq(head_dim: int, theta: float, scaling: RopeScaling | None = None) -> np.ndarray:
    """(P,) float64, read-only: the angle per position of each rotation pair (computed once
    per configuration: every layer and every decoding step asks for the same)."""
    d = integer(head_dim, "head_dim", 1)
    if d % 2:
        raise ValueError(f"rotary embedding needs an even head size, got {d}")
    inv_freq = 1.0 / real(theta, "rope_theta", 0, low_open=True) ** (np.arange(0, d, 2, dtype=np.float64) / d)
    if scaling is None:
        return _read_only(inv_freq)
    if scaling.kind == "linear":
        return _read_only(inv_freq / scaling.factor)
    # llama3: long wavelengths (past old_len / low_freq_factor) are divided by factor, short ones
    # (under old_len / high_freq_factor) kept, and the band between blended smoothly.
    old_len = scaling.original_max_position_embeddings
    wavelen = 2 * math.pi / inv_freq
    scaled = np.where(wavelen > old_len / scaling.low_freq_factor, inv_freq / scaling.factor, inv_freq)
    smooth = (old_len / wavelen - scaling.low_freq_factor) / (scaling.high_freq_factor - scaling.low_freq_factor)
    blended = (1 - smooth) * scaled / scaling.factor + smooth * scaled
    medium = (wavelen >= old_len / scaling.high_freq_factor) & (wavelen <= old_len / scaling.low_freq_factor)
    return _read_only(np.where(medium, blended, scaled))


def _read_only(a: np.ndarray) -> np.ndarray:
    a.flags.writeable = False
    return a


@attrs.frozen
class RotaryEmbedding(Module):
    """Rotates queries or keys (B, H, T, d) by their positions (B, T); no parameters."""

    head_dim: int = attrs.field(validator=positive)
    theta: float = attrs.field(default=10000.0, validator=number(0, low_open=True))
    scaling: RopeScaling | None = None

    def __attrs_post_init__(self):
        if self.head_dim % 2:
            raise ValueError(f"RotaryEmbedding.head_dim must be even, got {self.head_dim}")

    def spec(self):
        return {}

    def angles(self, positions, dtype=np.float32) -> tuple[np.ndarray, np.ndarray]:
        """``cos``, ``sin`` (B, 1, T, d) for integer positions (B, T) (or (T,) -> (1, 1, T, d))."""
        positions = np.asarray(positions)
        positions = positions[None] if positions.ndim == 1 else positions
        freqs = positions[..., None].astype(np.float64) * rope_inv_freq(self.head_dim, self.theta, self.scaling)
        angle = np.concatenate([freqs, freqs], axis=-1)[:, None]  # (B, 1, T, d): pair i at i and i + P
        return np.cos(angle).astype(dtype), np.sin(angle).astype(dtype)

    def apply(self, params, x, positions, *, rng=None, angles=None):
        """``x`` (B, H, T, d) rotated by ``positions`` (B, T): same shape. ``angles``: their
        ``(cos, sin)`` from :meth:`angles`, when the caller has them already (one per forward
        pass serves every layer's queries and keys)."""
        cos, sin = self.angles(positions, x.dtype) if angles is None else angles
        return ops.rope(x, cos, sin)
