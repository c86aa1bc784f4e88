"""lt and transformers compute the same GPT-2: checkpoints cross in both directions.

A ``GPT2LMHeadModel`` with a seeded random init is saved with ``save_pretrained`` and
read by ``lt.hf.from_hf``; lt params written by ``lt.hf.to_hf`` are loaded by
``GPT2LMHeadModel.from_pretrained``. Each side then gives the same logits (within 1e-4
in float32), the same loss and the same 20 greedy tokens. Skipped without transformers.
"""

import numpy as np
import pytest

import lt
from lt import hf

torch = pytest.importorskip("torch", reason="GPT-2 cross-checks need torch (pip install torch==2.13.0)")
transformers = pytest.importorskip("transformers",
                                   reason="GPT-2 cross-checks need transformers (pip install transformers)")

NEW_TOKENS = 20
transformers.logging.set_verbosity_error()        # its progress bars and advice are not test output
transformers.utils.logging.disable_progress_bar()

# Small GPT2Configs covering each option lt maps: tied or not, the GELU spellings, ReLU,
# a non-default n_inner and layer_norm_epsilon.
SMALL = {
    "tied-gelu_new": dict(vocab_size=97, n_positions=48, n_embd=32, n_layer=2, n_head=4),
    "untied-relu-n_inner": dict(vocab_size=101, n_positions=40, n_embd=24, n_layer=3, n_head=2,
                                n_inner=40, activation_function="relu", tie_word_embeddings=False,
                                layer_norm_epsilon=1e-6),
    "gelu_pytorch_tanh": dict(vocab_size=64, n_positions=32, n_embd=16, n_layer=1, n_head=2,
                              activation_function="gelu_pytorch_tanh"),
}
GPT2 = dict(vocab_size=50257, n_positions=1024, n_embd=768, n_layer=12, n_head=12)


def hf_model(seed: int, **config):
    """A randomly initialised GPT2LMHeadModel in eval mode (no dropout)."""
    torch.manual_seed(seed)
    return transformers.GPT2LMHeadModel(transformers.GPT2Config(**config)).eval()


def hf_logits(model, ids) -> np.ndarray:
    with torch.no_grad():
        return model(torch.as_tensor(ids)).logits.numpy()


def hf_loss(model, ids) -> float:
    with torch.no_grad():
        return float(model(torch.as_tensor(ids), labels=torch.as_tensor(ids)).loss)


def hf_greedy(model, prompt) -> np.ndarray:
    """transformers' greedy decoding; eos unset so that all NEW_TOKENS are produced."""
    prompt = torch.as_tensor(prompt)
    with torch.no_grad():
        out = model.generate(prompt, attention_mask=torch.ones_like(prompt), do_sample=False,
                             max_new_tokens=NEW_TOKENS, eos_token_id=None, pad_token_id=0)
    return out[:, prompt.shape[1]:].numpy()


def lt_greedy(model: lt.GPT, params, prompt) -> np.ndarray:
    """Greedy decoding by hand on ``model.apply``: the argmax of the last position, appended."""
    ids = np.asarray(prompt)
    for _ in range(NEW_TOKENS):
        next_ids = model.apply(params, ids)[:, -1].argmax(-1)              # (B,)
        ids = np.concatenate([ids, next_ids[:, None]], axis=1)
    return ids[:, prompt.shape[1]:]


def lt_generate_if_present(model: lt.GPT, params, prompt):
    """``model.generate`` at temperature 0, where lt has it; otherwise None."""
    if not hasattr(model, "generate"):
        return None
    out = np.asarray(model.generate(params, prompt, rng=lt.random.key(0),
                                    max_new_tokens=NEW_TOKENS, temperature=0))
    return out[..., -NEW_TOKENS:]


def load_in_transformers(path):
    """``from_pretrained`` that fails on any missing, unexpected or mismatched weight."""
    model, info = transformers.GPT2LMHeadModel.from_pretrained(path, output_loading_info=True)
    problems = {k: v for k, v in info.items() if v}
    assert not problems, f"transformers reported {problems} loading {path}"
    assert model.dtype == torch.float32
    return model.eval()


def check_agreement(hf_m, lt_model, params, ids, prompt):
    """Logits within 1e-4, the same loss, the same greedy tokens; returns the max logit gap."""
    ours = lt_model.apply(params, ids)
    theirs = hf_logits(hf_m, ids)
    gap = float(np.max(np.abs(ours - theirs)))
    assert ours.shape == theirs.shape
    assert gap < 1e-4, f"logits differ by {gap}"
    assert float(lt_model.loss(params, ids)) == pytest.approx(hf_loss(hf_m, ids), rel=1e-5, abs=1e-6)
    expected = hf_greedy(hf_m, prompt)
    assert expected.shape == (prompt.shape[0], NEW_TOKENS)
    np.testing.assert_array_equal(lt_greedy(lt_model, params, prompt), expected)
    generated = lt_generate_if_present(lt_model, params, prompt)
    if generated is not None:
        np.testing.assert_array_equal(generated, expected)
    return gap


def random_ids(rng, vocab: int, shape) -> np.ndarray:
    return rng.integers(0, vocab, size=shape, dtype=np.int64)


@pytest.mark.parametrize("case", list(SMALL))
def test_transformers_checkpoint_runs_identically_in_lt(case, tmp_path):
    config = SMALL[case]
    hf_m = hf_model(0, **config)
    hf_m.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").exists()
    model, params = hf.from_hf(tmp_path)
    assert model.tie_embeddings == config.get("tie_word_embeddings", True)
    assert model.activation == ("relu" if config.get("activation_function") == "relu" else "gelu")
    assert model.dropout == 0.1                           # GPT2Config's default rates
    rng = np.random.default_rng(1)
    ids = random_ids(rng, config["vocab_size"], (3, config["n_positions"]))   # the full context
    check_agreement(hf_m, model, params, ids, random_ids(rng, config["vocab_size"], (2, 5)))


@pytest.mark.parametrize("overrides", [dict(), dict(tie_embeddings=False, activation="relu", ffn_dim=48,
                                                    layer_norm_eps=1e-6, dropout=0.2)],
                         ids=["tied", "untied-relu"])
def test_lt_export_runs_identically_in_transformers(overrides, tmp_path):
    model = lt.GPT(vocab_size=113, max_seq_len=36, num_layers=2, num_heads=4, hidden_dim=32, **overrides)
    params = model.init(lt.random.key(3))
    hf.to_hf(model, params, tmp_path)
    hf_m = load_in_transformers(tmp_path)
    assert hf_m.config.tie_word_embeddings == model.tie_embeddings
    assert hf_m.config.resid_pdrop == hf_m.config.attn_pdrop == hf_m.config.embd_pdrop == model.dropout
    if model.tie_embeddings:
        assert hf_m.lm_head.weight.data_ptr() == hf_m.transformer.wte.weight.data_ptr()
    rng = np.random.default_rng(2)
    ids = random_ids(rng, model.vocab_size, (2, model.max_seq_len))
    check_agreement(hf_m, model, params, ids, random_ids(rng, model.vocab_size, (2, 4)))


def test_gpt2_shaped_checkpoint_both_directions(tmp_path):
    """The 124M GPT-2 shape: HF -> lt, then lt's export back into transformers."""
    hf_m = hf_model(0, **GPT2)
    hf_m.save_pretrained(tmp_path / "hf")
    model, params = hf.from_hf(tmp_path / "hf")
    assert model == lt.GPT.preset("gpt2", dropout=0.1)
    rng = np.random.default_rng(0)
    ids = random_ids(rng, GPT2["vocab_size"], (1, 16))
    prompt = random_ids(rng, GPT2["vocab_size"], (1, 4))
    check_agreement(hf_m, model, params, ids, prompt)
    del hf_m
    hf.to_hf(model, params, tmp_path / "lt")
    check_agreement(load_in_transformers(tmp_path / "lt"), model, params, ids, prompt)


def test_float16_and_bfloat16_checkpoints_load_as_their_float32_values(tmp_path):
    """Half-precision checkpoints load into float32 params equal to the stored values."""
    hf_m = hf_model(0, **SMALL["tied-gelu_new"])
    for torch_dtype in (torch.float16, torch.bfloat16):
        hf_m.to(torch_dtype).save_pretrained(tmp_path / str(torch_dtype))
        _, params = hf.from_hf(tmp_path / str(torch_dtype))
        assert params["wte"]["w"].dtype == np.float32
        expected = hf_m.transformer.h[0].attn.c_attn.weight.detach().float().numpy()
        np.testing.assert_array_equal(params["blocks"][0]["attn"]["qkv"]["w"], expected)
