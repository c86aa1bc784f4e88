"""The parts of Llama-family blocks that are not GPT-2's: RMS norm and the gated feed-forward.

Shapes: ... any leading axes, D hidden, F feed-forward. Hugging Face names in brackets.
"""

from __future__ import annotations

import functools

import attrs

from .. import ops
from .._checks import number, positive
from ..ops.collective import Group
from .layers import Linear
from .module import Module, Param
from .parallel import enter, local_size, row_parallel

__all__ = ["RMSNorm", "GatedFeedForward"]


@attrs.frozen
class RMSNorm(Module):
    """``x / rms(x) * scale`` over the last axis, no mean and no bias (``LlamaRMSNorm``)."""

    dim: int = attrs.field(validator=positive)
    eps: float = attrs.field(default=1e-6, validator=number(0, low_open=True))

    def spec(self):
        return {"scale": Param((self.dim,), "ones")}  # [weight]

    def apply(self, params, x, *, rng=None):
        """(..., dim) -> (..., dim)."""
        return ops.rms_norm(x, params["scale"], self.eps)


@attrs.frozen
class GatedFeedForward(Module):
    """``down(silu(gate(x)) * up(x))`` (SwiGLU), no biases: (..., D) -> (..., F) -> (..., D).

    With ``tp`` (P ranks): ~F / P units per rank, ``gate``/``up`` columns and ``down`` rows."""

    dim: int = attrs.field(validator=positive)
    hidden_dim: int = attrs.field(validator=positive)
    out_init_std: float = 0.02
    tp: Group | None = None

    @functools.cached_property
    def gate(self) -> Linear:
        return Linear(self.dim, local_size(self.hidden_dim, self.tp), bias=False)  # [gate_proj]

    @functools.cached_property
    def up(self) -> Linear:
        return Linear(self.dim, local_size(self.hidden_dim, self.tp), bias=False)  # [up_proj]

    @functools.cached_property
    def down(self) -> Linear:
        return Linear(
            local_size(self.hidden_dim, self.tp), self.dim, bias=False, init_std=self.out_init_std
        )  # [down_proj]

    def spec(self):
        return {"gate": self.gate.spec(), "up": self.up.spec(), "down": self.down.spec()}

    def apply(self, params, x, *, rng=None):
        """(..., D) -> (..., D)."""
        x = enter(x, self.tp)
        h = ops.swiglu(self.gate.apply(params["gate"], x), self.up.apply(params["up"], x))  # (..., F [/ P])
        return row_parallel(params["down"], h, self.tp)
