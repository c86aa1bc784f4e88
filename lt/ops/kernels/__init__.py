"""Compiled kernels under lt's primitives (numba, the ``fast`` extra); NumPy is the reference.

A primitive asks :func:`enabled` and, where a kernel covers the call (its dtypes, its
layout), runs the kernel; otherwise, and always under ``LT_KERNELS=numpy`` or
``use("numpy")``, it runs its NumPy code, which stays the definition the kernels are tested
against. Layers never see the difference.

- ``select``: the choice (``LT_KERNELS``, :func:`use`, :func:`enabled`).
- ``jit``: ``@kernel``, lazy compilation cached on disk, threads from ``lt.threads``; ``twin`` and
  ``pick``, a kernel's serial and parallel versions chosen by the bytes a call moves.
- ``norms``, ``activations`` (GELU, SwiGLU, ReLU²), ``cross_entropy``, ``rotary`` (rotary embedding): fused
  passes, forward and backward.
- ``adam``: the whole Adam/AdamW update of a block in one pass (in place for a donated step).
- ``attention`` (the fused kernel for short sequences, tile helpers), ``attention_tiles`` (the
  online-softmax tile loops, forward and backward from the saved logsumexp).
- ``quantized``, ``matvec``: products that read int8/int4 codes directly, and float ones for decoding.
"""

from .jit import FASTMATH, PARALLEL_BYTES, Kernel, kernel, pick, prange, twin
from .select import CHOICES, active, available, enabled, use

__all__ = [
    "CHOICES",
    "FASTMATH",
    "PARALLEL_BYTES",
    "Kernel",
    "active",
    "available",
    "enabled",
    "kernel",
    "pick",
    "prange",
    "twin",
    "use",
]
