"""The cost model: how long work takes one thread, estimated from shapes alone, and the pieces
it is cut into.

Work is split when one thread would take ``MIN_PARALLEL_US`` or more. Waking a worker costs
~150-300 us on the project's 2-core VMs (an idle virtual CPU is slow to wake), a helper competes
with the BLAS's threads while they still spin after a product, and memory-bound passes gain
little from a second core there (two threads: 1.3x on a 48 MB pass, AdamW on 12 M parameters
41 -> 30-37 ms): so only long work is shared, e.g. gpt2's cross-entropy over (256, 50257) logits
and its optimizer step. Pieces of at least ``PIECE_US`` keep the hand-offs few. Costs are flops
at 100 GFLOP/s, or the bytes read and written at 15 GB/s for memory-bound passes, whichever is
longer (what one core of the project's 2-core VMs sustains: about 100 GFLOP/s in float32
products, about 15 GB/s of memory traffic).

Because the pieces depend on the shapes only, never on how many workers there are or how busy
the machine is, work done in pieces gives the same bits on one worker or many. The thresholds
are read at call time from this module (tests lower them to cut small work into pieces).
"""

from __future__ import annotations

MIN_PARALLEL_US = 5000.0
PIECE_US = 2500.0
MAX_PIECES = 16
_FLOPS_PER_US = 100e3
_BYTES_PER_US = 15e3
_ALIGN = 8  # piece boundaries on multiples of 8 columns/rows (the kernels' unroll)


def bytes_us(nbytes: float) -> float:
    """One thread's estimated time for a memory-bound pass moving ``nbytes`` bytes, in microseconds."""
    return nbytes / _BYTES_PER_US


def flops_us(flops: float) -> float:
    """One thread's estimated time for ``flops`` floating-point operations in GEMMs, in microseconds."""
    return flops / _FLOPS_PER_US


def pieces(size: int, count: int) -> list[slice]:
    """``size`` split into at most ``count`` contiguous slices on multiples of 8 (the last takes the rest)."""
    step = max(_ALIGN, -(-size // count // _ALIGN) * _ALIGN)
    return [slice(lo, min(lo + step, size)) for lo in range(0, size, step)]


def count(us: float) -> int:
    """How many pieces a job of ``us`` microseconds (one thread) is cut into: 1, 2, 4, 8 or 16
    (powers of two share evenly among 1, 2 or 4 workers), each of at least PIECE_US when split."""
    if us < MIN_PARALLEL_US:
        return 1
    return min(MAX_PIECES, 1 << max(1, int(us // PIECE_US).bit_length() - 1))


def blocks(rows: int, bytes_per_row: float) -> list[slice]:
    """Row blocks for memory-bound passes that read and write ``bytes_per_row`` bytes a row:
    one block when one thread would be quick, else 2-16 blocks fixed by the two numbers alone."""
    n = count(bytes_us(rows * bytes_per_row))
    return [slice(0, rows)] if n == 1 or rows < 2 else pieces(rows, n)
