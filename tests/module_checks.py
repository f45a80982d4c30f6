"""Checks shared by the suites of tasks 1 and 6, whose modules have the same fields, calls and trees:
building the learner's module with the lesson's fields, tracing its parameter tree, running MiniGPT (plainly
and under jax.jit) with a sentence for the usual ways that fails, and the reference-differential checks
(jaxgpt/grader/differential.py) with the words that name each of the lesson's dropout sites."""

import inspect

import jax
import numpy as np

import oracles_gpt as og
from jaxgpt.grader import checks, differential, outcomes
from jaxgpt.grader.implementation import LoadError, MissingName

RATE = 0.37  # the dropout_rate of the differential checks: a rate written into the code (0.1, 0.2, 0.5) shows


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


def require_tree(module, args, expected, name):
    """A check that loads the oracle's parameters needs the lesson's tree; if it is not, one line says so."""
    if checks.tree_shapes(tree_of(module, *args)) != checks.tree_shapes(expected):
        checks.fail(f"not checked: {name}'s parameter tree is not the lesson's, so the shared parameters cannot be "
                    f"loaded into it (the parameter-tree check says what differs).")


def require_tree_where_it_traces(module, args, expected, name):
    """`require_tree`, except that a module whose init raises on these inputs is left to the differential
    check, which says on which inputs it fails and on which it runs."""
    try:
        tree_of(module, *args)
    except _PASSED_THROUGH:
        raise
    except Exception:
        return
    require_tree(module, args, expected, name)


def output(apply, shape, what, hint=""):
    """The learner's output as a numpy array of `shape`, or a sentence: a tuple, another shape, or a request
    for a dropout RNG in a deterministic call are the learner's, never the check's, errors."""
    out = checks.without_dropout_rng(apply, what)
    if isinstance(out, (tuple, list)):
        checks.fail(f"{what} should be one array of shape {tuple(shape)}, but it is a {type(out).__name__} of "
                    f"{len(out)} items.")
    return np.asarray(checks.assert_shape(out, shape, what, hint))


def logits_shape_hint(shape, B, T, V, C):
    """What a wrong logits shape says, read from the shape itself."""
    shape = tuple(shape)
    if shape == (B, V):
        return ("These are one row per sequence: return the logits of every position, (B, T, vocab_size), not only "
                "the last one's (a sampler takes the last row itself).")
    if shape == (T, B, V):
        return "The first two axes are swapped: keep the batch first, (B, T, vocab_size)."
    if shape[-1:] == (C,):
        return "The last axis is n_embd wide: end with lm_head = nn.Dense(vocab_size)."
    return "One row of vocab_size scores per position: (B, T, vocab_size)."


def leak_cause(learner_logits, diagnose):
    """After a causality check failed: the verified cause when the learner's output is what a known mistake
    (no causal mask, ...) gives, else where to look, said as a pointer rather than as the cause."""
    cause = diagnose(np.asarray(learner_logits, np.float64)) if diagnose is not None else None
    if cause:
        return f"\n  Likely cause: {cause}"
    return ("\n  Look for what lets a position see later ones: the attention's causal mask (it must reach every "
            "Block's attention), or an operation over the time axis (axis 1) outside attention.")


def logits(model, params, idx, **kwargs):
    out = checks.without_dropout_rng(lambda: model.apply(params, idx, **kwargs), "MiniGPT")
    if isinstance(out, (tuple, list)):
        checks.fail(f"MiniGPT returns a {type(out).__name__} of {len(out)} items; it should return the logits "
                    "alone, (B, T, vocab_size). (The video's forward also takes targets and returns the loss; here "
                    "the loss is task 7's.)")
    first_non_finite(model, params, (idx,), out, "MiniGPT's logits", kwargs.get("deterministic", True))
    return out


def first_non_finite(module, variables, args, out, what, deterministic=True):
    """A NaN or infinity in `out` is traced back to the first submodule that returned one, and said there:
    nn.Embed, for one, returns NaN for an index outside its table."""
    try:
        values = np.asarray(out, dtype=np.float64)
    except Exception:
        return
    if np.isfinite(values).all():
        return
    try:
        rec = differential.record(module, variables, *args, deterministic=deterministic)
    except Exception:
        return  # the usual check reports it
    inputs = {ev.path: ev.value for ev in rec.events if ev.kind == "in"}
    for ev in rec.events:
        if ev.kind != "out" or not ev.path or ev.value is None or not np.issubdtype(ev.value.dtype, np.floating):
            continue
        if np.isfinite(ev.value).all():
            continue
        where = f"{what} hold NaN or infinite values; the first submodule that returns one is `{ev.path}` ({ev.cls})"
        given = inputs.get(ev.path)
        table = _leaf(variables, ev.path, "embedding")
        if ev.cls == "Embed" and given is not None and table is not None and np.issubdtype(given.dtype, np.integer) \
                and (given.max(initial=0) >= table.shape[0] or given.min(initial=0) < 0):
            checks.fail(f"{where}: it is given indices from {int(given.min())} to {int(given.max())} for a table of "
                        f"{table.shape[0]} rows, and nn.Embed returns NaN for an index outside its table. Look at what "
                        f"you give `{ev.path}`" + (" (the positions are jnp.arange(T))."
                                                    if ev.path.endswith("position_embedding") else "."))
        checks.fail(f"{where}, although its input is finite: look at its computation (a division by zero, a square "
                    "root or log of a negative number?).")


def _leaf(variables, path, name):
    node = variables.get("params", {}) if isinstance(variables, dict) else {}
    for part in path.split("/"):
        node = node.get(part, {}) if isinstance(node, dict) else {}
    value = node.get(name) if isinstance(node, dict) else None
    return None if value is None else np.asarray(value)


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


# --- The reference-differential checks ------------------------------------------------------------------------

_PASSED_THROUGH = (checks.CheckFailed, NotImplementedError, MissingName, LoadError)


def same_behaviour(learner, reference, variables, inputs, what, *, task, build, train=1, plain=False,
                   explain=None):
    """`differential.assert_same_behaviour` on each input: the first `train` of them in evaluation and training
    mode (dropout transparent), the others in evaluation mode (`plain`: a module called without
    `deterministic`, such as LayerNorm). An error raised by the learner's module on some inputs and not on
    others is said with the shapes that work and those that do not (a length written into the code shows this
    way). `explain(args)` may add a verified sentence to a failure (which of the learner's own parts differs,
    what the positions were)."""
    failures = []
    worked = []
    for i, args in enumerate(inputs):
        modes = (None,) if plain else (True, False) if i < train else (True,)
        try:
            differential.assert_same_behaviour(learner, reference, variables, [args], what, modes=modes, task=task,
                                               build=build)
        except checks.CheckFailed as err:
            extra = explain(args) if explain else None
            raised = "".join(f"\n  (On an input of shape {_shapes(a)} it raises {type(e).__name__}: "
                             f"{_first_line(e)}.)" for a, e in failures[:1])
            checks.fail(str(err) + (f"\n  {extra}" if extra else "") + raised)
        except _PASSED_THROUGH:
            raise
        except Exception as err:  # the learner's module raised: on this input only?
            if i < train and checks.is_missing_dropout_rng(err):
                raise  # only the training-mode call, which alone asks for that RNG, can fail so: not a shape's fault
            failures.append((args, err))
            continue
        worked.append(args)
    if not failures:
        return
    args, err = failures[0]
    if not worked:
        raise err  # it fails on every input: the learner's own error, at their line, says it best
    where = outcomes.learner_frame(err)
    line = _first_line(err)
    bad_t = [np.shape(a[0])[1] for a, _ in failures if np.ndim(a[0]) >= 2]
    good_t = [np.shape(a[0])[1] for a in worked if np.ndim(a[0]) >= 2]
    message = (f"{what} raises {type(err).__name__} ({line}){f' at {where}' if where else ''} on an input of shape "
               f"{_shapes(args)}, but it runs on {', '.join(_shapes(a) for a in worked)}.")
    if bad_t and good_t and min(bad_t) > max(good_t):
        message += (f" It fails only on the longer sequence (T={min(bad_t)}): is a length written into your code, a "
                    "mask or a table built for a fixed T (such as 8)? Take T from the input's shape.")
    elif bad_t and good_t and max(bad_t) < min(good_t):
        message += (f" It fails only on the shorter sequences (T = {', '.join(map(str, sorted(set(bad_t))))}): is a "
                    "size taken from T where the lesson's takes block_size, or from block_size where it takes T?")
    elif any(np.shape(a[0])[0] == 1 for a, _ in failures):
        message += " It fails on a batch of one: is an axis of length 1 squeezed away, or the batch size fixed?"
    checks.fail(message)


def _shapes(args):
    return " and ".join(str(tuple(np.shape(v))) for v in args)


def _first_line(err):
    return str(err).strip().splitlines()[0][:300] if str(err).strip() else ""


def position_explainer(learner, variables, block_size):
    """For MiniGPT: when the learner's position table is looked up with something other than jnp.arange(T),
    says with what (the token ids, the whole block_size, positions from 1), found by comparing what the
    learner's `position_embedding` received with each."""

    def explain(args):
        idx = np.asarray(args[0])
        T = idx.shape[-1]
        try:
            rec = differential.record(learner, variables, *args, deterministic=True)
        except Exception:
            return None
        got = next((ev.value for ev in rec.events if ev.kind == "in" and ev.path == "position_embedding"), None)
        if got is None or _same_squeezed(got, np.arange(T)):
            return None
        n = int(np.size(got))
        for words, candidate in (("the token ids", idx), ("jnp.arange(block_size), whatever T is",
                                                           np.arange(block_size)),
                                 ("positions numbered from 1, jnp.arange(1, T + 1)", np.arange(1, T + 1)),
                                 (f"jnp.arange({n}), a length written into the code, whatever T is",
                                  np.arange(n))):
            if _same_squeezed(got, candidate):
                return (f"Likely cause: `position_embedding` is looked up with {words}; the lesson's takes the "
                        "positions jnp.arange(T), T = idx.shape[1].")
        return None

    return explain


def _same_squeezed(a, b):
    a, b = np.squeeze(np.asarray(a)), np.squeeze(np.asarray(b))
    return a.shape == b.shape and np.array_equal(a, b)


def first_of(*explainers):
    """One explainer from several: the first sentence any of them has."""
    def explain(args):
        for e in explainers:
            words = e(args)
            if words:
                return words
        return None
    return explain


def same_dropout(learner, reference, variables, args, what, names, explain=None):
    """`differential.assert_same_dropout` at the suites' rate; `explain()` may add a verified sentence."""
    try:
        differential.assert_same_dropout(learner, reference, variables, args, what, rate=RATE, names=names)
    except checks.CheckFailed as err:
        extra = explain(args) if explain else None
        checks.fail(str(err) + (f"\n  {extra}" if extra else ""))


def feedforward_names(prefix="", owner="", note=""):
    """Words for FeedForward's dropout site and the values near it, under `prefix` (its path); `owner` names
    the block it sits in ("" for a FeedForward on its own), `note` follows its name."""
    p = f"{prefix}/" if prefix else ""
    ffwd = f"{owner}'s feed-forward{note}" if owner else f"the feed-forward{note}"
    output = f"{ffwd} output (after proj{', before the residual add' if owner else ''})"
    return {f"{p}Dropout_0": output, f"out:{p}proj": output, f"out:{prefix}": output,
            f"out:{p}fc": f"{ffwd} fc output (before the ReLU)",
            f"in:{p}proj": f"{ffwd} hidden layer (the ReLU's output, proj's input)",
            f"in:{prefix}": f"{ffwd} input"}


def block_names(prefix="", who="the block", own_parts=False):
    """Words for a Block's dropout sites and the values near them, under `prefix` (its path). With
    `own_parts` (task 6) the attention is the learner's task-5 EinsumMultiHeadAttention, whose weight dropout
    is an nn.Dropout inside it, and the feed-forward is their task-1 FeedForward."""
    p = f"{prefix}/" if prefix else ""
    attn_out = f"{who}'s attention output (before the residual add)"
    names = {f"{p}Dropout_0": attn_out, f"out:{p}attn": attn_out, f"out:{p}attn/out": attn_out,
             f"in:{p}ln2": f"{who}'s residual sum x + attn(ln1(x)) (ln2's input), not the attention branch alone",
             f"out:{prefix}": f"{who}'s output, the residual sum x + ffwd(ln2(x)), not the feed-forward branch alone",
             f"in:{prefix}": f"{who}'s input x",
             f"out:{p}ln1": f"{who}'s ln1 output (the attention's input)",
             f"out:{p}ln2": f"{who}'s ln2 output (the feed-forward's input)"}
    names.update(feedforward_names(f"{p}ffwd", who, " (your FeedForward, task 1)" if own_parts else ""))
    if own_parts:
        names[f"{p}attn/Dropout_0"] = (f"{who}'s attention weights after the softmax (inside attn: your "
                                       "EinsumMultiHeadAttention, task 5)")
    return names


def model_names(n_layer, own_parts=False):
    """Words for MiniGPT's dropout sites and the values near them."""
    names = {"Dropout_0": "the embedding sum (tok + pos)", "in:blocks_0": "the embedding sum (tok + pos)",
             "out:token_embedding": "the token embedding alone (tok, before pos is added)",
             "out:position_embedding": "the position embedding alone (pos, before it is added to tok)",
             "out:ln_f": "the final LayerNorm's output", "out:lm_head": "the logits", "out:": "the logits"}
    for i in range(n_layer):
        names.update({k: v for k, v in block_names(f"blocks_{i}", f"blocks_{i}", own_parts).items()
                      if k != f"in:blocks_{i}"})
    return names
