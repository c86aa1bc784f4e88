"""The ``lt`` command: train, generate, eval, info.

    lt train                      a character-level model on the bundled Shakespeare corpus
    lt generate --run DIR --prompt TEXT
    lt eval --run DIR [--data FILE]
    lt info                       presets with parameter counts and memory

Bad arguments and missing files end with one ``lt: error: ...`` line and exit status 2.
``train``, ``generate`` and ``eval`` call :func:`lt.tune_malloc` (glibc keeps a step's freed
pages for the next); ``LT_TUNE_MALLOC=0`` leaves the allocator alone.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import re
import sys
import time

import attrs
import numpy as np

from . import checkpoint, data, distributed, optim, random, runs, tokenizers
from ._allocator import tune_malloc
from .corpus import train_val_split_text
from .files import atomic_write_text, naming
from .nn import GPT, PRESETS
from .runs import Run, RunFiles, RunSettings
from .training import TrainState, evaluate, train

# nanoGPT's CPU recipe for character-level Shakespeare: a few minutes on 2 cores.
TRAIN_DEFAULTS = dict(preset="mini", data="corpus:shakespeare", tokenizer="char", vocab_size=512,
                      seq_len=64, batch_size=12, steps=2000, lr=1e-3, min_lr=1e-4, warmup=100,
                      weight_decay=0.1, grad_clip=1.0, beta2=0.99, dropout=0.0, seed=1337,
                      eval_every=250, eval_batches=20, checkpoint_every=500)


class UsageError(Exception):
    """A bad command line: reported as one line, exit status 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        raise UsageError(f"{self.prog}: {message}")


def _positive(kind):
    def parse(text):
        value = kind(text)
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
        return value
    parse.__name__ = kind.__name__                        # argparse names it in its messages
    return parse


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="lt", description="Train GPT-style models in NumPy and sample from them.")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    t = sub.add_parser("train", help="train a model (default: characters of Shakespeare)")
    t.add_argument("--preset", choices=sorted(PRESETS), help=f"model size (default {TRAIN_DEFAULTS['preset']})")
    t.add_argument("--data", metavar="FILE", help="a UTF-8 text file instead of the bundled corpus")
    t.add_argument("--tokenizer", choices=["char", "bpe"], help="char (default) or byte-level BPE")
    t.add_argument("--vocab-size", type=_positive(int), help="BPE vocabulary size (default 512)")
    t.add_argument("--steps", type=_positive(int), help="total training steps (default 2000)")
    t.add_argument("--batch-size", type=_positive(int), help="sequences per step (default 12)")
    t.add_argument("--seq-len", type=_positive(int), help="tokens per sequence (default 64)")
    t.add_argument("--lr", type=_positive(float), help="peak learning rate (default 1e-3)")
    t.add_argument("--min-lr", type=float, help="final learning rate of the cosine (default 1e-4)")
    t.add_argument("--warmup", type=int, help="warmup steps (default 100)")
    t.add_argument("--weight-decay", type=float, help="AdamW decay of matrices (default 0.1)")
    t.add_argument("--dropout", type=float, help="dropout rate (default 0)")
    t.add_argument("--seed", type=int, help="seed of the run's key (default 1337)")
    t.add_argument("--eval-every", type=_positive(int), help="steps between evaluations (default 250)")
    t.add_argument("--checkpoint-every", type=_positive(int), help="steps between checkpoints (default 500)")
    t.add_argument("--out", metavar="DIR", help="run directory (default runs/<data>-<tokenizer>)")
    t.add_argument("--resume", action="store_true",
                   help="continue the run in --out from its checkpoint (repeated flags must equal its settings; "
                        "only --steps may change)")
    t.add_argument("--mpi", action="store_true", help="data-parallel over MPI ranks (launch with mpiexec)")
    t.add_argument("--sample-tokens", type=int, default=400, help="tokens sampled at the end (default 400)")

    g = sub.add_parser("generate", help="continue a prompt with a trained run")
    g.add_argument("--run", required=True, metavar="DIR")
    g.add_argument("--prompt", default="\n", help="text to continue (default: a newline)")
    g.add_argument("--max-new-tokens", type=int, default=300)
    g.add_argument("--temperature", type=float, default=0.8, help="0 is greedy")
    g.add_argument("--top-k", type=int)
    g.add_argument("--top-p", type=float)
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--beams", type=_positive(int), help="beam search with this many beams instead of sampling")

    e = sub.add_parser("eval", help="loss and perplexity of a run on held-out text")
    e.add_argument("--run", required=True, metavar="DIR")
    e.add_argument("--data", metavar="FILE", help="a text file (default: the run's validation split)")
    e.add_argument("--max-batches", type=_positive(int), default=50)

    sub.add_parser("info", help="presets with parameter counts and memory")
    return p


# ----------------------------------------------------------------- train

_NOT_SETTINGS = {"command", "steps", "out", "resume", "mpi", "sample_tokens"}   # free to differ on --resume


def _settings(args) -> RunSettings:
    """New settings from the flags (defaults filled in), for a fresh run."""
    v = {k: (getattr(args, k, None) if getattr(args, k, None) is not None else d) for k, d in TRAIN_DEFAULTS.items()}
    context = GPT.preset(v["preset"]).max_seq_len
    if v["seq_len"] > context:       # refused before anything is allocated or written
        raise UsageError(f"--seq-len must be at most {context} (the context of preset {v['preset']}), "
                         f"got {v['seq_len']}")
    try:
        # The context is the training window: positions past it would never have been trained.
        model = GPT.preset(v["preset"], max_seq_len=v["seq_len"], dropout=v["dropout"])
        return RunSettings(model=attrs.asdict(model), data=v["data"] if args.data is None else str(args.data),
                           tokenizer=v["tokenizer"], seq_len=v["seq_len"], batch_size=v["batch_size"],
                           steps=v["steps"], lr=v["lr"], min_lr=v["min_lr"], warmup=v["warmup"],
                           weight_decay=v["weight_decay"], grad_clip=v["grad_clip"], beta2=v["beta2"],
                           seed=v["seed"], eval_every=v["eval_every"], eval_batches=v["eval_batches"],
                           checkpoint_every=v["checkpoint_every"])
    except ValueError as e:            # "RunSettings.min_lr must be ..." -> "--min-lr must be ..."
        raise UsageError(re.sub(r"RunSettings\.(\w+)", lambda m: "--" + m[1].replace("_", "-"), str(e))) from None


def _default_out(args) -> pathlib.Path:
    name = "shakespeare" if args.data is None else pathlib.Path(args.data).stem
    return pathlib.Path("runs") / f"{name}-{args.tokenizer or TRAIN_DEFAULTS['tokenizer']}"


def _saved_flag(flag: str, saved: RunSettings, tokenizer):
    """The value of ``--flag`` that the saved run was made with (what the flag's own parse gives)."""
    model = GPT(**saved.model)
    if flag == "preset":               # the preset whose layers, heads and widths the model has
        fixed = dict(vocab_size=model.vocab_size, max_seq_len=model.max_seq_len, dropout=model.dropout)
        return next((name for name in PRESETS if GPT.preset(name, **fixed) == model), "a custom model")
    if flag == "dropout":
        return model.dropout
    if flag == "vocab_size":
        return tokenizer.vocab_size
    return getattr(saved, flag)


def _same_data(given: str, saved: str) -> bool:
    if given == saved:
        return True
    a, b = pathlib.Path(given), pathlib.Path(saved)
    return a.is_file() and b.is_file() and a.samefile(b)


def _check_resume_flags(args, saved: RunSettings, tokenizer) -> RunSettings:
    """The saved settings, with ``--steps`` if given. Flags repeated from the command that made
    the run are accepted when they equal its settings; one that differs is refused, named with
    both values (a resumed run keeps its settings)."""
    given = {k: v for k, v in vars(args).items() if v is not None and k not in _NOT_SETTINGS}
    if saved.tokenizer == "char":
        given.pop("vocab_size", None)            # a char run ignores --vocab-size, as when it was made
    changed = []
    for flag, value in sorted(given.items()):
        was = _saved_flag(flag, saved, tokenizer)
        same = _same_data(str(value), was) if flag == "data" else value == was
        if not same:
            changed.append(f"--{flag.replace('_', '-')} {value} (the run has {was})")
    if changed:
        raise UsageError(f"lt train --resume keeps the run's saved settings; {'; '.join(changed)}: "
                         "drop the flag or start a new run with another --out (only --steps may change)")
    return attrs.evolve(saved, steps=args.steps or saved.steps)


def _prepare(args) -> tuple[Run, optim.GradientTransformation, runs.RunLock]:
    """The run to train, new or resumed, its optimizer, and the lock held on its directory while
    it trains: read and written by rank 0 alone. A new run's directory is made only once its
    settings, data and tokenizer are ready."""
    files = RunFiles(args.out or _default_out(args))
    lock = None
    try:
        if args.resume:
            lock = runs.open_run(files, new=False)
            saved = runs.load_settings(files)
            tokenizer = tokenizers.load(files.tokenizer)
            settings = _check_resume_flags(args, saved, tokenizer)
        else:
            if files.checkpoint.exists():          # early, before the data is read (checked again locked)
                raise UsageError(f"{files.root} already holds a run; continue it with --resume or choose another --out")
            settings = _settings(args)
        text = runs.read_training_text(settings.data)
        if args.resume:
            runs.check_same_data(settings, text)
        else:
            settings = attrs.evolve(settings, **runs.data_fingerprint(text))
        train_text, val_text = train_val_split_text(text, settings.val_fraction)
        if not args.resume:
            tokenizer = runs.fit_tokenizer(settings.tokenizer, text if settings.tokenizer == "char" else train_text,
                                           args.vocab_size or TRAIN_DEFAULTS["vocab_size"])
        model = GPT(**{**settings.model, "vocab_size": tokenizer.vocab_size})
        settings = attrs.evolve(settings, model=attrs.asdict(model))
        optimizer = runs.make_optimizer(settings)
        state = TrainState.create(model.init(random.fold_in(random.key(settings.seed), "init")), optimizer)
        if args.resume:
            ck = checkpoint.load(files.checkpoint, model, state.opt_state)
            state = TrainState(ck.params, ck.opt_state, ck.step)
            if settings.steps < state.step:
                raise UsageError(f"--steps {settings.steps} is before the run's step {state.step}; "
                                 f"give --steps {state.step} or more")
            if settings != saved:                  # a new --steps: run.json says where the run goes
                runs.save_settings(files, settings)
        else:
            lock = runs.open_run(files, new=True)
            if lock.restarted:
                print(f"lt: {files.root} held a run that stopped before its first checkpoint; starting it over",
                      file=sys.stderr, flush=True)
            tokenizer.save(files.tokenizer)
            runs.save_settings(files, settings)
    except BaseException:
        if lock is not None:
            lock.release()
        raise
    run = Run(files, settings, tokenizer, runs.encode(tokenizer, train_text), runs.encode(tokenizer, val_text), state)
    return run, optimizer, lock


def _shared_run(args, world: distributed.World) -> tuple[Run, optim.GradientTransformation, runs.RunLock | None]:
    """The run and its optimizer on every rank, and rank 0's lock on the run directory: rank 0
    prepares the run (reading and writing the files), and only with more than one rank is it
    broadcast, as it is (arrays buffer by buffer, the rest pickled); each rank builds the optimizer once. (An error on rank 0 ends the job:
    under ``python -m mpi4py`` its exit status aborts the other ranks.)"""
    run, optimizer, lock = _prepare(args) if world.is_root else (None, None, None)
    if world.size > 1:
        run = distributed.broadcast(world.comm, run)
        optimizer = optimizer or runs.make_optimizer(run.settings)
    return run, optimizer, lock


def cmd_train(args) -> int:
    tune_malloc()
    world = _world(args.mpi)
    run, optimizer, lock = _shared_run(args, world)
    try:
        return _train(args, world, run, optimizer)
    finally:
        if lock is not None:
            lock.release()


def _train(args, world, run, optimizer) -> int:
    files, settings, state = run.files, run.settings, run.state
    model = GPT(**settings.model)
    if world.is_root:
        ranks = f" on {world.size} MPI ranks" if world.size > 1 else ""
        print(f"{files.root}: {model.num_params():,} parameters, {run.tokenizer.vocab_size} tokens in the "
              f"vocabulary, {len(run.train_ids):,} training tokens; steps {state.step} -> {settings.steps}{ranks}",
              flush=True)
    log_file = files.open_log() if world.is_root else None

    def on_log(record):
        with naming(files.log):
            log_file.write(json.dumps(record) + "\n")
            log_file.flush()

    start = time.perf_counter()
    try:
        state, _ = train(model, optimizer, state, run.train_ids, steps=settings.steps,
                         batch_size=settings.batch_size, seq_len=settings.seq_len, rng=random.key(settings.seed),
                         val_tokens=run.val_ids if len(run.val_ids) else None, eval_every=settings.eval_every,
                         eval_batches=settings.eval_batches, log_every=50, checkpoint_path=files.checkpoint,
                         checkpoint_every=settings.checkpoint_every, on_log=on_log, comm=world.comm)
    finally:
        if log_file:
            log_file.close()
    if world.is_root:
        print(f"trained to step {state.step} in {time.perf_counter() - start:.0f} s; checkpoint {files.checkpoint}")
        if args.sample_tokens > 0:
            sample = _sample(model, state.params, run.tokenizer, "\n", args.sample_tokens, 0.8, None, None,
                             random.key(0))
            atomic_write_text(files.sample, sample)
            print("--- sample ---" + sample)
    return 0


def _world(mpi_flag: bool) -> distributed.World:
    """The MPI world with ``--mpi`` or when launched under mpiexec with several ranks."""
    try:
        return distributed.world(mpi=True if mpi_flag else None)
    except ImportError as e:
        raise UsageError(str(e)) from None


# ----------------------------------------------------------------- generate / eval / info

def _sample(model, params, tokenizer, prompt, n, temperature, top_k, top_p, rng, echo=False) -> str:
    """Generate ``n`` tokens after ``prompt``, printing the text as it comes when ``echo``."""
    from . import generate
    ids = runs.encode(tokenizer, prompt)
    new, shown = [], ""
    for tok in generate.stream_window(model, params, ids, rng=rng, max_new_tokens=n, temperature=temperature,
                                      top_k=top_k, top_p=top_p):
        new.append(tok)
        if echo:
            text = tokenizer.decode(np.array(new))
            sys.stdout.write(text[len(shown):])
            sys.stdout.flush()
            shown = text
    return prompt + tokenizer.decode(np.array(new, dtype=np.int64))


def cmd_generate(args) -> int:
    tune_malloc()
    settings, model, params, tokenizer = runs.load_run(args.run)
    if not args.prompt:
        raise UsageError("--prompt must not be empty")
    if args.beams is not None:
        from . import generate
        ids = runs.encode(tokenizer, args.prompt)
        if len(ids) >= model.max_seq_len:
            raise UsageError(f"the prompt is {len(ids)} tokens; beam search needs it shorter than the model's "
                             f"context of {model.max_seq_len} tokens")
        n = min(args.max_new_tokens, model.max_seq_len - len(ids))
        result = generate.beam_search(model, params, ids, num_beams=args.beams, max_new_tokens=n)
        print(tokenizer.decode(np.asarray(result.sequences[0])))
        return 0
    sys.stdout.write(args.prompt)
    _sample(model, params, tokenizer, args.prompt, args.max_new_tokens, args.temperature, args.top_k, args.top_p,
            random.key(args.seed), echo=True)
    sys.stdout.write("\n")
    return 0


def cmd_eval(args) -> int:
    tune_malloc()
    settings, model, params, tokenizer = runs.load_run(args.run)
    text = runs.read_training_text(str(args.data)) if args.data else \
        train_val_split_text(runs.read_training_text(settings.data), settings.val_fraction)[1]
    ids = runs.encode(tokenizer, text)
    batches = data.sequential_windows(ids, settings.batch_size, settings.seq_len, args.max_batches)
    result = evaluate(model, params, batches)
    print(f"loss {result['loss']:.4f} | perplexity {result['perplexity']:.3f} | {result['tokens']:,} tokens")
    return 0


def cmd_info(args) -> int:
    print(f"{'preset':8} {'layers':>6} {'heads':>5} {'hidden':>6} {'ffn':>5} {'vocab':>6} {'context':>7} "
          f"{'parameters':>12} {'weights':>9} {'training':>9}")
    for name in PRESETS:
        m = GPT.preset(name)
        n = m.num_params()
        print(f"{name:8} {m.num_layers:>6} {m.num_heads:>5} {m.hidden_dim:>6} {m.ffn_dim:>5} {m.vocab_size:>6} "
              f"{m.max_seq_len:>7} {n:>12,} {n * 4 / 2**20:>7.1f}MB {n * 16 / 2**20:>7.1f}MB")
    print("weights: float32 params; training: params, gradients and AdamW's two moments (activations extra)")
    return 0


COMMANDS = {"train": cmd_train, "generate": cmd_generate, "eval": cmd_eval, "info": cmd_info}


def main(argv=None) -> int:
    """Run the ``lt`` command; returns the exit status."""
    from .checkpoint import CheckpointError
    try:
        args = build_parser().parse_args(argv)
        return COMMANDS[args.command](args)
    except UsageError as e:
        print(f"lt: error: {e}", file=sys.stderr)
        return 2
    except (ValueError, OSError, RuntimeError, KeyError, CheckpointError, FloatingPointError) as e:
        message = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"lt: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("lt: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
