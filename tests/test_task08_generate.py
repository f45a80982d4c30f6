"""Task 8: `generate`, autoregressive sampling with temperature and top-k, and `generate_jit`, the same
tokens from one compiled loop.

Oracles are tiny hand-made models whose answer can be checked in one's head (in the style of Flax lm1b's
temperature_sampler test): a model sure that the next token is "previous token + 1" must continue
[4] with 5, 6, 7, 8; a model with fixed logits must be sampled with the frequencies
softmax(logits / temperature), restricted to the top k. Then exactness: `HashLM` picks its logits by an integer
hash of the whole window (every position, and where the window starts, changes it) and refuses contexts longer
than its block_size. With a sharp table its next token is the hash itself, whatever the sampler, so both
samplers must write exactly the tokens computed by hand for the lesson's window, across the block_size boundary
(a crop one token short, or one too long, changes them). With a soft table both samplers must give exactly the
tokens of the reference's `generate` for the same model, parameters, prompt, key, temperature and top-k: the
lesson fixes the recipe (key, subkey = jax.random.split(key) before each sample, jax.random.categorical(subkey,
logits / temperature) over the top k). The hash is integer arithmetic and the logits are a table row, so the
learner's model call and the oracle's see bit-identical logits; a sampler's result can then only differ from the
reference's through its keys or its arithmetic on the logits. When the tokens differ, each known mistake is
recomputed (another key recipe, another threshold, another window) and named only if it gives the learner's
tokens exactly.

Keys are fixed, so every check is deterministic; the frequency tolerance is over five standard deviations, so any
correct sampler passes whatever its keys. Shapes: a prompt of 1 token in a batch of one, growing past block_size 5,
and prompts of 7 tokens (longer than block_size) in a batch of 3; the vocabulary (13) differs from every length.
"""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxgpt.grader import checks, outcomes

TASK = 8

COUNT_VOCAB = 12
FIXED_LOGITS = np.array([0.5, 2.0, -1.0, 1.0, 0.0, 1.5], np.float32)  # top 3: tokens 1, 5, 3
ROWS = 4000  # rows sampled at once for the frequency checks
NEW = 3  # new tokens per row in the frequency checks: 12,000 draws
TOLERANCE = 0.025  # on each token's frequency; one standard deviation is at most 0.0046
HASH_VOCAB = 13
HASH_BLOCK = 5
MULTIPLIERS = (3, 5, 7, 2, 11, 4, 9, 6, 10, 8, 12, 1)  # one per position of the window, none 0 mod 13


def _check_deterministic(deterministic):
    if deterministic is not True:
        checks.fail(f"the model was called with deterministic={deterministic!r}: sampling runs the model with dropout "
                    "off, model.apply({'params': params}, idx_cond, deterministic=True) (no dropout RNG).")


def _check_context(idx, block_size):
    T = idx.shape[1]
    if T > block_size:
        checks.fail(f"the model was called with a context of {T} tokens, but its block_size is {block_size}: "
                    "crop the context to its last block_size tokens, idx[:, -block_size:], before calling "
                    "the model.")


# Each model's arithmetic is one jitted function, so that a learner's eager generate, which calls the model on a
# new length at every step, compiles one small program per length instead of one per operation and length.


@jax.jit
def _count_up_logits(idx):
    following = jax.nn.one_hot((idx + 1) % COUNT_VOCAB, COUNT_VOCAB)  # (B, T, V)
    return jnp.where(following > 0, 0.0, -1e9)  # (B, T, V)


@jax.jit
def _fixed_logits(idx):
    B, T = idx.shape
    return jnp.broadcast_to(jnp.asarray(FIXED_LOGITS), (B, T, FIXED_LOGITS.size))  # (B, T, V)


@jax.jit
def _hash_logits(idx, table):
    T = idx.shape[1]
    weights = jnp.asarray(MULTIPLIERS[:T], jnp.int32)
    h = (jnp.cumsum(idx.astype(jnp.int32) * weights, axis=1) + jnp.arange(1, T + 1)) % HASH_VOCAB  # (B, T)
    return table[h]  # (B, T, V)


class CountUp(nn.Module):
    """Sure that the next token is "this token + 1" (mod vocab): at t the logits depend on idx[:, t] only."""

    block_size: int = 16

    @nn.compact
    def __call__(self, idx, deterministic=True):
        _check_deterministic(deterministic)
        _check_context(idx, self.block_size)
        return _count_up_logits(idx)


class FixedLogits(nn.Module):
    """The same logits at every position, whatever the input: each new token is an independent draw."""

    block_size: int = 8

    @nn.compact
    def __call__(self, idx, deterministic=True):
        _check_deterministic(deterministic)
        _check_context(idx, self.block_size)
        return _fixed_logits(idx)


class HashLM(nn.Module):
    """Logits from an integer hash of the whole window: at position t, h = (sum over s <= t of idx[s] * m[s] + t + 1)
    mod 13, with m[s] a multiplier for position s of the window, and the logits are row h of a (13, 13) table.
    Causal, and every position of the window, and where the window starts, changes the hash."""

    block_size: int = HASH_BLOCK

    @nn.compact
    def __call__(self, idx, deterministic=True):
        _check_deterministic(deterministic)
        _check_context(idx, self.block_size)
        table = self.param("table", nn.initializers.normal(1.0), (HASH_VOCAB, HASH_VOCAB))
        return _hash_logits(idx, table)


COUNT_UP = CountUp()
FIXED = FixedLogits()
HASH = HashLM()
NO_PARAMS = {}  # CountUp and FixedLogits have no parameters: an empty tree
# generate takes the parameter tree, model.init(...)['params'] (what state.params holds), not the variables dict.
# SHARP: row h is 0 at token h and -1e9 elsewhere, so the next token is the hash whatever the sampler, temperature
# or top-k. SOFT: random logits of spread about 1, so the tokens depend on the key, temperature and top-k.
SHARP_TABLE = np.where(np.eye(HASH_VOCAB, dtype=bool), 0.0, -1e9).astype(np.float32)
SOFT_TABLE = (1.0 * np.random.default_rng(8).standard_normal((HASH_VOCAB, HASH_VOCAB))).astype(np.float32)
SHARP = {"table": jnp.asarray(SHARP_TABLE)}
SOFT = {"table": jnp.asarray(SOFT_TABLE)}
_PROMPTS = np.random.default_rng(3)
# (prompt, max_new_tokens, temperature, top_k): a batch of 3 with a prompt longer than block_size, and a batch of
# one from a single token, crossing block_size on the way. The sharp and the soft run of a case share one compiled
# generate_jit (temperature is traced); few lengths keep an eager generate's compilations few.
CASES = (
    (_PROMPTS.integers(0, HASH_VOCAB, (3, 7)), 4, 0.8, None),
    (_PROMPTS.integers(0, HASH_VOCAB, (1, 1)), 7, 1.3, 4),
)


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
    if (type(err).__name__ == "ScopeCollectionNotFound" and 'collection "params"' in str(err)) or \
            type(err).__name__ == "ApplyScopeInvalidVariablesTypeError":
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


def _assert_counts_up(fn, name):
    prompt = jnp.array([[4]], jnp.int32)
    got = _call(fn, name, COUNT_UP, NO_PARAMS, prompt, jax.random.key(0), 4)
    expected = np.array([[4, 5, 6, 7, 8]])
    if not np.array_equal(got, expected):
        why = None
        if np.array_equal(got, _count_up([[4]], 4, COUNT_UP.block_size, padded=True)):
            # Reading the window's end and reading one slot past the last token both read padding here.
            why = ("the logits are read at a slot of the fixed-size window that still holds padding (its end, or "
                   "one past the last token written), not at the last token written: read them at "
                   "length - 1 - start.")
        elif np.array_equal(got, _count_up([[4]], 4, COUNT_UP.block_size, append=False)):
            why = ("the model sees the same context at every step: append each new token to idx before the "
                   "next step, and read the logits at the last position, logits[:, -1, :] (position 0 never "
                   "changes).")
        checks.fail(f"from the prompt [4], a model sure that the next token is the previous one + 1 should give "
                    f"{expected[0].tolist()}, but {name} gave {got[0].tolist()}."
                    + (f"\n  Likely cause: {why}" if why else
                       "" if got[0, 1] == 5 else "\n  The first new token is not the one the model gives all the "
                       "probability to: look at how the last position's logits, logits[:, -1, :], reach "
                       "jax.random.categorical."))


# ----------------------------------------------------------------------------------------------------
# Sampling frequencies


def _softmax(z):
    z = np.asarray(z, np.float64)
    z = z - z[np.isfinite(z)].max()
    e = np.exp(z)
    return e / e.sum()


def _top_k_filtered(logits, k, fill=-np.inf):
    kth = np.sort(logits)[-k]
    return np.where(logits >= kth, logits, fill)


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


def _frequency_variants(temperature, top_k):
    """(why, logits whose softmax the learner's frequencies would follow) for each known mistake."""
    scaled = FIXED_LOGITS / temperature
    keep = (lambda z: _top_k_filtered(z, top_k)) if top_k is not None else (lambda z: z)
    variants = [
        ("the logits are multiplied by the temperature; divide them by it.", keep(FIXED_LOGITS * temperature)),
        ("the temperature is not applied: divide the logits by it before sampling.", keep(FIXED_LOGITS)),
        ("jax.random.categorical was given probabilities; it takes logits (unnormalised log-probabilities).",
         _softmax(keep(scaled))),
    ]
    if top_k is not None:
        variants += [
            ("top_k is ignored: keep only the top_k largest logits.", scaled),
            ("neither the temperature nor top_k reaches the sampler: it samples softmax(logits) as they come.",
             FIXED_LOGITS),
            ("the tokens outside the top k must get probability 0: their logits are set to 0, and a logit of 0 "
             "still leaves them a chance. Set them to -inf.", _top_k_filtered(scaled, top_k, fill=0.0)),
        ]
        if top_k + 1 <= FIXED_LOGITS.size:
            variants.append(("k + 1 tokens are kept: the threshold is the (k+1)-th largest logit. It is the k-th, "
                             "jax.lax.top_k(logits, k)[0][:, -1:], and logits below it (strictly) are masked.",
                             _top_k_filtered(scaled, top_k + 1)))
    if top_k is not None and top_k > 1:
        variants.append(("only k - 1 tokens are kept: the k-th largest logit is masked too (logits <= kth); mask "
                         "only the logits strictly below it (logits < kth).", _top_k_filtered(scaled, top_k - 1)))
    return variants


def _assert_frequencies(fn, name, temperature, top_k):
    new = _new_tokens(fn, name, temperature, top_k)
    setting = f"temperature={temperature}" + (f", top_k={top_k}" if top_k is not None else "")
    got = _frequencies(new)
    best = int(np.argmax(FIXED_LOGITS))
    if (top_k is None or top_k > 1) and np.all(new == best):
        if top_k is None:
            why = "that is argmax (greedy decoding). Sample with jax.random.categorical(key, logits)."
        elif not np.all(_new_tokens(fn, name, temperature, None) == best):
            # Measured: without top_k the same sampler does sample, so the threshold is what keeps one token.
            why = ("without top_k the same sampler draws other tokens too, so the top-k step keeps only the largest "
                   "logit: the threshold is the largest value instead of the k-th largest "
                   "(jax.lax.top_k(logits, k)[0][:, -1:], the last of the k values).")
        else:
            why = "that is argmax (greedy decoding), with or without top_k. Sample with jax.random.categorical."
        checks.fail(f"with {setting}, every token {name} produced is the most likely one: {why}")
    scaled = FIXED_LOGITS / temperature
    if top_k is not None:
        scaled = _top_k_filtered(scaled, top_k)
    expected = _softmax(scaled)
    why = next((w for w, z in _frequency_variants(temperature, top_k)
                if np.abs(got - _softmax(z)).max() <= TOLERANCE), None)
    if top_k is not None:
        allowed = np.argsort(FIXED_LOGITS)[-top_k:]
        outside = sorted(set(np.unique(new).tolist()) - set(allowed.tolist()))
        if outside:
            sampled = sorted(np.unique(new).tolist())
            if why is None and set(sampled) <= set(np.argsort(FIXED_LOGITS)[:top_k].tolist()):
                why = "only tokens among the k smallest logits were sampled: keep the k largest (jax.lax.top_k)."
            elif why is None and set(sampled) <= set(range(top_k)):
                why = ("only tokens 0 .. k-1 were sampled: that is the position within jax.lax.top_k's k values, "
                       "not a token id. Map it back through the indices top_k returns (indices[row, choice]), or "
                       "keep the whole vocabulary and set the logits below the k-th largest to -inf.")
            checks.fail(f"with top_k={top_k} only tokens {sorted(allowed.tolist())} (the {top_k} largest logits) "
                        f"may be sampled, but {name} sampled {sampled}."
                        + (f"\n  Likely cause: {why}" if why else ""))
    if np.abs(got - expected).max() > TOLERANCE:
        checks.fail(f"with {setting}, {name}'s tokens should follow softmax(logits / temperature)"
                    + (" over the top k" if top_k else "") + f" within {TOLERANCE} per token, over "
                    f"{new.size} draws.\n  expected {np.round(expected, 3).tolist()}\n  got      "
                    f"{np.round(got, 3).tolist()}" + (f"\n  Likely cause: {why}" if why else ""))


# ----------------------------------------------------------------------------------------------------
# Exact oracles: the lesson's window (sharp table) and the reference's tokens (soft table)


def _hash(window) -> int:
    """HashLM's next token under the sharp table, for a window of token ids (its last position's hash)."""
    return (sum(int(v) * MULTIPLIERS[i] for i, v in enumerate(window)) + len(window)) % HASH_VOCAB


def _window(seq, prompt, total, variant, block=HASH_BLOCK):
    """The tokens the model sees up to the position whose logits are sampled, under the lesson's window or a
    known mistake's."""
    width = min(block, total)
    if variant == "lesson":
        return seq[-block:]
    if variant == "short":  # cropped to block_size - 1
        return seq[-(block - 1):]
    if variant == "start":  # cropped from the start
        return seq[:block]
    if variant == "prompt":  # never appended
        return prompt[-block:]
    if variant == "first":  # logits read at position 0
        return seq[-block:][:1]
    if variant == "padded":  # a fixed window read at its last slot, padding included
        start = max(0, len(seq) - width)
        return (seq + [0] * total)[start:start + width]
    if variant == "left_padded":  # the prompt padded on the left to block_size
        return ([0] * block + seq)[-block:]
    if variant == "one_past":  # a fixed window read one slot after the last token (clamped to the window's end)
        start = max(0, len(seq) - width)
        return (seq + [0] * total)[start:min(len(seq) + 1, start + width)]
    raise ValueError(variant)


def _hash_tokens(prompt, max_new_tokens, variant="lesson"):
    """HashLM's continuation of each prompt row with the sharp table, computed by hand."""
    rows = []
    for row in np.asarray(prompt).tolist():
        seq, total = list(row), len(row) + max_new_tokens
        for _ in range(max_new_tokens):
            seq.append(_hash(_window(seq, list(row), total, variant)))
        rows.append(seq)
    return np.array(rows)


WINDOW_MISTAKES = (
    ("short", "the model sees only the last block_size - 1 tokens, one short of block_size: generate keeps "
              "idx[:, -block_size:]; generate_jit reads W = min(block_size, T + max_new_tokens) tokens from "
              "start = max(0, length - W) (a window one token short, or a start one late, both lose a token)."),
    ("start", "the context is cropped from the start (idx[:, :block_size]); keep its last block_size tokens, "
              "idx[:, -block_size:]."),
    ("prompt", "each new token is not appended to the context before the next step, so the model always sees "
               "the prompt."),
    ("first", "the logits are read at position 0; the prediction for the next token is at the last position, "
              "logits[:, -1, :]."),
    ("padded", "the logits are read at the end of the fixed-size window even before it is full, where the buffer "
               "still holds padding: read them at the position of the last token written."),
    ("one_past", "the logits are read one slot after the last token written (index length - start, a padding slot "
                 "until the window fills): read them at length - 1 - start."),
    ("left_padded", "the prompt is padded on the left to block_size tokens, so every position shifts: show the model "
                    "the same window as generate, the last block_size tokens, starting at position 0 until there "
                    "are that many."),
)


def _first_difference(got, expected):
    rows = np.flatnonzero(np.any(got != expected, axis=1))
    row = int(rows[0])
    return len(rows), row, int(np.argmax(got[row] != expected[row]))


def _difference_text(name, got, expected, expected_name):
    n_rows, row, position = _first_difference(got, expected)
    width = max(len(name), len(expected_name))
    return (f"{n_rows} of {got.shape[0]} rows differ; row {row} first differs at position {position}:\n"
            f"  {expected_name.ljust(width)} {expected[row].tolist()}\n  {name.ljust(width)} {got[row].tolist()}")


def _case_text(prompt, max_new_tokens, options=None):
    B, T = np.shape(prompt)
    setting = ", ".join(f"{k}={v}" for k, v in (options or {}).items())
    return (f"a prompt of {T} token{'s' if T > 1 else ''} in a batch of {B}, {max_new_tokens} new tokens, "
            f"block_size {HASH_BLOCK}" + (f", {setting}" if setting else ""))


def _learner_generate_agrees(impl, got, prompt, key, max_new_tokens, params, options):
    """For generate_jit: whether the learner's own generate gives the same tokens (then generate is where to look)."""
    try:
        theirs = np.asarray(_function(impl, "generate")(HASH, params, jnp.asarray(prompt, jnp.int32), key,
                                                        max_new_tokens, **options))
    except Exception:
        return False
    return theirs.shape == got.shape and np.array_equal(theirs, got)


def _assert_window_exact(impl, name):
    fn = _function(impl, name)
    for prompt, max_new_tokens, _, top_k in CASES:
        options = {"top_k": top_k} if top_k is not None else {}
        key = jax.random.key(11)
        got = _call(fn, name, HASH, SHARP, jnp.asarray(prompt, jnp.int32), key, max_new_tokens, **options)
        expected = _hash_tokens(prompt, max_new_tokens)
        if np.array_equal(got, expected):
            continue
        why = next((w for variant, w in WINDOW_MISTAKES
                    if np.array_equal(got, _hash_tokens(prompt, max_new_tokens, variant))), None)
        if why is None and name == "generate_jit" and _learner_generate_agrees(
                impl, got, prompt, key, max_new_tokens, SHARP, options):
            why = ("generate_jit gives the tokens of your generate, which differ from the lesson's too: fix generate "
                   "first.")
        checks.fail(f"{name} should continue each prompt with the tokens the lesson's window gives, on a model whose "
                    f"next token is a hash of its whole context ({_case_text(prompt, max_new_tokens, options)}): "
                    + _difference_text(name, got, expected, "expected")
                    + (f"\n  Likely cause: {why}" if why else "\n  Each step shows the model the last block_size "
                       "tokens (all of them until there are that many) and samples from the last position's logits."))


def _soft_tokens(prompt, key, max_new_tokens, temperature=1.0, top_k=None, *, keys="lesson", threshold="kth",
                 temperature_op="divide", probabilities=False, sampler="categorical"):
    """The reference's sampling recipe on HashLM's soft table, written out step by step in JAX, with switches for
    the known mistakes (each switch changes one thing)."""
    seq = np.asarray(prompt)
    carried = key
    for step in range(max_new_tokens):
        h = np.array([_hash(row[-HASH_BLOCK:]) for row in seq.tolist()])
        logits = jnp.asarray(SOFT_TABLE[h])  # (B, V): exactly what the model returns at the last position
        if keys == "lesson":
            carried, sub = jax.random.split(carried)
        elif keys == "carried":  # samples with the key it carries on
            carried, sub = jax.random.split(carried)
            sub = carried
        elif keys == "swapped":
            sub, carried = jax.random.split(carried)
        elif keys == "after_use":  # samples with the key, then splits it
            sub, carried = carried, jax.random.split(carried)[0]
        elif keys == "same":
            sub = key
        elif keys == "up_front":
            sub = jax.random.split(key, max_new_tokens)[step]
        elif keys == "fold_in":
            sub = jax.random.fold_in(key, step)
        z = {"divide": lambda a: a / temperature, "multiply": lambda a: a * temperature,
             "none": lambda a: a}[temperature_op](logits)
        if top_k is not None and threshold != "ignored":
            count = top_k + 1 if threshold == "k_plus_one" else top_k
            values = jax.lax.top_k(z, count)[0]
            kth = values[:, :1] if threshold == "largest" else values[:, -1:]
            if threshold == "drop_kth":
                z = jnp.where(z <= kth, -jnp.inf, z)
            elif threshold == "zero":
                z = jnp.where(z < kth, 0.0, z)
            else:
                z = jnp.where(z < kth, -jnp.inf, z)
        if probabilities:
            z = jax.nn.softmax(z, axis=-1)
        if sampler == "categorical":
            new = jax.random.categorical(sub, z, axis=-1)
        elif sampler == "argmax":
            new = jnp.argmax(z, axis=-1)
        elif sampler == "choice_rows":
            row_keys = jax.random.split(sub, z.shape[0])
            new = jax.vmap(lambda k, p: jax.random.choice(k, p.shape[-1], p=p))(row_keys, jax.nn.softmax(z, axis=-1))
        seq = np.concatenate([seq, np.asarray(new)[:, None].astype(seq.dtype)], axis=1)
    return seq


LESSON_KEYS = ("key, subkey = jax.random.split(key) before each sample, and jax.random.categorical(subkey, logits)")
SOFT_MISTAKES = (
    (dict(keys="carried"), "each token is sampled with the key carried on to the next step (key, subkey = "
                           "jax.random.split(key), then sampling with key), so that key is used and split again: "
                           "sample with subkey."),
    (dict(keys="swapped"), "the halves of the split are swapped (subkey, key = jax.random.split(key)): split the key "
                           f"the same way as the lesson, {LESSON_KEYS}, so that a key gives the reference's tokens."),
    (dict(keys="after_use"), "each token is sampled with the key itself, which is then split for the next step: a "
                             f"key that has been used must not be split again. Split first: {LESSON_KEYS}."),
    (dict(keys="same"), "the same key is used at every step: split it each step, key, subkey = "
                        "jax.random.split(key), and sample with subkey."),
    (dict(keys="up_front"), "the keys are split up front (jax.random.split(key, max_new_tokens)[i], which is also "
                            "jax.random.fold_in(key, i)) rather than carried: split the key the "
                            f"same way as the lesson, {LESSON_KEYS}, so that a key gives the reference's tokens."),
    (dict(keys="fold_in"), "the keys come from jax.random.fold_in(key, step): split the key the same way as the "
                           f"lesson, {LESSON_KEYS}, so that a key gives the reference's tokens."),
    (dict(temperature_op="multiply"), "the logits are multiplied by the temperature; divide them by it."),
    (dict(temperature_op="none"), "the temperature is not applied: divide the logits by it before sampling."),
    (dict(probabilities=True), "jax.random.categorical was given probabilities; it takes logits (unnormalised "
                               "log-probabilities)."),
    (dict(threshold="drop_kth"), "only k - 1 tokens are kept: the k-th largest logit is masked too (logits <= kth); "
                                 "mask only the logits strictly below it (logits < kth)."),
    (dict(threshold="largest"), "the top-k step keeps only the largest logit: the threshold is the first of "
                                "jax.lax.top_k's values ([:, :1]) instead of the k-th ([:, -1:])."),
    (dict(threshold="k_plus_one"), "k + 1 tokens are kept: the threshold is the (k+1)-th largest logit. It is the "
                                   "k-th, jax.lax.top_k(logits, k)[0][:, -1:], and logits below it (strictly) are "
                                   "masked."),
    (dict(threshold="zero"), "the tokens outside the top k must get probability 0: their logits are set to 0, and a "
                             "logit of 0 still leaves them a chance. Set them to -inf."),
    (dict(threshold="ignored"), "top_k is ignored: keep only the top_k largest logits."),
    (dict(threshold="ignored", temperature_op="none"), "neither the temperature nor top_k reaches the sampler: it "
                                                       "samples softmax(logits) as they come."),
    (dict(sampler="argmax"), "the most likely token is taken (argmax, greedy decoding) instead of sampling with "
                             "jax.random.categorical(subkey, logits)."),
    (dict(sampler="choice_rows"), "the tokens are drawn with jax.random.choice, one key per row: the right "
                                  "distribution, but not the lesson's recipe, so a key does not give the reference's "
                                  "tokens. Sample with jax.random.categorical(subkey, logits)."),
)


def _assert_reference_tokens(impl, reference, name):
    fn = _function(impl, name)
    for prompt, max_new_tokens, temperature, top_k in CASES:
        options = {"temperature": temperature} | ({"top_k": top_k} if top_k is not None else {})
        key = jax.random.key(21)
        idx = jnp.asarray(prompt, jnp.int32)
        got = _call(fn, name, HASH, SOFT, idx, key, max_new_tokens, **options)
        expected = np.asarray(reference.generate(HASH, SOFT, idx, key, max_new_tokens, **options))
        if np.array_equal(got, expected):
            continue
        why = None
        try:
            _assert_window_exact(impl, name)
        except checks.CheckFailed:
            why = (f"{name} does not show the model the lesson's window (see the check with the model whose next "
                   "token is a hash of its context): fix that first.")
        if why is None:
            why = next((w for switches, w in SOFT_MISTAKES
                        if (top_k is not None or "threshold" not in switches) and np.array_equal(
                            got, _soft_tokens(prompt, key, max_new_tokens, temperature, top_k, **switches))), None)
        if why is None and name == "generate_jit" and _learner_generate_agrees(
                impl, got, prompt, key, max_new_tokens, SOFT, options):
            why = ("generate_jit gives the tokens of your generate, which differ from the reference's too: fix "
                   "generate first.")
        checks.fail(f"{name}'s tokens should be exactly the reference generate's for the same model, parameters, "
                    f"prompt, key, temperature and top-k ({_case_text(prompt, max_new_tokens, options)}): "
                    + _difference_text(name, got, expected, "reference")
                    + (f"\n  Likely cause: {why}" if why else "\n  The lesson fixes every step: the last block_size "
                       "tokens, the last position's logits divided by temperature, the top_k largest kept (the others "
                       f"-inf), then {LESSON_KEYS}."))


# ----------------------------------------------------------------------------------------------------
# generate


def test_generate_counts_up(impl):
    """From the prompt [4], a model sure that the next token is the previous + 1 continues 5, 6, 7, 8"""
    _assert_counts_up(_function(impl, "generate"), "generate")


def test_generate_window_exact(impl):
    """generate shows the model the last block_size tokens: exact tokens on a model that hashes its whole context"""
    _assert_window_exact(impl, "generate")


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


def test_generate_same_tokens_as_reference(impl, reference):
    """generate gives exactly the reference's tokens for the same model, parameters, prompt, key, temperature, top-k"""
    _assert_reference_tokens(impl, reference, "generate")


# ----------------------------------------------------------------------------------------------------
# generate_jit


def _loop_size(jaxpr):
    """(primitive names, number of equations) of a jaxpr and every jaxpr nested in it."""
    eqns = [eqn for eqn, _ in checks.program_equations(jaxpr.jaxpr)]
    return {eqn.primitive.name for eqn in eqns}, len(eqns)


def test_generate_jit_counts_up(impl):
    """generate_jit continues [4] with 5, 6, 7, 8 on the previous + 1 model"""
    _assert_counts_up(_function(impl, "generate_jit"), "generate_jit")


def test_generate_jit_window_exact(impl):
    """generate_jit shows the model the lesson's window: exact tokens on a model that hashes its whole context"""
    _assert_window_exact(impl, "generate_jit")


def test_generate_jit_same_tokens_as_reference(impl, reference):
    """generate_jit gives exactly the reference generate's tokens for the same arguments and key"""
    _assert_reference_tokens(impl, reference, "generate_jit")


def test_generate_jit_samples(impl):
    """generate_jit samples with temperature and top-k in the right proportions"""
    _assert_frequencies(_function(impl, "generate_jit"), "generate_jit", 2.0, 3)


def test_generate_jit_is_one_compiled_loop(impl):
    """generate_jit compiles to one lax loop whose program does not grow with max_new_tokens"""
    fn = _function(impl, "generate_jit")
    idx = jnp.array([[1, 2]], jnp.int32)

    def program(max_new_tokens):
        try:
            return _run("generate_jit", jax.make_jaxpr(
                lambda params, idx, key: fn(HASH, params, idx, key, max_new_tokens)), SOFT, idx, jax.random.key(0))
        except (NotImplementedError, checks.CheckFailed):
            raise
        except Exception as err:
            where = outcomes.learner_frame(err)
            first = str(err).strip().splitlines()[0][:300] if str(err).strip() else ""
            tracer = any(word in type(err).__name__ for word in ("Tracer", "Concretization"))
            checks.fail(f"generate_jit could not be traced by jax.make_jaxpr (as jax.jit traces it): "
                        f"{type(err).__name__}: {first}" + (f"\n    at {where}" if where else "")
                        + ("\n  Inside a compiled loop the tokens and the step counter are traced values: no int() "
                           "or numpy on them, and slices of a fixed size (jax.lax.dynamic_slice)." if tracer else ""))

    names, small = _loop_size(program(10))
    _, large = _loop_size(program(40))
    if large > small * 1.5 or not ({"while", "scan"} & names):
        checks.fail(f"generate_jit's program has {small} operations for 10 new tokens and {large} for 40"
                    + ("" if {"while", "scan"} & names else ", and no loop primitive")
                    + ": the Python loop is unrolled into the program, one copy of the model per token. Write "
                    "the loop with jax.lax.fori_loop over a fixed-size buffer, so that it compiles once "
                    "whatever max_new_tokens is.")
