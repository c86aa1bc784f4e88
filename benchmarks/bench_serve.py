"""lt serve under load: 1, 4 and 16 concurrent streaming clients on a live server.

    python benchmarks/bench_serve.py [--models small smollm-135m] [--tokens 32] [--context 256]

For each model (a random-weight ``lt.GPT.preset`` written as a Hugging Face directory with a
small BPE tokenizer) it starts ``lt serve --max-rows 16`` in a subprocess, then for each
number of clients sends that many streaming completions at once (each ``--tokens`` tokens,
its own seed) and reports: total generated tokens/s, time to first token (mean over the
clients) and the gap between tokens (p50/p95 over every token of every client).

The issue's targets: 16 clients reach >= 4x the total tokens/s of one client (batching
works), and time to first token with 16 clients stays <= 3x that of one client.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

import lt
from lt.tokenizers import BPETokenizer

TEXT = "Once upon a time there was a small model that served many clients at once. " * 50


def write_model(name: str, path: Path) -> None:
    tokenizer = BPETokenizer.train(TEXT, 512, special_tokens=["<|endoftext|>"])
    model = lt.GPT.preset(name, **({"vocab_size": 512} if name in ("tiny", "small", "mini") else {}))
    lt.hf.to_hf(model, model.init(lt.random.key(0)), path, tokenizer=tokenizer)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def one_client(http, url: str, seed: int, tokens: int):
    """(time to first token, gaps between tokens, tokens generated) of one streamed completion."""
    body = {"model": "bench", "prompt": "Once upon a time", "max_tokens": tokens, "temperature": 0.8, "seed": seed,
            "stream": True, "stream_options": {"include_usage": True}}  # fmt: skip
    start, stamps, usage = time.perf_counter(), [], None
    async with http.stream("POST", url + "/v1/completions", json=body, timeout=600) as response:
        async for line in response.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if chunk.get("usage"):
                usage = chunk["usage"]["completion_tokens"]
            elif chunk["choices"]:
                stamps.append(time.perf_counter())
    return stamps[0] - start, np.diff(stamps), usage


async def load(url: str, clients: int, tokens: int):
    import httpx

    async with httpx.AsyncClient(limits=httpx.Limits(max_connections=64)) as http:
        start = time.perf_counter()
        results = await asyncio.gather(*(one_client(http, url, seed, tokens) for seed in range(clients)))
        wall = time.perf_counter() - start
    ttft = float(np.mean([r[0] for r in results]))
    gaps = np.concatenate([r[1] for r in results])
    total = sum(r[2] for r in results)
    return total / wall, ttft, float(np.percentile(gaps, 50)), float(np.percentile(gaps, 95))


def bench(name: str, tokens: int, context: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        write_model(name, Path(tmp))
        port = free_port()
        argv = [sys.executable, "-m", "lt", "serve", "--hf", tmp, "--port", str(port), "--name", "bench",
                "--max-rows", "16", "--context", str(context)]  # fmt: skip
        server = subprocess.Popen(argv, stderr=subprocess.DEVNULL)
        url = f"http://127.0.0.1:{port}"
        try:
            import httpx

            for _ in range(600):
                try:
                    if httpx.get(url + "/health").status_code == 200:
                        break
                except httpx.TransportError:
                    time.sleep(0.2)
            asyncio.run(load(url, 1, 4))  # warm up
            rows = {n: asyncio.run(load(url, n, tokens)) for n in (1, 4, 16)}
        finally:
            server.kill()
            server.wait()
    print(f"\n{name} ({tokens} tokens per client, --max-rows 16, --context {context})")
    print(f"{'clients':>8} {'tokens/s':>10} {'TTFT ms':>9} {'p50 ms':>8} {'p95 ms':>8}")
    for n, (rate, ttft, p50, p95) in rows.items():
        print(f"{n:>8} {rate:>10.1f} {ttft * 1e3:>9.1f} {p50 * 1e3:>8.1f} {p95 * 1e3:>8.1f}")
    speedup, ttft_ratio = rows[16][0] / rows[1][0], rows[16][1] / rows[1][1]
    print(
        f"16 vs 1 client: {speedup:.1f}x tokens/s (target >= 4x), {ttft_ratio:.1f}x time to first token (target <= 3x)"
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=["small", "smollm-135m"])
    p.add_argument("--tokens", type=int, default=32)
    p.add_argument("--context", type=int, default=256)
    args = p.parse_args()
    for name in args.models:
        bench(name, args.tokens, args.context)


if __name__ == "__main__":
    main()
