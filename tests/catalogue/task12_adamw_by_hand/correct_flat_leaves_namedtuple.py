"""Task 12: AdamW, global-norm clipping and a warmup-cosine schedule by hand, each as Optax does it."""

CORRECT = ("the leaves flattened once and updated in a Python loop, the state an optax-style NamedTuple with other "
           "names, PyTorch's order of decay (p * (1 - lr * wd) first), the schedule as Optax writes it (alpha = "
           "end / peak) with jnp.minimum, the clip factor as jnp.minimum(1, max_norm / norm), the mask by keystr")

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp


def warmup_cosine_schedule(step, peak_value, warmup_steps, decay_steps, end_value=0.0):
    t = jnp.asarray(step, jnp.float32)
    alpha = end_value / peak_value if peak_value else 0.0
    warm = peak_value * jnp.minimum(t, warmup_steps) / warmup_steps
    into = jnp.minimum(jnp.maximum(t - warmup_steps, 0.0), decay_steps - warmup_steps)
    decayed = peak_value * ((1 - alpha) * 0.5 * (1 + jnp.cos(jnp.pi * into / (decay_steps - warmup_steps))) + alpha)
    return jnp.where(t < warmup_steps, warm, decayed)


def clip_by_global_norm(grads, max_norm):
    leaves, treedef = jax.tree.flatten(grads)
    norm = jnp.sqrt(sum(jnp.vdot(g, g) for g in leaves))
    factor = jnp.minimum(1.0, max_norm / norm)
    return jax.tree.unflatten(treedef, [g * factor for g in leaves])


def decay_mask(params):
    return jax.tree_util.tree_map_with_path(
        lambda path, _: jax.tree_util.keystr(path).endswith(("['kernel']", "['embedding']")), params)


class AdamWState(NamedTuple):
    step: Any
    m: Any
    v: Any


def adamw_init(params):
    return AdamWState(step=jnp.array(0, jnp.int32), m=jax.tree.map(jnp.zeros_like, params),
                      v=jax.tree.map(jnp.zeros_like, params))


def adamw_update(grads, state, params, learning_rate, b1=0.9, b2=0.999, eps=1e-8, weight_decay=1e-4,
                 mask=None):
    p_leaves, treedef = jax.tree.flatten(params)
    g_leaves = treedef.flatten_up_to(grads)
    m_leaves, v_leaves = treedef.flatten_up_to(state.m), treedef.flatten_up_to(state.v)
    if mask is None:
        decays = [True] * len(p_leaves)
    else:
        decays = treedef.flatten_up_to(mask(params) if callable(mask) else mask)
    lr = learning_rate(state.step) if callable(learning_rate) else learning_rate
    step = state.step + 1
    c1, c2 = 1 - b1 ** step, 1 - b2 ** step
    new_p, new_m, new_v = [], [], []
    for p, g, m, v, d in zip(p_leaves, g_leaves, m_leaves, v_leaves, decays):
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        if d:
            p = p * (1 - lr * weight_decay)  # PyTorch decays first; the same numbers as Optax's lr * (u + wd * p)
        new_p.append(p - lr * (m / c1) / (jnp.sqrt(v / c2) + eps))
        new_m.append(m)
        new_v.append(v)
    return jax.tree.unflatten(treedef, new_p), AdamWState(step, jax.tree.unflatten(treedef, new_m),
                                                          jax.tree.unflatten(treedef, new_v))
