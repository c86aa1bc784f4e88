"""Run directories: what the ``lt`` command writes and reads back.

A run directory holds everything needed to resume, sample or evaluate a run::

    run.json                 the run's settings (model config, data, tokenizer, optimizer)
    tokenizer.json           the fitted tokenizer
    checkpoint.safetensors   params, optimizer state and step (lt.checkpoint)
    log.jsonl                one JSON record per log line (step, loss, lr, tok/s, eval)
    sample.txt               the text sampled at the end of training
    .lock                    the pid of the process writing the run (see :func:`open_run`)

One process writes a run at a time: :func:`open_run` takes an exclusive advisory lock
(``flock``) on ``.lock`` and holds it while the run trains. The OS releases it when the
process ends in any way (a SIGKILL too), so no stale lock is ever left behind. A folder
that is not empty and holds no run is never written in, and no file lt writes in a run is
written through a symbolic link.
"""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
import re
from typing import Any, NamedTuple

import attrs
import numpy as np

from . import checkpoint, guards, optim, tokenizers
from ._checks import any_integer, non_negative, number, one_of, positive
from .files import atomic_write_text
from .lora import store as lora_store
from .nn import GPT

try:
    import fcntl
except ImportError:  # not POSIX: runs are not locked
    fcntl = None  # type: ignore[assignment]

__all__ = [
    "RunSettings",
    "RunFiles",
    "Run",
    "RunLock",
    "RunInUseError",
    "open_run",
    "read_training_text",
    "data_fingerprint",
    "check_same_data",
    "fit_tokenizer",
    "load_tokenizer",
    "make_optimizer",
    "save_settings",
    "load_settings",
    "load_run",
    "encode",
]


def _model_config(instance, attribute, value) -> None:
    """attrs validator: a dict of lt.GPT fields that makes a valid model."""
    if not isinstance(value, dict):
        raise ValueError(f"RunSettings.model must be a dict of lt.GPT fields, got {value!r}")
    try:
        GPT(**value)
    except (TypeError, ValueError) as e:
        raise ValueError(f"RunSettings.model is not a valid lt.GPT config: {e}") from None


def _within_context(instance, attribute, value) -> None:
    """attrs validator: seq_len is a positive integer no longer than the model's context."""
    positive(instance, attribute, value)
    if value > instance.model["max_seq_len"]:
        raise ValueError(
            f"RunSettings.seq_len must be at most the model's max_seq_len {instance.model['max_seq_len']}, got {value}"
        )


def _optional(validator):
    def check(instance, attribute, value):
        if value is not None:
            validator(instance, attribute, value)

    return check


def _hex_digest(instance, attribute, value) -> None:
    if not (isinstance(value, str) and re.fullmatch(r"[0-9a-f]{64}", value)):
        raise ValueError(f"RunSettings.{attribute.name} must be a SHA-256 hex digest, got {value!r}")


@attrs.frozen
class RunSettings:
    """Everything about a run except its params: enough to rebuild data, model and optimizer.

    ``run.json`` is these fields; each is checked when the settings are made or read back,
    so a hand-edited file with a bad value is refused naming the field.
    """

    model: dict = attrs.field(validator=_model_config)  # lt.GPT fields
    data: str = attrs.field(validator=attrs.validators.instance_of(str))  # "corpus:<name>" or a file path
    tokenizer: str = attrs.field(validator=one_of("char", "bpe", "hf"))  # "hf": a tokenizer.json (--init-hf)
    seq_len: int = attrs.field(validator=_within_context)
    batch_size: int = attrs.field(validator=positive)
    steps: int = attrs.field(validator=positive)
    lr: float = attrs.field(validator=number(0, low_open=True))
    min_lr: float = attrs.field(validator=number(0))
    warmup: int = attrs.field(validator=non_negative)
    weight_decay: float = attrs.field(validator=number(0))
    grad_clip: float = attrs.field(validator=number(0, low_open=True))
    beta2: float = attrs.field(validator=number(0, 1, high_open=True))
    seed: int = attrs.field(validator=any_integer)
    eval_every: int = attrs.field(validator=positive)
    eval_batches: int = attrs.field(validator=positive)
    checkpoint_every: int = attrs.field(validator=positive)
    val_fraction: float = attrs.field(default=0.1, validator=number(0, 1, high_open=True))
    # The training text's size in bytes (UTF-8) and SHA-256, checked on resume; None in runs
    # made before they were recorded.
    data_bytes: int | None = attrs.field(default=None, validator=_optional(non_negative))
    data_sha256: str | None = attrs.field(default=None, validator=_optional(_hex_digest))
    # The Hugging Face model directory the run started from (lt train --init-hf), else None.
    init_hf: str | None = attrs.field(default=None, validator=_optional(attrs.validators.instance_of(str)))
    # The wall-clock budget in seconds that ``steps`` was sized for (lt train --time), else None.
    time_budget: float | None = attrs.field(default=None, validator=_optional(number(0, low_open=True)))
    # The steps the learning-rate schedule spans (warmup, then cosine to min_lr): the run's first
    # ``steps``, kept when ``lt train --resume --steps`` extends it; None (runs made before it was
    # recorded): ``steps``. See :func:`make_optimizer`.
    schedule_steps: int | None = attrs.field(default=None, validator=_optional(positive))
    # The optimizer: "adamw" (AdamW at ``lr`` for every leaf) or "muon" (Muon at ``muon_lr`` for
    # the hidden matrices, AdamW at ``lr`` for the rest); both after clipping. The schedule's
    # shape, the same for every rate: "cosine" (warmup, then a cosine down to ``min_lr``'s share
    # of the peak) or "wsd" (warmup, the peak, then a straight line down over the last
    # ``decay_fraction`` of the schedule's steps). Runs made before these were recorded: AdamW, cosine.
    optimizer: str = attrs.field(default="adamw", validator=one_of("adamw", "muon"))
    muon_lr: float = attrs.field(default=0.02, validator=number(0, low_open=True))
    schedule: str = attrs.field(default="cosine", validator=one_of("cosine", "wsd"))
    decay_fraction: float = attrs.field(default=0.2, validator=number(0, 1, low_open=True))


class RunFiles:
    """The paths inside one run directory."""

    def __init__(self, root):
        self.root = pathlib.Path(root)
        self.settings = self.root / "run.json"
        self.tokenizer = self.root / "tokenizer.json"
        self.checkpoint = self.root / "checkpoint.safetensors"
        self.log = self.root / "log.jsonl"
        self.sample = self.root / "sample.txt"
        self.lock = self.root / ".lock"

    def written(self) -> tuple:
        """The files lt writes in the run (none may be a symbolic link)."""
        return self.settings, self.tokenizer, self.checkpoint, self.log, self.sample, self.lock

    def holds_run(self) -> bool:
        """Whether the folder holds a run (or a run's beginning): any of lt's own files."""
        return any(p.exists() or p.is_symlink() for p in (self.settings, self.checkpoint, self.lock))

    def open_log(self):
        """``log.jsonl`` opened for appending text, never through a symbolic link."""
        fd = os.open(self.log, os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o666)
        return os.fdopen(fd, "a", encoding="utf-8")


class RunInUseError(RuntimeError):
    """Another process is writing the run (it holds the run's lock)."""


class RunLock:
    """The exclusive lock of one run directory, held until :meth:`release` (or the process ends).

    A context manager; ``restarted`` is True when the folder held a run that never reached its
    first checkpoint, which :func:`open_run` cleared to start over."""

    def __init__(self, files: RunFiles, fd: int | None, restarted: bool = False):
        self.files, self._fd, self.restarted = files, fd, restarted

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor releases the flock
            self._fd = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.release()


def _refuse_links(files: RunFiles) -> None:
    for path in files.written():
        if path.is_symlink():
            raise ValueError(
                f"{path} is a symbolic link; lt never writes through one in a run directory: "
                "remove it or choose another --out"
            )


def _lock(files: RunFiles) -> int | None:
    """An exclusive flock on ``files.lock`` with this process's pid written in it, or RunInUseError."""
    if fcntl is None:
        return None
    fd = os.open(files.lock, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | os.O_CLOEXEC, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
        os.close(fd)
        raise RunInUseError(
            f"{files.root} is in use by another lt process (pid {holder or 'unknown'}) writing "
            "the same run; wait for it to end or choose another --out"
        ) from None
    except BaseException:
        os.close(fd)
        raise
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
    return fd


def open_run(files: RunFiles, *, new: bool) -> RunLock:
    """Lock the run directory ``files.root`` for writing, for as long as the returned lock is held.

    ``new``: a fresh run. The folder may be missing (it is made), empty, or hold a run that
    stopped before its first checkpoint (its settings, tokenizer, log and sample are removed,
    and ``restarted`` says so); a run with a checkpoint, or a non-empty folder that is not a
    run, is refused. Otherwise the run is resumed: it must have settings and a checkpoint.
    Temporary files left by a killed writer are removed, and a symbolic link in place of a
    file lt writes is refused. A run locked by another process raises :class:`RunInUseError`
    naming its pid.
    """
    root = files.root
    if root.exists() and not root.is_dir():
        raise NotADirectoryError(f"{root} is not a directory")
    if new and root.is_dir() and not files.holds_run() and any(root.iterdir()):
        raise FileExistsError(
            f"{root} is not empty and holds no lt run; lt writes only in a new or empty folder: choose another --out"
        )
    if not new:
        load_settings(files)  # "not a run directory", before anything is made
    _refuse_links(files)
    root.mkdir(parents=True, exist_ok=True)
    lock = RunLock(files, _lock(files))
    try:
        _refuse_links(files)  # again, now that no other lt process writes here
        for tmp in root.glob(".*.tmp"):  # left by a writer killed mid-write
            tmp.unlink(missing_ok=True)
        if new:
            if files.checkpoint.exists():
                raise FileExistsError(f"{root} already holds a run; continue it with --resume or choose another --out")
            lock.restarted = files.settings.exists()
            for path in (files.settings, files.tokenizer, files.log, files.sample):
                path.unlink(missing_ok=True)
        elif not files.checkpoint.exists():
            raise FileNotFoundError(
                f"{root} has no checkpoint: the run stopped before its first one; start it over without --resume"
            )
    except BaseException:
        lock.release()
        raise
    return lock


class Run(NamedTuple):
    """A run ready to train, made once (by rank 0 under MPI, and sent to the others as it is):
    its directory, settings, tokenizer, the token ids of its two parts, and the state to start from."""

    files: RunFiles
    settings: RunSettings
    tokenizer: Any
    train_ids: np.ndarray  # (N,) int64
    val_ids: np.ndarray  # (M,) int64
    state: Any  # lt.TrainState: fresh, or read from the run's checkpoint


def read_training_text(source: str) -> str:
    """The text a run trains on: ``corpus:<name>`` for a bundled corpus (:func:`lt.corpus.load_text`),
    else the path of a UTF-8 file, which must exist and not be empty."""
    if source.startswith("corpus:"):
        from . import corpus

        return corpus.load_text(source.split(":", 1)[1])
    path = pathlib.Path(source)
    if path.is_dir():
        raise IsADirectoryError(f"data file {source} is a directory; give a text file")
    if not path.is_file():
        raise FileNotFoundError(f"data file {source} does not exist")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(
            f"data file {source} is not UTF-8 text: byte {e.object[e.start]:#04x} at offset {e.start} ({e.reason})"
        ) from None
    if not text:
        raise ValueError(f"data file {source} is empty")
    return text


def data_fingerprint(text: str) -> dict:
    """``{"data_bytes", "data_sha256"}`` of a training text (its UTF-8 bytes), as run.json records them."""
    raw = text.encode("utf-8")
    return {"data_bytes": len(raw), "data_sha256": hashlib.sha256(raw).hexdigest()}


def check_same_data(settings: RunSettings, text: str) -> None:
    """Refuse to resume on a training text other than the run's (when the run recorded its fingerprint)."""
    if settings.data_sha256 is None:
        return
    now = data_fingerprint(text)
    if now["data_sha256"] != settings.data_sha256:
        raise ValueError(
            f"data {settings.data} changed since the run was made ({settings.data_bytes:,} bytes, "
            f"sha256 {settings.data_sha256[:12]}...; now {now['data_bytes']:,} bytes, sha256 "
            f"{now['data_sha256'][:12]}...): resuming would train on other text; restore it or "
            "start a new run"
        )


def fit_tokenizer(kind: str, text: str, vocab_size: int):
    """A char tokenizer fitted on the whole text, or a BPE tokenizer trained on it."""
    if kind == "char":
        return tokenizers.CharTokenizer.fit(text)
    if kind == "bpe":
        return tokenizers.BPETokenizer.train(text, vocab_size)
    raise ValueError(f"tokenizer must be 'char' or 'bpe', got {kind!r}")


def load_tokenizer(files: RunFiles, settings: RunSettings):
    """The run's tokenizer: lt's own file, or (``tokenizer="hf"``) the run's copy of the
    Hugging Face tokenizer.json it started from."""
    if settings.tokenizer == "hf":
        from .hf import load_tokenizer as load_hf_tokenizer

        return load_hf_tokenizer(files.tokenizer)
    return tokenizers.load(files.tokenizer)


def make_optimizer(s: RunSettings) -> optim.GradientTransformation:
    """Clipping then AdamW (nanoGPT's recipe) or Muon, on a warmup + cosine (or + stable + decay)
    schedule.

    The schedule spans ``s.schedule_steps`` (the run's first ``steps``): linear warmup to
    ``lr`` over ``warmup`` steps, down to ``min_lr`` at step ``schedule_steps``, then
    ``min_lr``. A run extended with ``--resume --steps`` therefore keeps the rates it already
    trained with, and trains the added steps at ``min_lr``: the schedule is never re-fitted to
    the new total (which would raise the rate again from ``min_lr``, mid-run). Muon's rate
    follows the same shape from ``muon_lr``, ending at the same share of its peak.
    """
    total = s.steps if s.schedule_steps is None else s.schedule_steps

    def shape(peak: float) -> optim.Schedule:
        end = peak * s.min_lr / s.lr
        if s.schedule == "wsd":
            decay = max(1, round(total * s.decay_fraction))
            return optim.warmup_stable_decay(peak, s.warmup, max(total, s.warmup + decay), decay, end=end)
        return optim.warmup_cosine(peak, s.warmup, max(total, s.warmup + 1), end=end)

    if s.optimizer == "muon":
        inner = optim.muon(
            shape(s.muon_lr),
            model=GPT(**s.model),
            adam_learning_rate=shape(s.lr),
            weight_decay=s.weight_decay * s.lr / s.muon_lr,  # matrices shrink by lr * weight_decay a step, as AdamW's
            b2=s.beta2,
            adam_weight_decay=s.weight_decay,
        )
    else:
        inner = optim.adamw(shape(s.lr), b2=s.beta2, weight_decay=s.weight_decay)
    return optim.chain(optim.clip_by_global_norm(s.grad_clip), inner)


def save_settings(files: RunFiles, settings: RunSettings) -> None:
    text = json.dumps(attrs.asdict(settings), indent=2, sort_keys=True) + "\n"
    atomic_write_text(files.settings, text)


# run.json holds a few dozen settings: a megabyte is far more than any real one.
MAX_SETTINGS = 2**20


def load_settings(files: RunFiles) -> RunSettings:
    if not files.settings.exists():
        raise FileNotFoundError(
            f"{files.root} is not a run directory (no {files.settings.name}); make one with `lt train --out DIR`"
        )
    text = guards.read_bytes(files.settings, "run settings (run.json)", MAX_SETTINGS)  # a FIFO would block
    try:
        return RunSettings(**json.loads(text))
    except (TypeError, ValueError, RecursionError) as e:
        raise ValueError(f"{files.settings} is not a valid run settings file: {e}") from None


def load_run(root) -> tuple[RunSettings, GPT, Any, Any]:
    """``(settings, model, params, tokenizer)`` of a trained run directory; of a LoRA run
    (``lt train --lora``), the adapted model and its params: the adapters over the base they
    record, read from its path and checked against its fingerprint (``lt.lora.store``)."""
    files = RunFiles(root)
    settings = load_settings(files)
    adapters = files.root / lora_store.ADAPTERS_FILE
    if adapters.is_file():  # a LoRA run: the adapted model, its adapters joined to the base it records
        model, params = lora_store.load_adapted(adapters)
    elif not files.checkpoint.is_file():
        raise FileNotFoundError(f"{files.root} has no checkpoint yet ({files.checkpoint.name})")
    else:
        model, params = checkpoint.load_model(files.checkpoint)
    tokenizer = load_tokenizer(files, settings)
    # A run trained from scratch has exactly its tokenizer's vocabulary; a fine-tuned checkpoint's
    # table may be padded past it (Qwen2's), but never smaller.
    padded = settings.init_hf is not None
    if tokenizer.vocab_size > model.vocab_size or (not padded and tokenizer.vocab_size != model.vocab_size):
        raise ValueError(
            f"{files.tokenizer} has {tokenizer.vocab_size} tokens but the model in {files.checkpoint} "
            f"has {model.vocab_size}: they are not from the same run"
        )
    return settings, model, params, tokenizer


def encode(tokenizer, text: str) -> np.ndarray:
    """``text``'s token ids as a (N,) int64 array."""
    return np.asarray(tokenizer.encode(text), dtype=np.int64)
