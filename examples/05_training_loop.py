"""A short training loop written out: keys per step, a schedule, dropout, evaluation, checkpoints.

    python examples/05_training_loop.py          # LT_EXAMPLE_STEPS=1000 trains longer
                                                 # LT_EXAMPLE_OUT=DIR: where the checkpoint goes

The data are sentences from a tiny made-up grammar, so the validation text comes from
the same distribution as the training text. Step ``s`` draws its batch from
``fold_in(data_rng, s)`` and its dropout from ``fold_in(dropout_rng, s)``: no generator
state, so a run resumed from a checkpoint makes exactly the steps of one that never
stopped. ``lt.train`` is this loop with logging, evaluation and checkpoints built in.
"""

import os
import pathlib

import numpy as np

import lt

STEPS = int(os.environ.get("LT_EXAMPLE_STEPS", 150))
OUT = pathlib.Path(os.environ.get("LT_EXAMPLE_OUT", pathlib.Path(__file__).parent / "out"))
B, T = 16, 48                                            # batch size, sequence length

SUBJECTS = ["the cat", "a dog", "my friend", "the old king", "a small bird"]
VERBS = ["sees", "follows", "likes", "waits for", "sings to"]
OBJECTS = ["the moon", "a red boat", "the river", "her brother", "the quiet town"]


def sentences(rng, n: int) -> str:
    """``n`` random sentences: subject, verb, object, each picked by ``rng``."""
    picks = lt.random.randint(rng, (n, 3), 0, 5)                       # (n, 3)
    return "".join(f"{SUBJECTS[s]} {VERBS[v]} {OBJECTS[o]}.\n" for s, v, o in picks)


rng = lt.random.key(0)
train_text = sentences(lt.random.fold_in(rng, "train"), 2000)
val_text = sentences(lt.random.fold_in(rng, "val"), 200)
tok = lt.CharTokenizer.fit(train_text)
train_ids, val_ids = tok.encode(train_text), tok.encode(val_text)    # (N,), (M,)
print(f"{len(train_ids):,} training and {len(val_ids):,} validation characters, vocabulary {tok.vocab_size}")

model = lt.GPT.preset("tiny", vocab_size=tok.vocab_size, max_seq_len=T, dropout=0.1)
schedule = lt.optim.warmup_cosine(1e-2, warmup=STEPS // 10, total=STEPS, end=1e-3)
opt = lt.optim.chain(lt.optim.clip_by_global_norm(1.0), lt.optim.adamw(schedule, weight_decay=0.1))
train_step = lt.make_train_step(model, opt)


def eval_loss(params) -> float:
    """Mean loss over the first 4 batches of validation windows (always the same ones)."""
    return lt.evaluate(model, params, lt.data.sequential_windows(val_ids, B, T, max_batches=4))["loss"]


def run(state, until: int):
    """Train from ``state.step`` to ``until``; every step's batch and dropout come from its number."""
    data_rng, dropout_rng = lt.random.fold_in(rng, "data"), lt.random.fold_in(rng, "dropout")
    while state.step < until:
        batch = lt.data.random_windows(lt.random.fold_in(data_rng, state.step), train_ids, B, T)  # (B, T) x 2
        state, metrics = train_step(state, batch, lt.random.fold_in(dropout_rng, state.step))
        if state.step % max(STEPS // 5, 1) == 0 or state.step == until:
            print(f"step {state.step:4d} | loss {metrics['loss']:.4f} | lr {metrics['lr']:.2e} "
                  f"| eval {eval_loss(state.params):.4f}")
    return state


state = lt.TrainState.create(model.init(rng), opt)
print(f"step    0 | eval {eval_loss(state.params):.4f} (log V = {np.log(tok.vocab_size):.4f})")
state = run(state, STEPS)

# Save a checkpoint (written to a temporary file, then renamed), load it back, continue.
OUT.mkdir(parents=True, exist_ok=True)
path = OUT / "training_loop.safetensors"
lt.checkpoint.save(path, model, state.params, state.opt_state, state.step)
ckpt = lt.checkpoint.load(path, model, opt_state_template=state.opt_state)
resumed = lt.TrainState(ckpt.params, ckpt.opt_state, ckpt.step)
print(f"saved and loaded {path.name} at step {ckpt.step}")

more = 10
a = run(state, STEPS + more)                             # never stopped
b = run(resumed, STEPS + more)                           # resumed from the file
print(f"{more} more steps from memory and from the checkpoint give identical params:",
      all(np.array_equal(x, y) for x, y in zip(lt.tree.leaves(a.params), lt.tree.leaves(b.params))))

prompt = tok.encode("the old king ")
print("greedy sample:", repr(tok.decode(model.generate(a.params, prompt, max_new_tokens=30, temperature=0))))
