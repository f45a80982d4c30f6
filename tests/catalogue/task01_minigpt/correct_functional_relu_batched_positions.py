"""Task 1: MiniGPT from Flax's own layers."""

CORRECT = "jax.nn.relu between explicit Dense layers, each Dropout built with deterministic as a field, positions with a leading batch axis, a float (1, 1, T, T) tril mask"

import jax
import jax.numpy as jnp
import flax.linen as nn


class FeedForward(nn.Module):
    n_embd: int
    dropout_rate: float = 0.0

    @nn.compact
    def __call__(self, x, deterministic=True):
        hidden = jax.nn.relu(nn.Dense(features=4 * self.n_embd, name="fc")(x))
        out = nn.Dense(features=self.n_embd, name="proj")(hidden)
        return nn.Dropout(rate=self.dropout_rate, deterministic=deterministic)(out)


class Block(nn.Module):
    n_embd: int
    n_head: int
    dropout_rate: float = 0.0

    @nn.compact
    def __call__(self, x, deterministic: bool = True):
        T = x.shape[-2]
        mask = jnp.tril(jnp.ones((1, 1, T, T)))  # 1.0 where a query may attend
        attended = nn.MultiHeadDotProductAttention(num_heads=self.n_head, dropout_rate=self.dropout_rate,
                                                   deterministic=deterministic, name="attn")(
            nn.LayerNorm(name="ln1")(x), mask=mask)
        x = x + nn.Dropout(rate=self.dropout_rate, deterministic=deterministic)(attended)
        fed = FeedForward(n_embd=self.n_embd, dropout_rate=self.dropout_rate, name="ffwd")(
            nn.LayerNorm(name="ln2")(x), deterministic=deterministic)
        return x + fed


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
        positions = jnp.arange(T)[None, :]  # (1, T)
        pos = nn.Embed(self.block_size, self.n_embd, name="position_embedding")(positions)  # (1, T, C)
        tok = nn.Embed(self.vocab_size, self.n_embd, name="token_embedding")(idx)  # (B, T, C)
        x = nn.Dropout(rate=self.dropout_rate, deterministic=deterministic)(pos + tok)
        for layer in range(self.n_layer):
            x = Block(self.n_embd, self.n_head, self.dropout_rate, name=f"blocks_{layer}")(x, deterministic=deterministic)
        logits = nn.Dense(self.vocab_size, name="lm_head")(nn.LayerNorm(name="ln_f")(x))
        return logits
