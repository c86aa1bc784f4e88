"""Cases for the rule tests (test_transform_rules.py): the fused primitives."""

from __future__ import annotations

import numpy as np
from hypothesis import strategies as st
from rule_case import RuleCase

import lt

CASES: dict = {}


def case(name: str):
    """Register ``make`` as the case of the primitive ``lt.ops.<name>``."""

    def register(make):
        CASES["lt.ops." + name] = make
        return make

    return register


def _lead(draw, most: int = 2, least: int = 0) -> tuple:
    """A few small leading axes."""
    return tuple(draw(st.lists(st.integers(1, 3), min_size=least, max_size=most), label="leading axes"))


def _normal(rng, shape):
    return rng.standard_normal(shape)


def _away_from_zero(rng, shape):
    """Normal values at least 0.1 from 0 (ReLU's kink)."""
    x = rng.standard_normal(shape)
    return np.sign(x) * (0.1 + np.abs(x))


def _key(draw):
    return lt.random.key(draw(st.integers(0, 2**16), label="seed"))


def _mask(rng, shape, dead: bool):
    """Random bools (True = keep), mostly True; with ``dead`` a row may be fully masked."""
    m = rng.random(shape) < 0.7
    if dead and m.ndim and rng.random() < 0.5:
        m[(0,) * (m.ndim - 1)] = False
    return m


# ----------------------------------------------------------------- elementwise


@case("elementwise.gelu")
def _gelu(draw):
    shape = _lead(draw, 3, 1)
    return RuleCase(lambda rng: (_normal(rng, shape) * 2,))


@case("elementwise.relu")
def _relu(draw):
    shape = _lead(draw, 3, 1)
    return RuleCase(lambda rng: (_away_from_zero(rng, shape),))


@case("elementwise.relu_squared")
def _relu_squared(draw):
    shape = _lead(draw, 3, 1)
    return RuleCase(lambda rng: (_away_from_zero(rng, shape),))


@case("elementwise.softcap")
def _softcap(draw):
    shape = _lead(draw, 3, 1)
    cap = draw(st.sampled_from([0.5, 2.0, 30.0]), label="cap")
    return RuleCase(lambda rng: (_normal(rng, shape) * 3, cap))


@case("elementwise.dropout")
def _dropout(draw):
    shape = _lead(draw, 3, 1)
    rate = draw(st.sampled_from([0.0, 0.25, 0.5]), label="rate")
    key = _key(draw)
    return RuleCase(lambda rng: (_normal(rng, shape), rate, key))


# ----------------------------------------------------------------- norms, softmax, gates, rotary


@case("norms.layer_norm")
def _layer_norm(draw):
    shape = _lead(draw) + (draw(st.integers(2, 5), label="D"),)
    options = draw(st.sampled_from([{}, {"eps": 1e-3}]), label="options")
    return RuleCase(
        lambda rng: (_normal(rng, shape), _normal(rng, shape[-1:]), _normal(rng, shape[-1:])), options, tolerance=1e-4
    )


@case("norms.rms_norm")
def _rms_norm(draw):
    shape = _lead(draw) + (draw(st.integers(1, 5), label="D"),)
    options = draw(st.sampled_from([{}, {"eps": 1e-3}]), label="options")
    return RuleCase(lambda rng: (_normal(rng, shape), _normal(rng, shape[-1:])), options, tolerance=1e-4)


@case("softmax.softmax")
def _softmax(draw):
    shape = _lead(draw) + (draw(st.integers(1, 4), label="V"),)
    axis = draw(st.sampled_from([-1, 0, len(shape) - 1]), label="axis")
    kind = draw(st.sampled_from(["none", "full", "suffix"]), label="mask")
    if kind == "none":
        return RuleCase(lambda rng: (_normal(rng, shape),), {"axis": axis})
    mask_shape = shape if kind == "full" or axis != -1 else shape[-1:]
    return RuleCase(lambda rng: (_normal(rng, shape), _mask(rng, mask_shape, True)), {"axis": axis})


@case("gated.swiglu")
def _swiglu(draw):
    shape = _lead(draw, 3, 1)
    return RuleCase(lambda rng: (_normal(rng, shape) * 2, _normal(rng, shape)))


@case("rotary.rope")
def _rope(draw):
    T, d = draw(st.integers(1, 3), label="T"), 2 * draw(st.integers(1, 2), label="d/2")
    shape = _lead(draw) + (T, d)

    def sample(rng):
        theta = rng.uniform(-3, 3, (T, d // 2))
        theta = np.concatenate([theta, theta], axis=-1)
        return _normal(rng, shape), np.cos(theta), np.sin(theta)

    return RuleCase(sample, diff=(0,))


# ----------------------------------------------------------------- the token table and the loss


@case("embedding.embedding")
def _embedding(draw):
    V, D = draw(st.integers(1, 5), label="V"), draw(st.integers(1, 3), label="D")
    ids_shape = _lead(draw)
    return RuleCase(lambda rng: (_normal(rng, (V, D)), rng.integers(0, V, ids_shape)))


@case("embedding.unembed")
def _unembed(draw):
    V, D = draw(st.integers(1, 4), label="V"), draw(st.integers(1, 3), label="D")
    shape = _lead(draw) + (D,)
    return RuleCase(lambda rng: (_normal(rng, shape), _normal(rng, (V, D))))


@case("loss.cross_entropy")
def _cross_entropy(draw):
    V = draw(st.integers(1, 4), label="V")
    lead = _lead(draw)
    ignore = draw(st.sampled_from([-100, -1]), label="ignore_index")

    def sample(rng):
        targets = rng.integers(0, V, lead)
        targets[rng.random(lead) < 0.3] = ignore  # ignored positions, now and then all of them
        return _normal(rng, lead + (V,)) * 2, targets

    return RuleCase(sample, {"ignore_index": ignore})


# ----------------------------------------------------------------- attention


def _attention_sample(draw):
    """``sample``: q (..., T, d), k and v (..., S, d|dv) (now and then with leading 1s), maybe a mask."""
    lead = _lead(draw)
    T, S = draw(st.integers(1, 4), label="T"), draw(st.integers(1, 4), label="S")
    d, dv = draw(st.integers(1, 3), label="d"), draw(st.integers(1, 3), label="dv")
    kv_lead = tuple(1 for _ in lead) if lead and draw(st.booleans(), label="shared k, v") else lead
    mask_kind = draw(st.sampled_from(["none", "square", "full"]), label="mask")

    def sample(rng):
        args = (_normal(rng, lead + (T, d)), _normal(rng, kv_lead + (S, d)), _normal(rng, kv_lead + (S, dv)))
        if mask_kind == "none":
            return args
        return (*args, _mask(rng, (T, S) if mask_kind == "square" else lead + (T, S), True))

    return sample


@case("attention.attention")
def _attention(draw):
    sample = _attention_sample(draw)
    options = {"return_weights": draw(st.booleans(), label="return_weights")}
    if draw(st.booleans(), label="dropout"):
        options.update(dropout=0.4, rng=_key(draw))
    return RuleCase(sample, options, tolerance=1e-4)


@case("blockwise.blockwise_attention")
def _blockwise_attention(draw):
    sample = _attention_sample(draw)
    options = {"causal": draw(st.booleans(), label="causal")}
    options["block"] = draw(st.sampled_from([None, (1, 2), (2, 3)]), label="block")
    if draw(st.booleans(), label="dropout"):
        options.update(dropout=0.4, rng=_key(draw))
    return RuleCase(sample, options, tolerance=1e-4)
