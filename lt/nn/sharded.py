"""One rank's share of a GPT under tensor parallelism, and where its leaves sit in the full model.

Shapes: V vocabulary, D hidden, F feed-forward, H heads of size d, Hkv key/value heads, P ranks.

:class:`ShardedGPT` is the same model with a group ``tp`` of P ranks: :meth:`GPT.forward`
runs unchanged and its parts communicate at their fixed points (``lt.nn.parallel``). Its
params tree is an ordinary frozen lt tree holding only this rank's shard:

    wte.w (V_r, D)  head.w (D, V_r)           the vocabulary rows [lo, hi) of the split (uneven allowed)
    attn.qkv.w (D, (H + 2 Hkv) d / P)         each of the q|k|v column blocks' columns of this rank's heads
    attn.proj.w (H d / P, D)                  the rows of those heads; proj.b (D,) whole
    ffn.fc.w (D, F_r)  ffn.proj.w (F_r, D)    (gate, up, down alike) F_r ~ F / P hidden units
    everything else (norms, wpe, the row-parallel biases) whole, identical on every rank

:func:`leaf_split` says, for any full path, which index ranges of which axis a rank holds;
:meth:`ShardedGPT.shard` and :meth:`ShardedGPT.gather` cut and join trees by it.
"""

from __future__ import annotations

import attrs
import numpy as np

from .. import random, tree
from ..ops.collective import Group, split_range
from .gpt import GPT
from .module import init_params

__all__ = ["ShardedGPT", "leaf_split", "shard_leaf"]


def _qkv_ranges(model: GPT, rank: int, size: int) -> tuple:
    """Column ranges of the fused qkv leaf that rank ``rank`` holds: its heads' columns of q, k and v."""
    d = model.hidden_dim // model.num_heads
    nq, nk = model.num_heads * d, model.kv_heads * d
    q0, q1 = split_range(model.num_heads, rank, size)
    k0, k1 = (
        split_range(model.kv_heads, rank, size)
        if size <= model.kv_heads
        else (rank // (size // model.kv_heads), rank // (size // model.kv_heads) + 1)
    )  # a copy of the shared head
    return (q0 * d, q1 * d), (nq + k0 * d, nq + k1 * d), (nq + nk + k0 * d, nq + nk + k1 * d)


def leaf_split(model: GPT, path: str, rank: int, size: int) -> tuple[int, tuple] | None:
    """(axis, ((lo, hi), ...)) of the full leaf at ``path`` that rank ``rank`` of ``size`` holds,
    joined in that order; None for a leaf every rank holds whole."""
    parts = path.split(".")
    name = ".".join(parts[2:] if parts[0] == "blocks" else parts)
    V, F = model.vocab_size, model.ffn_dim
    if name == "wte.w":
        return 0, (split_range(V, rank, size),)
    if name == "head.w":
        return 1, (split_range(V, rank, size),)
    if name in ("attn.qkv.w", "attn.qkv.b"):
        return (1 if name.endswith("w") else 0), _qkv_ranges(model, rank, size)
    if name == "attn.proj.w":
        return 0, (_qkv_ranges(model, rank, size)[0],)
    if name in ("ffn.fc.w", "ffn.gate.w", "ffn.up.w"):
        return 1, (split_range(F, rank, size),)
    if name == "ffn.fc.b":
        return 0, (split_range(F, rank, size),)
    if name in ("ffn.proj.w", "ffn.down.w"):
        return 0, (split_range(F, rank, size),)
    return None


def shard_leaf(x: np.ndarray, split) -> np.ndarray:
    """The part of the full leaf ``x`` that ``split`` (from :func:`leaf_split`) names, a fresh array."""
    if split is None:
        return np.array(x)
    axis, ranges = split
    return np.concatenate([np.take(x, np.arange(lo, hi), axis=axis) for lo, hi in ranges], axis=axis)


@attrs.frozen
class ShardedGPT(GPT):
    """Rank ``tp.rank``'s share of the GPT with the same fields, split over the group ``tp``.

    ``apply`` returns this rank's vocabulary columns of the logits (B, T, V_r) (join them with
    ``lt.ops.collective.allgather_last``); ``loss`` is the full model's loss on every rank.
    """

    # A field here; GPT's ``tp`` is a class attribute that is always None (hence the ignore).
    tp: Group = attrs.field(kw_only=True, validator=attrs.validators.instance_of(Group))  # type: ignore[assignment]

    def __attrs_post_init__(self):
        super().__attrs_post_init__()
        _ = self.block.attn  # builds the attention: heads that do not divide raise

    @classmethod
    def of(cls, model: GPT, tp: Group) -> ShardedGPT:
        """``model`` split over ``tp``; refused, saying why, when its heads do not divide."""
        return cls(**attrs.asdict(model.full if isinstance(model, ShardedGPT) else model, recurse=False), tp=tp)

    @property
    def full(self) -> GPT:
        """The whole model these shards make up (what a checkpoint stores)."""
        return GPT(**{k: v for k, v in attrs.asdict(self, recurse=False).items() if k != "tp"})

    def split(self, path: str, rank: int | None = None):
        """:func:`leaf_split` of ``path`` for ``rank`` (default: this one)."""
        return leaf_split(self, path, self.tp.rank if rank is None else rank, self.tp.size)

    def copied_columns(self, path: str) -> tuple[int, int] | None:
        """[lo, hi) of the columns (last axis) of this rank's ``path`` leaf that are a copy of a
        key/value head other ranks hold too (only ``attn.qkv`` with P > Hkv), else None."""
        attn = self.block.attn
        if attn.kv_replicas == 1 or not path.endswith(("attn.qkv.w", "attn.qkv.b")):
            return None
        nq, nk, nv = attn.widths
        return nq, nq + nk + nv

    def shard(self, full_params):
        """This rank's params (a frozen tree) cut from the whole model's ``full_params``."""
        items = tree.items(full_params)
        flat = [shard_leaf(np.asarray(x), self.split(p)) for p, x in items]
        _, treedef = tree.flatten(full_params)
        return tree.freeze(tree.unflatten(treedef, flat))

    def init(self, rng: random.Key, dtype=np.float32):
        """This rank's shard of ``full.init(rng, dtype)`` (the same numbers), made one leaf at a
        time: at most one whole leaf exists at once, never the whole model."""
        full_spec = self.full.spec()
        flat, treedef = tree.flatten(full_spec)
        out = []
        for path, param in zip(tree.paths(full_spec), flat):
            leaf_rng = rng
            for part in path.split("."):
                leaf_rng = random.fold_in(leaf_rng, int(part) if part.isdigit() else part)
            out.append(shard_leaf(init_params(param, leaf_rng, dtype), self.split(path)))
        return tree.freeze(tree.unflatten(treedef, out))

    def gather(self, shards: list):
        """The whole model's params from every rank's shard (``shards[r]``: rank r's tree, e.g.
        from ``comm.gather``), a frozen tree; replicated leaves are taken from rank 0."""
        _, treedef = tree.flatten(shards[0])
        per_rank = [tree.leaves(s) for s in shards]
        out = [self.join(path, [leaves[i] for leaves in per_rank]) for i, path in enumerate(tree.paths(shards[0]))]
        return tree.freeze(tree.unflatten(treedef, out))

    def join(self, path: str, pieces: list) -> np.ndarray:
        """The whole leaf at ``path`` from every rank's piece of it (``pieces[r]``), a fresh array;
        a replicated leaf is rank 0's."""
        if self.split(path, 0) is None:
            return np.array(pieces[0])
        axis = self.split(path, 0)[0]
        shape = list(np.shape(pieces[0]))
        shape[axis] = max(hi for r in range(self.tp.size) for _, hi in self.split(path, r)[1])  # ranges cover it
        x = np.empty(shape, np.asarray(pieces[0]).dtype)
        for r in range(self.tp.size):
            at = 0
            for lo, hi in self.split(path, r)[1]:
                src, dst = [slice(None)] * x.ndim, [slice(None)] * x.ndim
                src[axis], dst[axis] = slice(at, at + hi - lo), slice(lo, hi)
                x[tuple(dst)] = pieces[r][tuple(src)]
                at += hi - lo
        return x
