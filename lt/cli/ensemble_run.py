"""``lt train --ensemble N``: N seeds of one run trained at once (``lt.ensemble``), and the
spread of their validation losses: how much of a result is the seed's.

Member i is the run ``lt train --seed S+i`` would make (S the run's seed): its own
initialisation and its own batches; all members take one batched step together. The run
directory holds member 0 as its checkpoint (so ``lt generate --run`` and ``lt eval --run``
work on it), every member under ``members/seed-K.safetensors``, and ``ensemble.json``: each
member's seed and final validation loss, their mean and standard deviation.
"""

from __future__ import annotations

import json

import attrs
import numpy as np

from .. import checkpoint, ensemble, random, runs
from ..files import atomic_write_text, naming
from ..nn import GPT
from ..training import TrainState
from .common import UsageError
from .schedule import default_log_every

__all__ = ["check_ensemble_flags", "cmd_train_ensemble", "ENSEMBLE_FILE"]

ENSEMBLE_FILE = "ensemble.json"


def check_ensemble_flags(args) -> None:
    """Refuse what an ensemble run cannot do, before anything is read."""
    if args.ensemble is None:
        return
    if args.ensemble < 2:
        raise UsageError(f"--ensemble needs 2 or more members, got {args.ensemble}")
    for flag, why in (
        ("resume", "an ensemble run cannot be resumed yet: start a new run with another --out"),
        ("mpi", "an ensemble trains its members in one process (no --mpi)"),
        ("tensor_parallel", "an ensemble trains its members in one process (no --tensor-parallel)"),
        ("time", "an ensemble is sized by --steps, not --time"),
        ("lora", "an ensemble trains every weight (no --lora)"),
        ("init_hf", "an ensemble's members start from their seeds (no --init-hf)"),
    ):
        if getattr(args, flag, None):
            raise UsageError(f"--ensemble: {why}")
    if getattr(args, "optimizer", None) == "muon":
        raise UsageError("--ensemble trains with AdamW: drop --optimizer muon")
    if getattr(args, "steps", None) is None:
        raise UsageError("--ensemble: give --steps (an ensemble is sized by steps)")


def cmd_train_ensemble(args, run, optimizer) -> int:
    """Train ``args.ensemble`` members of the prepared ``run`` (its settings, tokenizer and ids)."""
    files, settings = run.files, run.settings
    model = GPT(**settings.model)
    if getattr(args, "remat", False):
        model = attrs.evolve(model, remat=True)
    seeds = [settings.seed + i for i in range(args.ensemble)]
    keys = [random.key(s) for s in seeds]
    states = [TrainState.create(model.init(random.fold_in(k, "init")), optimizer) for k in keys]
    state = ensemble.stack_states(states)
    print(
        f"{files.root}: an ensemble of {len(seeds)} x {model.num_params():,} parameters "
        f"(seeds {seeds[0]}..{seeds[-1]}), "
        f"{len(run.train_ids):,} training tokens; {settings.steps} steps, all members at once",
        flush=True,
    )
    with files.open_log() as log_file:

        def on_log(record):
            with naming(files.log):
                log_file.write(json.dumps(record) + "\n")
                log_file.flush()

        state, log = ensemble.train_ensemble(
            model,
            optimizer,
            state,
            run.train_ids,
            rngs=keys,
            steps=settings.steps,
            batch_size=settings.batch_size,
            seq_len=settings.seq_len,
            val_tokens=run.val_ids if len(run.val_ids) else None,
            eval_batches=settings.eval_batches,
            log_every=getattr(args, "log_every", None) or default_log_every(settings.steps),
            on_log=on_log,
        )
    members = ensemble.member_states(state)
    (files.root / "members").mkdir(exist_ok=True)
    for seed, member in zip(seeds, members):
        checkpoint.save(
            files.root / "members" / f"seed-{seed}.safetensors", model, member.params, member.opt_state, member.step
        )
    checkpoint.save(files.checkpoint, model, members[0].params, members[0].opt_state, members[0].step)
    last = log[-1] if log else {}
    summary = {"seeds": seeds, "steps": state.step}
    if "eval_losses" in last:
        evals = np.array(last["eval_losses"])
        summary.update(
            eval_losses=[float(x) for x in evals], eval_loss_mean=float(evals.mean()), eval_loss_std=float(evals.std())
        )
        print(
            f"validation loss over {len(seeds)} seeds: mean {evals.mean():.4f}, std {evals.std():.4f}, "
            f"min {evals.min():.4f} (seed {seeds[int(evals.argmin())]}), max {evals.max():.4f} "
            f"(seed {seeds[int(evals.argmax())]})"
        )
    atomic_write_text(files.root / ENSEMBLE_FILE, json.dumps(summary, indent=1) + "\n")
    print(f"members in {files.root / 'members'}; member 0 (seed {seeds[0]}) is the run's checkpoint {files.checkpoint}")
    runs.save_settings(files, settings)
    return 0
