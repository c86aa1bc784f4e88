"""``lt train``'s recipes: named sets of defaults (the model, the data, the optimizer, the
schedule), which flags override; ``default`` is what ``lt train`` alone runs."""

from __future__ import annotations

__all__ = ["RECIPES", "TRAIN_DEFAULTS", "recipe_defaults"]


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
    warmup_cap=0.2,  # a recipe's warmup is at most this share of the run's steps (--warmup: any)
    weight_decay=0.1,
    grad_clip=1.0,
    beta2=0.99,
    dropout=0.0,
    seed=1337,
    eval_every=250,
    eval_batches=20,
    checkpoint_every=500,
    optimizer="adamw",
    muon_lr=0.01,  # Muon's peak rate (--optimizer muon): the best measured on llama-mini (see DEFAULT)
    schedule="cosine",
    decay_fraction=0.2,
    model_option=(),  # (field, value) pairs set on the preset's lt.GPT
)
# The previous default, `lt train --recipe baseline`: the winner of `python
# benchmarks/sweep_recipe.py` for five minutes on 2 cores (an Intel Xeon) before QK-norm:
# llama-mini, the Llama-shaped model of mini's size, on byte-level BPE tokens, 16 x 128 a step:
# 2.126 bits per character against nanoGPT's recipe's 2.445 (its validation loss 1.695) in the
# same five minutes.
BASELINE = dict(
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
# `lt train --recipe adamw`, the default before Muon: the baseline with QK-norm (each head's
# queries and keys RMS-normalised), the winner of the sweep of the NanoGPT speedrun's techniques,
# each alone at five minutes on 2 cores (an AMD EPYC): 2.077 bits per character against the
# baseline's 2.133 (Muon 2.111, ReLU² 2.121, zero-initialised projections 2.136, soft-capping
# 2.138, WSD 2.139, an untied head 2.151; Muon, WSD, QK-norm and zero-init together 2.124).
ADAMW = dict(BASELINE, model_option=(("qk_norm", True),))
# `lt train`'s recipe: QK-norm with Muon at lr 0.01 for the hidden matrices (AdamW at --lr for
# the rest). Once a small model's step cut its batch in two pieces for the two cores, AdamW fitted
# 2,280 steps in five minutes and Muon's longer step 1,794-1,891; Muon learned more than it cost,
# by a little: validation loss 2.729 per token against AdamW's 2.733 in five-minute runs of `lt
# train` (2.05 and 2.06 bits per character), 2.718 against 2.733 at the step counts those five
# minutes fit (Muon at lr 0.005: 2.725; at batch 32: 2.748; AdamW at 8 x 256 tokens a step: 2.769).
DEFAULT = dict(ADAMW, optimizer="muon")
# `lt train --init-hf`'s recipe: fine-tuning a trained checkpoint. Peak lr 3e-4 (2e-3 is for
# training from scratch), warmup a tenth of the run (at most 100 steps), cosine to a tenth.
# Measured: llama-mini trained 600 steps on the plays other than the histories, exported with
# lt.hf.to_hf, fine-tuned 200 steps on the eleven history plays; held-out loss on the histories /
# the other plays, 3.109 / 2.984 before: this recipe 2.741 / 3.013, the default recipe 2.653 /
# 3.121 (2.816 / 3.243 when its 200-step warmup filled the run). It forgets less; on that small,
# briefly trained model a higher --lr fits the new text more (1e-3: 2.658 / 3.072).
FINETUNE = dict(
    DEFAULT,
    optimizer="adamw",  # the checkpoints lt fine-tunes were trained with AdamW
    schedule="cosine",
    model_option=(),
    lr=3e-4,
    min_lr=3e-5,
    warmup=100,
    warmup_cap=0.1,
)
RECIPES = {"default": DEFAULT, "adamw": ADAMW, "baseline": BASELINE, "finetune": FINETUNE, "nanogpt": NANOGPT}
TRAIN_DEFAULTS = DEFAULT


def recipe_defaults(args) -> dict:
    """The defaults of ``--recipe``: ``finetune`` with ``--init-hf``, else ``default``, unless
    given; ``--steps`` replaces its time budget and ``--time`` its step count."""
    name = getattr(args, "recipe", None) or ("finetune" if getattr(args, "init_hf", None) else "default")
    v = dict(RECIPES[name])
    if getattr(args, "steps", None) is not None:
        v["time"] = None
    if getattr(args, "time", None) is not None:
        v["steps"] = None
    return v
