"""Reliability at run time (issue 31): bad input from the machine, the clock, the flags and
the weights ends in a clear error or a safe default, never in a crash or a broken promise."""

import builtins
import json

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import lt
from lt import cli
from lt.cli import budget
from lt.threads import load, policy

# ------------------------------------------------------------------ /proc/stat


@pytest.mark.parametrize(
    "first_line",
    [
        b"cpu  10 20\n",
        b"",
        b"\n",
        b"cpu  a b c d e f g h\n",
        b"cpu  1 2 3 4 5 6 -7 0\n",
        b"\xff\xfe\x00\n",
        b"intr 1 2 3 4 5 6 7 8\n",
    ],
    ids=["short", "empty", "blank", "words", "negative", "binary", "not-cpu"],
)
def test_a_proc_stat_of_unexpected_format_reads_as_no_load(tmp_path, monkeypatch, first_line):
    stat = tmp_path / "stat"
    stat.write_bytes(first_line + b"intr 1 2 3\n")
    real_open = builtins.open
    monkeypatch.setattr(
        load, "open", lambda path, *a, **k: real_open(stat if path == "/proc/stat" else path, *a, **k), raising=False
    )
    monkeypatch.setattr(load, "_load", load._Load())  # no earlier reading
    assert load._sample() is None
    assert load.cores_used_by_others() == 0.0
    assert policy.free_cores() == load.cores()  # every core counts as free


def test_a_proc_stat_of_the_expected_format_is_read(tmp_path, monkeypatch):
    stat = tmp_path / "stat"
    stat.write_bytes(b"cpu  100 20 300 9999 50 6 70 0 0 0\ncpu0 1 2 3 4 5 6 7\n")
    real_open = builtins.open
    monkeypatch.setattr(
        load, "open", lambda path, *a, **k: real_open(stat if path == "/proc/stat" else path, *a, **k), raising=False
    )
    sample = load._sample()
    assert sample is not None and sample[1] == (100 + 20 + 300 + 6 + 70) / load.os.sysconf("SC_CLK_TCK")


# ------------------------------------------------------------------ --time


@pytest.mark.parametrize("text", ["9" * 400, "9" * 400 + "s", "9" * 307 + "h", "1" + "0" * 308 + "m"])
def test_an_overflowing_time_is_refused_naming_the_flag(text):
    with pytest.raises(ValueError) as e:
        budget.parse_duration(text)
    assert str(e.value) == f"--time must be a finite duration such as 300s, 5m or 1.5h, got {text!r} (too large)"


@pytest.mark.parametrize(
    "text, expected",
    [
        ("9" * 400, "--time must be a finite duration such as 300s, 5m or 1.5h, got '" + "9" * 400 + "' (too large)"),
        ("1e400", "--time must be a positive duration such as 300s, 5m or 1.5h, got '1e400'"),
    ],
)
def test_an_overflowing_time_on_the_command_line_names_time(tmp_path, capsys, text, expected):
    out = tmp_path / "run"
    assert cli.main(["train", "--time", text, "--out", str(out)]) == 2
    assert capsys.readouterr().err == f"lt: error: {expected}\n"
    assert not out.exists()


# ------------------------------------------------------------------ --tensor-parallel without MPI


@pytest.mark.parametrize("existing", [False, True], ids=["new-folder", "empty-folder"])
def test_tensor_parallel_without_mpi_is_refused_before_anything_is_made(tmp_path, capsys, existing):
    data = tmp_path / "data.txt"
    data.write_text("to be or not to be, that is the question\n" * 20)
    out = tmp_path / "run"
    if existing:
        out.mkdir()
    argv = ["train", "--tensor-parallel", "2", "--steps", "2", "--preset", "tiny", "--tokenizer", "char",
            "--data", str(data), "--sample-tokens", "0", "--out", str(out)]  # fmt: skip
    assert cli.main(argv) == 2
    assert (sorted(out.iterdir()) == []) if existing else not out.exists()
    assert capsys.readouterr().err == (
        "lt: error: --tensor-parallel 2 must divide the number of MPI ranks (1); launch a multiple of 2 "
        "ranks with mpiexec (mpiexec -n 2 python -m mpi4py -m lt train ...)\n"
    )


# ------------------------------------------------------------------ decoding from broken or padded models

TWENTY = lt.GPT(vocab_size=20, max_seq_len=24, num_layers=1, num_heads=2, hidden_dim=8, ffn_dim=16)
P20 = TWENTY.init(lt.random.key(0), np.float64)
PROMPT = np.array([3, 1, 4], np.int64)


class Wrapped:
    """A model that delegates to ``base`` and changes its logits (B, V) -> (B, V') by ``edit(logits, call)``."""

    def __init__(self, base, edit, vocab_size=None):
        self.base, self.edit, self.calls = base, edit, 0
        self.vocab_size = base.vocab_size if vocab_size is None else vocab_size

    def __getattr__(self, name):
        return getattr(self.base, name)

    def forward(self, params, ids, **kw):
        logits = self.edit(self.base.forward(params, ids, **kw), self.calls)
        self.calls += 1
        return logits


def poisoned(at_call, value=np.nan):
    """TWENTY, whose logits hold ``value`` from forward call ``at_call`` on (0 is the prefill)."""
    return Wrapped(TWENTY, lambda x, call: np.where(call >= at_call, value, x))


def boosted(limit, by=30.0):
    """TWENTY with ids ``limit..19`` made far more likely than the others (a padded id would always win)."""
    return Wrapped(TWENTY, lambda x, call: np.concatenate([x[..., :limit], x[..., limit:] + by], -1))


def truncated(limit):
    """The model of vocabulary ``limit`` whose logits are TWENTY's first ``limit``: what masking must give."""
    return Wrapped(TWENTY, lambda x, call: x[..., :limit], vocab_size=limit)


def test_beam_search_on_nan_weights_says_the_logits_are_not_finite():
    nan_params = lt.tree.map(lambda x: np.full_like(x, np.nan), P20)
    with pytest.raises(FloatingPointError) as e:
        lt.generate.beam_search(TWENTY, nan_params, PROMPT, num_beams=2, max_new_tokens=3)
    assert str(e.value) == "beam search: the model's logits are not finite (NaN/inf) at step 0; check the weights"


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("at_call", [0, 2])
def test_beam_search_names_the_step_whose_logits_are_not_finite(at_call, value):
    with pytest.raises(FloatingPointError) as e:
        lt.generate.beam_search(poisoned(at_call, value), P20, PROMPT, num_beams=3, max_new_tokens=5)
    assert str(e.value) == (
        f"beam search: the model's logits are not finite (NaN/inf) at step {at_call}; check the weights"
    )


@pytest.mark.parametrize("options", [{"temperature": 0}, {"temperature": 0.8}, {"top_k": 3}, {"top_p": 0.5}])
@pytest.mark.parametrize("at_call", [0, 2])
def test_generate_and_stream_name_the_step_whose_logits_are_not_finite(at_call, options):
    prompts = [PROMPT, PROMPT[:2]]
    expected = f"generate: the model's logits are not finite (NaN/inf) at step {at_call} (row 0); check the weights"
    with pytest.raises(FloatingPointError) as e:
        lt.generate.generate(poisoned(at_call), P20, prompts, rng=lt.random.key(1), max_new_tokens=5, **options)
    assert str(e.value) == expected
    tokens = lt.generate.stream(poisoned(at_call), P20, PROMPT, rng=lt.random.key(1), max_new_tokens=5, **options)
    with pytest.raises(FloatingPointError) as e:
        list(tokens)
    assert str(e.value) == expected.replace("generate:", "stream:")


def test_non_finite_logits_past_the_vocab_limit_are_never_read():
    model = Wrapped(TWENTY, lambda x, call: np.concatenate([x[..., :15], np.full_like(x[..., 15:], np.nan)], -1))
    out = lt.generate.generate(model, P20, PROMPT, max_new_tokens=5, temperature=0, vocab_limit=15)
    ref = lt.generate.generate(truncated(15), P20, PROMPT, max_new_tokens=5, temperature=0)
    assert out.tolist() == ref.tolist()


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    temperature=st.sampled_from([0.0, 0.3, 1.0, 2.5]),
    top_k=st.sampled_from([None, 1, 5, 18]),
    top_p=st.sampled_from([None, 0.5, 1.0]),
    limit=st.integers(1, 19),
)
def test_ids_past_the_vocab_limit_are_never_sampled(seed, temperature, top_k, top_p, limit):
    options = dict(rng=lt.random.key(seed), max_new_tokens=6, temperature=temperature, top_k=top_k, top_p=top_p)
    prompt = PROMPT % limit
    out = lt.generate.generate(boosted(limit), P20, prompt, vocab_limit=limit, **options)
    assert out[3:].max() < limit
    # masking the padded ids is sampling from the model that never had them, draw for draw
    assert out.tolist() == lt.generate.generate(truncated(limit), P20, prompt, **options).tolist()
    streamed = lt.generate.stream(boosted(limit), P20, prompt, vocab_limit=limit, **options)
    assert list(streamed) == out[3:].tolist()


def test_without_a_vocab_limit_the_boosted_ids_win():  # the control: the tests above would catch no mask
    out = lt.generate.generate(boosted(15), P20, PROMPT, max_new_tokens=6, temperature=0)
    assert out[3:].min() >= 15


@pytest.mark.parametrize("limit", [1, 4, 15])
def test_beam_search_never_keeps_ids_past_the_vocab_limit(limit):
    prompt = PROMPT % limit
    got = lt.generate.beam_search(boosted(limit), P20, prompt, num_beams=4, max_new_tokens=4, vocab_limit=limit)
    ref = lt.generate.beam_search(truncated(limit), P20, prompt, num_beams=4, max_new_tokens=4)
    assert got.sequences.max() < limit
    np.testing.assert_array_equal(got.sequences, ref.sequences)
    np.testing.assert_allclose(got.scores, ref.scores, rtol=1e-12)


def test_stream_window_keeps_the_vocab_limit_past_the_context():
    out = list(lt.generate.stream_window(boosted(15), P20, PROMPT, rng=lt.random.key(2), max_new_tokens=60,
                                         temperature=1.0, vocab_limit=15))  # fmt: skip
    assert len(out) == 60 and max(out) < 15


_LIMIT = "vocab_limit must be an integer in [1, 21) (how many ids, from 0, may be generated: the tokenizer's size)"


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"vocab_limit": 0}, f"{_LIMIT} or None, got 0"),
        ({"vocab_limit": 21}, f"{_LIMIT} or None, got 21"),
        ({"vocab_limit": 2.5}, f"{_LIMIT} or None, got 2.5"),
        ({"vocab_limit": 15, "eos_id": 17}, "eos_id 17 is at or past vocab_limit=15: it could never be generated"),
    ],
)
def test_a_bad_vocab_limit_is_refused_naming_it(kwargs, message):
    for decode in (
        lambda: lt.generate.generate(TWENTY, P20, PROMPT, max_new_tokens=2, temperature=0, **kwargs),
        lambda: lt.generate.stream(TWENTY, P20, PROMPT, max_new_tokens=2, temperature=0, **kwargs),
        lambda: lt.generate.beam_search(TWENTY, P20, PROMPT, num_beams=2, max_new_tokens=2, **kwargs),
    ):
        with pytest.raises(ValueError) as e:
            decode()
        assert str(e.value) == message


class _Letters:
    """A tokenizer of 15 letters (ids 0..14) that refuses any other id, as lt's tokenizers do."""

    vocab_size = 15

    def encode(self, text):
        return np.array(["abcdefghijklmno".index(c) for c in text], np.int64)

    def decode(self, ids):
        ids = np.asarray(ids, np.int64)
        if ids.size and ids.max() >= self.vocab_size:
            raise ValueError(f"token id {ids.max()} is not in this tokenizer's vocabulary of {self.vocab_size}")
        return "".join("abcdefghijklmno"[i] for i in ids)


@pytest.mark.parametrize("temperature", [0.0, 0.8])
def test_the_cli_samples_only_the_tokenizers_ids_from_a_padded_model(temperature):
    model = boosted(15)
    text = cli.inference.sample_text(model, P20, _Letters(), "dba", 12, temperature, None, None, lt.random.key(0))
    ref = lt.generate.generate(truncated(15), P20, _Letters().encode("dba"), rng=lt.random.key(0),
                               max_new_tokens=12, temperature=temperature)  # fmt: skip
    assert text == _Letters().decode(ref)


def _padded_llama(path, pad):
    """A tiny Llama checkpoint whose vocabulary is ``pad`` ids larger than its tokenizer's, the
    padded rows of its output layer large, so that unmasked decoding would pick them."""
    torch = pytest.importorskip("torch", reason="needs torch to build a Hugging Face checkpoint")
    transformers = pytest.importorskip("transformers", reason="needs transformers to build a checkpoint")
    tk = pytest.importorskip("tokenizers", reason="needs the tokenizers package (pip install 'lt[hf]')")
    text = "Speak, speak. Before we proceed any further, hear me speak.\n" * 20
    tok = tk.Tokenizer(tk.models.BPE())
    tok.pre_tokenizer = tk.pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = tk.decoders.ByteLevel()
    alphabet = tk.pre_tokenizers.ByteLevel.alphabet()
    tok.train_from_iterator([text], tk.trainers.BpeTrainer(vocab_size=280, initial_alphabet=alphabet))
    tok.save(str(path / "tokenizer.json"))
    n = tok.get_vocab_size()
    config = transformers.LlamaConfig(
        vocab_size=n + pad,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
    )
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(config)
    with torch.no_grad():
        model.lm_head.weight[n:] *= 100.0
    model.save_pretrained(path)
    return n


@pytest.mark.parametrize("extra", [[], ["--beams", "3"], ["--temperature", "1.0", "--seed", "3"]],
                         ids=["greedy", "beam", "sampled"])  # fmt: skip
def test_generate_hf_with_a_padded_vocabulary_never_samples_a_padded_id(tmp_path, capsys, extra):
    n = _padded_llama(tmp_path, pad=16)
    capsys.readouterr()  # what building the checkpoint printed
    argv = ["generate", "--hf", str(tmp_path), "--prompt", "Speak", "--max-new-tokens", "10", "--temperature", "0"]
    assert cli.main(argv + extra) == 0
    captured = capsys.readouterr()
    assert captured.err == ""  # silent about the limit
    model, params = lt.hf.from_hf(tmp_path)
    tokenizer = lt.hf.load_tokenizer(tmp_path)
    assert model.vocab_size == n + 16 and tokenizer.vocab_size == n
    prompt = tokenizer.encode("Speak")
    if extra[:1] == ["--beams"]:
        best = lt.generate.beam_search(model, params, prompt, num_beams=3, max_new_tokens=10, vocab_limit=n)
        expected = tokenizer.decode(best.sequences[0])
    else:
        temperature, rng = (1.0, lt.random.key(3)) if extra else (0.0, None)
        ids = lt.generate.generate(model, params, prompt, rng=rng, max_new_tokens=10, temperature=temperature,
                                   vocab_limit=n)  # fmt: skip
        expected = tokenizer.decode(ids)
    assert captured.out == expected + "\n"
    unmasked = lt.generate.generate(model, params, prompt, max_new_tokens=10, temperature=0)
    assert unmasked[len(prompt) :].max() >= n  # the control: without the limit a padded id is picked


# ------------------------------------------------------------------ --time is a promise


class FakeClock:
    """A clock that moves ``tick`` seconds at each reading."""

    def __init__(self, tick: float, now: float = 1000.0):
        self.tick, self.now = tick, now

    def __call__(self) -> float:
        self.now += self.tick
        return self.now


def _simulate(deadline, clock, steps, step_time, jobs=lambda step: 0.0, finish=0.0):
    """lt.train's loop on a fake clock: each step takes ``step_time``, the jobs after step k
    ``jobs(k)``; returns (the step it stopped after, the time the run's finish ended)."""
    clock.tick = 0.0
    for k in range(1, steps + 1):
        clock.now += step_time
        if k == steps or deadline(k):
            return k, clock.now + finish
        clock.now += jobs(k)
    raise AssertionError("unreachable")


def test_the_deadline_stops_the_step_before_the_budget_would_pass(monkeypatch):
    clock = FakeClock(0.0, now=0.0)
    monkeypatch.setattr(budget, "clock", clock)
    sizing = budget.Sizing(steps=100, step_time=1.0, eval_time=0.0, checkpoint_time=0.0, sample_time=2.0)
    deadline = budget.Deadline(20.0, sizing, eval_every=1000, checkpoint_every=1000)
    # after step 17 (t = 17) one more step and the sample end at 20: go on; after 18 they would end at 21
    assert _simulate(deadline, clock, 100, 1.0, finish=2.0) == (18, 20.0)


def test_the_deadline_follows_a_machine_that_slows_down(monkeypatch):
    clock = FakeClock(0.0, now=0.0)
    monkeypatch.setattr(budget, "clock", clock)
    sizing = budget.Sizing(steps=100, step_time=1.0, eval_time=0.0, checkpoint_time=0.0, sample_time=2.0)
    deadline = budget.Deadline(40.0, sizing, eval_every=1000, checkpoint_every=1000)
    # steps take 2 s, not the warm-up's 1 s: the sample will take 4 s too; at t = 34 (step 17)
    # one more step and the sample end at 40: go on; at step 18 they would end at 42
    assert _simulate(deadline, clock, 100, 2.0, finish=4.0) == (18, 40.0)


@settings(max_examples=150, deadline=None)
@given(
    warm=st.floats(0.05, 1.0),
    slower=st.floats(0.5, 4.0),
    eval_time=st.floats(0.0, 5.0),
    sample_time=st.floats(0.0, 10.0),
    eval_every=st.integers(1, 50),
    budget_s=st.floats(5.0, 100.0),
)
def test_a_budgeted_run_ends_within_its_budget_whatever_the_machine(
    warm, slower, eval_time, sample_time, eval_every, budget_s
):
    """Steps, evaluations and the sample all ``slower`` times the warm-up's: the run, stopped by the
    deadline, ends by its end, and not earlier than one step and its jobs before it (more where the
    machine is faster than the warm-up: the finish is never assumed faster than measured)."""
    finish = slower * (eval_time + 0.001 + sample_time)
    assume(budget_s * 0.99 > 10 * slower * (warm + eval_time) + finish)  # a budget of more than a few steps
    clock = FakeClock(0.0, now=0.0)
    sizing = budget.Sizing(10**6, warm, eval_time, 0.001, sample_time)
    end = budget.end_of(0.0, budget_s)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(budget, "clock", clock)
        deadline = budget.Deadline(end, sizing, eval_every=eval_every, checkpoint_every=10**6)
        jobs = lambda k: slower * eval_time * (k % eval_every == 0)  # noqa: E731
        step, ended = _simulate(deadline, clock, 10**6, warm * slower, jobs, finish)
    assert ended <= end + 1e-9 or step == 1
    one_more = warm * slower + max(slower, 1.0) * (eval_time + 0.001)
    overestimate = max(slower, 1.0) * (eval_time + 0.001 + sample_time) - finish
    assert ended > end - one_more - overestimate - 1e-9 or step == 1


def _timed_run(tmp_path, monkeypatch, sample_tokens: int):
    """Flags of a tiny character-level run on a small text, and the fake clock (10 ms a reading)
    that lt train's budget now reads."""
    data = tmp_path / "data.txt"
    data.write_text("It was the best of times, it was the worst of times.\n" * 60)
    flags = ["--data", str(data), "--tokenizer", "char", "--preset", "tiny", "--batch-size", "4", "--seq-len", "16",
             "--eval-every", "1000", "--checkpoint-every", "1000", "--sample-tokens", str(sample_tokens)]  # fmt: skip
    clock = FakeClock(0.01)
    monkeypatch.setattr(budget, "clock", clock)
    return flags, clock


def test_a_run_slower_than_its_warm_up_stops_within_its_budget_and_records_the_steps_done(
    tmp_path, monkeypatch, capsys
):
    """On a fake clock: every reading during the warm-up is 10 ms, then the machine turns three
    times slower. The run stops at the step after which one more would pass the budget, run.json
    records the steps done, ``--resume`` finds the run complete, and ``--resume --steps N`` trains
    exactly the steps of the run that never stopped."""
    flags, clock = _timed_run(tmp_path, monkeypatch, sample_tokens=16)
    real_train, deadlines = cli.train_command.train, []

    def slower_train(*a, stop=None, **k):
        deadlines.append(stop)
        clock.tick = 0.03  # each step (one reading) now takes 30 ms
        return real_train(*a, stop=stop, **k)

    monkeypatch.setattr(cli.train_command, "train", slower_train)
    out = tmp_path / "run"
    assert cli.main(["train", *flags, "--time", "2s", "--out", str(out)]) == 0
    err = capsys.readouterr().err
    planned = int(err.split(" steps fit a 2 s budget")[0].split("lt: ")[-1].replace(",", ""))
    [_, deadline] = deadlines  # halfway through the warmup the run measures its own pace
    done, stopped_at = deadline.last
    finish = deadline.sizing.eval_time + deadline.sizing.checkpoint_time + deadline.sizing.sample_time
    slow = max(float(np.median(deadline.ratios)), 1.0)
    assert 1 < done < planned and np.isclose(deadline.sizing.step_time, 0.03, rtol=0.2)  # the pace it measured
    assert stopped_at + slow * finish <= deadline.end < stopped_at + slow * (deadline.sizing.step_time + finish)
    assert f"lt: stopped at step {done:,} of {planned:,} to keep the 2 s budget" in err
    assert f"run.json records {done:,} steps" in err
    assert json.loads((out / "run.json").read_text())["steps"] == done
    assert lt.checkpoint.load(out / "checkpoint.safetensors").step == done
    last = json.loads((out / "log.jsonl").read_text().splitlines()[-1])
    assert last["step"] == done and "eval_loss" in last  # the last step's record and evaluation
    assert (out / "sample.txt").read_text().startswith("\n")

    clock.tick = 0.01
    assert cli.main(["train", *flags, "--time", "2s", "--out", str(out), "--resume"]) == 0
    assert f"steps {done} -> {done}" in capsys.readouterr().out  # complete: nothing to train
    assert lt.checkpoint.load(out / "checkpoint.safetensors").step == done

    assert cli.main(["train", *flags, "--out", str(out), "--resume", "--steps", str(planned)]) == 0
    never_stopped = tmp_path / "never-stopped"
    assert cli.main(["train", *flags, "--steps", str(planned), "--out", str(never_stopped)]) == 0
    resumed = lt.checkpoint.load(out / "checkpoint.safetensors")
    reference = lt.checkpoint.load(never_stopped / "checkpoint.safetensors")
    assert resumed.step == reference.step == planned
    both = [lt.tree.leaves((c.params, c.opt_state)) for c in (resumed, reference)]
    for got, want in zip(*both):
        np.testing.assert_array_equal(got, want)


def test_the_pause_sizes_the_run_at_the_pace_after_its_first_steps(tmp_path, monkeypatch):
    """On a fake clock the first half of the steps before the pause take 50 ms, the rest 10 ms (a
    run's first steps pay for fresh pages and caches): the run is re-sized at 10 ms a step, the
    second half's pace, not at the 30 ms that counting every step would give."""
    flags, clock = _timed_run(tmp_path, monkeypatch, sample_tokens=0)
    real_train, deadlines = cli.train_command.train, []

    def uneven_train(*a, stop=None, **k):
        deadlines.append(stop)

        def timed(step):
            clock.tick = 0.0  # each step's time is added here, before the deadline reads the clock
            clock.now += 0.05 if stop.mark is not None and step <= stop.mark else 0.01
            return stop(step)

        return real_train(*a, stop=timed, **k)

    monkeypatch.setattr(cli.train_command, "train", uneven_train)
    assert cli.main(["train", *flags, "--time", "2s", "--out", str(tmp_path / "run")]) == 0
    [pause, rest] = deadlines
    assert pause.mark is not None and pause.marked is not None
    # (the fake adds a step's time at its stop call, which the pause's last step does not get: a
    # little under 10 ms; counting the first half's steps it would be about 30 ms)
    assert 0.008 < rest.sizing.step_time <= 0.0101


def test_train_stops_after_the_step_stop_names_as_at_a_last_step(tmp_path):
    """``lt.train(stop=...)``: the step it says True after is the last one: its record, its
    evaluation and the checkpoint are there, and the steps before are the run's own."""
    chars = sorted(set("It was the best of times, it was the worst of times. "))
    tokens = np.array([chars.index(c) for c in "It was the best of times, it was the worst of times. " * 30])
    model = lt.GPT.preset("tiny", vocab_size=len(chars), max_seq_len=16)
    opt = lt.optim.adamw(1e-2)
    state = lt.TrainState.create(model.init(lt.random.key(0)), opt)
    asked = []

    def stop(step):
        asked.append(step)
        return step == 7

    common = dict(batch_size=2, seq_len=16, rng=lt.random.key(1), val_tokens=tokens, eval_every=5, eval_batches=1,
                  log_every=4, checkpoint_every=5, progress=False, verbose=False)  # fmt: skip
    stopped, log = lt.train(model, opt, state, tokens, steps=20, stop=stop, checkpoint_path=tmp_path / "a", **common)
    assert stopped.step == 7 and asked == [1, 2, 3, 4, 5, 6, 7]
    assert [(r["step"], "eval_loss" in r) for r in log] == [(4, False), (5, True), (7, True)]
    assert lt.checkpoint.load(tmp_path / "a").step == 7
    full, _ = lt.train(model, opt, state, tokens, steps=20, checkpoint_path=tmp_path / "b", **common)
    resumed_from_7 = lt.checkpoint.load(tmp_path / "a", model, stopped.opt_state)
    again, _ = lt.train(model, opt, lt.TrainState(resumed_from_7.params, resumed_from_7.opt_state, 7), tokens,
                        steps=20, **common)  # fmt: skip
    for got, want in zip(lt.tree.leaves(again.params), lt.tree.leaves(full.params)):
        np.testing.assert_array_equal(got, want)  # stopping changed none of the steps: resuming is exact


def test_a_run_fine_tuned_from_a_padded_model_samples_only_its_tokenizers_ids(tmp_path, capsys):
    """``lt train --init-hf`` of a padded model: its final sample, ``lt generate --run`` and
    ``lt generate --run --checkpoint`` sample only the ids its tokenizer knows."""
    hf_dir = tmp_path / "hf"
    hf_dir.mkdir()
    n = _padded_llama(hf_dir, pad=16)
    data = tmp_path / "speech.txt"
    data.write_text("Speak, speak. Before we proceed any further, hear me speak.\n" * 20)
    out = tmp_path / "run"
    train = ["train", "--init-hf", str(hf_dir), "--data", str(data), "--out", str(out), "--seq-len", "16",
             "--batch-size", "2", "--steps", "2", "--sample-tokens", "10"]  # fmt: skip
    assert cli.main(train) == 0
    assert (out / "sample.txt").exists()
    _, model, params, tokenizer = lt.runs.load_run(out)
    assert model.vocab_size == n + 16 and tokenizer.vocab_size == n
    prompt = tokenizer.encode("Speak")
    expected = tokenizer.decode(
        lt.generate.generate(model, params, prompt, max_new_tokens=10, temperature=0, vocab_limit=n)
    )
    generate = ["generate", "--run", str(out), "--prompt", "Speak", "--max-new-tokens", "10", "--temperature", "0"]
    capsys.readouterr()
    assert cli.main(generate) == 0
    assert capsys.readouterr().out == expected + "\n"
    assert cli.main([*generate, "--checkpoint", str(out / "checkpoint.safetensors")]) == 0
    assert capsys.readouterr().out == expected + "\n"


def test_generate_refuses_a_checkpoint_whose_vocabulary_is_not_the_runs(tmp_path, capsys):
    runs = {}
    for name, text in (("abc", "abcabc cab bac\n" * 30), ("abcdef", "abcdef fed cab\n" * 30)):
        (tmp_path / f"{name}.txt").write_text(text)
        runs[name] = tmp_path / name
        argv = ["train", "--data", str(tmp_path / f"{name}.txt"), "--tokenizer", "char", "--preset", "tiny",
                "--steps", "1", "--batch-size", "2", "--seq-len", "8", "--sample-tokens", "0"]  # fmt: skip
        assert cli.main([*argv, "--out", str(runs[name])]) == 0
    other = runs["abcdef"] / "checkpoint.safetensors"
    capsys.readouterr()
    assert cli.main(["generate", "--run", str(runs["abc"]), "--checkpoint", str(other), "--prompt", "a"]) == 2
    assert capsys.readouterr().err == (
        f"lt: error: {other} has a vocabulary of 8 tokens, the run {runs['abc']} 5: they are not from the same run\n"
    )


def test_a_run_faster_than_its_warm_up_adds_steps_and_equals_a_run_sized_so_from_the_start(
    tmp_path, monkeypatch, capsys
):
    """On a fake clock: the warm-up reads 30 ms per step, then the machine turns three times
    faster. Halfway through the warmup (whose rates do not depend on the run's length) the run
    measures its own pace, adds the steps that now fit, and records them in run.json; the result
    equals, bit for bit, a run given that many ``--steps`` from the start."""
    data = tmp_path / "data.txt"
    data.write_text("It was the best of times, it was the worst of times.\n" * 60)
    flags = ["--data", str(data), "--tokenizer", "char", "--preset", "tiny", "--batch-size", "4", "--seq-len", "16",
             "--eval-every", "1000", "--checkpoint-every", "1000", "--sample-tokens", "16"]  # fmt: skip
    clock = FakeClock(0.03)
    monkeypatch.setattr(budget, "clock", clock)
    real_train = cli.train_command.train

    def faster_train(*a, **k):
        clock.tick = 0.01
        return real_train(*a, **k)

    monkeypatch.setattr(cli.train_command, "train", faster_train)
    out = tmp_path / "run"
    assert cli.main(["train", *flags, "--warmup", "40", "--time", "6s", "--out", str(out)]) == 0
    captured = capsys.readouterr()
    planned = int(captured.err.split(" steps fit a 6 s budget")[0].split("lt: ")[-1].replace(",", ""))
    settings = json.loads((out / "run.json").read_text())
    assert settings["steps"] == settings["schedule_steps"] > 1.5 * planned
    assert f"{settings['steps']:,} steps fit" in captured.out
    straight = tmp_path / "straight"
    assert cli.main(["train", *flags, "--warmup", "40", "--steps", str(settings["steps"]), "--out", str(straight)]) == 0
    assert json.loads((straight / "run.json").read_text())["warmup"] == settings["warmup"]
    got, want = (lt.checkpoint.load(d / "checkpoint.safetensors") for d in (out, straight))
    assert got.step == want.step == settings["steps"]
    for a, b in zip(lt.tree.leaves((got.params, got.opt_state)), lt.tree.leaves((want.params, want.opt_state))):
        np.testing.assert_array_equal(a, b)
