CORRECT = "no einsum: heads moved before time with transpose, q @ k^T by matmul, the mask from nn.make_causal_mask"

import jax.numpy as jnp
import flax.linen as nn


class EinsumMultiHeadAttention(nn.Module):
    num_heads: int
    dropout_rate: float = 0.0

    @nn.compact
    def __call__(self, x, deterministic=True):
        B, T, C = x.shape
        H, D = self.num_heads, C // self.num_heads
        q, k, v = (nn.DenseGeneral((H, D), name=n)(x).transpose(0, 2, 1, 3)  # (B, H, T, D)
                   for n in ("query", "key", "value"))
        wei = (q @ k.transpose(0, 1, 3, 2)) / jnp.sqrt(D).astype(x.dtype)  # (B, H, T, T)
        mask = nn.make_causal_mask(jnp.ones((B, T)))  # (B, 1, T, T)
        wei = nn.softmax(jnp.where(mask, wei, jnp.finfo(wei.dtype).min), axis=-1)
        wei = nn.Dropout(self.dropout_rate)(wei, deterministic=deterministic)
        out = (wei @ v).transpose(0, 2, 1, 3)  # (B, T, H, D)
        return nn.DenseGeneral(C, axis=(-2, -1), name="out")(out)
