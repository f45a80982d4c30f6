"""Task 5: all heads at once with einsum."""

MISTAKE = "dropout written by hand without the scaling: the kept attention weights are not divided by 1 - rate"
DIAGNOSIS = "Your dropout is not scaled"

import jax
import jax.numpy as jnp
import flax.linen as nn


class EinsumMultiHeadAttention(nn.Module):
    num_heads: int
    dropout_rate: float = 0.0

    def dropout(self, x, deterministic):
        if deterministic or self.dropout_rate == 0.0:
            return x
        keep = jax.random.bernoulli(self.make_rng("dropout"), 1.0 - self.dropout_rate, x.shape)
        return jnp.where(keep, x, jnp.zeros_like(x))

    @nn.compact
    def __call__(self, x, deterministic=True):
        B, T, C = x.shape
        H, D = self.num_heads, C // self.num_heads
        q = nn.DenseGeneral((H, D), name="query")(x)
        k = nn.DenseGeneral((H, D), name="key")(x)
        v = nn.DenseGeneral((H, D), name="value")(x)
        wei = jnp.einsum("bthd,bshd->bhts", q, k) / jnp.sqrt(D)
        wei = jnp.where(jnp.tril(jnp.ones((T, T), dtype=bool)), wei, -jnp.inf)
        wei = self.dropout(jax.nn.softmax(wei, axis=-1), deterministic)
        out = jnp.einsum("bhts,bshd->bthd", wei, v)
        return nn.DenseGeneral(C, axis=(-2, -1), name="out")(out)
