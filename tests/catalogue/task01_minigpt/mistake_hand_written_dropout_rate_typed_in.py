"""Task 1: MiniGPT from Flax's own layers."""

MISTAKE = "dropout written by hand, the feed-forward's with a rate typed in: jax.random.bernoulli(key, 0.9, x.shape) and x / 0.9, whatever dropout_rate is"
DIAGNOSIS = "a dropout rate of 0.1"

import jax
import jax.numpy as jnp
import flax.linen as nn


class FeedForward(nn.Module):
    n_embd: int
    dropout_rate: float = 0.0

    def drop(self, x, deterministic):
        if deterministic or self.dropout_rate == 0.0:
            return x
        keep = jax.random.bernoulli(self.make_rng("dropout"), 0.9, x.shape)
        return jnp.where(keep, x / 0.9, 0.0)

    @nn.compact
    def __call__(self, x, deterministic=True):
        x = nn.Dense(4 * self.n_embd, name="fc")(x)
        x = nn.relu(x)
        x = nn.Dense(self.n_embd, name="proj")(x)
        return self.drop(x, deterministic)


class Block(nn.Module):
    n_embd: int
    n_head: int
    dropout_rate: float = 0.0

    @nn.compact
    def __call__(self, x, deterministic=True):
        T = x.shape[1]
        mask = nn.make_causal_mask(jnp.ones((1, T)))
        h = nn.LayerNorm(name="ln1")(x)
        h = nn.MultiHeadDotProductAttention(num_heads=self.n_head, dropout_rate=self.dropout_rate,
                                            name="attn")(h, mask=mask, deterministic=deterministic)
        if not deterministic and self.dropout_rate > 0:
            keep = jax.random.bernoulli(self.make_rng("dropout"), 1.0 - self.dropout_rate, h.shape)
            h = jnp.where(keep, h / (1.0 - self.dropout_rate), 0.0)
        x = x + h
        h = nn.LayerNorm(name="ln2")(x)
        return x + FeedForward(self.n_embd, self.dropout_rate, name="ffwd")(h, deterministic=deterministic)


class MiniGPT(nn.Module):
    vocab_size: int
    block_size: int
    n_embd: int
    n_head: int
    n_layer: int
    dropout_rate: float = 0.0

    @nn.compact
    def __call__(self, idx, deterministic=True):
        B, T = idx.shape
        tok = nn.Embed(self.vocab_size, self.n_embd, name="token_embedding")(idx)
        pos = nn.Embed(self.block_size, self.n_embd, name="position_embedding")(jnp.arange(T))
        x = tok + pos
        if not deterministic and self.dropout_rate > 0:
            keep = jax.random.bernoulli(self.make_rng("dropout"), 1.0 - self.dropout_rate, x.shape)
            x = jnp.where(keep, x / (1.0 - self.dropout_rate), 0.0)
        for i in range(self.n_layer):
            x = Block(self.n_embd, self.n_head, self.dropout_rate, name=f"blocks_{i}")(x, deterministic)
        x = nn.LayerNorm(name="ln_f")(x)
        return nn.Dense(self.vocab_size, name="lm_head")(x)
