CORRECT = "the step written out inside the scan (value_and_grad, apply_gradients) over xs = arange(num_steps); the sweep vmaps over TrainStates built by a vmapped create, with in_axes"

from functools import partial

import jax
import jax.numpy as jnp
import optax
from flax.training import train_state

from jaxgpt.data import get_batch


@partial(jax.jit, static_argnums=(3, 4, 5))
def train_scan(state, data, key, num_steps, batch_size, block_size):
    def body(carry, i):
        state, key = carry
        key, k_batch, k_drop = jax.random.split(key, 3)
        x, y = get_batch(k_batch, data, batch_size, block_size)

        def loss_fn(params):
            logits = state.apply_fn({"params": params}, x, deterministic=False, rngs={"dropout": k_drop})
            return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

        loss, grads = jax.value_and_grad(loss_fn)(state.params)
        return (state.apply_gradients(grads=grads), key), loss

    (state, key), losses = jax.lax.scan(body, (state, key), jnp.arange(num_steps))
    return state, losses


def sweep_learning_rates(model, params, data, key, learning_rates, num_steps, batch_size, block_size,
                         weight_decay=0.01):
    tx = optax.inject_hyperparams(optax.adamw)(learning_rate=0.0, weight_decay=weight_decay)

    def create(lr):
        state = train_state.TrainState.create(apply_fn=model.apply, params=params, tx=tx)
        hyper = dict(state.opt_state.hyperparams, learning_rate=lr)
        return state.replace(opt_state=state.opt_state._replace(hyperparams=hyper))

    states = jax.vmap(create)(jnp.asarray(learning_rates, jnp.float32))
    states, losses = jax.vmap(train_scan, in_axes=(0, None, None, None, None, None))(
        states, data, key, num_steps, batch_size, block_size)
    return states.params, losses
