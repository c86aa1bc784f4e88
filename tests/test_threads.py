"""lt.threads: products and passes cut into pieces fixed by the shapes, so that the numbers are
bitwise the same whatever the worker count; the BLAS's own threads restored after lt's calls."""

import contextlib
import threading
import time

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import lt
from lt import threads


@pytest.fixture
def two_workers(monkeypatch):
    """Two workers whatever the machine's load (the test machine may be busy)."""
    monkeypatch.setattr(threads, "free_cores", lambda: 2)


@pytest.fixture
def small_pieces(monkeypatch):
    """Thresholds low enough that test-sized work is cut into pieces."""
    monkeypatch.setattr(threads, "GEMM_PARALLEL_US", 0.0)
    monkeypatch.setattr(threads, "MIN_PARALLEL_US", 5.0)
    monkeypatch.setattr(threads, "PIECE_US", 5.0)


@given(st.integers(1, 5000), st.integers(1, 40))
def test_pieces_are_aligned_contiguous_and_cover_the_range(size, count):
    parts = threads.pieces(size, count)
    assert parts[0].start == 0 and parts[-1].stop == size
    assert all(a.stop == b.start for a, b in zip(parts, parts[1:]))
    assert all(p.start % 8 == 0 and p.stop > p.start for p in parts)
    assert len(parts) <= count or all(p.stop - p.start == 8 for p in parts[:-1])


@settings(max_examples=25, deadline=None)
@given(st.integers(1, 300), st.integers(1, 200), st.integers(1, 300), st.sampled_from([np.float32, np.float64]),
       st.booleans())
def test_a_product_in_pieces_is_the_same_bits_on_one_worker_or_two_and_equals_numpy(m, k, n, dtype, transposed):
    rng = np.random.default_rng(m * 7919 + k * 31 + n)
    a = rng.standard_normal((k, m) if transposed else (m, k)).astype(dtype)
    a = a.T if transposed else a                                   # a transposed view, as the VJPs pass
    b = rng.standard_normal((k, n)).astype(dtype)
    with _small_pieces():
        with threads.pin(1):
            one = threads.matmul(a, b)
        with threads.pin(2):
            two = threads.matmul(a, b)
    assert one.shape == (m, n) and one.dtype == dtype
    assert np.array_equal(one, two)
    tol = 1e-4 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(one, a.astype(np.float64) @ b, rtol=tol, atol=tol * np.sqrt(k))


@contextlib.contextmanager
def _small_pieces():
    saved = threads.GEMM_PARALLEL_US, threads.MIN_PARALLEL_US, threads.PIECE_US
    threads.GEMM_PARALLEL_US, threads.MIN_PARALLEL_US, threads.PIECE_US = 0.0, 5.0, 5.0
    try:
        yield
    finally:
        threads.GEMM_PARALLEL_US, threads.MIN_PARALLEL_US, threads.PIECE_US = saved


def test_big_products_are_split_and_mid_sized_ones_are_one_blas_call(monkeypatch, two_workers):
    calls = []
    real_run = threads.run
    monkeypatch.setattr(threads, "run", lambda tasks, us=None: (calls.append(len(tasks)), real_run(tasks, us)))
    a, b = np.ones((1024, 1024), np.float32), np.ones((1024, 1024), np.float32)   # 2.1 GFLOP, ~21 ms
    assert np.array_equal(threads.matmul(a, b), np.full((1024, 1024), 1024, np.float32))
    mid = threads.matmul(a[:256, :256], b[:256, :256])                             # 33.5 MFLOP: one BLAS call
    assert calls == [4] and np.array_equal(mid, np.full((256, 256), 256, np.float32))
    assert threads.product_us(1, 768, 2304) > threads.product_us(16, 256, 16)     # decoding is memory-bound


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
            with pytest.raises(ValueError, match="positive number of threads or None"):
                with fn(bad):
                    pass
    assert 1 <= threads.free_cores() <= threads.cores()


def _openblas():
    threadpoolctl = pytest.importorskip("threadpoolctl")
    controller = threadpoolctl.ThreadpoolController()
    blas = [c for c in controller.lib_controllers if c.user_api == "blas" and c.internal_api == "openblas"]
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
    with controller.limit(limits=4, user_api="blas"):
        for n in (1, 2):
            seen.clear()
            with threads.pin(n):
                entry()
            assert seen == [n, 1, n, n] and blas.get_num_threads() == 4


def test_a_training_step_in_pieces_is_the_same_bits_on_one_worker_or_two(small_pieces):
    model = lt.GPT.preset("small")
    params = model.init(lt.random.key(0))
    ids = lt.random.randint(lt.random.key(1), (4, 128), 0, model.vocab_size)
    opt = lt.optim.adamw(1e-3, weight_decay=0.1)

    def step():
        loss, grads = lt.value_and_grad(model.loss)(params, ids, ids)
        updates, _ = opt.update(grads, opt.init(params), params)
        return loss, lt.optim.apply_updates(params, updates)
    with threads.pin(1):
        loss1, new1 = step()
    with threads.pin(2):
        loss2, new2 = step()
    assert float(loss1) == float(loss2)
    assert lt.distributed.fingerprint(new1) == lt.distributed.fingerprint(new2)
    with threads.pin(2):                                            # and adaptive = the BLAS's own threads
        ref_loss, _ = lt.value_and_grad(model.loss)(params, ids, ids)
    np.testing.assert_allclose(float(ref_loss), float(loss1), rtol=1e-6)


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
