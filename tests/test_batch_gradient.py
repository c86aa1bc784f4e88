"""A training step's gradient with the batch's rows in pieces (``lt.batch_gradient``): the mean
loss's gradient of the whole batch, whatever the number of workers."""

from __future__ import annotations

from unittest import mock

import attrs
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import lt
from lt import batch_gradient

MODEL = lt.GPT.preset("llama-tiny", vocab_size=40, max_seq_len=8, num_layers=1)
PARAMS = MODEL.init(lt.random.key(0), np.float64)


def _batch(seed: int, rows: int, ignored: float):
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 40, (rows, 8))
    y = np.where(rng.random((rows, 8)) < ignored, -100, rng.integers(0, 40, (rows, 8)))
    return x, y


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 2**16), rows=st.integers(1, 5), ignored=st.sampled_from([0.0, 0.5, 0.9]))
def test_pieces_give_the_whole_batch_gradient(seed, rows, ignored):
    """Each piece's mean weighted by its counted tokens: the loss and gradient of the uncut batch
    (float64, to rounding), tokens counted once, whatever the rows and the ignored targets."""
    x, y = _batch(seed, rows, ignored)
    loss, grads = lt.value_and_grad(MODEL.loss)(PARAMS, x, y, ignore_index=-100)
    got_loss, got, tokens = batch_gradient.gradient_fn(MODEL)(PARAMS, x, y, None)
    assert batch_gradient.row_pieces(MODEL, PARAMS, rows) == min(rows, batch_gradient.ROW_PIECES)
    assert tokens == int(np.sum(y != -100))
    np.testing.assert_allclose(got_loss, float(loss), rtol=1e-12, atol=1e-12)
    for a, b in zip(lt.tree.leaves(got), lt.tree.leaves(grads)):
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12)


def test_a_piece_with_no_counted_token_adds_nothing():
    """All of the second piece's targets ignored: the result is the first piece's alone."""
    x, y = _batch(1, 4, 0.0)
    y[2:] = -100
    loss, grads = lt.value_and_grad(MODEL.loss)(PARAMS, x[:2], y[:2], ignore_index=-100)
    got_loss, got, tokens = batch_gradient.gradient_fn(MODEL)(PARAMS, x, y, None)
    assert tokens == 16
    np.testing.assert_allclose(got_loss, float(loss), rtol=1e-12)
    for a, b in zip(lt.tree.leaves(got), lt.tree.leaves(grads)):
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12)


def test_the_bits_do_not_depend_on_the_workers():
    """One worker takes the pieces in turn, two share them: the same bits (float32)."""
    model = lt.GPT.preset("llama-tiny", vocab_size=40, max_seq_len=8)
    params = model.init(lt.random.key(1))
    x, y = _batch(2, 6, 0.3)
    grads_of = batch_gradient.gradient_fn(model)
    with lt.threads.pin(1):
        one = grads_of(params, x, y, None)
    with lt.threads.pin(2):
        two = grads_of(params, x, y, None)
    assert one[0] == two[0] and one[2] == two[2]
    for a, b in zip(lt.tree.leaves(one[1]), lt.tree.leaves(two[1])):
        np.testing.assert_array_equal(a, b)


def test_what_stays_whole():
    """Gradients that would pass PIECE_BYTES together (gpt2's would take 1 GB), a model with
    dropout (its masks are drawn for the whole batch), another kind of model, one row: one piece."""
    nbytes = lt.tree.nbytes(PARAMS)
    assert batch_gradient.row_pieces(MODEL, PARAMS, 16) == batch_gradient.ROW_PIECES
    with mock.patch.object(batch_gradient, "PIECE_BYTES", 2 * nbytes - 1):
        assert batch_gradient.row_pieces(MODEL, PARAMS, 16) == 1
    assert batch_gradient.row_pieces(MODEL, PARAMS, 1) == 1
    assert batch_gradient.row_pieces(attrs.evolve(MODEL, dropout=0.1), PARAMS, 16) == 1
    assert batch_gradient.row_pieces(lt.nn.LayerNorm(4), PARAMS, 16) == 1


def test_micro_batches_and_pieces_together():
    """(k, B, T) micro-batches, each cut in pieces: the uncut batch's mean loss and gradient."""
    x, y = _batch(3, 6, 0.2)
    loss, grads, tokens = batch_gradient.gradient_fn(MODEL)(PARAMS, x.reshape(2, 3, 8), y.reshape(2, 3, 8), None)
    assert tokens == int(np.sum(y != -100))
    whole_loss, whole = lt.value_and_grad(MODEL.loss)(PARAMS, x, y, ignore_index=-100)
    np.testing.assert_allclose(loss, float(whole_loss), rtol=1e-12)
    for a, b in zip(lt.tree.leaves(grads), lt.tree.leaves(whole)):
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12)


def test_row_pieces_chosen_by_the_caller():
    """``make_train_step(..., row_pieces=1)`` is the step by hand to the bit; a number is taken as
    given (at most one a row); more than one piece of another kind of model is refused by name."""
    model = lt.GPT.preset("llama-tiny", vocab_size=40, max_seq_len=8)
    params = model.init(lt.random.key(2))
    x, y = _batch(4, 6, 0.0)
    opt = lt.optim.adamw(1e-2)
    state = lt.TrainState.create(params, opt)
    stepped, _ = lt.make_train_step(model, opt, row_pieces=1)(state, (x, y))
    _, grads = lt.value_and_grad(model.loss)(params, x, y)
    updates, _ = opt.update(grads, state.opt_state, params)
    for a, b in zip(lt.tree.leaves(stepped.params), lt.tree.leaves(lt.optim.apply_updates(params, updates))):
        np.testing.assert_array_equal(a, b)
    assert batch_gradient.row_pieces(model, params, 6, 4) == 4
    assert batch_gradient.row_pieces(model, params, 3, 4) == 3
    with pytest.raises(ValueError, match="row_pieces=2 needs an lt.GPT, got LayerNorm"):
        batch_gradient.gradient_fn(lt.nn.LayerNorm(4), pieces=2)
    with pytest.raises(ValueError, match="row_pieces"):
        lt.make_train_step(model, opt, row_pieces=0)
