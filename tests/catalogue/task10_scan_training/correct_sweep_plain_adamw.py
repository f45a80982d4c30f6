CORRECT = "the sweep builds plain optax.adamw(learning_rate) with the traced rate (no inject_hyperparams)"

"""Task 10: the training loop as one scan, and a learning-rate sweep with vmap."""

from functools import partial

import jax
import jax.numpy as jnp
import optax
from flax.training import train_state

from jaxgpt.data import get_batch

from .task07_training import train_step


@partial(jax.jit, static_argnames=("num_steps", "batch_size", "block_size"))
def train_scan(state, data, key, num_steps, batch_size, block_size):
    """num_steps training steps as one jax.lax.scan: returns (state, losses), losses float (num_steps,).

    The same steps as task 7's train(state, data, key, num_steps, batch_size, block_size), key for key:
    the scan carries (state, key), and step i does
        key, batch_key, dropout_key = jax.random.split(key, 3)
        x, y = get_batch(batch_key, data, batch_size, block_size)      # (B, T) each
        state, loss = train_step(state, x, y, dropout_key)             # task 7's step
    and emits loss, the loss at the parameters step i started from. losses[i] is step i's loss; the state
    returned is the one after the last step. num_steps, batch_size and block_size are static (shapes).
    """

    def step(carry, _):
        state, key = carry
        key, batch_key, dropout_key = jax.random.split(key, 3)
        x, y = get_batch(batch_key, data, batch_size, block_size)  # (B, T) each
        state, loss = train_step(state, x, y, dropout_key)
        return (state, key), loss

    (state, _), losses = jax.lax.scan(step, (state, key), None, length=num_steps)  # losses (num_steps,)
    return state, losses


@partial(jax.jit, static_argnames=("model", "num_steps", "batch_size", "block_size"))
def sweep_learning_rates(model, params, data, key, learning_rates, num_steps, batch_size, block_size,
                         weight_decay=0.01):
    """Trains one model per learning rate, all at once with jax.vmap, from the same parameters.

    learning_rates: float (R,). Model r starts from params (model.init(...)['params']) with
    optax.adamw(learning_rates[r], weight_decay=weight_decay) and trains with
    train_scan(state, data, key, num_steps, batch_size, block_size): every model gets the same key, so
    the same batches and the same dropout keys; only the learning rate differs.
    Returns (params, losses): the R trained parameter trees stacked along a new first axis (every leaf
    (R, ...)), and losses float (R, num_steps), row r the loss curve of learning rate r.
    """

    def run(learning_rate):  # one model; vmap turns it into R of them
        tx = optax.adamw(learning_rate, weight_decay=weight_decay)
        state = train_state.TrainState.create(apply_fn=model.apply, params=params, tx=tx)
        state, losses = train_scan(state, data, key, num_steps, batch_size, block_size)
        return state.params, losses

    return jax.vmap(run)(jnp.asarray(learning_rates, jnp.float32))  # params (R, ...), losses (R, num_steps)
