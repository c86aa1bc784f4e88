"""Text generation at several temperatures, with top-k, top-p and beam search.

    python examples/03_generate_temperatures.py            # LT_EXAMPLE_STEPS=600 trains longer

Trains a tiny character model on a short rhyme for a second or two, then continues a
prompt. Temperature divides the logits before the softmax: 0 is greedy (always the
most likely character, the same text whatever the key), 1 samples the model's own
distribution, and higher values flatten it towards uniform noise.
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
tok = lt.CharTokenizer.fit(TEXT)                         # one id per distinct character
ids = tok.encode(TEXT)                                   # (N,) int32
model = lt.GPT.preset("tiny", vocab_size=tok.vocab_size, max_seq_len=64)
opt = lt.optim.adamw(1e-2)
state = lt.TrainState.create(model.init(rng), opt)
state, log = lt.train(model, opt, state, ids, steps=STEPS, batch_size=8, seq_len=64,
                      rng=lt.random.fold_in(rng, "train"), log_every=STEPS, verbose=False)
params = state.params
print(f"trained {STEPS} steps on {len(TEXT)} characters: loss {log[-1]['loss']:.3f}")

prompt = tok.encode("the dog ")                          # (T,)
sample_rng = lt.random.fold_in(rng, "sample")

# What the next character is drawn from, at each temperature: lower is sharper.
next_logits = model.apply(params, prompt)[-1]            # (V,) logits after the prompt
print("\nnext-character distribution after 'the dog ':")
for t in (0.5, 1.0, 1.5, 3.0):
    p = lt.generate.distribution(next_logits, temperature=t)                     # (V,) float64
    top = np.argsort(-p)[:3]
    entropy = -np.sum(p[p > 0] * np.log(p[p > 0]))
    print(f"  temperature {t}: entropy {entropy:.3f} nats | most likely "
          + ", ".join(f"{tok.decode([i])!r} {p[i]:.2f}" for i in top))

# Samples: the prompt, then 50 new characters.
print("\nsamples:")
for t in (0.0, 0.5, 1.0, 1.5):
    out = model.generate(params, prompt, rng=sample_rng, max_new_tokens=50, temperature=t)   # (T + 50,)
    print(f"  temperature {t}: {tok.decode(out)!r}")

# Greedy ignores the key: another key gives the same text.
a = model.generate(params, prompt, rng=lt.random.key(1), max_new_tokens=50, temperature=0)
b = model.generate(params, prompt, rng=lt.random.key(2), max_new_tokens=50, temperature=0)
print("\ngreedy with two different keys, identical:", np.array_equal(a, b))
# Sampling with the same key twice gives the same text too: the key is the whole randomness.
c = model.generate(params, prompt, rng=sample_rng, max_new_tokens=50, temperature=1.0)
d = model.generate(params, prompt, rng=sample_rng, max_new_tokens=50, temperature=1.0)
print("temperature 1 with the same key twice, identical:", np.array_equal(c, d))

# Filters: top-k keeps the k likeliest characters, top-p the fewest reaching mass p.
out = model.generate(params, prompt, rng=sample_rng, max_new_tokens=50, temperature=1.5, top_k=3)
print(f"\ntemperature 1.5, top_k=3:   {tok.decode(out)!r}")
out = model.generate(params, prompt, rng=sample_rng, max_new_tokens=50, temperature=1.5, top_p=0.8)
print(f"temperature 1.5, top_p=0.8: {tok.decode(out)!r}")

# Beam search: the continuations with the highest mean log-probability per character.
seqs, scores = lt.beam_search(model, params, prompt, num_beams=3, max_new_tokens=20)      # (K, T + 20), (K,)
print("\nbeam search, 3 beams:")
for s, score in zip(seqs, scores):
    print(f"  {score:8.4f}  {tok.decode(s)!r}")
