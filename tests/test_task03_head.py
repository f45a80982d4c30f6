"""Task 3: `Head`, one head of causal self-attention.

Oracles: Flax's `nn.dot_product_attention` on the learner's own q, k, v projections; a float64 numpy
attention; causality and dropout properties. Known mistakes are named by recomputing them.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxgpt import checks
import oracles

TASK = 3

B, T, C, HS = 2, 6, 12, 4


@pytest.fixture
def x():
    return jax.random.normal(jax.random.key(0), (B, T, C))


def _init(impl, x, **fields):
    head = impl.Head(head_size=HS, **fields)
    params = head.init(jax.random.key(1), x)
    return head, params


def _projections(params, x):
    p = params["params"]
    x64 = np.asarray(x, np.float64)
    return tuple(x64 @ np.asarray(p[name]["kernel"], np.float64) for name in ("query", "key", "value"))


def _diagnose(params, x):
    q, k, v = _projections(params, x)
    variants = [
        ("the causal mask is missing: every position attends to the future.",
         dict(scale=HS**-0.5, mask=None)),
        ("the scores are scaled by C ** -0.5 (the embedding size); scale by head_size ** -0.5.",
         dict(scale=C**-0.5)),
        ("the scores are not scaled; multiply q @ k^T by head_size ** -0.5.", dict(scale=1.0)),
        ("the scores are multiplied by head_size ** 0.5; the factor is head_size ** -0.5.",
         dict(scale=HS**0.5)),
        ("the softmax runs over the wrong axis: normalise each row (axis=-1), over the keys.",
         dict(scale=HS**-0.5, softmax_axis=1)),
        ("the mask is applied after the softmax, so rows no longer sum to 1: mask with -inf before it.",
         dict(scale=HS**-0.5, mask_after=True)),
        ("masked scores are set to 0 instead of -inf, so the future still gets weight after the softmax.",
         dict(scale=HS**-0.5, mask_value=0.0)),
        ("query and key are swapped (k @ q^T): the scores should be q @ k^T.",
         dict(scale=HS**-0.5, swap_qk=True)),
        ("the mask keeps the upper triangle: position t should see 0..t (jnp.tril), not t..T-1.",
         dict(scale=HS**-0.5, mask="upper")),
    ]
    candidates = [(why, lambda kw=kw: oracles.causal_attention(q, k, v, **kw)) for why, kw in variants]
    candidates += [
        ("the scores are divided by head_size; the factor is 1 / sqrt(head_size), head_size ** -0.5.",
         lambda: oracles.causal_attention(q, k, v, scale=1.0 / HS)),
        ("head_size ** -0.5 multiplies the weights after the softmax; it should scale the scores before it.",
         lambda: HS**-0.5 * oracles.causal_attention(q, k, v, scale=1.0)),
        ("the weights multiply the keys (wei @ k); the head's output is wei @ v, a mix of the values.",
         lambda: oracles.causal_attention(q, k, k, scale=HS**-0.5)),
    ]
    return checks.diagnose_from(candidates)


def test_parameter_tree(impl, x):
    """The parameters are key, query and value kernels of shape (C, head_size), without biases"""
    _, params = _init(impl, x)
    expected = {"params": {n: {"kernel": np.zeros((C, HS))} for n in ("key", "query", "value")}}
    checks.assert_tree(params, expected)


def test_output_shape_and_dtype(impl, x):
    """The output has shape (B, T, head_size) and dtype float32"""
    head, params = _init(impl, x)
    out = head.apply(params, x)
    checks.assert_shape(out, (B, T, HS), "Head's output")
    checks.assert_dtype(out, np.float32, "Head's output")


def test_matches_flax_dot_product_attention(impl, x):
    """Same numbers as Flax's nn.dot_product_attention with a causal mask, on your q, k, v"""
    import flax.linen as nn

    head, params = _init(impl, x)
    checks.assert_tree(params, {"params": {n: {"kernel": np.zeros((C, HS))} for n in ("key", "query", "value")}})
    q, k, v = (jnp.asarray(a, jnp.float32)[:, :, None, :] for a in _projections(params, x))  # (B, T, 1, hs)
    mask = nn.make_causal_mask(jnp.ones((B, T)))
    expected = nn.dot_product_attention(q, k, v, mask=mask)[:, :, 0, :]
    checks.assert_close(head.apply(params, x), expected, "Head's output", rtol=1e-4, atol=1e-5,
                        diagnose=_diagnose(params, x))


def test_matches_hand_computation(impl, x):
    """Same numbers as attention computed by hand in float64: softmax(mask(q k^T / sqrt(hs))) v"""
    head, params = _init(impl, x)
    q, k, v = _projections(params, x)
    expected = oracles.causal_attention(q, k, v, scale=HS**-0.5)
    checks.assert_close(head.apply(params, x), expected, "Head's output", rtol=1e-4, atol=1e-5,
                        diagnose=_diagnose(params, x))


def test_causal(impl, x):
    """Position t does not depend on tokens after t"""
    head, params = _init(impl, x)
    for position in (0, T // 2):
        checks.assert_causal(lambda inp: head.apply(params, inp), x, position,
                             lambda inp: inp.at[:, position + 1:].set(7.0), "Head's output")


def test_first_position_is_its_own_value(impl, x):
    """At position 0 the head can only attend to itself, so the output is that token's value"""
    head, params = _init(impl, x)
    _, _, v = _projections(params, x)
    checks.assert_close(np.asarray(head.apply(params, x))[:, 0], v[:, 0], "Head's output at position 0",
                        rtol=1e-4, atol=1e-5)


def test_any_sequence_length(impl, x):
    """Works for any T up to the one it was initialised with, including T = 1, and under jax.jit"""
    head, params = _init(impl, x)
    apply = jax.jit(head.apply)
    for t in (1, 3):
        out = apply(params, x[:, :t])
        checks.assert_shape(out, (B, t, HS), f"Head's output for T={t}")
        q, k, v = _projections(params, x[:, :t])
        checks.assert_close(out, oracles.causal_attention(q, k, v, scale=HS**-0.5),
                            f"Head's output for T={t}", rtol=1e-4, atol=1e-5)


def test_dropout(impl, x):
    """Dropout drops attention weights in training, uses the 'dropout' RNG, and is off when deterministic"""
    head, params = _init(impl, x, dropout_rate=0.5)
    quiet = checks.without_dropout_rng(lambda: head.apply(params, x, deterministic=True), "Head")
    checks.assert_close(quiet, impl.Head(head_size=HS).apply(params, x), "the output with deterministic=True",
                        rtol=1e-5, atol=1e-6)
    noisy = head.apply(params, x, deterministic=False, rngs={"dropout": jax.random.key(3)})
    again = head.apply(params, x, deterministic=False, rngs={"dropout": jax.random.key(3)})
    other = head.apply(params, x, deterministic=False, rngs={"dropout": jax.random.key(4)})
    if np.allclose(noisy, quiet):
        checks.fail("with deterministic=False and dropout_rate=0.5 the output did not change: is dropout "
                    "applied, and does it receive `deterministic`?")
    checks.assert_close(again, noisy, "the output for the same dropout key", rtol=0, atol=0)
    if np.allclose(noisy, other):
        checks.fail("two different dropout keys gave the same output: take the key from the 'dropout' stream.")
    zero = np.asarray(noisy) == 0.0
    partly_zero_rows = np.logical_and(zero.any(-1), ~zero.all(-1))
    if partly_zero_rows.any():
        checks.fail("some output rows are partly zero: dropout seems to act on the head's output; in this "
                    "lesson it acts on the attention weights (wei), before they multiply v.")
    # Dropout's mask depends on the key, not on x, so with one key changing the last token must leave the
    # earlier positions as they were, in training as well as in evaluation.
    changed = x.at[:, -1].add(1.0)
    noisy_changed = head.apply(params, changed, deterministic=False, rngs={"dropout": jax.random.key(3)})
    if not np.allclose(np.asarray(noisy_changed)[:, :-1], np.asarray(noisy)[:, :-1], rtol=1e-5, atol=1e-6):
        checks.fail("with deterministic=False (same dropout key), changing the last token changed the earlier "
                    "positions: in training the future leaks in.\n  Likely cause: dropout is applied to the "
                    "scores before the softmax, so it turns some -inf entries into 0 and the future gets "
                    "weight; apply it to wei after the softmax.")
