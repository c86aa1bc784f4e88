"""PyTorch twins of lt's components for the benchmarks, built on lt's own weights.

Each twin computes the same function as its lt counterpart from idiomatic PyTorch
(nn.Linear, F.layer_norm, F.scaled_dot_product_attention, tanh GELU), with lt's
parameters copied in, so that a benchmark can check the outputs agree before it times
them. Linear weights are stored (in, out) by lt and (out, in) by nn.Linear.

Shapes: B batch, H heads, T sequence, D hidden, d = D / H, V vocab.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

import lt
from torch_gpt import Block, TorchGPT

__all__ = ["TorchMHA", "load_block", "load_gpt", "load_mha", "torch_kv_decoder"]


def _tensor(a) -> torch.Tensor:
    return torch.tensor(np.array(a))                  # a copy: lt's leaves are read-only


# lt's path inside a block -> (torch_gpt.Block's parameter, transpose?)
_BLOCK_NAMES = {
    "ln1.scale": ("ln1.weight", False), "ln1.bias": ("ln1.bias", False),
    "attn.qkv.w": ("qkv.weight", True), "attn.qkv.b": ("qkv.bias", False),
    "attn.proj.w": ("proj.weight", True), "attn.proj.b": ("proj.bias", False),
    "ln2.scale": ("ln2.weight", False), "ln2.bias": ("ln2.bias", False),
    "ffn.fc.w": ("fc.weight", True), "ffn.fc.b": ("fc.bias", False),
    "ffn.proj.w": ("fc_proj.weight", True), "ffn.proj.b": ("fc_proj.bias", False),
}
_GPT_NAMES = {"wte.w": ("wte.weight", False), "wpe.w": ("wpe.weight", False),
              "ln_f.scale": ("ln_f.weight", False), "ln_f.bias": ("ln_f.bias", False)}


def _load(module: nn.Module, params, rename) -> nn.Module:
    state = {}
    for path, leaf in lt.tree.items(params):
        name, transpose = rename(path)
        t = _tensor(leaf)
        state[name] = t.T.contiguous() if transpose else t
    module.load_state_dict(state, strict=True)
    return module.eval()


def load_block(block: lt.nn.TransformerBlock, params) -> Block:
    """torch_gpt.Block with the weights of an lt TransformerBlock."""
    return _load(Block(block), params, _BLOCK_NAMES.__getitem__)


def load_gpt(model: lt.GPT, params) -> TorchGPT:
    """torch_gpt.TorchGPT with the weights of an lt GPT (tied head, learned positions)."""
    def rename(path):
        if path.startswith("blocks."):
            _, i, rest = path.split(".", 2)
            name, transpose = _BLOCK_NAMES[rest]
            return f"blocks.{i}.{name}", transpose
        return _GPT_NAMES[path]
    return _load(TorchGPT(model), params, rename)


class TorchMHA(nn.Module):
    """Causal self-attention with a fused qkv projection: torch_gpt.Block's attention alone."""

    def __init__(self, hidden_dim: int, num_heads: int):
        super().__init__()
        self.heads = num_heads
        self.qkv, self.proj = nn.Linear(hidden_dim, 3 * hidden_dim), nn.Linear(hidden_dim, hidden_dim)

    def forward(self, x):                                         # (B, T, D) -> (B, T, D)
        B, T, D = x.shape
        q, k, v = self.qkv(x).split(D, dim=-1)
        q, k, v = (t.view(B, T, self.heads, D // self.heads).transpose(1, 2) for t in (q, k, v))
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True)   # (B, H, T, d)
        return self.proj(a.transpose(1, 2).reshape(B, T, D))


def load_mha(mha: lt.nn.MultiHeadAttention, params) -> TorchMHA:
    names = {"qkv.w": ("qkv.weight", True), "qkv.b": ("qkv.bias", False),
             "proj.w": ("proj.weight", True), "proj.b": ("proj.bias", False)}
    return _load(TorchMHA(mha.hidden_dim, mha.num_heads), params, names.__getitem__)


def torch_kv_decoder(model: lt.GPT, params):
    """Greedy decoding in PyTorch with a preallocated KV cache, on lt's weights:
    ``generate(prompt (T,), n) -> (T + n,)`` int64."""
    t = _tensor
    wte, wpe = t(params["wte"]["w"]), t(params["wpe"]["w"])
    blocks = [{name: t(leaf) for name, leaf in lt.tree.items(b)} for b in params["blocks"]]
    for b in blocks:                                              # nn.Linear's (out, in) layout
        for name in ("attn.qkv.w", "attn.proj.w", "ffn.fc.w", "ffn.proj.w"):
            b[name] = b[name].T.contiguous()
    ln_f = (t(params["ln_f"]["scale"]), t(params["ln_f"]["bias"]))
    D, H = model.hidden_dim, model.num_heads
    d, eps = D // H, model.layer_norm_eps

    def forward(ids, start, cache):
        B, T = ids.shape
        x = wte[ids] + wpe[start:start + T]                       # (B, T, D)
        for b, (K, V) in zip(blocks, cache):
            h = F.layer_norm(x, (D,), b["ln1.scale"], b["ln1.bias"], eps)
            q, k, v = F.linear(h, b["attn.qkv.w"], b["attn.qkv.b"]).split(D, dim=-1)
            q, k, v = (z.view(B, T, H, d).transpose(1, 2) for z in (q, k, v))   # (B, H, T, d)
            K[:, :, start:start + T], V[:, :, start:start + T] = k, v
            a = F.scaled_dot_product_attention(q, K[:, :, :start + T], V[:, :, :start + T], is_causal=T > 1)
            x = x + F.linear(a.transpose(1, 2).reshape(B, T, D), b["attn.proj.w"], b["attn.proj.b"])
            h = F.layer_norm(x, (D,), b["ln2.scale"], b["ln2.bias"], eps)
            h = F.gelu(F.linear(h, b["ffn.fc.w"], b["ffn.fc.b"]), approximate="tanh")
            x = x + F.linear(h, b["ffn.proj.w"], b["ffn.proj.b"])
        return F.layer_norm(x[:, -1], (D,), *ln_f, eps) @ wte.T   # (B, V)

    @torch.inference_mode()
    def generate(prompt: np.ndarray, n: int) -> np.ndarray:
        ids = torch.as_tensor(prompt)[None]
        T = ids.shape[1]
        cache = [(torch.empty(1, H, T + n, d), torch.empty(1, H, T + n, d)) for _ in blocks]
        logits, out = forward(ids, 0, cache), []
        for step in range(n):
            tok = logits.argmax(-1, keepdim=True)                 # (1, 1)
            out.append(tok)
            if step < n - 1:
                logits = forward(tok, T + step, cache)
        return torch.cat([ids] + out, dim=1)[0].numpy()
    return generate
