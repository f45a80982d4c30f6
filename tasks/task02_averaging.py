"""Task 2: the averaging trick, three ways.

Write the causal running mean of x three times: with Python loops, with one matmul by a lower-triangular
weight matrix, and with a masked softmax. Check them with `jaxgpt check 2` (or the check cell in the
notebook).
"""

import jax
import jax.numpy as jnp


def causal_mean_loop(x):
    """out[b, t] = mean of x[b, 0..t], with Python loops over b and t (the video's xbow).
    x (B, T, C) -> (B, T, C)."""
    B, T, C = x.shape
    # for each b and t: the mean over the time axis of x[b, :t+1]        # (t+1, C) -> (C,)
    # stack the means for t = 0..T-1, then for b = 0..B-1               # (T, C), then (B, T, C)
    raise NotImplementedError("Task 2: write causal_mean_loop")


def causal_mean_matmul(x):
    """The same with one matmul by a lower-triangular weight matrix whose rows sum to 1 (xbow2)."""
    T = x.shape[1]
    # 1. wei = jnp.tril of a (T, T) matrix of ones                        # (T, T)
    # 2. divide each row by its sum, so that row t holds 1/(t+1) in columns 0..t
    # 3. wei @ x: (T, T) @ (B, T, C) broadcasts over B                    # (B, T, C)
    raise NotImplementedError("Task 2: write causal_mean_matmul")


def causal_mean_softmax(x):
    """The same with a masked softmax: zeros on and below the diagonal, -inf above, softmax (xbow3)."""
    T = x.shape[1]
    # 1. scores: 0 where tril is 1, -inf where it is 0 (jnp.where)        # (T, T)
    # 2. jax.nn.softmax over the last axis turns each row into equal weights on 0..t
    # 3. wei @ x                                                          # (B, T, C)
    raise NotImplementedError("Task 2: write causal_mean_softmax")
