MISTAKE = "hard-codes the video's dropout rate, nn.Dropout(0.2), instead of self.dropout_rate"
DIAGNOSIS = "uses rate 0.2"

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
        k = nn.Dense(self.head_size, use_bias=False, name="key")(x)  # (B, T, hs)
        q = nn.Dense(self.head_size, use_bias=False, name="query")(x)  # (B, T, hs)
        v = nn.Dense(self.head_size, use_bias=False, name="value")(x)  # (B, T, hs)
        wei = q @ k.transpose(0, 2, 1) * self.head_size**-0.5  # (B, T, T)
        tril = jnp.tril(jnp.ones((T, T), dtype=bool))
        wei = jnp.where(tril, wei, -jnp.inf)
        wei = nn.softmax(wei, axis=-1)
        wei = nn.Dropout(0.2)(wei, deterministic=deterministic)
        return wei @ v  # (B, T, hs)
