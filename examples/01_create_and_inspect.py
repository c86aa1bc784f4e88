"""Create a model and look inside it: hyperparameters, the params tree, immutability, keys.

    python examples/01_create_and_inspect.py

A model is a frozen attrs object that holds only hyperparameters; ``model.init(rng)``
makes its parameters, a frozen tree of read-only float32 arrays addressed by dotted
paths such as ``blocks.0.attn.qkv.w``. Editing returns a new tree (``lt.tree.set``), and
a parameter's initial value depends only on the key and its place in the model.
"""

import numpy as np

import lt

rng = lt.random.key(0)

# 1. The model: hyperparameters only, validated when it is built.
model = lt.GPT.preset("tiny")
print(model)
try:
    lt.GPT.preset("tiny", num_heads=3)                   # 32 hidden units do not split into 3 heads
except ValueError as e:
    print("a bad hyperparameter raises at construction:", e)

# 2. The params: a tree of arrays. Shapes follow GPT-2 (Linear weights are (in, out)).
params = model.init(rng)
print(f"\n{len(lt.tree.leaves(params))} arrays:")
for path in lt.tree.paths(params):
    leaf = lt.tree.get(params, path)
    print(f"  {path:22} {str(leaf.shape):11} {leaf.dtype}")
print(f"parameters: {model.num_params():,} from the config, {lt.tree.size(params):,} in the tree")

# 3. Immutable: neither the containers nor the arrays can be changed in place.
try:
    params["wte"]["w"][0, 0] = 1.0
except ValueError as e:
    print("\nwriting into a leaf:", e)
try:
    params["ln_f"] = None
except TypeError as e:
    print("replacing a subtree:", e)

# lt.tree.set is the edit: a new tree that shares every leaf off the changed path.
wte = lt.tree.get(params, "wte.w")                       # (V, D)
original = wte.copy()
edited = lt.tree.set(params, "wte.w", wte * 0.5)
print("edited tree: wte.w halved:", np.array_equal(edited["wte"]["w"], 0.5 * original),
      "| old tree unchanged:", np.array_equal(params["wte"]["w"], original),
      "| wpe.w shared:", edited["wpe"]["w"] is params["wpe"]["w"])

# 4. Keys: the same key gives the same params, bit for bit; another key, other params.
same = model.init(lt.random.key(0))
other = model.init(lt.random.key(1))
print("\nsame key, identical params:", all(np.array_equal(a, b) for a, b in
                                           zip(lt.tree.leaves(params), lt.tree.leaves(same))))
print("other key, different params:", not np.array_equal(params["wte"]["w"], other["wte"]["w"]))

# A leaf's key is folded from its path, so adding a layer changes no existing weight...
deeper = lt.GPT.preset("tiny", num_layers=3).init(rng)
print("a 3-layer model has the same blocks.0.attn.qkv.w:",
      np.array_equal(deeper["blocks"][0]["attn"]["qkv"]["w"], params["blocks"][0]["attn"]["qkv"]["w"]))
# ...and a block initialised alone, with the key of its place, equals the model's block.
block_rng = lt.random.fold_in(lt.random.fold_in(rng, "blocks"), 1)
block = model.block.init(block_rng)
print("model.block.init(key of blocks.1) equals blocks.1:",
      all(np.array_equal(a, b) for a, b in zip(lt.tree.leaves(block), lt.tree.leaves(params["blocks"][1]))))
