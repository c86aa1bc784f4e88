"""The forward pass: token ids in, next-token logits out, and what lies between.

    python examples/02_forward_pass.py

Shapes: B batch, T sequence, D hidden, V vocabulary, L layers. Shows logits and the loss
computed by hand from them, that position t never sees tokens after t (the causal mask),
the per-layer hidden states, the tied LM head, and that dropout only runs with a key.
"""

import numpy as np

import lt

rng = lt.random.key(0)
model = lt.GPT.preset("small")                           # V=1000, D=64, L=4, 4 heads
params = model.init(rng)
B, T, V = 2, 16, model.vocab_size
ids = lt.random.randint(lt.random.fold_in(rng, "data"), (B, T), 0, V)           # (B, T)

# 1. Logits, and the probabilities and loss computed from them by hand.
logits = model.apply(params, ids)                                               # (B, T, V)
probs = np.exp(logits - logits.max(axis=-1, keepdims=True))
probs /= probs.sum(axis=-1, keepdims=True)                                      # (B, T, V)
print("ids", ids.shape, "-> logits", logits.shape, "| probabilities sum to 1:",
      np.allclose(probs.sum(axis=-1), 1.0))
# p(ids[t+1] | ids[:t+1]): the probability each position gave the token that came next
p_next = np.take_along_axis(probs[:, :-1], ids[:, 1:, None], axis=-1)[..., 0]  # (B, T-1)
print(f"loss: model.loss {float(model.loss(params, ids)):.6f} | by hand {-np.log(p_next).mean():.6f} "
      f"| uniform guess log V {np.log(V):.6f}")

# 2. Causality: changing token 8 leaves the logits of positions 0..7 exactly as they were.
changed = ids.copy()
changed[:, 8] = (changed[:, 8] + 1) % V
diff = np.abs(model.apply(params, changed) - logits).max(axis=(0, 2))           # (T,)
print(f"after changing token 8: max |logit change| at positions 0-7 {diff[:8].max():.3g}, "
      f"at positions 8-15 {diff[8:].min():.3g} or more")

# 3. One sequence (T,) gives (T, V): the same numbers as its row in the batch.
single = model.apply(params, ids[0])                                            # (T, V)
print("one sequence", single.shape, "equals row 0 of the batch:", np.allclose(single, logits[0], atol=1e-5))

# 4. Hidden states: the embeddings and each block's output, before the final norm.
logits, hidden = model.apply(params, ids, return_hidden_states=True)            # L + 1 arrays (B, T, D)
print(f"{len(hidden)} hidden states (embeddings + {model.num_layers} blocks):")
for i, h in enumerate(hidden):
    name = "embeddings" if i == 0 else f"block {i - 1}"
    print(f"  {name:10} {h.shape}  rms {np.sqrt(np.mean(h ** 2)):.4f}")
# The tied LM head: logits = ln_f(h_L) @ wte.T
by_hand = model.ln_f.apply(params["ln_f"], hidden[-1]) @ params["wte"]["w"].T  # (B, T, D) @ (D, V)
print("logits == ln_f(last hidden) @ wte.T:", np.allclose(by_hand, logits, atol=1e-5))

# 5. Pure: the same call gives the same bits; dropout runs only when a key is given.
noisy = lt.GPT.preset("small", dropout=0.1)
print("no key, twice, identical:", np.array_equal(noisy.apply(params, ids), noisy.apply(params, ids)))
k = lt.random.fold_in(rng, "dropout")
print("same key, identical:", np.array_equal(noisy.apply(params, ids, rng=k), noisy.apply(params, ids, rng=k)),
      "| with a key differs from without:", not np.allclose(noisy.apply(params, ids, rng=k), logits))
