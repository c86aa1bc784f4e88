"""MkDocs hook: render the Sphinx roles in lt's docstrings (:func:`x`) as plain code, ``x``.

lt's docstrings cross-reference with Sphinx roles; Markdown keeps the role's name as text
(":func:" before the code span). This drops it, and a leading ``~`` shows the last name only.
"""

import re

ROLE = re.compile(r":(?:py:)?(?:func|class|meth|mod|data|attr|exc|obj|const):<code>(~?)([^<]*)</code>")


def _code(m: re.Match) -> str:
    name = m[2].rsplit(".", 1)[-1] if m[1] else m[2]
    return f"<code>{name}</code>"


def on_page_content(html: str, **kwargs) -> str:
    return ROLE.sub(_code, html)
