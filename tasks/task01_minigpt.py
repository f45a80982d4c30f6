"""Task 1: MiniGPT from Flax's own layers.

Write `FeedForward`, `Block` and `MiniGPT` with nn.Embed, nn.LayerNorm, nn.MultiHeadDotProductAttention,
nn.Dense and nn.Dropout. Check them with `jaxgpt check 1` (or the check cell in the notebook).
"""

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
        # 1. nn.Dense(4 * self.n_embd, name="fc"), then nn.relu                      # (B, T, 4C)
        # 2. nn.Dense(self.n_embd, name="proj")                                      # (B, T, C)
        # 3. nn.Dropout(self.dropout_rate)(..., deterministic=deterministic)
        raise NotImplementedError("Task 1: write FeedForward.__call__")


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
        # 1. a causal mask: nn.make_causal_mask(jnp.ones((1, T)))                   # (1, 1, T, T)
        # 2. h = nn.LayerNorm(name="ln1")(x), then
        #    nn.MultiHeadDotProductAttention(num_heads=..., dropout_rate=..., name="attn")(
        #        h, mask=mask, deterministic=deterministic)                          # (B, T, C)
        # 3. x = x + Dropout(that)                       (the residual keeps x itself, not ln1(x))
        # 4. x = x + FeedForward(..., name="ffwd")(nn.LayerNorm(name="ln2")(x), deterministic)
        raise NotImplementedError("Task 1: write Block.__call__")


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
        # 1. token embedding of idx                                                  # (B, T, C)
        #    + position embedding of jnp.arange(T)                                   # (T, C)
        # 2. Dropout on the sum
        # 3. n_layer Blocks named f"blocks_{i}", each given `deterministic`          # (B, T, C)
        # 4. nn.LayerNorm(name="ln_f"), then nn.Dense(self.vocab_size, name="lm_head")  # (B, T, vocab_size)
        raise NotImplementedError("Task 1: write MiniGPT.__call__")
