"""The gate of gated feed-forward layers: SwiGLU (Shazeer 2020), as in Llama-family decoders.

Shapes: ... any axes; ``gate`` and ``up`` have one shape, (..., F) for F hidden units.
The forward keeps only what its VJP needs: ``gate``, ``up`` and ``sigmoid(gate)``.
"""

from __future__ import annotations

import numpy as np

from .primitive import primitive

__all__ = ["swiglu"]


@primitive
def swiglu(gate, up):
    """``silu(gate) * up`` with ``silu(a) = a * sigmoid(a)``: the gated feed-forward's middle.

    Keeps ``gate``, ``up`` and ``sigmoid(gate)``.
    """
    sig = np.negative(gate)
    np.exp(sig, out=sig)
    sig += 1
    np.reciprocal(sig, out=sig)  # sigmoid(gate)
    h = gate * sig
    h *= up
    return h, (gate, up, sig)


@swiglu.defvjp
def _swiglu_vjp(res, g):
    gate, up, sig = res
    silu = gate * sig
    dup = g * silu
    # d silu / d a = sig * (1 + a * (1 - sig))
    dgate = 1 - sig
    dgate *= gate
    dgate += 1
    dgate *= sig
    dgate *= up
    dgate *= g
    return dgate, dup
