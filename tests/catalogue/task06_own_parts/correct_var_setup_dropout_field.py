"""Task 6: LayerNorm, Block and MiniGPT from your own parts."""

CORRECT = "LayerNorm from jnp.var; Block built in setup() with its Dropout as a field; positions embedded with a leading batch axis"

import jax.numpy as jnp
import flax.linen as nn

from .task01_minigpt import FeedForward
from .task05_einsum_attention import EinsumMultiHeadAttention


class LayerNorm(nn.Module):
    epsilon: float = 1e-6

    @nn.compact
    def __call__(self, x):
        scale = self.param("scale", nn.initializers.ones, x.shape[-1:])
        bias = self.param("bias", nn.initializers.zeros, x.shape[-1:])
        mean = jnp.mean(x, axis=-1, keepdims=True)
        var = jnp.var(x, axis=-1, keepdims=True)
        return scale * (x - mean) / jnp.sqrt(var + self.epsilon) + bias


class Block(nn.Module):
    n_embd: int
    n_head: int
    dropout_rate: float = 0.0

    def setup(self):
        self.ln1 = LayerNorm()
        self.attn = EinsumMultiHeadAttention(num_heads=self.n_head, dropout_rate=self.dropout_rate)
        self.drop = nn.Dropout(self.dropout_rate)
        self.ln2 = LayerNorm()
        self.ffwd = FeedForward(n_embd=self.n_embd, dropout_rate=self.dropout_rate)

    def __call__(self, x, deterministic=True):
        x = x + self.drop(self.attn(self.ln1(x), deterministic=deterministic), deterministic=deterministic)
        return x + self.ffwd(self.ln2(x), deterministic=deterministic)


class MiniGPT(nn.Module):
    vocab_size: int
    block_size: int
    n_embd: int
    n_head: int
    n_layer: int
    dropout_rate: float = 0.0

    @nn.compact
    def __call__(self, idx, deterministic=True):
        T = idx.shape[1]
        tok = nn.Embed(self.vocab_size, self.n_embd, name="token_embedding")(idx)
        pos = nn.Embed(self.block_size, self.n_embd, name="position_embedding")(jnp.arange(T)[None, :])  # (1, T, C)
        x = nn.Dropout(self.dropout_rate)(tok + pos, deterministic=deterministic)
        for i in range(self.n_layer):
            x = Block(self.n_embd, self.n_head, self.dropout_rate, name=f"blocks_{i}")(x, deterministic=deterministic)
        return nn.Dense(self.vocab_size, name="lm_head")(LayerNorm(name="ln_f")(x))
