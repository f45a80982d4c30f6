"""Oracles the task suites compare against: small numpy computations a reader can verify by eye, and
the known-wrong variants that let a failure name its likely cause. Nothing here is the reference solution.
"""

from __future__ import annotations

import numpy as np


def softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    x = x - np.max(np.where(np.isfinite(x), x, -np.inf), axis=axis, keepdims=True)
    e = np.exp(x)
    return e / e.sum(axis=axis, keepdims=True)


def causal_attention(q, k, v, *, scale, mask="causal", softmax_axis=-1, swap_qk=False, mask_after=False,
                     mask_value=-np.inf):
    """Single-head attention in float64 with switches for the usual mistakes."""
    q, k, v = (np.asarray(a, np.float64) for a in (q, k, v))
    T = q.shape[-2]
    wei = (k @ np.swapaxes(q, -1, -2) if swap_qk else q @ np.swapaxes(k, -1, -2)) * scale
    tril = np.tril(np.ones((T, T), bool))
    if mask == "causal" and not mask_after:
        wei = np.where(tril, wei, mask_value)
    if mask == "upper":
        wei = np.where(tril.T, wei, -np.inf)
    wei = softmax(wei, axis=softmax_axis)
    if mask == "causal" and mask_after:
        wei = np.where(tril, wei, 0.0)
    return wei @ v


def running_mean(x: np.ndarray) -> np.ndarray:
    """Causal running mean along axis 1: out[:, t] = mean(x[:, :t+1])."""
    x = np.asarray(x, np.float64)
    return np.cumsum(x, axis=1) / np.arange(1, x.shape[1] + 1)[None, :, None]


# --- The reference as an oracle (tasks 3-5) ------------------------------------------------------------------
# jaxgpt/grader/differential.py runs the learner's module and the reference's on the same parameters and inputs and
# names the first submodule where they part. These helpers choose inputs that don't hide mistakes and turn a
# learner's error on one of them into a sentence.

DROPOUT_RATE = 0.37  # not round: a hard-coded 0.1, 0.2 or 0.5, or a dropout that is always on, shows


def inputs(C: int, shapes, seed: int = 5) -> list:
    """One float32 input x of shape (B, T, C) per (B, T) in `shapes`."""
    import jax

    keys = jax.random.split(jax.random.key(seed), len(shapes))
    return [jax.random.normal(k, (b, t, C)) for k, (b, t) in zip(keys, shapes)]


def tree_of(module, x):
    """The names and shapes of `module`'s parameters, traced rather than computed."""
    import jax

    return jax.eval_shape(lambda: module.init(jax.random.key(0), x))


def require_tree(learner, x, variables, what: str) -> None:
    """A check that loads the reference's parameters into the learner's module needs the lesson's tree."""
    from jaxgpt.grader import checks

    if checks.tree_shapes(tree_of(learner, x)) != checks.tree_shapes(variables):
        checks.fail(f"not checked: {what}'s parameter tree is not the lesson's, so the same parameters cannot be "
                    "loaded into it and the reference's (the parameter-tree check says what differs).")


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return f"{type(err).__name__}: {text.splitlines()[0][:300] if text else ''}"


def same_as_reference(learner, reference, variables, shapes, what: str, *, C: int, task=None, build=None,
                      run=None, first=None) -> None:
    """The learner's module computes what the reference's does, submodule by submodule, in evaluation and
    training mode (dropout made transparent), on an input of each (B, T) in `shapes`; the first is the shape
    the parameters were initialised with. `run(call)` runs one call of the learner's code (a suite may wrap it
    to explain its errors). A learner error or a divergence on a later shape that the first shape does not
    show is checked once more at that batch size and the first length, so that the verdict can say whether
    the length is what breaks it (a mask or size fixed in advance) or the batch. `first`, when given, is the
    input of the first shape: the suite's own x, whose records the dropout check then reuses."""
    from jaxgpt.grader import checks, differential, outcomes

    run = run or (lambda call: call())
    xs = inputs(C, shapes)
    if first is not None:
        xs[0] = first
    (b0, t0) = shapes[0]
    for (b, t), x in zip(shapes, xs):
        def compare(inp):
            run(lambda: differential.assert_same_behaviour(learner, reference, variables, [(inp,)], what,
                                                           task=task, build=build))
        try:
            compare(x)
            continue
        except NotImplementedError:
            raise
        except checks.CheckFailed as failed:
            if (b, t) == (b0, t0):
                raise
            error, message = None, str(failed)
        except Exception as err:
            if (b, t) == (b0, t0) or outcomes.learner_frame(err) is None:
                raise
            error, message = err, None
        # It agreed on the first shape: does it agree at this batch size and the first length?
        same_length = inputs(C, [(b, t0)], seed=6)[0]
        try:
            compare(same_length)
            length_breaks_it = True
        except NotImplementedError:
            raise
        except Exception:
            length_breaks_it = False
        shape = f"({b}, {t}, {C})"
        if length_breaks_it and t > t0:
            cause = (f"  Likely cause: something is built for a fixed length: it agrees with the reference for "
                     f"T={t0} (also with batch {b}) and not for T={t}. A mask or size fixed in advance (a "
                     "module-level constant, a mask made once for one length or for block_size) cannot serve "
                     "every T: build the mask from T = x.shape[1] on every call.")
        elif length_breaks_it:
            cause = (f"  It agrees with the reference for T={t0} (also with batch {b}) and not for T={t}: "
                     "something depends on one length (a size fixed in advance, or a squeeze that drops the "
                     "time axis when T is 1): take T from x.shape[1].")
        else:
            cause = (f"  It agrees with the reference for batch {b0} and not for batch {b}: something depends "
                     "on the batch size (a fixed batch, or a squeeze that removes the batch axis when it is 1).")
        if error is not None:
            checks.fail(f"{what} works on an input of shape ({b0}, {t0}, {C}) but raises on one of shape {shape}: "
                        f"{_first_line(error)}\n    at {outcomes.learner_frame(error)}\n{cause}")
        checks.fail(f"{message}\n{cause}")


def dropout_names(path: str = "", owner: str = "the head") -> dict:
    """How the dropout audit words the values a head may drop, for the head at `path` ('' or 'heads_0'), called
    `owner` in the sentence ("the head", "head 0")."""
    sub = f"{path}/" if path else ""
    return {f"in:{path}": f"{owner}'s input x", f"out:{sub}query": f"q ({owner}'s query projection)",
            f"out:{sub}key": f"k ({owner}'s key projection)", f"out:{sub}value": f"v ({owner}'s value projection)",
            f"out:{path}": f"{owner}'s output"}


def scores_describer(q_of, k_of, scale: float):
    """`describe` for the dropout audit: says "the scores before the softmax" when a dropped value is, on and
    below the diagonal, q k^T (scaled by `scale` or not), in any layout. `q_of()` and `k_of()` give q and k as
    (..., T, d) arrays with the heads (if any) before T."""

    def describe(value):
        q, k = np.asarray(q_of(), np.float64), np.asarray(k_of(), np.float64)
        scores = q @ np.swapaxes(k, -1, -2)  # (..., T, T)
        value = np.asarray(value, np.float64)
        tril = np.tril(np.ones(scores.shape[-2:], bool))
        for factor in (scale, 1.0):
            for layout in _layouts(value, scores.shape):
                seen = np.where(tril, layout, 0.0)
                if np.allclose(seen, np.where(tril, scores * factor, 0.0), rtol=1e-4, atol=1e-4):
                    return ("the scores before the softmax (where a dropped masked entry becomes 0, so the future "
                            "gets weight)")
        return None

    return describe


def _layouts(value, shape):
    """`value` rearranged into `shape` by dropping axes of length 1 and permuting the rest, every way that fits."""
    import itertools

    v = np.squeeze(value)
    target = tuple(n for n in shape if n != 1)
    if v.size != int(np.prod(shape)) or sorted(v.shape) != sorted(target):
        return []
    found = []
    for order in itertools.permutations(range(v.ndim)):
        if tuple(v.shape[i] for i in order) == target:
            found.append(np.transpose(v, order).reshape(shape))
    return found
