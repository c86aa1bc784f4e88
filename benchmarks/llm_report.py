"""The output of bench_llm.py: the machine's description, the table, the targets."""

from __future__ import annotations

import contextlib
import os
import platform
import resource
import time

import numpy as np

import lt

PRESET_ORDER = ("-", "tiny", "small", "mini", "medium", "large", "gpt2")


def machine(torch) -> dict:
    """The machine and the software, for the JSON (torch: the module or None)."""
    info = {"platform": platform.platform(), "python": platform.python_version(),
            "cpu_count": os.cpu_count(), "numpy": np.__version__, "lt": lt.__version__,
            "threads": {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                                                       "OMP_WAIT_POLICY", "LT_NUM_THREADS")},
            "load_average_before": list(os.getloadavg())}
    with contextlib.suppress(AttributeError):
        info["cpu_affinity"] = len(os.sched_getaffinity(0))
    for path, key, field in (("/proc/cpuinfo", "cpu", "model name"), ("/proc/meminfo", "memory", "MemTotal")):
        try:
            with open(path) as f:
                info[key] = next(line.split(":", 1)[1].strip() for line in f if line.startswith(field))
        except (OSError, StopIteration):
            info[key] = None
    try:
        blas = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
        info["numpy_blas"] = f"{blas.get('name')} {blas.get('version')}"
    except Exception:                                     # older NumPy: no dicts mode
        info["numpy_blas"] = None
    if torch:
        cfg = torch.__config__.show()
        info["torch"] = torch.__version__
        info["torch_blas"] = next((w.split("=", 1)[1].rstrip(",") for w in cfg.split() if w.startswith("BLAS_INFO=")),
                                  None)
        info["torch_threads"] = torch.get_num_threads()
    return info


def cpu_sample() -> dict | None:
    """CPU seconds used by the whole machine and by this process (children waited for
    included), for ``others``; None where /proc/stat is missing."""
    try:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
    except OSError:
        return None
    hz = os.sysconf("SC_CLK_TCK")
    user, nice, system, _idle, _iowait, irq, softirq, steal = (fields + [0] * 8)[:8]
    own = sum(getattr(resource.getrusage(who), f) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
              for f in ("ru_utime", "ru_stime"))
    return {"busy": (user + nice + system + irq + softirq) / hz, "steal": steal / hz, "own": own,
            "wall": time.perf_counter()}


def others(start: dict | None, end: dict | None) -> dict | None:
    """Cores used on average by other processes (and stolen by the hypervisor) between two samples."""
    if start is None or end is None:
        return None
    wall = end["wall"] - start["wall"]
    other = (end["busy"] - start["busy"]) - (end["own"] - start["own"])
    return {"cores_used_by_others": max(0.0, other / wall), "cores_stolen": (end["steal"] - start["steal"]) / wall}


def describe(info: dict) -> str:
    """One line: versions, BLAS, CPU, cores and threads."""
    peer = f"torch {info['torch']} ({info['torch_blas']})" if "torch" in info else "no torch"
    return (f"lt {info['lt']}, numpy {info['numpy']} ({info['numpy_blas']}), {peer}; {info['cpu']}, "
            f"{info['cpu_count']} cores, {info['threads']['OMP_NUM_THREADS'] or 2} torch threads, float32")


MEASUREMENT_ORDER = ("matmul peak", "sdpa", "mha", "block", "generate 10", "generate 20", "forward", "train step",
                     "train MFU", "matmul floor", "floor fraction", "KV decode", "train peak memory")


def _num(v) -> str:
    if v is None:
        return "-"
    return f"{v:,.0f}" if abs(v) >= 100 else f"{v:.3g}"


def format_row(row: dict) -> str:
    ratio = "-" if row["ratio"] is None else f"{row['ratio']:.2f}"
    return (f"{row['measurement']:18} {row['preset']:7} {row['shape']:10} {_num(row['lt']):>10} "
            f"{_num(row['torch']):>10} {ratio:>8}  {row['unit']:10} {row['check'] or ''}")


HEADER = (f"{'measurement':18} {'preset':7} {'shape':10} {'lt':>10} {'torch':>10} {'lt/torch':>8}  "
          f"{'unit':10} check")


def table(rows) -> str:
    presets = {p: i for i, p in enumerate(PRESET_ORDER)}
    ordered = sorted(rows, key=lambda r: (MEASUREMENT_ORDER.index(r["measurement"]), presets.get(r["preset"], 99)))
    return "\n".join([HEADER, "-" * len(HEADER)] + [format_row(r) for r in ordered])


FLOOR_TARGETS = {"forward": 0.85, "train step": 0.8}     # lt's fraction of its matmul floor, at FLOOR_PRESETS
FLOOR_PRESETS = ("medium", "large", "gpt2")
MEMORY_TARGET = ("gpt2", 1.1)                             # train peak memory: lt at most 1.1x torch's


def summary(info: dict, mode: str, wall: float, rows, busy: int = 0) -> str:
    """The closing block: the machine, how much other processes used it, the table, and a warning
    where the machine was shared (unless ``busy`` processes were started beside the run on purpose)."""
    shared = info.get("sharing")
    note = "" if shared is None else (f"; other processes used {shared['cores_used_by_others']:.2f} cores "
                                      f"on average ({shared['cores_stolen']:.2f} stolen)")
    lines = [f"\n{describe(info)}; {mode}, {wall:.0f} s{note}", table(rows),
             "ratios are lt/torch: above 1 lt is faster (memory: below 1 lt uses less); "
             "floor fraction: the step's GEMMs alone over the whole step (1 = nothing but matmuls)"]
    if busy:
        verb = "es count" if busy > 1 else " counts"
        lines.append(f"busy mode: the {busy} busy process{verb} among the other processes")
    elif shared and shared["cores_used_by_others"] + shared["cores_stolen"] > 0.1:
        lines.append("warning: the machine was shared during the run; multi-threaded BLAS calls suffer most "
                     "when another process holds a core: rerun on a quiet machine (or measure that on purpose: --busy)")
    return "\n".join(lines)


def targets(rows) -> dict:
    """Issue 15's targets: every speed row (tokens/s) >= 1.0x torch; gpt2's training peak memory
    <= 1.1x torch's; lt's training step >= 0.8 of its matmul floor and its forward >= 0.85, at
    medium, large and gpt2 (small presets are per-call overhead, not matmuls). Each target is
    ``{"value", "target", "met"}``, and ``"ratio"`` (= value) where the value is lt/torch."""
    out = {}
    for r in rows:
        m, preset = r["measurement"], r["preset"]
        if m == "floor fraction" and preset in FLOOR_PRESETS and r["lt"] is not None:
            goal = FLOOR_TARGETS[r["of"]]
            out[f"{r['of']} floor fraction {preset}"] = {"value": r["lt"], "target": goal, "met": r["lt"] >= goal}
        elif r["ratio"] is None or m in ("matmul floor", "floor fraction"):
            continue
        elif r["unit"] == "tokens/s":
            out[f"{m} {preset}"] = {"value": r["ratio"], "ratio": r["ratio"], "target": 1.0, "met": r["ratio"] >= 1.0}
        elif m == "train peak memory" and preset == MEMORY_TARGET[0]:
            goal = MEMORY_TARGET[1]
            out[f"{m} {preset}"] = {"value": r["ratio"], "ratio": r["ratio"], "target": goal, "met": r["ratio"] <= goal}
    return out


def format_targets(met: dict) -> str:
    """One line: each target's value, its goal, and whether it was met."""
    def one(key, v):
        sign = "<=" if key.startswith("train peak memory") else ">="
        unit = "x torch" if "ratio" in v else " of floor"
        return f"{key} {v['value']:.2f}{unit} ({sign} {v['target']:g}) {'met' if v['met'] else 'MISSED'}"
    return "targets: " + ", ".join(one(k, v) for k, v in met.items())
