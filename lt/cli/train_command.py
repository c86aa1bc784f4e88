"""``lt train``: a new run from the flags, or a resumed one; rank 0 prepares it, every rank trains."""

from __future__ import annotations

import json
import pathlib
import re
import sys
import time
from typing import Any

import attrs

from .. import checkpoint, nn, optim, parallel, random, runs, tokenizers
from .._allocator import tune_malloc
from ..corpus import train_val_split_text
from ..files import atomic_write_text, naming
from ..nn import GPT
from ..runs import Run, RunFiles, RunSettings
from ..training import TrainState, train
from . import budget as _budget
from .budget import parse_duration, size_steps
from .common import UsageError
from .ensemble_run import check_ensemble_flags, cmd_train_ensemble
from .inference import sample_text
from .lora_run import check_lora_flags, cmd_train_lora
from .memory import available_bytes, train_step_bytes
from .recipes import recipe_defaults
from .resume import check_resume_flags
from .schedule import default_log_every, fit_schedule, refit, warmup_note

__all__ = ["cmd_train"]


def _settings(args, start: GPT | None = None, tokenizer_kind: str | None = None) -> RunSettings:
    """New settings from the flags (defaults filled in), for a fresh run. ``start``: the model
    a ``--init-hf`` run fine-tunes (it replaces the preset; ``tokenizer_kind`` is its tokenizer's)."""
    v: dict[str, Any] = {
        k: (getattr(args, k, None) if getattr(args, k, None) is not None else d)
        for k, d in recipe_defaults(args).items()
    }
    try:
        budget = None if v["time"] is None else parse_duration(v["time"])
    except ValueError as e:
        raise UsageError(str(e)) from None
    if start is not None:
        given = [
            f"--{f.replace('_', '-')}"
            for f in ("preset", "tokenizer", "vocab_size", "model_option")
            if getattr(args, f, None) is not None
        ]
        if given:
            raise UsageError(
                f"{', '.join(given)} does not go with --init-hf: the model and its tokenizer come from {args.init_hf}"
            )
    sized = GPT.preset(v["preset"]) if start is None else start
    # Any --seq-len, also past the preset's context (attention is blockwise, memory O(T) per
    # layer): refused, before anything is allocated or written, only when a step would not fit.
    remat = bool(getattr(args, "remat", False))
    need, have = train_step_bytes(sized, v["batch_size"], v["seq_len"], remat=remat), available_bytes()
    if have is not None and need > have:
        raise UsageError(
            f"--seq-len {v['seq_len']} needs about {need / 2**30:.1f} GiB for a training step of "
            f"preset {v['preset']} at --batch-size {v['batch_size']}, more than the "
            f"{have / 2**30:.1f} GiB available; lower --seq-len or --batch-size"
            + ("" if remat else ", or add --remat (each layer's activations recomputed)")
        )
    try:
        if start is None:
            # The context is the training window: positions past it would never have been trained.
            # the recipe's model options, then the flags' (a flag's field wins)
            options = {**dict(recipe_defaults(args)["model_option"]), **dict(args.model_option or ())}
            model = GPT.preset(v["preset"], **{"max_seq_len": v["seq_len"], "dropout": v["dropout"], **options})
        else:  # a checkpoint's context is its own (its positions were trained)
            model = attrs.evolve(start, dropout=v["dropout"])
        return RunSettings(
            model=nn.config(model),
            data=v["data"] if args.data is None else str(args.data),
            tokenizer=tokenizer_kind or v["tokenizer"],
            seq_len=v["seq_len"],
            batch_size=v["batch_size"],
            init_hf=None if start is None else str(args.init_hf),
            steps=v["steps"] or 1,
            time_budget=budget,  # sized by _prepare with a budget
            lr=v["lr"],
            min_lr=v["min_lr"],
            warmup=v["warmup"],
            weight_decay=v["weight_decay"],
            grad_clip=v["grad_clip"],
            beta2=v["beta2"],
            seed=v["seed"],
            eval_every=v["eval_every"],
            eval_batches=v["eval_batches"],
            checkpoint_every=v["checkpoint_every"],
            optimizer=v["optimizer"],
            muon_lr=v["muon_lr"],
            schedule=v["schedule"],
            decay_fraction=v["decay_fraction"],
        )
    except (ValueError, TypeError) as e:  # "RunSettings.min_lr must be ..." -> "--min-lr must be ..."
        raise UsageError(re.sub(r"RunSettings\.(\w+)", lambda m: "--" + m[1].replace("_", "-"), str(e))) from None


def _default_out(args) -> pathlib.Path:
    name = "shakespeare" if args.data is None else pathlib.Path(args.data).stem
    if args.init_hf:
        return pathlib.Path("runs") / f"{name}-{pathlib.Path(args.init_hf).resolve().name}"
    return pathlib.Path("runs") / f"{name}-{args.tokenizer or recipe_defaults(args)['tokenizer']}"


def _prepare(
    args, started: float
) -> tuple[Run, optim.GradientTransformation, runs.RunLock | None, _budget.Deadline | None]:
    """The run to train, new or resumed, its optimizer, the lock held on its directory while
    it trains, and the deadline of a new run with a ``--time`` budget: read and written by rank 0
    alone. A new run's directory is made only once its settings, data and tokenizer are ready."""
    files = RunFiles(args.out or _default_out(args))
    lock, deadline = None, None
    try:
        start = None
        if args.resume:
            lock = runs.open_run(files, new=False)
            saved = runs.load_settings(files)
            tokenizer = runs.load_tokenizer(files, saved)
            settings = check_resume_flags(args, saved, tokenizer)
        else:
            if files.checkpoint.exists():  # early, before the data is read (checked again locked)
                raise UsageError(f"{files.root} already holds a run; continue it with --resume or choose another --out")
            if args.init_hf:  # fine-tuning: the model, its weights and its tokenizer
                from .. import hf

                start, tokenizer = hf.from_hf(args.init_hf), hf.load_tokenizer(args.init_hf)
                kind = "bpe" if isinstance(tokenizer, tokenizers.BPETokenizer) else "hf"
                settings = _settings(args, start[0], kind)
            else:
                settings = _settings(args)
        text = runs.read_training_text(settings.data)
        if args.resume:
            runs.check_same_data(settings, text)
        else:
            settings = attrs.evolve(settings, **runs.data_fingerprint(text))
        train_text, val_text = train_val_split_text(text, settings.val_fraction)
        if not args.resume and start is None:
            tokenizer = runs.fit_tokenizer(
                settings.tokenizer,
                text if settings.tokenizer == "char" else train_text,
                args.vocab_size or recipe_defaults(args)["vocab_size"],
            )
        if settings.init_hf is None:  # a model from scratch has the tokenizer's vocabulary
            settings = attrs.evolve(
                settings, model=nn.config(GPT(**{**settings.model, "vocab_size": tokenizer.vocab_size}))
            )
        model = GPT(**settings.model)
        if not args.resume and settings.time_budget is None:  # --steps: the schedule is known now
            settings = fit_schedule(args, settings)
        optimizer = runs.make_optimizer(settings)
        params = model.init(random.fold_in(random.key(settings.seed), "init")) if start is None else start[1]
        state = TrainState.create(params, optimizer)
        train_ids, val_ids = runs.encode(tokenizer, train_text), runs.encode(tokenizer, val_text)
        if not args.resume and settings.time_budget is not None:  # --time: measure, then fix the count
            end = _budget.end_of(started, settings.time_budget)
            sizing = size_steps(
                model, optimizer, state, settings, train_ids, end, args.sample_tokens, evaluating=len(val_ids) > 0
            )
            deadline = _budget.Deadline(
                end, sizing, eval_every=settings.eval_every, checkpoint_every=settings.checkpoint_every
            )
            steps = sizing.steps
            settings = fit_schedule(args, attrs.evolve(settings, steps=steps))
            optimizer = runs.make_optimizer(settings)  # its schedule spans the steps
            state = TrainState.create(params, optimizer)
            print(
                f"lt: {steps:,} steps fit a {settings.time_budget:.0f} s budget (measured on this machine; "
                "fixed in run.json, fewer if the run turns slower)",
                file=sys.stderr,
                flush=True,
            )
        if args.resume:
            ck = checkpoint.load(files.checkpoint, model, state.opt_state)
            state = TrainState(ck.params, ck.opt_state, ck.step)
            if settings.steps < state.step:
                raise UsageError(
                    f"--steps {settings.steps} is before the run's step {state.step}; give --steps {state.step} or more"
                )
            if settings != saved:  # a new --steps: run.json says where the run goes
                runs.save_settings(files, settings)
        else:
            lock = runs.open_run(files, new=True)
            if lock.restarted:
                print(
                    f"lt: {files.root} held a run that stopped before its first checkpoint; starting it over",
                    file=sys.stderr,
                    flush=True,
                )
            tokenizer.save(files.tokenizer)
            runs.save_settings(files, settings)
    except BaseException:
        if lock is not None:
            lock.release()
        raise
    run = Run(files, settings, tokenizer, train_ids, val_ids, state)
    return run, optimizer, lock, deadline


def _shared_run(
    args, world: parallel.World, started: float
) -> tuple[Run, optim.GradientTransformation, runs.RunLock | None, _budget.Deadline | None]:
    """The run and its optimizer on every rank, and rank 0's lock on the run directory: rank 0
    prepares the run (reading and writing the files), and only with more than one rank is it
    broadcast, as it is (arrays buffer by buffer, the rest pickled); each rank builds the optimizer
    once. (An error on rank 0 ends the job: under ``python -m mpi4py`` its exit status aborts the
    other ranks.) The deadline of a ``--time`` budget is rank 0's alone."""
    run, optimizer, lock, deadline = _prepare(args, started) if world.is_root else (None, None, None, None)
    if world.size > 1:
        run = parallel.broadcast(world.comm, run)
        optimizer = optimizer or runs.make_optimizer(run.settings)
    assert run is not None and optimizer is not None  # rank 0 made them; the others were sent them
    return run, optimizer, lock, deadline


def _command_start() -> float:
    """When this command started, on the budget's clock: the process's start when ``lt`` is the
    program (the ``lt`` script, ``python -m lt``: the interpreter's start counts against
    ``--time``), else now (``lt.cli.main`` called from Python)."""
    argv0 = pathlib.Path(sys.argv[0]) if sys.argv and sys.argv[0] else None
    main = pathlib.Path(__file__).resolve().parents[1] / "__main__.py"
    program = argv0 is not None and (argv0.name == "lt" or argv0.resolve() == main)
    start = _budget.program_start() if program else None
    return _budget.clock() if start is None else start


def _stopper(args, world: parallel.World, run: Run, deadline: _budget.Deadline | None):
    """``stop(step)`` for :func:`lt.train` in a new run with a ``--time`` budget (else None):
    rank 0's deadline decides and, with several ranks, tells the others."""
    if args.resume or run.settings.time_budget is None:  # the same on every rank
        return None
    if world.size == 1:
        return deadline

    def stop(step: int) -> bool:
        return bool(parallel.broadcast(world.comm, deadline(step) if deadline is not None else None))

    return stop


def cmd_train(args) -> int:
    started = _command_start()  # a --time budget counts from here
    out = args.out or _default_out(args)
    check_lora_flags(args, out)
    check_ensemble_flags(args)
    if args.lora is not None:  # adapters over a frozen base: lora_run
        return cmd_train_lora(args, _settings, out)
    tune_malloc()
    world = _world(args.mpi)
    _check_tensor_parallel(args, world)  # before the run directory is made
    run, optimizer, lock, deadline = _shared_run(args, world, started)
    try:
        if args.ensemble is not None:  # several seeds at once: ensemble_run
            return cmd_train_ensemble(args, run, optimizer)
        return _train(args, world, run, optimizer, _stopper(args, world, run, deadline))
    finally:
        if lock is not None:
            lock.release()


def _train(args, world, run, optimizer, stop=None) -> int:
    files, settings, state = run.files, run.settings, run.state
    model = attrs.evolve(GPT(**settings.model), remat=bool(getattr(args, "remat", False)))
    tp = getattr(args, "tensor_parallel", None)
    if world.is_root:
        ranks = f" on {world.size} MPI ranks" if world.size > 1 else ""
        ranks += f" (tensor-parallel groups of {tp})" if tp is not None else ""
        print(
            f"{files.root}: {model.num_params():,} parameters, {run.tokenizer.vocab_size} tokens in the "
            f"vocabulary, {len(run.train_ids):,} training tokens; steps {state.step} -> {settings.steps}{ranks}"
            f"{warmup_note(args, settings)}",
            flush=True,
        )
    log_file = files.open_log() if world.is_root else None

    def on_log(record):
        with naming(files.log):
            log_file.write(json.dumps(record) + "\n")
            log_file.flush()

    strategy = parallel.DataParallel(world.comm) if tp is None else parallel.TensorParallel(world.comm, tp)

    def train_to(steps: int, optimizer, stop, jobs: bool = True):
        """Train to ``steps``; without ``jobs``, no evaluation or checkpoint at its end (a pause, not an end)."""
        return train(
            model,
            optimizer,
            state,
            run.train_ids,
            steps=steps,
            batch_size=settings.batch_size,
            seq_len=settings.seq_len,
            rng=random.key(settings.seed),
            val_tokens=run.val_ids if len(run.val_ids) and jobs else None,
            eval_every=settings.eval_every,
            eval_batches=settings.eval_batches,
            log_every=getattr(args, "log_every", None) or default_log_every(settings.steps),
            checkpoint_path=files.checkpoint if jobs else None,
            checkpoint_every=settings.checkpoint_every,
            on_log=on_log,
            strategy=strategy,
            stop=stop,
            donate=True,  # the run's state is the command's own: each step writes over the last
        )[0]

    start = time.perf_counter()
    try:
        going = True
        if isinstance(stop, _budget.Deadline):  # one process, a new --time run: it may pause to re-size
            state, settings, optimizer, stop, going = _pause(args, files, settings, optimizer, state, stop, train_to)
        if going:
            state = train_to(settings.steps, optimizer, stop)
    finally:
        if log_file:
            log_file.close()
    if world.is_root and state.step < settings.steps:  # the clock stopped it: run.json says where it ended
        runs.save_settings(files, attrs.evolve(settings, steps=state.step))
        print(
            f"lt: stopped at step {state.step:,} of {settings.steps:,} to keep the {settings.time_budget:.0f} s "
            f"budget (this machine ran slower than during the warm-up); run.json records {state.step:,} steps",
            file=sys.stderr,
            flush=True,
        )
    if world.is_root:
        print(f"trained to step {state.step} in {time.perf_counter() - start:.0f} s; checkpoint {files.checkpoint}")
        if args.sample_tokens > 0:
            sample = sample_text(
                model, state.params, run.tokenizer, "\n", args.sample_tokens, 0.8, None, None, random.key(0)
            )
            atomic_write_text(files.sample, sample)
            print("--- sample ---" + sample)
    return 0


def _pause(args, files, settings, optimizer, state, deadline: _budget.Deadline, train_to):
    """A new ``--time`` run's pause halfway through its warmup, whose rates do not depend on the
    run's length: train to it, measure this machine's own pace, and re-size the run (run.json,
    the optimizer's schedule, the deadline) so that its schedule ends with the budget. Returns
    ``(state, settings, optimizer, deadline, going)``; ``going`` is False when the clock ended
    the run before the pause. No pause where an evaluation or checkpoint would fall before it."""
    at = _budget.resize_step(settings.warmup, settings.steps)
    due_first = min(settings.eval_every or settings.steps, settings.checkpoint_every or settings.steps)
    if at is None or not state.step < at < due_first:
        return state, settings, optimizer, deadline, True
    # The pace is measured over the second half of the steps before the pause: a run's first steps
    # are slower (fresh pages, caches: llama-mini's first 100 steps with Muon ran at 0.75-0.8 of its
    # later pace), and counting them sized a five-minute run to end at 3:51.
    began, first = _budget.clock(), state.step
    deadline.mark, deadline.marked = first + (at - first) // 2, None
    state = train_to(at, optimizer, deadline, jobs=False)  # a pause, not an end: no evaluation or checkpoint
    if state.step < at:  # the clock stopped it first
        return state, settings, optimizer, deadline, False
    if deadline.marked is not None and deadline.mark < at:  # this machine's own seconds per step
        pace = (_budget.clock() - deadline.marked) / (at - deadline.mark)
    else:
        pace = (_budget.clock() - began) / (at - first)
    jobs = dict(eval_every=settings.eval_every, checkpoint_every=settings.checkpoint_every)
    sizing = _budget.resized(deadline.sizing, at, pace, deadline.end, **jobs)
    fitted = refit(args, settings, sizing.steps)
    if fitted is not None:  # the schedule ends with the budget at this machine's pace
        print(f"lt: at this machine's pace {fitted.steps:,} steps fit (not {settings.steps:,})", flush=True)
        settings, optimizer = fitted, runs.make_optimizer(fitted)
        runs.save_settings(files, settings)
    return (
        state,
        settings,
        optimizer,
        _budget.Deadline(deadline.end, sizing._replace(steps=settings.steps), **jobs),
        True,
    )


def _check_tensor_parallel(args, world: parallel.World) -> None:
    """``--tensor-parallel K`` needs a multiple of K MPI ranks (refused on every rank alike)."""
    tp = getattr(args, "tensor_parallel", None)
    if tp is not None and world.size % tp:
        raise UsageError(
            f"--tensor-parallel {tp} must divide the number of MPI ranks ({world.size}); launch a multiple of "
            f"{tp} ranks with mpiexec (mpiexec -n {tp} python -m mpi4py -m lt train ...)"
        )


def _world(mpi_flag: bool) -> parallel.World:
    """The MPI world with ``--mpi`` or when launched under mpiexec with several ranks."""
    try:
        return parallel.world(mpi=True if mpi_flag else None)
    except ImportError as e:
        raise UsageError(str(e)) from None
