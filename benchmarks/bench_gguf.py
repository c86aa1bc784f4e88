"""GGUF: export and load time, and batch-1 decoding in llama.cpp against lt on the same file.

    python benchmarks/bench_gguf.py                        # gpt2 and smollm-135m shapes, ~3-5 minutes on 2 cores
    python benchmarks/bench_gguf.py --presets llama-mini   # a quick look
    python benchmarks/bench_gguf.py --no-llama-cpp         # export and load only

For each preset (random weights; the shapes are what matter) and each type (F32, Q8_0, Q4_0):

1. ``lt.gguf.save`` time and file size, and ``lt.gguf.load`` time (Q8_0 / Q4_0 load as lt
   quantized leaves; nothing is dequantized);
2. where llama-cpp-python is installed: batch-1 greedy decoding, ``--new`` tokens after a
   ``--prompt``-token prompt, tokens/s in llama.cpp (``--threads`` threads) and in lt (the KV
   cache, the same threads for the BLAS), both on the file's own weights, both with a float32 KV
   cache; ``agree``: the share of greedy tokens that are the same, position by position; the best of
   ``--repeats`` rounds. This is the number lt's own quantized decoding is measured against:
   ``lt/llama`` is lt's tokens/s over llama.cpp's (targets: F32 >= 0.9, Q8_0 >= 0.8, Q4_0 >= 0.7),
   ``GB/s`` the weights each reads per token (lt: its params' bytes; llama.cpp: the file's) times
   tokens/s, against the machine's bandwidth (~31 GB/s on the 2-core EPYC measured), and
   ``vs f32`` each type's lt tokens/s over lt's F32 on the same preset.

Both run on the same cores; the figures are for comparison on one machine, not absolutes.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
import tempfile
import time

os.environ.setdefault("OMP_NUM_THREADS", "2")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "2")

import numpy as np

import lt


def _best(fn, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def _lt_decode(model, params, prompt: np.ndarray, n: int) -> list[int]:
    out = model.generate(params, prompt, rng=lt.random.key(0), max_new_tokens=n, temperature=0)
    return np.asarray(out).reshape(-1)[-n:].tolist()


def _llama_decode(llm, prompt: list[int], n: int) -> list[int]:
    llm.reset()
    llm.eval(prompt)
    out = []
    for _ in range(n):
        tok = int(np.argmax(llm.scores[llm.n_tokens - 1]))
        out.append(tok)
        llm.eval([tok])
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--presets", nargs="+", default=["gpt2", "smollm-135m"])
    p.add_argument("--types", nargs="+", default=["f32", "q8_0", "q4_0"])
    p.add_argument("--prompt", type=int, default=16)
    p.add_argument("--new", type=int, default=32)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--no-llama-cpp", action="store_true")
    args = p.parse_args()
    try:
        import llama_cpp
    except ImportError:
        llama_cpp = None
    if args.no_llama_cpp:
        llama_cpp = None
    text = "the quick brown fox jumps over the lazy dog; naïve café, 日本語. " * 40
    print(f"python {sys.version.split()[0]}, numpy {np.__version__}, {os.cpu_count()} cpus, "
          f"llama-cpp-python {getattr(llama_cpp, '__version__', 'not installed')}")  # fmt: skip
    header = f"{'preset':12} {'type':5} {'file':>9} {'save s':>7} {'load s':>7}"
    targets = {"f32": 0.9, "q8_0": 0.8, "q4_0": 0.7}
    print(
        header
        + (
            ""
            if llama_cpp is None
            else f" {'llama.cpp tok/s':>15} {'lt tok/s':>9} {'lt/llama':>8} {'target':>6} {'llama GB/s':>10}"
            f" {'lt GB/s':>8} {'vs f32':>6} {'agree':>6}"
        )
    )
    with tempfile.TemporaryDirectory() as tmp:
        for preset in args.presets:
            model = lt.GPT.preset(preset)
            # random weights, scaled so that greedy picks are decided by clear margins (what trained models have)
            params = lt.tree.map(lambda w: 4 * w if w.ndim == 2 else w, model.init(lt.random.key(0)))
            tok = lt.BPETokenizer.train(text, min(300, model.vocab_size))  # the table padded past it
            prompt = tok.encode(text)[: args.prompt]
            lt_f32 = None
            for kind in args.types:
                path = os.path.join(tmp, f"{preset}-{kind}.gguf")
                start = time.perf_counter()
                lt.gguf.save(path, model, params, tokenizer=tok, type=kind)
                save_s = time.perf_counter() - start
                start = time.perf_counter()
                model2, params2, _ = lt.gguf.load(path)
                load_s = time.perf_counter() - start
                row = f"{preset:12} {kind:5} {os.path.getsize(path) / 2**20:7.1f}Mi {save_s:7.2f} {load_s:7.2f}"
                if llama_cpp is not None:
                    llm = llama_cpp.Llama(path, n_ctx=args.prompt + args.new + 8, n_threads=args.threads,
                                          n_threads_batch=args.threads, logits_all=True, verbose=False,
                                          type_k=0, type_v=0)  # a float32 KV cache, as lt's  # fmt: skip
                    theirs = _llama_decode(llm, prompt.tolist(), args.new)
                    ours = _lt_decode(model2, params2, prompt, args.new)
                    t_llama = _best(functools.partial(_llama_decode, llm, prompt.tolist(), args.new), args.repeats)
                    t_lt = _best(functools.partial(_lt_decode, model2, params2, prompt, args.new), args.repeats)
                    agree = np.mean(np.array(theirs) == np.array(ours))
                    ours_tps, theirs_tps = args.new / t_lt, args.new / t_llama
                    lt_f32 = ours_tps if kind == "f32" else lt_f32
                    vs = f"{ours_tps / lt_f32:5.2f}x" if lt_f32 else "     -"
                    row += (f" {theirs_tps:15.1f} {ours_tps:9.1f} {ours_tps / theirs_tps:7.2f}x"
                            f" {targets.get(kind, 0):5.1f}x {os.path.getsize(path) * theirs_tps / 1e9:10.1f}"
                            f" {lt.tree.nbytes(params2) * ours_tps / 1e9:8.1f} {vs} {agree:6.0%}")  # fmt: skip
                    del llm
                print(row, flush=True)
                os.remove(path)


if __name__ == "__main__":
    main()
