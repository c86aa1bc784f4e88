"""lt's GGUF files run in llama.cpp (through llama-cpp-python): same tokens, same logits, same greedy text.

Optional: llama-cpp-python compiles llama.cpp, so these tests skip, saying so, where it is not
installed (``pip install llama-cpp-python``).
"""

import numpy as np
import pytest

import lt

pytest.importorskip("gguf", reason="GGUF export needs the gguf package: pip install 'lt[gguf]'")
llama_cpp = pytest.importorskip("llama_cpp", reason="the cross-check runs llama.cpp: pip install llama-cpp-python")
pytest.importorskip("regex", reason="byte-level BPE needs regex: pip install 'lt[text]'")

TEXT = "Ünïcödé — naïve café, 日本語のテキスト, emoji 🤖; the quick brown fox jumps over the lazy dog. " * 6
MODELS = {
    "gpt2": ("tiny", {}),
    "llama-gqa": ("llama-tiny", {}),
    "llama-untied-bias": ("llama-tiny", {"tie_embeddings": False, "bias": True}),
    "qwen2": ("llama-tiny", {"qkv_bias": True}),
}


@pytest.fixture(scope="module")
def tok():
    return lt.BPETokenizer.train(TEXT, 320, special_tokens=["<|endoftext|>"])


def exported(name, tok, tmp_path, kind="f32"):
    preset, over = MODELS[name]
    model = lt.GPT.preset(preset, vocab_size=tok.vocab_size, **over)
    params = lt.tree.map(lambda w: 4 * w if w.ndim == 2 else w, model.init(lt.random.key(3)))  # peaked logits
    path = tmp_path / f"{name}-{kind}.gguf"
    lt.gguf.save(path, model, params, tokenizer=tok, type=kind)
    llm = llama_cpp.Llama(str(path), n_ctx=model.max_seq_len, n_batch=model.max_seq_len, logits_all=True,
                          verbose=False, n_threads=1, seed=0)  # fmt: skip
    return model, params, llm


def greedy(step, ids, n):
    out = list(ids)
    for _ in range(n):
        out.append(int(np.argmax(step(out))))
    return out[len(ids) :]


@pytest.mark.parametrize("name", list(MODELS))
def test_llama_cpp_encodes_lts_ids_and_computes_lts_logits_within_1e_3(name, tok, tmp_path):
    model, params, llm = exported(name, tok, tmp_path)
    text = TEXT[:120] + "<|endoftext|>" + TEXT[120:160]
    ids = tok.encode(text)
    assert llm.tokenize(text.encode(), add_bos=False, special=True) == ids.tolist()
    assert llm.detokenize(ids.tolist(), special=True).decode() == text
    ids = ids[: model.max_seq_len]
    llm.eval(ids.tolist())
    theirs = np.asarray(llm.scores[: len(ids)])
    ours = model.apply(params, ids)
    assert np.abs(ours).max() > 1.0  # logits that are not all near zero
    assert np.abs(theirs - ours).max() < 1e-3


@pytest.mark.parametrize("kind", ["f32", "q8_0"])
@pytest.mark.parametrize("name", ["gpt2", "llama-gqa", "qwen2"])
def test_greedy_decoding_gives_the_same_tokens_in_llama_cpp_and_lt(name, kind, tok, tmp_path):
    model, params, llm = exported(name, tok, tmp_path, kind)
    if kind != "f32":
        _, params, _ = lt.gguf.load(tmp_path / f"{name}-{kind}.gguf")  # the file's own values, as lt holds them
    prompt = tok.encode("the quick brown")

    def theirs(seq):
        llm.reset()
        llm.eval(seq)
        return np.asarray(llm.scores[len(seq) - 1])

    def ours(seq):
        return model.apply(params, np.array(seq))[-1]

    assert greedy(theirs, prompt.tolist(), 24) == greedy(ours, prompt.tolist(), 24)


@pytest.mark.parametrize("text", ["plain ASCII only, no merges at all.", TEXT])
def test_llama_cpp_encodes_a_character_tokenizers_text_to_lts_ids(text, tmp_path):
    char = lt.CharTokenizer.fit(text)
    model = lt.GPT.preset("llama-tiny", vocab_size=char.vocab_size + 3)
    lt.gguf.save(tmp_path / "c.gguf", model, model.init(lt.random.key(0)), tokenizer=char)
    llm = llama_cpp.Llama(str(tmp_path / "c.gguf"), n_ctx=64, verbose=False, vocab_only=True)
    assert llm.tokenize(text.encode(), add_bos=False) == char.encode(text).tolist()
    assert llm.detokenize(char.encode(text).tolist()).decode() == text
