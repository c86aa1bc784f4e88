"""Chat templates render as transformers' apply_chat_template renders them (three families and the
list-of-templates form), in a sandbox, with clear errors; lt chat keeps a conversation in its context."""

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import lt
from lt.hf.chat_template import ChatTemplate, ChatTemplateError, load_chat_template
from lt.hf.tokenizer_export import tokenizer_files, write_tokenizer
from lt.tokenizers import BPETokenizer

pytest.importorskip("jinja2", reason="chat templates need jinja2 (pip install 'lt[serve]')")
pytest.importorskip("tokenizers", reason="needs the tokenizers package (pip install 'lt[hf]')")

SPECIALS = ["<|im_start|>", "<|im_end|>", "<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>",
            "<|eot_id|>", "<s>", "</s>", "<|user|>", "<|assistant|>", "<|system|>"]  # fmt: skip
TEXT = "Hello there! How are you today? I am fine, thank you. Ünïcödé 日本語 " * 20

# Written for these tests in each family's shape: Qwen2's ChatML with a default system message and
# tools as JSON, Llama 3's headers with bos and a date, Mistral's [INST] with its role check,
# Zephyr's line-per-tag layout (trim_blocks / lstrip_blocks decide its newlines).
QWEN2 = """{%- if tools %}{{- '<|im_start|>system\\n# Tools\\n' }}{%- for tool in tools %}{{- tool | tojson }}
{%- endfor %}{{- '<|im_end|>\\n' }}{%- elif messages[0]['role'] == 'system' %}
{{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}
{%- else %}{{- '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}{%- endif %}
{%- for message in messages %}{%- if not (message.role == 'system' and loop.first) %}
{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}{%- endif %}{%- endfor %}
{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"""
LLAMA3 = """{{- bos_token }}{%- set date = strftime_now("%Y") %}
{%- for message in messages %}{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' }}
{{- message['content'] | trim + '<|eot_id|>' }}{%- if loop.last and date | length != 4 %}{% break %}{% endif %}
{%- endfor %}{%- if add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{%- endif %}"""
MISTRAL = """{{ bos_token }}{% for message in messages %}
{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}
{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}
{% endif %}
{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}
{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token }}
{% endif %}{% endfor %}"""
ZEPHYR = """{% for message in messages %}
{% if message['role'] == 'user' %}
{{ '<|user|>\\n' + message['content'] + eos_token }}
{% elif message['role'] == 'system' %}
    {{ '<|system|>\\n' + message['content'] + eos_token }}
{% elif message['role'] == 'assistant' %}
{{ '<|assistant|>\\n'  + message['content'] + eos_token }}
{% endif %}
{% if loop.last and add_generation_prompt %}
{{ '<|assistant|>' }}
{% endif %}
{% endfor %}"""
FAMILIES = {
    "qwen2": (QWEN2, {"eos_token": "<|im_end|>"}),
    "llama3": (LLAMA3, {"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>"}),
    "mistral": (MISTRAL, {"bos_token": "<s>", "eos_token": "</s>"}),
    "zephyr": (ZEPHYR, {"eos_token": {"__type": "AddedToken", "content": "</s>", "special": True}}),  # AddedToken
}
CHAT = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "Hello there!"},
    {"role": "assistant", "content": "  I am fine, thank you.  "},
    {"role": "user", "content": "Ünïcödé 日本語?"},
]


@pytest.fixture(scope="module")
def tokenizer():
    return BPETokenizer.train(TEXT, 320, special_tokens=SPECIALS)


def _model_dir(path, tokenizer, template, specials):
    """A tokenizer directory as to_hf writes it, with a chat template and special tokens in its config."""
    files = tokenizer_files(tokenizer, 256)
    config = {**json.loads(files["tokenizer_config.json"]), "chat_template": template, **specials}
    write_tokenizer({**files, "tokenizer_config.json": json.dumps(config)}, path)
    return path


def _messages(family):
    return CHAT[1:] if family == "mistral" else CHAT  # Mistral's template has no system role


@pytest.mark.parametrize("family", sorted(FAMILIES))
@pytest.mark.parametrize("add_generation_prompt", [True, False])
def test_templates_render_as_transformers_renders_them(family, add_generation_prompt, tokenizer, tmp_path):
    transformers = pytest.importorskip("transformers", reason="compares with transformers' apply_chat_template")
    path = _model_dir(tmp_path, tokenizer, *FAMILIES[family])
    theirs = transformers.AutoTokenizer.from_pretrained(str(path))
    ours = lt.hf.load_tokenizer(path)
    messages = _messages(family)
    text = ours.apply_chat_template(messages, add_generation_prompt=add_generation_prompt, tokenize=False)
    assert text == theirs.apply_chat_template(messages, add_generation_prompt=add_generation_prompt, tokenize=False)
    ids = ours.apply_chat_template(messages, add_generation_prompt=add_generation_prompt)
    expected = theirs.apply_chat_template(messages, add_generation_prompt=add_generation_prompt, tokenize=True)
    expected = expected["input_ids"] if isinstance(expected, dict) or hasattr(expected, "keys") else expected
    assert ids.tolist() == list(expected)
    assert "<|im_start|>" not in text or text.count("<|im_start|>") == len(messages) + add_generation_prompt + (
        family == "qwen2" and messages[0]["role"] != "system"
    )


@settings(max_examples=25, deadline=None)
@given(contents=st.lists(st.text(max_size=20), min_size=1, max_size=5), tools=st.booleans())
def test_any_text_renders_as_transformers_renders_it(contents, tools, tokenizer, tmp_path_factory):
    transformers = pytest.importorskip("transformers", reason="compares with transformers' apply_chat_template")
    path = tmp_path_factory.getbasetemp() / "qwen2-property"
    if not path.exists():
        _model_dir(path.mkdir() or path, tokenizer, *FAMILIES["qwen2"])
    theirs = transformers.AutoTokenizer.from_pretrained(str(path))
    messages = [{"role": ("user", "assistant")[i % 2], "content": c} for i, c in enumerate(contents)]
    tool_list = [{"type": "function", "function": {"name": "ünï", "parameters": {}}}] if tools else None
    ours = lt.hf.load_tokenizer(path).apply_chat_template(messages, tokenize=False, tools=tool_list)
    assert ours == theirs.apply_chat_template(messages, tokenize=False, add_generation_prompt=True, tools=tool_list)


def test_the_list_form_picks_the_default_or_a_named_template(tokenizer, tmp_path):
    listed = [{"name": "default", "template": "D{{ messages[0].content }}"}, {"name": "tool_use", "template": "T"}]
    _model_dir(tmp_path, tokenizer, listed, {})
    assert load_chat_template(tmp_path).render([{"role": "user", "content": "x"}]) == "Dx"
    assert load_chat_template(tmp_path, "tool_use").render([]) == "T"
    with pytest.raises(ChatTemplateError, match="no chat template named 'rag'"):
        load_chat_template(tmp_path, "rag")


def test_a_template_that_refuses_a_conversation_says_why():
    template = ChatTemplate(MISTRAL, {"bos_token": "<s>", "eos_token": "</s>"})
    with pytest.raises(ChatTemplateError, match="roles must alternate"):
        template.render([{"role": "user", "content": "a"}, {"role": "user", "content": "b"}])
    with pytest.raises(ChatTemplateError, match="not valid Jinja2"):
        ChatTemplate("{% for %}").render([])
    with pytest.raises(ChatTemplateError, match=r"messages\[0\] must be a dict"):
        template.render(["hello"])


def test_the_sandbox_refuses_python_internals():
    escape = ChatTemplate("{{ messages.__class__.__mro__[1].__subclasses__() }}")
    with pytest.raises(ChatTemplateError):
        escape.render([])
    mutate = ChatTemplate("{% set x = messages.append(1) %}{{ messages | length }}")
    with pytest.raises(ChatTemplateError):  # an immutable sandbox: no list.append
        mutate.render([{"role": "user", "content": "a"}])


def test_end_tokens_are_the_eos_and_the_turn_ends_the_template_writes():
    assert ChatTemplate(QWEN2, {"eos_token": "<|endoftext|>"}).end_tokens() == ["<|endoftext|>", "<|im_end|>"]
    assert ChatTemplate(LLAMA3, FAMILIES["llama3"][1]).end_tokens() == ["<|eot_id|>"]


def test_a_tokenizer_without_a_template_says_how_to_give_one(tokenizer, tmp_path):
    write_tokenizer(tokenizer_files(tokenizer, 256), tmp_path)
    loaded = lt.hf.load_tokenizer(tmp_path)
    assert loaded.chat_template is None
    with pytest.raises(ValueError, match=r"no chat template.*--chat-template"):
        loaded.apply_chat_template(CHAT)


def test_lt_chat_drops_the_oldest_turns_when_the_context_fills(tokenizer, tmp_path, monkeypatch, capsys):
    from lt import cli

    model = lt.GPT.preset("llama-tiny", vocab_size=tokenizer.vocab_size, max_seq_len=96)
    lt.hf.to_hf(model, model.init(lt.random.key(0)), tmp_path, tokenizer=tokenizer)
    (tmp_path / "template.jinja").write_text(FAMILIES["qwen2"][0])
    lines = iter(["Hello there!", "How are you today? " * 2, "/system Be brief.", "Hi", "/quit"])
    monkeypatch.setattr("builtins.input", lambda prompt="": next(lines))
    argv = ["chat", "--hf", str(tmp_path), "--chat-template", str(tmp_path / "template.jinja"),
            "--max-new-tokens", "12", "--temperature", "0"]  # fmt: skip
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    assert "(dropped the 2 oldest messages" in out and "(conversation reset)" in out
    # greedy: the first reply is generate's continuation of the rendered prompt, cut at the end token
    prompt = ChatTemplate(QWEN2).render([{"role": "user", "content": "Hello there!"}])
    ids = tokenizer.encode(prompt)
    first = lt.generate.generate(model, model.init(lt.random.key(0)), ids, max_new_tokens=12, temperature=0)
    new = first[len(ids) :].tolist()
    end = tokenizer.special_ids["<|im_end|>"]
    shown = tokenizer.decode(np.array(new[: new.index(end)] if end in new else new))
    assert out.split("\n", 1)[1].startswith(shown + "\n")
