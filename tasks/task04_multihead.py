"""Task 4: multi-head attention from heads.

Write `MultiHeadAttention`, the video's `MultiHeadAttention(nn.Module)`, from task 3's `Head`.
Check it with `jaxgpt check 4` (or the check cell in the notebook).
"""

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
        # 1. num_heads separate Heads, Head(self.head_size, self.dropout_rate, name=f"heads_{i}"),
        #    each called as head(x, deterministic)                          # (B, T, head_size) each
        # 2. concatenate them in order along the last axis                    # (B, T, num_heads * head_size)
        # 3. project back to C with nn.Dense(C, name="proj")                  # (B, T, C)
        # 4. dropout, passing deterministic on
        raise NotImplementedError("Task 4: write MultiHeadAttention.__call__")
