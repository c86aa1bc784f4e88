"""Fingerprints of lt's outputs: a short hash of each of 57 results (init, logits with and without
padding, loss, gradients, sampling, greedy, int8, beam search, for six model families, and six
training steps), to show that a structural change keeps every number.

    python benchmarks/fingerprint.py after.json
    PYTHONPATH=<a checkout of the old tree> python benchmarks/fingerprint.py before.json
    python -c "import json; a, b = (json.load(open(f)) for f in ('before.json', 'after.json')); \
print([k for k in a if a[k] != b[k]])"

Runs under ``lt.threads.pin(1)``. (Within one process a few results that run after others
have been seen to differ in their last bits between runs, in old and new trees alike; run
such a result alone to compare it.)
"""

import hashlib
import json
import sys

import numpy as np

import lt
from lt import random, tree


def h(x):
    if isinstance(x, (list, tuple)):
        return hashlib.sha256(b"".join(bytes.fromhex(h(y)) for y in x)).hexdigest()[:16]
    x = np.ascontiguousarray(np.asarray(x))
    return hashlib.sha256(x.tobytes() + str(x.dtype).encode() + str(x.shape).encode()).hexdigest()[:16]


out = {}
with lt.threads.pin(1):
    models = {
        "tiny": lt.GPT.preset("tiny"),
        "small-drop": lt.GPT.preset("small", dropout=0.1),
        "llama-tiny": lt.GPT.preset("llama-tiny"),
        "qwen": lt.GPT.preset("llama-tiny", qkv_bias=True, tie_embeddings=False),
        "mistral": lt.GPT.preset("llama-tiny", sliding_window=5),
        "sin-relu": lt.GPT.preset("tiny", positional="sinusoidal", activation="relu"),
    }
    ids = random.randint(random.key(1), (2, 12), 0, 400)
    for name, m in models.items():
        p = m.init(random.key(0))
        out[name + ".init"] = h(tree.leaves(p))
        out[name + ".logits"] = h(m.apply(p, ids))
        am = np.ones((2, 12), bool)
        am[1, 9:] = False
        out[name + ".logits_pad"] = h(m.apply(p, ids, attention_mask=am))
        loss, g = lt.value_and_grad(m.loss)(p, ids, rng=random.key(3))
        out[name + ".loss"] = h(loss)
        out[name + ".grads"] = h(tree.leaves(g))
        out[name + ".gen"] = h(
            m.generate(p, ids[:, :4], rng=random.key(2), max_new_tokens=8, temperature=0.8, top_k=20)
        )
        out[name + ".greedy"] = h(m.generate(p, ids[0, :5], rng=random.key(2), max_new_tokens=10, temperature=0))
        q = lt.quantize(p, 8) if "model" not in lt.quantize.__code__.co_varnames else lt.quantize(p, 8, model=m)
        out[name + ".q8"] = h(m.apply(q, ids))
        b = lt.beam_search(m, p, ids[0, :4], 3, max_new_tokens=5)
        out[name + ".beam"] = h([b.sequences, b.scores])
    m = models["llama-tiny"]
    opt = lt.optim.chain(lt.optim.clip_by_global_norm(0.5), lt.optim.adamw(1e-2, weight_decay=0.1))
    st = lt.TrainState.create(m.init(random.key(0), np.float64), opt)
    toks = random.randint(random.key(5), (2000,), 0, 500)
    st2, log = lt.train(
        m,
        opt,
        st,
        toks,
        steps=6,
        batch_size=3,
        seq_len=16,
        rng=random.key(7),
        log_every=1,
        progress=False,
        verbose=False,
    )
    out["train.params"] = h(tree.leaves(st2.params))
    out["train.opt"] = h(tree.leaves(st2.opt_state))
    out["train.losses"] = h([r["loss"] for r in log])
with open(sys.argv[1], "w") as f:
    json.dump(out, f, indent=1, sort_keys=True)
print(len(out), "fingerprints")
