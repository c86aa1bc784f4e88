"""Rotary position embedding in one pass, forward and backward (the VJP is the same rotation
with the sine negated: a rotation's transpose turns the other way).

Shapes: ``x``, ``y`` (B, H, T, d) C-contiguous; ``cos``, ``sin`` (Bc, T, d) with Bc 1 (every
row of the batch at the same positions) or B; P = d/2 pairs, pair i is (x[i], x[i + P])
(Hugging Face's half-split layout, as ``lt.ops.rope``). NumPy's version makes five passes
and two temporaries (``x * cos``, the concatenated ``rotate_half(x)``, its product, the sum).
"""

from __future__ import annotations

from .jit import prange, twin

__all__ = ["rope_rotate"]


def _rope_rotate(x, cos, sin, y, sign):
    """y = x · cos + sign · rotate_half(x) · sin, pair by pair: the forward with ``sign`` 1
    (y1 = x1 c1 - x2 s1, y2 = x2 c2 + x1 s2); the VJP with ``sign`` -1 on the cotangent
    (dx1 = g1 c1 + g2 s2, dx2 = g2 c2 - g1 s1, the same loop with s1 and s2 trading roles)."""
    B, H, T, d = x.shape
    P = d // 2
    shared = cos.shape[0] == 1
    for bh in prange(B * H):
        b, h = bh // H, bh % H
        a = 0 if shared else b
        for t in range(T):
            xr, yr, cr, sr = x[b, h, t], y[b, h, t], cos[a, t], sin[a, t]
            x1, x2, y1, y2 = xr[:P], xr[P:], yr[:P], yr[P:]
            c1, c2, s1, s2 = cr[:P], cr[P:], sr[:P], sr[P:]
            if sign > 0:
                for i in range(P):
                    y1[i] = x1[i] * c1[i] - x2[i] * s1[i]
                    y2[i] = x2[i] * c2[i] + x1[i] * s2[i]
            else:
                for i in range(P):
                    y1[i] = x1[i] * c1[i] + x2[i] * s2[i]
                    y2[i] = x2[i] * c2[i] - x1[i] * s1[i]


rope_rotate = twin(_rope_rotate)
