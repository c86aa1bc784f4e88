"""Row-parallel elementwise work gives bit-identical results for any number of threads."""

import numpy as np
import pytest

import lt
from lt import random, tree
from lt.ops import parallel


def loss_and_grads(threads, monkeypatch):
    monkeypatch.setenv("LT_NUM_THREADS", str(threads))
    monkeypatch.setattr(parallel, "_MIN_ELEMENTS", 0)          # split even tiny arrays
    model = lt.GPT.preset("tiny", dropout=0.1)
    params = model.init(random.key(0))
    ids = random.randint(random.key(1), (3, 9), 0, 500)
    mask = np.arange(9)[None] < np.array([[9], [5], [7]])
    return lt.value_and_grad(model.loss)(params, ids, rng=random.key(2), attention_mask=mask)


@pytest.mark.parametrize("threads", [2, 3, 7])
def test_model_loss_and_gradients_do_not_depend_on_the_thread_count(threads, monkeypatch):
    loss1, grads1 = loss_and_grads(1, monkeypatch)
    loss_n, grads_n = loss_and_grads(threads, monkeypatch)
    assert loss1 == loss_n
    assert all(np.array_equal(a, b) for a, b in zip(tree.leaves(grads1), tree.leaves(grads_n)))


def test_for_rows_covers_every_row_exactly_once(monkeypatch):
    monkeypatch.setenv("LT_NUM_THREADS", "4")
    monkeypatch.setattr(parallel, "_MIN_ELEMENTS", 0)
    for n in (1, 2, 3, 4, 5, 17):
        hits = np.zeros(n, int)

        def kernel(lo, hi):
            hits[lo:hi] += 1
        parallel.for_rows(kernel, n, 1)
        assert np.array_equal(hits, np.ones(n, int))
