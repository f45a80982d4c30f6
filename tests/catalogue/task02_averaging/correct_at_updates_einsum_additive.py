CORRECT = "loop filling zeros with .at[b, t].set, weights divided by arange(1, T+1) and applied with einsum, an additive -inf mask from jnp.triu"

import jax
import jax.numpy as jnp


def causal_mean_loop(x):
    B, T, C = x.shape
    xbow = jnp.zeros_like(x)
    for b in range(B):
        for t in range(T):
            xprev = x[b, : t + 1]  # (t+1, C)
            xbow = xbow.at[b, t].set(jnp.mean(xprev, axis=0))
    return xbow


def causal_mean_matmul(x):
    T = x.shape[1]
    wei = jnp.tril(jnp.ones((T, T))) / jnp.arange(1, T + 1)[:, None]  # row t: 1/(t+1) in columns 0..t
    return jnp.einsum("ts,bsc->btc", wei, x)


def causal_mean_softmax(x):
    T = x.shape[1]
    future = jnp.triu(jnp.full((T, T), -jnp.inf), k=1)  # -inf strictly above the diagonal, 0 elsewhere
    wei = jax.nn.softmax(jnp.zeros((T, T)) + future)
    return jnp.matmul(wei, x)
