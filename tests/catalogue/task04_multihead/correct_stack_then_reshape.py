CORRECT = "stacks the heads on axis -2 and reshapes (head-major, the same order as concatenating), dropout given deterministic at construction"

import jax.numpy as jnp
import flax.linen as nn

from .task03_head import Head


class MultiHeadAttention(nn.Module):
    num_heads: int
    head_size: int
    dropout_rate: float = 0.0

    @nn.compact
    def __call__(self, x, deterministic=True):
        B, T, C = x.shape
        heads = []
        for i in range(self.num_heads):
            head = Head(head_size=self.head_size, dropout_rate=self.dropout_rate, name=f"heads_{i}")
            heads.append(head(x, deterministic=deterministic))
        out = jnp.stack(heads, axis=-2).reshape(B, T, self.num_heads * self.head_size)  # (B, T, H, hs) -> (B, T, H*hs)
        out = nn.Dense(features=C, use_bias=True, name="proj")(out)
        return nn.Dropout(rate=self.dropout_rate, deterministic=deterministic)(out)
