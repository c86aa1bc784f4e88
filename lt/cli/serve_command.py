"""``lt serve``: an OpenAI-compatible HTTP server for a model (``pip install 'lt[serve]'``).

    lt serve --hf DIR|NAME [--host 127.0.0.1] [--port 8000] [--api-key KEY]
    lt serve --run DIR [--chat-template FILE]

Routes ``/v1/models``, ``/v1/completions``, ``/v1/chat/completions`` (see :mod:`lt.serve.app`);
requests decode together in one batch (:mod:`lt.serve.scheduler`). It listens on localhost
unless ``--host`` says otherwise; ``--api-key`` makes every route require
``Authorization: Bearer KEY`` (``LT_API_KEY`` in the environment does the same).
"""

from __future__ import annotations

import os
import sys

from .chat_command import add_model_flags, load_chat_model
from .common import UsageError

__all__ = ["add_serve_parser", "cmd_serve"]


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise ValueError(f"must be >= 1, got {value}")
    return value


def add_serve_parser(sub) -> None:
    """The ``serve`` subcommand's flags, on ``sub`` (``build_parser``'s subparsers)."""
    s = sub.add_parser("serve", help="serve a model over the OpenAI HTTP API (completions, chat, streaming)")
    add_model_flags(s)
    s.add_argument("--host", default="127.0.0.1", help="address to listen on (default %(default)s: this machine only)")
    s.add_argument("--port", type=int, default=8000, help="port (default %(default)s)")
    s.add_argument("--api-key", metavar="KEY", help="require Authorization: Bearer KEY on every route")
    s.add_argument("--name", help="the model's name in the API (default: the directory's name)")
    s.add_argument("--max-rows", type=_positive, default=8,
                   help="sequences decoded together; each step costs this many rows (default %(default)s)")  # fmt: skip
    s.add_argument("--context", type=_positive, metavar="N",
                   help="positions per row, prompt and reply (default: the model's max_seq_len)")  # fmt: skip
    s.add_argument("--max-prompt-tokens", type=_positive, metavar="N", help="longest prompt (default: the context)")
    s.add_argument("--max-tokens", type=_positive, default=4096, help="most tokens one reply may ask for")
    s.add_argument("--max-n", type=_positive, default=8, help="most choices (n) one request may ask for")
    s.add_argument("--max-waiting", type=_positive, default=256, help="sequences that may wait for a row (429 past it)")
    s.add_argument("--max-body-bytes", type=_positive, default=1 << 20, help="largest request body (413 past it)")
    s.add_argument("--seed", type=int, default=0, help="key of the requests that give no seed (default %(default)s)")


def build_app(args):
    """The ASGI app of ``args`` (a model loaded, its scheduler not yet started)."""
    try:
        from ..serve.app import Limits, Model, create_app
    except ImportError as e:
        raise UsageError(f"lt serve needs the serve extra: pip install 'lt[serve]' ({e})") from None
    from ..serve.scheduler import Scheduler

    chat = load_chat_model(args)
    context = args.context or chat.model.max_seq_len
    if context > chat.model.max_seq_len:
        raise UsageError(f"--context {context} is past the model's max_seq_len={chat.model.max_seq_len}")
    scheduler = Scheduler(chat.model, chat.params, max_rows=args.max_rows, capacity=context,
                          vocab_limit=chat.vocab_limit, max_waiting=args.max_waiting)  # fmt: skip
    model = Model(args.name or chat.name, chat.tokenizer, chat.template, chat.end_ids, scheduler)
    limits = Limits(args.max_prompt_tokens, args.max_tokens, args.max_n, args.max_body_bytes)
    api_key = args.api_key or os.environ.get("LT_API_KEY") or None
    return create_app(model, limits=limits, api_key=api_key, seed=args.seed), model


def cmd_serve(args) -> int:
    app, model = build_app(args)
    import uvicorn

    template = "its chat template" if model.template is not None else "no chat template (completions only)"
    print(f"lt serve: {model.name} with {template} on http://{args.host}:{args.port}/v1", file=sys.stderr, flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", access_log=False)
    return 0
