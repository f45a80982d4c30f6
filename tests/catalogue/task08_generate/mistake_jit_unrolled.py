MISTAKE = "generate_jit is jax.jit around generate's Python loop, so the loop is unrolled: one model copy per token"
DIAGNOSIS = "unrolled"

from functools import partial

import jax
import jax.numpy as jnp


def _sample_next(logits, key, temperature, top_k):
    logits = logits / temperature  # (B, V)
    if top_k is not None:
        kth_largest = jax.lax.top_k(logits, top_k)[0][:, -1:]  # (B, 1)
        logits = jnp.where(logits < kth_largest, -jnp.inf, logits)
    return jax.random.categorical(key, logits, axis=-1)  # (B,)


def generate(model, params, idx, key, max_new_tokens, temperature=1.0, top_k=None):
    for _ in range(max_new_tokens):
        idx_cond = idx[:, -model.block_size:]  # (B, min(T, block_size))
        logits = model.apply({"params": params}, idx_cond, deterministic=True)  # (B, T_cond, V)
        key, subkey = jax.random.split(key)
        idx_next = _sample_next(logits[:, -1, :], subkey, temperature, top_k)  # (B,)
        idx = jnp.concatenate([idx, idx_next[:, None].astype(idx.dtype)], axis=1)  # (B, T + 1)
    return idx


# Every shape inside the loop is known when tracing, so this compiles, but the loop is traced step by step.
generate_jit = jax.jit(generate, static_argnames=("model", "max_new_tokens", "top_k"))
