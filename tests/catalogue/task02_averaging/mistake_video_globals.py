"""Task 2: the averaging trick, three ways."""

MISTAKE = "copies the video's module-level B, T, C = 4, 8, 2 and loops over those sizes instead of reading them from x.shape"
DIAGNOSIS = "x.shape"


import jax
import jax.numpy as jnp

B, T, C = 4, 8, 2  # the video's toy example


def causal_mean_loop(x):
    """out[b, t] = mean of x[b, 0..t], with Python loops over b and t (the video's xbow).
    x (B, T, C) -> (B, T, C)."""
    rows = []
    for b in range(B):
        rows.append(jnp.stack([x[b, : t + 1].mean(axis=0) for t in range(T)]))  # (T, C)
    return jnp.stack(rows)


def causal_mean_matmul(x):
    """The same with one matmul by a lower-triangular weight matrix whose rows sum to 1 (xbow2)."""
    wei = jnp.tril(jnp.ones((T, T)))
    wei = wei / wei.sum(axis=1, keepdims=True)  # (T, T)
    return wei @ x  # (T, T) @ (B, T, C) -> (B, T, C)


def causal_mean_softmax(x):
    """The same with a masked softmax: zeros on and below the diagonal, -inf above, softmax (xbow3)."""
    tril = jnp.tril(jnp.ones((T, T)))
    wei = jnp.where(tril == 0, -jnp.inf, jnp.zeros((T, T)))
    wei = jax.nn.softmax(wei, axis=-1)  # (T, T)
    return wei @ x
