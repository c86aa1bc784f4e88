"""The output of bench_llm.py: the machine's description, the table, the targets."""

from __future__ import annotations

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
    try:
        info["cpu_affinity"] = len(os.sched_getaffinity(0))
    except AttributeError:
        pass
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
        info["torch_blas"] = next((w.split("=", 1)[1].rstrip(",") for w in cfg.split() if w.startswith("BLAS_INFO=")), None)
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
            f"{info['cpu_count']} cores, {info['threads']['OMP_NUM_THREADS']} threads, float32")


MEASUREMENT_ORDER = ("matmul peak", "sdpa", "mha", "block", "generate 10", "generate 20", "forward", "train step",
         "train MFU", "KV decode", "train peak memory")


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


def targets(rows) -> dict:
    """The issue's targets: train step >= 1.0x torch at medium, large, gpt2; forward >= 1.0x everywhere."""
    out = {}
    for r in rows:
        if r["ratio"] is not None and (r["measurement"] == "forward" or (
                r["measurement"] == "train step" and r["preset"] in ("medium", "large", "gpt2"))):
            out[f"{r['measurement']} {r['preset']}"] = {"ratio": r["ratio"], "met": r["ratio"] >= 1.0}
    return out
