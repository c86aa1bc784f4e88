"""One training step, by hand and with ``lt.make_train_step``: loss, gradients, AdamW, new params.

    python examples/04_training_step.py

Shapes: B batch, T sequence. A step is pure: it takes params and an optimizer state and
returns new ones; the old params stay valid (and unchanged), so comparing before and
after is just calling the loss on both.
"""

import numpy as np

import lt

TEXT = "to be or not to be, that is the question; whether tis nobler in the mind to suffer.\n" * 4

rng = lt.random.key(0)
tok = lt.CharTokenizer.fit(TEXT)
ids = tok.encode(TEXT)                                              # (N,)
model = lt.GPT.preset("tiny", vocab_size=tok.vocab_size, max_seq_len=32)
params = model.init(rng)
batch = lt.data.random_windows(lt.random.fold_in(rng, "data"), ids, batch_size=8, seq_len=32)
print("batch: inputs", batch.inputs.shape, "targets", batch.targets.shape,
      "| targets are the inputs shifted by one:", np.array_equal(batch.inputs[:, 1:], batch.targets[:, :-1]))

# 1. Loss and gradients: a tree shaped like params.
loss, grads = lt.value_and_grad(model.loss)(params, batch.inputs, batch.targets)
print(f"loss {float(loss):.4f} (log V = {np.log(model.vocab_size):.4f}) | "
      f"gradient norm {lt.optim.global_norm(grads):.4f} | same paths as params:",
      lt.tree.paths(grads) == lt.tree.paths(params))

# 2. The optimizer: clip the gradient norm to 1, then AdamW (decaying only the matrices).
opt = lt.optim.chain(lt.optim.clip_by_global_norm(1.0),
                     lt.optim.adamw(1e-2, weight_decay=0.1))
opt_state = opt.init(params)                                        # Adam's moments, all zeros
updates, opt_state = opt.update(grads, opt_state, params)           # deltas, a tree shaped like params
new_params = lt.optim.apply_updates(params, updates)                # params + updates, a new tree
new_loss = float(model.loss(new_params, batch.inputs, batch.targets))
print(f"one step by hand: loss {float(loss):.4f} -> {new_loss:.4f} | "
      f"old params still give {float(model.loss(params, batch.inputs, batch.targets)):.4f}")
print("learning rate in the optimizer state:", lt.optim.current_learning_rate(opt_state))

# 3. The same step as one pure function: train_step(state, batch, rng) -> (state, metrics).
# row_pieces=1: the whole batch at once, as by hand. By default a small model's step cuts the
# batch's rows in two pieces that run on two cores and adds their gradients: the same numbers up
# to float rounding, which Adam's first steps can magnify where a gradient is near 0.
train_step = lt.make_train_step(model, opt, row_pieces=1)
state = lt.TrainState.create(params, opt)                           # (params, opt_state, step=0)
state, metrics = train_step(state, batch)                           # rng=None: no dropout
print("make_train_step, step", state.step, {k: round(v, 4) for k, v in metrics.items()})
print("it gives the same params as the step by hand:",
      all(np.array_equal(a, b) for a, b in zip(lt.tree.leaves(state.params), lt.tree.leaves(new_params))))

# A few more steps on the same batch: the loss keeps falling (the model memorises it).
for _ in range(5):
    state, metrics = train_step(state, batch)
print(f"after {state.step} steps: loss {float(model.loss(state.params, batch.inputs, batch.targets)):.4f}")
