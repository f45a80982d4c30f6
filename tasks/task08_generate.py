"""Task 8: sampling with temperature and top-k, then a jittable loop.

Write `generate`, the video's sampling loop, and `generate_jit`, the same tokens from one compiled loop.
Check them with `jaxgpt check 8` (or the check cell in the notebook).
"""

from functools import partial

import jax
import jax.numpy as jnp


def generate(model, params, idx, key, max_new_tokens, temperature=1.0, top_k=None):
    """Extends idx by max_new_tokens sampled tokens: returns int (B, T + max_new_tokens), idx first.

    params is the model's parameter tree, model.init(...)['params'] (what state.params holds; {} for a
    model without parameters). Each step crops the context to its last model.block_size tokens, calls
    model.apply({'params': params}, idx_cond, deterministic=True), takes the last position's logits,
    divides them by temperature, keeps only the top_k largest (if top_k is given) and samples with
    jax.random.categorical. The key is split as `key, subkey = jax.random.split(key)` before each step's
    sample, which uses subkey, so a key always gives the same tokens.
    """
    # for each of the max_new_tokens steps:
    #     idx_cond = the last model.block_size tokens of idx                   # (B, <= block_size)
    #     logits = model.apply({'params': params}, idx_cond, deterministic=True)  # (B, T_cond, V)
    #     logits of the last position, divided by temperature                 # (B, V)
    #     top-k: logits below the k-th largest (jax.lax.top_k) -> -inf
    #     key, subkey = jax.random.split(key); sample with jax.random.categorical(subkey, logits)  # (B,)
    #     append the new token to idx                                          # (B, T + 1)
    # (a helper for "logits -> one token" can serve generate_jit too)
    raise NotImplementedError("Task 8: write generate")


@partial(jax.jit, static_argnames=("model", "max_new_tokens", "top_k"))
def generate_jit(model, params, idx, key, max_new_tokens, temperature=1.0, top_k=None):
    """generate's tokens from one compiled loop: same arguments, same keys, same output.

    The sequence lives in a fixed buffer (B, T + max_new_tokens) filled by jax.lax.fori_loop. Step i reads
    a window of W = min(model.block_size, T + max_new_tokens) tokens with jax.lax.dynamic_slice, starting
    at max(0, length - W), and takes the logits at the window's last real token (positions after it still
    hold padding, which a causal model never looks at).
    """
    # buffer = zeros (B, T + max_new_tokens) with idx written at the start
    # def step(i, (buffer, key)):
    #     length = T + i; start = max(length - W, 0)
    #     window = jax.lax.dynamic_slice(buffer, (0, start), (B, W))           # (B, W)
    #     logits of model.apply({'params': params}, window, ...) at position length - 1 - start  # (B, V)
    #     key, subkey = jax.random.split(key); sample as in generate           # (B,)
    #     write the token at column `length` (buffer.at[:, length].set(...))
    # buffer, _ = jax.lax.fori_loop(0, max_new_tokens, step, (buffer, key))
    raise NotImplementedError("Task 8: write generate_jit")
