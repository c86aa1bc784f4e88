"""The same weights in a PyTorch twin of lt's GPT give the same loss and gradients.

The twin is written here from PyTorch's own operations (F.layer_norm, F.gelu(tanh),
F.scaled_dot_product_attention, F.cross_entropy), so agreement checks lt's forward and
every VJP against an independent implementation. Skipped when torch is not installed.
"""

import numpy as np
import pytest

import lt
from lt import random, tree

torch = pytest.importorskip("torch", reason="PyTorch cross-checks need torch (pip install torch==2.13.0)")
F = torch.nn.functional


def torch_gpt_loss(model: lt.GPT, p: dict, ids, targets, attention_mask=None, ignore_index=-100):
    """lt's GPT in PyTorch, on a dict of tensors keyed by lt's paths."""
    B, T = ids.shape
    D, H = model.hidden_dim, model.num_heads
    ids_t = torch.as_tensor(ids)
    x = p["wte.w"][ids_t]
    if model.positional == "learned":
        x = x + p["wpe.w"][:T]
    else:
        x = x + torch.as_tensor(lt.nn.PositionalEncoding(model.max_seq_len, D).apply({}, np.arange(T), dtype=np.float64)).to(x.dtype)
    mask = torch.tril(torch.ones(T, T, dtype=torch.bool))
    if attention_mask is not None:
        mask = mask & torch.as_tensor(attention_mask)[:, None, None, :]
    for i in range(model.num_layers):
        b = lambda name: p[f"blocks.{i}.{name}"]
        h = F.layer_norm(x, (D,), b("ln1.scale"), b("ln1.bias"), eps=model.layer_norm_eps)
        q, k, v = (h @ b("attn.qkv.w") + b("attn.qkv.b")).split(D, dim=-1)
        q, k, v = (t.view(B, T, H, D // H).transpose(1, 2) for t in (q, k, v))
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        x = x + a.transpose(1, 2).reshape(B, T, D) @ b("attn.proj.w") + b("attn.proj.b")
        h = F.layer_norm(x, (D,), b("ln2.scale"), b("ln2.bias"), eps=model.layer_norm_eps)
        h = F.gelu(h @ b("ffn.fc.w") + b("ffn.fc.b"), approximate="tanh")
        x = x + h @ b("ffn.proj.w") + b("ffn.proj.b")
    x = F.layer_norm(x, (D,), p["ln_f.scale"], p["ln_f.bias"], eps=model.layer_norm_eps)
    logits = x @ (p["wte.w"].T if model.tie_embeddings else p["head.w"])
    return F.cross_entropy(logits.reshape(-1, model.vocab_size), torch.as_tensor(targets).reshape(-1),
                           ignore_index=ignore_index)


def relative_error(a, b) -> float:
    return float(np.linalg.norm(np.asarray(a, np.float64) - b) / max(np.linalg.norm(b), 1e-30))


CASES = {
    "tiny": dict(preset="tiny"),
    "small-untied-sinusoidal": dict(preset="small", tie_embeddings=False, positional="sinusoidal"),
}


@pytest.mark.parametrize("dtype,tol", [(np.float64, 1e-5), (np.float32, 1e-4)])
@pytest.mark.parametrize("case", list(CASES))
def test_loss_and_every_gradient_match_pytorch(case, dtype, tol):
    overrides = dict(CASES[case])
    model = lt.GPT.preset(overrides.pop("preset"), **overrides)
    params = model.init(random.key(1), dtype)
    # perturb norms and biases so that their gradients are not trivially structured
    params = tree.map(lambda x: x + (0.05 * random.normal(random.fold_in(random.key(2), x.size), x.shape, dtype)), params)
    B, T = 3, 24
    ids = random.randint(random.key(3), (B, T), 0, model.vocab_size)
    targets = random.randint(random.key(4), (B, T), 0, model.vocab_size)
    targets[0, :5] = -100                                   # ignored positions
    attention_mask = np.ones((B, T), bool)
    attention_mask[2, 20:] = False                          # right padding in row 2
    targets[2, 20:] = -100

    loss, grads = lt.value_and_grad(model.loss)(params, ids, targets, attention_mask=attention_mask)

    tparams = {path: torch.tensor(np.array(leaf), requires_grad=True) for path, leaf in tree.items(params)}
    tloss = torch_gpt_loss(model, tparams, ids, targets, attention_mask)
    tloss.backward()

    assert loss.dtype == dtype
    assert relative_error(loss, tloss.item()) <= tol
    for path, g in tree.items(grads):
        assert g.dtype == dtype, path
        assert relative_error(g, tparams[path].grad.numpy()) <= tol, path


def test_attention_primitive_gradients_match_pytorch_with_masks():
    """The fused attention VJP against torch's SDPA backward, with a padding+causal mask."""
    B, H, T, d = 2, 3, 7, 5
    q, k, v = (random.normal(random.key(i), (B, H, T, d), np.float64) for i in range(3))
    mask = lt.nn.causal_mask(T) & lt.nn.padding_mask(np.array([7, 4]), T)
    g = random.normal(random.key(9), (B, H, T, d), np.float64)
    _, grads = lt.value_and_grad(lambda q, k, v: lt.ops.sum(lt.ops.attention(q, k, v, mask) * g),
                                 argnums=(0, 1, 2))(q, k, v)
    tq, tk, tv = (torch.tensor(x, requires_grad=True) for x in (q, k, v))
    (F.scaled_dot_product_attention(tq, tk, tv, attn_mask=torch.as_tensor(mask)) * torch.as_tensor(g)).sum().backward()
    for ours, theirs in zip(grads, (tq, tk, tv)):
        assert relative_error(ours, theirs.grad.numpy()) <= 1e-10
