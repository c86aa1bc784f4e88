"""Pytrees: immutable nested containers of arrays, and the utilities that walk them.

A tree is a leaf or a container of trees. Containers are mappings (keys sorted when
walked), tuples, lists and named tuples; ``None`` is an empty container. Everything
else is a leaf. A *frozen* tree uses only read-only containers (:class:`FrozenDict`,
``tuple``, named tuples) and read-only array leaves, so nothing can change it in place:
``lt.tree.set`` is the edit, and it returns a new tree that shares every untouched leaf.

Paths name a place in a tree with dots: ``blocks.3.attn.qkv.w`` (mapping keys, sequence
indices, named-tuple field names).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

import numpy as np

__all__ = [
    "FrozenDict",
    "TreeDef",
    "freeze",
    "flatten",
    "unflatten",
    "seal",
    "freeze_leaf",
    "leaves",
    "structure",
    "map",
    "map_params",
    "param_leaves",
    "mismatch",
    "paths",
    "items",
    "get",
    "set",
    "size",
    "nbytes",
    "stack",
    "unstack",
]


class FrozenDict(Mapping):
    """A read-only mapping: a params tree's container. Picklable; compares like a dict."""

    __slots__ = ("_data", "__weakref__")
    _data: dict

    def __init__(self, *args, **kwargs):
        object.__setattr__(self, "_data", dict(*args, **kwargs))

    def __getitem__(self, key):
        return self._data[key]

    def get(self, key, default=None):
        return self._data.get(key, default)  # the dict's own, not Mapping's try/except

    def __contains__(self, key) -> bool:
        return key in self._data

    def __iter__(self) -> Iterator:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __repr__(self) -> str:
        return f"FrozenDict({self._data!r})"

    def __reduce__(self):
        return (FrozenDict, (self._data,))

    def _refuse(self, *args, **kwargs):
        raise TypeError(
            "a FrozenDict cannot be changed in place; use lt.tree.set(tree, path, value), which returns a new tree"
        )

    __setitem__ = __delitem__ = __setattr__ = __delattr__ = _refuse
    update = pop = popitem = clear = setdefault = _refuse


def _is_namedtuple(x) -> bool:
    return isinstance(x, tuple) and hasattr(type(x), "_fields")


class TreeDef:
    """The structure of a tree without its leaves; equal structures compare equal.

    ``kind`` is one of "leaf", "none", "dict", "tuple", "namedtuple"; ``meta``
    holds the sorted keys (dict) or the named-tuple type.
    """

    __slots__ = ("kind", "meta", "children", "num_leaves", "_key")

    def __init__(self, kind: str, meta: Any = None, children: tuple = ()):
        self.kind, self.meta, self.children = kind, meta, children
        self.num_leaves = 1 if kind == "leaf" else sum(c.num_leaves for c in children)
        self._key = (kind, meta, tuple(c._key for c in children))  # built once: fast equality

    def __eq__(self, other) -> bool:
        return isinstance(other, TreeDef) and self._key == other._key

    def __hash__(self) -> int:
        return hash(self._key)

    def __repr__(self) -> str:
        if self.kind == "leaf":
            return "*"
        if self.kind == "none":
            return "None"
        if self.kind == "dict":
            inner = ", ".join(f"{k!r}: {c!r}" for k, c in zip(self.meta, self.children))
            return "{" + inner + "}"
        return "(" + ", ".join(repr(c) for c in self.children) + ")"


_LEAF = TreeDef("leaf")
_NONE = TreeDef("none")


def _children(node) -> tuple[str, Any, list] | None:
    """(kind, meta, children) for a container, None for a leaf."""
    if node is None:
        return "none", None, []
    if type(node) is np.ndarray:  # the common leaf, without ABC checks
        return None
    if isinstance(node, Mapping):
        keys = tuple(sorted(node))
        return "dict", keys, [node[k] for k in keys]
    if _is_namedtuple(node):
        return "namedtuple", type(node), list(node)
    if isinstance(node, (tuple, list)):
        return "tuple", None, list(node)  # a list and its frozen tuple are one structure
    return None


def _flatten_into(node, out: list) -> TreeDef:
    parts = _children(node)
    if parts is None:
        out.append(node)
        return _LEAF
    kind, meta, kids = parts
    if kind == "none":
        return _NONE
    return TreeDef(kind, meta, tuple(_flatten_into(k, out) for k in kids))


def flatten(tree) -> tuple[list, TreeDef]:
    """Leaves in a fixed order (mapping keys sorted) and the structure to rebuild from them."""
    out: list = []
    return out, _flatten_into(tree, out)


def leaves(tree) -> list:
    """The leaves of ``tree`` in flatten order."""
    return flatten(tree)[0]


def structure(tree) -> TreeDef:
    """The structure of ``tree``: two trees with equal structures can be zipped leaf by leaf."""
    return flatten(tree)[1]


def _build(treedef: TreeDef, it: Iterator):
    kind = treedef.kind
    if kind == "leaf":
        return next(it)
    if kind == "none":
        return None
    kids = [_build(c, it) for c in treedef.children]
    if kind == "dict":
        return FrozenDict(zip(treedef.meta, kids))
    if kind == "namedtuple":
        return treedef.meta(*kids)
    return tuple(kids)


def unflatten(treedef: TreeDef, leaves_: list):
    """Rebuild a frozen tree of structure ``treedef`` from leaves in flatten order."""
    leaves_ = list(leaves_)
    if len(leaves_) != treedef.num_leaves:
        raise ValueError(f"unflatten: the structure has {treedef.num_leaves} leaves, got {len(leaves_)}")
    return _build(treedef, iter(leaves_))


def seal(leaf):
    """``leaf`` made read-only for good, copied only where someone else may still write to it.

    For an array that lt just made and nobody else holds (a fresh result, an array read from
    a file); use :func:`freeze_leaf` for an array that came from a caller. Non-array leaves
    are returned as they are.

    A read-only array that owns its memory can be made writeable again
    (``a.setflags(write=True)``); a view of a read-only base cannot (NumPy refuses). So an
    array that owns its memory is marked read-only and handed out as a view of itself; a
    view of a read-only base is marked read-only; a view of someone's writeable array is
    copied first (its owner may still write through it).
    """
    if not isinstance(leaf, np.ndarray):
        return leaf
    top = leaf
    while isinstance(top.base, np.ndarray):  # the array that holds the memory
        top = top.base
    if (top is not leaf and top.flags.writeable) or (top.base is not None and not _read_only_buffer(top.base)):
        leaf, top = leaf.copy(), None
    if top is None or top is leaf:
        leaf.flags.writeable = False
        return leaf.view()  # read-only, of a read-only base
    leaf.flags.writeable = False
    return leaf


def _read_only_buffer(buffer) -> bool:
    """Whether the memory under an array (bytes, an mmap, ...) can never be written through."""
    try:
        return memoryview(buffer).readonly
    except TypeError:
        return False


def freeze_leaf(leaf):
    """``leaf`` sealed (:func:`seal`) after copying it if it is writeable.

    For an array that came from a caller, who may still hold it and write to it; the copy
    belongs to lt alone. Read-only arrays are shared, not copied.
    """
    if isinstance(leaf, np.ndarray) and leaf.flags.writeable:
        leaf = leaf.copy()
    return seal(leaf)


def freeze(tree):
    """A frozen copy of ``tree``: read-only containers; writeable arrays are copied and sealed.

    Arrays that are already read-only are shared, so freezing a frozen tree is cheap.
    """
    flat, treedef = flatten(tree)
    return unflatten(treedef, [freeze_leaf(x) for x in flat])


def _path_str(parts) -> str:
    return ".".join(str(p) for p in parts)


def _walk(node, prefix: tuple) -> Iterator[tuple[tuple, Any]]:
    parts = _children(node)
    if parts is None:
        yield prefix, node
        return
    for name, kid in zip(_names(parts), parts[2]):
        yield from _walk(kid, prefix + (name,))


def _names(parts) -> tuple:
    """How paths name a container's children: keys, named-tuple fields, or indices."""
    kind, meta, kids = parts
    if kind == "dict":
        return meta
    if kind == "namedtuple":
        return meta._fields
    return tuple(range(len(kids)))


def items(tree) -> list[tuple[str, Any]]:
    """``(dotted path, leaf)`` pairs in flatten order."""
    return [(_path_str(p), leaf) for p, leaf in _walk(tree, ())]


def paths(tree) -> list[str]:
    """Dotted paths of the leaves in flatten order, e.g. ``blocks.3.attn.qkv.w``."""
    return [_path_str(p) for p, _ in _walk(tree, ())]


def mismatch(*trees) -> str | None:
    """Where the first tree's structure departs from the others', for an error message; None
    when all trees have one structure.

    The first difference in flatten order, named by its path: ``"at blocks.1.attn: dict
    ('out', 'qkv') vs dict ('qkv',)"`` (mapping keys sorted), or ``"at <root>: ..."`` for the top.
    """
    if len(trees) < 2:
        return None
    return _mismatch(list(trees), ())


def _mismatch(trees: list, prefix: tuple) -> str | None:
    """:func:`mismatch` below ``prefix``, the path walked so far."""
    parts = [_children(t) for t in trees]
    first = parts[0]
    where = _path_str(prefix) or "<root>"
    for other in parts[1:]:
        if (first is None) != (other is None):
            return f"at {where}: a leaf in one tree and a container in another"
        if first is None or other is None:  # both leaves (the check above)
            continue
        if first[0] != other[0] or first[1] != other[1] or len(first[2]) != len(other[2]):
            return f"at {where}: {first[0]} {first[1] or len(first[2])} vs {other[0]} {other[1] or len(other[2])}"
    if first is None:
        return None
    for i, name in enumerate(_names(first)):
        found = _mismatch([p[2][i] for p in parts if p is not None], prefix + (name,))  # all containers here
        if found:
            return found
    return None


def map(fn: Callable, tree, *rest):
    """Apply ``fn`` leaf by leaf (to matching leaves of ``rest``); returns a frozen tree.

    New array leaves are sealed read-only in place; they belong to the new tree.
    """
    flat, treedef = flatten(tree)
    others = []
    for other in rest:
        oflat, odef = flatten(other)
        if odef != treedef:
            raise ValueError("lt.tree.map: trees differ in structure " + (mismatch(tree, other) or ""))
        others.append(oflat)
    return unflatten(treedef, [seal(fn(*xs)) for xs in zip(flat, *others)])


def map_params(fn: Callable, tree, like, *, other: Callable | None = None):
    """Apply ``fn(leaf, like_leaf)`` to every leaf of ``tree`` that sits in a subtree shaped like
    ``like`` (e.g. an optimizer state's moments, shaped like the params; ``like`` the params or a
    model's ``spec()``); other leaves (a step count) go through ``other`` (default: unchanged).

    Found by structure, never by names: optax's ``tree_map_params`` is the idea. A frozen tree."""
    want = structure(like)
    like_leaves = leaves(like)
    keep = other if other is not None else (lambda x: x)

    def walk(node):
        flat, treedef = flatten(node)
        if treedef == want:
            return unflatten(treedef, [fn(x, y) for x, y in zip(flat, like_leaves)])
        parts = _children(node)
        if parts is None:
            return keep(node)
        kind, meta, kids = parts
        if kind == "none":
            return None
        new = [walk(k) for k in kids]
        if kind == "dict":
            return FrozenDict(zip(meta, new))
        return meta(*new) if kind == "namedtuple" else tuple(new)

    return freeze(walk(tree))


def param_leaves(tree, like) -> list:
    """The leaves :func:`map_params` would hand ``fn``, in its order (params-shaped subtrees only)."""
    out: list = []

    def keep(x, _):
        out.append(x)
        return x

    map_params(keep, tree, like)
    return out


def _split_path(path) -> tuple:
    if isinstance(path, str):
        return tuple(path.split(".")) if path else ()
    return tuple(path)


def _child(node, name, done: tuple):
    parts = _children(node)
    where = _path_str(done) or "<root>"
    if parts is None:
        raise KeyError(f"{where} is a leaf; it has no child {name!r}")
    kind, meta, kids = parts
    if kind == "dict":
        if name not in node:
            raise KeyError(f"{where} has no key {name!r}; keys are {list(meta)}")
        return node[name]
    if kind == "namedtuple" and name in meta._fields:
        return getattr(node, name)
    try:
        return kids[int(name)]
    except (ValueError, IndexError):
        raise KeyError(f"{where} has {len(kids)} items; {name!r} is not an index of it") from None


def get(tree, path):
    """The subtree at ``path`` (dotted string or sequence of keys)."""
    node, done = tree, ()
    for name in _split_path(path):
        node = _child(node, name, done)
        done += (name,)
    return node


def _replace(node, parts: tuple, value, done: tuple):
    if not parts:
        return freeze(value)
    name, rest = parts[0], parts[1:]
    new_child = _replace(_child(node, name, done), rest, value, done + (name,))
    parts_here = _children(node)
    assert parts_here is not None  # _child raised above for a leaf
    kind = parts_here[0]
    if kind == "dict":
        return FrozenDict({k: (new_child if k == name else v) for k, v in node.items()})
    kids = list(node)
    kids[_index_of(node, name)] = new_child
    return type(node)(*kids) if kind == "namedtuple" else tuple(kids)


def _index_of(node, name) -> int:
    """The position of child ``name`` (an index, or a named-tuple field) in a sequence."""
    if _is_namedtuple(node) and name in node._fields:
        return node._fields.index(name)
    return int(name)


def set(tree, path, value):
    """A new frozen tree with the subtree at ``path`` replaced by ``value``.

    Everything off the path is shared with ``tree``, which is left untouched.
    """
    return _replace(freeze(tree), _split_path(path), value, ())


def size(tree) -> int:
    """Total number of elements over all array leaves."""
    return int(sum(np.size(x) for x in leaves(tree)))


def nbytes(tree) -> int:
    """Bytes held by all leaves: arrays by their ``nbytes``, quantized leaves (``lt.quant``) by
    their codes and scales, scalars by their NumPy size."""
    return int(sum(x.nbytes if hasattr(x, "nbytes") else np.asarray(x).nbytes for x in leaves(tree)))


def stack(trees) -> Any:
    """Trees of one structure as one tree whose leaves have a new leading axis, one entry per
    tree (an ensemble's params for ``lt.vmap``); frozen. Scalars become (n,) arrays."""
    trees = list(trees)
    if not trees:
        raise ValueError("lt.tree.stack needs at least one tree")
    first = structure(trees[0])
    for i, t in enumerate(trees[1:], 1):
        if structure(t) != first:
            raise ValueError(f"lt.tree.stack: tree {i} differs in structure from tree 0: {mismatch(trees[0], t)}")
    flat = [leaves(t) for t in trees]
    for k, column in enumerate(zip(*flat)):
        shapes = {np.shape(x) for x in column}
        if len(shapes) > 1:
            raise ValueError(f"lt.tree.stack: leaf {paths(trees[0])[k]} has different shapes {sorted(shapes)}")
    return freeze(unflatten(first, [np.stack([np.asarray(x) for x in column]) for column in zip(*flat)]))


def unstack(tree) -> list:
    """The inverse of :func:`stack`: one frozen tree per entry of the leaves' leading axis."""
    flat, treedef = flatten(tree)
    if not flat:
        raise ValueError("lt.tree.unstack: the tree has no leaves")
    sizes = {int(np.shape(x)[0]) if np.ndim(x) else -1 for x in flat}
    if len(sizes) != 1 or -1 in sizes:
        raise ValueError(f"lt.tree.unstack: the leaves' leading axes differ or are missing: {sorted(sizes)}")
    return [freeze(unflatten(treedef, [np.asarray(x)[i] for x in flat])) for i in range(sizes.pop())]
