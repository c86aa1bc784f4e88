"""A benchmark on a shared machine: busy processes beside it (``bench_llm.py --busy N``) and the
comparison of such a run with a quiet one (``--compare QUIET.json``).

Issue 15's rule for contention: with one busy process on a 2-core machine every row keeps at
least 0.9x of its quiet lt/torch ratio, and no row of lt's falls below 0.5x its quiet speed.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys

# Each loop runs until killed, or until its parent is gone (a hard kill of the benchmark leaves
# no spinner behind); it prints "ready" once it is spinning.
LOOPS = {
    "python": ("import os, sys\nparent = int(sys.argv[1])\nprint('ready', flush=True)\n"
               "while os.getppid() == parent:\n    x = 0\n    for i in range(100_000):\n        x += i * i\n"),
    "numpy": ("import os, sys\nimport numpy as np\nparent = int(sys.argv[1])\na = np.ones(1 << 20, np.float32)\n"
              "print('ready', flush=True)\nwhile os.getppid() == parent:\n    for _ in range(20):\n"
              "        np.multiply(a, 0.5, out=a)\n        np.add(a, 0.25, out=a)\n        np.exp(a, out=a)\n"),
}
KEEP_RATIO, KEEP_SPEED = 0.9, 0.5          # the bounds: of the quiet lt/torch ratio, of lt's quiet speed
SPEED_UNITS = ("tokens/s", "GFLOP/s")


@contextlib.contextmanager
def busy(n: int, kind: str = "python"):
    """Run ``n`` busy processes (``kind``: a pure-Python loop or NumPy elementwise work, each one
    thread, pinned to no core) for the duration of the block; yields their pids. They are running
    when the block starts, and are killed when it ends, by an exception or Ctrl-C too (they sit in
    their own session, so a Ctrl-C reaches the benchmark alone, which then stops them)."""
    if not isinstance(n, int) or n < 0:
        raise ValueError(f"the number of busy processes must be an integer >= 0, got {n!r}")
    if kind not in LOOPS:
        raise ValueError(f"busy kind must be one of {sorted(LOOPS)}, got {kind!r}")
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1")
    procs: list[subprocess.Popen] = []
    try:
        for _ in range(n):
            procs.append(subprocess.Popen([sys.executable, "-c", LOOPS[kind], str(os.getpid())], env=env,
                                          stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                          stderr=subprocess.DEVNULL, start_new_session=True, text=True))
        for p in procs:
            if p.stdout.readline().strip() != "ready":
                raise RuntimeError(f"busy process {p.pid} ({kind}) did not start (exit status {p.poll()})")
        yield [p.pid for p in procs]
    finally:
        for p in procs:
            p.kill()
        for p in procs:
            p.wait()
            p.stdout.close()


def load_quiet(path: str, schema: str) -> dict:
    """The JSON of a quiet run (``bench_llm.py --json``), checked before the busy run starts."""
    try:
        with open(path) as f:
            quiet = json.load(f)
    except (OSError, ValueError) as e:
        raise ValueError(f"--compare needs the JSON of a quiet bench_llm.py run (--json FILE); "
                         f"cannot read {path!r}: {e}") from None
    if not isinstance(quiet, dict) or quiet.get("schema") != schema or not isinstance(quiet.get("rows"), list):
        raise ValueError(f"--compare: {path!r} is not a bench_llm.py JSON (expected schema {schema!r}, "
                         f"got {quiet.get('schema') if isinstance(quiet, dict) else type(quiet).__name__!r})")
    if quiet.get("busy"):
        print(f"note: {path} was itself run with {quiet['busy']} busy processes")
    return quiet


def _key(row: dict) -> tuple:
    return row["measurement"], row["preset"], row["shape"], row.get("of")


def compare(quiet_rows: list, busy_rows: list) -> list[dict]:
    """Per speed row of both runs: lt/torch busy over quiet (``kept``), lt's busy speed over its quiet
    speed (``own``), and ``flags`` naming the broken rules (kept < 0.9, own < 0.5)."""
    quiet = {_key(r): r for r in quiet_rows}
    out = []
    for r in busy_rows:
        q = quiet.get(_key(r))
        if q is None or r["unit"] not in SPEED_UNITS or not r["lt"] or not q["lt"]:
            continue
        kept = r["ratio"] / q["ratio"] if r["ratio"] and q["ratio"] else None
        own = r["lt"] / q["lt"]
        flags = ([f"lt/torch < {KEEP_RATIO}x quiet"] if kept is not None and kept < KEEP_RATIO else []) + \
            ([f"lt < {KEEP_SPEED}x its quiet speed"] if own < KEEP_SPEED else [])
        out.append({"measurement": r["measurement"], "preset": r["preset"], "shape": r["shape"], "of": r.get("of"),
                    "quiet_ratio": q["ratio"], "busy_ratio": r["ratio"], "kept": kept,
                    "quiet_lt": q["lt"], "busy_lt": r["lt"], "own": own, "flags": flags})
    return out


def format_compare(rows: list[dict], busy_n: int, path: str) -> str:
    """The comparison as a table, with a last line counting the rows that break a rule."""
    def num(x):
        return "-" if x is None else f"{x:.2f}"
    head = (f"{'measurement':18} {'preset':7} {'shape':10} {'quiet':>6} {'busy':>6} {'kept':>6} "
            f"{'lt own':>7}  flags   (lt/torch quiet, busy; kept = busy/quiet; lt own = lt busy/quiet speed)")
    lines = [f"\nbusy ({busy_n}) against quiet ({path}):", head, "-" * 80]
    for c in rows:
        label = c["measurement"] if c["of"] is None else f"{c['measurement']} ({c['of']})"
        lines.append(f"{label:18} {c['preset']:7} {c['shape']:10} {num(c['quiet_ratio']):>6} "
                     f"{num(c['busy_ratio']):>6} {num(c['kept']):>6} {num(c['own']):>7}  {'; '.join(c['flags'])}")
    broken = sum(bool(c["flags"]) for c in rows)
    lines.append(f"{broken} of {len(rows)} rows break the rules (kept >= {KEEP_RATIO}, lt own >= {KEEP_SPEED})")
    return "\n".join(lines)
