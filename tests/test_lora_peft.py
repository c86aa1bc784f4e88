"""lt's LoRA adapters and PEFT's compute the same model: adapter files cross both ways.

For GPT-2, Llama, Qwen2 and Mistral twins (a random lt model written with ``lt.hf.to_hf`` and
loaded by transformers): adapters with every A and B drawn (as after training) saved by
``lt.lora.save_peft`` and loaded by ``peft.PeftModel.from_pretrained`` give logits within 1e-4
(float32) of lt's; adapters PEFT made (``init_lora_weights=False``: B drawn too) and saved
load with ``lt.lora.load_peft`` and agree likewise, rank and alpha patterns and rsLoRA
included. Skipped without torch, transformers and peft.
"""

import json

import numpy as np
import pytest

import lt
from lt import hf, lora, tree

torch = pytest.importorskip("torch", reason="PEFT cross-checks need torch (pip install torch==2.13.0)")
transformers = pytest.importorskip("transformers", reason="PEFT cross-checks need transformers")
peft = pytest.importorskip("peft", reason="PEFT cross-checks need peft (pip install lt[crosscheck])")
transformers.logging.set_verbosity_error()
pytestmark = [  # PEFT's notes on GPT-2's Conv1D, and on a pattern that names the other family's module
    pytest.mark.filterwarnings("ignore:fan_in_fan_out:UserWarning"),
    pytest.mark.filterwarnings("ignore:The following (rank|alpha)_pattern keys:RuntimeWarning"),
]

RAW = dict(vocab_size=90, max_seq_len=32, num_layers=2, num_heads=4, hidden_dim=32, ffn_dim=48)
ROPE = dict(norm="rms", positional="rope", activation="swiglu", layer_norm_eps=1e-6, tie_embeddings=False)
MODELS = {
    "gpt2": {},
    "llama": dict(ROPE, bias=False, num_kv_heads=2),
    "qwen2": dict(ROPE, bias=False, qkv_bias=True, num_kv_heads=1),
    "mistral": dict(ROPE, bias=False, sliding_window=6, num_kv_heads=2),
}
IDS = np.random.default_rng(0).integers(0, 90, size=(2, 12))


def twin(name, tmp_path):
    """(lt model, params, transformers model) of the same random weights."""
    model = lt.GPT(**RAW, **MODELS[name])
    params = tree.map(lambda x: x * 4 if x.ndim == 2 else x, model.init(lt.random.key(3)))
    hf.to_hf(model, params, tmp_path / "base")
    hf_model = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "base", attn_implementation="eager")
    return model, params, hf_model.float().eval()


def trained(adapted, seed=5):
    """Adapters with every leaf drawn (B too), as training leaves them."""
    ad = adapted.init(lt.random.key(seed))
    return tree.map(lambda x: np.random.default_rng(seed + x.size).normal(0, 0.3, x.shape).astype(x.dtype), ad)


def peft_logits(peft_model):
    with torch.no_grad():
        return peft_model(torch.tensor(IDS)).logits.numpy()


@pytest.mark.parametrize("targets", ["attn.q,attn.v", "all-linear", "attn.qkv,ffn", "attn.k,attn.proj"])
@pytest.mark.parametrize("name", list(MODELS))
def test_lt_adapters_saved_in_peft_format_run_identically_in_peft(name, targets, tmp_path):
    model, params, hf_model = twin(name, tmp_path)
    adapted = lora.adapt(model, rank=4, alpha=12, targets=targets)
    adapters = trained(adapted)
    ours = adapted.apply(params, adapters, IDS)
    assert np.abs(ours - model.apply(params, IDS)).max() > 1e-2  # the adapters do change the model
    lora.save_peft(tmp_path / "adapter", adapted, adapters)
    theirs = peft_logits(peft.PeftModel.from_pretrained(hf_model, tmp_path / "adapter").eval())
    np.testing.assert_allclose(ours, theirs, atol=1e-4, rtol=0)


def make_peft_adapter(hf_model, path, **config):
    torch.manual_seed(7)
    cfg = peft.LoraConfig(task_type="CAUSAL_LM", init_lora_weights=False, **config)
    peft_model = peft.get_peft_model(hf_model, cfg).eval()
    peft_model.save_pretrained(path)
    return peft_logits(peft_model)


PEFT_CONFIGS = {
    "default": dict(r=4, lora_alpha=8),
    "all-linear": dict(r=4, lora_alpha=16, target_modules="all-linear"),
    "patterns": dict(
        r=4,
        lora_alpha=8,
        target_modules="all-linear",
        use_rslora=False,
        rank_pattern={"o_proj": 2, "c_proj": 2},
        alpha_pattern={"o_proj": 3, "c_fc": 5},
    ),
    "rslora-one-layer": dict(r=4, lora_alpha=8, use_rslora=True, layers_to_transform=[1]),
}


@pytest.mark.parametrize("config", list(PEFT_CONFIGS))
@pytest.mark.parametrize("name", list(MODELS))
def test_peft_made_adapters_load_in_lt_and_agree(name, config, tmp_path):
    model, params, hf_model = twin(name, tmp_path)
    theirs = make_peft_adapter(hf_model, tmp_path / "adapter", **PEFT_CONFIGS[config])
    adapted, adapters = lora.load_peft(tmp_path / "adapter", model)
    ours = adapted.apply(params, adapters, IDS)
    assert np.abs(theirs - model.apply(params, IDS)).max() > 1e-2
    np.testing.assert_allclose(ours, theirs, atol=1e-4, rtol=0)


def test_gpt2_q_and_v_blocks_write_one_c_attn_adapter_of_twice_the_rank(tmp_path):
    model = lt.GPT(**RAW)
    adapted = lora.adapt(model, rank=4, alpha=12, targets=("attn.q", "attn.v"))
    lora.save_peft(tmp_path, adapted, trained(adapted))
    config = json.loads((tmp_path / "adapter_config.json").read_text())
    assert config["target_modules"] == ["c_attn"]
    assert config["rank_pattern"] == {"c_attn": 8} and config["alpha_pattern"] == {"c_attn": 24.0}
    assert config["fan_in_fan_out"] is True
    back, adapters = lora.load_peft(tmp_path, model)
    assert back.lora.targets == ("attn.qkv",) and back.lora.rank == 8 and back.lora.scale == 3.0
    b = np.asarray(tree.get(adapters, "blocks.0.attn.qkv.lora.b"))  # (8, 96): [q | k | v] columns
    assert not b[:, 32:64].any()  # no update in the key columns


def test_gpt2_output_projections_are_named_apart_so_peft_adapts_only_the_one_trained(tmp_path):
    adapted = lora.adapt(lt.GPT(**RAW), rank=2, targets="attn.proj")
    lora.save_peft(tmp_path, adapted, trained(adapted))
    assert json.loads((tmp_path / "adapter_config.json").read_text())["target_modules"] == ["attn.c_proj"]
