"""The matmul floor of a forward pass and of a training step: the GEMMs lt's step runs,
with their shapes and dtype (float32), timed alone with NumPy.

Shapes: B batch, T sequence, N = B T tokens, D hidden, H heads, Hkv key/value heads,
d = D / H head size, F feed-forward, V vocabulary, L layers.

Per layer the forward runs the fused qkv projection (N, D) @ (D, (H + 2 Hkv) d), the
attention scores (B H, T, d) @ (B H, d, T) and weighted sums (B H, T, T) @ (B H, T, d)
over the full T x T square, the output projection (N, D) @ (D, D) and the feed-forward
products (gelu/relu: fc and proj; swiglu: gate, up and down); then the LM head
(N, D) @ (D, V). A training step adds, for every y = x @ w, dx = dy @ w.T and
dw = x.T @ dy, and for attention dv = p.T @ g, dp = g @ v.T, dq = ds @ k, dk = ds.T @ q
(the transposes are views, as in lt's VJPs), layer by layer in reverse.

The time of that list is a floor: the rest of a step (norms, softmax, GELU, the optimizer,
Python) only adds to it. Each layer reads its own weight arrays (weights stream from
memory in lt's step too); activations, gradients and outputs of one shape share a buffer,
as a freshly computed activation sits in cache in lt's step.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import NamedTuple

import numpy as np


class Gemm(NamedTuple):
    """One product (batch, m, k) @ (batch, k, n) -> (batch, m, n) (batch 1: plain 2-D).

    ``a_t``/``b_t``: the operand is stored transposed, (k, m) or (n, k), and used as a view.
    ``weight``: the name of the weight that is operand b (one array per layer), or None."""

    name: str
    batch: int
    m: int
    k: int
    n: int
    a_t: bool = False
    b_t: bool = False
    weight: str | None = None

    @property
    def flops(self) -> int:
        return 2 * self.batch * self.m * self.k * self.n


def _linear(name: str, tokens: int, fan_in: int, fan_out: int, train: bool) -> tuple[list, list]:
    """y = x @ w, (N, fan_in) @ (fan_in, fan_out); with ``train`` also its two backward products."""
    forward = [Gemm(name, 1, tokens, fan_in, fan_out, weight=name)]
    if not train:
        return forward, []
    backward = [Gemm(name + " dx", 1, tokens, fan_out, fan_in, b_t=True, weight=name),   # dy @ w.T
                Gemm(name + " dw", 1, fan_in, tokens, fan_out, a_t=True)]               # x.T @ dy
    return forward, backward


def _attention(name: str, bh: int, seq: int, d: int, train: bool) -> tuple[list, list]:
    """Scores and weighted sums of (B H) heads over T x T; with ``train`` the four backward products."""
    forward = [Gemm(name + " scores", bh, seq, d, seq, b_t=True),             # q @ k.T
               Gemm(name + " weighted", bh, seq, seq, d)]                     # p @ v
    if not train:
        return forward, []
    backward = [Gemm(name + " dv", bh, seq, seq, d, a_t=True),                # p.T @ g
                Gemm(name + " dp", bh, seq, d, seq, b_t=True),                # g @ v.T
                Gemm(name + " dq", bh, seq, seq, d),                          # ds @ k
                Gemm(name + " dk", bh, seq, seq, d, a_t=True)]                # ds.T @ q
    return forward, backward


def gemms(model, batch: int, seq: int, train: bool = False) -> list[Gemm]:
    """The GEMMs of ``model``'s forward (``train``: forward, backward) on (batch, seq) tokens, in order.

    ``model`` is an ``lt.GPT`` (or anything with its fields: vocab_size, num_layers, num_heads,
    num_kv_heads, hidden_dim, ffn_dim, activation)."""
    D, H, F, V = model.hidden_dim, model.num_heads, model.ffn_dim, model.vocab_size
    Hkv = H if model.num_kv_heads is None else model.num_kv_heads
    d, N = D // H, batch * seq
    ffn = (("gate", D, F), ("up", D, F), ("down", F, D)) if model.activation == "swiglu" else \
        (("fc", D, F), ("proj", F, D))
    forward, backward = [], []
    for i in range(model.num_layers):
        parts = [_linear(f"blocks.{i}.attn.qkv", N, D, (H + 2 * Hkv) * d, train),
                 _attention(f"blocks.{i}.attn", batch * H, seq, d, train),
                 _linear(f"blocks.{i}.attn.proj", N, H * d, D, train)]
        parts += [_linear(f"blocks.{i}.ffn.{part}", N, fan_in, fan_out, train) for part, fan_in, fan_out in ffn]
        for f, b in parts:
            forward += f
            backward[:0] = b                          # the backward pass runs the layers in reverse
    head_f, head_b = _linear("head", N, D, V, train)
    return forward + head_f + head_b + backward


def total_flops(products: list[Gemm]) -> int:
    return sum(g.flops for g in products)


def _shape(batch: int, rows: int, cols: int) -> tuple[int, ...]:
    return (rows, cols) if batch == 1 else (batch, rows, cols)


def _view(x: np.ndarray, transposed: bool) -> np.ndarray:
    return np.swapaxes(x, -1, -2) if transposed else x


def operands(products: list[Gemm], seed: int = 0) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """(a, b, out) float32 arrays for each product: a distinct array per weight, one buffer per
    shape for everything else (outputs apart from inputs). Filled with normal noise."""
    noise, pool = np.random.default_rng(seed), {}

    def array(key, shape):
        if key not in pool:
            pool[key] = noise.standard_normal(shape, dtype=np.float32)
        return pool[key]

    triples = []
    for g in products:
        a_shape = _shape(g.batch, *((g.k, g.m) if g.a_t else (g.m, g.k)))
        a = _view(array(("act",) + a_shape, a_shape), g.a_t)
        b_shape = _shape(g.batch, *((g.n, g.k) if g.b_t else (g.k, g.n)))
        b = _view(array(("weight", g.weight) if g.weight else ("act",) + b_shape, b_shape), g.b_t)
        out = array(("out",) + _shape(g.batch, g.m, g.n), _shape(g.batch, g.m, g.n))
        triples.append((a, b, out))
    return triples


def run_products(triples) -> None:
    """Every product in order, ``np.matmul(a, b, out=out)``: what the floor times."""
    for a, b, out in triples:
        np.matmul(a, b, out=out)


def _numpy_blas() -> list:
    """threadpoolctl's controllers of NumPy's BLAS (torch's left alone); [] without threadpoolctl."""
    try:
        from threadpoolctl import ThreadpoolController
    except ImportError:
        return []
    return [c for c in ThreadpoolController().lib_controllers if c.user_api == "blas" and "torch" not in c.filepath]


def floor_callables(products: list[Gemm], seed: int = 0) -> dict[str, Callable[[], None]]:
    """Two calls that run every product of the list in order on the same operands (made once):
    ``"blas"`` with NumPy's BLAS threads as they are, ``"one"`` with one BLAS thread (where
    threadpoolctl is installed). The floor is the faster: on a quiet machine the threaded BLAS
    wins on big products, beside a busy process its spinning threads can be 100x slower on small
    ones while one thread is not (issue 15), and a floor must not be slower than NumPy can be."""
    triples = operands(products, seed)
    calls = {"blas": functools.partial(run_products, triples)}
    blas = _numpy_blas()
    if blas:
        def one():
            saved = [c.get_num_threads() for c in blas]
            for c in blas:
                c.set_num_threads(1)
            try:
                run_products(triples)
            finally:
                for c, n in zip(blas, saved):
                    c.set_num_threads(n)
        calls["one"] = one
    return calls


THREADS = {"blas": "BLAS threads", "one": "one BLAS thread"}


def floor_rows(bench, row: dict, of: str, flops: int) -> None:
    """After a timed ``forward`` or ``train step`` row with ``floor_s`` (and ``floor_threads_s``, the
    best seconds of each way of running it): its ``matmul floor`` row (tokens/s of the GEMMs alone)
    and its ``floor fraction`` row (floor_s over each library's seconds; the ratio of the two
    fractions is torch_s / lt_s)."""
    floor_s, ways = row["floor_s"], row["floor_threads_s"]
    best = min(ways, key=ways.get)
    note = f"{of}: {flops / 1e9:.3g} GFLOP at {flops / floor_s / 1e9:.3g} GFLOP/s, {THREADS[best]}"
    bench.add("matmul floor", row["preset"], row["shape"], "tokens/s", row["work"] / floor_s, None,
              check=note, of=of, floor_s=floor_s, floor_threads_s=ways, flops=flops, work=row["work"])
    torch_fraction = floor_s / row["torch_s"] if row.get("torch_s") else None
    bench.add("floor fraction", row["preset"], row["shape"], "of floor", floor_s / row["lt_s"], torch_fraction,
              check=of, of=of)
