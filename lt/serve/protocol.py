"""The OpenAI request bodies ``lt serve`` accepts, checked: every bad field is an :class:`APIError`.

The checks follow OpenAI's API: a field it does not know is refused ("Unrecognized request
argument supplied"), values out of range name the field (``param``), a prompt that with
``max_tokens`` overflows the context is ``context_length_exceeded``. Fields OpenAI has and
lt does not implement (``logprobs``, penalties, ``logit_bias``, ...) are accepted at their
neutral values only, and refused otherwise with the reason, never ignored.
"""

from __future__ import annotations

import math
from typing import Any

import attrs

__all__ = ["APIError", "Options", "check_completion", "check_chat", "check_json_object"]


class APIError(Exception):
    """An error a client caused or should know of: HTTP ``status`` and OpenAI's error body."""

    def __init__(self, message: str, *, status: int = 400, type: str = "invalid_request_error", param=None, code=None):
        super().__init__(message)
        self.status, self.type, self.param, self.code = status, type, param, code

    def body(self) -> dict:
        return {"error": {"message": str(self), "type": self.type, "param": self.param, "code": self.code}}


@attrs.frozen
class Options:
    """What a completion or chat request asks for, checked (prompt not yet tokenized)."""

    prompt: Any  # a str, a list of token ids, or (chat) the list of messages
    max_tokens: int | None
    temperature: float
    top_p: float | None
    top_k: int | None
    n: int
    stream: bool
    stop: tuple[str, ...]
    seed: int | None
    include_usage: bool  # stream_options.include_usage: a last chunk with the usage


_COMMON = {"model", "max_tokens", "temperature", "top_p", "top_k", "n", "stream", "stop", "seed", "user",
           "stream_options", "presence_penalty", "frequency_penalty", "logit_bias", "logprobs"}  # fmt: skip
_COMPLETION = _COMMON | {"prompt", "echo", "best_of", "suffix"}
_CHAT = _COMMON | {"messages", "max_completion_tokens", "top_logprobs", "response_format", "tools", "tool_choice",
                   "parallel_tool_calls", "metadata", "store", "modalities"}  # fmt: skip
# accepted only at these values (what OpenAI does when they are left out)
_NEUTRAL = {"presence_penalty": (0, 0.0), "frequency_penalty": (0, 0.0), "logit_bias": ({},), "logprobs": (False, 0),
            "echo": (False,), "best_of": (1,), "suffix": ("",), "top_logprobs": (0,), "tools": ([],),
            "tool_choice": ("none", "auto"), "parallel_tool_calls": (True, False), "store": (False,),
            "response_format": ({"type": "text"},), "modalities": (["text"],)}  # fmt: skip


def check_json_object(body) -> dict:
    if not isinstance(body, dict):
        raise APIError(f"the request body must be a JSON object, got {type(body).__name__}")
    return body


def _number(body, name, low, high, default):
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise APIError(f"{name} must be a number, got {value!r:.60}", param=name)
    if not low <= value <= high:
        raise APIError(f"{value} is not a valid {name}: it must be between {low} and {high}", param=name)
    return value


def _integer(body, name, low, high, default):
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int):
        raise APIError(f"{name} must be an integer, got {value!r:.60}", param=name)
    if not low <= value <= high:
        raise APIError(f"{value} is not a valid {name}: it must be between {low} and {high}", param=name)
    return value


def _boolean(body, name) -> bool:
    value = body.get(name, False)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise APIError(f"{name} must be true or false, got {value!r:.60}", param=name)
    return value


def _stop(body) -> tuple[str, ...]:
    stop = body.get("stop")
    if stop is None:
        return ()
    stop = [stop] if isinstance(stop, str) else stop
    if not isinstance(stop, list) or not all(isinstance(s, str) for s in stop) or len(stop) > 4:
        raise APIError("stop must be a string or a list of at most 4 strings", param="stop")
    return tuple(s for s in stop if s)


def _common(body: dict, known: set[str], limits) -> dict:
    """The fields both endpoints share, checked; ``limits``: the server's (max_n, max_tokens)."""
    for name in body:
        if name not in known:
            raise APIError(f"Unrecognized request argument supplied: {name}", param=name)
    for name, allowed in _NEUTRAL.items():
        if body.get(name) is not None and body[name] not in allowed:
            raise APIError(
                f"{name}={body[name]!r:.60} is not supported by lt serve (it accepts {allowed[0]!r} only)", param=name
            )
    max_n, max_tokens = limits
    options = body.get("stream_options")
    if options is not None and (not isinstance(options, dict) or set(options) - {"include_usage"}):
        raise APIError("stream_options must be an object with at most include_usage", param="stream_options")
    stream = _boolean(body, "stream")
    if options is not None and not stream:
        raise APIError("stream_options is only allowed when stream is true", param="stream_options")
    seed = body.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**63):
        raise APIError(f"seed must be an integer in [0, 2**63), got {seed!r:.60}", param="seed")
    return dict(
        temperature=float(_number(body, "temperature", 0, 2, 1.0)),
        top_p=_number(body, "top_p", 0, 1, None),
        top_k=_integer(body, "top_k", 1, 2**31, None),
        n=_integer(body, "n", 1, max_n, 1),
        stream=stream,
        stop=_stop(body),
        seed=seed,
        include_usage=bool((options or {}).get("include_usage", False)),
        max_tokens=_integer(body, "max_tokens", 1, max_tokens, None),
    )


def _top_p(options: dict) -> dict:
    if options["top_p"] == 0:
        raise APIError("0 is not a valid top_p: it must be greater than 0 and at most 1", param="top_p")
    return options


def check_completion(body: dict, limits) -> Options:
    """``/v1/completions``: ``prompt`` is a string or a list of token ids (one prompt)."""
    options = _top_p(_common(body, _COMPLETION, limits))
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], (str, list)):
        prompt = prompt[0]  # a batch of one prompt
    if not (
        isinstance(prompt, str)
        or (isinstance(prompt, list) and prompt and all(isinstance(t, int) and not isinstance(t, bool) for t in prompt))
    ):
        raise APIError(
            "prompt must be a string or a non-empty list of token ids (one prompt: lt serve does not batch prompts "
            "in one request; send one request per prompt)",
            param="prompt",
        )
    if options["max_tokens"] is None:
        options["max_tokens"] = 16  # OpenAI's default for completions
    return Options(prompt=prompt, **options)


def check_chat(body: dict, limits) -> Options:
    """``/v1/chat/completions``: ``messages`` a non-empty list of ``{"role", "content"}``."""
    options = _top_p(_common(body, _CHAT, limits))
    if body.get("max_completion_tokens") is not None:
        if body.get("max_tokens") is not None:
            raise APIError("give max_tokens or max_completion_tokens, not both", param="max_completion_tokens")
        options["max_tokens"] = _integer(body, "max_completion_tokens", 1, limits[1], None)
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise APIError("messages must be a non-empty list of {role, content} objects", param="messages")
    roles = ("system", "developer", "user", "assistant", "tool")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in roles:
            raise APIError(f"messages[{i}] must be an object whose role is one of {roles}", param=f"messages[{i}]")
        content = m.get("content")
        if isinstance(content, list):  # content parts: text only
            if not all(isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)
                       for p in content):  # fmt: skip
                raise APIError(
                    f"messages[{i}].content: lt serve takes text parts only ({{'type': 'text', 'text': ...}})",
                    param=f"messages[{i}].content",
                )
        elif not isinstance(content, str) and not (content is None and m["role"] == "assistant"):
            raise APIError(f"messages[{i}].content must be a string or a list of text parts", param=f"messages[{i}]")
    return Options(prompt=messages, **options)
