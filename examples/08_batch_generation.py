"""Batch generation: prompts of different lengths continued together in one call.

    python examples/08_batch_generation.py          # LT_EXAMPLE_STEPS=600 trains longer

Shapes: B prompts, T longest prompt, n new tokens. A list of prompts is left-padded to
(B, T); padding is never attended to and each row's positions start at its first real
token, so a row's continuation is the one it would get alone. Each row samples with its
own key ``fold_in(rng, row)``, so it does not depend on the other prompts either. With
``eos_id`` a row stops at that token and is padded after it.
"""

import os

import numpy as np

import lt

STEPS = int(os.environ.get("LT_EXAMPLE_STEPS", 200))
TEXT = ("the cat sat on the mat and the dog sat on the log.\n"
        "the cat saw the dog and the dog saw the cat.\n"
        "the cat ran up a tree and the dog ran to the sea.\n"
        "then the dog sat on the mat and the cat sat on the log.\n")

rng = lt.random.key(0)
tok = lt.CharTokenizer.fit(TEXT)
model = lt.GPT.preset("tiny", vocab_size=tok.vocab_size, max_seq_len=64)
opt = lt.optim.adamw(1e-2)
state, log = lt.train(model, opt, lt.TrainState.create(model.init(rng), opt), tok.encode(TEXT),
                      steps=STEPS, batch_size=8, seq_len=64, rng=rng, log_every=STEPS, verbose=False)
params = state.params
print(f"trained {STEPS} steps: loss {log[-1]['loss']:.3f}")

texts = ["the cat ", "then the dog ", "a tree", "the dog saw the "]
prompts = [tok.encode(t) for t in texts]                 # B arrays of different lengths
newline = int(tok.encode("\n")[0])
n = 40
sample_rng = lt.random.fold_in(rng, "sample")

# One call for the whole batch: (B, T + n), each prompt left-padded to T.
out = model.generate(params, prompts, rng=sample_rng, max_new_tokens=n, temperature=0.8, eos_id=newline)
T = max(len(p) for p in prompts)
print(f"\n{len(prompts)} prompts -> array {out.shape} (longest prompt {T} + {n} new tokens):")
for text, p, row in zip(texts, prompts, out):
    new = row[T:]                                        # (n,) the continuation
    stop = np.flatnonzero(new == newline)                # the row stopped at its first newline
    new = new[:stop[0]] if stop.size else new
    print(f"  {text + tok.decode(new)!r}")

# Greedy rows equal the same prompts decoded one at a time: padding changes nothing.
batch = model.generate(params, prompts, max_new_tokens=n, temperature=0)
alone = [model.generate(params, p, max_new_tokens=n, temperature=0) for p in prompts]
same = all(np.array_equal(row[T - len(p):], solo) for row, p, solo in zip(batch, prompts, alone))
print("\ngreedy: every row equals its prompt decoded alone:", same)

# Sampled rows depend only on their own prompt and index: a single prompt samples as row 0,
# and changing one prompt changes no other row.
def sample(prompt_ids):
    return model.generate(params, prompt_ids, rng=sample_rng, max_new_tokens=n, temperature=0.8)


a = sample(prompts)                                      # (B, T + n)
alone = sample(prompts[0])                               # (len + n,)
print("sampled: row 0 equals the first prompt sampled alone:", np.array_equal(a[0, -n:], alone[-n:]))
b = sample([prompts[0], tok.encode("the sea"), *prompts[2:]])
print("sampled: changing prompt 1 leaves rows 0, 2 and 3 as they were:",
      all(np.array_equal(a[i, -n:], b[i, -n:]) for i in (0, 2, 3)))
