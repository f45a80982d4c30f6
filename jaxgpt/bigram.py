"""The warm-up model: a bigram language model, and the few lines that train it.

The model is one lookup table. Row i of the table holds the logits of the token that follows token i,
so the prediction at position t depends on idx[:, t] alone: one character of context.
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax.training import train_state

from jaxgpt.data import get_batch


class SimpleDecoder(nn.Module):
    """A bigram model: logits for the next token read straight from an (vocab_size, vocab_size) table.

    Field: vocab_size (int).
    Call: model.apply(params, idx, deterministic=True), idx int (B, T) -> logits (B, T, vocab_size).
    Parameters: {'params': {'token_embedding': {'embedding': (vocab_size, vocab_size)}}}.
    `deterministic` does nothing here (there is no dropout); it is accepted so that every model in the
    challenge is called the same way.
    """

    vocab_size: int

    @nn.compact
    def __call__(self, idx, deterministic: bool = True):
        # Each token looks up its own row: the logits of what comes next.
        return nn.Embed(self.vocab_size, self.vocab_size, name="token_embedding")(idx)  # (B, T, vocab_size)


def init_train_state(model: nn.Module, key, example_idx, learning_rate: float = 1e-2, *,
                     weight_decay: float = 1e-2) -> train_state.TrainState:
    """A TrainState holding the model's parameters (state.params, the tree under 'params') and AdamW.

    weight_decay defaults to 1e-2, PyTorch's AdamW default that the video uses (optax's own default is 1e-4).
    """
    variables = model.init(key, example_idx)
    return train_state.TrainState.create(apply_fn=model.apply, params=variables["params"],
                                         tx=optax.adamw(learning_rate, weight_decay=weight_decay))


def _loss(params, apply_fn, x, y):
    logits = apply_fn({"params": params}, x, deterministic=True)  # (B, T, vocab_size)
    # Mean over batch and time of -log p(y[b, t] | x[b, :t + 1]).
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()


@jax.jit
def train_step(state: train_state.TrainState, x, y):
    """One AdamW step on a batch: (state, x, y) -> (new state, the batch's mean cross-entropy loss)."""
    loss, grads = jax.value_and_grad(lambda params: _loss(params, state.apply_fn, x, y))(state.params)
    return state.apply_gradients(grads=grads), loss


@functools.partial(jax.jit, static_argnames=("batch_size", "block_size"))
def _mean_loss(state, data, keys, batch_size, block_size):
    def batch_loss(key):
        x, y = get_batch(key, data, batch_size, block_size)
        return _loss(state.params, state.apply_fn, x, y)

    return jax.lax.map(batch_loss, keys).mean()  # one compiled loop over all batches


def estimate_loss(state: train_state.TrainState, data, key, batch_size: int, block_size: int,
                  iters: int = 200) -> float:
    """The mean loss over `iters` random batches of `data`: a less noisy number than one batch's loss."""
    if iters <= 0:
        raise ValueError(f"iters must be a positive int, got {iters}.")
    keys = jax.random.split(key, iters)
    return float(_mean_loss(state, jnp.asarray(data), keys, batch_size, block_size))
