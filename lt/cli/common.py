"""What the ``lt`` subcommands share: the parser and the usage error (the recipes are in ``recipes``)."""

from __future__ import annotations

import argparse
import os

from .._version import __version__
from ..nn import PRESETS
from .recipes import RECIPES, TRAIN_DEFAULTS

__all__ = ["UsageError", "build_parser", "refuse_run_file", "format_bytes"]


def format_bytes(n: float, sep: str = " ") -> str:
    """``n`` bytes (``n >= 0``) in binary units with three significant digits: ``512 B``,
    ``0.977 KiB``, ``1.50 KiB``, ``77.1 MiB``, ``1.85 GiB``. ``sep`` joins number and unit (a
    table's cells use ``""`` to stay one word)."""
    if round(n) < 1000:
        return f"{n:.0f}{sep}B"
    value = float(n)
    for unit in ("KiB", "MiB", "GiB", "TiB", "PiB"):
        value /= 1024
        for decimals in (3, 2, 1, 0):  # 0.977, 1.23, 12.3, 123: the first that rounds below the next power
            text = f"{value:.{decimals}f}"
            if float(text) < 10 ** (3 - decimals):
                return f"{text}{sep}{unit}"
    return f"{value:,.0f}{sep}PiB"


class UsageError(Exception):
    """A bad command line: reported as one line, exit status 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        # `lt.cli.main` prints "lt: error: "; a subcommand's parser (prog "lt quantize") adds its name.
        command = self.prog.removeprefix("lt").strip()
        if not command and message.endswith("required: COMMAND"):  # flags, but no command: name them
            names = [n for a in self._actions if isinstance(a, argparse._SubParsersAction) for n in a.choices]
            message = f"give a command: {', '.join(names)} (lt --help says what each does)"
        raise UsageError(f"{command}: {message}" if command else message)


# A run's files a command's --out must never replace: what each is, and what replacing it would do.
_RUN_FILES = {
    "checkpoint": ("training checkpoint (its params and optimizer state)", "leave the run unable to resume"),
    "settings": ("settings (run.json)", "leave the run unreadable"),
    "tokenizer": ("tokenizer (tokenizer.json)", "leave the run unreadable"),
    "log": ("log (log.jsonl)", "lose the run's history"),
}


def refuse_run_file(files, out) -> None:
    """UsageError when ``out`` (a ``--out`` path) is one of the run's own files (``files``, an
    ``lt.runs.RunFiles``), however spelled: relative, through ``..`` or a symbolic link, a hard
    link. A command writes beside a run's files, never over them, ``--force`` or not."""
    for name, (what, loss) in _RUN_FILES.items():
        try:
            same = os.path.samefile(out, getattr(files, name))
        except OSError:  # either is missing (or unreadable): not the same file
            same = False
        if same:
            raise UsageError(f"--out {out} is the run's {what}: writing over it would {loss}; choose another --out")


def model_option(text: str) -> tuple[str, object]:
    """``FIELD=VALUE`` as ``(field, value)``: VALUE read as JSON (true, 30, "x"), else as a string."""
    import json

    import attrs

    from ..nn import GPT

    field, sep, raw = text.partition("=")
    names = [f.name for f in attrs.fields(GPT) if f.name != "parts"]
    if not sep or field not in names:
        raise argparse.ArgumentTypeError(
            f"expected FIELD=VALUE with FIELD one of lt.GPT's: {', '.join(names)}; got {text!r}"
        )
    try:
        value = json.loads(raw)
    except ValueError:
        value = raw
    return field, value


def _positive(kind):
    def parse(text):
        value = kind(text)
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
        return value

    parse.__name__ = kind.__name__  # argparse names it in its messages
    return parse


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="lt",
        description="Train GPT-style models in NumPy and sample from them.",
        epilog="lt COMMAND --help shows a command's flags and their defaults.",
    )
    p.add_argument("--version", action="version", version=f"lt {__version__}")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser, title="commands", metavar="COMMAND")

    t = sub.add_parser("train", help="train a model (default: 5 minutes of llama-mini on Shakespeare)")
    t.add_argument("--preset", choices=sorted(PRESETS), help=f"model (default {TRAIN_DEFAULTS['preset']})")
    t.add_argument("--data", metavar="FILE", help="a UTF-8 text file instead of the bundled corpus")
    t.add_argument("--tokenizer", choices=["char", "bpe"], help="byte-level BPE (default) or char")
    t.add_argument("--vocab-size", type=_positive(int), help="BPE vocabulary size (default 512)")
    t.add_argument(
        "--recipe",
        choices=sorted(RECIPES),
        help="the defaults: 'default' (5 minutes of llama-mini with QK-norm and Muon), 'adamw' (the previous "
        "default: the same with AdamW alone), 'baseline' (the one before: AdamW without QK-norm), 'finetune' "
        "(with --init-hf: AdamW, peak lr 3e-4, warmup a tenth of the run) or 'nanogpt' (2,000 steps of mini, "
        "nanoGPT's CPU recipe); flags override them",
    )
    t.add_argument(
        "--time",
        metavar="DURATION",
        help="train for this wall-clock budget (300s, 5m, 1.5h), kept within 2%%: a short warm-up sizes the "
        "step count, and a run that turns slower stops early, run.json recording the steps done "
        "(default recipe: 5m)",
    )
    t.add_argument("--steps", type=_positive(int), help="total training steps (instead of --time)")
    t.add_argument("--batch-size", type=_positive(int), help="sequences per step (default 16)")
    t.add_argument("--seq-len", type=_positive(int), help="tokens per sequence (default 128)")
    t.add_argument(
        "--lr", type=_positive(float), help="peak learning rate (default 2e-3; 3e-4 with --init-hf's finetune recipe)"
    )
    t.add_argument("--min-lr", type=float, help="final learning rate of the cosine (default 2e-4)")
    t.add_argument(
        "--warmup",
        type=int,
        help="warmup steps, fewer than the run's (default 200, at most a fifth of the run; finetune: 100, "
        "at most a tenth)",
    )
    t.add_argument(
        "--log-every",
        type=_positive(int),
        metavar="N",
        help="steps between log records (default 50, or a twentieth of a run under 1,000 steps, so that "
        "`lt plot` has 20 points)",
    )
    t.add_argument("--weight-decay", type=float, help="AdamW decay of matrices (default 0.1)")
    t.add_argument("--dropout", type=float, help="dropout rate (default 0)")
    t.add_argument("--seed", type=int, help="seed of the run's key (default 1337)")
    t.add_argument("--eval-every", type=_positive(int), help="steps between evaluations (default 500)")
    t.add_argument("--checkpoint-every", type=_positive(int), help="steps between checkpoints (default 1000)")
    t.add_argument("--out", metavar="DIR", help="run directory (default runs/<data>-<tokenizer>)")
    t.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in --out from its checkpoint (repeated flags must equal its settings; "
        "only --steps may change)",
    )
    t.add_argument("--mpi", action="store_true", help="data-parallel over MPI ranks (launch with mpiexec)")
    t.add_argument(
        "--tensor-parallel",
        type=_positive(int),
        metavar="K",
        help="split the model over groups of K MPI ranks (Megatron-style), data-parallel with sharded "
        "optimizer state (ZeRO-1) across the groups; K must divide the number of ranks",
    )
    t.add_argument(
        "--optimizer",
        choices=["adamw", "muon"],
        help="Muon for the hidden matrices (orthogonalised momentum, at --muon-lr) with AdamW at --lr for "
        "embeddings, head, norms and biases (the default recipe's), or AdamW for every weight (the other recipes')",
    )
    t.add_argument("--muon-lr", type=_positive(float), help="Muon's peak learning rate (default 0.01)")
    t.add_argument(
        "--schedule",
        choices=["cosine", "wsd"],
        help="after the warmup: a cosine down to --min-lr (default), or wsd: the peak rate, then a straight line "
        "down over the last --decay-fraction of the run",
    )
    t.add_argument(
        "--decay-fraction", type=_positive(float), help="wsd's share of the run spent decaying (default 0.2)"
    )
    t.add_argument(
        "--model-option",
        type=model_option,
        action="append",
        metavar="FIELD=VALUE",
        help="set a field of the preset's lt.GPT, repeatable, added to the recipe's (the default recipe sets "
        "qk_norm=true): qk_norm=false, activation=relu2, logit_softcap=30, zero_init_projections=true, "
        "tie_embeddings=false (lt.GPT's docstring lists them)",
    )
    t.add_argument("--sample-tokens", type=int, default=400, help="tokens sampled at the end (default 400)")
    t.add_argument(
        "--remat",
        action="store_true",
        help="recompute each block's activations in the backward pass instead of keeping them: less memory "
        "for longer contexts, about one more forward pass per step; the same numbers",
    )
    t.add_argument(
        "--ensemble",
        type=_positive(int),
        metavar="N",
        help="train N seeds at once (seed, seed+1, ...; one batched step for all; needs --steps) and report "
        "the spread of their validation losses; every member is saved under the run's members/",
    )
    t.add_argument(
        "--init-hf",
        metavar="DIR|NAME",
        help="fine-tune a Hugging Face checkpoint (gpt2, llama, qwen2, qwen3, mistral) with its tokenizer "
        "instead of training a preset from scratch: a model directory, or a hub name (gpt2, org/name) "
        "read from the local Hugging Face cache, downloaded into it the first time (needs lt[hf])",
    )
    t.add_argument(
        "--lora",
        type=_positive(int),
        metavar="RANK",
        help="with --init-hf: train LoRA adapters of this rank instead of every weight; the run holds the "
        "adapters only (defaults then: --steps 300, --lr 1e-3, --weight-decay 0)",
    )
    t.add_argument("--lora-alpha", type=_positive(float), metavar="A", help="LoRA's alpha (default 2 x RANK)")
    t.add_argument(
        "--lora-targets",
        metavar="LIST",
        help="matrices to adapt, comma-separated: attn.q, attn.k, attn.v, attn.qkv, attn.proj, ffn, ffn.NAME, "
        "PEFT's names (q_proj, c_attn, ...), attention or all-linear (default attn.q,attn.v)",
    )
    t.add_argument("--lora-dropout", type=float, metavar="P", help="dropout on the adapters' input (default 0)")
    t.add_argument("--quantize-base", choices=["int8", "int4"], help="with --lora: quantize the frozen base (QLoRA)")

    g = sub.add_parser("generate", help="continue a prompt with a trained run or a Hugging Face model")
    g.add_argument("--run", metavar="DIR", help="a run directory (lt train --out)")
    g.add_argument(
        "--hf",
        metavar="DIR|NAME",
        help="a Hugging Face model directory (gpt2, llama, qwen2, qwen3, mistral), "
        "or a hub name such as gpt2 (downloaded once into the hub cache; needs lt[hf])",
    )
    g.add_argument(
        "--gguf",
        metavar="FILE",
        help="a GGUF file (llama.cpp's gpt2, llama, qwen2, qwen3; F32/F16/BF16, Q8_0 and Q4_0 load as they are, "
        "other types dequantized with lt[gguf]) whose tokenizer lt runs (lt export --gguf writes one)",
    )
    g.add_argument("--prompt", default="\n", help="text to continue (default: a newline)")
    g.add_argument(
        "--max-new-tokens",
        type=int,
        default=300,
        metavar="N",
        help="tokens to generate (default %(default)s); past the model's context (max_seq_len) the window "
        "slides: once the context is full, its last half is kept as a new prompt (lt.generate.stream_window)",
    )
    g.add_argument(
        "--temperature", type=float, default=0.8, help="divides the logits; 0 is greedy (default %(default)s)"
    )
    g.add_argument("--top-k", type=int, metavar="K", help="sample from the K likeliest tokens only (default: all)")
    g.add_argument(
        "--top-p",
        type=float,
        metavar="P",
        help="sample from the fewest likeliest tokens whose probabilities reach P (default: all)",
    )
    g.add_argument("--seed", type=int, default=0, help="seed of the sampling key (default %(default)s)")
    g.add_argument(
        "--beams",
        type=_positive(int),
        metavar="N",
        help="beam search with N beams instead of sampling: deterministic, so --temperature, --top-k, "
        "--top-p and --seed are ignored, and --max-new-tokens is cut to the context the prompt leaves",
    )
    g.add_argument("--quantize", choices=["int8", "int4"], help="quantize the weights first (lt.quantize defaults)")
    g.add_argument(
        "--checkpoint",
        metavar="FILE",
        help="generate from this checkpoint (e.g. one `lt quantize` wrote) instead of the run's own",
    )

    q = sub.add_parser("quantize", help="write an int8 or int4 checkpoint of a run")
    q.add_argument("--run", required=True, metavar="DIR")
    q.add_argument("--bits", type=int, choices=[8, 4], default=8, help="8 (default) or 4")
    q.add_argument(
        "--group-size", type=_positive(int), help="weights per scale (default: int8 one per output channel, int4 32)"
    )
    q.add_argument("--out", metavar="FILE", help="default DIR/checkpoint-int8.safetensors (or -int4)")
    q.add_argument(
        "--force", action="store_true", help="replace an existing --out that is not a quantized checkpoint lt wrote"
    )

    e = sub.add_parser("eval", help="loss and perplexity of a run on held-out text")
    e.add_argument("--run", required=True, metavar="DIR")
    e.add_argument("--data", metavar="FILE", help="a text file (default: the run's validation split)")
    e.add_argument(
        "--max-batches",
        type=_positive(int),
        default=50,
        help="batches of the text to measure the run's last checkpoint on (default %(default)s); "
        "lt info --run shows instead the best loss logged during training, each over run.json's eval_batches",
    )

    i = sub.add_parser("info", help="presets with parameter counts and memory, or a summary of a run")
    i.add_argument(
        "--run",
        metavar="DIR",
        help="summarise this run: model, steps, tokens, time, and the best validation loss: the lowest "
        "eval_loss in log.jsonl, each over run.json's eval_batches batches (lt eval measures the last checkpoint)",
    )

    pl = sub.add_parser("plot", help="draw a run's loss, learning rate and tokens/s curves to a PNG")
    pl.add_argument(
        "--run",
        required=True,
        metavar="DIR",
        action="append",
        help="a run directory; repeat to overlay runs (with --out)",
    )
    pl.add_argument("--out", metavar="FILE", help="default DIR/curves.png")
    pl.add_argument("--force", action="store_true", help="replace an existing --out that is not a plot lt wrote")

    from .export_command import add_export_parser  # at call time: it imports this module

    add_export_parser(sub)

    from .chat_command import add_chat_parser  # at call time: they import this module
    from .serve_command import add_serve_parser

    add_chat_parser(sub)
    add_serve_parser(sub)
    return p
