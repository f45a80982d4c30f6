"""Task 6: LayerNorm, Block and MiniGPT from your own parts."""

CORRECT = "LayerNorm from the mean of the squared centred values; every call made with keywords; the residual adds as separate steps; deterministic given as a Dropout field"

import jax.numpy as jnp
import flax.linen as nn

from .task01_minigpt import FeedForward
from .task05_einsum_attention import EinsumMultiHeadAttention


class LayerNorm(nn.Module):
    epsilon: float = 1e-6

    @nn.compact
    def __call__(self, x):
        n = x.shape[-1]
        centred = x - jnp.mean(x, axis=-1, keepdims=True)
        variance = jnp.mean(jnp.square(centred), axis=-1, keepdims=True)
        normed = centred / jnp.sqrt(variance + self.epsilon)
        return normed * self.param("scale", nn.initializers.ones, (n,)) + self.param("bias", nn.initializers.zeros, (n,))


class Block(nn.Module):
    n_embd: int
    n_head: int
    dropout_rate: float = 0.0

    @nn.compact
    def __call__(self, x, deterministic=True):
        attended = EinsumMultiHeadAttention(num_heads=self.n_head, dropout_rate=self.dropout_rate, name="attn")(
            x=LayerNorm(name="ln1")(x), deterministic=deterministic)
        attended = nn.Dropout(rate=self.dropout_rate, deterministic=deterministic)(attended)
        x = x + attended
        fed = FeedForward(n_embd=self.n_embd, dropout_rate=self.dropout_rate, name="ffwd")(
            x=LayerNorm(name="ln2")(x), deterministic=deterministic)
        x = x + fed
        return x


class MiniGPT(nn.Module):
    vocab_size: int
    block_size: int
    n_embd: int
    n_head: int
    n_layer: int
    dropout_rate: float = 0.0

    @nn.compact
    def __call__(self, idx, deterministic=True):
        _, T = idx.shape
        x = nn.Embed(num_embeddings=self.vocab_size, features=self.n_embd, name="token_embedding")(idx)
        x = x + nn.Embed(num_embeddings=self.block_size, features=self.n_embd, name="position_embedding")(jnp.arange(T))
        x = nn.Dropout(rate=self.dropout_rate, deterministic=deterministic)(x)
        for i in range(self.n_layer):
            x = Block(n_embd=self.n_embd, n_head=self.n_head, dropout_rate=self.dropout_rate,
                      name=f"blocks_{i}")(x=x, deterministic=deterministic)
        x = LayerNorm(name="ln_f")(x)
        return nn.Dense(features=self.vocab_size, name="lm_head")(x)
