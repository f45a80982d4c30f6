"""Task 5: all heads at once with einsum."""

MISTAKE = "applies dropout to the masked scores before the softmax"
DIAGNOSIS = "acts on the scores before the softmax"

import jax.numpy as jnp
import flax.linen as nn


class EinsumMultiHeadAttention(nn.Module):
    """Causal multi-head self-attention with every head computed at once by `jnp.einsum`.

    Its parameter tree is that of `nn.MultiHeadDotProductAttention(num_heads)` on inputs of width C, so it
    can replace Flax's layer in `MiniGPT` (D = C // num_heads):
      'query', 'key', 'value': {'kernel': (C, num_heads, D), 'bias': (num_heads, D)}
      'out': {'kernel': (num_heads, D, C), 'bias': (C,)}
    Fields: num_heads (int), dropout_rate (float, default 0.0).
    Call: attn(x, deterministic=True), x (B, T, C) -> (B, T, C); always causal.
    Dropout on the attention weights uses the 'dropout' RNG stream.
    """

    num_heads: int
    dropout_rate: float = 0.0

    @nn.compact
    def __call__(self, x, deterministic=True):
        B, T, C = x.shape
        H, D = self.num_heads, C // self.num_heads

        def projection(name):  # one matmul gives every head's projection: kernel (C, H, D)
            return nn.DenseGeneral((H, D), axis=-1, name=name)(x)  # (B, T, H, D)

        q, k, v = projection("query"), projection("key"), projection("value")
        wei = jnp.einsum("bthd,bshd->bhts", q, k) * D**-0.5  # (B, H, T, T)
        tril = jnp.tril(jnp.ones((T, T), dtype=bool))  # (T, T): broadcast over B and H
        wei = jnp.where(tril, wei, -jnp.inf)
        wei = nn.Dropout(self.dropout_rate)(wei, deterministic=deterministic)
        wei = nn.softmax(wei, axis=-1)  # over s, the keys
        out = jnp.einsum("bhts,bshd->bthd", wei, v)  # (B, T, H, D)
        return nn.DenseGeneral(C, axis=(-2, -1), name="out")(out)  # (B, T, C)
