"""Recipes for `lt train` on the bundled corpus, each trained for the same wall-clock budget.

    python benchmarks/sweep_recipe.py                      # every candidate, 5 minutes each
    python benchmarks/sweep_recipe.py --budget 2m --only default nanogpt
    python benchmarks/sweep_recipe.py --only baseline muon wsd qk-norm relu2 softcap zero-init untied speedrun
    python benchmarks/sweep_recipe.py --only default adamw muon-lr0.005 muon-batch32 qk-seq256

Measured on 2026-12-06, one quiet 2-core AMD EPYC, five minutes each (bits per character on the
validation text; steps the budget fitted): baseline 2.133 (1,623), muon 2.111 (1,476), wsd 2.139
(1,544), qk-norm 2.077 (1,536), relu2 2.121 (1,838), softcap 2.138 (1,576), zero-init 2.136
(1,577), untied 2.151 (1,526), speedrun 2.124 (1,393); then on QK-norm: qk-relu2 2.114 (1,936),
qk-muon 2.145 (1,202). QK-norm became `lt train`'s default. Later (same machine, same day):
qk-bpe1024 2.119 (1,477), qk-bpe2048 2.095 (1,401), qk-muon-lr0.01 2.087 (1,067): none beats it.

Then a small model's step cut its batch in two row pieces for the two cores (lt.batch_gradient:
AdamW's step 119 ms, was 152; Muon's 151, was 179), and the five minutes fit 2,280 AdamW steps:
adamw 2.056 (2,280), default with Muon at lr 0.01 2.053 (1,891). Muon became the default. Its
variants and the others were measured as fixed-step runs (`--steps N`, N the steps five minutes
fit at the recipe's own step time; one thread each, two at a time; validation loss per token):
default 2.718 (1,794) against adamw 2.733 (2,280), muon-lr0.005 2.725, muon-batch32 2.748
(1,046), muon-warmup50-min0 2.769, qk-seq256 2.769 (2,222); muon-lr0.015 was behind at step
1,000 (2.914 against 2.874). Earlier, at 1,673 steps: qk-lr4e-3 2.762 against 2.759.

Each row is one `lt train --time BUDGET ...` command (printed, so it can be rerun alone;
seeds are fixed, and the step count it measured is in the run's run.json), run in its own
process, one after another. The table: steps, tokens seen, the final validation loss, bits
per character (the loss per token / ln 2 x tokens per character of the validation text, so
character and BPE models compare fairly), wall time of the whole command, and the start of
the sample it wrote.
"""

from __future__ import annotations

import argparse
import json
import math
import pathlib
import subprocess
import sys
import tempfile
import time

import lt
import lt.runs

# name: the flags beyond --time (the sweep's candidates; "default" is lt train's own recipe)
CANDIDATES = {
    "nanogpt": ["--recipe", "nanogpt"],                       # mini, char, 12 x 64, lr 1e-3: 2,000 steps' recipe
    "nanogpt-llama": ["--recipe", "nanogpt", "--preset", "llama-mini"],
    "llama-char-16x128": ["--tokenizer", "char"],
    "llama-char-24x64": ["--tokenizer", "char", "--seq-len", "64", "--batch-size", "24"],
    "llama-char-16x128-lr1e-3": ["--tokenizer", "char", "--lr", "1e-3", "--min-lr", "1e-4"],
    "default": [],                                            # llama-mini, QK-norm, Muon 0.01, BPE 512, 16 x 128, lr 2e-3
    "adamw": ["--recipe", "adamw"],                           # the previous default: QK-norm with AdamW alone
    "baseline": ["--recipe", "baseline"],                     # the one before: AdamW without QK-norm
    # The NanoGPT speedrun's techniques, each alone on the baseline, then together:
    "muon": ["--recipe", "baseline", "--optimizer", "muon"],  # Muon (lr 0.02) for the hidden matrices
    "wsd": ["--recipe", "baseline", "--schedule", "wsd"],     # warmup, stable, linear decay over the last 20%
    "qk-norm": ["--recipe", "baseline", "--model-option", "qk_norm=true"],   # = the default
    "relu2": ["--recipe", "baseline", "--model-option", "activation=relu2"],  # ReLU² instead of SwiGLU
    "softcap": ["--recipe", "baseline", "--model-option", "logit_softcap=30"],
    "zero-init": ["--recipe", "baseline", "--model-option", "zero_init_projections=true"],
    "untied": ["--recipe", "baseline", "--model-option", "tie_embeddings=false"],
    "speedrun": ["--recipe", "baseline", "--optimizer", "muon", "--schedule", "wsd", "--model-option",
                 "qk_norm=true", "--model-option", "zero_init_projections=true"],
    # On QK-norm with AdamW (the adamw recipe):
    "qk-relu2": ["--recipe", "adamw", "--model-option", "activation=relu2"],
    "qk-muon-lr0.02": ["--recipe", "adamw", "--optimizer", "muon", "--muon-lr", "0.02"],
    "qk-bpe1024": ["--recipe", "adamw", "--vocab-size", "1024"],
    "qk-bpe2048": ["--recipe", "adamw", "--vocab-size", "2048"],
    "qk-seq256": ["--recipe", "adamw", "--seq-len", "256", "--batch-size", "8"],
    "qk-batch8": ["--recipe", "adamw", "--batch-size", "8"],
    "qk-lr4e-3": ["--recipe", "adamw", "--lr", "4e-3", "--min-lr", "4e-4"],
    # On the default (QK-norm and Muon at 0.01):
    "muon-lr0.005": ["--muon-lr", "0.005"],
    "muon-lr0.015": ["--muon-lr", "0.015"],
    "muon-batch32": ["--batch-size", "32"],
    "muon-warmup50-min0": ["--warmup", "50", "--min-lr", "0"],
}


def chars_per_token(run: pathlib.Path) -> float:
    """Characters per token on the run's validation text (1 for a character tokenizer)."""
    settings, _, _, tokenizer = lt.runs.load_run(run)
    text = lt.runs.read_training_text(settings.data)
    _, val = lt.corpus.train_val_split_text(text, settings.val_fraction)
    return len(val) / len(tokenizer.encode(val))


def run_one(name: str, flags: list, budget: str, root: pathlib.Path) -> dict:
    out = root / name
    command = ["lt", "train", "--time", budget, *flags, "--out", str(out)]
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "lt", *command[1:]], capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode:
        return {"name": name, "command": " ".join(command), "error": proc.stderr.strip().splitlines()[-1]}
    settings = json.loads((out / "run.json").read_text())
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    loss = [r["eval_loss"] for r in records if "eval_loss" in r][-1]
    bpc = loss / math.log(2) / chars_per_token(out)
    sample = (out / "sample.txt").read_text()
    return {"name": name, "command": " ".join(command), "steps": settings["steps"],
            "tokens": settings["steps"] * settings["batch_size"] * settings["seq_len"],
            "val_loss": loss, "bpc": bpc, "wall_s": wall, "sample": sample[:70].replace("\n", " / ")}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--budget", default="5m", help="wall-clock budget per recipe (default 5m)")
    ap.add_argument("--only", nargs="+", choices=sorted(CANDIDATES), help="these candidates only")
    ap.add_argument("--json", metavar="FILE", help="also write the rows as JSON")
    args = ap.parse_args(argv)
    names = args.only or list(CANDIDATES)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            row = run_one(name, CANDIDATES[name], args.budget, pathlib.Path(tmp))
            rows.append(row)
            print(json.dumps(row), flush=True)
    print(f"\n{'recipe':15} {'steps':>6} {'tokens':>10} {'val loss':>8} {'bits/char':>9} {'wall s':>7}  sample")
    for r in rows:
        if "error" in r:
            print(f"{r['name']:15} failed: {r['error']}")
            continue
        print(f"{r['name']:15} {r['steps']:>6} {r['tokens']:>10,} {r['val_loss']:8.4f} {r['bpc']:9.4f} "
              f"{r['wall_s']:7.0f}  {r['sample']}")
    print("\ncommands:")
    for r in rows:
        print(f"  {r['name']:15} {r['command'].replace(' --out ' + str(r['command']).split(' --out ')[-1], '')}")
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
