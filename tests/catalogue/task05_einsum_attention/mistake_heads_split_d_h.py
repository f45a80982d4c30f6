MISTAKE = "treats each (C, H, D) kernel as one (C, C) matrix, as nanoGPT's fused c_attn, and splits the features into heads as (D, H)"
DIAGNOSIS = "(D, H) instead of (H, D)"

import jax.numpy as jnp
import flax.linen as nn


class Weights(nn.Module):
    """A kernel and a bias laid out as Flax's DenseGeneral lays them out."""

    kernel_shape: tuple
    bias_shape: tuple

    @nn.compact
    def __call__(self):
        kernel = self.param("kernel", nn.initializers.lecun_normal(), self.kernel_shape)
        bias = self.param("bias", nn.initializers.zeros_init(), self.bias_shape)
        return kernel, bias


class EinsumMultiHeadAttention(nn.Module):
    num_heads: int
    dropout_rate: float = 0.0

    @nn.compact
    def __call__(self, x, deterministic=True):
        B, T, C = x.shape
        H, D = self.num_heads, C // self.num_heads

        def heads(name):
            kernel, bias = Weights((C, H, D), (H, D), name=name)()
            flat = x @ kernel.reshape(C, C) + bias.reshape(C)  # (B, T, C)
            return flat.reshape(B, T, D, H).transpose(0, 3, 1, 2)  # (B, H, T, D)

        q, k, v = heads("query"), heads("key"), heads("value")
        wei = jnp.einsum("bhtd,bhsd->bhts", q, k) * D**-0.5
        tril = jnp.tril(jnp.ones((T, T), dtype=bool))
        wei = nn.softmax(jnp.where(tril, wei, -jnp.inf), axis=-1)
        wei = nn.Dropout(self.dropout_rate)(wei, deterministic=deterministic)
        out = jnp.einsum("bhts,bhsd->bhtd", wei, v)  # (B, H, T, D)
        out = out.transpose(0, 2, 3, 1).reshape(B, T, C)  # back through the same (D, H) split
        kernel, bias = Weights((H, D, C), (C,), name="out")()
        return out @ kernel.reshape(C, C) + bias
