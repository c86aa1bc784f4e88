"""Ablate attention heads by editing the params tree, and measure what each one was worth.

    python examples/10_ablate_head.py           # LT_EXAMPLE_STEPS=2000: a better-trained model

Needs the corpus (``pip install "lt[text]"``). Trains a small character model on
Shakespeare for a few seconds, then removes one head at a time and measures the loss on
held-out text. Shapes: T sequence, D hidden, H heads, d = D / H per head.

A layer's attention concatenates its heads' outputs, (T, H·d) with head h in columns
h·d .. (h+1)·d, then projects them with ``proj.w`` (D, D), stored (in, out). So the rows
h·d .. (h+1)·d of ``blocks.L.attn.proj.w`` carry head h and nothing else: zeroing them
is the ablation, one ``lt.tree.set`` that leaves the trained params untouched.
"""

import os
import sys

import numpy as np

import lt

STEPS = int(os.environ.get("LT_EXAMPLE_STEPS", 300))
B, T = 16, 64

try:
    text = lt.data.load_text("shakespeare")
except lt.data.CorpusUnavailableError as e:
    sys.exit(str(e))                                                    # says what to pip install
train_text, val_text = lt.data.train_val_split_text(text, val_fraction=0.1)
tok = lt.CharTokenizer.fit(text)
train_ids, val_ids = tok.encode(train_text), tok.encode(val_text)

rng = lt.random.key(0)
model = lt.GPT.preset("tiny", vocab_size=tok.vocab_size, max_seq_len=T, num_heads=4)   # 2 layers x 4 heads
opt = lt.optim.adamw(lt.optim.warmup_cosine(1e-2, warmup=STEPS // 10, total=STEPS, end=1e-3), weight_decay=0.1)
state, _ = lt.train(model, opt, lt.TrainState.create(model.init(rng), opt), train_ids, steps=STEPS,
                    batch_size=B, seq_len=T, rng=rng, verbose=False)
params = state.params


def val_loss(p) -> float:
    """Loss on the first 8 batches of held-out windows: the same text for every model."""
    return lt.evaluate(model, p, lt.data.sequential_windows(val_ids, B, T, max_batches=8))["loss"]


def ablate(p, layer: int, head: int):
    """``p`` with head ``head`` of block ``layer`` silenced: its rows of proj.w set to zero."""
    path = f"blocks.{layer}.attn.proj.w"
    w = lt.tree.get(p, path)                                            # (D, D) rows = head outputs
    d = w.shape[0] // model.num_heads
    keep = np.arange(w.shape[0]) // d != head                           # (D,) False on head's rows
    return lt.tree.set(p, path, w * keep[:, None])


base = val_loss(params)
print(f"trained {STEPS} steps; held-out loss {base:.4f} with every head")
print("layer head  ablated loss  change")
changes = {}
for layer in range(model.num_layers):
    for head in range(model.num_heads):
        loss = val_loss(ablate(params, layer, head))
        changes[layer, head] = loss - base
        print(f"{layer:5d} {head:4d}  {loss:12.4f}  {loss - base:+.4f}")
(layer, head), worst = max(changes.items(), key=lambda kv: kv[1])
print(f"most useful head: layer {layer} head {head} (loss {worst:+.4f} without it)")

# The same ablation another way: zero the head's value vectors. The qkv columns come in
# blocks of d: q of heads 0..H-1, k of heads 0..H-1, then v; weight (D, 3D) and bias (3D,)
# share that last axis, so one mask silences both. The head's output is then 0 as well.
d = model.hidden_dim // model.num_heads
keep = np.arange(3 * model.hidden_dim) // d != 2 * model.num_heads + head    # (3D,) False on head's v
path = f"blocks.{layer}.attn.qkv"
via_v = lt.tree.set(params, path, lt.tree.map(lambda a: a * keep, lt.tree.get(params, path)))
print(f"the same head silenced through its value columns: loss {val_loss(via_v):.4f} "
      f"(through proj.w rows: {base + worst:.4f})")
print(f"the trained params are untouched: loss {val_loss(params):.4f}")
