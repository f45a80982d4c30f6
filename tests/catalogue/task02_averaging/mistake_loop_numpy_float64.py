MISTAKE = "writes the loop in numpy (np.zeros and in-place assignment), which returns float64"
DIAGNOSIS = "numpy computes in float64"

import jax
import jax.numpy as jnp
import numpy as np


def causal_mean_loop(x):
    B, T, C = x.shape
    xbow = np.zeros((B, T, C))
    for b in range(B):
        for t in range(T):
            xprev = x[b, : t + 1]  # (t+1, C)
            xbow[b, t] = np.mean(xprev, 0)
    return xbow


def causal_mean_matmul(x):
    T = x.shape[1]
    wei = jnp.tril(jnp.ones((T, T)))
    wei = wei / wei.sum(axis=1, keepdims=True)  # (T, T)
    return wei @ x  # (B, T, C)


def causal_mean_softmax(x):
    T = x.shape[1]
    tril = jnp.tril(jnp.ones((T, T)))
    wei = jnp.where(tril == 0, -jnp.inf, jnp.zeros((T, T)))
    wei = jax.nn.softmax(wei, axis=-1)  # (T, T)
    return wei @ x
