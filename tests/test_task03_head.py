"""Task 3: `Head`, one head of causal self-attention.

Oracles: Flax's `nn.dot_product_attention` on the learner's own q, k, v projections; a float64 numpy
attention; the reference's Head on the same parameters, submodule by submodule, for lengths and batches that
don't hide mistakes (jaxgpt/grader/differential.py); its dropout, matched by what it drops; causality. Known mistakes
are named by recomputing them, and by the catalogue's mistakes when one gives exactly the learner's output.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxgpt.grader import checks, differential
import oracles

TASK = 3

B, T, C, HS = 2, 6, 12, 4
# The reference-differential check's inputs (B, T): the initialisation's first, then T longer than any small
# constant a learner might hard-code, then T = 1 (below the initialisation's) with batch 1. B, T, C and
# head_size differ from each other, so no mix-up of axes passes by coincidence. Each new shape costs its own
# compilations (about 0.5 s), hence three.
SHAPES = [(B, T), (3, 37), (1, 1)]
RATE = oracles.DROPOUT_RATE
DROPOUT_NAMES = {"Dropout_0": "the attention weights (wei, after the softmax)", **oracles.dropout_names()}


@pytest.fixture
def x():
    return jax.random.normal(jax.random.key(0), (B, T, C))


def _init(impl, x, **fields):
    head = impl.Head(head_size=HS, **fields)
    params = head.init(jax.random.key(1), x)
    return head, params


def _expected_tree():
    return {"params": {n: {"kernel": np.zeros((C, HS))} for n in ("key", "query", "value")}}


def _projections(params, x):
    if checks.tree_shapes(params) != checks.tree_shapes(_expected_tree()):
        checks.fail("not checked: Head's parameter tree is not the lesson's (key, query and value kernels of shape "
                    f"(C, head_size) = ({C}, {HS}), no biases), so q, k and v cannot be read from it; the "
                    "parameter-tree check says what differs.")
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


def _output(value, what="Head's output"):
    return checks.as_array(value, what)


def _both(impl, reference, x):
    """The learner's Head and the reference's, built alike with a non-round dropout rate, and the reference's
    parameters (which the learner's Head must accept)."""
    learner = impl.Head(head_size=HS, dropout_rate=RATE)
    ref = reference.Head(head_size=HS, dropout_rate=RATE)
    variables = ref.init(jax.random.key(1), x)
    oracles.require_tree(learner, x, variables, "Head")
    return learner, ref, variables


def test_parameter_tree(impl, x):
    """The parameters are key, query and value kernels of shape (C, head_size), without biases"""
    _, params = _init(impl, x)
    checks.assert_tree(params, _expected_tree())


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
    checks.assert_tree(params, _expected_tree())
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
        checks.assert_causal(lambda inp: _output(head.apply(params, inp)), x, position,
                             lambda inp: inp.at[:, position + 1:].set(7.0), "Head's output")


def test_first_position_is_its_own_value(impl, x):
    """At position 0 the head can only attend to itself, so the output is that token's value"""
    head, params = _init(impl, x)
    _, _, v = _projections(params, x)
    out = checks.assert_shape(head.apply(params, x), (B, T, HS), "Head's output")
    checks.assert_close(out[:, 0], v[:, 0], "Head's output at position 0", rtol=1e-4, atol=1e-5)


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


def test_same_as_reference(impl, reference, x):
    """Same steps as the reference Head on its parameters, for T = 1, 6, 37, batch 1 to 3, training and evaluation"""
    learner, ref, variables = _both(impl, reference, x)
    oracles.same_as_reference(learner, ref, variables, SHAPES, "Head", C=C, first=x, task=impl.task,
                              build=lambda view: view.Head(head_size=HS, dropout_rate=RATE))


def test_dropout(impl, reference, x):
    """Dropout acts on the attention weights, at the Head's dropout_rate, only in training, with the 'dropout' RNG"""
    head, ref, params = _both(impl, reference, x)
    quiet = _output(checks.without_dropout_rng(lambda: head.apply(params, x, deterministic=True), "Head"))
    checks.assert_close(quiet, impl.Head(head_size=HS).apply(params, x), "the output with deterministic=True",
                        rtol=1e-5, atol=1e-6)
    q, k, _ = _projections(params, x)
    differential.assert_same_dropout(head, ref, params, (x,), "Head", RATE, names=DROPOUT_NAMES,
                                     describe=oracles.scores_describer(lambda: q, lambda: k, HS**-0.5))
    # What it drops is right; now the randomness: the 'dropout' stream, the key, and nothing else.
    noisy = _output(head.apply(params, x, deterministic=False, rngs={"dropout": jax.random.key(3)}))
    again = head.apply(params, x, deterministic=False, rngs={"dropout": jax.random.key(3)})
    other = head.apply(params, x, deterministic=False, rngs={"dropout": jax.random.key(4)})
    if np.allclose(noisy, quiet):
        checks.fail(f"with deterministic=False and dropout_rate={RATE} the output did not change: is dropout "
                    "applied, and does it receive `deterministic`?")
    checks.assert_close(again, noisy, "the output for the same dropout key", rtol=0, atol=0)
    if np.allclose(noisy, other):
        checks.fail("two different dropout keys gave the same output: take the key from the 'dropout' stream.")
    # Dropout's mask depends on the key, not on x, so with one key changing the last token must leave the
    # earlier positions as they were, in training as well as in evaluation.
    changed = x.at[:, -1].add(1.0)
    noisy_changed = head.apply(params, changed, deterministic=False, rngs={"dropout": jax.random.key(3)})
    if not np.allclose(np.asarray(noisy_changed)[:, :-1], noisy[:, :-1], rtol=1e-5, atol=1e-6):
        quiet_changed = np.asarray(head.apply(params, changed, deterministic=True))
        leaks_anyway = not np.allclose(quiet_changed[:, :-1], np.asarray(quiet)[:, :-1], rtol=1e-5, atol=1e-6)
        checks.fail("with deterministic=False (same dropout key), changing the last token changed the earlier "
                    "positions: in training the future leaks in"
                    + (", and with deterministic=True as well: see the causality check." if leaks_anyway else
                       ", although with deterministic=True it does not."))
