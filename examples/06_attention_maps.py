"""Attention weights of every head, with and without the causal mask, saved as a PNG.

    python examples/06_attention_maps.py     # LT_EXAMPLE_OUT=DIR sets where attention.png goes
                                             # (default examples/out); LT_EXAMPLE_STEPS trains longer

Shapes: B batch, H heads, T sequence, D hidden, d = D / H. Trains a tiny character model
for a second, then recomputes one layer's attention from its input (the hidden state
the block receives): queries, keys and values from the block's ``qkv`` weights, then
``softmax(q kᵀ / √d)`` with the causal mask (what the model uses: position i sees only
j <= i) and without it (what the heads would look at if the future were visible).
The picture needs matplotlib (``pip install "lt[examples]"``); without it the numbers
are printed and the picture is skipped.
"""

import os
import pathlib

import numpy as np

import lt

STEPS = int(os.environ.get("LT_EXAMPLE_STEPS", 200))
OUT = pathlib.Path(os.environ.get("LT_EXAMPLE_OUT", pathlib.Path(__file__).parent / "out"))
TEXT = ("the cat sat on the mat and the dog sat on the log.\n"
        "the cat saw the dog and the dog saw the cat.\n"
        "the cat ran up a tree and the dog ran to the sea.\n")

rng = lt.random.key(0)
tok = lt.CharTokenizer.fit(TEXT)
model = lt.GPT.preset("tiny", vocab_size=tok.vocab_size, max_seq_len=64, num_heads=4)
opt = lt.optim.adamw(1e-2)
state, log = lt.train(model, opt, lt.TrainState.create(model.init(rng), opt), tok.encode(TEXT),
                      steps=STEPS, batch_size=16, seq_len=32, rng=rng, log_every=STEPS, verbose=False)
params = state.params
print(f"trained {STEPS} steps: loss {log[-1]['loss']:.3f}")

sentence = "the dog saw the cat."
ids = tok.encode(sentence)[None]                                    # (1, T)
T, layer = ids.shape[1], model.num_layers - 1

# The input of the last block's attention: its incoming hidden state, layer-normed.
_, hidden = model.apply(params, ids, return_hidden_states=True)     # L + 1 arrays (1, T, D)
block, block_params = model.block, params["blocks"][layer]
x = block.ln.apply(block_params["ln1"], hidden[layer])              # (1, T, D)
q, k, v = block.attn.project_qkv(block_params["attn"], x, x, x)     # 3 x (1, H, T, d)

mask = lt.nn.causal_mask(T)                                         # (T, T) bool, True = may attend
_, causal = lt.nn.scaled_dot_product_attention(q, k, v, mask, return_weights=True)    # (1, H, T, T)
_, full = lt.nn.scaled_dot_product_attention(q, k, v, None, return_weights=True)      # (1, H, T, T)
causal, full = causal[0], full[0]                                   # (H, T, T)

# The same weights come out of the block's own attention call.
_, inside = block.attn.apply(block_params["attn"], x, x, x, mask, return_weights=True)
print("weights equal those of MultiHeadAttention.apply:", np.allclose(inside[0], causal, atol=1e-6))

future = ~mask                                                      # (T, T) the entries j > i
print(f"layer {layer}, {model.num_heads} heads, sentence {sentence!r} ({T} characters)")
print(f"causal:  rows sum to 1: {np.allclose(causal.sum(-1), 1)} | weight on future positions "
      f"{causal[:, future].max():.6f} (max)")
print(f"no mask: rows sum to 1: {np.allclose(full.sum(-1), 1)} | weight on future positions "
      f"{full[:, future].sum() / (model.num_heads * T):.4f} (mean per row)")
distance = np.arange(T)[:, None] - np.arange(T)[None, :]          # (T, T) i - j: how far back key j is
for h in range(model.num_heads):
    print(f"  head {h}: looks back {np.mean(np.sum(causal[h] * distance, -1)):.2f} characters on average, "
          f"{np.mean(np.diagonal(causal[h])):.2f} of its weight on the query's own position")

try:
    import matplotlib
    matplotlib.use("Agg")                                           # files only, no window
    import matplotlib.pyplot as plt
except ImportError:
    print('matplotlib is not installed: pip install "lt[examples]" to save the picture')
    raise SystemExit(0)

labels = list(sentence.replace(" ", "_"))
fig, axes = plt.subplots(2, model.num_heads, figsize=(3.2 * model.num_heads, 7), layout="constrained")
for row, (name, weights) in enumerate([("causal mask", causal), ("no mask", full)]):
    for h, ax in enumerate(axes[row]):
        ax.imshow(weights[h], cmap="viridis", vmin=0, vmax=1)
        ax.set_title(f"head {h}, {name}", fontsize=9)
        ax.set_xticks(range(T), labels, fontsize=6)
        ax.set_yticks(range(T), labels, fontsize=6)
        if row == 1:
            ax.set_xlabel("key (attended to)", fontsize=8)
        if h == 0:
            ax.set_ylabel("query (attending)", fontsize=8)
fig.suptitle(f"Attention weights, layer {layer} of a tiny character model")
OUT.mkdir(parents=True, exist_ok=True)
path = OUT / "attention.png"
fig.savefig(path, dpi=100)
print("saved", path)
