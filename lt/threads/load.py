"""The machine: how many cores this process may run on, and how many of them other processes
keep busy (from ``/proc/stat``, less this process's own CPU time).

lt reads the load so that a busy neighbour gets its core back: one BLAS thread that other work
deschedules stalls the others, which spin-wait for it (a two-core training step once ran 80x
slower). A reading costs ~20 us, so it is taken at most every half second and shared by all
threads; where ``/proc/stat`` does not exist (not Linux) or its first line is not the 7 counts
expected, the others count as idle.
"""

from __future__ import annotations

import os
import threading
import time

SAMPLE_EVERY = 0.5  # seconds between two readings of /proc/stat


def cores() -> int:
    """The cores this process may run on (its CPU affinity; the CPU count where there is none)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _sample() -> tuple[float, float, float] | None:
    """(now, CPU seconds the machine spent busy, CPU seconds this process spent), or None."""
    try:
        with open("/proc/stat", "rb") as f:
            fields = f.readline().split()
    except OSError:
        return None
    # "cpu" then at least 7 counts (user nice system idle iowait irq softirq); anything else: no reading
    if len(fields) < 8 or fields[0] != b"cpu" or not all(x.isdigit() for x in fields[1:8]):
        return None
    user, nice, system, _idle, _iowait, irq, softirq = (int(x) for x in fields[1:8])
    busy = (user + nice + system + irq + softirq) / os.sysconf("SC_CLK_TCK")
    own = time.process_time()  # this process's CPU time, all its threads (no `resource` on Windows)
    return time.monotonic(), busy, own


class _Load:
    """The last two readings and the cores others kept busy between them."""

    def __init__(self) -> None:
        self.last: tuple[float, float, float] | None = None
        self.others = 0.0
        self.lock = threading.Lock()

    def cores_used_by_others(self) -> float:
        last = self.last
        if last is not None and time.monotonic() - last[0] < SAMPLE_EVERY:
            return self.others
        if not self.lock.acquire(blocking=False):  # another thread is reading: its last figure
            return self.others
        try:
            sample = _sample()
            if sample is None:
                return 0.0
            if self.last is not None and sample[0] > self.last[0]:
                wall = sample[0] - self.last[0]
                self.others = max(0.0, ((sample[1] - self.last[1]) - (sample[2] - self.last[2])) / wall)
            self.last = sample
            return self.others
        finally:
            self.lock.release()


_load = _Load()


def cores_used_by_others() -> float:
    """Cores other processes kept busy over the last sampling interval (0.0 at the first call)."""
    return _load.cores_used_by_others()
