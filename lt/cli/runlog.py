"""A run's log read back: its records, its curves, and the summary ``lt info --run`` prints.

``log.jsonl`` holds one record a line (:func:`lt.training.train`'s): ``{step, loss, lr,
tokens_per_s}`` every log period, with ``eval_loss`` when the held-out loss was measured
(a record made for evaluation alone has no ``tokens_per_s``). A resumed run appends to it
from its checkpoint's step, so steps logged after that checkpoint appear twice: the later
records (the ones the run's params come from) replace the earlier.

The log is input: it is read through the shared guards (:mod:`lt.guards`: a regular file, so a
FIFO cannot block ``lt plot``, of at most :data:`MAX_LOG` bytes), line by line, and every
problem (bytes that are not UTF-8, a line that is not a record, JSON nested too deeply) is a
ValueError naming the file and the line.
"""

from __future__ import annotations

import io
import json
import math
from typing import NamedTuple

import numpy as np

from .. import checkpoint, guards, runs
from ..nn import GPT, PRESETS
from .common import format_bytes

__all__ = ["MAX_LOG", "read_log", "Curves", "curves", "summary", "format_summary"]


MAX_LOG = 1 << 30  # 1 GiB: a record is about 100 bytes, so ten million log lines; more is no run's log


def _record(path, number: int, raw: bytes) -> dict | None:
    """The record on line ``number`` of the log (None for a blank line), or a ValueError naming it."""
    try:
        line = raw.decode("utf-8").rstrip("\r\n")
    except UnicodeDecodeError as e:
        raise ValueError(
            f"{path}, line {number}: not UTF-8 text ({e.reason} at byte {e.start} of the line); expected a log record"
        ) from None
    if not line.strip():
        return None
    try:
        record = json.loads(line)
        step = record["step"]
        if not isinstance(step, int) or isinstance(step, bool) or not isinstance(record.get("loss"), (int, float)):
            raise TypeError
    except (json.JSONDecodeError, RecursionError, KeyError, TypeError, AttributeError):
        raise ValueError(
            f"{path}, line {number}: not a log record (a JSON object with an integer 'step' "
            f"and a number 'loss'): {line[:80]!r}"
        ) from None
    return record


def read_log(path) -> list[dict]:
    """The records of a ``log.jsonl``, in the order the run made them (a resume's repeats
    replace what they repeat). A line that is not a record raises a ValueError naming it; a
    log that is not a regular file, or is over :data:`MAX_LOG` bytes, is refused unread."""
    what = "a run log (log.jsonl)"
    try:
        raw = guards.open_regular(path, what, MAX_LOG)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path} not found: the run has logged nothing yet") from None
    records: list[dict] = []
    seen = 0
    with io.BufferedReader(raw) as f:
        for number, line in enumerate(f, 1):
            seen += len(line)
            if seen > MAX_LOG:  # grew while it was read
                raise ValueError(f"{path}: is more than the {MAX_LOG} bytes lt reads for {what}")
            record = _record(path, number, line)
            if record is None:
                continue
            while records and records[-1]["step"] >= record["step"]:  # a resume from an earlier checkpoint
                records.pop()
            records.append(record)
    return records


class Curves(NamedTuple):
    """The series ``lt plot`` draws, each ``(steps, values)`` as two (N,) float64 arrays."""

    train_loss: tuple
    eval_loss: tuple
    lr: tuple
    tokens_per_s: tuple


def _series(records: list[dict], key: str) -> tuple:
    kept = [r for r in records if isinstance(r.get(key), (int, float))]
    return (np.array([r["step"] for r in kept], dtype=np.float64), np.array([r[key] for r in kept], dtype=np.float64))


def curves(records: list[dict]) -> Curves:
    """Training loss (the mean over each log period), held-out loss, learning rate and
    tokens/s, against the step, from :func:`read_log`'s records."""
    return Curves(*(_series(records, key) for key in ("loss", "eval_loss", "lr", "tokens_per_s")))


def _preset_of(model: GPT) -> str:
    """The preset whose layers, heads and widths ``model`` has, or ``custom``."""
    fixed = dict(vocab_size=model.vocab_size, max_seq_len=model.max_seq_len, dropout=model.dropout)
    return next((name for name in PRESETS if GPT.preset(name, **fixed) == model), "custom")


def _training_seconds(records: list[dict], tokens_per_step: int) -> float | None:
    """Seconds spent in training steps, from the log's token rates: each record covers the steps
    since the one before; a period logged without a rate (evaluation alone) is counted at the
    run's mean rate. Evaluation, checkpoints and the final sample are not included."""
    periods, previous = [], 0
    for r in records:
        periods.append((r["step"] - previous, r.get("tokens_per_s")))
        previous = r["step"]
    timed = [(n, rate) for n, rate in periods if isinstance(rate, (int, float)) and rate > 0]
    if not timed:
        return None
    seconds = sum(n * tokens_per_step / rate for n, rate in timed)
    timed_steps = sum(n for n, _ in timed)
    untimed_steps = sum(n for n, _ in periods) - timed_steps
    return seconds * (1 + untimed_steps / timed_steps) if timed_steps else seconds


def _quantized_files(files) -> list[tuple[str, str, int]]:
    """``(name, formats, bytes)`` of each quantized lt checkpoint in the run directory (``lt
    quantize`` writes ``checkpoint-int8.safetensors`` and ``-int4``), by name; any other file,
    the training checkpoint among them, is left out."""
    found = []
    for path in sorted(files.root.glob("*.safetensors")):
        if path.name == files.checkpoint.name:
            continue
        try:
            schemes = json.loads(checkpoint.read_metadata(path)["quantized"])
            kinds = "+".join(sorted({f"int{scheme['bits']}" for scheme in schemes.values()}))
            found.append((path.name, kinds, path.stat().st_size))
        except (ValueError, OSError, KeyError, TypeError, AttributeError, RecursionError):
            continue  # not an lt checkpoint, or not a quantized one
    return found


def summary(root) -> dict:
    """What a run directory holds, as ``lt info --run`` prints it: model and preset, steps done
    (its checkpoint's step) of the planned, best held-out loss and its step, tokens seen,
    training time, tokenizer, checkpoint path and size, the quantized checkpoints beside it.
    Works on a run still in progress."""
    files = runs.RunFiles(root)
    settings = runs.load_settings(files)
    model = GPT(**settings.model)
    records = read_log(files.log) if files.log.is_file() else []
    meta = checkpoint.read_metadata(files.checkpoint) if files.checkpoint.is_file() else None
    step = None if meta is None else int(meta["step"])
    tokens_per_step = settings.batch_size * settings.seq_len
    evals = [(r["eval_loss"], r["step"]) for r in records if isinstance(r.get("eval_loss"), (int, float))]
    best = min(evals) if evals else None
    seconds = _training_seconds(records, tokens_per_step)
    return {
        "run": str(files.root),
        "model": f"from {settings.init_hf}" if settings.init_hf else _preset_of(model),
        "parameters": model.num_params(),
        "layers": model.num_layers,
        "heads": model.num_heads,
        "hidden": model.hidden_dim,
        "context": model.max_seq_len,
        "data": settings.data,
        "tokenizer": settings.tokenizer,
        "vocab_size": model.vocab_size,
        "steps_done": step,
        "steps_planned": settings.steps,
        "last_logged_step": records[-1]["step"] if records else None,
        "batch": (settings.batch_size, settings.seq_len),
        "tokens_seen": None if step is None else step * tokens_per_step,
        "last_train_loss": records[-1]["loss"] if records else None,
        "best_eval_loss": None if best is None else best[0],
        "best_eval_step": None if best is None else best[1],
        "training_seconds": seconds,
        "time_budget": settings.time_budget,
        "checkpoint": str(files.checkpoint) if step is not None else None,
        "checkpoint_bytes": None if meta is None else files.checkpoint.stat().st_size,
        "checkpoint_has_opt_state": meta is not None and meta.get("has_opt_state") == "1",
        "quantized": _quantized_files(files),
    }


def _duration(seconds: float) -> str:
    m, s = divmod(round(seconds), 60)
    h, m = divmod(m, 60)
    return f"{h}h {m:02d}m {s:02d}s" if h else f"{m}m {s:02d}s" if m else f"{seconds:.1f}s"


def format_summary(s: dict) -> str:
    """:func:`summary` as the lines ``lt info --run`` prints."""
    na = "none yet"
    done = na if s["steps_done"] is None else f"{s['steps_done']:,}"
    lines = [
        ("run", s["run"]),
        (
            "model",
            f"{s['model']}: {s['parameters']:,} parameters, {s['layers']} layers, {s['heads']} heads, "
            f"hidden {s['hidden']}, context {s['context']}",
        ),
        ("data", s["data"]),
        ("tokenizer", f"{s['tokenizer']}, {s['vocab_size']:,} tokens"),
        (
            "steps",
            f"{done} of {s['steps_planned']:,}"
            + (
                ""
                if s["last_logged_step"] in (None, s["steps_done"])
                else f" (logged to step {s['last_logged_step']:,}: past the checkpoint)"
            ),
        ),
        (
            "tokens seen",
            na if s["tokens_seen"] is None else f"{s['tokens_seen']:,} ({s['batch'][0]} x {s['batch'][1]} a step)",
        ),
        ("train loss", na if s["last_train_loss"] is None else f"{s['last_train_loss']:.4f} (last logged)"),
        (
            "best eval",
            na
            if s["best_eval_loss"] is None
            else f"{s['best_eval_loss']:.4f} at step {s['best_eval_step']:,} "
            f"(perplexity {math.exp(min(s['best_eval_loss'], 700.0)):.3f})",
        ),
        (
            "time",
            na
            if s["training_seconds"] is None
            else f"{_duration(s['training_seconds'])} training (from the log's tokens/s; evaluation excluded)"
            + ("" if s["time_budget"] is None else f", budget {_duration(s['time_budget'])}"),
        ),
        (
            "checkpoint",
            na
            if s["checkpoint"] is None
            else f"{s['checkpoint']} ({format_bytes(s['checkpoint_bytes'])}, "
            + ("with optimizer state)" if s["checkpoint_has_opt_state"] else "params only)"),
        ),
        (
            "quantized",
            ", ".join(f"{name} ({kinds}, {format_bytes(size)})" for name, kinds, size in s["quantized"])
            or "none (lt quantize writes them)",
        ),
    ]
    return "\n".join(f"{name:12} {value}" for name, value in lines)
