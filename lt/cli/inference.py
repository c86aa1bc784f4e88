"""``lt generate``, ``lt eval``, ``lt quantize`` and ``lt info``: what a trained run (or a
Hugging Face model, by directory or hub name) is used for; ``lt info --run`` summarises a run."""

from __future__ import annotations

import pathlib
import sys

import numpy as np

from .. import checkpoint, data, quant, random, runs, tree
from .._allocator import tune_malloc
from ..corpus import train_val_split_text
from ..files import check_overwrite
from ..nn import GPT, PRESETS
from ..training import evaluate
from .common import UsageError, format_bytes, refuse_run_file

__all__ = ["cmd_generate", "cmd_eval", "cmd_quantize", "cmd_info", "sample_text", "written_by_lt_quantize"]


def _vocab_limit(model, tokenizer) -> int:
    """The ids that may be generated: those the tokenizer knows (a model's table may be padded
    past them, as Qwen2's is; a padded id has no text)."""
    return min(model.vocab_size, tokenizer.vocab_size)


def sample_text(model, params, tokenizer, prompt, n, temperature, top_k, top_p, rng, echo=False) -> str:
    """Generate ``n`` tokens after ``prompt``, printing the text as it comes when ``echo``;
    only ids the tokenizer knows are sampled."""
    from .. import generate

    ids = runs.encode(tokenizer, prompt)
    new, shown = [], ""
    for tok in generate.stream_window(
        model,
        params,
        ids,
        rng=rng,
        max_new_tokens=n,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        vocab_limit=_vocab_limit(model, tokenizer),
    ):
        new.append(tok)
        if echo:
            text = tokenizer.decode(np.array(new))
            sys.stdout.write(text[len(shown) :])
            sys.stdout.flush()
            shown = text
    return prompt + tokenizer.decode(np.array(new, dtype=np.int64))


def _load_for_inference(args):
    """``(model, params, tokenizer)`` of ``--run`` (from ``--checkpoint`` if given), ``--hf`` or
    ``--gguf``, ``--quantize``d if asked."""
    gguf_file = getattr(args, "gguf", None)
    if sum(x is not None for x in (args.run, args.hf, gguf_file)) != 1:
        raise UsageError(
            "give --run DIR (a run of lt train), --gguf FILE or --hf DIR|NAME (a Hugging Face model), one of them"
        )
    if gguf_file is not None:
        if args.checkpoint:
            raise UsageError("--checkpoint goes with --run, not --gguf")
        model, params, tokenizer = _load_gguf(gguf_file)
    elif args.hf is not None:
        if args.checkpoint:
            raise UsageError("--checkpoint goes with --run, not --hf")
        from .. import hf

        path = hf.resolve(args.hf)  # a local directory, or a hub name fetched into the cache
        (model, params), tokenizer = hf.from_hf(path), hf.load_tokenizer(path)
    else:
        model, params, tokenizer = _load_run(args)
    if args.quantize:
        if any(quant.is_quantized(x) for x in tree.leaves(params)):
            raise UsageError(
                f"--quantize {args.quantize}: the checkpoint is already quantized "
                f"({quant.describe(params)}); drop --quantize"
            )
        params = quant.quantize(params, bits=int(args.quantize[3:]), model=model)
    return model, params, tokenizer


def _load_gguf(path):
    """``(model, params, tokenizer)`` of a GGUF file, its notes printed; a tokenizer lt cannot run is an error."""
    import warnings

    from .. import gguf

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", gguf.GGUFWarning)
        model, params, tokenizer = gguf.load(path)
    for w in caught:
        if tokenizer is not None or "no tokenizer" not in str(w.message):
            print(f"note: {w.message}", file=sys.stderr)
    if tokenizer is None:
        why = next((str(w.message) for w in caught if "no tokenizer" in str(w.message)), f"{path}: no tokenizer")
        raise UsageError(why)
    return model, params, tokenizer


def _load_run(args):
    """``(model, params, tokenizer)`` of ``--run``, from ``--checkpoint`` if given."""
    _, run_model, params, tokenizer = runs.load_run(args.run)
    model = run_model
    if args.checkpoint:  # the run's model's vocabulary (a fine-tuned model's may be padded past its tokenizer's)
        model, params = checkpoint.load_model(args.checkpoint)
        if model.vocab_size != run_model.vocab_size:
            raise UsageError(
                f"{args.checkpoint} has a vocabulary of {model.vocab_size} tokens, the run "
                f"{args.run} {run_model.vocab_size}: they are not from the same run"
            )
    return model, params, tokenizer


def written_by_lt_quantize(path) -> bool:
    """Whether ``path`` is a file ``lt quantize`` may replace: an lt checkpoint holding quantized
    params and no optimizer state (a training checkpoint is never one)."""
    try:
        meta = checkpoint.read_metadata(path)
    except (ValueError, OSError):  # CheckpointError is a ValueError
        return False
    return "quantized" in meta and meta.get("has_opt_state") == "0"


def cmd_quantize(args) -> int:
    """Quantize the run's checkpoint to ``--out`` (default ``DIR/checkpoint-intN.safetensors``).

    ``--out`` is never one of the run's files, and replaces an existing file only when it is
    a quantized checkpoint lt wrote, or with ``--force``. Params and step come from one open
    file (``checkpoint.load``), so a checkpoint the run writes meanwhile is never mixed in."""
    files = runs.RunFiles(args.run)
    runs.load_settings(files)  # "not a run directory" before anything else
    out = pathlib.Path(args.out or files.root / f"checkpoint-int{args.bits}.safetensors")
    refuse_run_file(files, args.out or out)
    force = getattr(args, "force", False) or args.out is None  # the default path is lt's own
    check_overwrite(out, written_by_lt_quantize, force=force, ours="a quantized checkpoint lt wrote")
    ck = checkpoint.load(files.checkpoint)  # params and their step from one open file
    model, params, step = ck.model, ck.params, ck.step
    if any(quant.is_quantized(x) for x in tree.leaves(params)):
        raise UsageError(f"{args.run}: its checkpoint is already quantized ({quant.describe(params)})")
    qparams = quant.quantize(params, bits=args.bits, group_size=args.group_size, model=model)
    checkpoint.save(out, model, qparams, step=step)
    before, after = tree.nbytes(params), tree.nbytes(qparams)
    print(
        f"{out}: int{args.bits}, {format_bytes(after)} ({8 * after / model.num_params():.2f} bits per "
        f"parameter), from {format_bytes(before)} of float weights"
    )
    return 0


def cmd_generate(args) -> int:
    tune_malloc()
    model, params, tokenizer = _load_for_inference(args)
    if not args.prompt:
        raise UsageError("--prompt must not be empty")
    if args.beams is not None:
        from .. import generate

        ids = runs.encode(tokenizer, args.prompt)
        if len(ids) >= model.max_seq_len:
            raise UsageError(
                f"the prompt is {len(ids)} tokens; beam search needs it shorter than the model's "
                f"context of {model.max_seq_len} tokens"
            )
        n = min(args.max_new_tokens, model.max_seq_len - len(ids))
        result = generate.beam_search(
            model, params, ids, num_beams=args.beams, max_new_tokens=n, vocab_limit=_vocab_limit(model, tokenizer)
        )
        print(tokenizer.decode(np.asarray(result.sequences[0])))
        return 0
    sys.stdout.write(args.prompt)
    sample_text(
        model,
        params,
        tokenizer,
        args.prompt,
        args.max_new_tokens,
        args.temperature,
        args.top_k,
        args.top_p,
        random.key(args.seed),
        echo=True,
    )
    sys.stdout.write("\n")
    return 0


def cmd_eval(args) -> int:
    tune_malloc()
    settings, model, params, tokenizer = runs.load_run(args.run)
    text = (
        runs.read_training_text(str(args.data))
        if args.data
        else train_val_split_text(runs.read_training_text(settings.data), settings.val_fraction)[1]
    )
    ids = runs.encode(tokenizer, text)
    batches = data.sequential_windows(ids, settings.batch_size, settings.seq_len, args.max_batches)
    result = evaluate(model, params, batches)
    print(f"loss {result['loss']:.4f} | perplexity {result['perplexity']:.3f} | {result['tokens']:,} tokens")
    return 0


def cmd_info(args) -> int:
    if getattr(args, "run", None) is not None:
        from .runlog import format_summary, summary

        print(format_summary(summary(args.run)))
        return 0
    print(
        f"{'preset':12} {'layers':>6} {'heads':>5} {'kv':>3} {'hidden':>6} {'ffn':>5} {'vocab':>6} {'context':>7} "
        f"{'parameters':>12} {'weights':>9} {'training':>9} {'KV/token':>9}"
    )
    for name in PRESETS:
        m = GPT.preset(name)
        n = m.num_params()
        kv_bytes = 2 * m.num_layers * m.kv_heads * m.head_dim * 4
        print(
            f"{name:12} {m.num_layers:>6} {m.num_heads:>5} {m.kv_heads:>3} {m.hidden_dim:>6} {m.ffn_dim:>5} "
            f"{m.vocab_size:>6} {m.max_seq_len:>7} {n:>12,} {format_bytes(n * 4, sep=''):>9} "
            f"{format_bytes(n * 16, sep=''):>9} {format_bytes(kv_bytes, sep=''):>9}"
        )
    print(
        "weights: float32 params; training: params, gradients and AdamW's two moments (activations extra); "
        "KV/token: the KV cache's float32 keys and values per position of one sequence (kv heads only)"
    )
    print(f"\n{'preset':12} {'bytes per parameter and size (weights as stored)':>47}")
    print(f"{'':12} {'float32':>15} {'int8':>15} {'int4':>15}")
    for name in PRESETS:
        m = GPT.preset(name)
        sizes = [quant.planned_nbytes(m.spec(), bits) for bits in (None, 8, 4)]
        print(f"{name:12} " + " ".join(f"{b / m.num_params():5.2f} {format_bytes(b, sep=''):>9}" for b in sizes))
    print(
        "int8: one scale per output channel; int4: one per 32 weights (lt quantize, lt generate --quantize); "
        "wpe, norms and biases stay float32"
    )
    print(f"\nkernels: {_kernels_line()}")
    return 0


def _kernels_line() -> str:
    """What the primitives run here: numba's compiled kernels or the NumPy reference, and why."""
    from ..ops import kernels

    try:
        active = kernels.active()
    except (RuntimeError, ValueError) as e:
        return str(e)
    if active == "numba":
        from importlib.metadata import version

        return f"compiled (numba {version('numba')}); LT_KERNELS=numpy runs the NumPy reference"
    if kernels.available():
        return "the NumPy reference (LT_KERNELS=numpy); unset it for numba's compiled kernels"
    return "the NumPy reference; pip install 'lt[fast]' adds numba's compiled kernels"
