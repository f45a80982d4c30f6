"""Task 1: MiniGPT from Flax's own layers."""

MISTAKE = "looks up the position embeddings for jnp.arange(T)[::-1], the positions counted from the end"
DIAGNOSIS = "the input of `position_embedding` does not"


import jax.numpy as jnp
import flax.linen as nn


class FeedForward(nn.Module):
    """The MLP after attention: Dense(4 * n_embd) -> ReLU -> Dense(n_embd) -> Dropout.

    Fields: n_embd (int), dropout_rate (float, default 0.0).
    Call: ffwd(x, deterministic=True), x (B, T, n_embd) -> (B, T, n_embd).
    Parameters: {'fc': {'kernel': (C, 4C), 'bias': (4C,)}, 'proj': {'kernel': (4C, C), 'bias': (C,)}}.
    """

    n_embd: int
    dropout_rate: float = 0.0

    @nn.compact
    def __call__(self, x, deterministic=True):
        x = nn.Dense(4 * self.n_embd, name="fc")(x)  # (B, T, 4C)
        x = nn.relu(x)
        x = nn.Dense(self.n_embd, name="proj")(x)  # (B, T, C)
        return nn.Dropout(self.dropout_rate)(x, deterministic=deterministic)


class Block(nn.Module):
    """A pre-LayerNorm transformer block: x + attn(ln1(x)), then x + ffwd(ln2(x)).

    Fields: n_embd, n_head (int), dropout_rate (float, default 0.0).
    Call: block(x, deterministic=True), x (B, T, n_embd) -> (B, T, n_embd).
    Parameters: 'ln1' and 'ln2' (nn.LayerNorm: scale, bias), 'attn' (causal
    nn.MultiHeadDotProductAttention: query/key/value kernels (C, n_head, C // n_head) and biases
    (n_head, C // n_head); out kernel (n_head, C // n_head, C) and bias (C,)), 'ffwd' (FeedForward).
    The attention's output passes through Dropout before the residual add.
    """

    n_embd: int
    n_head: int
    dropout_rate: float = 0.0

    @nn.compact
    def __call__(self, x, deterministic=True):
        T = x.shape[1]
        mask = nn.make_causal_mask(jnp.ones((1, T)))  # (1, 1, T, T), broadcasts over batch and heads
        h = nn.LayerNorm(name="ln1")(x)
        h = nn.MultiHeadDotProductAttention(num_heads=self.n_head, dropout_rate=self.dropout_rate,
                                            name="attn")(h, mask=mask, deterministic=deterministic)
        x = x + nn.Dropout(self.dropout_rate)(h, deterministic=deterministic)
        h = nn.LayerNorm(name="ln2")(x)
        return x + FeedForward(self.n_embd, self.dropout_rate, name="ffwd")(h, deterministic=deterministic)


class MiniGPT(nn.Module):
    """The whole model.

    Fields: vocab_size, block_size, n_embd, n_head, n_layer (int), dropout_rate (float, default 0.0).
    Call: model(idx, deterministic=True), idx int (B, T) with T <= block_size -> logits (B, T, vocab_size).
    Parameters: 'token_embedding' (nn.Embed: embedding (vocab_size, C)), 'position_embedding' (nn.Embed:
    embedding (block_size, C)), 'blocks_0' .. 'blocks_{n_layer-1}' (Block), 'ln_f' (nn.LayerNorm),
    'lm_head' (nn.Dense: kernel (C, vocab_size), bias (vocab_size,)).
    Dropout after the embedding sum and inside the blocks uses the 'dropout' RNG stream.
    """

    vocab_size: int
    block_size: int
    n_embd: int
    n_head: int
    n_layer: int
    dropout_rate: float = 0.0

    @nn.compact
    def __call__(self, idx, deterministic=True):
        B, T = idx.shape
        tok = nn.Embed(self.vocab_size, self.n_embd, name="token_embedding")(idx)  # (B, T, C)
        pos = nn.Embed(self.block_size, self.n_embd, name="position_embedding")(jnp.arange(T)[::-1])  # (T, C)
        x = nn.Dropout(self.dropout_rate)(tok + pos, deterministic=deterministic)
        for i in range(self.n_layer):
            x = Block(self.n_embd, self.n_head, self.dropout_rate, name=f"blocks_{i}")(x, deterministic)
        x = nn.LayerNorm(name="ln_f")(x)
        return nn.Dense(self.vocab_size, name="lm_head")(x)  # (B, T, vocab_size)
