"""The progress bar: the terminal line as before, and one in-place display in a Jupyter notebook.

(tests/test_notebooks.py runs a notebook whose training shows the bar in a real kernel.)"""

import io
import re

import pytest

from lt import progress
from lt.progress import Progress


class Terminal(io.StringIO):
    def isatty(self):
        return True


def test_a_terminal_gets_the_line_redrawn_after_carriage_returns_and_ended_by_a_newline(monkeypatch):
    monkeypatch.setattr(progress.sys, "stderr", Terminal())
    bar = Progress(10)                                  # no stream, no flag: stderr is a terminal
    assert bar.enabled
    bar.update(4, force=True, loss="1.5000")
    bar.update(5)                                       # within 0.1 s of the last draw: skipped
    bar.update(10, loss="1.2500")                       # the last step is always drawn
    bar.write("step 10 | loss 1.2500")
    bar.close()
    text = progress.sys.stderr.getvalue()
    frames = text.split("\r")
    assert frames[0] == "" and len(frames) == 4
    assert frames[1].startswith(" 4/10 [#########...............] loss 1.5000 ")
    assert re.match(r"10/10 \[#{24}\] loss 1\.2500 \d+\.\d it/s eta 0:00 \(done at \d\d:\d\d:\d\d\)  $", frames[2])
    assert frames[3] == "\033[K\n"                     # the line cleared for the log line, then ended


def test_a_pipe_outside_a_notebook_gets_nothing(monkeypatch):
    monkeypatch.setattr(progress.sys, "stderr", io.StringIO())
    bar = Progress(10)
    bar.update(10, force=True, loss="1.0")
    bar.close()
    assert not bar.enabled and progress.sys.stderr.getvalue() == ""


class FakeHandle:
    def __init__(self, shown):
        self.shown = shown

    def update(self, bundle, raw=False):
        assert raw
        self.shown.append(("update", bundle))


@pytest.fixture
def notebook(monkeypatch):
    """A Jupyter kernel as the bar sees one: stderr no terminal, IPython's display recorded."""
    display = pytest.importorskip("IPython.display", reason="the notebook bar draws through IPython")
    shown = []

    def fake_display(bundle, raw=False, display_id=None):
        assert raw and display_id is True
        shown.append(("display", bundle))
        return FakeHandle(shown)
    monkeypatch.setattr(display, "display", fake_display)
    monkeypatch.setattr(progress, "in_notebook", lambda: True)
    monkeypatch.setattr(progress.sys, "stderr", io.StringIO())
    return shown


def test_in_a_notebook_the_bar_is_one_display_updated_in_place(notebook, capsys):
    bar = Progress(8, start=2)
    assert bar.enabled
    bar.update(3, force=True, loss="2.0")
    bar.write("step 3 | loss 2.0")
    bar.update(8, loss="1.0")
    bar.close()
    assert [kind for kind, _ in notebook] == ["display", "update"]
    first, last = notebook[0][1], notebook[1][1]
    assert first["text/plain"].startswith("3/8 [#########...............] loss 2.0 ")
    assert last["text/plain"].startswith("8/8 [########################] loss 1.0 ")
    assert "<progress value='8' max='8'" in last["text/html"] and "loss 1.0" in last["text/html"]
    assert "#" not in last["text/html"]                 # the HTML shows the <progress> element instead
    assert capsys.readouterr().out == "step 3 | loss 2.0\n"
    assert progress.sys.stderr.getvalue() == ""         # nothing raw on the kernel's stderr


def test_in_a_notebook_the_bar_can_still_be_turned_off_or_sent_to_a_stream(notebook):
    off = Progress(5, enabled=False)
    off.update(5, force=True)
    stream = io.StringIO()
    to_stream = Progress(5, stream=stream, enabled=True)
    to_stream.update(5, force=True)
    assert notebook == [] and not off.enabled
    assert stream.getvalue().startswith("\r5/5 [")


def test_html_in_a_field_is_escaped(notebook):
    bar = Progress(2)
    bar.update(1, force=True, note="<b>x</b>")
    assert "&lt;b&gt;x&lt;/b&gt;" in notebook[0][1]["text/html"]


def test_in_notebook_is_false_in_a_plain_process():
    assert progress.in_notebook() is False
