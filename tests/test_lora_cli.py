"""`lt train --init-hf DIR --lora RANK`, `lt generate --run` and `lt export --peft / --merged` on a LoRA run.

The base is a random lt Llama-family model written with ``lt.hf.to_hf`` and lt's own BPE
tokenizer (no torch needed). A LoRA run holds the adapters only, records the base and its
fingerprint, refuses a changed base, generates with the adapters applied, and exports them
in PEFT's format and merged into a Hugging Face model that computes the same logits.
"""

import json
import shutil

import numpy as np
import pytest

import lt
from lt import cli, hf, lora, tree
from lt.lora import store

TEXT = ("First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n") * 30


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("base")
    tok = lt.tokenizers.BPETokenizer.train(TEXT, 300)
    model = lt.GPT(vocab_size=300, max_seq_len=64, num_layers=2, num_heads=4, hidden_dim=32, ffn_dim=48,
                   norm="rms", positional="rope", activation="swiglu", bias=False, num_kv_heads=2,
                   tie_embeddings=False)
    hf.to_hf(model, model.init(lt.random.key(0)), path, tokenizer=tok)
    return path


@pytest.fixture(scope="module")
def lora_run(base_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    (root / "speech.txt").write_text(TEXT)
    out = root / "run"
    argv = ["train", "--init-hf", str(base_dir), "--data", str(root / "speech.txt"), "--out", str(out),
            "--seq-len", "16", "--batch-size", "2", "--sample-tokens", "0", "--eval-every", "3", "--steps", "6",
            "--lora", "4", "--lora-targets", "all-linear", "--lr", "1e-2", "--warmup", "0"]
    assert cli.main(argv) == 0
    return out


def test_a_lora_run_holds_trained_adapters_and_a_record_of_its_base(lora_run, base_dir):
    assert (lora_run / store.ADAPTERS_FILE).is_file() and not (lora_run / "checkpoint.safetensors").exists()
    adapted, adapters, record, step = store.load(lora_run / store.ADAPTERS_FILE)
    assert step == 6 and adapted.lora == lora.LoRA(4, 8.0, "all-linear")
    assert record.path == str(base_dir) and record.quantize is None
    assert record.sha256 == store.fingerprint(hf.from_hf(base_dir)[1])
    assert any(np.abs(x).max() > 0 for p, x in tree.items(adapters) if p.endswith(".b"))  # B moved from zero
    base_bytes = (base_dir / "model.safetensors").stat().st_size
    assert (lora_run / store.ADAPTERS_FILE).stat().st_size < 0.5 * base_bytes  # adapters + AdamW moments only
    log = [json.loads(line) for line in (lora_run / "log.jsonl").read_text().splitlines()]
    assert log[-1]["step"] == 6 and "eval_loss" in log[-1]


def test_generate_applies_the_adapters_over_the_recorded_base(lora_run, base_dir, capsys):
    capsys.readouterr()
    assert cli.main(["generate", "--run", str(lora_run), "--prompt", "Speak", "--max-new-tokens", "6",
                     "--temperature", "0"]) == 0
    printed = capsys.readouterr().out
    adapted, adapters, _, _ = store.load(lora_run / store.ADAPTERS_FILE)
    _, base = hf.from_hf(base_dir)
    tokenizer = hf.load_tokenizer(base_dir)
    ids = lt.generate.generate(adapted.gpt, adapted.params(base, adapters), tokenizer.encode("Speak"),
                               max_new_tokens=6, temperature=0)
    assert printed == tokenizer.decode(ids) + "\n"


def test_a_changed_base_is_refused_naming_the_mismatch(lora_run, base_dir, tmp_path, capsys):
    moved = tmp_path / "run"
    shutil.copytree(lora_run, moved)
    changed = tmp_path / "base"
    model, params = hf.from_hf(base_dir)
    hf.to_hf(model, tree.map(lambda x: x * 1.01, params), changed, tokenizer=hf.load_tokenizer(base_dir))
    adapted, adapters, record, step = store.load(moved / store.ADAPTERS_FILE)
    changed_record = store.BaseRecord(str(changed), record.sha256)
    store.save(moved / store.ADAPTERS_FILE, adapted, adapters, changed_record, None, step)
    assert cli.main(["generate", "--run", str(moved), "--max-new-tokens", "2"]) != 0
    assert "is not the one these adapters were trained on" in capsys.readouterr().err


def test_export_peft_and_merged(lora_run, base_dir, tmp_path, capsys):
    assert cli.main(["export", "--run", str(lora_run), "--peft", str(tmp_path / "peft")]) == 0
    assert cli.main(["export", "--run", str(lora_run), "--merged", str(tmp_path / "merged")]) == 0
    adapted, adapters, _, _ = store.load(lora_run / store.ADAPTERS_FILE)
    model, base = hf.from_hf(base_dir)
    back, loaded = lora.load_peft(tmp_path / "peft", model)
    assert back.gpt == adapted.gpt  # the same adapted layers ("ffn" spelled out as gate, up, down)
    assert all(np.array_equal(a, b) for a, b in zip(tree.leaves(adapters), tree.leaves(loaded)))
    merged_model, merged = hf.from_hf(tmp_path / "merged")
    ids = np.arange(20)[None] % 300
    np.testing.assert_allclose(merged_model.apply(merged, ids), adapted.apply(base, adapters, ids), atol=2e-5)
    assert cli.main(["export", "--run", str(lora_run), "--merged", str(tmp_path / "merged")]) == 2  # not empty
    assert "--force" in capsys.readouterr().err


@pytest.mark.parametrize("extra, message", [
    (["--lora-alpha", "4"], "--lora-alpha set(s) up a LoRA run: add --lora RANK"),
    (["--lora", "4", "--lora-targets", "ffn.fc"], "this model's feed-forward has ffn.gate, ffn.up, ffn.down"),
    (["--lora", "4", "--lora-targets", "attn.qkv,attn.q"], "give one or the other"),
    (["--lora", "4", "--time", "1m"], "sized by --steps"),
])
def test_lora_flags_that_cannot_work_are_refused(base_dir, tmp_path, capsys, extra, message):
    (tmp_path / "t.txt").write_text(TEXT)
    argv = ["train", "--init-hf", str(base_dir), "--data", str(tmp_path / "t.txt"), "--out", str(tmp_path / "r"),
            "--seq-len", "16"]
    assert cli.main(argv + extra) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_quantized_base_run_records_its_quantization_and_generates(base_dir, tmp_path, capsys):
    (tmp_path / "t.txt").write_text(TEXT)
    out = tmp_path / "q"
    assert cli.main(["train", "--init-hf", str(base_dir), "--data", str(tmp_path / "t.txt"), "--out", str(out),
                     "--seq-len", "16", "--batch-size", "2", "--sample-tokens", "0", "--steps", "2",
                     "--lora", "2", "--quantize-base", "int4"]) == 0
    assert store.load(out / store.ADAPTERS_FILE)[2].quantize == "int4"
    _, _, params, _ = lt.runs.load_run(out)
    assert lt.quant.is_quantized(tree.get(params, "blocks.0.attn.qkv.w"))
    assert cli.main(["generate", "--run", str(out), "--max-new-tokens", "3"]) == 0
