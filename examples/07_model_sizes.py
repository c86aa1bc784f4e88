"""Model sizes: parameters and memory for every preset, counted three ways.

    python examples/07_model_sizes.py

Shapes: V vocabulary, C context (max_seq_len), L layers, D hidden, F feed-forward.
``model.num_params()`` counts from the config without allocating anything; the table
checks it against the formula below and, for presets up to 20M parameters, against
a real ``model.init`` (``lt.tree.size`` and the bytes of the arrays).

GPT-2 family, per block: ln1, ln2 (2D each) + qkv (D·3D + 3D) + proj (D·D + D) + fc (D·F + F)
         + proj (F·D + D) = 4D² + 2DF + 9D + F
Model:     wte (V·D) + wpe (C·D) + L blocks + ln_f (2D); the LM head is tied to wte.
Llama family (``llama-tiny``, ``smollm-135m``), with K = num_kv_heads and d = D / heads, per
block: ln1, ln2 (D each) + qkv (D·(D + 2Kd)) + proj (D·D) + gate, up, down (3·D·F), no biases;
model: wte (V·D) + L blocks + ln_f (D) (rotary positions have no table). The KV cache holds
K heads: 2·L·C·K·d numbers.
"""

import numpy as np

import lt

MiB = 2 ** 20
CHECK_UP_TO = 20_000_000                                 # initialise presets this small to check


def by_formula(m: lt.GPT) -> int:
    D, F = m.hidden_dim, m.ffn_dim
    if m.norm == "rms":                                  # the Llama family (see the docstring)
        kv = m.kv_heads * (D // m.num_heads)
        block = 2 * D + D * (D + 2 * kv) + D * D + 3 * D * F
        return m.vocab_size * D + m.num_layers * block + D
    block = 4 * D * D + 2 * D * F + 9 * D + F
    return m.vocab_size * D + m.max_seq_len * D + m.num_layers * block + 2 * D


rng = lt.random.key(0)
print(f"{'preset':12} {'layers':>6} {'heads':>5} {'hidden':>6} {'vocab':>6} {'context':>7} {'parameters':>12} "
      f"{'embeddings':>10} {'weights':>9} {'training':>9} {'KV cache':>9}  checked")
for name in lt.GPT.presets():
    m = lt.GPT.preset(name)
    n = m.num_params()
    embeddings = (m.vocab_size + (m.max_seq_len if m.wpe is not None else 0)) * m.hidden_dim / n   # wte (+ wpe)
    weights = n * 4 / MiB                                   # float32
    training = n * 16 / MiB                                 # params, gradients, AdamW's two moments
    kv_cache = 2 * m.num_layers * m.max_seq_len * m.kv_heads * (m.hidden_dim // m.num_heads) * 4 / MiB   # K, V: 1 row
    checked = "formula"
    assert by_formula(m) == n, (name, by_formula(m), n)
    if n <= CHECK_UP_TO:
        params = m.init(rng)
        assert lt.tree.size(params) == n
        assert sum(x.nbytes for x in lt.tree.leaves(params)) == n * 4
        checked += " + init"
    print(f"{name:12} {m.num_layers:>6} {m.num_heads:>5} {m.hidden_dim:>6} {m.vocab_size:>6} {m.max_seq_len:>7} "
          f"{n:>12,} {embeddings:>10.0%} {weights:>6.1f}MiB {training:>6.1f}MiB {kv_cache:>6.1f}MiB  {checked}")
print("weights: float32 params | training: params + gradients + AdamW moments (activations extra) | "
      "KV cache: one sequence at full context")

# Where the parameters of one block go, for the gpt2 preset.
gpt2 = lt.GPT.preset("gpt2")
print(f"\none gpt2 block ({gpt2.block.num_params():,} parameters):")
for part, spec in gpt2.block.spec().items():
    count = sum(int(np.prod(p.shape)) for p in lt.tree.leaves(spec))
    print(f"  {part:5} {count:>10,}  {count / gpt2.block.num_params():6.1%}")
print(f"an untied LM head would add {gpt2.hidden_dim * gpt2.vocab_size:,}: "
      f"{lt.GPT.preset('gpt2', tie_embeddings=False).num_params():,} in all")
