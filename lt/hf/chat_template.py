"""Chat templates: a conversation as the one prompt string an instruct model was trained on.

A Hugging Face model directory keeps its template in ``tokenizer_config.json``'s
``chat_template``: a Jinja2 string, or a list of ``{"name", "template"}`` entries of which
``"default"`` is the one used (others, e.g. ``"tool_use"``, by name). Rendering follows
``transformers``' ``apply_chat_template``, so a template gives the text it gives there:

- Jinja2's *immutable sandbox* (a template is untrusted code from a download), with
  ``trim_blocks`` and ``lstrip_blocks`` on and the ``loopcontrols`` extension;
- the helpers templates call: ``raise_exception(msg)``, ``strftime_now(fmt)``, a ``tojson``
  filter that keeps non-ASCII text and takes ``indent``/``separators``/``sort_keys``, and
  ``{% generation %}`` blocks (rendered as their body);
- the variables: ``messages``, ``add_generation_prompt``, ``tools``, ``documents``, the
  special tokens of the config (``bos_token``, ``eos_token``, ...) as strings, and any extra
  keyword.

Jinja2 is imported when a template is first rendered (the ``serve`` extra), never by ``lt.hf``.
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

from .files import model_file, read_json

__all__ = ["ChatTemplate", "ChatTemplateError", "load_chat_template"]

_SPECIAL_KEYS = ("bos_token", "eos_token", "unk_token", "pad_token", "sep_token", "cls_token", "mask_token")
# end-of-turn markers of common families; one that the template writes ends a reply too
_TURN_ENDS = ("<|im_end|>", "<|eot_id|>", "<|end|>", "<end_of_turn>", "<|endoftext|>", "</s>", "<|end_of_text|>")


class ChatTemplateError(ValueError):
    """A template that cannot be read, or that refuses a conversation (its ``raise_exception``)."""


def _token_text(value) -> str | None:
    """A special token as written in a config: a string, or an AddedToken dict with ``content``."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None


def _pick(template, name: str | None, where: str) -> str:
    """The template source: the string itself, or the entry ``name`` (default ``"default"``) of the list form."""
    if isinstance(template, str):
        return template
    if isinstance(template, list) and all(isinstance(t, dict) and {"name", "template"} <= t.keys() for t in template):
        named = {t["name"]: t["template"] for t in template}
        key = name or "default"
        if key in named and isinstance(named[key], str):
            return named[key]
        raise ChatTemplateError(f"{where}: no chat template named {key!r} (it has {sorted(named)})")
    raise ChatTemplateError(
        f"{where}: chat_template must be a string or a list of {{'name', 'template'}} entries, "
        f"got {type(template).__name__}"
    )


class ChatTemplate:
    """A Jinja2 chat template and the special tokens it is rendered with.

    ``source``: the template text; ``special_tokens``: ``{"bos_token": "<s>", ...}``.
    :meth:`render` gives the prompt text; :meth:`end_tokens` the strings that end a reply.
    """

    def __init__(self, source: str, special_tokens: dict[str, str] | None = None, where: str = "chat template"):
        if not isinstance(source, str) or not source.strip():
            raise ChatTemplateError(f"{where}: the chat template is empty; expected Jinja2 text")
        self.source = source
        self.special_tokens = dict(special_tokens or {})
        self.where = where
        self._compiled = None

    @classmethod
    def from_config(cls, config: dict, where: str = "tokenizer_config.json", name: str | None = None):
        """The template of a ``tokenizer_config.json`` dict, or None when it has none."""
        if config.get("chat_template") is None:
            return None
        specials = {k: t for k in _SPECIAL_KEYS if (t := _token_text(config.get(k))) is not None}
        return cls(_pick(config["chat_template"], name, where), specials, where)

    @classmethod
    def from_file(cls, path, special_tokens: dict[str, str] | None = None) -> ChatTemplate:
        """A template written in a Jinja file (``--chat-template FILE``), or a ``.json`` holding a
        tokenizer config (or just ``{"chat_template": ...}``)."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no chat template at {path}: expected a Jinja2 text file")
        text = path.read_text(encoding="utf-8")
        if path.suffix == ".json":
            found = cls.from_config(json.loads(text), str(path))
            if found is None:
                raise ChatTemplateError(f"{path} has no chat_template")
            found.special_tokens = {**(special_tokens or {}), **found.special_tokens}
            return found
        return cls(text, special_tokens, str(path))

    def _template(self):
        if self._compiled is None:
            self._compiled = _compile(self.source, self.where)
        return self._compiled

    def render(self, messages, *, add_generation_prompt: bool = True, tools=None, documents=None, **extra) -> str:
        """The prompt text of ``messages`` (a list of ``{"role": str, "content": ...}`` dicts);
        ``add_generation_prompt`` appends the header that opens the assistant's reply."""
        _check_messages(messages)
        import jinja2

        variables = {**self.special_tokens, **extra}
        try:
            return self._template().render(
                messages=messages,
                tools=tools,
                documents=documents,
                add_generation_prompt=add_generation_prompt,
                **variables,
            )
        except jinja2.TemplateError as e:  # raise_exception(...), or a template bug
            raise ChatTemplateError(f"{self.where}: {e}") from None

    def end_tokens(self) -> list[str]:
        """Strings that end an assistant reply: the eos token, and the common end-of-turn markers
        this template writes (``<|im_end|>``, ``<|eot_id|>``, ...)."""
        ends = [t for t in _TURN_ENDS if t in self.source]
        eos = self.special_tokens.get("eos_token")
        return ([eos] if eos and eos not in ends else []) + ends

    def __repr__(self) -> str:
        return f"ChatTemplate({self.where!r}, {len(self.source)} characters)"


def _check_messages(messages) -> None:
    if not isinstance(messages, (list, tuple)):
        raise ChatTemplateError(
            f"messages must be a list of {{'role', 'content'}} dicts, got {type(messages).__name__}"
        )
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            raise ChatTemplateError(f"messages[{i}] must be a dict with a string 'role', got {m!r:.80}")


def _compile(source: str, where: str):
    """The template compiled in an immutable sandbox with transformers' helpers."""
    try:
        import jinja2
        from jinja2.ext import Extension, loopcontrols
        from jinja2.sandbox import ImmutableSandboxedEnvironment
    except ImportError:
        raise ImportError("chat templates need Jinja2: pip install 'lt[serve]' (or pip install jinja2)") from None

    class Generation(Extension):
        """``{% generation %}...{% endgeneration %}``: marks the assistant's text; renders its body."""

        tags = {"generation"}  # noqa: RUF012 (Jinja2 reads a set)

        def parse(self, parser):
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
            return jinja2.nodes.CallBlock(self.call_method("_body"), [], [], body).set_lineno(lineno)

        def _body(self, caller):
            return caller()

    def raise_exception(message):
        raise jinja2.TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[Generation, loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    try:
        return env.from_string(source)
    except jinja2.TemplateSyntaxError as e:
        raise ChatTemplateError(
            f"{where}: the chat template is not valid Jinja2 (line {e.lineno}: {e.message})"
        ) from None


def load_chat_template(path, name: str | None = None) -> ChatTemplate | None:
    """The chat template of a model directory's ``tokenizer_config.json`` (or a standalone
    ``chat_template.jinja`` beside it, as newer transformers save it), or None when it has none."""
    path = Path(path)
    config: dict = {}
    if (path / "tokenizer_config.json").is_file():
        found = read_json(model_file(path, "tokenizer_config.json"), "the tokenizer config (tokenizer_config.json)")
        config = found if isinstance(found, dict) else {}
    if config.get("chat_template") is None and (path / "chat_template.jinja").is_file():
        text = model_file(path, "chat_template.jinja").read_text(encoding="utf-8")
        config = {**config, "chat_template": text}
    return ChatTemplate.from_config(config, str(path / "tokenizer_config.json"), name)
