"""A live `lt serve` (a subprocess on a free port, a tiny model) driven by the official openai client."""

import json
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

import lt
from lt.tokenizers import BPETokenizer

openai = pytest.importorskip("openai", reason="drives the server with the openai client (pip install 'lt[serve-test]')")
httpx = pytest.importorskip("httpx", reason="sends raw requests with httpx (pip install 'lt[serve-test]')")
for _name in ("starlette", "uvicorn", "jinja2", "tokenizers"):
    pytest.importorskip(_name, reason="lt serve needs pip install 'lt[serve]' and 'lt[hf]'")

KEY = "sk-test-key"
CHATML = ("{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}{% endfor %}"
          "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")  # fmt: skip
TEXT = "Hello there! How are you today? I am fine, thank you. Ünïcödé 日本語 " * 20
CONTEXT = 96


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """``(base_url, tokenizer)`` of a running lt serve of a tiny Llama-style model with a ChatML template."""
    path = tmp_path_factory.mktemp("model")
    tokenizer = BPETokenizer.train(TEXT, 300, special_tokens=["<|im_start|>", "<|im_end|>"])
    model = lt.GPT.preset("llama-tiny", vocab_size=tokenizer.vocab_size, max_seq_len=CONTEXT)
    lt.hf.to_hf(model, model.init(lt.random.key(0)), path, tokenizer=tokenizer)
    config = json.loads((path / "tokenizer_config.json").read_text())
    (path / "tokenizer_config.json").write_text(
        json.dumps({**config, "chat_template": CHATML, "eos_token": "<|im_end|>"})
    )
    port = _free_port()
    argv = [sys.executable, "-m", "lt", "serve", "--hf", str(path), "--port", str(port), "--api-key", KEY,
            "--name", "tiny", "--max-rows", "4", "--max-n", "3", "--max-body-bytes", "4096"]  # fmt: skip
    server = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{url}/health", headers={"Authorization": f"Bearer {KEY}"}).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(
                    f"lt serve did not start: {server.stdout.read() if server.poll() is not None else ''}"
                )
            time.sleep(0.2)
        yield url, lt.hf.load_tokenizer(path)
    finally:
        server.kill()
        server.wait(timeout=10)


@pytest.fixture
def client(served):
    return openai.OpenAI(base_url=served[0] + "/v1", api_key=KEY, max_retries=0)


def _post(served, route, body, key=KEY, raw=None):
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    return httpx.post(served[0] + route, headers=headers, content=raw if raw is not None else json.dumps(body))


CHAT = [{"role": "user", "content": "Hello there!"}]


def test_models_lists_the_served_model(client):
    assert [m.id for m in client.models.list()] == ["tiny"]
    assert client.models.retrieve("tiny").owned_by == "lt"


def test_a_completion_is_the_greedy_continuation_with_its_usage(client, served):
    tokenizer = served[1]
    reply = client.completions.create(model="tiny", prompt="Hello there", max_tokens=12, temperature=0)
    prompt_ids = tokenizer.encode("Hello there")
    assert reply.usage.prompt_tokens == len(prompt_ids)
    assert reply.usage.completion_tokens + reply.usage.prompt_tokens == reply.usage.total_tokens
    choice = reply.choices[0]
    assert choice.finish_reason in ("stop", "length") and reply.usage.completion_tokens <= 12
    again = client.completions.create(model="tiny", prompt=prompt_ids.tolist(), max_tokens=12, temperature=0)
    assert again.choices[0].text == choice.text  # token ids or text: one prompt


def test_chat_streaming_adds_up_to_the_unstreamed_reply(client):
    options = dict(model="tiny", messages=CHAT, max_tokens=20, temperature=0.9, seed=7)
    whole = client.chat.completions.create(**options)
    chunks = list(client.chat.completions.create(**options, stream=True, stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    assert chunks[0].choices[0].delta.role == "assistant"
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == [whole.choices[0].finish_reason]
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens
    assert chunks[-1].usage.prompt_tokens == whole.usage.prompt_tokens > 0


def test_the_same_seed_gives_the_same_text_and_n_gives_distinct_choices(client):
    def ask(seed, n=1):
        reply = client.completions.create(model="tiny", prompt="How", max_tokens=15, temperature=1.0, seed=seed, n=n)
        return [c.text for c in reply.choices]

    assert ask(3) == ask(3)
    three = ask(3, n=3)
    assert three[0] == ask(3)[0] and len(set(three)) > 1  # choice i draws with fold_in(key(seed), i)
    assert ask(3) != ask(4)


def test_stop_strings_end_the_text_before_them(client):
    full = client.completions.create(model="tiny", prompt="Hello", max_tokens=20, temperature=0).choices[0].text
    stop = full[5:7]
    cut = client.completions.create(model="tiny", prompt="Hello", max_tokens=20, temperature=0, stop=[stop])
    assert cut.choices[0].text == full[: full.find(stop)] and cut.choices[0].finish_reason == "stop"


def test_eight_concurrent_greedy_requests_equal_eight_sequential_ones(client):
    prompts = ["Hello", "How are", "I am fine", "thank you", "Ünïcödé", "today?", "there! How", "日本語"]

    def ask(prompt):
        return client.completions.create(model="tiny", prompt=prompt, max_tokens=16, temperature=0).choices[0].text

    sequential = [ask(p) for p in prompts]
    concurrent = [None] * len(prompts)

    def worker(i):
        concurrent[i] = ask(prompts[i])

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(prompts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert concurrent == sequential


@pytest.mark.parametrize(
    "body, status, param",
    [
        ({"model": "tiny", "prompt": "a", "temperature": 3}, 400, "temperature"),
        ({"model": "tiny", "prompt": "a", "top_p": 0}, 400, "top_p"),
        ({"model": "tiny", "prompt": "a", "max_tokens": 0}, 400, "max_tokens"),
        ({"model": "tiny", "prompt": "a", "n": 4}, 400, "n"),
        ({"model": "tiny", "prompt": "a", "frobnicate": 1}, 400, "frobnicate"),
        ({"model": "tiny", "prompt": "a", "logprobs": 3}, 400, "logprobs"),
        ({"model": "tiny", "prompt": "a", "stop": 5}, 400, "stop"),
        ({"model": "tiny", "prompt": "a", "seed": "x"}, 400, "seed"),
        ({"model": "tiny", "prompt": [1, 10**6]}, 400, "prompt"),
        ({"model": "tiny", "prompt": "a", "max_tokens": CONTEXT}, 400, "max_tokens"),
        ({"model": "gpt-9", "prompt": "a"}, 404, "model"),
        ({"model": "tiny", "prompt": "Hello " * 100}, 400, "max_tokens"),
    ],
)
def test_bad_completions_get_openai_errors_and_the_server_keeps_serving(served, client, body, status, param):
    response = _post(served, "/v1/completions", body)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["param"] == param and error["message"]
    assert "Traceback" not in response.text
    assert client.completions.create(model="tiny", prompt="a", max_tokens=2, temperature=0).choices


def test_bad_bodies_and_chats_get_openai_errors(served, client):
    bad_json = _post(served, "/v1/chat/completions", None, raw=b"{not json")
    assert bad_json.status_code == 400 and "parse the JSON" in bad_json.json()["error"]["message"]
    big = _post(served, "/v1/completions", {"model": "tiny", "prompt": "a" * 5000})
    assert big.status_code == 413 and big.json()["error"]["code"] == "request_too_large"
    roles = _post(served, "/v1/chat/completions", {"model": "tiny", "messages": [{"role": "wizard", "content": "x"}]})
    assert roles.status_code == 400 and roles.json()["error"]["param"] == "messages[0]"
    with pytest.raises(openai.BadRequestError, match="maximum context length") as e:
        client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "Hello " * 80}])
    assert e.value.body["code"] == "context_length_exceeded"
    assert httpx.get(served[0] + "/v2/nothing", headers={"Authorization": f"Bearer {KEY}"}).json()["error"]
    assert client.chat.completions.create(model="tiny", messages=CHAT, max_tokens=2).choices


def test_the_api_key_guards_every_route(served):
    wrong = openai.OpenAI(base_url=served[0] + "/v1", api_key="sk-wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        wrong.models.list()
    with pytest.raises(openai.AuthenticationError):
        wrong.completions.create(model="tiny", prompt="a", max_tokens=2)
    assert httpx.get(served[0] + "/health").status_code == 401
    assert httpx.get(served[0] + "/health").json()["error"]["code"] == "invalid_api_key"


def test_a_client_that_leaves_mid_stream_frees_its_row(served, client):
    headers = {"Authorization": f"Bearer {KEY}"}
    body = {"model": "tiny", "prompt": "Hello", "max_tokens": 80, "temperature": 1.0, "seed": 1, "stream": True}
    with httpx.stream("POST", served[0] + "/v1/completions", json=body, headers=headers) as response:
        assert next(response.iter_lines()).startswith("data: ")
    deadline = time.monotonic() + 20
    while (health := httpx.get(served[0] + "/health", headers=headers).json())["rows"] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert health == {"status": "ok", "rows": 0, "waiting": 0}
    assert np.all([client.completions.create(model="tiny", prompt="a", max_tokens=2).choices])
