MISTAKE = "temperature passed to the prefill's sample only: the loop samples every later token at temperature 1"
DIAGNOSIS = "the temperature is applied to the prefill's token only"
"""Task 11: generation with a cache of past keys and values."""

from functools import partial

import jax
import jax.numpy as jnp
import flax.linen as nn

from .task01_minigpt import FeedForward


def _sample_next(logits, key, temperature, top_k):
    """Task 8's step: one token per row from the last position's logits (B, V)."""
    logits = logits / temperature  # (B, V)
    if top_k is not None:
        kth_largest = jax.lax.top_k(logits, top_k)[0][:, -1:]  # (B, 1)
        logits = jnp.where(logits < kth_largest, -jnp.inf, logits)
    return jax.random.categorical(key, logits, axis=-1)  # (B,)


class CachedSelfAttention(nn.Module):
    """Causal multi-head self-attention that reads and writes a cache of keys and values.

    Parameters: nn.MultiHeadDotProductAttention's tree ('query', 'key', 'value', 'out'), so task 1's
    weights load. Call: attn(x, cache, position) with x (B, T, C) the inputs at positions
    position .. position + T - 1 and cache {'key': (B, S, H, D), 'value': (B, S, H, D)} holding the keys and
    values of the positions before `position`. Returns (out (B, T, C), the cache with x's keys and values
    written at slots position .. position + T - 1). Query t sees slots 0 .. position + t only.
    """

    num_heads: int

    @nn.compact
    def __call__(self, x, cache, position):
        B, T, C = x.shape
        H, D = self.num_heads, C // self.num_heads
        q = nn.DenseGeneral((H, D), name="query")(x)  # (B, T, H, D)
        k = nn.DenseGeneral((H, D), name="key")(x)  # (B, T, H, D)
        v = nn.DenseGeneral((H, D), name="value")(x)  # (B, T, H, D)
        keys = jax.lax.dynamic_update_slice(cache["key"], k, (0, position, 0, 0))  # (B, S, H, D)
        values = jax.lax.dynamic_update_slice(cache["value"], v, (0, position, 0, 0))  # (B, S, H, D)
        S = keys.shape[1]
        wei = jnp.einsum("bthd,bshd->bhts", q, keys) * D**-0.5  # (B, H, T, S)
        visible = jnp.arange(S)[None, :] <= position + jnp.arange(T)[:, None]  # (T, S): written, not later
        wei = jnp.where(visible, wei, -jnp.inf)
        wei = nn.softmax(wei, axis=-1)  # over the slots
        out = jnp.einsum("bhts,bshd->bthd", wei, values)  # (B, T, H, D)
        out = nn.DenseGeneral(C, axis=(-2, -1), name="out")(out)  # (B, T, C)
        return out, {"key": keys, "value": values}


class CachedBlock(nn.Module):
    """Task 1's pre-LayerNorm block with the cached attention: same tree ('ln1', 'attn', 'ln2', 'ffwd').
    Call: block(x, cache, position) -> (x (B, T, C), the layer's new cache)."""

    n_embd: int
    n_head: int

    @nn.compact
    def __call__(self, x, cache, position):
        h, cache = CachedSelfAttention(self.n_head, name="attn")(nn.LayerNorm(name="ln1")(x), cache, position)
        x = x + h
        x = x + FeedForward(self.n_embd, name="ffwd")(nn.LayerNorm(name="ln2")(x))
        return x, cache


class CachedMiniGPT(nn.Module):
    """MiniGPT for sampling with a key-value cache.

    Fields: MiniGPT's (vocab_size, block_size, n_embd, n_head, n_layer, dropout_rate); dropout_rate is kept
    so that a MiniGPT's fields build it, and is unused: sampling runs without dropout.
    Parameters: MiniGPT's tree (jaxgpt/contract.py), so trained task-1 or task-6 weights load unchanged.
    model.init_cache(B): the empty cache, {'blocks_i': {'key': (B, block_size, H, D), 'value': same}} zeros,
    H = n_head, D = n_embd // n_head.
    Call: model.apply({'params': params}, idx, cache, position): idx int (B, T) the tokens at positions
    position .. position + T - 1 (position + T <= block_size), cache holding the keys and values of the
    positions before; returns (logits (B, T, vocab_size), the new cache). With an empty cache and position 0
    the logits are MiniGPT's.
    """

    vocab_size: int
    block_size: int
    n_embd: int
    n_head: int
    n_layer: int
    dropout_rate: float = 0.0

    @nn.nowrap
    def init_cache(self, batch_size):
        empty = jnp.zeros((batch_size, self.block_size, self.n_head, self.n_embd // self.n_head))  # (B, S, H, D)
        return {f"blocks_{i}": {"key": empty, "value": empty} for i in range(self.n_layer)}

    @nn.compact
    def __call__(self, idx, cache, position):
        B, T = idx.shape
        tok = nn.Embed(self.vocab_size, self.n_embd, name="token_embedding")(idx)  # (B, T, C)
        pos = nn.Embed(self.block_size, self.n_embd, name="position_embedding")(position + jnp.arange(T))  # (T, C)
        x = tok + pos
        new_cache = {}
        for i in range(self.n_layer):
            name = f"blocks_{i}"
            x, new_cache[name] = CachedBlock(self.n_embd, self.n_head, name=name)(x, cache[name], position)
        x = nn.LayerNorm(name="ln_f")(x)
        return nn.Dense(self.vocab_size, name="lm_head")(x), new_cache  # (B, T, vocab_size)


@partial(jax.jit, static_argnames=("model", "max_new_tokens", "top_k"))
def generate_cached(model, params, idx, key, max_new_tokens, temperature=1.0, top_k=None):
    """Task 8's tokens, with a cache: same arguments (model a CachedMiniGPT), same keys, same output.

    Prefill: the last min(T, block_size) prompt tokens go through the model at once, at position 0, into an
    empty cache; the last position's logits give the first new token. Then one jax.lax.fori_loop over a
    fixed buffer (B, T + max_new_tokens): while the sequence fits in block_size, each step feeds only the
    token sampled last, at its position, and the cache grows by one slot; past block_size the window slides,
    every position shifts, and the step recomputes the cache from the last block_size tokens at position 0.
    """
    B, T = idx.shape
    S = model.block_size
    total = T + max_new_tokens
    window = min(S, total)  # the recompute's static width; only used once total > S
    buffer = jnp.zeros((B, total), dtype=idx.dtype).at[:, :T].set(idx)  # (B, T + max_new_tokens)
    if max_new_tokens == 0:
        return buffer

    def run(tokens, cache, position):
        logits, cache = model.apply({"params": params}, tokens, cache, position)  # (B, n, V)
        return logits[:, -1, :], cache  # (B, V)

    def extend(buffer, key, logits, length, temperature=1.0):
        key, subkey = jax.random.split(key)
        idx_next = _sample_next(logits, subkey, temperature, top_k)  # (B,)
        buffer = jax.lax.dynamic_update_slice(buffer, idx_next[:, None].astype(buffer.dtype), (0, length))
        return buffer, key

    prompt = idx[:, -S:]  # (B, min(T, S))
    logits, cache = run(prompt, model.init_cache(B), 0)
    buffer, key = extend(buffer, key, logits, T, temperature)

    def step(i, carry):
        buffer, key, cache = carry
        length = T + i  # tokens written so far; the newest, at length - 1, is not in the cache yet

        def cached(cache):
            newest = jax.lax.dynamic_slice(buffer, (0, length - 1), (B, 1))  # (B, 1)
            return run(newest, cache, length - 1)

        def recompute(cache):
            last = jax.lax.dynamic_slice(buffer, (0, length - window), (B, window))  # (B, W)
            return run(last, model.init_cache(B), 0)

        logits, cache = jax.lax.cond(length <= S, cached, recompute, cache)
        buffer, key = extend(buffer, key, logits, length)
        return buffer, key, cache

    buffer, _, _ = jax.lax.fori_loop(1, max_new_tokens, step, (buffer, key, cache))
    return buffer
