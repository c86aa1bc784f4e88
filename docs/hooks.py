"""MkDocs hooks: the CLI reference made from the parser, and Sphinx roles as plain code.

A page's ``<!-- lt-cli-reference -->`` line becomes every ``lt`` command's ``--help``
(:func:`lt.cli.reference.reference`), so the page cannot drift from the parser.

lt's docstrings cross-reference with Sphinx roles (:func:`x`); Markdown keeps the role's name
as text (":func:" before the code span). This drops it, and a leading ``~`` shows the last
name only.
"""

import re

CLI_REFERENCE = "<!-- lt-cli-reference -->"
ROLE = re.compile(r":(?:py:)?(?:func|class|meth|mod|data|attr|exc|obj|const):<code>(~?)([^<]*)</code>")


def _code(m: re.Match) -> str:
    name = m[2].rsplit(".", 1)[-1] if m[1] else m[2]
    return f"<code>{name}</code>"


def on_page_content(html: str, **kwargs) -> str:
    return ROLE.sub(_code, html)


def on_page_markdown(markdown: str, **kwargs) -> str:
    if CLI_REFERENCE not in markdown:
        return markdown
    from lt.cli.reference import reference

    return markdown.replace(CLI_REFERENCE, reference())
