CORRECT = "top-k by sorting, temperature after the filter, one jitted helper for both; lax.scan, .at[].set and a traced index"

import functools

import jax
import jax.numpy as jnp


@functools.partial(jax.jit, static_argnames=("top_k",))
def _pick(logits, key, temperature, top_k):
    if top_k is not None:
        kth = jnp.sort(logits, axis=-1)[:, -top_k][:, None]  # (B, 1)
        logits = jnp.where(logits >= kth, logits, -jnp.inf)
    return jax.random.categorical(key, logits / temperature)  # (B,)


def generate(model, params, idx, key, max_new_tokens, temperature=1.0, top_k=None):
    for _ in range(max_new_tokens):
        T = idx.shape[1]
        idx_cond = idx[:, max(0, T - model.block_size):]
        logits = model.apply({"params": params}, idx_cond, deterministic=True)
        key, subkey = jax.random.split(key)
        idx_next = _pick(logits[:, -1], subkey, temperature, top_k)
        idx = jnp.append(idx, idx_next[:, None], axis=1)
    return idx


@functools.partial(jax.jit, static_argnames=("model", "max_new_tokens", "top_k"))
def generate_jit(model, params, idx, key, max_new_tokens, temperature=1.0, top_k=None):
    B, T = idx.shape
    W = min(model.block_size, T + max_new_tokens)
    variables = {"params": params}  # the dict model.init returned, around the tree
    buf = jnp.concatenate([idx, jnp.zeros((B, max_new_tokens), idx.dtype)], axis=1)

    def body(carry, i):
        buf, key = carry
        n = T + i  # tokens so far
        start = jnp.clip(n - W, 0, None)
        window = jax.lax.dynamic_slice_in_dim(buf, start, W, axis=1)  # (B, W)
        logits = model.apply(variables, window, deterministic=True)  # (B, W, V)
        key, subkey = jax.random.split(key)
        tok = _pick(logits[:, n - 1 - start], subkey, temperature, top_k)
        return (buf.at[:, n].set(tok.astype(buf.dtype)), key), None

    (buf, _), _ = jax.lax.scan(body, (buf, key), jnp.arange(max_new_tokens))
    return buf
