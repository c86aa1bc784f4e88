"""``lt export``: a run (or a Hugging Face model) in a format other tools read.

    lt export --run DIR --gguf OUT.gguf [--type f32|f16|q8_0|q4_0]   llama.cpp, Ollama, LM Studio
    lt export --hf DIR --gguf OUT.gguf                               the same from a Hugging Face model
    lt export --run DIR --peft OUT                                   a LoRA run's adapters, in PEFT's format
    lt export --run DIR --merged OUT                                 a LoRA run's base with its adapters folded in

Each format's writer lives beside this file (``export_gguf``, ``export_lora``); this module
only parses the command line and picks the writer.
"""

from __future__ import annotations

from .common import UsageError

__all__ = ["add_export_parser", "cmd_export"]

GGUF_TYPES = ("f32", "f16", "q8_0", "q4_0")


def add_export_parser(sub) -> None:
    """The ``export`` subcommand's flags, on ``sub`` (``build_parser``'s subparsers)."""
    x = sub.add_parser("export", help="write a run or a Hugging Face model as GGUF, PEFT adapters or a merged model")
    source = x.add_mutually_exclusive_group()
    source.add_argument("--run", metavar="DIR", help="a run directory (lt train --out)")
    source.add_argument("--hf", metavar="DIR|NAME", help="a Hugging Face model directory or hub name (--gguf only)")
    out = x.add_mutually_exclusive_group()
    out.add_argument("--gguf", metavar="FILE", help="write a GGUF v3 file (llama.cpp, Ollama; needs lt[gguf])")
    out.add_argument(
        "--peft", metavar="DIR", help="write a LoRA run's adapters as adapter_config.json + adapter_model.safetensors"
    )
    out.add_argument(
        "--merged", metavar="DIR", help="write a LoRA run's base with the adapters folded in, as a Hugging Face model"
    )
    x.add_argument(
        "--type",
        choices=GGUF_TYPES,
        help="the GGUF tensors' type (default f32): f16, or llama.cpp's Q8_0 / Q4_0 blocks of 32 weights",
    )
    x.add_argument("--force", action="store_true", help="replace an existing output that lt did not write")


def cmd_export(args) -> int:
    if args.gguf is None and args.peft is None and args.merged is None:
        raise UsageError("give the output: --gguf FILE, --peft DIR or --merged DIR")
    if args.run is None and args.hf is None:
        raise UsageError("give the source: --run DIR (a run of lt train) or --hf DIR|NAME (a Hugging Face model)")
    if args.type is not None and args.gguf is None:
        raise UsageError(f"--type {args.type} is GGUF's tensor type: it goes with --gguf")
    if args.gguf is not None:
        from .export_gguf import export_gguf

        return export_gguf(args)
    if args.hf is not None:
        raise UsageError("--peft and --merged export a LoRA run: give --run DIR, not --hf")
    from .export_lora import export_lora

    return export_lora(args)
