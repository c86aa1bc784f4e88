"""Continuous batching without a server: rows that join and leave, the scheduler, streamed text.

The central fact: a row's logits are bit-identical whether it decodes alone or among rows of
other lengths that join and leave around it, so concurrent requests give exactly what
sequential ones give (lt.serve.batch's docstring says why that holds).
"""

import threading

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import lt
from lt.serve import Batch, Scheduler, Sequence, TextStream

MODELS = {name: lt.GPT.preset(name, max_seq_len=48) for name in ("tiny", "llama-tiny")}
PARAMS = {name: model.init(lt.random.key(1)) for name, model in MODELS.items()}


def _decode(name, prompts, joins, steps, max_rows=4):
    """Greedy decoding, prompt i joining at step joins[i] (or the first step after with a free
    row) and leaving after steps[i] tokens: each prompt's logits (V,), one per token."""
    batch = Batch(MODELS[name], PARAMS[name], max_rows=max_rows, capacity=48)
    out, live, waiting = {i: [] for i in range(len(prompts))}, {}, sorted(range(len(prompts)), key=joins.__getitem__)
    for t in range(1000):
        while waiting and joins[waiting[0]] <= t and batch.free:
            i = waiting.pop(0)
            live[i], logits = batch.add(prompts[i])
            out[i].append(logits)
        for i in [i for i in live if len(out[i]) >= steps[i]]:
            batch.remove(live.pop(i))
        if not live and not waiting:
            return out
        if live:
            order = sorted(live, key=lambda i: live[i].index)
            assert [live[i].index for i in order] == list(range(len(order)))  # rows in use are 0..B-1
            for i, logits in zip(order, batch.step([int(np.argmax(out[i][-1])) for i in order])):
                out[i].append(logits)
    raise AssertionError("decoding did not end")


@settings(max_examples=8, deadline=None)
@given(
    name=st.sampled_from(sorted(MODELS)),
    lengths=st.lists(st.integers(1, 12), min_size=2, max_size=5),
    data=st.data(),
)
def test_a_rows_logits_do_not_depend_on_the_rows_beside_it(name, lengths, data):
    vocab = MODELS[name].vocab_size
    prompts = [np.arange(n) * 7 % vocab for n in lengths]
    joins = data.draw(st.lists(st.integers(0, 6), min_size=len(lengths), max_size=len(lengths)))
    steps = data.draw(st.lists(st.integers(1, 10), min_size=len(lengths), max_size=len(lengths)))
    together = _decode(name, prompts, joins, steps)
    for i, prompt in enumerate(prompts):
        alone = _decode(name, [prompt], [0], [steps[i]])[0]
        assert len(alone) == len(together[i]) == steps[i]
        for a, b in zip(alone, together[i]):
            np.testing.assert_array_equal(a, b)  # bit for bit, not close


@pytest.mark.parametrize("name", sorted(MODELS))
def test_a_lone_row_decodes_what_generate_decodes(name):
    model, params = MODELS[name], PARAMS[name]
    prompt = np.array([3, 1, 4, 1, 5])
    logits = _decode(name, [prompt], [0], [12])[0]
    expected = lt.generate.generate(model, params, prompt, max_new_tokens=12, temperature=0)[5:]
    assert [int(np.argmax(x)) for x in logits] == expected.tolist()


def test_removing_a_row_moves_the_last_row_into_its_place_keys_and_all():
    model, params = MODELS["llama-tiny"], PARAMS["llama-tiny"]
    batch = Batch(model, params, max_rows=3, capacity=48)
    rows = [batch.add(np.arange(n) + 1)[0] for n in (3, 5, 7)]
    last_keys = batch.keys[0][2, :, :7].copy()
    batch.remove(rows[0])
    assert [r.index for r in batch.rows] == [0, 1] and batch.rows[0] is rows[2] and batch.free == 1
    np.testing.assert_array_equal(batch.keys[0][0, :, :7], last_keys)
    with pytest.raises(ValueError, match="not in this batch"):
        batch.remove(rows[0])


def test_batch_refuses_what_does_not_fit():
    model, params = MODELS["tiny"], PARAMS["tiny"]
    batch = Batch(model, params, max_rows=1, capacity=8)
    with pytest.raises(ValueError, match="1 to 8 tokens"):
        batch.add(np.arange(9))
    batch.add(np.arange(8))
    with pytest.raises(RuntimeError, match="full"):
        batch.add(np.arange(2))
    with pytest.raises(ValueError, match="a row is full"):
        batch.step([1])
    with pytest.raises(ValueError, match="capacity must be in"):
        Batch(model, params, max_rows=1, capacity=model.max_seq_len + 1)


# ------------------------------------------------------------------- the scheduler


class _Chars:
    """A tokenizer whose id i is the character chr(97 + i % 26) (enough for decoding tests)."""

    vocab_size = 500

    def decode(self, ids):
        return "".join(chr(97 + int(i) % 26) for i in ids)


def _run(scheduler, prompts, **options):
    """Submit one sequence per prompt at once and wait: each one's (tokens, text, finish_reason)."""
    done, texts = threading.Semaphore(0), [""] * len(prompts)

    def sink(i):
        def take(delta, finish, error):
            assert error is None, error
            texts[i] += delta
            if finish is not None:
                done.release()

        return take

    seqs = [Sequence(p, text=TextStream(_Chars()), sink=sink(i), **options) for i, p in enumerate(prompts)]
    scheduler.submit(*seqs)
    for _ in seqs:
        assert done.acquire(timeout=60)
    return [(s.tokens, t, s.finish_reason) for s, t in zip(seqs, texts)]


@pytest.fixture
def scheduler():
    s = Scheduler(MODELS["llama-tiny"], PARAMS["llama-tiny"], max_rows=4, capacity=48).start()
    yield s
    s.close()


PROMPTS = [np.arange(n) % 50 + n for n in (2, 9, 4, 12, 1, 6, 3, 10)]


def test_eight_concurrent_greedy_sequences_equal_eight_sequential_ones(scheduler):
    alone = [_run(scheduler, [p], max_tokens=10, temperature=0)[0] for p in PROMPTS]
    together = _run(scheduler, PROMPTS, max_tokens=10, temperature=0)  # 8 sequences, 4 rows: some wait
    assert together == alone
    assert all(len(tokens) == 10 and finish == "length" for tokens, _, finish in alone)


def test_a_seed_gives_the_same_tokens_whatever_else_decodes(scheduler):
    sampled = dict(max_tokens=12, temperature=1.0, top_p=0.9)
    alone = _run(scheduler, [PROMPTS[0]], rng=lt.random.key(5), **sampled)[0]
    crowd = [Sequence(p, max_tokens=12, text=TextStream(_Chars()), sink=lambda *a: None, temperature=0.7,
                      rng=lt.random.key(i)) for i, p in enumerate(PROMPTS[1:4])]  # fmt: skip
    scheduler.submit(*crowd)
    again = _run(scheduler, [PROMPTS[0]], rng=lt.random.key(5), **sampled)[0]
    other = _run(scheduler, [PROMPTS[0]], rng=lt.random.key(6), **sampled)[0]
    assert again == alone and other[0] != alone[0]


def test_sampling_without_a_key_is_refused():
    with pytest.raises(ValueError, match=r"rng must be an lt\.random\.Key"):
        Sequence([1], max_tokens=3, text=TextStream(_Chars()), sink=print, temperature=0.5)


def test_end_ids_stop_a_sequence_and_a_cancelled_one_frees_its_row(scheduler):
    first = _run(scheduler, [PROMPTS[1]], max_tokens=10, temperature=0)[0][0]
    tokens, text, finish = _run(scheduler, [PROMPTS[1]], max_tokens=10, temperature=0, end_ids=[first[3]])[0]
    assert finish == "stop" and tokens == first[: first.index(first[3]) + 1]
    assert text == _Chars().decode(tokens[:-1])  # the end token has no text
    gone = Sequence(PROMPTS[2], max_tokens=40, text=TextStream(_Chars()), sink=lambda *a: None, temperature=0)
    scheduler.submit(gone)
    scheduler.cancel(gone)
    _run(scheduler, [PROMPTS[0]], max_tokens=2, temperature=0)
    assert scheduler.rows_in_use == 0 and len(gone.tokens) < 40


# ------------------------------------------------------------------- streamed text


@settings(max_examples=60, deadline=None)
@given(
    ids=st.lists(st.integers(0, 25), max_size=30), stops=st.lists(st.text("abc", min_size=1, max_size=3), max_size=3)
)
def test_streamed_deltas_add_up_to_the_text_cut_before_the_first_stop(ids, stops):
    stream, got, stopped = TextStream(_Chars(), tuple(stops)), "", False
    for i in ids:
        delta, stopped = stream.push(i)
        got += delta
        if stopped:
            break
    if not stopped:
        got += stream.flush()
    full = _Chars().decode(ids)
    # generation order: the first prefix that holds a stop ends the text before that stop
    ends = [m for m in range(len(full) + 1) if any(x in full[:m] for x in stops)]
    if ends:
        cut = min(k for x in stops if (k := full[: ends[0]].find(x)) >= 0)
        assert stopped and got == full[:cut]
    else:
        assert not stopped and got == full
