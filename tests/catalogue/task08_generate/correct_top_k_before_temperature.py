CORRECT = "keeps the top k first, then divides by temperature (the order does not change which k are largest)"

"""Task 8: sampling with temperature and top-k, then a jittable loop."""

from functools import partial

import jax
import jax.numpy as jnp


def _sample_next(logits, key, temperature, top_k):
    """One token per row from the last position's logits (B, V): temperature, top-k, then sample."""
    if top_k is not None:
        kth_largest = jnp.sort(logits, axis=-1)[:, -top_k][:, None]  # (B, 1)
        logits = jnp.where(logits < kth_largest, -jnp.inf, logits)
    logits = logits / temperature
    return jax.random.categorical(key, logits, axis=-1)  # (B,)


def generate(model, params, idx, key, max_new_tokens, temperature=1.0, top_k=None):
    """Extends idx by max_new_tokens sampled tokens: returns int (B, T + max_new_tokens), idx first.

    params is the model's parameter tree, model.init(...)['params'] (what state.params holds; {} for a
    model without parameters). Each step crops the context to its last model.block_size tokens, calls
    model.apply({'params': params}, idx_cond, deterministic=True), takes the last position's logits,
    divides them by temperature, keeps only the top_k largest (if top_k is given) and samples with
    jax.random.categorical. The key is split as `key, subkey = jax.random.split(key)` before each step's
    sample, which uses subkey, so a key always gives the same tokens.
    """
    for _ in range(max_new_tokens):
        idx_cond = idx[:, -model.block_size:]  # (B, min(T, block_size))
        logits = model.apply({"params": params}, idx_cond, deterministic=True)  # (B, T_cond, V)
        key, subkey = jax.random.split(key)
        idx_next = _sample_next(logits[:, -1, :], subkey, temperature, top_k)  # (B,)
        idx = jnp.concatenate([idx, idx_next[:, None].astype(idx.dtype)], axis=1)  # (B, T + 1)
    return idx


@partial(jax.jit, static_argnames=("model", "max_new_tokens", "top_k"))
def generate_jit(model, params, idx, key, max_new_tokens, temperature=1.0, top_k=None):
    """generate's tokens from one compiled loop: same arguments, same keys, same output.

    The sequence lives in a fixed buffer (B, T + max_new_tokens) filled by jax.lax.fori_loop. Step i reads
    a window of W = min(model.block_size, T + max_new_tokens) tokens with jax.lax.dynamic_slice, starting
    at max(0, length - W), and takes the logits at the window's last real token (positions after it still
    hold padding, which a causal model never looks at).
    """
    B, T = idx.shape
    total = T + max_new_tokens
    window = min(model.block_size, total)
    buffer = jnp.zeros((B, total), dtype=idx.dtype).at[:, :T].set(idx)  # (B, T + max_new_tokens)

    def step(i, carry):
        buffer, key = carry
        length = T + i  # tokens written so far
        start = jnp.maximum(length - window, 0)
        idx_cond = jax.lax.dynamic_slice(buffer, (0, start), (B, window))  # (B, W)
        logits = model.apply({"params": params}, idx_cond, deterministic=True)  # (B, W, V)
        last = jax.lax.dynamic_index_in_dim(logits, length - 1 - start, axis=1, keepdims=False)  # (B, V)
        key, subkey = jax.random.split(key)
        idx_next = _sample_next(last, subkey, temperature, top_k)  # (B,)
        buffer = jax.lax.dynamic_update_slice(buffer, idx_next[:, None].astype(buffer.dtype), (0, length))
        return buffer, key

    buffer, _ = jax.lax.fori_loop(0, max_new_tokens, step, (buffer, key))
    return buffer
