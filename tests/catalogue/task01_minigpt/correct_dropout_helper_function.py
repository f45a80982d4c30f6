"""Task 1: MiniGPT from Flax's own layers."""

CORRECT = "one helper function builds every Dropout (modules made inside a plain function called from a compact method), the residual adds written as x += ..., deterministic passed positionally"

import jax.numpy as jnp
import flax.linen as nn


def dropped(h, rate, deterministic):
    return nn.Dropout(rate)(h, deterministic)


class FeedForward(nn.Module):
    n_embd: int
    dropout_rate: float = 0.0

    @nn.compact
    def __call__(self, x, deterministic=True):
        h = nn.Dense(4 * self.n_embd, name="fc")(x)
        h = nn.Dense(self.n_embd, name="proj")(jnp.maximum(h, 0))
        return dropped(h, self.dropout_rate, deterministic)


class Block(nn.Module):
    n_embd: int
    n_head: int
    dropout_rate: float = 0.0

    @nn.compact
    def __call__(self, x, deterministic=True):
        B, T, C = x.shape
        causal = nn.make_causal_mask(jnp.zeros((B, T)))
        h = nn.LayerNorm(name="ln1")(x)
        x += dropped(nn.MultiHeadDotProductAttention(self.n_head, dropout_rate=self.dropout_rate, name="attn")(
            h, h, h, mask=causal, deterministic=deterministic), self.dropout_rate, deterministic)
        x += FeedForward(self.n_embd, self.dropout_rate, name="ffwd")(nn.LayerNorm(name="ln2")(x), deterministic)
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
        T = idx.shape[1]
        x = nn.Embed(self.vocab_size, self.n_embd, name="token_embedding")(idx)
        x = x + nn.Embed(self.block_size, self.n_embd, name="position_embedding")(jnp.arange(T))
        x = dropped(x, self.dropout_rate, deterministic)
        for i in range(self.n_layer):
            x = Block(self.n_embd, self.n_head, self.dropout_rate, name=f"blocks_{i}")(x, deterministic)
        return nn.Dense(self.vocab_size, name="lm_head")(nn.LayerNorm(name="ln_f")(x))
