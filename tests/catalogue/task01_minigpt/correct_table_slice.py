CORRECT = "positions as a slice of the embedding table, deterministic given to the layers as a field, the mask from nn.make_attention_mask"

import jax.numpy as jnp
import flax.linen as nn


class FeedForward(nn.Module):
    n_embd: int
    dropout_rate: float = 0.0

    @nn.compact
    def __call__(self, x, deterministic=True):
        hidden = nn.relu(nn.Dense(self.n_embd * 4, name="fc")(x))
        return nn.Dropout(rate=self.dropout_rate, deterministic=deterministic)(nn.Dense(self.n_embd, name="proj")(hidden))


class Block(nn.Module):
    n_embd: int
    n_head: int
    dropout_rate: float = 0.0

    @nn.compact
    def __call__(self, x, deterministic=True):
        positions = jnp.arange(x.shape[1])
        mask = nn.make_attention_mask(positions, positions, jnp.greater_equal)[None]  # (1, 1, T, T)
        attn = nn.MultiHeadDotProductAttention(self.n_head, dropout_rate=self.dropout_rate,
                                               deterministic=deterministic, name="attn")
        x = x + nn.Dropout(self.dropout_rate, deterministic=deterministic)(attn(nn.LayerNorm(name="ln1")(x), mask=mask))
        x = x + FeedForward(self.n_embd, self.dropout_rate, name="ffwd")(nn.LayerNorm(name="ln2")(x), deterministic)
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
        T = idx.shape[-1]
        tok = nn.Embed(self.vocab_size, self.n_embd, name="token_embedding")(idx)
        pos = nn.Embed(self.block_size, self.n_embd, name="position_embedding").embedding[:T]
        x = nn.Dropout(self.dropout_rate, deterministic=deterministic)(tok + pos)
        for i in range(self.n_layer):
            x = Block(self.n_embd, self.n_head, self.dropout_rate, name=f"blocks_{i}")(x, deterministic=deterministic)
        return nn.Dense(self.vocab_size, name="lm_head")(nn.LayerNorm(name="ln_f")(x))
