"""Task 6: LayerNorm, Block and MiniGPT from your own parts.

Write `LayerNorm` by hand, then `Block` and `MiniGPT` again, this time from your LayerNorm, your
EinsumMultiHeadAttention (task 5) and your FeedForward (task 1). The parameter trees stay task 1's, so the
weights of a task-1 model load into this one. Check them with `jaxgpt check 6` (or the notebook's check cell).
"""

import jax.numpy as jnp
import flax.linen as nn

from .task01_minigpt import FeedForward
from .task05_einsum_attention import EinsumMultiHeadAttention


class LayerNorm(nn.Module):
    """Layer normalisation over the last axis, by hand.

    Fields: epsilon (float, default 1e-6, as nn.LayerNorm).
    Call: ln(x) -> same shape: (x - mean) / sqrt(var + epsilon) * scale + bias, statistics over the last
    axis, variance without Bessel's correction.
    Parameters: 'scale' (C,) initialised to ones, 'bias' (C,) initialised to zeros.
    """

    epsilon: float = 1e-6

    @nn.compact
    def __call__(self, x):
        C = x.shape[-1]
        # 1. self.param("scale", nn.initializers.ones, (C,)) and "bias" with nn.initializers.zeros
        # 2. mean and variance over the last axis, keepdims=True                      # (..., 1)
        # 3. (x - mean) / sqrt(var + epsilon) * scale + bias                          # same shape as x
        raise NotImplementedError("Task 6: write LayerNorm.__call__")


class Block(nn.Module):
    """Task 1's pre-LayerNorm block built from your LayerNorm, your EinsumMultiHeadAttention (task 5) and
    your FeedForward (task 1). Same fields, call and parameter tree as task 1's Block."""

    n_embd: int
    n_head: int
    dropout_rate: float = 0.0

    @nn.compact
    def __call__(self, x, deterministic=True):
        # 1. h = EinsumMultiHeadAttention(self.n_head, self.dropout_rate, name="attn")(
        #        LayerNorm(name="ln1")(x), deterministic)                              # (B, T, C)
        # 2. x = x + Dropout(h)
        # 3. x = x + FeedForward(..., name="ffwd")(LayerNorm(name="ln2")(x), deterministic)
        raise NotImplementedError("Task 6: write Block.__call__")


class MiniGPT(nn.Module):
    """Task 1's MiniGPT built from your own Block and LayerNorm. Same fields, call and parameter tree as
    task 1's MiniGPT, so task 1's trained parameters load into it."""

    vocab_size: int
    block_size: int
    n_embd: int
    n_head: int
    n_layer: int
    dropout_rate: float = 0.0

    @nn.compact
    def __call__(self, idx, deterministic=True):
        B, T = idx.shape
        # 1. token embedding + position embedding, Dropout, as in task 1              # (B, T, C)
        # 2. n_layer of your Blocks, named f"blocks_{i}"                               # (B, T, C)
        # 3. your LayerNorm(name="ln_f"), then nn.Dense(self.vocab_size, name="lm_head")  # (B, T, vocab_size)
        raise NotImplementedError("Task 6: write MiniGPT.__call__")
