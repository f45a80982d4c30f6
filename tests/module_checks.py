"""Checks shared by the suites of tasks 1 and 6, whose modules have the same fields, calls and trees:
building the learner's module with the lesson's fields, tracing its parameter tree, and running MiniGPT
(plainly and under jax.jit) with a sentence for the usual ways that fails."""

import inspect

import jax
import numpy as np

import oracles_gpt as og
from jaxgpt import checks, outcomes


def build(cls, **fields):
    """The learner's module with the lesson's fields, and a sentence if its fields or call differ."""
    try:
        module = cls(**fields)
    except TypeError as err:
        checks.fail(f"{cls.__name__}({', '.join(f'{k}={v!r}' for k, v in fields.items())}) could not be built "
                    f"({err}). Keep the fields the lesson names.")
    check_call_signature(cls)
    return module


def check_call_signature(cls):
    # A call that does not fit fails inside Flax, far from the learner's line; say it here, in their words.
    takes_flag = cls.__name__ != "LayerNorm"
    inputs = "idx" if cls.__name__ == "MiniGPT" else "x"
    wanted = f"__call__(self, {inputs}, deterministic=True)" if takes_flag else "__call__(self, x)"
    try:
        signature = inspect.signature(cls.__call__)
    except (TypeError, ValueError):
        return
    for args, kwargs in [((None, "x"), {})] + ([((None, "x"), {"deterministic": False})] if takes_flag else []):
        try:
            signature.bind(*args, **kwargs)
        except TypeError as err:
            checks.fail(f"{cls.__name__}.__call__{signature} should be {wanted}, so that "
                        f"apply(params, {inputs}) works as the lesson says ({err}).")


_TRACED: dict = {}  # (module, input shapes) -> its traced tree, so each tree is traced once


def tree_of(module, *args):
    """The learner's parameter tree, traced rather than computed (names and shapes are all that is read)."""
    key = (type(module), repr(module), tuple(np.shape(a) for a in args))
    if key not in _TRACED:
        _TRACED[key] = jax.eval_shape(lambda: module.init(jax.random.key(0), *args))
    return _TRACED[key]


def own_params(module, *args):
    """Random parameters in the learner's own tree, for the checks of properties that hold whatever the tree."""
    return og.random_fill(tree_of(module, *args), seed=2)



def missing_dropouts(calls, n_layer=None):
    """Sentences for the lesson's dropout sites outside attn and ffwd that never ran in training.

    `calls` is oracles_gpt.dropout_calls' list. With n_layer (a MiniGPT) the sites are the Dropout after the
    embedding sum and each block's Dropout on the attention output; without it (a Block on its own) that one.
    A Dropout inside 'attn' or 'ffwd' cannot stand in for them: those drop other things.
    """
    paths = [path.split("/") for path, _ in calls]

    def block_has_own_dropout(prefix):
        n = len(prefix)
        return any(p[:n] == prefix and len(p) > n and p[n] not in ("attn", "ffwd") for p in paths)

    after_attention = ("no dropout on the attention output: the block adds "
                       "nn.Dropout(dropout_rate)(attn(ln1(x))) to x, not attn(ln1(x)) itself")
    if n_layer is None:
        return [] if block_has_own_dropout([]) else [after_attention]
    missing = []
    if all(p[0].startswith("blocks_") for p in paths):
        missing.append("no dropout after the embedding sum: x = nn.Dropout(dropout_rate)(tok + pos) goes into "
                       "the blocks")
    missing += [f"in blocks_{i}, {after_attention}" for i in range(n_layer)
                if not block_has_own_dropout([f"blocks_{i}"])]
    return missing

def require_tree(module, args, expected, name):
    """A check that loads the oracle's parameters needs the lesson's tree; if it is not, one line says so."""
    if checks.tree_shapes(tree_of(module, *args)) != checks.tree_shapes(expected):
        checks.fail(f"not checked: {name}'s parameter tree is not the lesson's, so the shared parameters cannot be "
                    f"loaded into it (the parameter-tree check says what differs).")


def logits(model, params, idx, **kwargs):
    out = checks.without_dropout_rng(lambda: model.apply(params, idx, **kwargs), "MiniGPT")
    if isinstance(out, (tuple, list)):
        checks.fail(f"MiniGPT returns a {type(out).__name__} of {len(out)} items; it should return the logits "
                    "alone, (B, T, vocab_size). (The video's forward also takes targets and returns the loss; here "
                    "the loss is task 7's.)")
    return out


def jitted_logits(model, params, idx, block_size):
    """The learner's logits under jax.jit, with a sentence for the two usual ways that fails."""
    try:
        return jax.jit(lambda p, i: model.apply(p, i))(params, idx)
    except Exception as err:
        first_line = f"{type(err).__name__}: {str(err).strip().splitlines()[0][:300]}"
        where = outcomes.learner_frame(err)
        first_line += f", at {where}" if where else ""
        if "Tracer" in type(err).__name__ or "Concretization" in type(err).__name__:
            checks.fail(f"MiniGPT fails under jax.jit ({first_line}). Inside jit the arrays are abstract: a Python "
                        "`if`, `int()` or `.item()` on one cannot work; shapes (idx.shape) are fine.")
        checks.fail(f"MiniGPT fails on a batch of T={idx.shape[1]} tokens, shorter than block_size={block_size} "
                    f"({first_line}). Is T taken from idx.shape, and are the positions jnp.arange(T) rather than "
                    "the whole block_size?")
