"""The ``lt`` command: train, generate, eval, info, plot, quantize.

    lt train                      llama-mini on byte-level BPE tokens of the bundled Shakespeare
                                  corpus, for five minutes (--recipe nanogpt: nanoGPT's CPU recipe)
    lt train --init-hf DIR [--data FILE]               fine-tune a Hugging Face checkpoint
    lt generate --run DIR --prompt TEXT                (or --hf DIR|NAME: a Hugging Face model)
    lt eval --run DIR [--data FILE]
    lt info                       presets with parameter counts and memory
    lt info --run DIR             a run's summary: model, steps, best validation loss, tokens, time
    lt plot --run DIR             its loss, learning rate and tokens/s curves, to DIR/curves.png
    lt quantize --run DIR --bits 8|4 [--out FILE]      an int8 / int4 checkpoint of a run
    lt generate --run DIR --quantize int8|int4         (or --checkpoint FILE, e.g. the one above)

Bad arguments and missing files end with one ``lt: error: ...`` line and exit status 2.
``train``, ``generate`` and ``eval`` call :func:`lt.tune_malloc` (glibc keeps a step's freed
pages for the next); ``LT_TUNE_MALLOC=0`` leaves the allocator alone.
"""

from __future__ import annotations

import sys

from .common import TRAIN_DEFAULTS, UsageError, build_parser
from .inference import cmd_eval, cmd_generate, cmd_info, cmd_quantize
from .plot import cmd_plot
from .train_command import cmd_train

__all__ = ["main", "build_parser", "TRAIN_DEFAULTS", "UsageError", "COMMANDS"]

COMMANDS = {
    "train": cmd_train,
    "generate": cmd_generate,
    "eval": cmd_eval,
    "info": cmd_info,
    "quantize": cmd_quantize,
    "plot": cmd_plot,
}


def main(argv=None) -> int:
    """Run the ``lt`` command; returns the exit status."""
    from ..checkpoint import CheckpointError

    try:
        args = build_parser().parse_args(argv)
        return COMMANDS[args.command](args)
    except UsageError as e:
        print(f"lt: error: {e}", file=sys.stderr)
        return 2
    except (ValueError, OSError, RuntimeError, KeyError, CheckpointError, FloatingPointError, ImportError) as e:
        message = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"lt: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("lt: interrupted", file=sys.stderr)
        return 130
