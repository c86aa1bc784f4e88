"""``lt chat``: talk to an instruct model in the terminal, the reply streamed token by token.

    lt chat --hf DIR|NAME [--system TEXT] [--temperature 0.7] [--max-new-tokens 512]
    lt chat --run DIR --chat-template FILE          a run has no template of its own
    lt chat --gguf FILE                             a GGUF file (lt.gguf)

The conversation is rendered by the model's chat template (:mod:`lt.hf.chat_template`) each
turn. When it no longer fits the context with room for a reply, the oldest turns are dropped
(the system message stays) and a line says so. A reply ends on the template's end tokens,
a ``--stop`` string, or ``--max-new-tokens``. Typed lines starting with ``/``:
``/reset`` (forget the conversation), ``/system TEXT`` (a new system message, and reset),
``/quit`` (or end of input).

:func:`load_chat_model` is shared with ``lt serve``.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import attrs
import numpy as np

from .. import random
from .common import UsageError

__all__ = ["add_chat_parser", "cmd_chat", "add_model_flags", "load_chat_model", "ChatModel"]


@attrs.frozen
class ChatModel:
    """What chatting and serving need: the model and params, tokenizer, template (or None),
    the ids that end a reply, and a name."""

    model: Any
    params: Any = attrs.field(repr=False)
    tokenizer: Any = attrs.field(repr=False)
    template: Any  # a ChatTemplate, or None
    end_ids: tuple[int, ...]
    name: str

    @property
    def vocab_limit(self) -> int:
        """Ids the tokenizer knows (a model's table may be padded past them)."""
        return min(self.model.vocab_size, self.tokenizer.vocab_size)


def add_model_flags(p) -> None:
    """``--hf`` / ``--run`` / ``--gguf`` and ``--chat-template``: the model to chat with or serve."""
    source = p.add_mutually_exclusive_group()
    source.add_argument("--hf", metavar="DIR|NAME", help="a Hugging Face model directory or hub name")
    source.add_argument("--run", metavar="DIR", help="a run directory (lt train --out)")
    source.add_argument("--gguf", metavar="FILE", help="a GGUF file (llama.cpp's format)")
    p.add_argument(
        "--chat-template",
        metavar="FILE",
        help="a Jinja2 chat template (or a tokenizer_config.json holding one), in place of the model's own",
    )


def _token_id(tokenizer, text: str) -> int | None:
    """The id of a token written as text, when it is one token."""
    special = getattr(tokenizer, "special_ids", {})
    if text in special:
        return special[text]
    ids = np.asarray(tokenizer.encode(text)).reshape(-1)
    return int(ids[0]) if ids.size == 1 else None


def _end_ids(tokenizer, template, path: Path | None) -> tuple[int, ...]:
    """Ids that end a reply: the template's end tokens, and generation_config.json's eos ids."""
    ends = set()
    for text in template.end_tokens() if template is not None else ():
        if (i := _token_id(tokenizer, text)) is not None:
            ends.add(i)
    if path is not None and (path / "generation_config.json").is_file():
        from ..hf.files import model_file, read_json

        eos = read_json(model_file(path, "generation_config.json"), "generation_config.json").get("eos_token_id")
        ends.update(int(i) for i in (eos if isinstance(eos, list) else [eos]) if isinstance(i, int))
    if not ends and (i := getattr(tokenizer, "special_ids", {}).get("<|endoftext|>")) is not None:
        ends.add(i)  # GPT-2's end of text, and lt's runs trained with it
    return tuple(sorted(i for i in ends if i < tokenizer.vocab_size))


def _load_gguf(path):
    """``(model, params, tokenizer, template)`` of a GGUF file: the template is its
    ``tokenizer.chat_template``, with its bos/eos tokens' text."""
    from .. import gguf
    from ..hf.chat_template import ChatTemplate

    model, params, tokenizer = gguf.load(path)
    if tokenizer is None:
        raise UsageError(f"{path} holds no tokenizer lt can run (see the warning above); chat needs one")
    with gguf.GGUFFile(path) as f:
        meta = dict(f.metadata)
    source = meta.get("tokenizer.chat_template")
    specials = {f"{name}_token": tokenizer.decode(np.array([meta[f"tokenizer.ggml.{name}_token_id"]]))
                for name in ("bos", "eos") if isinstance(meta.get(f"tokenizer.ggml.{name}_token_id"), int)}  # fmt: skip
    template = ChatTemplate(source, specials, f"{path}: tokenizer.chat_template") if isinstance(source, str) else None
    return model, params, tokenizer, template


def load_chat_model(args) -> ChatModel:
    """The model of ``--hf``, ``--run`` or ``--gguf``, with its template (``--chat-template`` wins)."""
    from ..hf.chat_template import ChatTemplate, load_chat_template

    path, template = None, None
    if args.hf is not None:
        from .. import hf

        path = hf.resolve(args.hf)
        (model, params), tokenizer = hf.from_hf(path), hf.load_tokenizer(path)
        template, name = load_chat_template(path), Path(args.hf).name
    elif args.run is not None:
        from .. import runs

        _, model, params, tokenizer = runs.load_run(args.run)
        name = Path(args.run).resolve().name
    elif args.gguf is not None:
        model, params, tokenizer, template = _load_gguf(args.gguf)
        name = Path(args.gguf).stem
    else:
        raise UsageError("give the model: --hf DIR|NAME, --run DIR or --gguf FILE")
    if args.chat_template is not None:
        specials = template.special_tokens if template is not None else {}
        template = ChatTemplate.from_file(args.chat_template, specials)
    return ChatModel(model, params, tokenizer, template, _end_ids(tokenizer, template, path), name)


def add_chat_parser(sub) -> None:
    """The ``chat`` subcommand's flags, on ``sub`` (``build_parser``'s subparsers)."""
    c = sub.add_parser("chat", help="talk to an instruct model, the reply streamed as it is generated")
    add_model_flags(c)
    c.add_argument("--system", metavar="TEXT", help="a system message to start with")
    c.add_argument("--max-new-tokens", type=int, default=512, help="longest reply in tokens (default %(default)s)")
    c.add_argument("--temperature", type=float, default=0.7, help="0 is greedy (default %(default)s)")
    c.add_argument("--top-k", type=int, metavar="K", help="sample from the K likeliest tokens only")
    c.add_argument("--top-p", type=float, metavar="P", help="sample from the likeliest tokens of mass P only")
    c.add_argument("--seed", type=int, default=0, help="seed of the sampling key (default %(default)s)")
    c.add_argument("--stop", action="append", default=[], metavar="TEXT", help="end a reply at TEXT (repeatable)")


class Conversation:
    """The messages so far, and the prompt ids of what fits: old turns dropped past ``budget`` tokens."""

    def __init__(self, chat: ChatModel, system: str | None, budget: int):
        self.chat, self.system, self.budget = chat, system, budget
        self.turns: list[dict] = []

    def messages(self) -> list[dict]:
        head = [{"role": "system", "content": self.system}] if self.system else []
        return head + self.turns

    def prompt(self) -> tuple[np.ndarray, int]:
        """The prompt ids, and how many old messages were dropped to fit the budget."""
        dropped = 0
        while True:
            text = self.chat.template.render(self.messages(), add_generation_prompt=True)
            ids = np.asarray(self.chat.tokenizer.encode(text), np.int64)
            if len(ids) <= self.budget or len(self.turns) <= 1:
                return ids, dropped
            cut = 2 if len(self.turns) > 2 else 1  # a user turn and its reply
            self.turns, dropped = self.turns[cut:], dropped + cut


def reply(chat: ChatModel, ids, args, rng, out) -> str:
    """Stream one reply to ``out``; returns its text (stop strings and end tokens cut)."""
    from ..generate import stream
    from ..serve.text import TextStream

    room = chat.model.max_seq_len - len(ids)
    text = TextStream(chat.tokenizer, tuple(args.stop))
    said = ""
    for tok in stream(chat.model, chat.params, ids, rng=rng, max_new_tokens=min(args.max_new_tokens, room),
                      temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                      vocab_limit=chat.vocab_limit):  # fmt: skip
        if tok in chat.end_ids:
            break
        delta, stopped = text.push(tok)
        out.write(delta)
        out.flush()
        said += delta
        if stopped:
            return said
    rest = text.flush()
    out.write(rest + "\n")
    return said + rest


def cmd_chat(args) -> int:
    chat = load_chat_model(args)
    if chat.template is None:
        raise UsageError(
            f"{chat.name} has no chat template (tokenizer_config.json's chat_template): give one with "
            "--chat-template FILE"
        )
    if args.max_new_tokens < 1 or args.max_new_tokens >= chat.model.max_seq_len:
        raise UsageError(f"--max-new-tokens must be in [1, {chat.model.max_seq_len}) (the model's context)")
    convo = Conversation(chat, args.system, chat.model.max_seq_len - args.max_new_tokens)
    key, turn = random.key(args.seed), 0
    out = sys.stdout
    out.write(f"lt chat: {chat.name}. /reset, /system TEXT, /quit\n")
    while True:
        try:
            line = input("> ")
        except EOFError:
            out.write("\n")
            return 0
        if line.strip() in ("/quit", "/exit"):
            return 0
        if line.strip() == "/reset" or line.startswith("/system"):
            if line.startswith("/system"):
                convo.system = line[len("/system") :].strip() or None
            convo.turns = []
            out.write("(conversation reset)\n")
            continue
        if not line.strip():
            continue
        convo.turns.append({"role": "user", "content": line})
        ids, dropped = convo.prompt()
        if dropped:
            out.write(
                f"(dropped the {dropped} oldest messages to fit the context of {chat.model.max_seq_len} tokens)\n"
            )
        if len(ids) + 1 > chat.model.max_seq_len:
            convo.turns.pop()
            out.write("(that message alone is longer than the context; say something shorter)\n")
            continue
        text = reply(chat, ids, args, random.fold_in(key, turn), out)
        convo.turns.append({"role": "assistant", "content": text})
        turn += 1
