"""Batch-1 greedy decoding throughput: lt against a PyTorch KV-cache twin and transformers.

For each preset: a 16-token prompt, 64 new tokens, greedy, float32, 2 threads; tokens/s
is 64 over the wall time of the whole call (prefill included). lt, the torch twin (the
same weights, its own preallocated KV cache) and ``GPT2LMHeadModel.generate`` (the same
config and weights, when transformers is importable) alternate round by round in one
process; each figure is the best of ``--repeats`` rounds.

    python benchmarks/bench_generate.py                       # medium, large, gpt2
    python benchmarks/bench_generate.py --presets medium --repeats 3

Needs torch; transformers is optional (its column is skipped when it is not installed).
The "agree" column counts the greedy tokens every implementation shares with lt's.
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("OMP_NUM_THREADS", "2")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "2")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")   # torch's idle threads must not spin on lt's cores

import numpy as np  # noqa: E402

import lt  # noqa: E402

PROMPT, NEW = 16, 64


def best_times(fns, repeats: int) -> list[float]:
    """Best wall time of each callable, alternating round by round on the shared machine."""
    for fn in fns:
        fn()                                          # warm up
    best = [float("inf")] * len(fns)
    for _ in range(repeats):
        for i, fn in enumerate(fns):
            start = time.perf_counter()
            fn()
            best[i] = min(best[i], time.perf_counter() - start)
    return best


# ----------------------------------------------------------------- transformers

def hf_decoder(model: lt.GPT, params):
    """transformers' GPT2LMHeadModel.generate on the same config and weights, or None."""
    try:
        import torch
        import transformers
    except ImportError:
        return None
    config = transformers.GPT2Config(
        vocab_size=model.vocab_size, n_positions=model.max_seq_len, n_embd=model.hidden_dim,
        n_layer=model.num_layers, n_head=model.num_heads, n_inner=model.ffn_dim,
        activation_function="gelu_new", resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
        layer_norm_epsilon=model.layer_norm_eps, bos_token_id=0, eos_token_id=None, pad_token_id=0)
    net = transformers.GPT2LMHeadModel(config).eval()
    names = {"ln1": "ln_1", "ln2": "ln_2", "attn.qkv": "attn.c_attn", "attn.proj": "attn.c_proj",
             "ffn.fc": "mlp.c_fc", "ffn.proj": "mlp.c_proj", "scale": "weight", "bias": "bias",
             "w": "weight", "b": "bias"}
    state = {"transformer.wte.weight": params["wte"]["w"], "transformer.wpe.weight": params["wpe"]["w"],
             "transformer.ln_f.weight": params["ln_f"]["scale"], "transformer.ln_f.bias": params["ln_f"]["bias"]}
    for i, b in enumerate(params["blocks"]):
        for path, leaf in lt.tree.items(b):                       # Conv1D stores (in, out), as lt does
            *mod, leaf_name = path.split(".")
            state[f"transformer.h.{i}.{names['.'.join(mod)]}.{names[leaf_name]}"] = leaf
    net.load_state_dict({k: torch.tensor(np.array(v)) for k, v in state.items()}, strict=False)
    net.tie_weights()

    @torch.inference_mode()
    def generate(prompt: np.ndarray, n: int) -> np.ndarray:
        ids = torch.as_tensor(prompt)[None]
        out = net.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, min_new_tokens=n,
                           do_sample=False, num_beams=1, pad_token_id=0)
        return out[0].numpy()
    return generate


# ----------------------------------------------------------------- main

def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--presets", nargs="+", default=["medium", "large", "gpt2"])
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args(argv)
    lt.tune_malloc()                                  # as the `lt generate` command does (process-wide)

    import torch
    from peers import torch_kv_decoder        # the twin, shared with bench_llm.py
    torch.set_num_threads(2)
    try:
        import transformers
        hf_version = f"transformers {transformers.__version__}"
    except ImportError:
        hf_version = "transformers not installed: its column is skipped (pip install transformers)"
    print(f"numpy {np.__version__}, torch {torch.__version__}, {hf_version}")
    print(f"batch 1, greedy, prompt {PROMPT}, {NEW} new tokens, float32, 2 threads; tokens/s, best of "
          f"{args.repeats} alternating rounds")
    print(f"{'preset':8} {'lt':>8} {'torch KV':>9} {'HF':>8} {'lt/torch':>9} {'lt/HF':>7} "
          f"{'lt ms/tok':>10} {'agree':>6}")
    for name in args.presets:
        model = lt.GPT.preset(name)
        params = model.init(lt.random.key(0))
        prompt = lt.random.randint(lt.random.key(1), (PROMPT,), 0, model.vocab_size)
        runners = {"lt": lambda: model.generate(params, prompt, max_new_tokens=NEW, temperature=0),
                   "torch": (lambda g: lambda: g(prompt, NEW))(torch_kv_decoder(model, params))}
        hf = hf_decoder(model, params)
        if hf is not None:
            runners["hf"] = lambda: hf(prompt, NEW)
        outs = {k: fn() for k, fn in runners.items()}
        # tokens that agree with lt before the first difference (near-ties of a random init
        # can part float32 implementations after a while; the first steps must agree)
        agree = min(int(np.argmax(np.append(o[PROMPT:] != outs["lt"][PROMPT:], True))) for o in outs.values())
        times = dict(zip(runners, best_times(list(runners.values()), args.repeats)))
        tps = {k: NEW / t for k, t in times.items()}
        hf_cols = (f"{tps['hf']:8.1f}", f"{tps['lt'] / tps['hf']:7.2f}") if "hf" in tps else (f"{'-':>8}", f"{'-':>7}")
        print(f"{name:8} {tps['lt']:8.1f} {tps['torch']:9.1f} {hf_cols[0]} {tps['lt'] / tps['torch']:9.2f} "
              f"{hf_cols[1]} {1e3 * times['lt'] / NEW:10.2f} {agree:>6}", flush=True)


if __name__ == "__main__":
    main()
