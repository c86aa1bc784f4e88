"""Quick start: a model's config, params, logits, loss and gradients, functionally.

    python examples/quickstart.py
"""

import numpy as np

import lt

rng = lt.random.key(0)
model = lt.GPT.preset("small")                       # frozen hyperparameters
params = model.init(rng)                             # immutable pytree of float32 arrays
print(f"{model.num_params():,} parameters in {len(lt.tree.leaves(params))} arrays, e.g.",
      lt.tree.paths(params)[:3])

ids = lt.random.randint(lt.random.fold_in(rng, "data"), (2, 16), 0, model.vocab_size)   # (B, T)
logits = model.apply(params, ids)                    # (B, T, V), pure
loss = model.loss(params, ids)                       # predict ids[:, 1:] from ids[:, :-1]
print("logits", logits.shape, "loss", float(loss), "uniform would be", np.log(model.vocab_size))

loss, grads = lt.value_and_grad(model.loss)(params, ids)      # grads: a tree shaped like params
norm = np.sqrt(sum(float(np.sum(g * g)) for g in lt.tree.leaves(grads)))
print("gradient norm", round(norm, 4))

params2 = lt.tree.map(lambda p, g: p - 0.5 * g, params, grads)   # one SGD step, a new tree
print("loss after one step", float(model.loss(params2, ids)), "(the old params are untouched:",
      float(model.loss(params, ids)) == float(loss), ")")
