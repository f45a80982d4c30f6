CORRECT = "keeps the heads in a list attribute made in setup() (Flax names them heads_0, heads_1, ...), proj made in a compact __call__"

import jax.numpy as jnp
import flax.linen as nn

from .task03_head import Head


class MultiHeadAttention(nn.Module):
    num_heads: int
    head_size: int
    dropout_rate: float = 0.0

    def setup(self):
        self.heads = [Head(self.head_size, self.dropout_rate) for _ in range(self.num_heads)]
        self.dropout = nn.Dropout(self.dropout_rate)

    @nn.compact
    def __call__(self, x, deterministic=True):
        out = jnp.concatenate([h(x, deterministic=deterministic) for h in self.heads], axis=-1)
        out = nn.Dense(x.shape[-1], name="proj")(out)  # (B, T, C)
        return self.dropout(out, deterministic=deterministic)
