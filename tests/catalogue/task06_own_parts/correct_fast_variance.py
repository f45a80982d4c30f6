CORRECT = "the variance as mean(x**2) - mean**2 (Flax's own formula), the normalisation folded into one multiplier"

import jax.numpy as jnp
import flax.linen as nn

from .task01_minigpt import FeedForward
from .task05_einsum_attention import EinsumMultiHeadAttention


class LayerNorm(nn.Module):
    epsilon: float = 1e-6

    @nn.compact
    def __call__(self, x):
        features = x.shape[-1]
        gamma = self.param("scale", lambda key, shape: jnp.ones(shape), (features,))
        beta = self.param("bias", lambda key, shape: jnp.zeros(shape), (features,))
        mu = jnp.mean(x, axis=-1, keepdims=True)
        var = jnp.maximum(jnp.mean(x * x, axis=-1, keepdims=True) - mu * mu, 0.0)
        multiplier = gamma / jnp.sqrt(var + self.epsilon)
        return (x - mu) * multiplier + beta


class Block(nn.Module):
    n_embd: int
    n_head: int
    dropout_rate: float = 0.0

    @nn.compact
    def __call__(self, x, deterministic=True):
        drop = nn.Dropout(self.dropout_rate, deterministic=deterministic)
        x = x + drop(EinsumMultiHeadAttention(num_heads=self.n_head, dropout_rate=self.dropout_rate, name="attn")(
            LayerNorm(name="ln1")(x), deterministic=deterministic))
        ffwd = FeedForward(n_embd=self.n_embd, dropout_rate=self.dropout_rate, name="ffwd")
        return x + ffwd(LayerNorm(name="ln2")(x), deterministic=deterministic)


class MiniGPT(nn.Module):
    vocab_size: int
    block_size: int
    n_embd: int
    n_head: int
    n_layer: int
    dropout_rate: float = 0.0

    @nn.compact
    def __call__(self, idx, deterministic=True):
        T = idx.shape[-1]
        positions = nn.Embed(self.block_size, self.n_embd, name="position_embedding")(jnp.arange(T))
        x = nn.Embed(self.vocab_size, self.n_embd, name="token_embedding")(idx) + positions[None, :, :]
        x = nn.Dropout(self.dropout_rate)(x, deterministic=deterministic)
        for layer in range(self.n_layer):
            x = Block(self.n_embd, self.n_head, self.dropout_rate, name=f"blocks_{layer}")(x, deterministic)
        x = LayerNorm(name="ln_f")(x)
        return nn.Dense(self.vocab_size, name="lm_head")(x)
