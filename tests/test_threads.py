"""lt.threads: products and passes cut into pieces fixed by the shapes, so that the numbers are
bitwise the same whatever the worker count; the BLAS's own threads restored after lt's calls."""

import threading
import time

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import lt
from lt import threads


@pytest.fixture
def two_workers(monkeypatch):
    """Two workers whatever the machine's load (the test machine may be busy)."""
    monkeypatch.setattr(threads, "free_cores", lambda: 2)


@pytest.fixture
def small_pieces(monkeypatch):
    """Thresholds low enough that test-sized work is cut into pieces."""
    monkeypatch.setattr(threads, "MIN_PARALLEL_US", 5.0)
    monkeypatch.setattr(threads, "PIECE_US", 5.0)


@given(st.integers(1, 5000), st.integers(1, 40))
def test_pieces_are_aligned_contiguous_and_cover_the_range(size, count):
    parts = threads.pieces(size, count)
    assert parts[0].start == 0 and parts[-1].stop == size
    assert all(a.stop == b.start for a, b in zip(parts, parts[1:]))
    assert all(p.start % 8 == 0 and p.stop > p.start for p in parts)
    assert len(parts) <= count or all(p.stop - p.start == 8 for p in parts[:-1])


def test_run_runs_every_task_once_on_two_threads_and_reports_an_error(two_workers):
    seen, names = [], set()
    lock = threading.Lock()

    def task(i):
        def go():
            time.sleep(0.001)                                       # lets the helper wake and take some
            with lock:
                seen.append(i)
                names.add(threading.current_thread().name)
        return go
    threads.run([task(i) for i in range(64)])
    assert sorted(seen) == list(range(64))
    assert any(n.startswith("lt-worker") for n in names)

    def boom():
        raise RuntimeError("task 3 failed")
    with pytest.raises(RuntimeError, match="task 3 failed"):
        threads.run([task(0), boom, task(1)])


def test_limit_caps_the_workers_pin_fixes_them_and_both_refuse_nonsense(two_workers):
    assert threads.workers() == 2
    with threads.limit(1):
        assert threads.workers() == 1
        with threads.limit(None):
            assert threads.workers() == 2
        assert threads.workers() == 1
    with threads.pin(3):                                            # more than free: pinned wins
        assert threads.workers() == 3
    for bad in (0, -1, 1.5, True, "2"):
        for fn in (threads.limit, threads.pin):
            with pytest.raises(ValueError, match="positive number of threads or None"), fn(bad):
                pass
    assert 1 <= threads.free_cores() <= threads.cores()


def _openblas():
    threadpoolctl = pytest.importorskip("threadpoolctl")
    controller = threadpoolctl.ThreadpoolController()
    ours = {c.filepath for c in threads._blas._find()}                # the BLAS lt sets: NumPy's
    blas = [c for c in controller.lib_controllers if c.filepath in ours and c.internal_api == "openblas"]
    if not blas:
        pytest.skip("NumPy's BLAS here is not OpenBLAS")
    return controller, blas[0]


def test_entry_points_run_the_blas_on_the_workers_and_restore_the_count_after():
    controller, blas = _openblas()
    seen = []

    @threads.adaptive
    def entry():
        seen.append(blas.get_num_threads())
        with threads.single_blas():                                 # a job's pieces: one thread
            seen.append(blas.get_num_threads())
        inner()                                                     # nested entry: decided once
        seen.append(blas.get_num_threads())

    @threads.adaptive
    def inner():
        seen.append(blas.get_num_threads())
    with controller.select(filepath=blas.filepath).limit(limits=4):
        for n in (1, 2):
            seen.clear()
            with threads.pin(n):
                entry()
            assert seen == [n, 1, n, n] and blas.get_num_threads() == 4


def test_attention_and_the_optimizer_in_pieces_are_the_same_bits_on_one_worker_or_two(small_pieces):
    q, k, v = (lt.random.normal(lt.random.key(i), (2, 4, 256, 16)) for i in range(3))
    weights = lt.random.normal(lt.random.key(9), (2, 4, 256, 16))
    attend = lt.value_and_grad(lambda q, k, v: lt.ops.sum(lt.nn.scaled_dot_product_attention(
        q, k, v, lt.nn.causal_mask(256), kernel="blockwise") * weights), argnums=(0, 1, 2))
    model = lt.GPT.preset("small")
    params = model.init(lt.random.key(0))
    grads = lt.tree.map(lambda p: p * np.float32(0.5), params)
    opt = lt.optim.adamw(1e-3, weight_decay=0.1)

    def work():
        loss, dqkv = attend(q, k, v)
        updates, _ = opt.update(grads, opt.init(params), params)
        return loss, dqkv, lt.optim.apply_updates(params, updates)
    with threads.pin(1):
        one = work()
    with threads.pin(2):
        two = work()
    assert float(one[0]) == float(two[0])
    assert lt.distributed.fingerprint(one[1:]) == lt.distributed.fingerprint(two[1:])


@given(st.integers(1, 100_000), st.integers(1, 100_000))
def test_blocks_are_one_for_short_passes_and_a_power_of_two_at_most_for_long_ones(rows, row_bytes):
    parts = threads.blocks(rows, row_bytes)
    assert parts[0].start == 0 and parts[-1].stop == rows
    assert all(a.stop == b.start for a, b in zip(parts, parts[1:]))
    if rows * row_bytes < 15_000 * threads.MIN_PARALLEL_US:                 # short on one thread
        assert parts == [slice(0, rows)]
    else:
        assert len(parts) <= 16


def test_elementwise_fills_outputs_block_by_block_and_refuses_a_copied_output(two_workers, small_pieces):
    x = np.arange(300_000, dtype=np.float32).reshape(600, 500)
    y = np.empty_like(x)
    threads.elementwise(lambda a, b: np.multiply(a, 2, out=b), x, y, passes=2)
    assert np.array_equal(y, 2 * x)
    with pytest.raises(ValueError, match="C-contiguous"):
        threads.elementwise(lambda a, b: None, x, np.empty((500, 600), np.float32).T, passes=2)
