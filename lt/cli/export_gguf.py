"""``lt export --gguf FILE``: a run (or a Hugging Face model) as one GGUF file for llama.cpp and Ollama.

The file replaces only a GGUF file lt wrote (one holding ``lt.version``), or anything with
``--force``, and is never one of the run's own files. The model, tokenizer and weights are
checked before the first byte is written, and the file is written atomically
(:func:`lt.gguf.save`). Notes (an F16 fallback, a dequantized leaf) are printed after it.
"""

from __future__ import annotations

import os
import pathlib
import warnings

from .. import runs
from ..files import check_overwrite
from .common import UsageError, format_bytes, refuse_run_file

__all__ = ["export_gguf"]


def _source(args):
    """``(model, params, tokenizer)`` of ``--run`` or ``--hf``."""
    if args.run is not None:
        _, model, params, tokenizer = runs.load_run(args.run)
        return model, params, tokenizer
    from .. import hf

    path = hf.resolve(args.hf)
    (model, params), tokenizer = hf.from_hf(path), hf.load_tokenizer(path)
    return model, params, tokenizer


def export_gguf(args) -> int:
    from .. import gguf
    from ..gguf.names import architecture

    out = pathlib.Path(args.gguf)
    if args.run is not None:
        refuse_run_file(runs.RunFiles(args.run), out)
    check_overwrite(out, gguf.written_by_lt, force=args.force, ours="a GGUF file lt wrote")
    model, params, tokenizer = _source(args)
    kind = args.type or "f32"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", gguf.GGUFWarning)
        try:
            gguf.save(out, model, params, tokenizer=tokenizer, type=kind, name=os.path.basename(args.run or args.hf))
        except ImportError as e:
            raise UsageError(str(e)) from None
    size = out.stat().st_size
    print(
        f"{out}: GGUF v3, {architecture(model)} ({kind}), {format_bytes(size)}, "
        f"{8 * size / model.num_params():.2f} bits per parameter; run it with llama.cpp "
        f"(llama-cli -m {out}) or Ollama (a Modelfile: FROM {out})"
    )
    for w in caught:
        print(f"note: {w.message}")
    return 0
