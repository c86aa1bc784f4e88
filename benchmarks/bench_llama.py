"""Llama-shaped models against transformers: forward, training step and KV decoding.

    python benchmarks/bench_llama.py                     # SmolLM-135M's shape (issue 16)
    python benchmarks/bench_llama.py --preset llama-tiny

The transformers twin is ``LlamaForCausalLM`` loaded from ``lt.hf.to_hf`` of lt's own
random weights (so both compute the same function; the script checks the logits agree
first). Forward: 4 x 128 tokens. Training step: forward + backward + AdamW (lt: its loss,
``lt.value_and_grad`` and ``lt.optim.adamw``; torch: the same loss, autograd and
``torch.optim.AdamW``). Decoding: batch 1, prompt 16, 64 new tokens, greedy: lt's KV cache
against transformers' ``generate`` and a plain torch loop over ``past_key_values``.
Ratios are lt/peer in tokens/s (above 1: lt is faster). 2 threads for both libraries.
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import tempfile

import numpy as np

import lt

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from bench_llm import best_times          # noqa: E402  (alternating rounds, best of)

B, T, PROMPT, NEW = 4, 128, 16, 64


def twin(model: lt.GPT, params):
    """transformers' model with lt's weights, through lt.hf.to_hf (float32, eval mode)."""
    import torch
    from transformers import AutoModelForCausalLM
    with tempfile.TemporaryDirectory() as d:
        lt.hf.to_hf(model, params, d)
        hf = AutoModelForCausalLM.from_pretrained(d, torch_dtype=torch.float32, attn_implementation="sdpa")
    return hf.eval()


def torch_kv_loop(hf, prompt: np.ndarray, n: int) -> np.ndarray:
    """Greedy decoding with transformers' model called step by step on its KV cache."""
    import torch
    with torch.no_grad():
        ids = torch.tensor(prompt[None])
        out = hf(ids, use_cache=True)
        past, tokens = out.past_key_values, []
        for _ in range(n):
            tok = out.logits[:, -1].argmax(-1, keepdim=True)
            tokens.append(int(tok))
            out = hf(tok, past_key_values=past, use_cache=True)
            past = out.past_key_values
    return np.concatenate([prompt, tokens])


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="smollm-135m", choices=[p for p in lt.GPT.presets() if "llama" in p
                                                                 or "smollm" in p])
    ap.add_argument("--budget", type=float, default=20.0, help="seconds of timed rounds per measurement")
    args = ap.parse_args(argv)
    lt.tune_malloc()
    import torch
    torch.set_num_threads(2)

    model = lt.GPT.preset(args.preset)
    params = model.init(lt.random.key(0))
    hf = twin(model, params)
    ids = lt.random.randint(lt.random.key(1), (B, T), 0, model.vocab_size)
    with torch.no_grad():
        theirs = hf(torch.tensor(ids)).logits.numpy()
    ours = model.apply(params, ids)
    print(f"{args.preset}: {model.num_params():,} parameters; logits max|d| {np.abs(ours - theirs).max():.1e}")

    # forward
    def hf_forward():
        with torch.no_grad():
            hf(torch.tensor(ids))
    (lt_t, hf_t), _ = best_times([lambda: model.apply(params, ids), hf_forward], args.budget, 2, 20)
    rows = [("forward", f"{B}x{T}", B * T / lt_t[0], B * T / hf_t[0])]

    # training step
    opt = lt.optim.adamw(1e-4)
    state = {"params": params, "opt": opt.init(params)}
    loss_grad = lt.value_and_grad(model.loss)
    targets = np.roll(ids, -1, axis=1)

    def lt_step():
        _, grads = loss_grad(state["params"], ids, targets)
        updates, state["opt"] = opt.update(grads, state["opt"], state["params"])
        state["params"] = lt.optim.apply_updates(state["params"], updates)
    hf.train()
    torch_opt = torch.optim.AdamW(hf.parameters(), lr=1e-4, weight_decay=0.01)
    tid, ttarget = torch.tensor(ids), torch.tensor(targets)

    def torch_step():
        torch_opt.zero_grad(set_to_none=True)
        logits = hf(tid).logits
        torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), ttarget.reshape(-1)).backward()
        torch_opt.step()
    (lt_t, hf_t), _ = best_times([lt_step, torch_step], args.budget, 2, 10)
    rows.append(("train step", f"{B}x{T}", B * T / lt_t[0], B * T / hf_t[0]))
    hf.eval()

    # decoding
    hf = twin(model, params)                            # fresh weights: the training steps changed them
    prompt = lt.random.randint(lt.random.key(2), (PROMPT,), 0, model.vocab_size)

    def hf_generate():
        with torch.no_grad():
            return hf.generate(torch.tensor(prompt[None]), max_new_tokens=NEW, min_new_tokens=NEW,
                               do_sample=False)[0].numpy()
    ours = model.generate(params, prompt, max_new_tokens=NEW, temperature=0)
    agree = {k: int(np.argmax(np.append(fn()[PROMPT:] != ours[PROMPT:], True)))
             for k, fn in (("generate", hf_generate), ("loop", lambda: torch_kv_loop(hf, prompt, NEW)))}
    fns = [lambda: model.generate(params, prompt, max_new_tokens=NEW, temperature=0), hf_generate,
           lambda: torch_kv_loop(hf, prompt, NEW)]
    (lt_t, gen_t, loop_t), _ = best_times(fns, args.budget, 2, 10)
    rows.append(("KV decode vs HF generate", f"1x{PROMPT}+{NEW}", NEW / lt_t[0], NEW / gen_t[0]))
    rows.append(("KV decode vs torch loop", f"1x{PROMPT}+{NEW}", NEW / lt_t[0], NEW / loop_t[0]))

    print(f"{'measurement':26} {'shape':10} {'lt':>10} {'peer':>10} {'lt/peer':>8}  (tokens/s)")
    for name, shape, a, b in rows:
        print(f"{name:26} {shape:10} {a:10,.1f} {b:10,.1f} {a / b:8.2f}")
    print(f"greedy tokens agreeing before the first difference: generate {agree['generate']}/{NEW}, "
          f"loop {agree['loop']}/{NEW}")


if __name__ == "__main__":
    main()
