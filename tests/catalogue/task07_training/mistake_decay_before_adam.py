MISTAKE = "builds AdamW as chain(add_decayed_weights, adam): the decay goes through the Adam normalisation (L2, not decoupled)"
DIAGNOSIS = 'L2 regularisation'

"""Task 7: the loss, a jitted training step and evaluation."""

import jax
import jax.numpy as jnp
import optax
from flax.training import train_state

from jaxgpt.data import get_batch


def cross_entropy(logits, targets):
    """The mean cross entropy of next-token predictions, over batch and time.

    logits: float (B, T, V), unnormalised scores; targets: int (B, T), the token that follows each position.
    Returns a scalar: the mean over all B * T positions of -log softmax(logits)[target].
    Same number as optax.softmax_cross_entropy_with_integer_labels(logits, targets).mean().
    """
    log_probs = jax.nn.log_softmax(logits, axis=-1)  # (B, T, V), stable for any size of logits
    picked = jnp.take_along_axis(log_probs, targets[..., None], axis=-1)[..., 0]  # (B, T)
    return -picked.mean()


def create_train_state(model, key, example_idx, learning_rate, weight_decay=0.01):
    """A flax TrainState holding the model's parameters and an AdamW optimiser.

    params = model.init(key, example_idx)['params'] (the parameter tree inside the variables dict, as
    Flax's TrainState expects; the model runs as state.apply_fn({'params': state.params}, x));
    apply_fn = model.apply; tx = optax.adamw(learning_rate, weight_decay=weight_decay).
    The default weight_decay is PyTorch's 0.01 (Optax's own default is 1e-4).
    """
    variables = model.init(key, example_idx)  # {'params': {...}}
    tx = optax.chain(optax.add_decayed_weights(weight_decay), optax.adam(learning_rate))
    return train_state.TrainState.create(apply_fn=model.apply, params=variables["params"], tx=tx)


@jax.jit
def train_step(state, x, y, dropout_key):
    """One jitted AdamW step on the batch (x, y), with dropout on: returns (new_state, loss).

    x, y: int (B, T). The loss is cross_entropy of
    state.apply_fn({'params': params}, x, deterministic=False, rngs={'dropout': dropout_key}) against y,
    at the parameters before the step.
    """

    def loss_fn(params):
        logits = state.apply_fn({"params": params}, x, deterministic=False,
                                rngs={"dropout": dropout_key})  # (B, T, V)
        return cross_entropy(logits, y)

    loss, grads = jax.value_and_grad(loss_fn)(state.params)
    state = state.apply_gradients(grads=grads)
    return state, loss


@jax.jit
def _eval_loss(state, x, y):
    logits = state.apply_fn({"params": state.params}, x, deterministic=True)  # (B, T, V), dropout off
    return cross_entropy(logits, y)


def evaluate(state, data, key, eval_iters, batch_size, block_size):
    """The mean loss over eval_iters batches, with dropout off (the video's estimate_loss).

    Batch i comes from get_batch(keys[i], data, batch_size, block_size) with
    keys = jax.random.split(key, eval_iters). Returns a scalar.
    """
    losses = []
    for batch_key in jax.random.split(key, eval_iters):
        x, y = get_batch(batch_key, data, batch_size, block_size)  # (B, T) each
        losses.append(_eval_loss(state, x, y))
    return jnp.mean(jnp.stack(losses))


def train(state, data, key, num_steps, batch_size, block_size):
    """num_steps training steps, each on a fresh batch with a fresh dropout key, both split from key.

    Returns (state, losses): the trained state and the num_steps losses, one per step, in order.
    """
    losses = []
    for _ in range(num_steps):
        key, batch_key, dropout_key = jax.random.split(key, 3)
        x, y = get_batch(batch_key, data, batch_size, block_size)  # (B, T) each
        state, loss = train_step(state, x, y, dropout_key)
        losses.append(loss)
    return state, jnp.array(losses)
