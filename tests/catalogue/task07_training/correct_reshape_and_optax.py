CORRECT = "the video's reshape to (B*T, V) with Optax's loss; donate_argnums; keys for all steps split up front"

import functools

import jax
import optax
from flax.training import train_state

from jaxgpt.data import get_batch


def cross_entropy(logits, targets):
    B, T, C = logits.shape
    logits = logits.reshape(B * T, C)
    targets = targets.reshape(B * T)
    return optax.softmax_cross_entropy_with_integer_labels(logits, targets).mean()


def create_train_state(model, key, example_idx, learning_rate, weight_decay=0.01):
    variables = model.init(key, example_idx)
    optimizer = optax.adamw(learning_rate=learning_rate, weight_decay=weight_decay)
    return train_state.TrainState.create(apply_fn=model.apply, params=variables["params"], tx=optimizer)


def _loss(params, state, x, y, dropout_key):
    variables = {"params": params}  # what model.init returned, rebuilt around the tree being differentiated
    logits = state.apply_fn(variables, x, deterministic=False, rngs={"dropout": dropout_key})
    return cross_entropy(logits, y)


@functools.partial(jax.jit, donate_argnums=0)
def train_step(state, x, y, dropout_key):
    loss, grads = jax.value_and_grad(_loss)(state.params, state, x, y, dropout_key)
    return state.apply_gradients(grads=grads), loss


def evaluate(state, data, key, eval_iters, batch_size, block_size):
    keys = jax.random.split(key, eval_iters)
    total = 0.0
    for k in range(eval_iters):
        xb, yb = get_batch(keys[k], data, batch_size, block_size)
        logits = state.apply_fn({"params": state.params}, xb)  # deterministic is the default
        total += float(cross_entropy(logits, yb))
    return total / eval_iters


def train(state, data, key, num_steps, batch_size, block_size):
    batch_key, dropout_key = jax.random.split(key)
    batch_keys = jax.random.split(batch_key, num_steps)
    dropout_keys = jax.random.split(dropout_key, num_steps)
    losses = []
    for step in range(num_steps):
        xb, yb = get_batch(batch_keys[step], data, batch_size, block_size)
        state, loss = train_step(state, xb, yb, dropout_keys[step])
        losses.append(float(loss))
    return state, losses
