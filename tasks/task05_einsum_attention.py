"""Task 5: all heads at once with einsum.

Write `EinsumMultiHeadAttention`: causal multi-head attention whose parameters are laid out exactly like
Flax's `nn.MultiHeadDotProductAttention`, so that it can replace that layer in `MiniGPT`.
Check it with `jaxgpt check 5` (or the check cell in the notebook).
"""

import jax.numpy as jnp
import flax.linen as nn


class EinsumMultiHeadAttention(nn.Module):
    """Causal multi-head self-attention with every head computed at once by `jnp.einsum`.

    Its parameter tree is that of `nn.MultiHeadDotProductAttention(num_heads)` on inputs of width C, so it
    can replace Flax's layer in `MiniGPT` (D = C // num_heads):
      'query', 'key', 'value': {'kernel': (C, num_heads, D), 'bias': (num_heads, D)}
      'out': {'kernel': (num_heads, D, C), 'bias': (C,)}
    Fields: num_heads (int), dropout_rate (float, default 0.0).
    Call: attn(x, deterministic=True), x (B, T, C) -> (B, T, C); always causal.
    Dropout on the attention weights uses the 'dropout' RNG stream.
    """

    num_heads: int
    dropout_rate: float = 0.0

    @nn.compact
    def __call__(self, x, deterministic=True):
        B, T, C = x.shape
        H, D = self.num_heads, C // self.num_heads
        # 1. q, k, v: nn.DenseGeneral((H, D), axis=-1, name="query") and so on   # (B, T, H, D) each
        # 2. every head's scores q . k with one jnp.einsum, times D ** -0.5        # (B, H, T, S), S = T:
        #    t indexes the querying position, s the position it looks at
        # 3. causal mask (jnp.tril over t and s, the same for every head), softmax over s, dropout
        # 4. every head's weighted sum of the values with one jnp.einsum          # (B, T, H, D)
        # 5. out: nn.DenseGeneral(C, axis=(-2, -1), name="out") merges the heads  # (B, T, C)
        raise NotImplementedError("Task 5: write EinsumMultiHeadAttention.__call__")
