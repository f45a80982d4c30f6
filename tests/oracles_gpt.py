"""A GPT built only from Flax's own layers, with the attention layer pluggable: the oracle that task 1's
MiniGPT is compared with, that task 5's attention must drop into, and whose parameters task 6's MiniGPT must
accept. Its parameter tree is the one the lessons fix (see reference/task01_minigpt.py's docstrings)."""

from __future__ import annotations

from typing import Any, Callable

import jax.numpy as jnp
import flax.linen as nn


def flax_attention(num_heads: int, dropout_rate: float, name: str) -> Callable[..., Any]:
    layer = nn.MultiHeadDotProductAttention(num_heads=num_heads, dropout_rate=dropout_rate, name=name)

    def attend(x, deterministic):
        mask = nn.make_causal_mask(jnp.ones((1, x.shape[1])))
        return layer(x, mask=mask, deterministic=deterministic)

    return attend


def module_attention(cls) -> Callable[..., Any]:
    """An attention class with fields (num_heads, dropout_rate) and call (x, deterministic), as task 5's."""

    def make(num_heads: int, dropout_rate: float, name: str):
        layer = cls(num_heads, dropout_rate, name=name)
        return lambda x, deterministic: layer(x, deterministic)

    return make


class OracleGPT(nn.Module):
    vocab_size: int
    block_size: int
    n_embd: int
    n_head: int
    n_layer: int
    dropout_rate: float = 0.0
    attention: Callable[..., Any] = flax_attention

    @nn.compact
    def __call__(self, idx, deterministic=True):
        T = idx.shape[1]
        x = nn.Embed(self.vocab_size, self.n_embd, name="token_embedding")(idx)
        x = x + nn.Embed(self.block_size, self.n_embd, name="position_embedding")(jnp.arange(T))
        x = nn.Dropout(self.dropout_rate)(x, deterministic=deterministic)
        for i in range(self.n_layer):
            x = _OracleBlock(self.n_embd, self.n_head, self.dropout_rate, self.attention,
                             name=f"blocks_{i}")(x, deterministic)
        x = nn.LayerNorm(name="ln_f")(x)
        return nn.Dense(self.vocab_size, name="lm_head")(x)


class _OracleBlock(nn.Module):
    n_embd: int
    n_head: int
    dropout_rate: float
    attention: Callable[..., Any]

    @nn.compact
    def __call__(self, x, deterministic):
        attend = self.attention(self.n_head, self.dropout_rate, "attn")
        x = x + nn.Dropout(self.dropout_rate)(attend(nn.LayerNorm(name="ln1")(x), deterministic),
                                              deterministic=deterministic)
        return x + _OracleFeedForward(self.n_embd, self.dropout_rate, name="ffwd")(
            nn.LayerNorm(name="ln2")(x), deterministic)


class _OracleFeedForward(nn.Module):
    n_embd: int
    dropout_rate: float

    @nn.compact
    def __call__(self, x, deterministic):
        h = nn.relu(nn.Dense(4 * self.n_embd, name="fc")(x))
        return nn.Dropout(self.dropout_rate)(nn.Dense(self.n_embd, name="proj")(h), deterministic=deterministic)
