"""Sampling text from any of the challenge's models.

The contract: a model is a Flax module called as `model.apply(variables, idx, deterministic=True)`, idx
int (1, T), returning logits (1, T, vocab_size), and it is causal (the logits at position t do not depend
on tokens after t), as every language model here is.

The loop runs compiled: the prompt and the tokens still to come live in one fixed-size buffer, and
`jax.lax.fori_loop` fills it one token per step. Each step runs the model on a window of the buffer of
fixed width (block_size), so the whole loop compiles once per (model, buffer length, top_k) and then costs
one dispatch, instead of one Python round trip and one new shape per token.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax.training import train_state


def sample(model, params, prompt_ids, key, max_new_tokens: int, *, temperature: float = 1.0,
           top_k: int | None = None, block_size: int | None = None) -> np.ndarray:
    """prompt + max_new_tokens sampled tokens, as a 1-D numpy int array.

    params: the variables from model.init ({'params': ...}), the bare parameter tree (state.params), or a
    TrainState.
    prompt_ids: at least one token id (list, numpy or JAX array, 1-D).
    temperature: divides the logits; below 1 sharper, above 1 flatter, 0 always picks the likeliest token.
    top_k: if given, sample only among the k likeliest tokens.
    block_size: the longest context the model sees (the prompt is cropped to its last block_size tokens);
    default `model.block_size`, or no cropping for a model without one (the bigram model).
    The same key gives the same tokens.
    """
    if isinstance(prompt_ids, str):
        raise TypeError("sample takes token ids, not text; encode the prompt first: tokenizer.encode(prompt).")
    if isinstance(key, int):
        raise TypeError(f"key must be a JAX random key such as jax.random.key({key}), not the int {key}.")
    if isinstance(params, train_state.TrainState):
        params = params.params
    prompt = np.asarray(prompt_ids)
    if prompt.ndim == 2 and prompt.shape[0] == 1:
        prompt = prompt[0]
    if prompt.ndim != 1:
        raise ValueError(f"sample takes one prompt, a 1-D sequence of token ids; got shape {prompt.shape}.")
    if prompt.size == 0:
        raise ValueError("The prompt is empty; the model needs at least one token to condition on "
                         "(for example the id of a newline).")
    if not np.issubdtype(prompt.dtype, np.integer):
        raise TypeError(f"The prompt must hold integer token ids, got dtype {prompt.dtype}.")
    max_new_tokens = int(max_new_tokens)
    if max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be 0 or more, got {max_new_tokens}.")
    temperature = float(temperature)
    if not temperature >= 0.0:
        raise ValueError(f"temperature must be 0 or more, got {temperature}.")
    if top_k is not None:
        top_k = int(top_k)
        if top_k <= 0:
            raise ValueError(f"top_k must be a positive int or None, got {top_k}.")
    if block_size is None:
        block_size = getattr(model, "block_size", None)
    if block_size is not None and int(block_size) <= 0:
        raise ValueError(f"block_size must be a positive int, got {block_size}.")
    if max_new_tokens == 0:
        return prompt.astype(np.int32)

    if not hasattr(params, "keys") or "params" not in params:
        params = {"params": params}  # a bare parameter tree, such as TrainState.params
    length = prompt.size + max_new_tokens
    window = length if block_size is None else min(int(block_size), length)
    buffer = jnp.zeros((length,), jnp.int32).at[: prompt.size].set(prompt.astype(np.int32))
    try:
        hash(model)
        fill = functools.partial(_fill_compiled, model)
    except TypeError:  # a module with an unhashable field cannot be a static argument: compile for this call
        fill = jax.jit(functools.partial(_fill, model), static_argnames=("window", "top_k"))
    out = fill(params, buffer, jnp.int32(prompt.size), key, jnp.float32(temperature), window=window, top_k=top_k)
    return np.asarray(out)


def _fill(model, params, buffer, start, key, temperature, *, window, top_k):
    """buffer with positions start .. len(buffer) - 1 sampled one by one."""
    length = buffer.shape[0]

    def step(pos, carry):
        buffer, key = carry
        key, sample_key = jax.random.split(key)
        # The context is the last `window` tokens before pos. Before the buffer has `window` tokens the
        # window starts at 0 and also holds not-yet-sampled slots after pos - 1; a causal model's logits at
        # pos - 1 do not see them, so the result is the same as running on buffer[:pos].
        first = jnp.maximum(pos - window, 0)
        context = jax.lax.dynamic_slice(buffer, (first,), (window,))  # (window,)
        logits = model.apply(params, context[None, :], deterministic=True)  # (1, window, vocab_size)
        if logits.ndim != 3 or logits.shape[:2] != (1, window):
            raise ValueError(f"The model returned logits of shape {logits.shape} for input (1, {window}); "
                             f"sample expects (1, {window}, vocab_size).")
        logits = logits[0, pos - 1 - first].astype(jnp.float32)  # (vocab_size,): the prediction for pos
        next_id = pick(logits, sample_key, temperature, top_k)
        return buffer.at[pos].set(next_id), key

    buffer, _ = jax.lax.fori_loop(start, length, step, (buffer, key))
    return buffer


_fill_compiled = jax.jit(_fill, static_argnames=("model", "window", "top_k"))


def pick(logits, key, temperature, top_k):
    """One token id from logits (vocab_size,): top-k filter, temperature, then a categorical draw."""
    if top_k is not None and top_k < logits.shape[-1]:
        kth_largest = jax.lax.top_k(logits, top_k)[0][-1]
        logits = jnp.where(logits < kth_largest, -jnp.inf, logits)
    greedy = jnp.argmax(logits)
    # temperature is traced (one compilation serves every temperature), so 0 is handled with a select.
    scaled = logits / jnp.where(temperature > 0, temperature, 1.0)
    drawn = jax.random.categorical(key, scaled)
    return jnp.where(temperature > 0, drawn, greedy).astype(jnp.int32)
