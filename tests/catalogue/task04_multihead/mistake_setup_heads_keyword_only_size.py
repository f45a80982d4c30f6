MISTAKE = "keeps the heads in setup() as Head(head_size=...) and forgets the dropout rate there"
DIAGNOSIS = "is built with dropout_rate=0"

import jax.numpy as jnp
import flax.linen as nn

from .task03_head import Head


class MultiHeadAttention(nn.Module):
    """Several `Head`s in parallel, concatenated, projected back to C, then dropout.

    Fields: num_heads, head_size (int), dropout_rate (float, default 0.0).
    Call: mha(x, deterministic=True), x (B, T, C) -> (B, T, C).
    Parameters: 'heads_0' .. 'heads_{num_heads-1}' (each a Head: key/query/value kernels (C, head_size)),
    'proj' (nn.Dense: kernel (num_heads * head_size, C), bias (C,)).
    Each head gets dropout_rate; dropout after 'proj' uses the 'dropout' RNG stream.
    """

    num_heads: int
    head_size: int
    dropout_rate: float = 0.0

    def setup(self):
        self.heads = [Head(head_size=self.head_size) for _ in range(self.num_heads)]

    @nn.compact
    def __call__(self, x, deterministic=True):
        C = x.shape[-1]
        out = jnp.concatenate([h(x, deterministic) for h in self.heads], axis=-1)
        out = nn.Dense(C, name="proj")(out)  # (B, T, C)
        return nn.Dropout(self.dropout_rate)(out, deterministic=deterministic)
