"""What ``lt.threads.adaptive`` costs a call: nested (inside another lt call, decided already)
and outermost (where the thread count is decided and the BLAS set), in microseconds over a
plain Python call of the same no-op; then the BLAS set calls made by a one-token decode step.
The outermost call is timed pinned to the BLAS's count (no set needed, whatever the machine's
load) and pinned to another count (a set and a restore each call).

    python benchmarks/bench_threads.py            # best of 7 rounds of 100,000 calls each
"""

from __future__ import annotations

import time

import numpy as np

import lt
from lt import threads

ROUNDS, CALLS = 7, 100_000


def plain():
    return None


@threads.adaptive
def inner():
    return None


@threads.adaptive
def outer(fn, calls: int) -> float:
    """``calls`` calls of ``fn`` inside one lt call (so ``inner`` is a nested entry), in seconds."""
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    return time.perf_counter() - start


def loop(fn, calls: int) -> float:
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    return time.perf_counter() - start


def best_us(measure, fn) -> float:
    return min(measure(fn, CALLS) for _ in range(ROUNDS)) / CALLS * 1e6


def blas_count() -> int:
    """NumPy's BLAS's thread count now (1 without threadpoolctl)."""
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return 1
    return min((i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"), default=1)


def set_calls_of_a_decode_step() -> str:
    """How many times threadpoolctl's setter runs during one cached decode step of ``tiny``
    (lt's BLAS controllers wrapped to count; a busy-moment count forced with ``pin(1)``)."""
    try:
        from threadpoolctl import ThreadpoolController
    except ImportError:
        return "n/a (no threadpoolctl)"
    blas = [c for c in ThreadpoolController().lib_controllers if c.user_api == "blas"]
    if not blas:
        return "n/a (no BLAS found)"
    cls = type(blas[0])
    count = [0]
    original = cls.set_num_threads

    def counted(self, n):
        count[0] += 1
        return original(self, n)

    model = lt.GPT.preset("tiny")
    params = model.init(lt.random.key(0))
    prompt = np.arange(8)[None] % model.vocab_size
    results = []
    cls.set_num_threads = counted
    try:
        for label, n in (("adaptive", None), ("pin(1)", 1)):
            with threads.pin(n):
                model.generate(params, prompt, max_new_tokens=1, temperature=0)  # warm
                count[0] = 0
                model.generate(params, prompt, max_new_tokens=8, temperature=0)
            results.append(f"{label}: {count[0] / 8:.1f} set calls a token (prefill included)")
    finally:
        cls.set_num_threads = original
    return "; ".join(results)


def main() -> None:
    base_in, base_out = best_us(outer, plain), best_us(loop, plain)
    nested = best_us(outer, inner) - base_in
    print(f"adaptive, nested call:    {nested:.3f} us over a plain call ({base_in:.3f} us)")
    now = blas_count()
    for label, n in (("no set", now), ("set + restore", 1 if now != 1 else 2)):
        with threads.pin(n):
            outermost = best_us(loop, inner) - base_out
        print(f"adaptive, outermost call, {label} (pin({n})): {outermost:.3f} us over a plain call")
    print(f"decode step, tiny: {set_calls_of_a_decode_step()}")


if __name__ == "__main__":
    main()
