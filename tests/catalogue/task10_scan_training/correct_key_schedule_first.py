CORRECT = "the key chain computed by a first scan, then the steps scanned over the (batch key, dropout key) pairs; the sweep with plain optax.adamw of a traced rate, not jitted"

import jax
import jax.numpy as jnp
import optax
from flax.training import train_state

from jaxgpt.data import get_batch

from .task07_training import train_step


def _step_keys(key, num_steps):
    def split(key, _):
        key, batch_key, dropout_key = jax.random.split(key, 3)
        return key, (batch_key, dropout_key)

    _, pairs = jax.lax.scan(split, key, None, length=num_steps)
    return pairs  # two arrays of num_steps keys


def train_scan(state, data, key, num_steps, batch_size, block_size):
    def one(state, keys):
        batch_key, dropout_key = keys
        x, y = get_batch(batch_key, data, batch_size, block_size)
        return train_step(state, x, y, dropout_key)

    return jax.lax.scan(one, state, _step_keys(key, num_steps))


def sweep_learning_rates(model, params, data, key, learning_rates, num_steps, batch_size, block_size,
                         weight_decay=0.01):
    def run(lr):
        state = train_state.TrainState.create(apply_fn=model.apply, params=params,
                                              tx=optax.adamw(lr, weight_decay=weight_decay))
        state, losses = train_scan(state, data, key, num_steps, batch_size, block_size)
        return state.params, losses

    return jax.vmap(run)(jnp.asarray(learning_rates))
