"""Cold start: the first ``lt generate`` after an install (which compiles the kernels) and the ones after it.

    python benchmarks/bench_cold_start.py            # ~2 minutes on 2 cores
    python benchmarks/bench_cold_start.py --repeats 5

Trains a small run once (``lt train --steps 20``), then times ``lt generate`` as a user runs it,
command start to exit, in fresh processes:

- ``first``: the kernels' disk cache empty (``NUMBA_CACHE_DIR`` a new directory), so every
  kernel the command uses compiles: what the first command after ``pip install`` pays;
- ``cached``: the same command again, the kernels loaded from that cache (best of ``--repeats``);
- ``numpy``: ``LT_KERNELS=numpy``, the reference path, which compiles nothing (best of ``--repeats``).

The target: ``cached`` within 1 s of ``numpy``.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def timed(args: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    subprocess.run(args, check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--preset", default="llama-mini")
    parser.add_argument("--new", type=int, default=50, help="tokens each lt generate writes")
    args = parser.parse_args()
    lt = [sys.executable, "-m", "lt"]
    with tempfile.TemporaryDirectory() as tmp:
        run, cache = Path(tmp) / "run", Path(tmp) / "numba-cache"
        env = {**os.environ, "NUMBA_CACHE_DIR": str(cache)}
        subprocess.run(
            [*lt, "train", "--preset", args.preset, "--steps", "20", "--out", str(run)],
            check=True,
            env={**env, "LT_KERNELS": "numpy"},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        generate = [*lt, "generate", "--run", str(run), "--prompt", "ROMEO:", "--max-new-tokens", str(args.new)]
        first = timed(generate, env)
        cached = min(timed(generate, env) for _ in range(args.repeats))
        numpy = min(timed(generate, {**env, "LT_KERNELS": "numpy"}) for _ in range(args.repeats))
    print(f"lt generate ({args.preset}, {args.new} new tokens), command start to exit:")
    print(f"  first (compiling the kernels): {first:6.2f} s")
    print(f"  cached kernels:                {cached:6.2f} s")
    print(f"  LT_KERNELS=numpy:              {numpy:6.2f} s")
    print(f"  cached - numpy:                {cached - numpy:+6.2f} s (target: within 1 s)")


if __name__ == "__main__":
    main()
