"""What the ``lt`` subcommands share: the parser, the defaults of ``lt train``, the usage error."""

from __future__ import annotations

import argparse
import os

from ..nn import PRESETS

__all__ = ["TRAIN_DEFAULTS", "RECIPES", "UsageError", "build_parser", "recipe_defaults", "refuse_run_file"]


# nanoGPT's CPU recipe for character-level Shakespeare: 2,000 steps, about two minutes on 2 cores.
NANOGPT = dict(
    preset="mini",
    data="corpus:shakespeare",
    tokenizer="char",
    vocab_size=512,
    seq_len=64,
    batch_size=12,
    steps=2000,
    time=None,
    lr=1e-3,
    min_lr=1e-4,
    warmup=100,
    weight_decay=0.1,
    grad_clip=1.0,
    beta2=0.99,
    dropout=0.0,
    seed=1337,
    eval_every=250,
    eval_batches=20,
    checkpoint_every=500,
)
# `lt train`'s recipe: the winner of `python benchmarks/sweep_recipe.py` for five minutes on 2
# cores (an Intel Xeon): llama-mini, the Llama-shaped model of mini's size, on byte-level BPE
# tokens, 16 x 128 a step: 2.126 bits per character against nanoGPT's recipe's 2.445 (its
# validation loss 1.695) in the same five minutes.
DEFAULT = dict(
    NANOGPT,
    preset="llama-mini",
    tokenizer="bpe",
    vocab_size=512,
    steps=None,
    time="5m",
    seq_len=128,
    batch_size=16,
    lr=2e-3,
    min_lr=2e-4,
    warmup=200,
    eval_every=500,
    checkpoint_every=1000,
)
RECIPES = {"default": DEFAULT, "nanogpt": NANOGPT}
TRAIN_DEFAULTS = DEFAULT


def recipe_defaults(args) -> dict:
    """The defaults of ``--recipe`` (``default`` unless given); ``--steps`` replaces its time
    budget and ``--time`` its step count."""
    v = dict(RECIPES[getattr(args, "recipe", None) or "default"])
    if getattr(args, "steps", None) is not None:
        v["time"] = None
    if getattr(args, "time", None) is not None:
        v["steps"] = None
    return v


class UsageError(Exception):
    """A bad command line: reported as one line, exit status 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        # `lt.cli.main` prints "lt: error: "; a subcommand's parser (prog "lt quantize") adds its name.
        command = self.prog.removeprefix("lt").strip()
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


def _positive(kind):
    def parse(text):
        value = kind(text)
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
        return value

    parse.__name__ = kind.__name__  # argparse names it in its messages
    return parse


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="lt", description="Train GPT-style models in NumPy and sample from them.")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    t = sub.add_parser(
        "train", help="train a model (default: five minutes of llama-mini on byte-level BPE of Shakespeare)"
    )
    t.add_argument("--preset", choices=sorted(PRESETS), help=f"model (default {TRAIN_DEFAULTS['preset']})")
    t.add_argument("--data", metavar="FILE", help="a UTF-8 text file instead of the bundled corpus")
    t.add_argument("--tokenizer", choices=["char", "bpe"], help="byte-level BPE (default) or char")
    t.add_argument("--vocab-size", type=_positive(int), help="BPE vocabulary size (default 512)")
    t.add_argument(
        "--recipe",
        choices=sorted(RECIPES),
        help="the defaults: 'default' (5 minutes of llama-mini) or 'nanogpt' (2,000 steps of mini, "
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
    t.add_argument("--lr", type=_positive(float), help="peak learning rate (default 2e-3)")
    t.add_argument("--min-lr", type=float, help="final learning rate of the cosine (default 2e-4)")
    t.add_argument("--warmup", type=int, help="warmup steps (default 200)")
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
    t.add_argument("--sample-tokens", type=int, default=400, help="tokens sampled at the end (default 400)")
    t.add_argument(
        "--init-hf",
        metavar="DIR",
        help="fine-tune a Hugging Face checkpoint (gpt2, llama, qwen2, mistral) with its tokenizer "
        "instead of training a preset from scratch",
    )

    g = sub.add_parser("generate", help="continue a prompt with a trained run or a Hugging Face model")
    g.add_argument("--run", metavar="DIR", help="a run directory (lt train --out)")
    g.add_argument(
        "--hf",
        metavar="DIR|NAME",
        help="a Hugging Face model directory (gpt2, llama, qwen2, mistral), "
        "or a hub name such as gpt2 (downloaded once into the hub cache; needs lt[hf])",
    )
    g.add_argument("--prompt", default="\n", help="text to continue (default: a newline)")
    g.add_argument("--max-new-tokens", type=int, default=300)
    g.add_argument("--temperature", type=float, default=0.8, help="0 is greedy")
    g.add_argument("--top-k", type=int)
    g.add_argument("--top-p", type=float)
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--beams", type=_positive(int), help="beam search with this many beams instead of sampling")
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
    e.add_argument("--max-batches", type=_positive(int), default=50)

    i = sub.add_parser("info", help="presets with parameter counts and memory, or a summary of a run")
    i.add_argument("--run", metavar="DIR", help="summarise this run: model, steps, best validation loss, tokens, time")

    pl = sub.add_parser("plot", help="draw a run's loss, learning rate and tokens/s curves to a PNG")
    pl.add_argument("--run", required=True, metavar="DIR")
    pl.add_argument("--out", metavar="FILE", help="default DIR/curves.png")
    pl.add_argument("--force", action="store_true", help="replace an existing --out that is not a plot lt wrote")
    return p
