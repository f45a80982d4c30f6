"""Task 7: the loss, a jitted training step and evaluation.

Write the five functions below: the loss, the train state, one jitted step, an evaluation loop and the
training loop. They work for any Flax model called as model.apply({'params': params}, idx,
deterministic=...) that returns logits (B, T, vocab_size): your MiniGPT, or the warm-up's bigram model.
Check them with `jaxgpt check 7` (or the check cell in the notebook).
"""

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
    # 1. log-probabilities over the vocabulary, stably: jax.nn.log_softmax(logits, axis=-1)    # (B, T, V)
    # 2. pick each target's log-probability (jnp.take_along_axis, or a one-hot and a sum)      # (B, T)
    # 3. minus their mean over batch and time                                                  # ()
    raise NotImplementedError("Task 7: write cross_entropy")


def create_train_state(model, key, example_idx, learning_rate, weight_decay=0.01):
    """A flax TrainState holding the model's parameters and an AdamW optimiser.

    params = model.init(key, example_idx)['params'] (the parameter tree inside the variables dict, as
    Flax's TrainState expects; the model runs as state.apply_fn({'params': state.params}, x));
    apply_fn = model.apply; tx = optax.adamw(learning_rate, weight_decay=weight_decay).
    The default weight_decay is PyTorch's 0.01 (Optax's own default is 1e-4).
    """
    # variables = model.init(key, example_idx)                              # {'params': {...}}
    # train_state.TrainState.create(apply_fn=..., params=variables['params'], tx=...)
    raise NotImplementedError("Task 7: write create_train_state")


@jax.jit
def train_step(state, x, y, dropout_key):
    """One jitted AdamW step on the batch (x, y), with dropout on: returns (new_state, loss).

    x, y: int (B, T). The loss is cross_entropy of
    state.apply_fn({'params': params}, x, deterministic=False, rngs={'dropout': dropout_key}) against y,
    at the parameters before the step.
    """
    # 1. def loss_fn(params): logits from state.apply_fn({'params': params}, ...), dropout on   # (B, T, V)
    #    -> cross_entropy(logits, y)
    # 2. loss, grads = jax.value_and_grad(loss_fn)(state.params)
    # 3. state = state.apply_gradients(grads=grads); return state, loss
    raise NotImplementedError("Task 7: write train_step")


def evaluate(state, data, key, eval_iters, batch_size, block_size):
    """The mean loss over eval_iters batches, with dropout off (the video's estimate_loss).

    Batch i comes from get_batch(keys[i], data, batch_size, block_size) with
    keys = jax.random.split(key, eval_iters). Returns a scalar.
    """
    # for each key in jax.random.split(key, eval_iters):
    #     x, y = get_batch(...)                                                             # (B, T) each
    #     logits of state.apply_fn({'params': state.params}, x, deterministic=True)         # (B, T, V)
    #     the batch's cross_entropy
    # return the mean of the eval_iters losses                                              # ()
    raise NotImplementedError("Task 7: write evaluate")


def train(state, data, key, num_steps, batch_size, block_size):
    """num_steps training steps, each on a fresh batch with a fresh dropout key, both split from key.

    Returns (state, losses): the trained state and the num_steps losses, one per step, in order.
    """
    # for each step:
    #     key, batch_key, dropout_key = jax.random.split(key, 3)
    #     x, y = get_batch(batch_key, data, batch_size, block_size)                        # (B, T) each
    #     state, loss = train_step(state, x, y, dropout_key)
    # return state, the losses (a list or an array)
    raise NotImplementedError("Task 7: write train")
