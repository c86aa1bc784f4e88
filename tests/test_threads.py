"""lt.threads: products and passes cut into pieces fixed by the shapes, so that the numbers are
bitwise the same whatever the worker count; the BLAS's own threads restored after lt's calls,
set once per outermost call, left alone when the user set them; limit and pin context-local."""

import itertools
import json
import os
import subprocess
import sys
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
    """Two workers whatever the machine's load (the test machine may be busy) and whatever
    thread-count variables the test run was started with."""
    monkeypatch.setattr(threads.policy, "free_cores", lambda: 2)
    monkeypatch.setattr(threads.blas._blas, "env", None)


@pytest.fixture
def small_pieces(monkeypatch):
    """Thresholds low enough that test-sized work is cut into pieces (read by lt.threads's
    parts from its cost module, by lt's other modules from lt.threads)."""
    for module in (threads, threads.cost):
        monkeypatch.setattr(module, "MIN_PARALLEL_US", 5.0)
        monkeypatch.setattr(module, "PIECE_US", 5.0)


class FakeBlas:
    """A BLAS controller that records every set call (threadpoolctl's interface)."""

    user_api, internal_api, filepath = "blas", "openblas", "fake"

    def __init__(self, n):
        self.n, self.sets, self.gets = n, [], 0

    def get_num_threads(self):
        self.gets += 1
        return self.n

    def set_num_threads(self, n):
        self.sets.append(n)
        self.n = n


@pytest.fixture
def fake_blas(monkeypatch, two_workers):
    """lt's BLAS replaced by a FakeBlas on 4 threads, seen at import, no variable set."""
    fake = FakeBlas(4)
    monkeypatch.setattr(threads.blas, "_blas", threads.blas.Blas([fake], {}))
    return fake


@given(st.integers(1, 5000), st.integers(1, 40))
def test_pieces_are_aligned_contiguous_and_cover_the_range(size, count):
    parts = threads.pieces(size, count)
    assert parts[0].start == 0 and parts[-1].stop == size
    assert all(a.stop == b.start for a, b in itertools.pairwise(parts))
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

    inside = []                                                     # a piece: one thread, nested runs inline
    with threads.limit(2):
        threads.run([lambda: inside.append((threads.workers(), threading.current_thread().name))] * 8)
    assert {w for w, _ in inside} == {1}

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
    ours = {c.filepath for c in threads.blas.find()}                  # the BLAS lt sets: NumPy's
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
    assert all(a.dtype == b.dtype and a.tobytes() == b.tobytes()
               for a, b in zip(lt.tree.leaves(one[1:]), lt.tree.leaves(two[1:]), strict=True))


@given(st.integers(1, 100_000), st.integers(1, 100_000))
def test_blocks_are_one_for_short_passes_and_a_power_of_two_at_most_for_long_ones(rows, row_bytes):
    parts = threads.blocks(rows, row_bytes)
    assert parts[0].start == 0 and parts[-1].stop == rows
    assert all(a.stop == b.start for a, b in itertools.pairwise(parts))
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


def test_limit_and_pin_belong_to_the_thread_that_set_them(two_workers):
    both_inside = threading.Barrier(2)
    seen = {}

    def in_thread(n):
        with threads.pin(n):
            both_inside.wait()                                      # the other thread has pinned its own
            seen[n] = [threads.workers()]
            both_inside.wait()
            with threads.limit(1):
                seen[n].append(threads.workers())
            seen[n].append(threads.workers())
    ts = [threading.Thread(target=in_thread, args=(n,)) for n in (1, 3)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert seen == {1: [1, 1, 1], 3: [3, 3, 3]}                     # pin wins over limit
    assert threads.workers() == 2                                   # this thread: neither


def test_the_blas_count_is_set_once_at_the_outermost_call_and_only_when_it_differs(fake_blas):
    model = lt.GPT.preset("tiny")
    params = model.init(lt.random.key(0))
    ids = np.arange(16).reshape(2, 8)
    depth = []

    @threads.adaptive
    def nested(k):
        depth.append((fake_blas.n, fake_blas.gets))
        if k:
            return nested(k - 1)
        model.apply(params, ids)                                    # GPT.forward, blocks, attention: nested too
        depth.append((fake_blas.n, fake_blas.gets))
    with threads.pin(3):
        nested(5)
    assert fake_blas.sets == [3, 4]                                 # set on entry, restored on return
    assert len(depth) == 7 and len(set(depth)) == 1                 # no call into the BLAS below the entry
    fake_blas.sets.clear()
    with threads.pin(4):                                            # the count it has: no set call
        nested(2)
    model.apply(params, ids)                                        # unpinned: 2 workers
    assert fake_blas.sets == [2, 4]


def test_holds_in_two_threads_end_with_the_count_from_before_the_first(fake_blas):
    a = threads.blas.hold(1)                                        # thread A's call
    b = threads.blas.hold(2)                                        # thread B's, begun before A's ended
    threads.blas.release(a)
    assert fake_blas.n == 2                                         # B's count while B runs
    threads.blas.release(b)
    assert fake_blas.n == 4
    a, b = threads.blas.hold(1), threads.blas.hold(2)
    threads.blas.release(b)
    assert fake_blas.n == 1                                         # A's count while A runs
    threads.blas.release(a)
    assert fake_blas.n == 4


def test_a_count_the_user_sets_during_a_call_stays_and_is_then_left_alone(fake_blas):
    @threads.adaptive
    def entry():
        fake_blas.n = 3                                             # e.g. threadpool_limits(3) as a plain call
    entry()
    assert fake_blas.n == 3 and fake_blas.sets == [2]
    seen = []
    threads.adaptive(lambda: seen.append((fake_blas.n, threads.workers())))()
    assert seen == [(3, 2)] and fake_blas.sets == [2]               # no set; lt's workers: min(2 free, 3)
    assert threads.fixed() == 3
    with threads.pin(1):
        threads.adaptive(lambda: seen.append((fake_blas.n, threads.workers())))()
    assert seen[-1] == (1, 1) and fake_blas.n == 3                  # pin wins, and gives the count back


def test_the_users_threadpool_limits_is_left_alone(two_workers, monkeypatch):
    threadpoolctl = pytest.importorskip("threadpoolctl")
    _, blas = _openblas()
    seen, sets = [], []
    for c in threads.blas._blas.controllers:                        # lt's own set calls, counted
        monkeypatch.setattr(c, "set_num_threads", lambda n, set=c.set_num_threads: (sets.append(n), set(n)))

    @threads.adaptive
    def probe():
        seen.append((blas.get_num_threads(), threads.workers()))
    model = lt.GPT.preset("tiny")
    params = model.init(lt.random.key(0))
    ids = np.arange(16).reshape(2, 8)
    before = blas.get_num_threads()
    with threads.pin(before + 1):                                   # lt's own setting: it sets the BLAS
        probe()
    sets.clear()
    with threadpoolctl.threadpool_limits(1):
        model.apply(params, ids)                                    # lt wants 2 (two_workers): leaves 1
        probe()
        with threads.limit(4):
            probe()
        assert sets == [] and threads.fixed() == 1
        with threads.pin(3):                                        # pin wins, and gives the count back
            probe()
        assert blas.get_num_threads() == 1
    assert seen == [(before + 1, before + 1), (1, 1), (1, 1), (3, 3)]
    assert blas.get_num_threads() == before


_PROBE = """
import json, sys
from lt import threads
threads.policy.free_cores = lambda: int(sys.argv[1])
ours = {c.filepath for c in threads.blas.find()}
from threadpoolctl import ThreadpoolController
blas = [c for c in ThreadpoolController().lib_controllers if c.filepath in ours]
count = lambda: min(c.get_num_threads() for c in blas)
seen = {"before": count(), "fixed": threads.fixed()}
@threads.adaptive
def probe():
    seen["inside"], seen["workers"] = count(), threads.workers()
probe()
seen["after"] = count()
print(json.dumps(seen))
"""


def _probe(env_count, free):
    env = {k: v for k, v in os.environ.items() if k not in threads.blas._ANY_BLAS}
    if env_count is not None:
        env["OPENBLAS_NUM_THREADS"] = str(env_count)
    out = subprocess.run([sys.executable, "-c", _PROBE, str(free)], env=env, capture_output=True, text=True,
                         check=True)
    return json.loads(out.stdout)


def test_a_thread_count_from_the_environment_is_left_alone():
    _openblas()
    assert _probe(1, free=2) == {"before": 1, "fixed": 1, "inside": 1, "workers": 1, "after": 1}
    own = _probe(None, free=1)                                      # no variable: lt adapts
    assert own["inside"] == own["workers"] == 1 and own["after"] == own["before"] and own["fixed"] is None


def test_the_variables_that_name_a_count():
    env_count = threads.blas.env_count
    assert env_count({"OPENBLAS_CORETYPE": "Haswell"}, "openblas") is None
    assert env_count({"OMP_NUM_THREADS": "3,2"}, "openblas") == 3
    assert env_count({"OMP_NUM_THREADS": "3", "OPENBLAS_NUM_THREADS": "1"}, "openblas") == 1
    assert env_count({"OPENBLAS_NUM_THREADS": "0", "OMP_NUM_THREADS": "auto"}, "openblas") is None
    assert env_count({"MKL_NUM_THREADS": "2"}, "openblas") is None  # another BLAS's variable
    assert env_count({"MKL_NUM_THREADS": "2"}, "mkl") == 2
    assert env_count({"BLIS_NUM_THREADS": "5"}, None) == 5


def test_fixed_says_when_the_count_does_not_follow_the_load(fake_blas):
    assert threads.fixed() is None or threads.cores() == 1
    with threads.limit(1):
        assert threads.fixed() == 1
    with threads.limit(2):
        assert threads.fixed() is None or threads.cores() == 1
    with threads.pin(2):
        assert threads.fixed() == 2


def test_a_count_from_the_environment_stays_the_users_while_a_pin_holds_the_blas(monkeypatch):
    fake = FakeBlas(4)
    monkeypatch.setattr(threads.blas, "_blas", threads.blas.Blas([fake], {"OPENBLAS_NUM_THREADS": "4"}))
    assert threads.blas.explicit() == 4
    held = threads.blas.hold(1)                                     # another thread's pin(1)
    assert threads.blas.explicit() == 4 and threads.fixed() == 4
    with threads.blas_threads(2):                                   # lt's calls inside: decided, no re-decision
        threads.adaptive(lambda: None)()
        assert threads.workers() == 2 and fake.sets == [1, 2]
    threads.blas.release(held)
    assert fake.n == 4 and fake.sets == [1, 2, 1, 4]
