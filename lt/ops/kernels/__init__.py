"""Compiled kernels under lt's primitives (numba, the ``fast`` extra); NumPy is the reference.

A primitive asks :func:`enabled` and, where a kernel covers the call (its dtypes, its
layout), runs the kernel; otherwise, and always under ``LT_KERNELS=numpy`` or
``use("numpy")``, it runs its NumPy code, which stays the definition the kernels are tested
against. Layers never see the difference.

- ``select``: the choice (``LT_KERNELS``, :func:`use`, :func:`enabled`).
- ``jit``: ``@kernel``, lazy compilation cached on disk, threads from ``lt.threads``.
"""

from .jit import FASTMATH, Kernel, kernel, prange
from .select import CHOICES, active, available, enabled, use

__all__ = ["CHOICES", "FASTMATH", "Kernel", "active", "available", "enabled", "kernel", "prange", "use"]
