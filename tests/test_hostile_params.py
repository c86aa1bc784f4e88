"""Params trees and ids that would otherwise slip through (issue 14, items 9 and 10)."""

import pickle

import numpy as np
import pytest

import lt
from lt import random, tree

TINY = lt.GPT.preset("tiny")


def _paths_of_arrays(t):
    return [(p, x) for p, x in tree.items(t) if isinstance(x, np.ndarray)]


def test_no_leaf_of_a_params_tree_can_be_made_writeable_again():
    params = TINY.init(random.key(0))
    for path, leaf in _paths_of_arrays(params):
        with pytest.raises(ValueError, match="WRITEABLE"):
            leaf.setflags(write=True)
        with pytest.raises(ValueError, match="read-only"):
            leaf[(0,) * leaf.ndim] = 1.0


@pytest.mark.parametrize("make", [
    lambda p: lt.optim.apply_updates(p, tree.map(np.ones_like, p)),                      # an optimizer step
    lambda p: lt.optim.adamw(1e-3).init(p).mu,                                           # optimizer state
    lambda p: tree.map(lambda x: x * 2, p),
    lambda p: tree.freeze(pickle.loads(pickle.dumps(p))),
    lambda p: tree.set(p, "wte.w", np.zeros((500, 32), np.float32)),
])
def test_trees_lt_builds_are_sealed_as_deeply(make):
    out = make(TINY.init(random.key(0)))
    for path, leaf in _paths_of_arrays(out):
        with pytest.raises(ValueError):
            leaf.setflags(write=True)


def test_freezing_never_changes_the_callers_arrays_or_their_flags():
    mine = np.arange(6.0)
    view = mine[1:4]
    view.flags.writeable = False                       # read-only view of a writeable array
    frozen = tree.freeze({"a": mine, "v": view})
    assert mine.flags.writeable
    mine[2] = 99.0                                     # the owner still writes its array...
    assert frozen["a"][2] == 2.0 and frozen["v"][1] == 2.0    # ...and the frozen tree never sees it


def test_a_sealed_leaf_shares_memory_with_the_array_lt_made():
    made = np.arange(4.0)
    sealed = tree.seal(made)
    assert np.shares_memory(sealed, made) and not made.flags.writeable


def test_params_of_a_dtype_init_refuses_are_refused_by_apply_too():
    params = TINY.init(random.key(0))
    half = tree.map(lambda x: x.astype(np.float16), params)
    with pytest.raises(TypeError, match="float16"):
        TINY.init(random.key(0), np.float16)
    with pytest.raises(TypeError, match=r"float32 or float64.*got float16"):
        TINY.apply(half, np.zeros((1, 3), int))


def test_empty_sequences_are_refused_by_name():
    params = TINY.init(random.key(0))
    with pytest.raises(ValueError, match=r"ids has no positions \(shape \(1, 0\)\)"):
        TINY.apply(params, np.zeros((1, 0), int))
    with pytest.raises(ValueError, match="at least 2"):
        TINY.loss(params, np.zeros((2, 1), int))


def test_a_float16_checkpoint_is_refused_at_load_as_apply_would(tmp_path):
    path = tmp_path / "half.safetensors"
    params = TINY.init(random.key(0))
    tensors = {f"params/{p}": x.astype(np.float16) for p, x in tree.items(params)}
    good = tmp_path / "good.safetensors"
    lt.checkpoint.save(good, TINY, params)
    lt.safetensors_io.save(path, tensors, lt.checkpoint.read_metadata(good))   # same header, float16 tensors
    with pytest.raises(lt.checkpoint.CheckpointError, match=r"F32, F64"):
        lt.checkpoint.load(path, TINY)
