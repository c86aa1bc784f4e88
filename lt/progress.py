"""A one-line progress bar for terminals: step, bar, fields, rate and time left.

Redrawn in place with a carriage return when the stream is a terminal; silent otherwise
(logs and pipes get the training loop's plain log lines instead).
"""

from __future__ import annotations

import sys
import time


def _clock(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    h, rest = divmod(seconds, 3600)
    return f"{h}:{rest // 60:02d}:{rest % 60:02d}" if h else f"{rest // 60}:{rest % 60:02d}"


class Progress:
    """``update(done, **fields)`` redraws ``done/total``; ``close()`` ends the line."""

    def __init__(self, total: int, start: int = 0, stream=None, enabled: bool | None = None, width: int = 24):
        self.total, self.start, self.width = total, start, width
        self.stream = stream or sys.stderr
        self.enabled = self.stream.isatty() if enabled is None else enabled
        self._t0 = time.perf_counter()
        self._last = 0.0

    def update(self, done: int, force: bool = False, **fields) -> None:
        now = time.perf_counter()
        if not self.enabled or (not force and now - self._last < 0.1 and done < self.total):
            return
        self._last = now
        frac = done / self.total if self.total else 1.0
        filled = int(self.width * frac)
        rate = (done - self.start) / max(now - self._t0, 1e-9)
        eta = (self.total - done) / rate if rate > 0 else 0.0
        shown = " ".join(f"{k} {v}" for k, v in fields.items())
        finish = time.strftime("%H:%M:%S", time.localtime(time.time() + eta))
        self.stream.write(f"\r{done:>{len(str(self.total))}}/{self.total} "
                          f"[{'#' * filled}{'.' * (self.width - filled)}] {shown} "
                          f"{rate:.1f} it/s eta {_clock(eta)} (done at {finish})  ")
        self.stream.flush()

    def write(self, line: str) -> None:
        """Print a full line above the bar."""
        if self.enabled:
            self.stream.write("\r\033[K")
        print(line, flush=True)

    def close(self) -> None:
        if self.enabled:
            self.stream.write("\n")
            self.stream.flush()
