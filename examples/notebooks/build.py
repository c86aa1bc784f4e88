"""Write the example notebooks (quickstart.ipynb, training.ipynb) from the cells below.

    python examples/notebooks/build.py        # needs nbformat (pip install "lt[notebooks]")

The notebooks are committed without outputs; edit the cells here and rebuild, so that the
.ipynb files stay a plain function of this script. tests/test_notebooks.py runs them.
"""

import pathlib

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

HERE = pathlib.Path(__file__).resolve().parent

QUICKSTART = [
    ("md", """# lt quickstart

A GPT-style model in NumPy, written like JAX code: the model object holds hyperparameters only,
parameters are an immutable tree of arrays, and every function is pure (same key, same numbers).
This notebook runs in a few seconds on a laptop CPU."""),
    ("code", """%matplotlib inline
import matplotlib.pyplot as plt
import numpy as np

import lt"""),
    ("md", """## A model and its parameters

`lt.GPT.preset("tiny")` is a frozen config; `init(rng)` gives the parameters, a read-only tree
whose leaves are named by their paths."""),
    ("code", """rng = lt.random.key(0)
text = "the cat sat on the mat. the dog sat on the log. the cat saw the dog.\\n"
tok = lt.CharTokenizer.fit(text)
model = lt.GPT.preset("tiny", vocab_size=tok.vocab_size, max_seq_len=64)
params = model.init(rng)
print(model)
print(f"{model.num_params():,} parameters")
for path, leaf in list(zip(lt.tree.paths(params), lt.tree.leaves(params)))[:6]:
    print(f"{path:24} {leaf.shape}")"""),
    ("md", """## Forward pass, loss and gradients

`apply` maps token ids (batch, seq) to logits (batch, seq, vocab); `lt.value_and_grad` differentiates
any function built from lt's primitives, returning gradients shaped like the parameters."""),
    ("code", """ids = tok.encode(text)[None, :33]                  # (1, 33)
inputs, targets = ids[:, :-1], ids[:, 1:]          # (1, 32) each
logits = model.apply(params, inputs)               # (1, 32, vocab)
loss, grads = lt.value_and_grad(model.loss)(params, inputs, targets)
print(logits.shape, f"loss {float(loss):.4f} (log of the vocabulary: {np.log(tok.vocab_size):.4f})")
print("gradient of", lt.tree.paths(grads)[0], lt.tree.leaves(grads)[0].shape)"""),
    ("md", """## Trees are immutable

A leaf cannot be written in place; `lt.tree.set` returns a new tree sharing every other leaf."""),
    ("code", """wte = lt.tree.get(params, "wte.w")
try:
    wte[0, 0] = 1.0
except ValueError as e:
    print("in place:", e)
zeroed = lt.tree.set(params, "wte.w", np.zeros_like(wte))
print("new tree:", float(np.abs(lt.tree.get(zeroed, "wte.w")).sum()), "| old tree untouched:",
      float(np.abs(lt.tree.get(params, "wte.w")).sum()) > 0)"""),
    ("md", """## Next-token probabilities and sampling

An untrained model spreads its probability almost evenly over the vocabulary."""),
    ("code", """probs = np.exp(logits[0, -1] - logits[0, -1].max())
probs /= probs.sum()
fig, ax = plt.subplots(figsize=(8, 2.5))
ax.bar([repr(tok.decode(np.array([i])))[1:-1] for i in range(tok.vocab_size)], probs)
ax.set_ylabel("p(next token)")
ax.set_title("after " + repr(text[:32]))
plt.show()"""),
    ("code", """prompt = tok.encode("the ")[None]                    # (1, 4)
out = model.generate(params, prompt, rng=lt.random.key(1), max_new_tokens=40, temperature=0.8)
again = model.generate(params, prompt, rng=lt.random.key(1), max_new_tokens=40, temperature=0.8)
print(repr(tok.decode(out[0])))
print("same key, same text:", np.array_equal(out, again))"""),
    ("md", """Next: `training.ipynb` trains a character model on Shakespeare and plots its curves."""),
]

TRAINING = [
    ("md", """# Training a character-level model

`lt.train` runs the pure step `train_step(state, batch, rng) -> (state, metrics)` in a loop, with a
progress bar (drawn in place, here as in a terminal), periodic log records and held-out evaluation.
Small enough to run in seconds; raise `STEPS` and the preset for a better model."""),
    ("code", """%matplotlib inline
import matplotlib.pyplot as plt
import numpy as np

import lt

STEPS = 100"""),
    ("md", """## Data

The bundled corpus (Shakespeare's plays, from the `text` extra), a character tokenizer, and a
90/10 split into training and validation text."""),
    ("code", """text = lt.corpus.load_text("shakespeare")[:300_000]
train_text, val_text = lt.corpus.train_val_split_text(text, 0.1)
tok = lt.CharTokenizer.fit(text)
train_ids, val_ids = tok.encode(train_text), tok.encode(val_text)    # (N,), (M,) int ids
print(f"{len(train_ids):,} training and {len(val_ids):,} validation characters, {tok.vocab_size} symbols")"""),
    ("md", """## Model, optimizer, state

AdamW on a warmup + cosine schedule after gradient clipping, as in nanoGPT; the state is one value."""),
    ("code", """rng = lt.random.key(1337)
model = lt.GPT.preset("tiny", vocab_size=tok.vocab_size, max_seq_len=64)
schedule = lt.optim.warmup_cosine(3e-3, warmup=10, total=STEPS, end=3e-4)
optimizer = lt.optim.chain(lt.optim.clip_by_global_norm(1.0), lt.optim.adamw(schedule, weight_decay=0.1))
state = lt.TrainState.create(model.init(lt.random.fold_in(rng, "init")), optimizer)
print(f"{model.num_params():,} parameters")"""),
    ("md", """## Train

The bar below is redrawn in place as the steps go; the log lines print under it."""),
    ("code", """state, log = lt.train(model, optimizer, state, train_ids, steps=STEPS, batch_size=8, seq_len=32,
                      rng=rng, val_tokens=val_ids, eval_every=50, eval_batches=4, log_every=20)"""),
    ("md", """## Curves

Each log record holds the mean training loss since the previous one, the learning rate and
tokens/s; evaluation records add the validation loss."""),
    ("code", """steps = [r["step"] for r in log]
evals = [(r["step"], r["eval_loss"]) for r in log if "eval_loss" in r]
fig, (loss_ax, lr_ax) = plt.subplots(1, 2, figsize=(10, 3.5))
loss_ax.plot(steps, [r["loss"] for r in log], label="training")
loss_ax.plot(*zip(*evals), "o-", label="validation")
loss_ax.set_xlabel("step"); loss_ax.set_ylabel("loss (nats/char)"); loss_ax.legend()
lr_ax.plot(steps, [r["lr"] for r in log])
lr_ax.set_xlabel("step"); lr_ax.set_ylabel("learning rate")
plt.show()"""),
    ("md", """## Sample

The same key gives the same text, in this process or any other."""),
    ("code", """prompt = tok.encode("ROMEO:\\n")[None]
out = model.generate(state.params, prompt, rng=lt.random.key(0), max_new_tokens=56, temperature=0.8)  # 7 + 56 <= 64
print(tok.decode(out[0]))"""),
    ("md", """From the command line, the same in one go: `lt train --recipe nanogpt --out runs/shakespeare`, then
`lt info --run runs/shakespeare` for a summary and `lt plot --run runs/shakespeare` for these curves."""),
]


def notebook(cells) -> nbformat.NotebookNode:
    nb = new_notebook(cells=[new_markdown_cell(src) if kind == "md" else new_code_cell(src) for kind, src in cells])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.metadata["language_info"] = {"name": "python"}
    for i, cell in enumerate(nb.cells):
        cell["id"] = f"cell-{i:02d}"                   # stable ids: rebuilding changes nothing
    return nb


def main() -> None:
    for name, cells in (("quickstart", QUICKSTART), ("training", TRAINING)):
        nb = notebook(cells)
        nbformat.validate(nb)
        nbformat.write(nb, HERE / f"{name}.ipynb")
        print(HERE / f"{name}.ipynb")


if __name__ == "__main__":
    main()
