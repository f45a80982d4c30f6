MISTAKE = "builds the mask once, at module level, for a fixed block_size = 8, and slices it to T"
DIAGNOSIS = "built for a fixed length"

import jax.numpy as jnp
import flax.linen as nn

block_size = 8
tril = jnp.tril(jnp.ones((block_size, block_size), dtype=bool))


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
        wei = jnp.where(tril[:T, :T], wei, -jnp.inf)
        wei = nn.softmax(wei, axis=-1)
        wei = nn.Dropout(self.dropout_rate)(wei, deterministic=deterministic)
        return wei @ v  # (B, T, hs)
