"""The command line with Hugging Face checkpoints: `lt generate --hf DIR` and `lt train --init-hf DIR`."""

import json

import numpy as np
import pytest

import lt
from lt import cli

torch = pytest.importorskip("torch", reason="needs torch to build a Hugging Face checkpoint")
transformers = pytest.importorskip("transformers", reason="needs transformers to build a checkpoint")
tk = pytest.importorskip("tokenizers", reason="needs the tokenizers package (pip install 'lt[hf]')")
transformers.logging.set_verbosity_error()

TEXT = ("First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n") * 40


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
    """A random tiny LlamaForCausalLM with a byte-level BPE tokenizer.json, as save_pretrained writes it."""
    path = tmp_path_factory.mktemp("llama")
    tok = tk.Tokenizer(tk.models.BPE())
    tok.pre_tokenizer = tk.pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = tk.decoders.ByteLevel()
    tok.train_from_iterator([TEXT], tk.trainers.BpeTrainer(vocab_size=300, special_tokens=["<s>"],
                                                           initial_alphabet=tk.pre_tokenizers.ByteLevel.alphabet()))
    tok.save(str(path / "tokenizer.json"))
    config = transformers.LlamaConfig(vocab_size=tok.get_vocab_size(), hidden_size=32, intermediate_size=64,
                                      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                      max_position_embeddings=64)
    torch.manual_seed(0)
    transformers.LlamaForCausalLM(config).save_pretrained(path)
    return path


def test_generate_from_a_hugging_face_directory_continues_the_prompt_greedily(llama_dir, capsys):
    assert cli.main(["generate", "--hf", str(llama_dir), "--prompt", "Speak", "--max-new-tokens", "8",
                     "--temperature", "0"]) == 0
    printed = capsys.readouterr().out
    model, params = lt.hf.from_hf(llama_dir)
    tokenizer = lt.hf.load_tokenizer(llama_dir)
    prompt = tokenizer.encode("Speak")
    expected = lt.generate.generate(model, params, prompt, max_new_tokens=8, temperature=0)
    assert printed == tokenizer.decode(expected) + "\n"


def test_fine_tuning_starts_from_the_checkpoint_keeps_its_tokenizer_and_resumes(llama_dir, tmp_path, capsys):
    data = tmp_path / "speech.txt"
    data.write_text(TEXT)
    out = tmp_path / "run"
    common = ["train", "--init-hf", str(llama_dir), "--data", str(data), "--out", str(out), "--seq-len", "32",
              "--batch-size", "4", "--sample-tokens", "0", "--eval-every", "5", "--checkpoint-every", "5"]
    assert cli.main(common + ["--steps", "5", "--lr", "1e-4", "--warmup", "0"]) == 0
    settings = json.loads((out / "run.json").read_text())
    assert settings["init_hf"] == str(llama_dir) and settings["tokenizer"] == "hf"
    start_model, start_params = lt.hf.from_hf(llama_dir)
    settings_, model, params, tokenizer = lt.runs.load_run(out)
    assert model == start_model and tokenizer.vocab_size == lt.hf.load_tokenizer(llama_dir).vocab_size
    moved = [float(np.abs(a - b).max()) for a, b in zip(lt.tree.leaves(params), lt.tree.leaves(start_params))]
    assert 0 < max(moved) < 0.05                       # five small steps away from the checkpoint, not a new init
    assert cli.main(common + ["--steps", "8", "--lr", "1e-4", "--warmup", "0", "--resume"]) == 0
    assert lt.checkpoint.load(out / "checkpoint.safetensors", model).step == 8
    assert cli.main(["generate", "--run", str(out), "--prompt", "Speak", "--max-new-tokens", "4"]) == 0


def test_init_hf_refuses_flags_that_would_replace_its_model_or_tokenizer(llama_dir, tmp_path, capsys):
    data = tmp_path / "speech.txt"
    data.write_text(TEXT)
    assert cli.main(["train", "--init-hf", str(llama_dir), "--data", str(data), "--preset", "tiny",
                     "--out", str(tmp_path / "r")]) == 2
    assert "--preset does not go with --init-hf" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()
