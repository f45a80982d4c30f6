"""Task 4: multi-head attention from heads."""

CORRECT = "the dropout after proj written by hand (a mask drawn with jax.random.uniform(self.make_rng('dropout'), shape) >= rate, kept values multiplied by 1 / (1 - rate)), not nn.Dropout"

import jax
import jax.numpy as jnp
import flax.linen as nn

from .task03_head import Head


class MultiHeadAttention(nn.Module):
    num_heads: int
    head_size: int
    dropout_rate: float = 0.0

    @nn.compact
    def __call__(self, x, deterministic=True):
        C = x.shape[-1]
        out = jnp.concatenate(
            [Head(self.head_size, self.dropout_rate, name=f"heads_{i}")(x, deterministic)
             for i in range(self.num_heads)], axis=-1)
        out = nn.Dense(C, name="proj")(out)
        if deterministic or self.dropout_rate == 0.0:
            return out
        keep = jax.random.uniform(self.make_rng("dropout"), out.shape) >= self.dropout_rate
        return out * keep * (1.0 / (1.0 - self.dropout_rate))
