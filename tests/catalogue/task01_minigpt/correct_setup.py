CORRECT = "setup() throughout, the blocks as a list attribute (Flax names them blocks_0, blocks_1, ...), a (T, T) jnp.tril mask"

import jax
import jax.numpy as jnp
import flax.linen as nn


class FeedForward(nn.Module):
    n_embd: int
    dropout_rate: float = 0.0

    def setup(self):
        self.fc = nn.Dense(4 * self.n_embd)
        self.proj = nn.Dense(self.n_embd)
        self.dropout = nn.Dropout(self.dropout_rate)

    def __call__(self, x, deterministic=True):
        return self.dropout(self.proj(jax.nn.relu(self.fc(x))), deterministic=deterministic)


class Block(nn.Module):
    n_embd: int
    n_head: int
    dropout_rate: float = 0.0

    def setup(self):
        self.ln1 = nn.LayerNorm()
        self.attn = nn.MultiHeadDotProductAttention(num_heads=self.n_head, dropout_rate=self.dropout_rate)
        self.dropout = nn.Dropout(self.dropout_rate)
        self.ln2 = nn.LayerNorm()
        self.ffwd = FeedForward(self.n_embd, self.dropout_rate)

    def __call__(self, x, deterministic=True):
        T = x.shape[1]
        causal = jnp.tril(jnp.ones((T, T), dtype=bool))  # broadcasts to (B, n_head, T, T)
        h = self.ln1(x)
        x = x + self.dropout(self.attn(h, h, mask=causal, deterministic=deterministic), deterministic=deterministic)
        return x + self.ffwd(self.ln2(x), deterministic=deterministic)


class MiniGPT(nn.Module):
    vocab_size: int
    block_size: int
    n_embd: int
    n_head: int
    n_layer: int
    dropout_rate: float = 0.0

    def setup(self):
        self.token_embedding = nn.Embed(self.vocab_size, self.n_embd)
        self.position_embedding = nn.Embed(self.block_size, self.n_embd)
        self.dropout = nn.Dropout(self.dropout_rate)
        self.blocks = [Block(self.n_embd, self.n_head, self.dropout_rate) for _ in range(self.n_layer)]
        self.ln_f = nn.LayerNorm()
        self.lm_head = nn.Dense(self.vocab_size)

    def __call__(self, idx, deterministic=True):
        T = idx.shape[1]
        x = self.token_embedding(idx) + self.position_embedding(jnp.arange(T))[None]  # (B, T, C)
        x = self.dropout(x, deterministic=deterministic)
        for block in self.blocks:
            x = block(x, deterministic=deterministic)
        return self.lm_head(self.ln_f(x))
