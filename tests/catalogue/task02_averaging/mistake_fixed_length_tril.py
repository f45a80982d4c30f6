"""Task 2: the averaging trick, three ways."""

MISTAKE = "builds the lower-triangular mask once, at module level, for a fixed length of 8 (the video's block_size), and slices it to T"
DIAGNOSIS = "a length of 8 is fixed"


import jax
import jax.numpy as jnp

BLOCK_SIZE = 8
TRIL = jnp.tril(jnp.ones((BLOCK_SIZE, BLOCK_SIZE)))  # built once, like the video's register_buffer


def causal_mean_loop(x):
    """out[b, t] = mean of x[b, 0..t], with Python loops over b and t (the video's xbow).
    x (B, T, C) -> (B, T, C)."""
    B, T, C = x.shape
    rows = []
    for b in range(B):
        rows.append(jnp.stack([x[b, : t + 1].mean(axis=0) for t in range(T)]))  # (T, C)
    return jnp.stack(rows)


def causal_mean_matmul(x):
    """The same with one matmul by a lower-triangular weight matrix whose rows sum to 1 (xbow2)."""
    T = x.shape[1]
    wei = TRIL[:T, :T]
    wei = wei / wei.sum(axis=1, keepdims=True)  # (T, T)
    return wei @ x  # (T, T) @ (B, T, C) -> (B, T, C)


def causal_mean_softmax(x):
    """The same with a masked softmax: zeros on and below the diagonal, -inf above, softmax (xbow3)."""
    T = x.shape[1]
    tril = TRIL[:T, :T]
    wei = jnp.where(tril == 0, -jnp.inf, jnp.zeros((T, T)))
    wei = jax.nn.softmax(wei, axis=-1)  # (T, T)
    return wei @ x
