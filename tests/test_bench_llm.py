"""benchmarks/bench_llm.py runs its smallest configuration and writes the documented JSON.

Smoke tests: the structure and the arithmetic between the numbers (ratios are lt/torch,
MFU follows from tokens/s, the twins agree with lt), never a speed.
"""

import json
import math
import os
import re
import sys

import pytest

import lt

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))
bench_llm = pytest.importorskip("bench_llm")

MICRO = {("sdpa", "small"), ("mha", "small"), ("block", "small"), ("block", "medium"),
         ("generate 10", "small"), ("generate 20", "small")}
PER_PRESET = ("forward", "train step", "train MFU", "KV decode", "train peak memory")
UNITS = {"matmul peak": "GFLOP/s", "train MFU": "% of peak", "train peak memory": "MiB"}


def _positive(x) -> bool:
    return isinstance(x, float) and math.isfinite(x) and x > 0


def test_flops_per_token_follows_the_documented_formula():
    small = lt.GPT.preset("small")                    # L=4, D=64, F=256, V=1000
    N = 4 * (4 * 64 * 64 + 2 * 64 * 256) + 1000 * 64
    assert bench_llm.matmul_params(small) == N
    assert bench_llm.train_flops_per_token(small, 128) == 6 * N + 12 * 4 * 128 * 64
    # every weight is counted but the position table, biases and norms (the head is tied to wte)
    biases_and_norms = 4 * ((3 * 64 + 64 + 256 + 64) + 4 * 64) + 2 * 64
    assert small.num_params() - N == 256 * 64 + biases_and_norms


def test_quick_run_with_torch_writes_the_documented_json(tmp_path, capsys):
    torch = pytest.importorskip("torch", reason="the twin columns need torch")
    out = tmp_path / "bench.json"
    result = bench_llm.main(["--quick", "--presets", "tiny", "--budget", "0", "--json", str(out)])
    assert json.loads(out.read_text()) == json.loads(json.dumps(result))
    assert result["schema"] == "lt-bench-llm/1" and result["mode"] == "quick"
    machine = result["machine"]
    assert machine["cpu_count"] >= 1 and machine["numpy"] and machine["torch"] == torch.__version__
    assert set(result["presets"]) == {"tiny"}
    if machine["sharing"] is not None:                 # None where /proc/stat is missing
        assert machine["sharing"]["cores_used_by_others"] >= 0 and machine["sharing"]["cores_stolen"] >= 0

    rows = {(r["measurement"], r["preset"]): r for r in result["rows"]}
    assert set(rows) == MICRO | {("matmul peak", "-")} | {(m, "tiny") for m in PER_PRESET}
    for r in result["rows"]:
        assert _positive(r["lt"]) and _positive(r["torch"]), r
        assert r["ratio"] == pytest.approx(r["lt"] / r["torch"], rel=1e-12)
        assert r["unit"] == UNITS.get(r["measurement"], "tokens/s")
        if r["unit"] == "tokens/s":
            assert r["rounds"] >= 2 and 0 < r["lt_s"] <= r["lt_median_s"] and 0 < r["torch_s"] <= r["torch_median_s"]
            assert r["lt"] == pytest.approx(r["work"] / r["lt_s"]) and r["torch"] == pytest.approx(r["work"] / r["torch_s"])

    # MFU is tokens/s x FLOPs per token over the matmul peak of the same run
    peak, facts = result["settings"]["peak_gflops"], result["presets"]["tiny"]
    assert peak == rows["matmul peak", "-"]["lt"] == max(rows["matmul peak", "-"]["first"][0], rows["matmul peak", "-"]["last"][0])
    assert facts["train_shape"] == [4, 64]
    assert facts["train_flops_per_token"] == bench_llm.train_flops_per_token(lt.GPT.preset("tiny"), 64)
    train, mfu = rows["train step", "tiny"], rows["train MFU", "tiny"]
    for side in ("lt", "torch"):
        assert mfu[side] == pytest.approx(100 * train[side] * facts["train_flops_per_token"] / (peak * 1e9))
        assert 0 < mfu[side] <= 100

    # the twins compute lt's function: outputs, loss and greedy tokens agree
    for key in (("forward", "tiny"), ("sdpa", "small"), ("mha", "small"), ("block", "medium")):
        assert float(re.fullmatch(r"max\|d\| (\S+)", rows[key]["check"]).group(1)) < 1e-4
    assert float(re.fullmatch(r"loss d (\S+)", train["check"]).group(1)) < 1e-4
    agree, n = map(int, re.fullmatch(r"agree (\d+)/(\d+)", rows["KV decode", "tiny"]["check"]).groups())
    assert n == 64 and agree >= 1

    printed = capsys.readouterr().out
    assert bench_llm.HEADER in printed and "train peak memory" in printed
    assert set(result["targets"]) == {"forward tiny"}


def test_lt_alone_leaves_the_torch_columns_empty(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("QUICK", "1")
    result = bench_llm.main(["--no-torch", "--no-micro", "--no-memory", "--presets", "tiny", "--budget", "0"])
    assert result["mode"] == "quick" and "torch" not in result["machine"]
    assert sorted((r["measurement"], r["preset"]) for r in result["rows"]) == [
        ("KV decode", "tiny"), ("forward", "tiny"), ("matmul peak", "-"), ("train MFU", "tiny"), ("train step", "tiny")]
    for r in result["rows"]:
        assert _positive(r["lt"]) and r["torch"] is None and r["ratio"] is None
        assert r["check"] is None or r["measurement"] == "matmul peak"
    assert result["targets"] == {}
    assert "-" in capsys.readouterr().out
