"""Task 12: AdamW, global-norm clipping and a warmup-cosine schedule by hand, each as Optax does it."""

CORRECT = ("the count starts at 1 in adamw_init (bias correction with the count itself, the schedule at count - 1), "
           "the state a plain tuple of float counts, the schedule with jax.lax.cond, the clip with jax.lax.select as "
           "Optax's, the decay masked with jnp.where over a tree of mask arrays")

import jax
import jax.numpy as jnp


def warmup_cosine_schedule(step, peak_value, warmup_steps, decay_steps, end_value=0.0):
    step = jnp.asarray(step, jnp.float32)

    def warm(s):
        return peak_value * s / warmup_steps

    def cosine(s):
        progress = jnp.minimum((s - warmup_steps) / (decay_steps - warmup_steps), 1.0)
        return end_value + (peak_value - end_value) * (jnp.cos(jnp.pi * progress) + 1) / 2

    return jax.lax.cond(step < warmup_steps, warm, cosine, step)


def clip_by_global_norm(grads, max_norm):
    norm = jnp.sqrt(sum(jnp.sum(g ** 2) for g in jax.tree_util.tree_leaves(grads)))
    return jax.tree_util.tree_map(lambda g: jax.lax.select(norm < max_norm, g, g / norm * max_norm), grads)


def decay_mask(params):
    def rule(path, leaf):
        name = path[-1].key
        return name == "kernel" or name == "embedding"

    return jax.tree_util.tree_map_with_path(rule, params)


def adamw_init(params):
    zeros = jax.tree_util.tree_map(lambda p: jnp.zeros(p.shape, p.dtype), params)
    return (jnp.float32(1.0), zeros, zeros)


def adamw_update(grads, state, params, learning_rate, b1=0.9, b2=0.999, eps=1e-8, weight_decay=1e-4,
                 mask=None):
    count, mu, nu = state  # count is this step's number, from 1
    lr = learning_rate(count - 1) if callable(learning_rate) else learning_rate
    if mask is None:
        mask = True
    elif callable(mask):
        mask = mask(params)
    masks = jax.tree_util.tree_map(lambda p, m: jnp.full(p.shape, m), params, mask) if mask is not True else \
        jax.tree_util.tree_map(lambda p: jnp.ones(p.shape, bool), params)
    mu = jax.tree_util.tree_map(lambda g, m: (1 - b1) * g + b1 * m, grads, mu)
    nu = jax.tree_util.tree_map(lambda g, v: (1 - b2) * jnp.square(g) + b2 * v, grads, nu)
    step = jax.tree_util.tree_map(lambda m, v: (m / (1 - b1 ** count)) / (jnp.sqrt(v / (1 - b2 ** count)) + eps),
                                  mu, nu)
    step = jax.tree_util.tree_map(lambda u, p, keep: u + jnp.where(keep, weight_decay * p, 0.0), step, params, masks)
    new_params = jax.tree_util.tree_map(lambda p, u: p - lr * u, params, step)
    return new_params, (count + 1, mu, nu)
