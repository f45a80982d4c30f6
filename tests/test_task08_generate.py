"""Task 8: `generate`, autoregressive sampling with temperature and top-k, and `generate_jit`, the same
tokens from one compiled loop.

Oracles are tiny hand-made models whose answer can be checked in one's head (in the style of Flax lm1b's
temperature_sampler test): a model sure that the next token is "previous token + 1" must continue
[4] with 5, 6, 7, 8; a model with fixed logits must be sampled with the frequencies
softmax(logits / temperature), restricted to the top k; a model that refuses contexts longer than its
block_size catches a missing crop. Keys are fixed, so every check is deterministic; the frequency
tolerance is over five standard deviations, so any correct sampler passes whatever its keys.
"""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxgpt import checks

TASK = 8

COUNT_VOCAB = 12
FIXED_LOGITS = np.array([0.5, 2.0, -1.0, 1.0, 0.0, 1.5], np.float32)  # top 3: tokens 1, 5, 3
ROWS = 4000  # rows sampled at once for the frequency checks
NEW = 3  # new tokens per row in the frequency checks: 12,000 draws
TOLERANCE = 0.025  # on each token's frequency; one standard deviation is at most 0.0046


def _check_context(idx, block_size):
    T = idx.shape[1]
    if T > block_size:
        checks.fail(f"the model was called with a context of {T} tokens, but its block_size is {block_size}: "
                    "crop the context to its last block_size tokens, idx[:, -block_size:], before calling "
                    "the model.")


class CountUp(nn.Module):
    """Sure that the next token is "this token + 1" (mod vocab): at t the logits depend on idx[:, t] only."""

    block_size: int = 16

    @nn.compact
    def __call__(self, idx, deterministic=True):
        _check_context(idx, self.block_size)
        following = jax.nn.one_hot((idx + 1) % COUNT_VOCAB, COUNT_VOCAB)  # (B, T, V)
        return jnp.where(following > 0, 0.0, -1e9)  # (B, T, V)


class FixedLogits(nn.Module):
    """The same logits at every position, whatever the input: each new token is an independent draw."""

    block_size: int = 8

    @nn.compact
    def __call__(self, idx, deterministic=True):
        _check_context(idx, self.block_size)
        B, T = idx.shape
        return jnp.broadcast_to(jnp.asarray(FIXED_LOGITS), (B, T, FIXED_LOGITS.size))  # (B, T, V)


class Positional(nn.Module):
    """Random logits from the token and its position: causal, and sensitive to where the window starts."""

    block_size: int = 4
    vocab_size: int = 9

    @nn.compact
    def __call__(self, idx, deterministic=True):
        _check_context(idx, self.block_size)
        T = idx.shape[1]
        tok = nn.Embed(self.vocab_size, self.vocab_size, name="token_logits")(idx)  # (B, T, V)
        pos = nn.Embed(self.block_size, self.vocab_size, name="position_logits")(jnp.arange(T))  # (T, V)
        return tok + pos  # (B, T, V)


COUNT_UP = CountUp()
SHORT_COUNT_UP = CountUp(block_size=4)
FIXED = FixedLogits()
POSITIONAL = Positional()
# generate takes the parameter tree, model.init(...)['params'] (what state.params holds), not the variables dict.
POSITIONAL_PARAMS = POSITIONAL.init(jax.random.key(0), jnp.zeros((1, 4), jnp.int32))["params"]
NO_PARAMS = {}  # CountUp and FixedLogits have no parameters: an empty tree


CALLS = {  # how the checks call each function: the positional arguments, then the keyword ones
    "generate": (("model", "params", "idx", "key", "max_new_tokens"), ("temperature", "top_k")),
    "generate_jit": (("model", "params", "idx", "key", "max_new_tokens"), ("temperature", "top_k")),
}


def _function(impl, name):
    """The learner's `name`, once it is known to accept the call the checks make (else a sentence)."""
    positional, keywords = CALLS[name]
    return checks.learner_function(getattr(impl, name), name, positional, keywords)


def _unwrapped_params(err, name):
    """A sentence when Flax found no 'params' collection: the tree was passed to model.apply as it is."""
    if type(err).__name__ == "ScopeCollectionNotFound" and 'collection "params"' in str(err):
        return (f"{name} called model.apply(params, ...) with the parameter tree as it is, and Flax found no "
                "'params' collection in it: params is the inner tree (what state.params holds), so wrap it, "
                "model.apply({'params': params}, idx_cond, deterministic=True).")
    return None


def _run(name, fn, *args, **options):
    """fn(*args, **options), with Flax's error for unwrapped parameters turned into a sentence."""
    try:
        return fn(*args, **options)
    except Exception as err:
        why = _unwrapped_params(err, name)
        if why:
            checks.fail(why)
        raise


def _call(fn, name, model, params, idx, key, max_new_tokens, **options):
    out = _run(name, fn, model, params, idx, key, max_new_tokens, **options)
    B, T = idx.shape
    array = checks.as_array(out, f"{name}'s output")
    hint = {(B, T): "It has the prompt's shape: append each new token to idx (jnp.concatenate on axis 1).",
            (B, max_new_tokens): "It holds only the new tokens: return the whole sequence, the prompt first.",
            }.get(tuple(array.shape), "")
    checks.assert_shape(array, (B, T + max_new_tokens), f"{name}'s output", hint=hint)
    if not np.issubdtype(array.dtype, np.integer):
        checks.fail(f"{name}'s output should hold integer token ids, but its dtype is {array.dtype}.")
    if not np.array_equal(array[:, :T], np.asarray(idx)):
        checks.fail(f"{name}'s output should start with the prompt idx unchanged, but its first {T} columns "
                    f"are {array[:2, :T].tolist()}... instead of {np.asarray(idx)[:2].tolist()}....")
    return array


def _count_up(prompt, max_new_tokens, block_size, *, crop="end", position=-1, append=True, padded=False):
    """CountUp's continuation of `prompt` rows, computed by hand, with switches for the usual mistakes."""
    rows = []
    total = len(prompt[0]) + max_new_tokens
    for row in prompt:
        seq = list(row)
        for _ in range(max_new_tokens):
            context = seq if append else list(row)
            if padded:  # a fixed buffer of W tokens (zeros not yet sampled), starting at max(0, length - W)
                width = min(block_size, total)
                start = max(0, len(context) - width)
                window = (context + [0] * total)[start:start + width]
            else:
                window = context[-block_size:] if crop == "end" else context[:block_size]
            seq.append((window[position] + 1) % COUNT_VOCAB)
        rows.append(seq)
    return np.array(rows)


def _count_up_diagnosis(prompt, max_new_tokens, block_size):
    candidates = [
        ("the logits are read at position 0; the prediction for the next token is at the last position, "
         "logits[:, -1, :].", dict(position=0)),
        ("the context is cropped from the start (idx[:, :block_size]); keep its last block_size tokens, "
         "idx[:, -block_size:].", dict(crop="start")),
        ("each new token is not appended to the context before the next step, so the model always sees "
         "the prompt.", dict(append=False)),
        ("the logits are read at the end of the fixed-size window even before it is full, where the buffer "
         "still holds padding: read them at the position of the last token written.",
         dict(padded=True)),
    ]
    return checks.diagnose_from(
        (why, lambda kw=kw: _count_up(prompt, max_new_tokens, block_size, **kw)) for why, kw in candidates)


def _assert_counts_up(fn, name):
    prompt = jnp.array([[4]], jnp.int32)
    got = _call(fn, name, COUNT_UP, NO_PARAMS, prompt, jax.random.key(0), 4)
    expected = np.array([[4, 5, 6, 7, 8]])
    if not np.array_equal(got, expected):
        why = None
        if np.array_equal(got, _count_up([[4]], 4, COUNT_UP.block_size, padded=True)):
            why = ("the logits are read at the end of the fixed-size window even before it is full, where the "
                   "buffer still holds padding: read them at the position of the last token written.")
        elif np.array_equal(got, _count_up([[4]], 4, COUNT_UP.block_size, append=False)):
            why = ("the model sees the same context at every step: append each new token to idx before the "
                   "next step, and read the logits at the last position, logits[:, -1, :] (position 0 never "
                   "changes).")
        elif got[0, 1] != 5:
            why = ("the first new token is not the one the model is sure of: take the last position's logits, "
                   "logits[:, -1, :], and pass them to jax.random.categorical as logits (not probabilities).")
        checks.fail(f"from the prompt [4], a model sure that the next token is the previous one + 1 should give "
                    f"{expected[0].tolist()}, but {name} gave {got[0].tolist()}."
                    + (f"\n  Likely cause: {why}" if why else ""))


def _assert_crops(fn, name):
    prompt = jnp.array([[4, 9, 2], [0, 1, 7]], jnp.int32)
    got = _call(fn, name, SHORT_COUNT_UP, NO_PARAMS, prompt, jax.random.key(1), 6)
    expected = _count_up(np.asarray(prompt).tolist(), 6, SHORT_COUNT_UP.block_size)
    checks.assert_close(got, expected, f"{name}'s tokens with block_size 4 (a prompt of 3 and 6 new tokens)",
                        rtol=0, atol=0, diagnose=_count_up_diagnosis(np.asarray(prompt).tolist(), 6, 4))


# ----------------------------------------------------------------------------------------------------
# Sampling frequencies


def _softmax(z):
    z = np.asarray(z, np.float64)
    z = z - z[np.isfinite(z)].max()
    e = np.exp(z)
    return e / e.sum()


def _top_k_filtered(logits, k):
    kth = np.sort(logits)[-k]
    return np.where(logits >= kth, logits, -np.inf)


@functools.lru_cache(maxsize=None)
def _new_tokens(fn, name, temperature, top_k, seed=0):
    """NEW tokens in each of ROWS rows from FixedLogits, sampled by `fn`: (ROWS, NEW)."""
    idx = jnp.zeros((ROWS, 1), jnp.int32)
    out = _call(fn, name, FIXED, NO_PARAMS, idx, jax.random.key(seed), NEW, temperature=temperature, top_k=top_k)
    new = out[:, 1:]
    if new.min() < 0 or new.max() >= FIXED_LOGITS.size:
        checks.fail(f"{name} sampled token ids outside 0..{FIXED_LOGITS.size - 1} from a model with "
                    f"{FIXED_LOGITS.size} logits (got {new.min()} to {new.max()}).")
    return new


def _frequencies(new):
    return np.bincount(new.reshape(-1), minlength=FIXED_LOGITS.size) / new.size


def _assert_frequencies(fn, name, temperature, top_k):
    new = _new_tokens(fn, name, temperature, top_k)
    setting = f"temperature={temperature}" + (f", top_k={top_k}" if top_k is not None else "")
    if (top_k is None or top_k > 1) and np.all(new == int(np.argmax(FIXED_LOGITS))):
        checks.fail(f"with {setting}, every token {name} produced is the most likely one: that is argmax "
                    "(greedy decoding). Sample with jax.random.categorical(key, logits).")
    scaled = FIXED_LOGITS / temperature
    if top_k is not None:
        allowed = np.argsort(FIXED_LOGITS)[-top_k:]
        outside = sorted(set(np.unique(new).tolist()) - set(allowed.tolist()))
        if outside:
            sampled = sorted(np.unique(new).tolist())
            smallest = set(np.argsort(FIXED_LOGITS)[:top_k].tolist())
            why = ("it looks as if the k smallest logits were kept: keep the k largest (jax.lax.top_k)."
                   if set(sampled) <= smallest else
                   "the tokens outside the top k must get probability 0: set their logits to -inf (a logit of 0 "
                   "still leaves them a chance) and pass logits, not probabilities, to jax.random.categorical.")
            checks.fail(f"with top_k={top_k} only tokens {sorted(allowed.tolist())} (the {top_k} largest logits) "
                        f"may be sampled, but {name} sampled {sampled}. Likely cause: {why}")
        scaled = _top_k_filtered(scaled, top_k)
    expected = _softmax(scaled)
    got = _frequencies(new)
    keep = (lambda z: _top_k_filtered(z, top_k)) if top_k is not None else (lambda z: z)
    variants = [
        ("the logits are multiplied by the temperature; divide them by it.", keep(FIXED_LOGITS * temperature)),
        ("the temperature is not applied: divide the logits by it before sampling.", keep(FIXED_LOGITS)),
        ("jax.random.categorical was given probabilities; it takes logits (unnormalised log-probabilities).",
         _softmax(scaled)),
    ]
    if top_k is not None:
        variants.append(("top_k is ignored: keep only the top_k largest logits.", FIXED_LOGITS / temperature))
    if top_k is not None and top_k > 1:
        variants.append(("only k - 1 tokens are kept: the k-th largest logit is masked too (logits <= kth); mask "
                         "only the logits strictly below it (logits < kth).",
                         _top_k_filtered(FIXED_LOGITS / temperature, top_k - 1)))
    why = next((w for w, z in variants if np.abs(got - _softmax(z)).max() <= TOLERANCE), None)
    if np.abs(got - expected).max() > TOLERANCE:
        checks.fail(f"with {setting}, {name}'s tokens should follow softmax(logits / temperature)"
                    + (" over the top k" if top_k else "") + f" within {TOLERANCE} per token, over "
                    f"{new.size} draws.\n  expected {np.round(expected, 3).tolist()}\n  got      "
                    f"{np.round(got, 3).tolist()}" + (f"\n  Likely cause: {why}" if why else ""))


# ----------------------------------------------------------------------------------------------------
# generate


def test_generate_counts_up(impl):
    """From the prompt [4], a model sure that the next token is the previous + 1 continues 5, 6, 7, 8"""
    _assert_counts_up(_function(impl, "generate"), "generate")


def test_generate_crops_context(impl):
    """generate crops the context to its last block_size tokens before each call of the model"""
    _assert_crops(_function(impl, "generate"), "generate")


def test_generate_samples_softmax(impl):
    """generate samples in proportion to softmax(logits) at temperature 1"""
    _assert_frequencies(_function(impl, "generate"), "generate", 1.0, None)


def test_generate_temperature(impl):
    """generate divides the logits by the temperature: below 1 sharper, above 1 flatter"""
    _assert_frequencies(_function(impl, "generate"), "generate", 0.5, None)
    _assert_frequencies(_function(impl, "generate"), "generate", 2.0, None)


def test_generate_top_k(impl):
    """With top_k, generate samples only among the k largest logits, renormalised among them"""
    _assert_frequencies(_function(impl, "generate"), "generate", 1.0, 3)
    _assert_frequencies(_function(impl, "generate"), "generate", 2.0, 1)


def test_generate_fresh_key_each_step(impl):
    """generate uses a fresh key for every new token: with fixed logits a row's new tokens are independent"""
    new = _new_tokens(_function(impl, "generate"), "generate", 1.0, None)
    same = np.mean(np.all(new == new[:, :1], axis=1))
    if same > 0.5:
        checks.fail(f"in {same:.0%} of {ROWS} rows all {NEW} new tokens are the same, from a model whose logits "
                    f"never change (independent draws would agree in about "
                    f"{np.sum(_softmax(FIXED_LOGITS) ** NEW):.0%} of rows). Likely cause: the same key is used "
                    "at every step: split it each step, key, subkey = jax.random.split(key), and sample with "
                    "subkey.")


def test_generate_reproducible(impl):
    """generate is reproducible: the same key gives the same tokens, another key other tokens"""
    idx = jnp.array([[1, 2]] * 8, jnp.int32)
    generate = _function(impl, "generate")
    first = _call(generate, "generate", POSITIONAL, POSITIONAL_PARAMS, idx, jax.random.key(5), 7)
    again = _call(generate, "generate", POSITIONAL, POSITIONAL_PARAMS, idx, jax.random.key(5), 7)
    other = _call(generate, "generate", POSITIONAL, POSITIONAL_PARAMS, idx, jax.random.key(6), 7)
    if not np.array_equal(first, again):
        checks.fail("generate gave different tokens for the same key: every random draw should come from the "
                    "key passed in (no other source of randomness).")
    if np.array_equal(first, other):
        checks.fail("generate gave the same tokens for two different keys: sample with keys split from the key "
                    "passed in.")


# ----------------------------------------------------------------------------------------------------
# generate_jit


def _loop_size(jaxpr):
    """(primitive names, number of equations) of a jaxpr and every jaxpr nested in it."""
    names, count = set(), 0

    def walk(j):
        nonlocal count
        for eqn in j.eqns:
            count += 1
            names.add(eqn.primitive.name)
            for value in eqn.params.values():
                for sub in value if isinstance(value, (tuple, list)) else (value,):
                    if hasattr(sub, "eqns"):
                        walk(sub)
                    elif hasattr(getattr(sub, "jaxpr", None), "eqns"):
                        walk(sub.jaxpr)

    walk(jaxpr.jaxpr)
    return names, count


def test_generate_jit_same_tokens_as_generate(impl):
    """generate_jit gives exactly the tokens of your generate for the same arguments and key"""
    idx = jnp.array([[1, 2], [3, 4], [5, 6], [7, 8], [0, 1], [2, 3], [4, 5], [6, 7]], jnp.int32)
    generate, generate_jit = _function(impl, "generate"), _function(impl, "generate_jit")
    for options in ({}, {"temperature": 0.7, "top_k": 3}):
        expected = _call(generate, "generate", POSITIONAL, POSITIONAL_PARAMS, idx, jax.random.key(7), 7, **options)
        got = _call(generate_jit, "generate_jit", POSITIONAL, POSITIONAL_PARAMS, idx, jax.random.key(7), 7, **options)
        if not np.array_equal(got, expected):
            setting = ", ".join(f"{k}={v}" for k, v in options.items()) or "the default settings"
            rows = np.flatnonzero(np.any(got != expected, axis=1))
            first = int(np.argmax(got[rows[0]] != expected[rows[0]]))
            checks.fail(f"with {setting}, generate_jit's tokens differ from generate's in {len(rows)} of "
                        f"{idx.shape[0]} rows (prompt of 2 tokens, block_size 4, 7 new tokens); row {rows[0]} "
                        f"first differs at position {first}:\n  generate     {expected[rows[0]].tolist()}\n"
                        f"  generate_jit {got[rows[0]].tolist()}\n  Both must split the key the same way "
                        "(key, subkey = jax.random.split(key) before each sample) and show the model the same "
                        "window: the last block_size tokens, starting at position 0 until there are that many. (If "
                        "generate's own checks fail, fix generate first.)")


def test_generate_jit_counts_up(impl):
    """generate_jit continues [4] with 5, 6, 7, 8 on the previous + 1 model"""
    _assert_counts_up(_function(impl, "generate_jit"), "generate_jit")


def test_generate_jit_crops_context(impl):
    """generate_jit shows the model at most block_size tokens, the last ones written"""
    _assert_crops(_function(impl, "generate_jit"), "generate_jit")


def test_generate_jit_samples(impl):
    """generate_jit samples with temperature and top-k in the right proportions"""
    _assert_frequencies(_function(impl, "generate_jit"), "generate_jit", 2.0, 3)


def test_generate_jit_is_one_compiled_loop(impl):
    """generate_jit is jitted, and its loop is a lax loop whose program does not grow with max_new_tokens"""
    fn = _function(impl, "generate_jit")
    if not hasattr(fn, "lower"):
        checks.fail(f"generate_jit is a {type(fn).__name__}, not a jax.jit-compiled function: wrap it in "
                    "jax.jit with model, max_new_tokens and top_k static, "
                    "@partial(jax.jit, static_argnames=('model', 'max_new_tokens', 'top_k')).")
    idx = jnp.array([[1, 2]], jnp.int32)

    def program(max_new_tokens):
        return _run("generate_jit", jax.make_jaxpr(
            lambda params, idx, key: fn(POSITIONAL, params, idx, key, max_new_tokens)),
            POSITIONAL_PARAMS, idx, jax.random.key(0))

    names, small = _loop_size(program(10))
    _, large = _loop_size(program(40))
    if large > small * 1.5 or not ({"while", "scan"} & names):
        checks.fail(f"generate_jit's program has {small} operations for 10 new tokens and {large} for 40"
                    + ("" if {"while", "scan"} & names else ", and no loop primitive")
                    + ": the Python loop is unrolled into the program, one copy of the model per token. Write "
                    "the loop with jax.lax.fori_loop over a fixed-size buffer, so that it compiles once "
                    "whatever max_new_tokens is.")
