CORRECT = "top-k by scattering jax.lax.top_k's values into a -inf array; generate_jit with jax.lax.while_loop"

from functools import partial

import jax
import jax.numpy as jnp


def _next_token(logits, key, temperature, top_k):
    """logits (B, V) of the last position -> (B,) sampled ids."""
    logits = logits / temperature
    if top_k is not None:
        values, indices = jax.lax.top_k(logits, top_k)  # (B, k) each
        rows = jnp.arange(logits.shape[0])[:, None]  # (B, 1)
        logits = jnp.full_like(logits, -jnp.inf).at[rows, indices].set(values)
    return jax.random.categorical(key, logits, axis=-1)


def generate(model, params, idx, key, max_new_tokens, temperature=1.0, top_k=None):
    block_size = model.block_size
    for _ in range(max_new_tokens):
        context = idx if idx.shape[1] <= block_size else idx[:, idx.shape[1] - block_size:]
        logits = model.apply({"params": params}, context, deterministic=True)[:, -1, :]  # (B, V)
        key, subkey = jax.random.split(key)
        new = _next_token(logits, subkey, temperature, top_k)
        idx = jnp.concatenate((idx, new[:, None].astype(idx.dtype)), axis=1)
    return idx


@partial(jax.jit, static_argnums=(0, 4, 6))
def generate_jit(model, params, idx, key, max_new_tokens, temperature=1.0, top_k=None):
    B, T = idx.shape
    total = T + max_new_tokens
    width = min(model.block_size, total)
    tokens = jnp.zeros((B, total), idx.dtype)
    tokens = jax.lax.dynamic_update_slice(tokens, idx, (0, 0))

    def cond(state):
        length, _, _ = state
        return length < total

    def body(state):
        length, tokens, key = state
        first = jnp.maximum(0, length - width)
        context = jax.lax.dynamic_slice(tokens, (0, first), (B, width))
        logits = model.apply({"params": params}, context, deterministic=True)  # (B, width, V)
        logits = jnp.take(logits, length - 1 - first, axis=1)  # (B, V)
        key, subkey = jax.random.split(key)
        new = _next_token(logits, subkey, temperature, top_k)
        tokens = jax.lax.dynamic_update_slice(tokens, new[:, None].astype(tokens.dtype), (0, length))
        return length + 1, tokens, key

    _, tokens, _ = jax.lax.while_loop(cond, body, (jnp.int32(T), tokens, key))
    return tokens
