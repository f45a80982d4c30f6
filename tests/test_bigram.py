"""Self-tests of jaxgpt.bigram: the warm-up model, its training state and its training step."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxgpt.bigram import SimpleDecoder, estimate_loss, init_train_state, train_step

V = 5


@pytest.fixture(scope="module")
def model():
    return SimpleDecoder(V)


@pytest.fixture(scope="module")
def state(model):
    return init_train_state(model, jax.random.key(0), jnp.zeros((2, 4), jnp.int32))


def test_parameter_tree(state):
    """The parameters are one (vocab_size, vocab_size) table named token_embedding."""
    shapes = jax.tree_util.tree_map(lambda a: a.shape, state.params)
    assert shapes == {"token_embedding": {"embedding": (V, V)}}


def test_logits_are_rows_of_the_table(model, state):
    """logits[b, t] is row idx[b, t] of the table, shape (B, T, vocab_size), with or without deterministic."""
    idx = jnp.array([[0, 1, 2], [4, 4, 3]], jnp.int32)
    table = np.asarray(state.params["token_embedding"]["embedding"])
    logits = model.apply({"params": state.params}, idx)
    assert logits.shape == (2, 3, V)
    np.testing.assert_array_equal(np.asarray(logits), table[np.asarray(idx)])
    np.testing.assert_array_equal(model.apply({"params": state.params}, idx, deterministic=False), logits)


# One batch shape for every test, so that train_step compiles once.
X = jnp.array([[0, 1, 2, 3], [3, 2, 1, 3]], jnp.int32)
Y = jnp.array([[1, 2, 3, 4], [2, 1, 0, 4]], jnp.int32)


def softmax64(logits):
    e = np.exp(logits - logits.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def cross_entropy64(table, x, y):
    """Mean of -log softmax(table[x])[y] in float64: the loss by hand."""
    probs = softmax64(table[np.asarray(x)])  # (B, T, V)
    return -np.log(np.take_along_axis(probs, np.asarray(y)[..., None], -1)).mean()


def test_train_step_loss_is_mean_cross_entropy(state):
    """train_step returns the batch's mean cross entropy, the same number computed by hand in float64."""
    _, loss = train_step(state, X, Y)
    table = np.asarray(state.params["token_embedding"]["embedding"], np.float64)
    np.testing.assert_allclose(float(loss), cross_entropy64(table, X, Y), rtol=1e-5)
    assert int(state.step) == 0, "train_step must not change the state it was given"


def test_train_step_is_adamw_on_the_gradient(state):
    """One step moves the table as AdamW (lr 1e-2, weight decay 1e-2) does, gradient and update by hand."""
    new_state, _ = train_step(state, X, Y)
    table = np.asarray(state.params["token_embedding"]["embedding"], np.float64)
    x, y = np.asarray(X).ravel(), np.asarray(Y).ravel()
    # d(mean cross entropy)/d logits = (softmax - one_hot(y)) / N, and row x of the table is those logits.
    dlogits = (softmax64(table[x]) - np.eye(V)[y]) / x.size  # (N, V)
    grad = np.zeros_like(table)
    np.add.at(grad, x, dlogits)
    # Adam's first step, after bias correction: m_hat = g and v_hat = g^2, so the step is g / (|g| + eps);
    # decoupled weight decay adds wd * param, both scaled by the learning rate.
    lr, wd, eps = 1e-2, 1e-2, 1e-8
    expected = table - lr * (grad / (np.abs(grad) + eps) + wd * table)
    np.testing.assert_allclose(np.asarray(new_state.params["token_embedding"]["embedding"]), expected,
                               rtol=1e-5, atol=1e-6)
    assert int(new_state.step) == 1


def test_training_lowers_the_loss_on_a_repetitive_corpus(model, state):
    """Training on windows of 'abcd' repeated drives the loss far below its start: each next token is certain."""
    x = jnp.array([[0, 1, 2, 3], [2, 3, 0, 1]], jnp.int32)  # windows of 0 1 2 3 0 1 2 3 ...
    y = (x + 1) % 4  # the token after each one
    # The fixture's state, so that train_step does not compile again: the optimiser is part of its cache key.
    losses = []
    for _ in range(150):
        state, loss = train_step(state, x, y)
        losses.append(float(loss))
    assert losses[0] > 1.0 and losses[-1] < 0.3 * losses[0], losses
    logits = model.apply({"params": state.params}, x[:1])
    np.testing.assert_array_equal(np.argmax(logits[0], -1), [1, 2, 3, 0])


def test_estimate_loss(state):
    """estimate_loss is the mean loss over batches: with one possible window, exactly that window's loss."""
    data = jnp.array([0, 1, 2, 3, 4], jnp.int32)  # block_size + 1 tokens: every batch is x = 0..3, y = 1..4
    table = np.asarray(state.params["token_embedding"]["embedding"], np.float64)
    expected = cross_entropy64(table, np.tile(np.arange(4), (2, 1)), np.tile(np.arange(1, 5), (2, 1)))
    estimate = estimate_loss(state, data, jax.random.key(5), 2, 4, iters=3)
    assert isinstance(estimate, float)
    assert estimate == pytest.approx(expected, rel=1e-5)
    with pytest.raises(ValueError, match="iters"):
        estimate_loss(state, data, jax.random.key(5), 2, 4, iters=0)

