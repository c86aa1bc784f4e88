"""Adam's (and AdamW's) whole update of a block of a leaf, in one pass over memory.

A block of a leaf, flat (n elements); the hyperparameters arrive as ``h``, six numbers in the
leaf's dtype (so that a float32 leaf is computed in float32, as NumPy's blocks in
``lt.optim.adam_update._adam_block`` compute it)::

    h = (1 - b1, 1 - b2, 1 / root_correction, eps, -step_size, decay_rate)

and for every i < n, the operations of ``_adam_block`` in the same order::

    m'[i] = (g[i] - m[i]) * (1 - b1) + m[i]                  first moment
    v'[i] = (g[i] * g[i] - v[i]) * (1 - b2) + v[i]           second moment
    u[i]  = m'[i] / (sqrt(v'[i]) / root_correction + eps) * -step_size
            - decay_rate * p[i]                              (AdamW; only when p has elements)

``step_size = lr / (1 - b1^t)`` and ``root_correction = sqrt(1 - b2^t)`` carry the bias
corrections (1 without them). NumPy makes 13 passes over each block; this reads g, m, v (and p)
once and writes m', v', u once. ``fastmath``'s ``contract`` may fuse a product and a sum (one
rounding instead of two), so results agree with NumPy's to a few units in the last place of the
terms, not bit for bit.

Two kernels, because LLVM vectorises a loop over several arrays only after checking at run time
that the arrays it writes do not overlap those it reads: :func:`adam_block` writes new buffers;
:func:`adam_block_over` (a donated step) writes m' over m, v' over v and u over g through the
same arrays it reads, which needs no such check. The division is ``np.divide``: numba's ``/``
checks for a zero divisor and raises (Python's rule), and that branch stops the vectorisation.
The caller cuts a leaf into blocks for lt's worker pool (:func:`lt.threads.run`).
"""

from __future__ import annotations

import numpy as np

from .jit import kernel

__all__ = ["adam_block", "adam_block_over"]


@kernel
def adam_block(g, m, v, p, m_out, v_out, u_out, h):
    """Adam's rule on one block (see the module's notes): reads g, m, v, p (p empty: no decay),
    writes m_out, v_out, u_out (new buffers); all (n,) of one dtype."""
    c1, c2, inv_root, eps, neg_step, decay = h[0], h[1], h[2], h[3], h[4], h[5]
    if p.size:
        for i in range(g.size):
            gi, mi, vi = g[i], m[i], v[i]
            mn = (gi - mi) * c1 + mi
            vn = (gi * gi - vi) * c2 + vi
            m_out[i] = mn
            v_out[i] = vn
            u_out[i] = np.divide(mn, np.sqrt(vn) * inv_root + eps) * neg_step - p[i] * decay
    else:
        for i in range(g.size):
            gi, mi, vi = g[i], m[i], v[i]
            mn = (gi - mi) * c1 + mi
            vn = (gi * gi - vi) * c2 + vi
            m_out[i] = mn
            v_out[i] = vn
            u_out[i] = np.divide(mn, np.sqrt(vn) * inv_root + eps) * neg_step


@kernel
def adam_block_over(g, m, v, p, h):
    """:func:`adam_block` in place: m' over m, v' over v, u over g (each element read before it
    is written); p read (empty: no decay); all (n,) of one dtype."""
    c1, c2, inv_root, eps, neg_step, decay = h[0], h[1], h[2], h[3], h[4], h[5]
    if p.size:
        for i in range(g.size):
            gi, mi, vi = g[i], m[i], v[i]
            mn = (gi - mi) * c1 + mi
            vn = (gi * gi - vi) * c2 + vi
            m[i] = mn
            v[i] = vn
            g[i] = np.divide(mn, np.sqrt(vn) * inv_root + eps) * neg_step - p[i] * decay
    else:
        for i in range(g.size):
            gi, mi, vi = g[i], m[i], v[i]
            mn = (gi - mi) * c1 + mi
            vn = (gi * gi - vi) * c2 + vi
            m[i] = mn
            v[i] = vn
            g[i] = np.divide(mn, np.sqrt(vn) * inv_root + eps) * neg_step
