"""Train briefly on Shakespeare and plot the training and held-out loss, saved as a PNG.

    python examples/11_loss_curve.py      # LT_EXAMPLE_OUT=DIR sets where loss_curve.png goes
                                          # (default examples/out); LT_EXAMPLE_STEPS trains longer

Needs the corpus (``pip install "lt[text]"``) and, for the picture, matplotlib
(``pip install "lt[examples]"``; without it the numbers are printed and the picture is
skipped). ``lt.train`` hands each log record to ``on_log``: the mean training loss over
the last ``log_every`` steps and, every ``eval_every`` steps, the held-out loss.
"""

import os
import pathlib
import sys

import numpy as np

import lt

STEPS = int(os.environ.get("LT_EXAMPLE_STEPS", 300))
OUT = pathlib.Path(os.environ.get("LT_EXAMPLE_OUT", pathlib.Path(__file__).parent / "out"))
B, T = 16, 64

try:
    text = lt.data.load_text("shakespeare")
except lt.data.CorpusUnavailableError as e:
    sys.exit(str(e))                                                    # says what to pip install
train_text, val_text = lt.data.train_val_split_text(text, val_fraction=0.1)
tok = lt.CharTokenizer.fit(text)
train_ids, val_ids = tok.encode(train_text), tok.encode(val_text)

rng = lt.random.key(0)
model = lt.GPT.preset("tiny", vocab_size=tok.vocab_size, max_seq_len=T)
schedule = lt.optim.warmup_cosine(1e-2, warmup=STEPS // 10, total=STEPS, end=1e-3)
opt = lt.optim.adamw(schedule, weight_decay=0.1)
state = lt.TrainState.create(model.init(rng), opt)
log_every, eval_every = max(STEPS // 30, 1), max(STEPS // 6, 1)

def val_loss(params) -> float:
    return lt.evaluate(model, params, lt.data.sequential_windows(val_ids, B, T, max_batches=4))["loss"]


records = [{"step": 0, "eval_loss": val_loss(state.params)}]            # then what lt.train logs
state, _ = lt.train(model, opt, state, train_ids, steps=STEPS, batch_size=B, seq_len=T, rng=rng,
                    val_tokens=val_ids, eval_every=eval_every, eval_batches=4, log_every=log_every,
                    on_log=records.append, verbose=False)

train_steps = [r["step"] for r in records if "tokens_per_s" in r]      # the regular log lines
train_loss = [r["loss"] for r in records if "tokens_per_s" in r]
eval_steps = [r["step"] for r in records if "eval_loss" in r]
eval_loss = [r["eval_loss"] for r in records if "eval_loss" in r]
print(f"{STEPS} steps; training loss (mean of each {log_every} steps) "
      f"{train_loss[0]:.4f} -> {train_loss[-1]:.4f}; log V = {np.log(tok.vocab_size):.4f}")
print("held-out loss:", " ".join(f"step {s} {v:.4f}" for s, v in zip(eval_steps, eval_loss)))

try:
    import matplotlib
    matplotlib.use("Agg")                                               # files only, no window
    import matplotlib.pyplot as plt
except ImportError:
    print('matplotlib is not installed: pip install "lt[examples]" to save the picture')
    raise SystemExit(0)

fig, (ax, ax_lr) = plt.subplots(2, 1, figsize=(7, 6), sharex=True, height_ratios=(3, 1), layout="constrained")
ax.plot(train_steps, train_loss, label=f"training (mean of {log_every} steps)")
ax.plot(eval_steps, eval_loss, "o-", label="held-out")
ax.axhline(np.log(tok.vocab_size), color="grey", linestyle=":", label="uniform guess (log V)")
ax.set_ylabel("cross-entropy (nats per character)")
ax.set_title(f"A {model.num_params():,}-parameter character model on Shakespeare")
ax.legend()
ax_lr.plot(range(STEPS), [schedule(s) for s in range(STEPS)], color="tab:green")
ax_lr.set_ylabel("learning rate")
ax_lr.set_xlabel("step")
OUT.mkdir(parents=True, exist_ok=True)
path = OUT / "loss_curve.png"
fig.savefig(path, dpi=100)
print("saved", path)
