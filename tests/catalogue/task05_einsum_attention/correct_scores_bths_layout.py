CORRECT = "keeps the scores in a (B, T, H, S) layout (einsum bthd,bshd->bths) with the mask broadcast as tril[:, None, :], projections in setup()"

import jax.numpy as jnp
import flax.linen as nn


class EinsumMultiHeadAttention(nn.Module):
    num_heads: int
    dropout_rate: float = 0.0

    def setup(self):
        self.dropout = nn.Dropout(self.dropout_rate)

    @nn.compact
    def __call__(self, x, deterministic=True):
        B, T, C = x.shape
        H, D = self.num_heads, C // self.num_heads
        q = nn.DenseGeneral(features=(H, D), name="query")(x)
        k = nn.DenseGeneral(features=(H, D), name="key")(x)
        v = nn.DenseGeneral(features=(H, D), name="value")(x)
        scores = jnp.einsum("bthd,bshd->bths", q, k) * D**-0.5  # (B, T, H, S)
        keep = jnp.tril(jnp.ones((T, T), dtype=bool))[:, None, :]  # (T, 1, S): the same for every head
        weights = nn.softmax(jnp.where(keep, scores, -jnp.inf), axis=-1)
        weights = self.dropout(weights, deterministic=deterministic)
        out = jnp.einsum("bths,bshd->bthd", weights, v)
        return nn.DenseGeneral(features=C, axis=(-2, -1), name="out")(out)
