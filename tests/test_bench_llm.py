"""benchmarks/bench_llm.py runs its smallest configuration and writes the documented JSON.

Smoke tests: the structure and the arithmetic between the numbers (ratios are lt/torch,
MFU follows from tokens/s, floor fractions from the floor's seconds, the twins agree with lt),
never a speed.
"""

import json
import math
import os
import re
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import lt

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))
bench_llm = pytest.importorskip("bench_llm")
import busy  # noqa: E402  (benchmarks/ is on the path above)
import matmul_floor  # noqa: E402
import step_profile  # noqa: E402
from llm_report import targets  # noqa: E402

MICRO = {("sdpa", "small"), ("mha", "small"), ("block", "small"), ("block", "medium"),
         ("generate 10", "small"), ("generate 20", "small")}
PER_PRESET = ("forward", "train step", "train MFU", "KV decode", "train peak memory")
FLOORS = {(m, "tiny", of) for m in ("matmul floor", "floor fraction") for of in ("forward", "train step")}
UNITS = {"matmul peak": "GFLOP/s", "train MFU": "% of peak", "train peak memory": "MiB", "floor fraction": "of floor"}


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


@st.composite
def configs(draw):
    """A small lt.GPT of any family: multi-head or grouped-query, gelu/relu/swiglu, tied or not."""
    kv, group, d = draw(st.integers(1, 3)), draw(st.integers(1, 3)), draw(st.integers(1, 6))
    return lt.GPT(vocab_size=draw(st.integers(2, 300)), max_seq_len=16, num_layers=draw(st.integers(1, 3)),
                  num_heads=kv * group, hidden_dim=kv * group * d, ffn_dim=draw(st.integers(1, 40)),
                  num_kv_heads=kv, activation=draw(st.sampled_from(["gelu", "relu", "swiglu"])),
                  tie_embeddings=draw(st.booleans()))


@settings(max_examples=60, deadline=None)
@given(configs())
def test_matmul_params_are_the_model_s_matmul_weights(model):
    # every 2-D weight but the position table, and the token table only where it is the head
    shapes = dict(zip(lt.tree.paths(model.spec()), (leaf.shape for leaf in lt.tree.leaves(model.spec()))))
    skip = {"wpe.w"} | (set() if model.tie_embeddings else {"wte.w"})
    weights = sum(math.prod(s) for p, s in shapes.items() if len(s) == 2 and p not in skip)
    assert bench_llm.matmul_params(model) == weights


@settings(max_examples=60, deadline=None)
@given(configs(), st.integers(1, 3), st.integers(1, 16))
def test_the_floor_s_gemms_do_the_model_s_flops(model, batch, seq):
    # 2 N + 4 L T D per token forward, 6 N + 12 L T D for a training step: false if a GEMM were missing
    forward = matmul_floor.gemms(model, batch, seq)
    train = matmul_floor.gemms(model, batch, seq, train=True)
    assert matmul_floor.total_flops(forward) == batch * seq * bench_llm.forward_flops_per_token(model, seq)
    assert matmul_floor.total_flops(train) == batch * seq * bench_llm.train_flops_per_token(model, seq)
    assert bench_llm.train_flops_per_token(model, seq) == 3 * bench_llm.forward_flops_per_token(model, seq)
    L, ffn = model.num_layers, 3 if model.activation == "swiglu" else 2
    assert len(forward) == L * (4 + ffn) + 1                       # qkv, scores, weighted, proj, FFN; the head
    assert len(train) == len(forward) + 2 * (L * (2 + ffn) + 1) + 4 * L   # dx and dw per linear; 4 per attention
    assert train[:len(forward)] == forward


def test_the_floor_runs_its_list_on_operands_of_the_right_shapes():
    model = lt.GPT.preset("llama-tiny")                             # grouped-query, SwiGLU, no biases
    products = matmul_floor.gemms(model, 2, 8, train=True)
    triples = matmul_floor.operands(products)
    assert len(triples) == len(products)
    weights = {}
    for g, (a, b, out) in zip(products, triples):
        lead = () if g.batch == 1 else (g.batch,)
        assert a.shape == lead + (g.m, g.k) and b.shape == lead + (g.k, g.n) and out.shape == lead + (g.m, g.n), g
        assert a.dtype == b.dtype == out.dtype == np.float32
        assert not np.shares_memory(out, a) and not np.shares_memory(out, b)
        if g.weight:                                                 # forward and dx read the same weight
            weights.setdefault(g.weight, b)
            assert np.shares_memory(weights[g.weight], b)
    layer0, layer1 = weights["blocks.0.attn.qkv"], weights["blocks.1.attn.qkv"]
    assert not np.shares_memory(layer0, layer1)                      # each layer streams its own weights
    for _, _, out in triples:
        out.fill(np.nan)
    matmul_floor.run_products(triples)
    last = {id(out): (a, b, out) for a, b, out in triples}           # outputs of one shape share a buffer
    for a, b, out in last.values():
        np.testing.assert_allclose(out, np.matmul(a, b), rtol=1e-5, atol=1e-5)


def test_the_one_thread_floor_puts_the_blas_threads_back():
    threadpoolctl = pytest.importorskip("threadpoolctl", reason="the one-thread floor needs threadpoolctl")
    products = matmul_floor.gemms(lt.GPT.preset("tiny"), 1, 4)
    calls = matmul_floor.floor_callables(products)
    assert set(calls) == {"blas", "one"}
    before = [(i["filepath"], i["num_threads"]) for i in threadpoolctl.threadpool_info()]
    triples = calls["blas"].args[0]                                  # the operands both calls share
    for _, _, out in triples:
        out.fill(np.nan)
    calls["one"]()
    assert all(np.isfinite(out).all() for _, _, out in triples)
    assert [(i["filepath"], i["num_threads"]) for i in threadpoolctl.threadpool_info()] == before


def _row(measurement, preset, lt_value, torch_value, unit="tokens/s", of=None):
    row = {"measurement": measurement, "preset": preset, "shape": "4x128", "unit": unit, "lt": lt_value,
           "torch": torch_value, "ratio": lt_value / torch_value if lt_value and torch_value else None}
    return row | ({"of": of} if of else {})


def test_targets_follow_issue_15():
    rows = [_row("train step", "medium", 99.0, 100.0), _row("KV decode", "tiny", 2.0, 1.0),
            _row("train MFU", "medium", 20.0, 10.0, "% of peak"),
            _row("floor fraction", "medium", 0.79, 0.9, "of floor", "train step"),
            _row("floor fraction", "gpt2", 0.85, 0.5, "of floor", "forward"),
            _row("floor fraction", "mini", 0.1, 0.2, "of floor", "forward"),
            _row("matmul floor", "gpt2", 1e5, None, of="forward"),
            _row("train peak memory", "gpt2", 110.0, 100.0, "MiB"),
            _row("train peak memory", "large", 300.0, 100.0, "MiB")]
    met = targets(rows)
    assert {k: (v["value"], v["target"], v["met"]) for k, v in met.items()} == {
        "train step medium": (pytest.approx(0.99), 1.0, False), "KV decode tiny": (2.0, 1.0, True),
        "train step floor fraction medium": (0.79, 0.8, False), "forward floor fraction gpt2": (0.85, 0.85, True),
        "train peak memory gpt2": (pytest.approx(1.1), 1.1, True)}


def test_compare_flags_the_rows_that_break_the_contention_rules():
    quiet = [_row("forward", "tiny", 100.0, 100.0), _row("train step", "tiny", 50.0, 25.0),
             _row("matmul floor", "tiny", 1000.0, None, of="forward"),
             _row("train peak memory", "tiny", 5.0, 5.0, "MiB")]
    noisy = [_row("forward", "tiny", 40.0, 50.0), _row("train step", "tiny", 45.0, 20.0),
             _row("matmul floor", "tiny", 600.0, None, of="forward"),
             _row("train peak memory", "tiny", 9.0, 5.0, "MiB"),    # memory is no speed: left out
             _row("KV decode", "tiny", 1.0, 1.0)]                   # not in the quiet run: left out
    out = busy.compare(quiet, noisy)
    assert [(c["measurement"], c["kept"], c["own"]) for c in out] == [
        ("forward", pytest.approx(0.8), pytest.approx(0.4)), ("train step", pytest.approx(1.125), pytest.approx(0.9)),
        ("matmul floor", None, pytest.approx(0.6))]
    assert [len(c["flags"]) for c in out] == [2, 0, 0]               # kept < 0.9 and own < 0.5
    assert busy.format_compare(out, 1, "q.json").endswith("1 of 3 rows break the rules (kept >= 0.9, lt own >= 0.5)")


def _cpu_ticks(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])                         # utime + stime


@pytest.mark.parametrize("kind", ["python", "numpy"])
def test_busy_processes_run_during_the_block_and_are_gone_after(kind):
    with busy.busy(1, kind) as pids:
        (pid,) = pids
        os.kill(pid, 0)                                              # alive
        if os.path.exists(f"/proc/{pid}/stat"):                      # and spinning: it gets CPU time
            for _ in range(200):
                if _cpu_ticks(pid) > 0:
                    break
                __import__("time").sleep(0.05)
            assert _cpu_ticks(pid) > 0
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    for error in (RuntimeError("boom"), KeyboardInterrupt()):       # an error or Ctrl-C stops them too
        with pytest.raises(type(error)), busy.busy(2, kind) as pids:
            raise error
        for pid in pids:
            with pytest.raises(ProcessLookupError):
                os.kill(pid, 0)
    with pytest.raises(ValueError, match="busy processes must be an integer >= 0, got -1"), busy.busy(-1):
        pass
    with pytest.raises(ValueError, match="busy kind must be one of"), busy.busy(1, "sleep"):
        pass


@settings(max_examples=200, deadline=None)
@given(*(st.floats(0, 10) for _ in range(3)), st.floats(1e-6, 10))
def test_profile_shares_are_non_negative_and_sum_to_one(primitive_s, floor_s, optimizer_s, step_s):
    out = step_profile.shares(step_s, primitive_s, floor_s, optimizer_s)
    assert all(v >= 0 for v in out["shares"].values()) and math.isclose(sum(out["shares"].values()), 1.0)
    assert out["clamped"] == (floor_s > primitive_s)
    assert out["seconds"]["matmuls"] + out["seconds"]["elementwise"] == pytest.approx(primitive_s)
    if primitive_s + optimizer_s <= step_s:                         # always so when measured within one step
        assert sum(out["seconds"].values()) == pytest.approx(step_s)


def test_a_floor_above_the_primitive_time_is_clamped_and_said():
    p = step_profile.shares(step_s=1.0, primitive_s=0.2, floor_s=0.5, optimizer_s=0.1)
    assert p["clamped"] and p["seconds"]["matmuls"] == 0.2 and p["seconds"]["elementwise"] == 0.0
    p.update(shape=[4, 64], rounds=1, top_forward=[], top_vjp=[])
    text = step_profile.format_profile(p, "tiny")
    assert "note: the matmul floor exceeds the time inside primitives" in text
    assert "Python/autodiff overhead" in text and " 70.0%" in text   # 1.0 - 0.2 - 0.1 s of the step


def test_primitive_timer_counts_outermost_calls_and_puts_the_primitives_back():
    from lt.ops.primitive import _registry
    before = {name: (p.forward, p.vjp) for name, p in _registry.items()}
    x = np.linspace(-2, 2, 7, dtype=np.float32)
    with step_profile.timed_primitives() as timer:
        expected = lt.ops.gelu(x)                                    # timer off: not counted
        assert timer.calls == {}
        timer.on = True
        np.testing.assert_array_equal(lt.ops.gelu(x), expected)
        lt.grad(lambda v: lt.ops.sum(lt.ops.gelu(v)))(x)
    assert timer.calls[("elementwise.gelu", "forward")] == 2 and timer.calls[("elementwise.gelu", "vjp")] == 1
    assert timer.calls[("basic.sum", "forward")] == 1 and timer.total > 0
    assert {name: (p.forward, p.vjp) for name, p in _registry.items()} == before
    inner_timer = step_profile.PrimitiveTimer()                     # a primitive inside another counts once
    inner = inner_timer.wrap(lambda: None, "inner", "forward")
    outer = inner_timer.wrap(lambda: inner(), "outer", "vjp")
    inner_timer.on = True
    outer()
    assert inner_timer.calls == {("outer", "vjp"): 1}


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

    assert result["busy"] == 0
    floors = {(r["measurement"], r["preset"], r["of"]): r for r in result["rows"] if "of" in r}
    rows = {(r["measurement"], r["preset"]): r for r in result["rows"] if "of" not in r}
    assert set(rows) == MICRO | {("matmul peak", "-")} | {(m, "tiny") for m in PER_PRESET}
    assert set(floors) == FLOORS
    for r in rows.values():
        assert _positive(r["lt"]) and _positive(r["torch"]), r
        assert r["ratio"] == pytest.approx(r["lt"] / r["torch"], rel=1e-12)
        assert r["unit"] == UNITS.get(r["measurement"], "tokens/s")
        if r["unit"] == "tokens/s":
            assert r["rounds"] >= 2 and 0 < r["lt_s"] <= r["lt_median_s"] and 0 < r["torch_s"] <= r["torch_median_s"]
            assert r["lt"] == pytest.approx(r["work"] / r["lt_s"])
            assert r["torch"] == pytest.approx(r["work"] / r["torch_s"])

    # the floor of each step: the step's GEMMs (its FLOPs) timed in the same rounds; fractions are seconds over seconds
    for of, flops_per_token in (("forward", "forward_flops_per_token"), ("train step", "train_flops_per_token")):
        step, floor = rows[of, "tiny"], floors["matmul floor", "tiny", of]
        fraction = floors["floor fraction", "tiny", of]
        assert _positive(step["floor_s"]) and floor["floor_s"] == step["floor_s"] and floor["shape"] == step["shape"]
        assert step["floor_s"] == min(step["floor_threads_s"].values()) and "blas" in step["floor_threads_s"]
        assert floor["flops"] == step["work"] * result["presets"]["tiny"][flops_per_token]
        assert floor["lt"] == pytest.approx(step["work"] / step["floor_s"]) and floor["torch"] is None
        assert floor["ratio"] is None and floor["unit"] == "tokens/s"
        assert fraction["lt"] == pytest.approx(step["floor_s"] / step["lt_s"])
        assert fraction["torch"] == pytest.approx(step["floor_s"] / step["torch_s"])
        assert fraction["ratio"] == pytest.approx(step["ratio"]) and fraction["unit"] == "of floor"

    # MFU is tokens/s x FLOPs per token over the matmul peak of the same run
    peak, facts, matmul = result["settings"]["peak_gflops"], result["presets"]["tiny"], rows["matmul peak", "-"]
    assert peak == matmul["lt"] == max(matmul["first"][0], matmul["last"][0])
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
    assert bench_llm.HEADER in printed and "train peak memory" in printed and "floor fraction" in printed
    # every speed row is held to 1.0x torch; floor fractions only from medium up (none here)
    speed = {f"{m} {p}" for (m, p), r in rows.items() if r["unit"] == "tokens/s"}
    assert set(result["targets"]) == speed
    for key, t in result["targets"].items():
        assert t["target"] == 1.0 and t["value"] == t["ratio"] and t["met"] == (t["ratio"] >= 1.0), key


LT_ALONE = ["--no-torch", "--no-micro", "--no-memory", "--presets", "tiny", "--budget", "0"]


def test_lt_alone_then_busy_against_it(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("QUICK", "1")
    quiet_json = tmp_path / "quiet.json"
    quiet = bench_llm.main(LT_ALONE + ["--json", str(quiet_json)])
    assert quiet["mode"] == "quick" and quiet["busy"] == 0 and "torch" not in quiet["machine"]
    assert sorted((r["measurement"], r["preset"], r.get("of")) for r in quiet["rows"]) == [
        ("KV decode", "tiny", None), ("floor fraction", "tiny", "forward"), ("floor fraction", "tiny", "train step"),
        ("forward", "tiny", None), ("matmul floor", "tiny", "forward"), ("matmul floor", "tiny", "train step"),
        ("matmul peak", "-", None), ("train MFU", "tiny", None), ("train step", "tiny", None)]
    for r in quiet["rows"]:
        assert _positive(r["lt"]) and r["torch"] is None and r["ratio"] is None
        assert r["check"] is None or r["measurement"] in ("matmul peak", "matmul floor", "floor fraction")
    assert quiet["targets"] == {}
    assert "-" in capsys.readouterr().out

    # the same run with a busy process beside it, compared with the quiet one, and profiled
    busy = bench_llm.main(LT_ALONE + ["--busy", "1", "--compare", str(quiet_json), "--profile", "tiny"])
    printed = capsys.readouterr().out
    assert busy["busy"] == 1 and busy["settings"]["busy_kind"] == "python"
    assert "quick mode; 1 busy python process beside it" in printed and "busy (1) against quiet" in printed
    quiet_lt = {(r["measurement"], r["preset"], r.get("of")): r["lt"] for r in quiet["rows"]}
    speed = [r for r in busy["rows"] if r["unit"] in ("tokens/s", "GFLOP/s")]
    compared = busy["compare"]["rows"]
    assert busy["compare"]["quiet"] == str(quiet_json) and len(compared) == len(speed) == 6
    for c, r in zip(compared, speed):
        assert (c["measurement"], c["preset"], c["of"]) == (r["measurement"], r["preset"], r.get("of"))
        assert c["own"] == pytest.approx(r["lt"] / quiet_lt[c["measurement"], c["preset"], c["of"]])
        assert c["kept"] is None                                   # no torch, no ratio to keep
        assert bool(c["flags"]) == (c["own"] < 0.5)
    profile = busy["profile"]                                       # tiny's training step, measured
    shares = profile["shares"]
    assert set(shares) == {"matmuls", "elementwise", "optimizer", "overhead"}
    assert all(v >= 0 for v in shares.values()) and sum(shares.values()) == pytest.approx(1.0)
    assert 0 < profile["primitive_s"] < profile["step_s"] and profile["floor_s"] > 0
    assert sum(profile["seconds"].values()) == pytest.approx(profile["step_s"])
    assert profile["seconds"]["matmuls"] == min(profile["floor_s"], profile["primitive_s"])
    assert profile["top_forward"] and profile["top_vjp"] and all(e["calls"] >= 1 for e in profile["top_vjp"])
    assert "matmuls (the floor)" in printed and "top primitives by time (VJP)" in printed and "own time" in printed


def test_compare_with_a_bad_quiet_file_fails_before_the_run(tmp_path):
    not_json = tmp_path / "quiet.json"
    not_json.write_text("{")
    with pytest.raises(ValueError, match=r"cannot read .*quiet\.json"):
        bench_llm.main(LT_ALONE + ["--compare", str(not_json)])
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"schema": "something-else", "rows": []}))
    with pytest.raises(ValueError, match="expected schema 'lt-bench-llm/1'"):
        bench_llm.main(LT_ALONE + ["--compare", str(other)])
    with pytest.raises(ValueError, match="cannot read"):
        bench_llm.main(LT_ALONE + ["--compare", str(tmp_path / "missing.json")])
