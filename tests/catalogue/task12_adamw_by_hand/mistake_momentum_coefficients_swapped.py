MISTAKE = "mu = b1 * g + (1 - b1) * mu: the coefficients of the running mean swapped"
DIAGNOSIS = 'in the first moment b1 weights the new gradient'

"""Task 12: AdamW, global-norm clipping and a warmup-cosine schedule by hand, each as Optax does it."""

import jax
import jax.numpy as jnp


def warmup_cosine_schedule(step, peak_value, warmup_steps, decay_steps, end_value=0.0):
    """The learning rate at `step`: a linear warmup from 0 to peak_value, then a cosine decay to end_value.

    step: an int (a Python int or an int32 array, traced under jax.jit). warmup_steps >= 1 and
    decay_steps > warmup_steps are Python ints; decay_steps counts the warmup too, as Optax's does:
        step <= warmup_steps:                 peak_value * step / warmup_steps            (0 at step 0)
        warmup_steps <= step <= decay_steps:  end_value + (peak_value - end_value) * (1 + cos(pi * p)) / 2,
                                              p = (step - warmup_steps) / (decay_steps - warmup_steps)
        step >= decay_steps:                  end_value
    Returns a float32 scalar, optax.warmup_cosine_decay_schedule(0.0, peak_value, warmup_steps, decay_steps,
    end_value)(step). No Python `if` on step: it is a traced value inside a jitted training step.
    """
    step = jnp.asarray(step, jnp.float32)
    warmup = peak_value * step / warmup_steps
    progress = jnp.clip((step - warmup_steps) / (decay_steps - warmup_steps), 0.0, 1.0)  # 0 to 1, then held
    cosine = end_value + (peak_value - end_value) * 0.5 * (1.0 + jnp.cos(jnp.pi * progress))
    return jnp.where(step < warmup_steps, warmup, cosine)


def clip_by_global_norm(grads, max_norm):
    """grads scaled so that their global norm is at most max_norm, as optax.clip_by_global_norm(max_norm).

    The global norm is sqrt of the sum of every squared entry of every leaf: the whole tree is one vector.
    When it is larger than max_norm every leaf is multiplied by max_norm / norm (one factor for all, so the
    direction is kept); otherwise grads come back unchanged. Returns a tree shaped like grads. Jittable: no
    Python `if` on the norm.
    """
    leaves = jax.tree_util.tree_leaves(grads)
    norm = jnp.sqrt(sum(jnp.sum(jnp.square(g)) for g in leaves))  # () the length of the whole tree
    scale = jnp.where(norm > max_norm, max_norm / norm, 1.0)  # ()
    return jax.tree_util.tree_map(lambda g: g * scale, grads)


def decay_mask(params):
    """The weight-decay mask of a parameter tree: the same tree with True at every leaf named 'kernel' or
    'embedding' (weight matrices and embedding tables decay) and False elsewhere (biases, LayerNorm scales).
    Chosen by name, as jaxgpt's training does; one Python bool per leaf."""
    return jax.tree_util.tree_map_with_path(
        lambda path, _: getattr(path[-1], "key", None) in ("kernel", "embedding"), params)


def adamw_init(params):
    """AdamW's state for params: the step count (an int32 scalar, 0) and the first and second moment
    estimates mu and nu (zeros shaped like params). A pytree of arrays, so jit and scan can carry it."""
    zeros = jax.tree_util.tree_map(jnp.zeros_like, params)
    return {"count": jnp.zeros([], jnp.int32), "mu": zeros, "nu": zeros}


def adamw_update(grads, state, params, learning_rate, b1=0.9, b2=0.999, eps=1e-8, weight_decay=1e-4,
                 mask=None):
    """One AdamW step: returns (new_params, new_state), as optax.adamw(learning_rate, b1, b2, eps,
    weight_decay=weight_decay, mask=mask) followed by optax.apply_updates.

    With t = state's count + 1 (this is step t, counting from 1), for every leaf g of grads and p of params:
        mu    = b1 * mu + (1 - b1) * g                 first moment, a running mean of g
        nu    = b2 * nu + (1 - b2) * g ** 2            second moment, a running mean of g ** 2
        mu_hat, nu_hat = mu / (1 - b1 ** t), nu / (1 - b2 ** t)      bias correction
        u     = mu_hat / (sqrt(nu_hat) + eps)          eps outside the square root
        u     = u + weight_decay * p                   only where mask is True: decoupled weight decay
        p     = p - lr * u
    learning_rate: a float, or a schedule (a function of the step count, called with the count before this
    step: 0 at the first step, as Optax does). mask: None (every leaf decays), a tree of bools shaped like
    params, or a function params -> such a tree (decay_mask). The new state holds t and the new moments.
    """
    t = state["count"] + 1  # this step's number, from 1
    mu = jax.tree_util.tree_map(lambda m, g: b1 * g + (1 - b1) * m, state["mu"], grads)
    nu = jax.tree_util.tree_map(lambda v, g: b2 * v + (1 - b2) * jnp.square(g), state["nu"], grads)
    lr = learning_rate(state["count"]) if callable(learning_rate) else learning_rate
    if mask is None:
        mask = jax.tree_util.tree_map(lambda _: True, params)
    elif callable(mask):
        mask = mask(params)

    def step(p, m, v, decays):
        m_hat = m / (1 - b1 ** t)
        v_hat = v / (1 - b2 ** t)
        u = m_hat / (jnp.sqrt(v_hat) + eps)
        if decays:
            u = u + weight_decay * p
        return p - lr * u

    new_params = jax.tree_util.tree_map(step, params, mu, nu, mask)
    return new_params, {"count": t, "mu": mu, "nu": nu}
