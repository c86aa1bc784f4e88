"""``lt train --init-hf DIR --lora RANK``: a LoRA run, whose directory holds the adapters only.

The base model is read from ``--init-hf`` (and ``--quantize-base``d, QLoRA), fingerprinted, and
never written into the run: ``adapters.safetensors`` holds the adapters, their optimizer state,
the step, the LoRA settings and the base's record (:mod:`lt.lora.store`). ``lt generate --run``
and ``lt eval --run`` apply the adapters over that base (``lt.runs.load_run``); ``lt export
--run DIR --peft OUT`` and ``--merged OUT`` write them for PEFT and transformers.

LoRA's defaults where the command line gives none: ``--steps 300``; peak ``--lr 1e-3`` (adapters
start at zero and take a larger rate than full fine-tuning's 3e-4, as PEFT's examples use) and
``--weight-decay 0`` (as transformers' Trainer). A LoRA run cannot yet ``--resume``, be sized
by ``--time``, or run under MPI: each is refused, saying so.
"""

from __future__ import annotations

import copy
import json
import pathlib
import time

import attrs

from .. import hf, lora, random, runs, tokenizers
from .._allocator import tune_malloc
from ..corpus import train_val_split_text
from ..files import atomic_write_text, naming
from ..lora import store
from ..lora.store import ADAPTERS_FILE, BaseRecord, fingerprint
from ..nn import GPT
from ..quant import quantize
from ..training import TrainState, train
from .common import UsageError
from .inference import sample_text
from .schedule import default_log_every, fit_schedule

__all__ = ["cmd_train_lora", "check_lora_flags", "LORA_DEFAULTS"]

LORA_DEFAULTS = dict(steps=300, lr=1e-3, weight_decay=0.0)


def check_lora_flags(args, out) -> None:
    """Refuse LoRA flags without ``--lora``, and what a LoRA run (in ``out``) cannot do, before
    anything is read."""
    if args.resume and (pathlib.Path(out) / ADAPTERS_FILE).exists():
        raise UsageError(f"{out} is a LoRA run: resuming a LoRA run is not supported yet; start a new one")
    extra = [
        f for f in ("lora_alpha", "lora_targets", "lora_dropout", "quantize_base") if getattr(args, f, None) is not None
    ]
    if args.lora is None:
        if extra:
            flags = ", ".join("--" + f.replace("_", "-") for f in extra)
            raise UsageError(f"{flags} set(s) up a LoRA run: add --lora RANK")
        return
    for flag, why in (
        ("resume", "resuming a LoRA run is not supported yet: start a new run with another --out"),
        ("mpi", "a LoRA run trains in one process (no --mpi)"),
        ("tensor_parallel", "a LoRA run trains in one process (no --tensor-parallel)"),
        ("time", "a LoRA run is sized by --steps (default 300), not --time"),
        ("model_option", "the model is the base's: no --model-option"),
    ):
        if getattr(args, flag, None):
            raise UsageError(f"--lora: {why}")
    if args.init_hf is None:
        raise UsageError("--lora fine-tunes a pretrained model: give --init-hf DIR|NAME (a Hugging Face model)")
    if getattr(args, "optimizer", None) == "muon":
        raise UsageError("--lora trains its adapters with AdamW: drop --optimizer muon")


def _lora(args) -> lora.LoRA:
    try:
        fields = dict(rank=args.lora, alpha=2.0 * args.lora if args.lora_alpha is None else args.lora_alpha)
        if args.lora_targets is not None:
            fields["targets"] = args.lora_targets
        if args.lora_dropout is not None:
            fields["dropout"] = args.lora_dropout
        return lora.LoRA(**fields)
    except ValueError as e:  # "LoRA.targets: ..." -> "--lora-targets: ..."
        raise UsageError(str(e).replace("LoRA.", "--lora-").replace("--lora-rank", "--lora")) from None


def _prepare(args, make_settings):
    """The run's settings, tokenizer, adapted model, base params (quantized if asked), base record
    and token ids (train, validation)."""
    lora_settings = _lora(args)  # bad --lora-* values before anything is read
    flags = copy.copy(args)
    for name, value in LORA_DEFAULTS.items():
        if getattr(flags, name, None) is None:
            setattr(flags, name, value)
    path = hf.resolve(args.init_hf)
    (model, params), tokenizer = hf.from_hf(path), hf.load_tokenizer(path)
    kind = "bpe" if isinstance(tokenizer, tokenizers.BPETokenizer) else "hf"
    settings = fit_schedule(flags, make_settings(flags, model, kind))
    try:
        adapted = lora.adapt(GPT(**settings.model), lora_settings)
    except ValueError as e:
        raise UsageError(f"--lora-targets: {e}") from None
    record = BaseRecord(str(args.init_hf), fingerprint(params), args.quantize_base)
    base = params if args.quantize_base is None else quantize(params, bits=int(args.quantize_base[3:]), model=model)
    text = runs.read_training_text(settings.data)
    settings = attrs.evolve(settings, **runs.data_fingerprint(text))
    train_text, val_text = train_val_split_text(text, settings.val_fraction)
    ids = runs.encode(tokenizer, train_text), runs.encode(tokenizer, val_text)
    return settings, tokenizer, adapted, base, record, ids


def cmd_train_lora(args, make_settings, out) -> int:
    """Train LoRA adapters over ``--init-hf``'s model into the run directory ``out``;
    ``make_settings(args, model, tokenizer_kind)`` is ``lt train``'s own settings builder (the
    flags' defaults and checks)."""
    tune_malloc()
    files = runs.RunFiles(out)
    adapters_path = files.root / ADAPTERS_FILE
    if adapters_path.exists() or files.checkpoint.exists():
        raise UsageError(f"{files.root} already holds a run; choose another --out")
    settings, tokenizer, adapted, base, record, (train_ids, val_ids) = _prepare(args, make_settings)
    optimizer = runs.make_optimizer(settings)
    bound = adapted.bind(base)
    adapters = adapted.init(random.fold_in(random.key(settings.seed), "lora"))
    state = TrainState.create(adapters, optimizer)
    with runs.open_run(files, new=True):
        tokenizer.save(files.tokenizer)
        runs.save_settings(files, settings)
        print(
            f"{files.root}: LoRA rank {adapted.lora.rank} on {', '.join(adapted.lora.targets)}: "
            f"{adapted.num_params():,} trained parameters over a {adapted.model.num_params():,}-parameter base"
            f"{' (' + record.quantize + ')' if record.quantize else ''}; {len(train_ids):,} training tokens; "
            f"{settings.steps} steps",
            flush=True,
        )
        log_file = files.open_log()

        def on_log(record_):
            with naming(files.log):
                log_file.write(json.dumps(record_) + "\n")
                log_file.flush()

        start = time.perf_counter()
        try:
            state, _ = train(
                bound,
                optimizer,
                state,
                train_ids,
                steps=settings.steps,
                batch_size=settings.batch_size,
                seq_len=settings.seq_len,
                rng=random.key(settings.seed),
                val_tokens=val_ids if len(val_ids) else None,
                eval_every=settings.eval_every,
                eval_batches=settings.eval_batches,
                log_every=getattr(args, "log_every", None) or default_log_every(settings.steps),
                on_log=on_log,
            )
        finally:
            log_file.close()
        store.save(adapters_path, adapted, state.params, record, state.opt_state, state.step)
        print(f"trained to step {state.step} in {time.perf_counter() - start:.0f} s; adapters {adapters_path}")
        if args.sample_tokens > 0:
            params = adapted.params(base, state.params)
            sample = sample_text(
                adapted.gpt, params, tokenizer, "\n", args.sample_tokens, 0.8, None, None, random.key(0)
            )
            atomic_write_text(files.sample, sample)
            print("--- sample ---" + sample)
    return 0
