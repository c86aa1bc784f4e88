"""How lt uses the cores: decided once per call from the shapes and the machine, unless the
user or the caller fixes the count.

NumPy's BLAS (OpenBLAS) runs a product on a fixed number of threads that spin-wait for each
other: fast on a quiet machine, a cliff when another process holds a core (one descheduled
thread stalls the rest; a two-core training step once ran 80x slower).

**One decision per call.** Where a call enters lt (a model's forward, a layer's apply,
``value_and_grad``: the functions marked :func:`adaptive`) lt decides once how many threads
the call uses, :func:`workers`: the cores this process may use less the cores other processes
keep busy (read from ``/proc/stat`` at most every half second), so two on a quiet 2-core machine
and one beside a busy process; at most :func:`limit`'s number; exactly :func:`pin`'s when one is
pinned. The BLAS runs the call's products on that many threads and gets its count back when the
call returns; lt calls nested inside it keep the decision and never touch the BLAS.

**The user's own setting wins.** If the user set the BLAS's thread count, through an environment
variable the BLAS reads (``OPENBLAS_NUM_THREADS``, ``OMP_NUM_THREADS``, ``MKL_NUM_THREADS``,
``BLIS_NUM_THREADS``, ...; as set when lt was imported) or by changing it later
(``threadpoolctl.threadpool_limits(n)``: lt sees the BLAS's count differ from the one it had at
lt's import), lt leaves the BLAS alone and uses at most that many threads for its own pieces.
:func:`pin` is a request to lt itself and wins over both (``blas`` says exactly how lt tells).

**Context-local.** :func:`limit` and :func:`pin` hold for the Python thread or asyncio task that
set them; the BLAS's count is one number for the process, so lt calls running at once in two
threads share it (the last to set it wins until it returns).

**Pieces.** Work big enough to pay for handing it to another thread (~150-300 us on these VMs)
is cut into pieces fixed by the shapes alone (blocks of an elementwise pass, of the optimizer,
of attention: :func:`run`, :func:`elementwise`) that the workers take from a shared counter,
the calling thread among them, any BLAS call in a piece on one thread. A descheduled worker
holds up only the piece it took, and the pieces' results do not depend on how many workers
there are. Products stay with the BLAS's own threads: its spin-waiting hand-off beats any other
here (cutting gpt2's products into pieces of one-thread products made its backward 1.5x slower).

**Bits.** The BLAS adds up products of more than 448 terms in float32 (384 in float64; NumPy's
OpenBLAS on the machines measured) in an order that depends on its thread count, so the last
bits of such products can differ between a quiet and a busy moment. Runs that must agree to the
bit need one count throughout: :func:`pin`, ``limit(1)``, or the user's own setting give it, and
:func:`fixed` returns it (None while lt adapts to the load).

    with lt.threads.limit(1):          # e.g. one MPI rank per core
        state, log = lt.train(...)
    with lt.threads.pin(2):            # the same bits in every run, quiet or busy
        state, log = lt.train(...)

The parts: ``load`` (the machine), ``policy`` (limit, pin, workers), ``blas`` (the BLAS's count
and the user's), ``calls`` (adaptive, blas_threads), ``pool`` (the workers), ``cost`` (the
cost model and the pieces).
"""

from __future__ import annotations

from .calls import adaptive, blas_threads, single_blas
from .cost import MIN_PARALLEL_US, PIECE_US, blocks, bytes_us, flops_us, pieces
from .load import cores
from .policy import fixed, free_cores, limit, pin, workers
from .pool import elementwise, run

__all__ = [
    "MIN_PARALLEL_US",
    "PIECE_US",
    "adaptive",
    "blas_threads",
    "blocks",
    "bytes_us",
    "cores",
    "elementwise",
    "fixed",
    "flops_us",
    "free_cores",
    "limit",
    "pieces",
    "pin",
    "run",
    "single_blas",
    "workers",
]
