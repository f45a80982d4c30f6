"""Task 3: one head of causal self-attention."""

CORRECT = "dropout on the attention weights written by hand: a mask from jax.random.bernoulli(self.make_rng('dropout'), 1 - rate, shape), kept weights divided by 1 - rate, no nn.Dropout"

import jax
import jax.numpy as jnp
import flax.linen as nn


class Head(nn.Module):
    head_size: int
    dropout_rate: float = 0.0

    @nn.compact
    def __call__(self, x, deterministic=True):
        B, T, C = x.shape
        k = nn.Dense(self.head_size, use_bias=False, name="key")(x)
        q = nn.Dense(self.head_size, use_bias=False, name="query")(x)
        v = nn.Dense(self.head_size, use_bias=False, name="value")(x)
        wei = q @ k.transpose(0, 2, 1) * self.head_size**-0.5
        wei = jnp.where(jnp.tril(jnp.ones((T, T), dtype=bool)), wei, -jnp.inf)
        wei = nn.softmax(wei, axis=-1)
        if not deterministic and self.dropout_rate > 0.0:
            keep = jax.random.bernoulli(self.make_rng("dropout"), 1.0 - self.dropout_rate, wei.shape)
            wei = jnp.where(keep, wei / (1.0 - self.dropout_rate), 0.0)
        return wei @ v
