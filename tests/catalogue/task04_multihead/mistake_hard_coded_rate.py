MISTAKE = "hard-codes the video's rate in the dropout after the projection, nn.Dropout(0.2)"
DIAGNOSIS = "uses rate 0.2"

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

    @nn.compact
    def __call__(self, x, deterministic=True):
        C = x.shape[-1]
        out = jnp.concatenate(
            [Head(self.head_size, self.dropout_rate, name=f"heads_{i}")(x, deterministic)
             for i in range(self.num_heads)], axis=-1)  # (B, T, num_heads * head_size)
        out = nn.Dense(C, name="proj")(out)  # (B, T, C)
        return nn.Dropout(0.2)(out, deterministic=deterministic)
