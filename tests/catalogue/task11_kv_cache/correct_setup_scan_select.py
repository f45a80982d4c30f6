"""Task 11: generation with a cache of past keys and values."""

CORRECT = "the modules are written with setup() and Flax's nn.dot_product_attention; the loop is jax.lax.scan over the steps, computing both the cached step and the recompute and keeping one with jnp.where"

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
    num_heads: int
    n_embd: int

    def setup(self):
        H, D = self.num_heads, self.n_embd // self.num_heads
        self.query = nn.DenseGeneral((H, D))
        self.key = nn.DenseGeneral((H, D))
        self.value = nn.DenseGeneral((H, D))
        self.out = nn.DenseGeneral(self.n_embd, axis=(-2, -1))

    def __call__(self, x, cache, position):
        T = x.shape[1]
        keys = jax.lax.dynamic_update_slice(cache["key"], self.key(x), (0, position, 0, 0))  # (B, S, H, D)
        values = jax.lax.dynamic_update_slice(cache["value"], self.value(x), (0, position, 0, 0))
        S = keys.shape[1]
        mask = (jnp.arange(S)[None, :] <= position + jnp.arange(T)[:, None])[None, None]  # (1, 1, T, S)
        out = nn.dot_product_attention(self.query(x), keys, values, mask=mask)  # (B, T, H, D)
        return self.out(out), {"key": keys, "value": values}


class CachedBlock(nn.Module):
    n_embd: int
    n_head: int

    def setup(self):
        self.ln1 = nn.LayerNorm()
        self.attn = CachedSelfAttention(self.n_head, self.n_embd)
        self.ln2 = nn.LayerNorm()
        self.ffwd = FeedForward(self.n_embd)

    def __call__(self, x, cache, position):
        h, cache = self.attn(self.ln1(x), cache, position)
        x = x + h
        return x + self.ffwd(self.ln2(x)), cache


class CachedMiniGPT(nn.Module):
    vocab_size: int
    block_size: int
    n_embd: int
    n_head: int
    n_layer: int
    dropout_rate: float = 0.0

    def setup(self):
        self.token_embedding = nn.Embed(self.vocab_size, self.n_embd)
        self.position_embedding = nn.Embed(self.block_size, self.n_embd)
        self.blocks = [CachedBlock(self.n_embd, self.n_head) for _ in range(self.n_layer)]  # blocks_0, ...
        self.ln_f = nn.LayerNorm()
        self.lm_head = nn.Dense(self.vocab_size)

    @nn.nowrap
    def init_cache(self, batch_size):
        shape = (batch_size, self.block_size, self.n_head, self.n_embd // self.n_head)
        return {f"blocks_{i}": {"key": jnp.zeros(shape), "value": jnp.zeros(shape)} for i in range(self.n_layer)}

    def __call__(self, idx, cache, position):
        T = idx.shape[1]
        x = self.token_embedding(idx) + self.position_embedding(position + jnp.arange(T))
        new_cache = {}
        for i, block in enumerate(self.blocks):
            x, new_cache[f"blocks_{i}"] = block(x, cache[f"blocks_{i}"], position)
        return self.lm_head(self.ln_f(x)), new_cache


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

    def extend(buffer, key, logits, length):
        key, subkey = jax.random.split(key)
        idx_next = _sample_next(logits, subkey, temperature, top_k)  # (B,)
        buffer = jax.lax.dynamic_update_slice(buffer, idx_next[:, None].astype(buffer.dtype), (0, length))
        return buffer, key

    prompt = idx[:, -S:]  # (B, min(T, S))
    logits, cache = run(prompt, model.init_cache(B), 0)
    buffer, key = extend(buffer, key, logits, T)

    def step(carry, i):
        buffer, key, cache = carry
        length = T + i
        newest = jax.lax.dynamic_slice(buffer, (0, length - 1), (B, 1))  # (B, 1)
        cached_logits, cached_cache = run(newest, cache, length - 1)
        last = jax.lax.dynamic_slice(buffer, (0, jnp.maximum(length - window, 0)), (B, window))  # (B, W)
        fresh_logits, fresh_cache = run(last, model.init_cache(B), 0)
        fits = length <= S
        logits = jnp.where(fits, cached_logits, fresh_logits)
        cache = jax.tree_util.tree_map(lambda a, b: jnp.where(fits, a, b), cached_cache, fresh_cache)
        buffer, key = extend(buffer, key, logits, length)
        return (buffer, key, cache), None

    (buffer, _, _), _ = jax.lax.scan(step, (buffer, key, cache), jnp.arange(1, max_new_tokens))
    return buffer
