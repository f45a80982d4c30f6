"""Task 11: generation with a cache of past keys and values.

Write `CachedMiniGPT`, MiniGPT with a cache of the keys and values it has computed (same fields, same parameter
tree, so trained task-1 or task-6 weights load), and `generate_cached`, task 8's tokens from one compiled loop
that feeds the model one new token per step. Check them with `jaxgpt check 11` (or the notebook's check cell).
"""

from functools import partial

import jax
import jax.numpy as jnp
import flax.linen as nn

from .task01_minigpt import FeedForward


def _sample_next(logits, key, temperature, top_k):
    """Task 8's step: one token per row from the last position's logits (B, V)."""
    # paste the one-step sampler you wrote for task 8: temperature, top-k, jax.random.categorical
    raise NotImplementedError("Task 11: paste your task-8 sampling step")


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
        # q, k, v = nn.DenseGeneral((H, D), name="query" / "key" / "value")(x)       # (B, T, H, D) each
        # write k and v into the cache at slot `position` (jax.lax.dynamic_update_slice)  # (B, S, H, D)
        # scores of q against every slot, times D ** -0.5                                # (B, H, T, S)
        # mask: query t may see slot s only if s <= position + t (the rest: -inf)
        # softmax over the slots, weighted sum of the cached values, then
        # nn.DenseGeneral(C, axis=(-2, -1), name="out")                                  # (B, T, C)
        # return (out, {"key": keys, "value": values})
        raise NotImplementedError("Task 11: write CachedSelfAttention")


class CachedBlock(nn.Module):
    """Task 1's pre-LayerNorm block with the cached attention: same tree ('ln1', 'attn', 'ln2', 'ffwd').
    Call: block(x, cache, position) -> (x (B, T, C), the layer's new cache)."""

    n_embd: int
    n_head: int

    @nn.compact
    def __call__(self, x, cache, position):
        # x + attn(ln1(x)) with CachedSelfAttention(name="attn"), then x + ffwd(ln2(x)); return (x, new cache)
        raise NotImplementedError("Task 11: write CachedBlock")


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
        # {"blocks_0": {"key": zeros (B, block_size, n_head, n_embd // n_head), "value": same}, "blocks_1": ...}
        raise NotImplementedError("Task 11: write CachedMiniGPT.init_cache")

    @nn.compact
    def __call__(self, idx, cache, position):
        # token embedding + position embedding of positions position + jnp.arange(T)      # (B, T, C)
        # for each block: x, new_cache["blocks_i"] = CachedBlock(..., name="blocks_i")(x, cache["blocks_i"], position)
        # ln_f, lm_head; return (logits, new_cache)
        raise NotImplementedError("Task 11: write CachedMiniGPT")


@partial(jax.jit, static_argnames=("model", "max_new_tokens", "top_k"))
def generate_cached(model, params, idx, key, max_new_tokens, temperature=1.0, top_k=None):
    """Task 8's tokens, with a cache: same arguments (model a CachedMiniGPT), same keys, same output.

    Prefill: the last min(T, block_size) prompt tokens go through the model at once, at position 0, into an
    empty cache; the last position's logits give the first new token. Then one jax.lax.fori_loop over a
    fixed buffer (B, T + max_new_tokens): while the sequence fits in block_size, each step feeds only the
    token sampled last, at its position, and the cache grows by one slot; past block_size the window slides,
    every position shifts, and the step recomputes the cache from the last block_size tokens at position 0.
    """
    # buffer = zeros (B, T + max_new_tokens) with idx written at the start; S = model.block_size
    # prefill: logits, cache = model.apply({'params': params}, idx[:, -S:], model.init_cache(B), 0)
    # sample the token at column T from logits[:, -1] (key, subkey = jax.random.split(key) first, as in task 8)
    # def step(i, (buffer, key, cache)):   for i in 1 .. max_new_tokens - 1, length = T + i
    #     length <= S: feed the token at column length - 1, at position length - 1, with the cache
    #     otherwise:  the last S tokens (a window of W = min(S, T + max_new_tokens)) at position 0, fresh cache
    #     (jax.lax.cond(length <= S, cached, recompute, cache)); sample; write column length
    # buffer, _, _ = jax.lax.fori_loop(1, max_new_tokens, step, (buffer, key, cache))
    raise NotImplementedError("Task 11: write generate_cached")
