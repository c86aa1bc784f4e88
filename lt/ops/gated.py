"""The gate of gated feed-forward layers: SwiGLU (Shazeer 2020), as in Llama-family decoders.

Shapes: ... any axes; ``gate`` and ``up`` have one shape, (..., F) for F hidden units.
The forward keeps only what its VJP needs: ``gate``, ``up`` and ``sigmoid(gate)``.
"""

from __future__ import annotations

import numpy as np

from . import kernels
from .basic import add, mul, sub, tanh
from .kernels import activations as fused
from .primitive import primitive
from .traces import add_tangents, batch_size, broadcast_front, shape_of

__all__ = ["swiglu"]


@primitive
def swiglu(gate, up):
    """``silu(gate) * up`` with ``silu(a) = a * sigmoid(a)``: the gated feed-forward's middle.

    Keeps ``gate``, ``up`` and ``sigmoid(gate)``. With the kernels (one float dtype, one shape,
    contiguous): one pass (``kernels.activations``).
    """
    if _fused(gate, up):
        sig, h = np.empty_like(gate), np.empty_like(gate)
        c, itype, bias, shift = fused.exp_constants(gate.dtype)
        run = kernels.pick(fused.swiglu_forward, 4 * gate.nbytes)
        run(gate.reshape(-1), up.reshape(-1), sig.reshape(-1), h.reshape(-1), h.reshape(-1).view(itype), c, bias, shift)
        return h, (gate, up, sig)
    sig = np.negative(gate)
    np.exp(sig, out=sig)
    sig += 1
    np.reciprocal(sig, out=sig)  # sigmoid(gate)
    h = gate * sig
    h *= up
    return h, (gate, up, sig)


def _fused(gate, up) -> bool:
    """Whether the kernels take this call: on, float32/float64, one shape and dtype, C-contiguous."""
    return (
        kernels.enabled()
        and isinstance(gate, np.ndarray)
        and isinstance(up, np.ndarray)
        and gate.dtype in (np.float32, np.float64)
        and up.dtype == gate.dtype
        and up.shape == gate.shape
        and gate.flags.c_contiguous
        and up.flags.c_contiguous
    )


@swiglu.defvjp
def _swiglu_vjp(res, g):
    gate, up, sig = res
    if _fused(gate, up) and g.shape == gate.shape:
        g = np.ascontiguousarray(g, gate.dtype)
        dgate, dup = np.empty_like(gate), np.empty_like(gate)
        run = kernels.pick(fused.swiglu_backward, 6 * gate.nbytes)
        flat = (a.reshape(-1) for a in (gate, up, sig, g, dgate, dup))  # (n,) views
        run(*flat, gate.dtype.type(1))
        return dgate, dup
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


@swiglu.defbatch
def _swiglu_batch(args, dims):
    """One call on the batch: gate and up batched alike (the forward and VJP want one shape)."""
    if dims[0] == dims[1]:
        return swiglu(*args), dims[0]
    size = batch_size(args, dims)
    return swiglu(*(broadcast_front(a, d, size) for a, d in zip(args, dims))), 0


@swiglu.defjvp
def _swiglu_jvp(primals, tangents):
    """``dh = dgate · up · (σ + silu (1 - σ)) + dup · silu``, σ = sigmoid(gate) as ½(1 + tanh(gate/2))."""
    gate, up = primals
    dgate, dup = tangents
    h = swiglu(gate, up)
    if dgate is None and dup is None:
        return h, None
    silu = swiglu(gate, np.ones(shape_of(gate), gate.dtype))
    dh = None if dup is None else mul(dup, silu)
    if dgate is not None:
        sig = mul(add(tanh(mul(gate, 0.5)), 1.0), 0.5)
        dh = add_tangents(dh, mul(mul(dgate, up), add(sig, mul(silu, sub(1.0, sig)))))
    return h, dh
