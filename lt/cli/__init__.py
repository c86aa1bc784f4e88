"""The ``lt`` command: train, generate, eval, info, plot, quantize.

    lt                            the commands, one line each (as lt --help); lt --version
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

Bad arguments and missing files end with one ``lt: error: ...`` line and exit status 2. A
closed pipe (``lt info | head -2``) ends the command quietly with status 141, as SIGPIPE ends a
Unix tool.
``train``, ``generate`` and ``eval`` call :func:`lt.tune_malloc` (glibc keeps a step's freed
pages for the next); ``LT_TUNE_MALLOC=0`` leaves the allocator alone.
"""

from __future__ import annotations

import contextlib
import os
import sys

from .chat_command import cmd_chat
from .common import UsageError, build_parser
from .export_command import cmd_export
from .inference import cmd_eval, cmd_generate, cmd_info, cmd_quantize
from .plot import cmd_plot
from .recipes import TRAIN_DEFAULTS
from .serve_command import cmd_serve
from .train_command import cmd_train

__all__ = ["main", "build_parser", "TRAIN_DEFAULTS", "UsageError", "COMMANDS"]

COMMANDS = {
    "train": cmd_train,
    "generate": cmd_generate,
    "eval": cmd_eval,
    "info": cmd_info,
    "quantize": cmd_quantize,
    "plot": cmd_plot,
    "export": cmd_export,
    "chat": cmd_chat,
    "serve": cmd_serve,
}


SIGPIPE_STATUS = 141  # 128 + SIGPIPE: what a shell reports for a tool a closed pipe ended


def main(argv=None) -> int:
    """Run the ``lt`` command; returns the exit status."""
    try:
        try:
            status = _run(sys.argv[1:] if argv is None else argv)
        except SystemExit:  # --help and --version print, then exit
            sys.stdout.flush()
            raise
        sys.stdout.flush()  # a closed pipe shows here, not as a traceback at the interpreter's exit
        return status
    except BrokenPipeError:  # the reader went away (lt info | head): stop quietly, as Unix tools do
        _discard_stdout()
        return SIGPIPE_STATUS


def _discard_stdout() -> None:
    """Point stdout at the null device, so the interpreter's last flush of what is still buffered
    finds no closed pipe to complain about."""
    with contextlib.suppress(OSError, ValueError):  # a stdout without a file descriptor: nothing to redirect
        stdout = sys.stdout.fileno()
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, stdout)
        os.close(devnull)


def _run(argv) -> int:
    from ..checkpoint import CheckpointError

    parser = build_parser()
    if not argv:  # lt alone: what it can do, not an error
        print(parser.format_help(), end="")
        return 0
    try:
        args = parser.parse_args(argv)
        return COMMANDS[args.command](args)
    except UsageError as e:
        print(f"lt: error: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        raise  # main's: not an error of the command
    except (ValueError, OSError, RuntimeError, KeyError, CheckpointError, FloatingPointError, ImportError) as e:
        message = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"lt: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("lt: interrupted", file=sys.stderr)
        return 130
