CORRECT = "explicit self.param kernels in submodules named query/key/value/out, every projection an einsum, an additive -1e9 mask"

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
            return jnp.einsum("btc,chd->bthd", x, kernel) + bias  # (B, T, H, D)

        q, k, v = heads("query"), heads("key"), heads("value")
        wei = jnp.einsum("bthd,bshd->bhts", q / jnp.sqrt(D), k)  # (B, H, T, S)
        future = jnp.triu(jnp.ones((T, T)), k=1)  # 1 above the diagonal
        wei = nn.softmax(wei - 1e9 * future, axis=-1)
        wei = nn.Dropout(self.dropout_rate)(wei, deterministic=deterministic)
        out = jnp.einsum("bhts,bshd->bthd", wei, v)  # (B, T, H, D)
        kernel, bias = Weights((H, D, C), (C,), name="out")()
        return jnp.einsum("bthd,hdc->btc", out, kernel) + bias
