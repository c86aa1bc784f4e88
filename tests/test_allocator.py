"""``import lt`` leaves the process's allocator alone; ``lt.tune_malloc`` (called by ``lt.train``)
changes it. Each case runs in a fresh interpreter, since the setting is process-wide.

The probe asks glibc itself: a 24 MiB ``malloc`` is served by ``mmap`` under glibc's default
threshold (128 KiB, growing only up to 32 MiB and only after a larger block is freed), and
from the heap once the threshold is raised to 32 MiB. ``mallinfo2().hblkhd`` counts the
bytes in mmapped blocks, so it grows by the block in the first case and not in the second.
The probe's blocks are never freed (their pages are never touched, so they cost no memory):
freeing an mmapped block would itself raise glibc's adaptive threshold.
"""

import ctypes
import ctypes.util
import os
import pathlib
import subprocess
import sys
import textwrap

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _glibc_with_mallinfo2() -> bool:
    if not sys.platform.startswith("linux"):
        return False
    try:
        return hasattr(ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6"), "mallinfo2")
    except OSError:
        return False


pytestmark = pytest.mark.skipif(not _glibc_with_mallinfo2(), reason="needs glibc >= 2.33 (mallinfo2) on Linux")

PROBE = textwrap.dedent("""
    import ctypes, ctypes.util, sys
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    class Info(ctypes.Structure):
        _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd",
                                                    "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]
    libc.mallinfo2.restype = Info
    libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]

    def mmapped(size=24 << 20):
        before = libc.mallinfo2().hblkhd
        libc.malloc(size)                  # never freed: freeing an mmapped block would raise the threshold
        return libc.mallinfo2().hblkhd - before >= size

    print("start", mmapped())
    print("start big", mmapped(64 << 20))
""")


def run(code: str, **env) -> list[str]:
    proc = subprocess.run([sys.executable, "-c", PROBE + textwrap.dedent(code)], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT), "OPENBLAS_NUM_THREADS": "1", **env},
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.split("\n")[:-1]


def test_import_lt_leaves_the_allocator_alone_and_tune_malloc_changes_it():
    assert run("""
        import lt
        print("after import", mmapped())
        print("tuned", lt.tune_malloc())
        print("after tune_malloc", mmapped())
        print("big after tune_malloc", mmapped(64 << 20))    # over glibc's largest threshold: no mmap at all
    """) == ["start True", "start big True", "after import True", "tuned True", "after tune_malloc False",
             "big after tune_malloc False"]


def test_train_tunes_the_allocator_unless_told_not_to():
    code = """
        import numpy as np, lt
        model = lt.GPT.preset("tiny", vocab_size=8, max_seq_len=8)
        opt = lt.optim.sgd(0.1)
        tokens = np.arange(64) % 8
        lt.train(model, opt, lt.TrainState.create(model.init(lt.random.key(0)), opt), tokens, steps=1,
                 batch_size=2, seq_len=8, rng=lt.random.key(1), progress=False, verbose=False)
        print("after train", mmapped())
    """
    assert run(code) == ["start True", "start big True", "after train False"]
    assert run(code, LT_TUNE_MALLOC="0") == ["start True", "start big True", "after train True"]
