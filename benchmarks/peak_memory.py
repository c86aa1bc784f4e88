"""Peak memory of a training step, one library per process (bench_llm.py runs this).

    python benchmarks/peak_memory.py lt|torch SPEC [SPEC ...]

Each SPEC is ``name:vocab,max_seq_len,layers,heads,hidden,ffn,batch,seq``. The process
imports its one library (lt, or torch with the nanoGPT-style twin; never both), then for
each SPEC forks a fresh child that builds the model and its AdamW optimizer and runs two
training steps (forward + backward + AdamW) on a batch of random token ids. It prints one
JSON line per SPEC: ``{"name", "library", "peak_mib", "baseline_mib"}``.

What is measured: the child's resident-set high-water mark (``VmHWM``, reset through
``/proc/self/clear_refs`` where the kernel allows it) minus its resident set when it
starts, after the imports and a warm-up: parameters, gradients, AdamW moments,
activations saved for the backward pass and temporaries, as the operating system sees
them, allocator overheads included. The warm-up is one training step of a toy model of
the same architecture, so that one-time library setup (code paged in, thread pools,
kernel caches) is not counted as the model's memory. Forking per SPEC keeps one model's
freed-but-kept pages from hiding the next one's. lt's parameters here are a constant
fill, not lt's normal init (the values do not change the memory, and gpt2's init takes
seconds). Linux only (``/proc``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import types

os.environ.setdefault("OMP_NUM_THREADS", "2")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "2")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

FIELDS = ("vocab_size", "max_seq_len", "num_layers", "num_heads", "hidden_dim", "ffn_dim", "batch", "seq")


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _parse(spec: str) -> tuple[str, dict]:
    name, numbers = spec.split(":")
    return name, dict(zip(FIELDS, map(int, numbers.split(","))))


def _lt_steps(cfg: dict):
    import numpy as np

    import lt
    model = lt.GPT(**{k: cfg[k] for k in FIELDS[:6]})
    params = lt.tree.freeze(lt.tree.map(lambda p: np.full(p.shape, 0.02, np.float32), model.spec()))
    ids = np.arange(cfg["batch"] * cfg["seq"]).reshape(cfg["batch"], cfg["seq"]) % cfg["vocab_size"]
    opt = lt.optim.adamw(3e-4, weight_decay=0.1)
    train_step = lt.make_train_step(model, opt, donate=True)   # as lt.train and lt train run it
    state = [lt.TrainState.create(params, opt)]

    def step():
        state[0], _ = train_step(state[0], (ids, ids))
    return step


def _torch_steps(cfg: dict):
    import torch

    from torch_gpt import TorchGPT
    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    torch.manual_seed(0)
    net = TorchGPT(types.SimpleNamespace(**cfg))
    opt = torch.optim.AdamW(net.parameters(), lr=3e-4, weight_decay=0.1)
    ids = torch.arange(cfg["batch"] * cfg["seq"]).reshape(cfg["batch"], cfg["seq"]) % cfg["vocab_size"]

    def step():
        opt.zero_grad(set_to_none=True)
        net(ids, ids).backward()
        opt.step()
    return step


WARMUP = dict(vocab_size=64, max_seq_len=8, num_layers=1, num_heads=1, hidden_dim=8, ffn_dim=16,
              batch=1, seq=8)


def _measure(library: str, name: str, cfg: dict) -> dict:
    steps = _lt_steps if library == "lt" else _torch_steps
    steps(WARMUP)()                                       # one-time library setup is not the model's memory
    try:                                                  # start the high-water mark here
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass
    baseline = _status_kib("VmRSS")
    step = steps(cfg)
    for _ in range(2):                                    # the second step runs with AdamW's state in place
        step()
    peak = max(_status_kib("VmHWM"), _status_kib("VmRSS"))
    return {"name": name, "library": library, "peak_mib": (peak - baseline) / 1024,
            "baseline_mib": baseline / 1024}


def measure(configs: dict[str, dict], libraries=("lt", "torch")) -> dict:
    """{(name, library): peak MiB or None} for configs {name: {FIELDS...}}, one process per
    library (this file run as a script; the lt process calls ``lt.tune_malloc()`` as
    ``lt.train`` does, the torch process never imports lt and runs without it, as torch's
    users run it)."""
    specs = [f"{name}:" + ",".join(str(cfg[k]) for k in FIELDS) for name, cfg in configs.items()]
    import lt
    root = os.path.dirname(os.path.dirname(os.path.abspath(lt.__file__)))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")])))
    results = {}
    for library in libraries:
        out = subprocess.run([sys.executable, os.path.abspath(__file__), library, *specs],
                             env=env, capture_output=True, text=True)
        for line in out.stdout.splitlines():
            r = json.loads(line)
            results[r["name"], library] = r.get("peak_mib")
            if "error" in r:
                print(f"peak_memory.py {library} {r['name']}: {r['error']}", file=sys.stderr)
        if out.returncode:
            print(f"peak_memory.py {library} failed:\n{out.stderr[-2000:]}", file=sys.stderr)
    return results


def main(argv: list[str]) -> None:
    library, specs = argv[0], [_parse(s) for s in argv[1:]]
    if library == "lt":
        import lt                                         # imported once, before the forks
        lt.tune_malloc()                                  # as lt.train does: its memory is part of the figure
    elif library == "torch":
        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        import torch  # noqa: F401
    else:
        raise SystemExit(f"library must be lt or torch, got {library!r}")
    for name, cfg in specs:
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:                                      # the child: one model, then exit
            os.close(read)
            try:
                result = _measure(library, name, cfg)
            except Exception as e:                        # reported, not fatal: the next SPEC still runs
                result = {"name": name, "library": library, "error": f"{type(e).__name__}: {e}"}
            os.write(write, json.dumps(result).encode())
            os._exit(0)
        os.close(write)
        with os.fdopen(read) as f:
            text = f.read()
        os.waitpid(pid, 0)
        print(text or json.dumps({"name": name, "library": library, "error": "the child died"}), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
