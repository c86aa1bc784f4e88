"""``lt export --run DIR --peft OUT`` and ``--merged OUT``: a LoRA run's adapters for other tools.

``--peft``: ``adapter_config.json`` + ``adapter_model.safetensors`` (``lt.lora.save_peft``),
which ``peft.PeftModel.from_pretrained`` loads onto the base's transformers model.
``--merged``: a Hugging Face model directory (``lt.hf.to_hf``, with the run's tokenizer) of the
base with the adapters folded in, ``W + (alpha / r) A B``. A run trained over a quantized base
(``--quantize-base``) is merged into the full-precision base it recorded (PEFT's
``merge_and_unload`` on the unquantized model does the same). Either refuses an output that
holds files lt did not write unless ``--force``, and never writes into the run itself.
"""

from __future__ import annotations

import pathlib

import attrs

from .. import hf, lora, runs
from ..lora import store
from .common import UsageError

__all__ = ["export_lora"]

_MERGED_FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json")


def _outside_run(files: runs.RunFiles, out: pathlib.Path, flag: str) -> None:
    root, target = files.root.resolve(), out.resolve()
    if target == root or root in target.parents:
        raise UsageError(f"{flag} {out} is inside the run {files.root}; write the export to another directory")


def _check_merged_out(out: pathlib.Path, force: bool) -> None:
    """An existing ``--merged`` directory is replaced only when empty, or with ``--force``."""
    if out.exists() and not out.is_dir():
        raise UsageError(f"--merged {out} is not a directory; a Hugging Face model is a directory")
    if out.is_dir() and not force and any(out.iterdir()):
        held = sorted(p.name for p in out.iterdir())[:4]
        raise UsageError(
            f"--merged {out} is not empty (it holds {', '.join(held)}); lt writes a model into a new or "
            "empty directory: give --force to write over it"
        )


def export_lora(args) -> int:
    files = runs.RunFiles(args.run)
    settings = runs.load_settings(files)  # "not a run directory" first
    path = files.root / store.ADAPTERS_FILE
    if not path.is_file():
        raise UsageError(
            f"{args.run} is not a LoRA run (no {store.ADAPTERS_FILE}); --peft and --merged export the "
            "adapters of `lt train --init-hf DIR --lora RANK`"
        )
    adapted, adapters, record, step = store.load(path)
    if args.peft is not None:
        out = pathlib.Path(args.peft)
        _outside_run(files, out, "--peft")
        try:
            lora.save_peft(out, adapted, adapters, base_name=record.path, force=args.force)
        except (FileExistsError, NotADirectoryError, IsADirectoryError) as e:
            raise UsageError(str(e)) from None
        print(f"{out}: the adapters of step {step} in PEFT's format (base {record.path})")
    if args.merged is not None:
        out = pathlib.Path(args.merged)
        _outside_run(files, out, "--merged")
        _check_merged_out(out, args.force)
        model, base = store.load_base(attrs.evolve(record, quantize=None), adapted.model)
        merged = adapted.merge(base, adapters)
        tokenizer = runs.load_tokenizer(files, settings)
        hf.to_hf(attrs.evolve(model, dropout=0.0), merged, out, tokenizer=tokenizer)
        print(f"{out}: {record.path} with the adapters of step {step} folded in, as a Hugging Face model")
    return 0
