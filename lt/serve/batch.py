"""Rows that decode together over one KV cache, joining and leaving between steps.

Shapes: R rows at most, B rows now, C the cache's capacity in positions, T a prompt's length,
L layers, H key/value heads, d head size, V vocabulary.

A :class:`Batch` is the continuous-batching engine under ``lt serve``, written against the
model interface decoding uses (:class:`lt.generate.Decoder`: ``forward`` with one key/value
hook per layer): it adds nothing to the model.

- A row's keys and values sit at slots ``0 .. n-1`` of its own cache row (slot = position;
  no padding), so rows of any lengths share the buffer (L x (R, H, C, d) per keys/values).
- :meth:`add` prefills a prompt alone, (1, T), writing its keys into a free row.
- :meth:`step` runs one new token for each row in use, at its own position, as a (R, 1)
  batch: the R - B rows not in use are masked dummies. Each row attends over all C slots of
  its row, the slots past its length masked.
- :meth:`remove` frees a row at once; the last row moves into its place, so the B rows
  in use are always rows 0..B-1 and a step works on views, never gathers.

**Rows do not see one another.** A row's logits are bit-identical whatever else the batch
holds, so requests decoded together give exactly what they give one at a time. Batch
composition could change floats in three ways, and each is closed here:

1. prefill of several prompts at once pads them: never done, each prompt is prefilled alone;
2. a row's attention sums over a number of keys that depended on the longest row: here every
   step attends over all C slots (the masked ones weigh exactly 0), so the reductions have
   the same length and order for every row at every batch size;
3. the BLAS picks its kernel for a product from the shapes (one row: a matrix-vector
   product; few rows: a small-matrix kernel; more: the blocked one), and the kernels sum in
   different orders. Within one shape each output row is computed the same way wherever
   it sits and whatever the other rows hold (OpenBLAS's kernels split rows and columns
   among threads, never the sum). So every step has the same shape, (R, 1): a lone request
   pays for R rows of work, the price of its answer not depending on its neighbours.

The attention kernel is fixed (``"full"``) so that its choice never depends on B.
"""

from __future__ import annotations

import numpy as np

__all__ = ["Batch", "Row"]


class Row:
    """One sequence in the batch: its place (``index``) and its length in positions (``length``)."""

    __slots__ = ("index", "length")

    def __init__(self, index: int, length: int):
        self.index, self.length = index, length

    def __repr__(self) -> str:
        return f"Row(index={self.index}, length={self.length})"


class Batch:
    """Up to ``max_rows`` sequences of up to ``capacity`` positions decoding together (see the module)."""

    def __init__(self, model, params, *, max_rows: int, capacity: int | None = None):
        capacity = model.max_seq_len if capacity is None else int(capacity)
        if not 1 <= capacity <= model.max_seq_len:
            raise ValueError(f"capacity must be in [1, max_seq_len={model.max_seq_len}], got {capacity}")
        if max_rows < 1:
            raise ValueError(f"max_rows must be >= 1, got {max_rows}")
        model.check_params(params)
        self.model, self.params = model, params
        self.max_rows, self.capacity = int(max_rows), capacity
        layers, heads, d = model.cache_shape
        dtype = model.compute_dtype(params)
        shape = (self.max_rows, heads, capacity, d)
        # np.zeros maps pages lazily: memory is spent where rows have written, not on all of C
        self.keys = [np.zeros(shape, dtype) for _ in range(layers)]
        self.values = [np.zeros(shape, dtype) for _ in range(layers)]
        self.rows: list[Row] = []
        self._slots = np.arange(capacity)  # (C,)

    @property
    def free(self) -> int:
        """How many more rows may join."""
        return self.max_rows - len(self.rows)

    def add(self, prompt_ids) -> tuple[Row, np.ndarray]:
        """Prefill ``prompt_ids`` (T,) into a free row: ``(row, logits (V,))`` for its next token."""
        ids = np.asarray(prompt_ids, np.int64)
        if ids.ndim != 1 or not 1 <= ids.size <= self.capacity:
            raise ValueError(f"a prompt must be 1-D with 1 to {self.capacity} tokens, got shape {ids.shape}")
        if not self.free:
            raise RuntimeError(f"the batch is full ({self.max_rows} rows)")
        model = self.model
        ids = model.check_ids(ids, "prompt_ids")
        T, r = ids.size, len(self.rows)

        def hook(layer: int):
            def kv(k, v):  # (1, H, T, d): stored in row r, attended as they are
                self.keys[layer][r, :, :T], self.values[layer][r, :, :T] = k[0], v[0]
                return k, v

            return kv

        mask, causal = model.visible(0, T)
        logits = model.forward(
            self.params,
            ids[None],  # (1, T)
            positions=np.arange(T)[None],
            mask=mask,
            causal=causal,
            cache=[hook(i) for i in range(len(self.keys))],
            last_only=True,
        )  # (1, V)
        row = Row(r, T)
        self.rows.append(row)
        return row, logits[0]

    def step(self, tokens) -> np.ndarray:
        """One token per row (B,), in the order of :attr:`rows`, each at its row's next position:
        the logits (B, V) of each row's next token. Every row grows by one. The rows not in
        use run token 0 at position 0 (their outputs are dropped)."""
        B = len(self.rows)
        tokens = np.asarray(tokens, np.int64).reshape(-1)
        if B == 0 or tokens.shape != (B,):
            raise ValueError(f"step needs one token per row: ({B},), got {tokens.shape}")
        lengths = np.array([row.length for row in self.rows])  # (B,): each row's next position
        if lengths.max() >= self.capacity:
            raise ValueError(f"a row is full: {int(lengths.max())} positions of capacity {self.capacity}")
        n = self.max_rows  # always R rows, B real: see the module's point 3
        ids, positions = np.zeros((n, 1), np.int64), np.zeros((n, 1), np.int64)
        ids[:B, 0], positions[:B, 0] = tokens, lengths
        visible = self._slots[None, :] <= positions  # (n, C): slot j holds position j
        if self.model.sliding_window is not None:
            visible &= self._slots[None, :] > positions - self.model.sliding_window
        rows = np.arange(n)

        def hook(layer: int):
            keys, values = self.keys[layer], self.values[layer]

            def kv(k, v):  # (n, H, 1, d): written at each row's own position
                keys[rows, :, positions[:, 0]] = k[:, :, 0]
                values[rows, :, positions[:, 0]] = v[:, :, 0]
                return keys[:n], values[:n]  # (n, H, C, d)

            return kv

        logits = self.model.forward(
            self.params,
            ids,
            positions=positions,
            mask=visible[:, None, None, :],  # (n, 1, 1, C)
            causal=False,
            cache=[hook(i) for i in range(len(self.keys))],
            last_only=True,
            kernel="full",
        )  # (n, V)
        for row in self.rows:
            row.length += 1
        return logits[:B]

    def remove(self, row: Row) -> None:
        """Free ``row`` now; the last row moves into its place (its keys copied, once)."""
        if row not in self.rows:
            raise ValueError(f"{row} is not in this batch")
        last = self.rows.pop()
        if last is not row:
            i, n = row.index, last.length
            for buf in self.keys + self.values:
                buf[i, :, :n] = buf[last.index, :, :n]
            last.index = i
            self.rows[i] = last
