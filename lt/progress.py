"""A one-line progress bar: step, bar, fields, rate and time left, in a terminal or a notebook.

In a terminal the line is redrawn in place with a carriage return. In a Jupyter notebook
(whose stderr is no terminal) it is one rich output of the cell, replaced in place through
IPython's display ids: plain text for any front end, an HTML ``<progress>`` bar where HTML
renders. Elsewhere (logs, pipes) it is silent: the training loop's log lines say it all.
Nothing beyond the standard library and, in a notebook, the IPython that runs it.
"""

from __future__ import annotations

import html
import sys
import time

__all__ = ["Progress", "in_notebook"]


def _clock(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    h, rest = divmod(seconds, 3600)
    return f"{h}:{rest // 60:02d}:{rest % 60:02d}" if h else f"{rest // 60}:{rest % 60:02d}"


def in_notebook() -> bool:
    """Whether this process is a Jupyter kernel (IPython's kernel shell): rich output is shown
    there, though its stderr is not a terminal. Imports nothing unless ipykernel is loaded."""
    if "ipykernel" not in sys.modules:
        return False
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    return shell is not None and hasattr(shell, "kernel")


class _TerminalView:
    """The bar as one line of ``stream``, redrawn over itself after a carriage return."""

    def __init__(self, stream):
        self.stream = stream

    def draw(self, done: int, total: int, text: str) -> None:
        self.stream.write(f"\r{text}  ")
        self.stream.flush()

    def clear_line(self) -> None:
        self.stream.write("\r\033[K")

    def end(self) -> None:
        self.stream.write("\n")
        self.stream.flush()


class _NotebookView:
    """The bar as one display of the cell, updated in place (``display_id``): text and HTML."""

    def __init__(self):
        from IPython.display import display

        self._display, self._handle = display, None

    def draw(self, done: int, total: int, text: str) -> None:
        head, _, tail = text.partition("] ")
        bundle = {
            "text/plain": text,
            "text/html": f"<progress value='{done}' max='{max(total, 1)}' style='width:16em'></progress> "
            f"<code>{html.escape(head.split(' [')[0])} {html.escape(tail)}</code>",
        }
        if self._handle is None:
            self._handle = self._display(bundle, raw=True, display_id=True)
        else:
            self._handle.update(bundle, raw=True)

    def clear_line(self) -> None:
        pass  # printed lines go below the display; nothing to clear

    def end(self) -> None:
        pass


class Progress:
    """``update(done, **fields)`` redraws ``done/total``; ``write(line)`` prints a line; ``close()`` ends.

    Where it draws: on ``stream`` when one is given or stderr is a terminal; else in the
    notebook when this is a Jupyter kernel; else nowhere. ``enabled`` forces it on (a
    terminal-style line on stderr outside a notebook) or off; None decides as above.
    """

    def __init__(self, total: int, start: int = 0, stream=None, enabled: bool | None = None, width: int = 24):
        self.total, self.start, self.width = total, start, width
        self.stream = stream or sys.stderr
        self._view: _TerminalView | _NotebookView | None
        if stream is None and not self.stream.isatty() and in_notebook():
            self._view = _NotebookView() if enabled is not False else None
        else:
            terminal = self.stream.isatty() if enabled is None else enabled
            self._view = _TerminalView(self.stream) if terminal else None
        self.enabled = self._view is not None
        self._t0 = time.perf_counter()
        self._last = 0.0

    def line(self, done: int, now: float | None = None, **fields) -> str:
        """The bar's text at ``done``: ``3/10 [#######.....] loss 2.0 1.5 it/s eta 0:04 (done at 17:02:11)``."""
        now = time.perf_counter() if now is None else now
        frac = done / self.total if self.total else 1.0
        filled = int(self.width * frac)
        rate = (done - self.start) / max(now - self._t0, 1e-9)
        eta = (self.total - done) / rate if rate > 0 else 0.0
        shown = " ".join(f"{k} {v}" for k, v in fields.items())
        finish = time.strftime("%H:%M:%S", time.localtime(time.time() + eta))
        return (
            f"{done:>{len(str(self.total))}}/{self.total} [{'#' * filled}{'.' * (self.width - filled)}] "
            f"{shown} {rate:.1f} it/s eta {_clock(eta)} (done at {finish})"
        )

    def update(self, done: int, force: bool = False, **fields) -> None:
        now = time.perf_counter()
        if not self.enabled or (not force and now - self._last < 0.1 and done < self.total):
            return
        self._last = now
        assert self._view is not None
        self._view.draw(done, self.total, self.line(done, now, **fields))

    def write(self, line: str) -> None:
        """Print a full line above the bar (below it in a notebook)."""
        if self._view is not None:
            self._view.clear_line()
        print(line, flush=True)

    def close(self) -> None:
        if self._view is not None:
            self._view.end()
