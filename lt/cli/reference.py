"""The ``lt`` command's reference, as Markdown: every command's ``--help``, made from the parser.

The documentation's CLI reference page is this text (``docs/hooks.py`` puts it in at build
time), so the page says what ``--help`` says, flag for flag and default for default. The help
is wrapped at :data:`WIDTH` columns, as a terminal of ``WIDTH + 2`` columns shows it."""

from __future__ import annotations

import argparse
import functools
import re

from .common import build_parser

__all__ = ["WIDTH", "reference"]

WIDTH = 88  # argparse wraps help at the terminal's width less 2; this page's code blocks hold 88
_COLOURS = re.compile(r"\x1b\[[0-9;]*m")  # Python 3.14's argparse colours help for a terminal


def _commands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    """The subcommands' parsers by name, in the order ``lt --help`` lists them."""
    (action,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(action.choices)


def _help(parser: argparse.ArgumentParser) -> str:
    """``parser``'s ``--help`` text at :data:`WIDTH` columns, without terminal colours."""
    parser.formatter_class = functools.partial(argparse.HelpFormatter, width=WIDTH)
    return _COLOURS.sub("", parser.format_help()).rstrip()


def reference() -> str:
    """Markdown: a section per command (``lt`` itself first), each its ``--help`` in a text block."""
    parser = build_parser()  # a fresh parser, so changing its formatter touches nothing else
    sections = [("lt", parser), *((f"lt {name}", sub) for name, sub in _commands(parser).items())]
    return "\n".join(f"## `{title}`\n\n```text\n{_help(p)}\n```\n" for title, p in sections)
