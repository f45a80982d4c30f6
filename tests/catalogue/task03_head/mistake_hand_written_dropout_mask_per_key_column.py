"""Task 3: one head of causal self-attention."""

MISTAKE = "dropout written by hand with a mask of shape wei.shape[-1:]: one draw per key position, shared by every query and sequence"
DIAGNOSIS = "draws a mask of shape (6,)"

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
            keep = jax.random.bernoulli(self.make_rng("dropout"), 1.0 - self.dropout_rate, wei.shape[-1:])
            wei = jnp.where(keep, wei / (1.0 - self.dropout_rate), 0.0)
        return wei @ v
