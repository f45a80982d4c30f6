CORRECT = "setup() with a named dropout layer, the mask from comparing aranges, math.sqrt, jax.nn.softmax with where="

import math

import jax
import jax.numpy as jnp
import flax.linen as nn


class Head(nn.Module):
    head_size: int
    dropout_rate: float = 0.0

    def setup(self):
        self.query = nn.Dense(self.head_size, use_bias=False)
        self.key = nn.Dense(self.head_size, use_bias=False)
        self.value = nn.Dense(self.head_size, use_bias=False)
        self.attn_drop = nn.Dropout(rate=self.dropout_rate)

    def __call__(self, x, deterministic: bool = True):
        T = x.shape[-2]
        q, k, v = self.query(x), self.key(x), self.value(x)
        scores = jnp.matmul(q, jnp.swapaxes(k, -2, -1)) / math.sqrt(self.head_size)
        allowed = jnp.arange(T)[:, None] >= jnp.arange(T)[None, :]
        weights = jax.nn.softmax(jnp.where(allowed, scores, -1e30), axis=-1, where=allowed)
        weights = self.attn_drop(weights, deterministic=deterministic)
        return jnp.matmul(weights, v)
