"""The decode loop of a server: one thread that admits, steps and retires sequences.

Shapes: R rows at most, B rows in use, V vocabulary, n a sequence's ``max_tokens``.

Requests become :class:`Sequence` s (one per choice: ``n=3`` is three) and wait in a queue.
Between two steps the loop prefills waiting sequences into free rows (each alone: see
:mod:`lt.serve.batch`), drops cancelled ones (a client gone frees its row before the next
step), then runs one :meth:`Batch.step` for every row in use. A sequence leaves the batch on
an end token, a stop string, ``max_tokens`` or a full row, and its row is free for the next.

Sampling is :mod:`lt.generate.sampling`'s, per row with the row's own options. The draw of a
sequence's step ``s`` is the ``s``-th float64 of ``lt.random.uniform(fold_in(key, i), (n,))``
for choice ``i`` and the request's ``key(seed)`` (``lt.generate``'s rule for row ``i``): so
the same seed gives the same text whatever else is being decoded.

Results leave through each sequence's ``sink(delta, finish_reason, error)``, called on this
thread: the server hands them to its event loop.
"""

from __future__ import annotations

import collections
import threading
from collections.abc import Callable
from typing import Any

import numpy as np

from .. import random
from ..generate.sampling import check_logits, draw
from .batch import Batch
from .text import TextStream

__all__ = ["Sequence", "Scheduler", "QueueFull"]


class QueueFull(RuntimeError):
    """More sequences wait than the scheduler keeps waiting."""


class Sequence:
    """One choice to generate: a prompt (T,), its options, and where its text goes."""

    def __init__(
        self,
        prompt_ids,
        *,
        max_tokens: int,
        text: TextStream,
        sink: Callable[[str, str | None, str | None], None],
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        rng: random.Key | None = None,
        end_ids=(),
    ):
        self.uniforms = None  # greedy: no draws
        if temperature != 0:
            if not isinstance(rng, random.Key):
                raise ValueError(f"rng must be an lt.random.Key to sample with temperature={temperature}, got {rng!r}")
            self.uniforms = random.uniform(rng, (int(max_tokens),), np.float64)  # (n,): step s draws with [s]
        self.prompt = np.asarray(prompt_ids, np.int64)
        self.max_tokens = int(max_tokens)
        self.sampling = (float(temperature), top_k, top_p)
        self.end_ids = frozenset(int(i) for i in end_ids)
        self.text, self.sink = text, sink
        self.tokens: list[int] = []  # every token drawn, an end token included
        self.finish_reason: str | None = None
        self.cancelled = False
        self.row: Any = None  # its Row while it holds one

    def _take(self, tok: int, full: bool) -> bool:
        """Record a drawn token and send its text; True once the sequence is done."""
        self.tokens.append(tok)
        reason: str | None
        if tok in self.end_ids:
            reason, delta = "stop", self.text.flush()
        else:
            delta, stopped = self.text.push(tok)
            reason = "stop" if stopped else None
            if reason is None and (len(self.tokens) >= self.max_tokens or full):
                reason, delta = "length", delta + self.text.flush()
        self.finish_reason = reason
        self.sink(delta, reason, None)
        return reason is not None


class Scheduler:
    """Continuous batching of :class:`Sequence` s over one :class:`~lt.serve.batch.Batch`, on a thread.

    ``max_rows`` rows decode together, each of up to ``capacity`` positions; at most
    ``max_waiting`` sequences wait for a row (:class:`QueueFull` past it). Only ids below
    ``vocab_limit`` are drawn (a tokenizer may know fewer ids than the model's table).
    """

    def __init__(self, model, params, *, max_rows: int = 8, capacity=None, vocab_limit=None, max_waiting: int = 256):
        self.batch = Batch(model, params, max_rows=max_rows, capacity=capacity)
        self.vocab_limit = model.vocab_size if vocab_limit is None else int(vocab_limit)
        self.max_waiting = int(max_waiting)
        self._waiting: collections.deque[Sequence] = collections.deque()
        self._active: list[Sequence] = []  # in row order
        self._wake = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name="lt-serve-decode", daemon=True)
        self.steps = 0  # decode steps run (for tests and logs)

    @property
    def capacity(self) -> int:
        """Positions per row: a prompt and its reply together."""
        return self.batch.capacity

    @property
    def rows_in_use(self) -> int:
        return len(self.batch.rows)

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    def start(self) -> Scheduler:
        """Start the decode thread (once; later calls do nothing)."""
        if not self._thread.is_alive() and not self._closed:
            self._thread.start()
        return self

    def close(self) -> None:
        with self._wake:
            self._closed = True
            self._wake.notify()
        if self._thread.is_alive():
            self._thread.join()

    def submit(self, *sequences: Sequence) -> None:
        """Queue sequences for a row (all or none: :class:`QueueFull` when too many wait)."""
        with self._wake:
            if len(self._waiting) + len(sequences) > self.max_waiting:
                raise QueueFull(f"{len(self._waiting)} sequences are waiting for a row (at most {self.max_waiting})")
            self._waiting.extend(sequences)
            self._wake.notify()

    def cancel(self, seq: Sequence) -> None:
        """Drop ``seq``: its row is freed before the next step (its sink hears no more)."""
        with self._wake:
            seq.cancelled = True
            self._wake.notify()

    # ---------------------------------------------------------------- the loop (its own thread)

    def _loop(self) -> None:
        while True:
            with self._wake:
                while not (self._closed or self._waiting or self._active):
                    self._wake.wait()
                if self._closed:
                    break
                admit: list[Sequence] = []
                while self._waiting and len(admit) < self.batch.free:
                    seq = self._waiting.popleft()
                    if not seq.cancelled:
                        admit.append(seq)
            try:
                self._tick(admit)
            except Exception as e:  # a bug or a broken model: end what runs, keep serving
                for seq in self._active + admit:
                    if seq.row is not None and seq.row in self.batch.rows:
                        self.batch.remove(seq.row)
                    if seq.finish_reason is None:
                        seq.finish_reason = "error"
                        seq.sink("", "error", f"{type(e).__name__}: {e}")
                self._active = []
        for seq in self._active + list(self._waiting):
            seq.sink("", "error", "the server is shutting down")

    def _tick(self, admit: list[Sequence]) -> None:
        """Prefill the admitted, drop the cancelled, then one decode step for every row."""
        for seq in admit:
            seq.row, logits = self.batch.add(seq.prompt)
            self._active.append(seq)
            self._next(seq, logits[None], "prefill")
        self._retire()
        if self._active:
            logits = self.batch.step([seq.tokens[-1] for seq in self._active])  # (B, V)
            self.steps += 1
            for seq, row_logits in zip(list(self._active), logits):
                self._next(seq, row_logits[None], f"step {self.steps}")
            self._retire()

    def _next(self, seq: Sequence, logits: np.ndarray, where: str) -> None:
        """Draw ``seq``'s next token from its logits (1, V) and hand it on."""
        if seq.cancelled:
            return
        logits = logits[:, : self.vocab_limit]  # ids the tokenizer lacks are never drawn
        check_logits(logits, len(seq.tokens), f"serve ({where})", rows=False)
        u = None if seq.uniforms is None else seq.uniforms[len(seq.tokens) : len(seq.tokens) + 1]
        tok = int(draw(logits, u, *seq.sampling)[0])
        seq._take(tok, full=seq.row.length >= self.batch.capacity)

    def _retire(self) -> None:
        """Free the rows of sequences that are done or cancelled."""
        for seq in [s for s in self._active if s.finish_reason is not None or s.cancelled]:
            self.batch.remove(seq.row)
            self._active.remove(seq)
        self._active.sort(key=lambda s: s.row.index)  # the batch moved its last row into a gap
