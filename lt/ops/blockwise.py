"""Blockwise (flash-style) attention: no (T, S) matrix, forward or backward.

Shapes: ... the batch axes (B, H), T queries, S keys, d per-head size, dv value size,
bq × bk one tile of queries against keys.

Queries go in blocks of bq rows; each block meets the keys in blocks of bk columns with an
online softmax (FlashAttention, Dao 2022, Algorithm 1, in FlashAttention-2's loop order):
a running row max m and row sum l, the partial output rescaled by ``exp(m_old - m_new)``
whenever the max grows. The forward keeps q, k, v, the output and the log-sum-exp
``lse = m + log l`` per row (T numbers, not T × S); the backward recomputes each tile's
weights ``exp(s - lse)`` and uses ``D = rowsum(g ∘ out)`` for the softmax term, so the
largest array either way is one tile (..., bq, bk).

Causal attention (``causal=True``: key j is seen by query i when ``j <= i + S - T``) never
computes the tiles above the diagonal; a general mask is sliced per tile, and tiles it
masks entirely are skipped. The conventions are the full kernel's (``lt.ops.attention``):
masked scores get the dtype's most negative finite value, a fully masked row gets uniform
weights over all S keys (its q and k get no gradient), and dropout drops the same weights
(``dropout_keep`` draws by position), so both kernels give the same numbers.

Where the compiled kernels cover the call (``lt.ops.attention.layout``: numba, float32/64, no
dropout), the same algorithm runs as compiled tile loops (``lt.ops.kernels.attention_tiles``);
the NumPy code below is the reference, and runs everywhere else.
"""

from __future__ import annotations

import functools
import math

import numpy as np

from .. import threads
from .attention import Layout, attention, dropout_keep, flash, flash_vjp, layout
from .basic import unbroadcast
from .primitive import primitive
from .softmax import masked_fill_value

__all__ = ["blockwise_attention", "attention_kernel", "dot_product_attention", "BLOCKWISE_FROM"]

# One tile (..., bq, bk) holds at most this many scores (2 MiB of float32): small enough to
# stay in cache while it is exponentiated, large enough that each matmul is a real GEMM.
_TILE = 1 << 19
# The policy's crossover: the blockwise kernel from this many queries x keys per (B, H) slice.
# Measured by `python benchmarks/bench_attention.py --seq 128 256 --no-memory` (Intel Xeon,
# 2 cores, batch 1, 12 x 64 heads, causal): blockwise / full tokens/s at T = 128 was 1.33
# forward and 0.99 forward + backward, at 256 1.45 and 1.06, and it grows with T (2.6x and
# 1.5x at 2048 in the full run); at 4 x 4 heads of 16 (bench_llm's sdpa row) blockwise was
# also ahead at T = 128. Shorter sequences keep the full matrix, where one tile is all there is.
# With the compiled kernels (lt.ops.kernels) the same crossover holds: at T = 128 the compiled
# tiles ran 1.2-1.4x the fused full kernel forward and forward + backward (AMD EPYC, shared).
BLOCKWISE_FROM = 128 * 128
# The backward deals its query blocks to this many groups, each with its own dk, dv sums (memory:
# that many copies of dk and dv): enough for the cores of a laptop to share, fixed by the code.
_BACKWARD_GROUPS = 4


def attention_kernel(T: int, S: int, *, return_weights: bool = False, kernel: str = "auto") -> str:
    """The one policy: ``"full"`` or ``"blockwise"`` for T queries against S keys.

    ``kernel`` forces a choice; ``"auto"`` takes the full matrix where it is faster (short
    sequences, and single-query decode steps) and the blockwise kernel from ``BLOCKWISE_FROM``
    scores per slice. Attention maps (``return_weights``) need the full matrix.
    """
    if kernel not in ("auto", "full", "blockwise"):
        raise ValueError(f"kernel must be 'auto', 'full' or 'blockwise', got {kernel!r}")
    if return_weights:
        if kernel == "blockwise":
            raise ValueError("return_weights needs the full (T, S) matrix: use kernel='full' or 'auto'")
        return "full"
    if kernel != "auto":
        return kernel
    return "blockwise" if T > 1 and T * S >= BLOCKWISE_FROM else "full"


def dot_product_attention(
    q, k, v, mask=None, dropout=0.0, rng=None, *, causal=False, kernel="auto", return_weights=False, block=None
):
    """Scaled dot-product attention by the kernel :func:`attention_kernel` picks.

    q (..., T, d), k (..., S, d), v (..., S, dv) -> (..., T, dv) [and weights (..., T, S)];
    ``mask`` bool broadcastable to (..., T, S), True = may attend; ``causal`` adds the causal
    mask (key j seen by query i when ``j <= i + S - T``) and lets the blockwise kernel skip
    the tiles above the diagonal. ``block`` (bq, bk) overrides the blockwise tile.
    """
    T, S = q.shape[-2], k.shape[-2]
    if attention_kernel(T, S, return_weights=return_weights, kernel=kernel) == "blockwise":
        return blockwise_attention(q, k, v, mask, dropout, rng, causal=causal, block=block)
    if causal:
        tri = np.tri(T, S, S - T, dtype=bool)  # (T, S)
        mask = tri if mask is None else np.asarray(mask, bool) & tri
    return attention(q, k, v, mask, dropout, rng, return_weights=return_weights)


def _blocks(n: int, T: int, S: int, block) -> tuple[int, int]:
    """(bq, bk): up to 1024 keys a tile; then query rows, a multiple of 16 (at least 16), as
    many as fit ``_TILE`` scores over the n = B·H slices but no more than a quarter of T (from
    32), so that a causal call skips a fair share of its tiles."""
    if block is not None:
        return max(1, int(block[0])), max(1, int(block[1]))
    bk = min(S, 1024)
    bq = min(T, _TILE // max(1, n * bk), max(32, T // 4))
    return max(16, bq - bq % 16), max(1, bk)


class _Tiles:
    """The tiles of one call: query/key ranges, masks and dropout, the same forward and backward.

    Tiles are held transposed, keys by queries (..., bk, bq): reductions over keys then run
    down the columns (vectorised across queries), and the GEMMs take their fast layouts.
    """

    def __init__(self, lead, T, S, mask, causal, rate, rng, block, dtype):
        self.lead, self.T, self.S, self.causal, self.rate, self.rng = lead, T, S, causal, rate, rng
        self.mask = None if mask is None else np.broadcast_to(np.asarray(mask, bool), np.shape(mask)[:-2] + (T, S))
        self.bq, self.bk = _blocks(math.prod(lead), T, S, block)
        self.dtype, self.fill = dtype, masked_fill_value(dtype)
        self.alive = self._alive()

    def _alive(self):
        """Rows with a key to attend to, bool broadcastable to (..., T); None when all have one."""
        T, S, off = self.T, self.S, self.S - self.T
        alive = None
        if self.causal and off < 0:
            alive = np.arange(T) + off >= 0  # (T,)
        if self.mask is not None:
            if self.causal:
                alive = np.zeros(self.mask.shape[:-1], bool)  # (..., T)
                for i0, i1 in self.rows():  # a (bq, S) temporary at a time
                    tri = np.tri(i1 - i0, S, i0 + off, dtype=bool)
                    alive[..., i0:i1] = (self.mask[..., i0:i1, :] & tri).any(-1)
            else:
                alive = self.mask.any(-1)
        return None if alive is None or alive.all() else alive

    def rows(self):
        for i0 in range(0, self.T, self.bq):
            yield i0, min(self.T, i0 + self.bq)

    def cols(self, i0, i1):
        """Key blocks (j0, j1, hidden) for query rows [i0, i1): ``hidden`` (..., bk, bq) is True
        where the tile is masked, None where nothing is; tiles masked entirely are skipped
        (causal: every tile above the diagonal)."""
        off = self.S - self.T
        stop = max(0, min(self.S, i1 + off)) if self.causal else self.S
        for j0 in range(0, stop, self.bk):
            j1 = min(stop, j0 + self.bk)
            m = None
            if self.causal and j1 - 1 > i0 + off:  # the tile crosses the diagonal
                m = np.tri(i1 - i0, j1 - j0, i0 + off - j0, dtype=bool)  # (bq, bk): j <= i + off
            if self.mask is not None:
                part = self.mask[..., i0:i1, j0:j1]
                m = part if m is None else m & part
            if m is not None:
                if not m.any():
                    continue
                m = None if m.all() else np.swapaxes(~m, -1, -2)
            yield j0, j1, m

    def keep(self, i0, i1, j0, j1):
        """The dropout scale of the tile (..., bk, bq): 0 or 1/(1 - rate); None without dropout."""
        if not self.rate:
            return None
        keep = dropout_keep(self.rng, self.rate, self.lead, self.T, self.S, slice(i0, i1), slice(j0, j1))
        return np.swapaxes(np.multiply(keep, self.dtype.type(1.0 / (1.0 - self.rate)), dtype=self.dtype), -1, -2)

    def uniform_rows(self, v, g=None):
        """The fully masked rows' part: their output (..., T, dv) (uniform weights 1/S over all
        keys, dropout included), or with ``g`` their gradient of v (..., S, dv)."""
        dead = ~self.alive[..., None]  # (..., T, 1)
        inv_s = self.dtype.type(1.0 / self.S)
        if not self.rate:
            if g is None:
                return np.broadcast_to(v.mean(-2, keepdims=True), self.lead + (self.T, v.shape[-1]))
            return np.where(dead, g, 0).sum(-2, keepdims=True) * inv_s  # (..., 1, dv)
        acc = np.zeros(self.lead + ((self.T,) if g is None else (self.S,)) + v.shape[-1:], self.dtype)
        for i0, i1 in self.rows():
            if not dead[..., i0:i1, :].any():
                continue
            gi = None if g is None else np.where(dead[..., i0:i1, :], g[..., i0:i1, :], 0)
            for j0 in range(0, self.S, self.bk):
                j1 = min(self.S, j0 + self.bk)
                keep = self.keep(i0, i1, j0, j1)  # (..., bk, bq)
                if g is None:
                    acc[..., i0:i1, :] += np.swapaxes(keep, -1, -2) @ v[..., j0:j1, :]
                else:
                    acc[..., j0:j1, :] += keep @ gi
        acc *= inv_s
        return acc


# Scores are exponentiated as they are, without the row max subtracted, while they cannot leave
# [-_BOUND, _BOUND]: by Cauchy-Schwarz |q_i·k_j| <= |q_i| |k_j|, so a tile whose largest query
# norm times largest key norm is at most _BOUND needs no max at all (exp neither overflows nor
# loses a row's largest terms there, and the softmax is the same to rounding): two passes over
# the tile saved. Other tiles take the online softmax's running max.
_BOUND = 60.0


def _norm_bound(x, size: int) -> list:
    """The largest row norm of x (..., n, d) in each block of ``size`` rows."""
    norms = np.sqrt(np.einsum("...i,...i->...", x, x).reshape(-1, x.shape[-2]).max(0))  # (n,)
    return [float(norms[i : i + size].max()) for i in range(0, len(norms), size)]


@primitive
def blockwise_attention(q, k, v, mask=None, dropout=0.0, rng=None, causal=False, block=None):
    """``softmax(q kᵀ / √d, mask) v`` tile by tile, never holding the (T, S) weights.

    q (..., T, d), k (..., S, d), v (..., S, dv) -> (..., T, dv); ``mask`` bool broadcastable
    to (..., T, S), True = may attend; ``causal`` adds ``j <= i + S - T``; dropout on the
    weights when ``rng`` is given; ``block`` (bq, bk) overrides the tile. Keeps q, k, v (no
    copies), the output and the row log-sum-exp (..., T, 1).
    """
    plan = None if dropout > 0.0 and rng is not None else layout(q, k, v, mask, scores=False)
    if plan is not None:  # the compiled tiles (lt.ops.kernels.attention_tiles)
        return flash(plan, causal, block)
    dtype = q.dtype
    T, d = q.shape[-2:]
    S, dv = k.shape[-2], v.shape[-1]
    lead = np.broadcast_shapes(q.shape[:-2], k.shape[:-2], v.shape[:-2])
    scale = dtype.type(1.0 / math.sqrt(d))
    rate = dropout if rng is not None else 0.0
    tiles = _Tiles(lead, T, S, mask, causal, rate, rng, block, dtype)
    out = np.empty(lead + (T, dv), dtype)
    lse = np.empty(lead + (T, 1), dtype)
    qbound, kbound = [b * float(scale) for b in _norm_bound(q, tiles.bq)], _norm_bound(k, tiles.bk)
    ones = np.ones(tiles.bk, dtype)
    # query blocks are independent: the free cores take them, the costliest (last, when causal) first
    threads.run(
        [
            functools.partial(_forward_rows, q, k, v, out, lse, tiles, scale, qbound, kbound, ones, i0, i1)
            for i0, i1 in reversed(list(tiles.rows()))
        ],
        _cost_us(tiles, d, dv),
    )
    if tiles.alive is not None:  # fully masked rows: uniform
        dead = ~tiles.alive[..., None]  # (..., T, 1)
        np.copyto(out, tiles.uniform_rows(v), where=dead)
        np.copyto(lse, np.inf, where=dead)  # recomputed weights: exp(s - inf) = 0
    return out, (q, k, v, out, lse, tiles, scale)


def _cost_us(tiles: _Tiles, d: int, dv: int) -> float:
    """One thread's estimated time for the forward: its two products and ~6 passes over the scores."""
    scores = math.prod(tiles.lead) * tiles.T * tiles.S * (0.5 if tiles.causal else 1.0)
    return threads.flops_us(2 * scores * (d + dv)) + threads.bytes_us(6 * 4 * scores)


def _forward_rows(q, k, v, out, lse, tiles, scale, qbound, kbound, ones, i0, i1) -> None:
    """Query rows [i0, i1) of the forward: their output and log-sum-exp, written in place."""
    qi = np.swapaxes(q[..., i0:i1, :] * scale, -1, -2)  # (..., d, bq): q/√d, a block at a time
    shift = l = acc = None  # running shift (None: 0) and sum (..., 1, bq), output
    for j0, j1, hidden in tiles.cols(i0, i1):
        s = k[..., j0:j1, :] @ qi  # (..., bk, bq) scores
        if hidden is not None:
            np.copyto(s, tiles.fill, where=hidden)
        alpha = None
        if shift is not None or qbound[i0 // tiles.bq] * kbound[j0 // tiles.bk] > _BOUND:
            top = s.max(-2, keepdims=True)  # (..., 1, bq)
            old = 0 if shift is None else shift  # the shift the sums so far have
            new = top if l is None else np.maximum(top, old)  # subtract the running max
            if l is not None:
                alpha = np.exp(old - new)
            s -= new
            shift = new
        np.exp(s, out=s)  # unnormalised weights
        total = (ones[: j1 - j0] @ s)[..., None, :]  # (..., 1, bq) on the BLAS
        keep = tiles.keep(i0, i1, j0, j1)
        if keep is not None:
            s *= keep
        pv = np.swapaxes(s, -1, -2) @ v[..., j0:j1, :]  # (..., bq, dv)
        if l is None:
            l, acc = total, pv
        else:
            if alpha is not None:  # rescale what came before
                l *= alpha
                acc *= np.swapaxes(alpha, -1, -2)
            l += total
            acc += pv
    if l is None or acc is None:  # every row here fully masked
        out[..., i0:i1, :], lse[..., i0:i1, :] = 0, 0
        return
    with np.errstate(divide="ignore", invalid="ignore"):  # fully masked rows: fixed by the caller
        np.divide(acc, np.swapaxes(l, -1, -2), out=out[..., i0:i1, :])
        np.log(l, out=l)
    if shift is not None:
        l += shift
    lse[..., i0:i1, :] = np.swapaxes(l, -1, -2)


@blockwise_attention.defvjp
def _blockwise_attention_vjp(res, g):
    if isinstance(res[0], Layout):  # the compiled kernel's residuals
        return flash_vjp(res, g)
    q, k, v, out, lse, tiles, scale = res
    shapes = q.shape, k.shape, v.shape
    q, k, v = (x if x.shape[:-2] == tiles.lead else np.broadcast_to(x, tiles.lead + x.shape[-2:]) for x in (q, k, v))
    dtype = q.dtype
    D = np.einsum("...i,...i->...", g, out)[..., None, :]  # (..., 1, T): Σ_j dp·p per row
    lse = np.swapaxes(lse, -1, -2)  # (..., 1, T)
    dq = np.zeros(tiles.lead + q.shape[-2:], dtype)
    # Query blocks add to dk and dv over the keys they see. They are dealt to a few groups (fixed by
    # the shapes; dealt back and forth so that causal groups get even work), each with its own
    # dk, dv sums, added up in group order afterwards: the free cores take the groups in any order.
    rows = list(tiles.rows())
    count = min(len(rows), _BACKWARD_GROUPS)
    groups: list[list[tuple[int, int]]] = [[] for _ in range(count)]
    for b, block in enumerate(rows):
        turn = b % (2 * count)
        groups[turn if turn < count else 2 * count - 1 - turn].append(block)
    sums: list[list] = [[None, None] for _ in groups]
    threads.run(
        [
            functools.partial(_backward_rows, q, k, v, g, lse, D, tiles, scale, dq, sums[i], groups[i])
            for i in range(count)
        ],
        2 * _cost_us(tiles, q.shape[-1], v.shape[-1]),
    )
    dk = np.zeros(tiles.lead + k.shape[-2:], dtype)
    dv = np.zeros(tiles.lead + v.shape[-2:], dtype)
    for pk, pv in sums:
        if pk is not None:
            dk += pk
            dv += pv
    if tiles.alive is not None:  # uniform rows: dv gets g/S
        dv += tiles.uniform_rows(v, g)
    dq *= scale
    return unbroadcast(dq, shapes[0]), unbroadcast(dk, shapes[1]), unbroadcast(dv, shapes[2])


def _backward_rows(q, k, v, g, lse, D, tiles, scale, dq, sums, blocks) -> None:
    """Query blocks ``blocks`` [(i0, i1), ...] of the backward: their dq in place, and
    ``sums = [dk, dv]``, their part of dk and dv (None when they see no key)."""
    dk = dv = None
    for i0, i1 in blocks:
        qi, gi = q[..., i0:i1, :] * scale, g[..., i0:i1, :]  # (..., bq, d), (..., bq, dv)
        qt, gt = np.swapaxes(qi, -1, -2), np.swapaxes(gi, -1, -2)
        for j0, j1, hidden in tiles.cols(i0, i1):
            if dk is None or dv is None:  # (both None until the first tile)
                dk = np.zeros(tiles.lead + k.shape[-2:], q.dtype)
                dv = np.zeros(tiles.lead + v.shape[-2:], q.dtype)
            p = k[..., j0:j1, :] @ qt  # (..., bk, bq) scores
            p -= lse[..., i0:i1]
            if hidden is not None:
                np.copyto(p, -np.inf, where=hidden)
            np.exp(p, out=p)  # the forward's weights
            dp = v[..., j0:j1, :] @ gt  # (..., bk, bq)
            keep = tiles.keep(i0, i1, j0, j1)
            if keep is None:
                dv[..., j0:j1, :] += p @ gi
            else:
                dv[..., j0:j1, :] += (p * keep) @ gi
                dp *= keep
            dp -= D[..., i0:i1]
            dp *= p  # ds = p (dp - D)
            dk[..., j0:j1, :] += dp @ qi  # qi is q/√d
            dq[..., i0:i1, :] += np.swapaxes(dp, -1, -2) @ k[..., j0:j1, :]
    sums[:] = [dk, dv]
