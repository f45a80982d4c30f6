"""Task 6: LayerNorm, Block and MiniGPT from your own parts."""

MISTAKE = "dropout written by hand, in Block on the residual sum x + attn(ln1(x)) rather than on the attention branch before the add"
DIAGNOSIS = "acts there, on the block's residual sum"

import jax
import jax.numpy as jnp
import flax.linen as nn

from .task01_minigpt import FeedForward
from .task05_einsum_attention import EinsumMultiHeadAttention


def dropout(module, x, rate, deterministic):
    """Inverted dropout by hand, drawing from module's 'dropout' RNG stream."""
    if deterministic or rate == 0.0:
        return x
    keep = jax.random.bernoulli(module.make_rng("dropout"), 1.0 - rate, x.shape)
    return jnp.where(keep, x / (1.0 - rate), 0.0)


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
        scale = self.param("scale", nn.initializers.ones, (C,))
        bias = self.param("bias", nn.initializers.zeros, (C,))
        mean = x.mean(axis=-1, keepdims=True)  # (B, T, 1)
        var = ((x - mean) ** 2).mean(axis=-1, keepdims=True)  # (B, T, 1)
        return (x - mean) / jnp.sqrt(var + self.epsilon) * scale + bias


class Block(nn.Module):
    """Task 1's pre-LayerNorm block built from your LayerNorm, your EinsumMultiHeadAttention (task 5) and
    your FeedForward (task 1). Same fields, call and parameter tree as task 1's Block."""

    n_embd: int
    n_head: int
    dropout_rate: float = 0.0

    @nn.compact
    def __call__(self, x, deterministic=True):
        h = EinsumMultiHeadAttention(self.n_head, self.dropout_rate, name="attn")(
            LayerNorm(name="ln1")(x), deterministic)
        x = dropout(self, x + h, self.dropout_rate, deterministic)
        h = FeedForward(self.n_embd, self.dropout_rate, name="ffwd")(LayerNorm(name="ln2")(x), deterministic)
        return x + h


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
        tok = nn.Embed(self.vocab_size, self.n_embd, name="token_embedding")(idx)  # (B, T, C)
        pos = nn.Embed(self.block_size, self.n_embd, name="position_embedding")(jnp.arange(T))  # (T, C)
        x = dropout(self, tok + pos, self.dropout_rate, deterministic)
        for i in range(self.n_layer):
            x = Block(self.n_embd, self.n_head, self.dropout_rate, name=f"blocks_{i}")(x, deterministic)
        x = LayerNorm(name="ln_f")(x)
        return nn.Dense(self.vocab_size, name="lm_head")(x)  # (B, T, vocab_size)
