"""Task 3: one head of causal self-attention.

Write `Head`, the building block of the video's `Head(nn.Module)`, in Flax linen.
Check it with `jaxgpt check 3` (or the check cell in the notebook).
"""

import jax.numpy as jnp
import flax.linen as nn


class Head(nn.Module):
    """One head of causal self-attention.

    Fields: head_size (int), dropout_rate (float, default 0.0).
    Call: head(x, deterministic=True) with x of shape (B, T, C); returns (B, T, head_size).
    Parameters: {'key': {'kernel': (C, head_size)}, 'query': {'kernel': (C, head_size)},
                 'value': {'kernel': (C, head_size)}}, no biases.
    Dropout on the attention weights uses the 'dropout' RNG stream.
    """

    head_size: int
    dropout_rate: float = 0.0

    @nn.compact
    def __call__(self, x, deterministic=True):
        B, T, C = x.shape
        # 1. key, query and value projections: nn.Dense(self.head_size, use_bias=False, name="key"), ...
        # 2. affinities q @ k^T, scaled by head_size ** -0.5                          # (B, T, T)
        # 3. mask the future (jnp.tril), softmax over the last axis, dropout
        # 4. weighted sum of the values                                              # (B, T, head_size)
        raise NotImplementedError("Task 3: write Head.__call__")
