CORRECT = "keyword fields everywhere, heads joined with jnp.dstack, proj sized from x.shape[-1], a Dropout given deterministic as a field"

import jax.numpy as jnp
import flax.linen as nn

from .task03_head import Head


class MultiHeadAttention(nn.Module):
    num_heads: int
    head_size: int
    dropout_rate: float = 0.0

    @nn.compact
    def __call__(self, x, deterministic: bool = True):
        outputs = []
        for i in range(self.num_heads):
            head = Head(head_size=self.head_size, dropout_rate=self.dropout_rate, name=f"heads_{i}")
            outputs.append(head(x, deterministic=deterministic))
        joined = jnp.dstack(outputs)  # (B, T, num_heads * head_size): dstack joins 3-D arrays on their last axis
        projected = nn.Dense(features=x.shape[-1], name="proj")(joined)
        return nn.Dropout(rate=self.dropout_rate, deterministic=deterministic)(projected)
