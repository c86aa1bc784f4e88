"""lt.tree: immutable containers, round trips, paths, functional edits."""

import pickle

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import lt
from lt import tree

names = st.text(alphabet="abcdefgh_", min_size=1, max_size=6)
arrays = st.builds(lambda shape, seed: np.random.default_rng(seed).standard_normal(shape),
                   st.lists(st.integers(0, 3), max_size=3).map(tuple), st.integers(0, 2**16))
nested = st.recursive(
    arrays,
    lambda children: st.one_of(st.dictionaries(names, children, max_size=4),
                               st.lists(children, max_size=4),
                               st.lists(children, max_size=3).map(tuple)),
    max_leaves=12)


@given(nested)
def test_flatten_unflatten_round_trip(t):
    flat, treedef = tree.flatten(t)
    rebuilt = tree.unflatten(treedef, flat)
    assert tree.structure(rebuilt) == treedef
    assert all(a is b for a, b in zip(tree.leaves(rebuilt), flat))
    assert len(tree.paths(t)) == len(flat) == treedef.num_leaves


@given(nested)
def test_plain_and_frozen_twins_flatten_identically(t):
    frozen = tree.freeze(t)
    flat, treedef = tree.flatten(t)
    fflat, fdef = tree.flatten(frozen)
    assert treedef == fdef
    assert tree.paths(t) == tree.paths(frozen)
    assert all(np.array_equal(a, b) for a, b in zip(flat, fflat))


@given(nested)
def test_frozen_tree_pickles(t):
    frozen = tree.freeze(t)
    back = pickle.loads(pickle.dumps(frozen))
    assert tree.structure(back) == tree.structure(frozen)
    assert all(np.array_equal(a, b) for a, b in zip(tree.leaves(back), tree.leaves(frozen)))


@given(nested)
def test_size_is_sum_of_leaf_sizes(t):
    assert tree.size(t) == sum(np.size(x) for x in tree.leaves(t))


def test_mapping_keys_are_walked_sorted():
    t = {"b": np.zeros(1), "a": {"z": np.ones(2), "c": np.ones(3)}}
    assert tree.paths(t) == ["a.c", "a.z", "b"]


def test_paths_name_places_with_dots():
    t = {"blocks": [{"attn": {"qkv": {"w": np.zeros(1)}}}] * 4}
    assert tree.paths(t)[3] == "blocks.3.attn.qkv.w"
    assert tree.get(t, "blocks.3.attn.qkv.w") is t["blocks"][3]["attn"]["qkv"]["w"]


def test_frozen_tree_refuses_every_in_place_change():
    t = tree.freeze({"a": np.zeros(3), "b": [np.ones(2)]})
    with pytest.raises(TypeError, match="lt.tree.set"):
        t["a"] = np.ones(3)
    with pytest.raises(TypeError):
        del t["a"]
    with pytest.raises(TypeError):
        t.update({})
    with pytest.raises(ValueError, match="read-only"):
        t["a"][0] = 1.0
    with pytest.raises(TypeError):
        t["b"][0] = np.zeros(2)          # lists become tuples
    with pytest.raises(ValueError, match="read-only"):
        t["b"][0] += 1.0


def test_freeze_copies_writeable_arrays_so_the_caller_cannot_reach_in():
    a = np.zeros(3)
    frozen = tree.freeze({"a": a})
    a[0] = 5.0
    assert frozen["a"][0] == 0.0
    assert a.flags.writeable                # the caller's array is left as it was


def test_set_returns_a_new_tree_sharing_untouched_leaves():
    t = tree.freeze({"x": {"w": np.zeros(2), "b": np.ones(2)}, "y": np.full(3, 2.0)})
    new = tree.set(t, "x.w", np.full(2, 7.0))
    assert np.array_equal(new["x"]["w"], [7.0, 7.0])
    assert np.array_equal(t["x"]["w"], [0.0, 0.0])       # the old tree is untouched
    assert new["x"]["b"] is t["x"]["b"] and new["y"] is t["y"]
    assert not new["x"]["w"].flags.writeable


def test_set_and_get_name_a_missing_path():
    t = tree.freeze({"a": {"b": np.zeros(1)}})
    with pytest.raises(KeyError, match="'c'"):
        tree.set(t, "a.c", np.zeros(1))
    with pytest.raises(KeyError, match="leaf"):
        tree.get(t, "a.b.c")


def test_map_zips_trees_and_refuses_different_structures():
    a = {"p": np.ones(2), "q": (np.ones(1), np.ones(3))}
    b = tree.map(lambda x: 2 * x, a)
    total = tree.map(lambda x, y: x + y, a, b)
    assert np.array_equal(total["q"][1], np.full(3, 3.0))
    assert not total["p"].flags.writeable
    with pytest.raises(ValueError, match="structure"):
        tree.map(lambda x, y: x, a, {"p": np.ones(2)})


def test_namedtuples_and_none_keep_their_kind():
    from collections import namedtuple
    State = namedtuple("State", "mu nu")
    t = {"s": State(np.zeros(2), None), "n": None}
    flat, treedef = tree.flatten(t)
    assert len(flat) == 1
    back = tree.unflatten(treedef, [np.ones(2)])
    assert isinstance(back["s"], State) and back["s"].nu is None and back["n"] is None
    assert tree.paths(t) == ["s.mu"] and tree.get(t, "s.mu") is t["s"].mu
    edited = tree.set(t, "s.mu", np.full(2, 3.0))
    assert isinstance(edited["s"], State) and np.array_equal(edited["s"].mu, [3.0, 3.0])


def test_model_params_are_frozen():
    params = lt.GPT.preset("tiny").init(lt.random.key(0))
    with pytest.raises(ValueError, match="read-only"):
        params["wte"]["w"][0, 0] = 1.0
    with pytest.raises(TypeError):
        params["blocks"][0]["ln1"]["scale"] = np.zeros(32)
    assert all(not x.flags.writeable for x in tree.leaves(params))
