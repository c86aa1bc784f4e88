"""The OpenAI-compatible HTTP API over a :class:`~lt.serve.scheduler.Scheduler` (Starlette, ASGI).

Routes: ``GET /v1/models`` (and ``/v1/models/{id}``), ``POST /v1/completions``,
``POST /v1/chat/completions`` (``stream: true`` sends server-sent events, ``data: {...}``
chunks then ``data: [DONE]``), ``GET /health``.

Every failure a client causes is a 4xx with OpenAI's body ``{"error": {"message", "type",
"param", "code"}}`` (bad JSON, an unknown field, a value out of range, a prompt past the
context, a body over the limit, a wrong API key); anything else is a 500 with the same body
and the traceback in the server's log, never in the response. The server keeps serving.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import itertools
import json
import sys
import time
import traceback
import uuid
from typing import Any

import attrs
import numpy as np
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, StreamingResponse
from starlette.routing import Route

from .. import random
from ..hf.chat_template import ChatTemplateError
from . import protocol
from .protocol import APIError
from .scheduler import QueueFull, Scheduler, Sequence
from .text import TextStream

__all__ = ["Limits", "Model", "create_app"]


@attrs.frozen
class Limits:
    """What one request may ask for: prompt and output tokens, choices ``n``, body bytes."""

    max_prompt_tokens: int | None = None  # None: the context
    max_tokens: int = 4096
    max_n: int = 8
    max_body_bytes: int = 1 << 20


@attrs.frozen
class Model:
    """A served model: its name, tokenizer, chat template (or None), end token ids, and the scheduler."""

    name: str
    tokenizer: Any
    template: Any  # a ChatTemplate, or None
    end_ids: tuple[int, ...]
    scheduler: Scheduler


def _error(e: APIError) -> JSONResponse:
    return JSONResponse(e.body(), status_code=e.status)


async def _body(request: Request, limit: int) -> dict:
    """The JSON object of the request, read up to ``limit`` bytes (413 past it)."""
    declared = request.headers.get("content-length")
    too_big = APIError(f"the request body is larger than {limit} bytes", status=413, code="request_too_large")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise too_big
    data = bytearray()
    async for chunk in request.stream():
        data += chunk
        if len(data) > limit:
            raise too_big
    try:
        body = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise APIError(
            f"We could not parse the JSON body of your request ({e}); send a JSON object "
            "with Content-Type: application/json"
        ) from None
    return protocol.check_json_object(body)


async def _disconnected(request: Request) -> None:
    """Return once the client has gone (the ASGI server says ``http.disconnect``)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


class _Handler:
    """The state the routes share: the model, the limits, the key, and a request counter for seeds."""

    def __init__(self, model: Model, limits: Limits, api_key: str | None, seed: int):
        self.model, self.limits, self.api_key = model, limits, api_key
        self.key = random.key(seed)  # an unseeded request i draws with fold_in(key, i)
        self.counter = itertools.count()

    # ------------------------------------------------------------------ prompts

    def _prompt_ids(self, options: protocol.Options, chat: bool) -> np.ndarray:
        tok, limit = self.model.tokenizer, self.model.scheduler.vocab_limit
        if chat:
            if self.model.template is None:
                raise APIError(
                    f"the model {self.model.name} has no chat template: use /v1/completions, or start "
                    "lt serve with --chat-template FILE",
                    param="messages",
                )
            messages = [_plain(m) for m in options.prompt]
            return np.asarray(tok.encode(self.model.template.render(messages, add_generation_prompt=True)), np.int64)
        if isinstance(options.prompt, str):
            return np.asarray(tok.encode(options.prompt), np.int64)
        ids = np.asarray(options.prompt, np.int64)
        if ids.min() < 0 or ids.max() >= limit:
            raise APIError(
                f"prompt token ids must be in [0, {limit}), got {int(ids.min())}..{int(ids.max())}", param="prompt"
            )
        return ids

    def _budget(self, options: protocol.Options, T: int) -> int:
        """``max_tokens`` for a prompt of T tokens, or a 400 when the two overflow the context."""
        C, cap = self.model.scheduler.capacity, self.limits.max_prompt_tokens
        if T == 0:
            raise APIError("the prompt is empty: give at least one token", param="prompt")
        if cap is not None and cap < T:
            raise APIError(f"the prompt has {T} tokens, more than this server's limit of {cap}", param="messages",
                           code="context_length_exceeded")  # fmt: skip
        n = options.max_tokens if options.max_tokens is not None else min(C - T, self.limits.max_tokens)
        if T + max(n, 1) > C:
            raise APIError(
                f"This model's maximum context length is {C} tokens. However, you requested {T + n} tokens "
                f"({T} in the prompt, {n} for the completion). Please reduce the prompt or max_tokens.",
                param="max_tokens" if options.max_tokens is not None else "messages",
                code="context_length_exceeded",
            )
        return n

    def _sequences(self, options, ids: np.ndarray, n: int, events: asyncio.Queue) -> list[Sequence]:
        loop = asyncio.get_running_loop()
        seed = options.seed
        rng = random.key(seed) if seed is not None else random.fold_in(self.key, next(self.counter))

        def sink(i):
            return lambda delta, finish, error: loop.call_soon_threadsafe(events.put_nowait, (i, delta, finish, error))

        return [
            Sequence(
                ids,
                max_tokens=n,
                text=TextStream(self.model.tokenizer, options.stop),
                sink=sink(i),
                temperature=options.temperature,
                top_k=options.top_k,
                top_p=options.top_p,
                rng=random.fold_in(rng, i),
                end_ids=self.model.end_ids,
            )
            for i in range(options.n)
        ]

    # ------------------------------------------------------------------ routes

    def authorized(self, request: Request) -> bool:
        if self.api_key is None:
            return True
        given = request.headers.get("authorization", "")
        return hmac.compare_digest(given.encode(), f"Bearer {self.api_key}".encode())

    async def models(self, request: Request):
        card = {"id": self.model.name, "object": "model", "created": 0, "owned_by": "lt"}
        if "model" in request.path_params:
            if request.path_params["model"] != self.model.name:
                raise _no_model(request.path_params["model"], self.model.name)
            return JSONResponse(card)
        return JSONResponse({"object": "list", "data": [card]})

    async def health(self, request: Request):
        """Liveness, with the rows decoding now and the sequences waiting for one."""
        scheduler = self.model.scheduler
        return JSONResponse({"status": "ok", "rows": scheduler.rows_in_use, "waiting": scheduler.waiting})

    async def completions(self, request: Request):
        return await self._generate(request, chat=False)

    async def chat(self, request: Request):
        return await self._generate(request, chat=True)

    async def _generate(self, request: Request, chat: bool):
        body = await _body(request, self.limits.max_body_bytes)
        check = protocol.check_chat if chat else protocol.check_completion
        options = check(body, (self.limits.max_n, self.limits.max_tokens))
        if body.get("model") not in (None, self.model.name):
            raise _no_model(body["model"], self.model.name)
        ids = self._prompt_ids(options, chat)
        n = self._budget(options, len(ids))
        events: asyncio.Queue = asyncio.Queue()
        sequences = self._sequences(options, ids, n, events)
        try:
            self.model.scheduler.submit(*sequences)
        except QueueFull as e:
            raise APIError(f"the server is busy: {e}; retry later", status=429, type="rate_limit_error",
                           code="server_busy") from None  # fmt: skip
        reply = _Reply(chat, self.model.name, len(ids), sequences)
        if options.stream:
            return StreamingResponse(self._stream(reply, events, options.include_usage), media_type="text/event-stream")
        waiting = asyncio.ensure_future(_collect(reply, events))
        gone = asyncio.ensure_future(_disconnected(request))
        try:
            await asyncio.wait({waiting, gone}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            gone.cancel()
            if not waiting.done():  # the client left: free the rows now
                waiting.cancel()
                for seq in sequences:
                    self.model.scheduler.cancel(seq)
        if not waiting.done() or waiting.cancelled():
            return JSONResponse({}, status_code=499)
        return JSONResponse(waiting.result())

    async def _stream(self, reply: _Reply, events: asyncio.Queue, include_usage: bool):
        try:
            if reply.chat:
                for i in range(len(reply.sequences)):
                    yield _sse(reply.chunk(i, {"role": "assistant", "content": ""}, None))
            while not reply.done:
                i, delta, finish, error = await events.get()
                reply.take(i, delta, finish, error)
                if delta or finish:
                    yield _sse(reply.chunk(i, delta, finish))
            if include_usage:
                yield _sse(reply.chunk(None, None, None))
            yield "data: [DONE]\n\n"
        finally:
            for seq in reply.sequences:  # a client gone mid-stream frees its rows
                if seq.finish_reason is None:
                    self.model.scheduler.cancel(seq)


def _plain(message: dict) -> dict:
    """A chat message with its content parts joined into one string (templates expect text)."""
    content = message.get("content")
    if isinstance(content, list):
        return {**message, "content": "".join(part["text"] for part in content)}
    return message


def _no_model(asked, name) -> APIError:
    return APIError(f"The model `{asked}` does not exist; this server serves `{name}`", status=404, param="model",
                    code="model_not_found")  # fmt: skip


def _sse(data: dict) -> str:
    return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"


class _Reply:
    """The response to one request as its choices' text arrives (whole, or as stream chunks)."""

    def __init__(self, chat: bool, model: str, prompt_tokens: int, sequences: list[Sequence]):
        self.chat, self.model, self.prompt_tokens, self.sequences = chat, model, prompt_tokens, sequences
        self.id = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex
        self.created = int(time.time())
        self.texts = [""] * len(sequences)
        self.finish: list[str | None] = [None] * len(sequences)

    @property
    def done(self) -> bool:
        return all(f is not None for f in self.finish)

    def take(self, i: int, delta: str, finish: str | None, error: str | None) -> None:
        if error is not None:
            raise RuntimeError(f"decoding failed: {error}")
        self.texts[i] += delta
        self.finish[i] = finish

    def usage(self) -> dict:
        completion = sum(len(s.tokens) for s in self.sequences)
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": completion,
                "total_tokens": self.prompt_tokens + completion}  # fmt: skip

    def whole(self) -> dict:
        if self.chat:
            choices = [{"index": i, "message": {"role": "assistant", "content": t}, "logprobs": None,
                        "finish_reason": f} for i, (t, f) in enumerate(zip(self.texts, self.finish))]  # fmt: skip
        else:
            choices = [{"index": i, "text": t, "logprobs": None, "finish_reason": f}
                       for i, (t, f) in enumerate(zip(self.texts, self.finish))]  # fmt: skip
        kind = "chat.completion" if self.chat else "text_completion"
        return {"id": self.id, "object": kind, "created": self.created, "model": self.model, "choices": choices,
                "usage": self.usage()}  # fmt: skip

    def chunk(self, i: int | None, delta, finish: str | None) -> dict:
        """One stream chunk for choice ``i``; ``i=None``: the closing chunk with the usage."""
        kind = "chat.completion.chunk" if self.chat else "text_completion"
        out = {"id": self.id, "object": kind, "created": self.created, "model": self.model, "choices": []}
        if i is None:
            out["usage"] = self.usage()
            return out
        if self.chat:
            delta = delta if isinstance(delta, dict) else ({"content": delta} if delta else {})
            out["choices"] = [{"index": i, "delta": delta, "logprobs": None, "finish_reason": finish}]
        else:
            out["choices"] = [{"index": i, "text": delta, "logprobs": None, "finish_reason": finish}]
        return out


async def _collect(reply: _Reply, events: asyncio.Queue) -> dict:
    while not reply.done:
        reply.take(*(await events.get()))
    return reply.whole()


def create_app(model: Model, *, limits: Limits = Limits(), api_key: str | None = None, seed: int = 0) -> Starlette:
    """The ASGI app serving ``model``; its scheduler is started on startup and closed on shutdown."""
    handler = _Handler(model, limits, api_key, seed)

    def guarded(route):
        async def endpoint(request: Request):
            if not handler.authorized(request):
                return _error(APIError("Incorrect API key provided: give it as Authorization: Bearer KEY",
                                       status=401, code="invalid_api_key"))  # fmt: skip
            try:
                return await route(request)
            except APIError as e:
                return _error(e)
            except ChatTemplateError as e:  # the template refused the conversation
                return _error(APIError(str(e), param="messages"))
            except Exception as e:
                traceback.print_exc(file=sys.stderr)
                return _error(APIError(f"internal error: {type(e).__name__}", status=500, type="server_error"))

        return endpoint

    async def not_found(request: Request, exc):
        status = getattr(exc, "status_code", 404)
        what = "no such route" if status == 404 else "method not allowed"
        return _error(APIError(f"{what}: {request.method} {request.url.path}", status=status, code=None))

    routes = [
        Route("/v1/models", guarded(handler.models), methods=["GET"]),
        Route("/v1/models/{model:path}", guarded(handler.models), methods=["GET"]),
        Route("/v1/completions", guarded(handler.completions), methods=["POST"]),
        Route("/v1/chat/completions", guarded(handler.chat), methods=["POST"]),
        Route("/health", guarded(handler.health), methods=["GET"]),
    ]

    @contextlib.asynccontextmanager
    async def lifespan(app):
        model.scheduler.start()
        yield
        model.scheduler.close()

    return Starlette(routes=routes, exception_handlers={404: not_found, 405: not_found}, lifespan=lifespan)
