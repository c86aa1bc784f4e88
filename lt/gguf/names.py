"""Where each lt leaf lives in a GGUF file: tensor names, row layout, and llama's q/k permutation.

Shapes: D hidden, H heads, Hkv kv heads, d head size, F feed-forward, V vocab, T context.

Names go through lt's Hugging Face maps (``lt.hf.gpt2`` / ``lt.hf.llama``: an lt path to the
tensors ``save_pretrained`` writes), then :data:`GGUF_NAMES` turns a Hugging Face name into
llama.cpp's (as its ``convert_hf_to_gguf.py`` names them)::

    lt                      Hugging Face (llama | gpt2)                 GGUF
    wte.w (V, D)            embed_tokens | wte                          token_embd.weight (V, D)
    wpe.w (T, D)            - | wpe                                     position_embd.weight (T, D)
    blocks.i.ln1            layers.i.input_layernorm | h.i.ln_1         blk.i.attn_norm
    blocks.i.attn.qkv       self_attn.{q,k,v}_proj | attn.c_attn        blk.i.attn_{q,k,v} | blk.i.attn_qkv
    blocks.i.attn.proj      self_attn.o_proj | attn.c_proj              blk.i.attn_output
    blocks.i.attn.q_norm    self_attn.q_norm (qwen3; k_norm likewise)    blk.i.attn_q_norm (d,)
    blocks.i.ln2            post_attention_layernorm | ln_2             blk.i.ffn_norm
    blocks.i.ffn.gate       mlp.gate_proj                               blk.i.ffn_gate
    blocks.i.ffn.{up, fc}   mlp.up_proj | mlp.c_fc                      blk.i.ffn_up
    blocks.i.ffn.{down, proj} mlp.down_proj | mlp.c_proj                blk.i.ffn_down
    ln_f                    norm | ln_f                                 output_norm
    head.w (D, V)           lm_head                                     output.weight (V, D)

Layout: a GGUF matrix is ggml's, rows of its reduction axis: a Linear weight (in, out) is
stored (out, in), its transpose (``rows`` below), and a table (V, D) as it is. A joined leaf
(q | k | v columns) is split into its parts' rows. llama.cpp's ``llama`` architecture rotates
pairs of adjacent features, Hugging Face (and lt) the two halves of each head, so the rows of
q and k (weight and bias) are permuted within each head: :func:`to_pairs` / :func:`to_halves`.
Qwen2's and Qwen3's architectures rotate halves, as lt does: no permutation.
"""

from __future__ import annotations

import re
from typing import NamedTuple

import numpy as np

from .. import quant, tree
from ..hf import gpt2 as hf_gpt2
from ..hf import llama as hf_llama
from ..nn.gpt import GPT

__all__ = [
    "LINEAR",
    "ARCHS",
    "Part",
    "Placement",
    "architecture",
    "placements",
    "to_rows",
    "from_rows",
    "to_pairs",
    "to_halves",
]

LINEAR = ("weight", "head")  # roles of Linear weights (in, out): GGUF stores their transpose
ARCHS = ("llama", "qwen2", "qwen3", "gpt2")  # llama.cpp architectures lt writes and reads (mistral is written as llama)
_BLOCK = r"(?:layers|h)\.(\d+)\."
GGUF_NAMES: tuple[tuple[str, str], ...] = (  # Hugging Face name (without its prefix) -> GGUF name
    (r"(?:embed_tokens|wte)\.weight", "token_embd.weight"),
    (r"wpe\.weight", "position_embd.weight"),
    (r"(?:norm|ln_f)\.(weight|bias)", r"output_norm.\1"),
    (r"lm_head\.weight", "output.weight"),
    (_BLOCK + r"(?:input_layernorm|ln_1)\.(weight|bias)", r"blk.\1.attn_norm.\2"),
    (_BLOCK + r"self_attn\.([qkv])_proj\.(weight|bias)", r"blk.\1.attn_\2.\3"),
    (_BLOCK + r"attn\.c_attn\.(weight|bias)", r"blk.\1.attn_qkv.\2"),
    (_BLOCK + r"self_attn\.([qk])_norm\.weight", r"blk.\1.attn_\2_norm.weight"),
    (_BLOCK + r"(?:self_attn\.o_proj|attn\.c_proj)\.(weight|bias)", r"blk.\1.attn_output.\2"),
    (_BLOCK + r"(?:post_attention_layernorm|ln_2)\.(weight|bias)", r"blk.\1.ffn_norm.\2"),
    (_BLOCK + r"mlp\.gate_proj\.weight", r"blk.\1.ffn_gate.weight"),
    (_BLOCK + r"mlp\.(?:up_proj|c_fc)\.(weight|bias)", r"blk.\1.ffn_up.\2"),
    (_BLOCK + r"mlp\.(?:down_proj|c_proj)\.(weight|bias)", r"blk.\1.ffn_down.\2"),
)


class Part(NamedTuple):
    """One GGUF tensor of a leaf: its ``name``, the ``width`` of rows it holds, and whether its
    rows are permuted to llama.cpp's rotary pairs (``heads``: the heads it holds, else 0)."""

    name: str
    width: int
    heads: int


class Placement(NamedTuple):
    """Where one lt leaf lives: ``path``, its declared ``role`` and ``shape``, its ``parts`` in
    order, and ``axis``, lt.quant's reduction axis for it (None: it stays float)."""

    path: str
    role: str
    shape: tuple[int, ...]
    parts: tuple[Part, ...]
    axis: int | None


def gguf_name(hf_name: str) -> str:
    """The GGUF name of a Hugging Face tensor name (``model.`` / ``transformer.`` prefix optional)."""
    name = hf_name.removeprefix("model.").removeprefix("transformer.")
    for pattern, replacement in GGUF_NAMES:
        if re.fullmatch(pattern, name):
            return re.sub(pattern, replacement, name)
    raise ValueError(f"{hf_name} has no GGUF name")


def architecture(model: GPT) -> str:
    """The llama.cpp architecture that computes what ``model`` does: ``gpt2`` (learned positions),
    ``qwen2`` (biased q, k, v only), ``qwen3`` (q/k norms, no biases) or ``llama``; a ValueError
    naming the field none can hold."""
    if not isinstance(model, GPT):
        raise TypeError(f"GGUF export needs an lt.GPT, got {type(model).__name__}")
    if model.positional != "rope":
        hf_gpt2.config_from_gpt(model)  # refuses, naming the field, what GPT-2 cannot express
        if model.activation != "gelu":
            raise ValueError(f"GPT.activation={model.activation!r}: llama.cpp's gpt2 computes GELU (activation='gelu')")
        return "gpt2"
    family = hf_llama.family(model)
    if family == "qwen3" and model.bias:
        raise ValueError(
            "GPT.bias=True with qk_norm=True cannot be written as GGUF: llama.cpp's qwen3 has no "
            "attention biases (export it with bias=False, or to Hugging Face with lt.hf.to_hf)"
        )
    return family if family in ("qwen2", "qwen3") else "llama"


def placements(model: GPT, arch: str) -> list[Placement]:
    """Every leaf of ``model``'s params with its GGUF tensors (see the module's table), in the
    params' order."""
    fam = hf_gpt2 if arch == "gpt2" else hf_llama
    source = fam.sources(model)
    out = []
    for path, decl in tree.items(model.spec()):
        src = source(path)
        parts = []
        for hf_name, shape in src.tensors:
            name = gguf_name(hf_name)
            width = shape[0] if len(src.tensors) > 1 else decl.shape[-1]
            rotated = arch == "llama" and re.search(r"attn_[qk]\.", name) is not None
            heads = width // model.head_dim if rotated else 0
            parts.append(Part(name, width, heads))
        axis = 0 if decl.role == "head" else quant.plan(decl)  # llama.cpp quantizes an untied head too
        out.append(Placement(path, decl.role, tuple(decl.shape), tuple(parts), axis))
    return out


def _pairs_order(rows: int, heads: int) -> np.ndarray:
    """The row order that takes a head's halves [x0..x(d/2-1) | y0..y(d/2-1)] to pairs (x0 y0 x1 y1 ...)."""
    return np.arange(rows).reshape(heads, 2, rows // heads // 2).swapaxes(1, 2).reshape(-1)


def _take_rows(x, order: np.ndarray):
    if quant.is_quantized(x):
        return quant.QuantizedArray(x.codes[order], x.scales[order], **x.scheme, shape=x.shape)
    return x[order]


def to_pairs(rows, heads: int):
    """q or k rows (heads * d, ...) in Hugging Face's rotate-half order, in llama.cpp's pair order."""
    n = rows.shape[0] if not quant.is_quantized(rows) else rows.codes.shape[0]
    return _take_rows(rows, _pairs_order(n, heads))


def to_halves(rows, heads: int):
    """:func:`to_pairs`' inverse: llama.cpp's pair order back to rotate-half order."""
    n = rows.shape[0] if not quant.is_quantized(rows) else rows.codes.shape[0]
    return _take_rows(rows, np.argsort(_pairs_order(n, heads)))


def to_rows(leaf, place: Placement) -> list:
    """The GGUF tensors of one leaf, in ``place.parts``' order: float arrays in ggml's layout, or
    quantized leaves whose stored rows are those tensors' rows (sliced, never dequantized)."""
    if quant.is_quantized(leaf) and leaf.axis != (0 if place.role in LINEAR else 1):
        leaf = quant.dequantize_array(leaf)  # grouped across GGUF's rows: only the float matrix fits
    if not quant.is_quantized(leaf):
        leaf = np.asarray(leaf)
        rows = leaf.T if place.role in LINEAR else leaf
    else:
        rows = leaf
    out, start = [], 0
    for part in place.parts:
        end = start + part.width
        piece = rows if len(place.parts) == 1 else _slice_rows(rows, start, end)
        out.append(to_pairs(piece, part.heads) if part.heads else piece)
        start = end
    return out


def _slice_rows(rows, a: int, b: int):
    if quant.is_quantized(rows):
        return rows[:, a:b] if rows.axis == 0 else rows[a:b]
    return rows[a:b]


def from_rows(pieces: list, place: Placement):
    """:func:`to_rows`' inverse: one leaf from its GGUF tensors (all float, or all quantized leaves
    of one scheme whose stored rows are the tensors' rows), q and k rows put back in halves."""
    pieces = [to_halves(p, part.heads) if part.heads else p for p, part in zip(pieces, place.parts)]
    if not quant.is_quantized(pieces[0]):
        rows = pieces[0] if len(pieces) == 1 else np.concatenate(pieces, axis=0)
        return tree.seal(np.ascontiguousarray(rows.T if place.role in LINEAR else rows))
    if len(pieces) == 1:
        return pieces[0]
    first = pieces[0]
    codes = np.concatenate([p.codes for p in pieces], axis=0)
    scales = np.concatenate([p.scales for p in pieces], axis=0)
    signed = any(p.signed_scales for p in pieces)
    return quant.QuantizedArray(
        codes, scales, bits=first.bits, group_size=first.group_size, axis=first.axis, shape=place.shape,
        copy=False, signed_scales=signed,
    )  # fmt: skip
