CORRECT = "log-softmax as logits - logsumexp with a one-hot; has_aux; jax.jit applied by call; evaluate as one vmapped program; fold_in keys"

from functools import partial

import jax
import jax.numpy as jnp
import optax
from flax.training.train_state import TrainState

from jaxgpt.data import get_batch


def cross_entropy(logits, targets):
    log_probs = logits - jax.nn.logsumexp(logits, axis=-1, keepdims=True)  # (B, T, V)
    one_hot = jax.nn.one_hot(targets, logits.shape[-1])  # (B, T, V)
    return -jnp.sum(one_hot * log_probs, axis=-1).mean()


def create_train_state(model, key, example_idx, learning_rate, weight_decay=0.01):
    tx = optax.adamw(learning_rate=learning_rate, b1=0.9, b2=0.999, eps=1e-8, weight_decay=weight_decay)
    return TrainState.create(apply_fn=model.apply, params=model.init(key, example_idx)["params"], tx=tx)


def _train_step(state, x, y, dropout_key):
    def loss_fn(params):
        logits = state.apply_fn({"params": params}, x, deterministic=False, rngs={"dropout": dropout_key})
        return cross_entropy(logits, y), logits

    (loss, _logits), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    return state.apply_gradients(grads=grads), loss


train_step = jax.jit(_train_step)


@partial(jax.jit, static_argnames=("batch_size", "block_size"))
def _mean_eval_loss(state, data, keys, batch_size, block_size):
    def batch_loss(k):
        x, y = get_batch(k, data, batch_size, block_size)
        return cross_entropy(state.apply_fn({"params": state.params}, x, deterministic=True), y)

    return jax.vmap(batch_loss)(keys).mean()


def evaluate(state, data, key, eval_iters, batch_size, block_size):
    keys = jax.random.split(key, eval_iters)
    return _mean_eval_loss(state, jnp.asarray(data), keys, batch_size, block_size)


def train(state, data, key, num_steps, batch_size, block_size):
    losses = []
    for step in range(num_steps):
        batch_key, dropout_key = jax.random.split(jax.random.fold_in(key, step))
        x, y = get_batch(batch_key, data, batch_size, block_size)
        state, loss = train_step(state, x, y, dropout_key)
        losses.append(loss)
    return state, jnp.array(losses)
