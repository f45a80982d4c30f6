CORRECT = "Flax's nn.dot_product_attention_weights on a head axis of 1 for the weights, then its own nn.Dropout on them"

import jax.numpy as jnp
import flax.linen as nn


class Head(nn.Module):
    head_size: int
    dropout_rate: float = 0.0

    @nn.compact
    def __call__(self, x, deterministic=True):
        q = nn.Dense(self.head_size, use_bias=False, name="query")(x)[:, :, None, :]  # (B, T, 1, hs)
        k = nn.Dense(self.head_size, use_bias=False, name="key")(x)[:, :, None, :]
        v = nn.Dense(self.head_size, use_bias=False, name="value")(x)
        weights = nn.dot_product_attention_weights(q, k, mask=nn.make_causal_mask(x[:, :, 0]))  # (B, 1, T, T)
        weights = nn.Dropout(rate=self.dropout_rate, deterministic=deterministic)(weights)
        return jnp.einsum("bhts,bsd->btd", weights, v)
