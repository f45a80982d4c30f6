CORRECT = "setup() with a single fused-free layout, einsum for the scores and an additive large-negative mask"

import jax.numpy as jnp
import flax.linen as nn


class Head(nn.Module):
    head_size: int
    dropout_rate: float = 0.0

    def setup(self):
        self.key = nn.Dense(self.head_size, use_bias=False)
        self.query = nn.Dense(self.head_size, use_bias=False)
        self.value = nn.Dense(self.head_size, use_bias=False)
        self.dropout = nn.Dropout(self.dropout_rate)

    def __call__(self, x, deterministic=True):
        T = x.shape[1]
        q, k, v = self.query(x), self.key(x), self.value(x)
        scores = jnp.einsum("btd,bsd->bts", q, k) / jnp.sqrt(self.head_size)
        future = jnp.triu(jnp.ones((T, T)), k=1)
        scores = scores - 1e9 * future
        weights = self.dropout(jax_softmax(scores), deterministic=deterministic)
        return jnp.einsum("bts,bsd->btd", weights, v)


def jax_softmax(s):
    s = s - s.max(axis=-1, keepdims=True)
    e = jnp.exp(s)
    return e / e.sum(axis=-1, keepdims=True)
