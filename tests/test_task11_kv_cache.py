"""Task 11: `CachedMiniGPT`, MiniGPT with a cache of past keys and values, and `generate_cached`, task 8's
tokens from one compiled loop that feeds the model one new token per step.

The model is graded against the reference MiniGPT (task 1) on the same random parameters, one call at a time:
the logits of a call at `position` with the reference's keys and values of the earlier positions in the cache
must be MiniGPT's logits at those positions, and the cache it returns must hold, at every slot written so far,
the keys and values the reference MiniGPT computes (recorded from its attention layers' 'key' and 'value'
projections with nn.intercept_methods). The slots not yet written hold random numbers, not zeros, so a model
that reads them (a mask that lets a query see unwritten slots) shows. When the numbers differ, each known
mistake (a mask that ignores `position`, positions that do not advance, keys written one slot late, the values
cached as keys, ...) is recomputed from the same parameters by `_oracle_call` and named only if it gives the
learner's numbers; where the new keys went is found by searching the learner's cache for them.

The loop is graded in integers: `HashCacheLM` has the lesson's cache interface (`init_cache`, a call
`(idx, cache, position) -> (logits, cache)`, `block_size`) and its cache holds the tokens themselves, slot by
slot; the logits at a query slot are a table row picked by a hash of every slot up to it. With a sharp table its
next token is the hash whatever the sampler, so `generate_cached` must write exactly the tokens of task 8's
window, computed by hand; a call past its block_size slots (a cache never cropped) returns a sentinel token, 13,
that no correct run produces. With a soft table the tokens must be exactly task 8's for the same key,
temperature and top-k (`_task8_tokens` writes task 8's recipe out step by step; it gives the reference
`generate`'s tokens). Each known loop mistake (the newest token written one slot late,
positions that do not advance, a skipped prefill, the returned cache dropped, a recompute one token short, ...)
is replayed by `_hash_loop` and named only if it gives the learner's tokens exactly. Then, end to end, the
learner's `generate_cached` on the learner's `CachedMiniGPT` must give exactly task 8's tokens on the reference
`MiniGPT` with the same parameters, across block_size; when it does not,
the learner's loop with the reference model and the reference loop with the learner's model say which half is
wrong.

Tolerances: the cached model computes the same float32 operations as MiniGPT in another order (an attention
over block_size slots with the unwritten ones masked, one token's matmul instead of a block's), which moves
logits by about 1e-6 relative; the checks allow 1e-4 of the reference's magnitude (jaxgpt/grader/differential.py
derives this margin), and every named mistake moves them by 1e-2 or more. Sampled tokens are compared exactly:
`jax.random.categorical` takes the argmax of logits plus Gumbel noise fixed by the key, so a difference of 1e-6
in the logits can change a token only where two perturbed scores lie within 1e-6; in the end-to-end cases the
closest pair is 0.12 apart (measured with the reference: `_task8_tokens` returns it), five decades away, and a
failing check says so if a token ever differs at a near tie.

Shapes: vocab 19, block_size 7, n_embd 20, 4 heads of 5, 2 layers: every dimension differs. Prompts of 1
token in a batch of one and of block_size tokens in a batch of 3; the hash model adds a prompt longer than its
block_size (5); every generation crosses block_size.
"""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

import oracles_gpt as og
from jaxgpt import contract
from jaxgpt.grader import checks, outcomes

TASK = 11

FIELDS = dict(vocab_size=19, block_size=7, n_embd=20, n_head=4, n_layer=2)
S = FIELDS["block_size"]
H, D = FIELDS["n_head"], FIELDS["n_embd"] // FIELDS["n_head"]
RTOL = 1e-4
ATOL = 1e-4  # times max(1, the reference's largest magnitude)

# ----------------------------------------------------------------------------------------------------
# Helpers: building and calling the learner's model


@og.kept  # kept across checks (tests/oracles_gpt.py): nothing here depends on the code under test
@functools.lru_cache(maxsize=None)
def _params():
    """Random parameters in the lesson's tree (MiniGPT's), the same for the learner's model and the reference."""
    shapes = contract.model_shapes(**FIELDS)
    as_structs = jax.tree_util.tree_map(lambda s: jax.ShapeDtypeStruct(s, jnp.float32), shapes,
                                        is_leaf=lambda s: isinstance(s, tuple))
    return jax.tree_util.tree_map(jnp.asarray, og.random_fill(as_structs, seed=11))


def _model(impl):
    cls = impl.CachedMiniGPT
    try:
        return cls(**FIELDS)
    except TypeError as err:
        checks.fail(f"CachedMiniGPT({', '.join(f'{k}={v}' for k, v in FIELDS.items())}) could not be built ({err}): "
                    "keep MiniGPT's fields, so that a MiniGPT's configuration builds it.")


def _empty_cache(model, batch):
    if not callable(getattr(model, "init_cache", None)):
        checks.fail("CachedMiniGPT has no init_cache method: model.init_cache(batch_size) returns the empty cache, "
                    "{'blocks_0': {'key': zeros (B, block_size, H, D), 'value': ...}, ...} (decorate it with "
                    "@nn.nowrap, so that it can be called on the model outside apply).")
    try:
        cache = model.init_cache(batch)
    except Exception as err:
        if type(err).__name__ in ("CallCompactUnboundModuleError", "CallSetupUnboundModuleError") or \
                "unbound" in str(err).lower():
            checks.fail("model.init_cache(batch_size) could not be called outside apply: it needs no parameters, "
                        "so decorate it with @nn.nowrap and build the zeros from the fields.")
        raise
    return cache


def _expected_cache_layout(batch):
    return {f"blocks_{i}": {"key": (batch, S, H, D), "value": (batch, S, H, D)} for i in range(FIELDS["n_layer"])}


def _check_cache_layout(cache, batch, what):
    """The cache's structure and shapes, or a sentence."""
    expected = _expected_cache_layout(batch)
    if not isinstance(cache, dict) or set(cache) != set(expected):
        names = sorted(cache) if isinstance(cache, dict) else type(cache).__name__
        checks.fail(f"{what} should be a dict with one entry per block, {sorted(expected)}, each "
                    f"{{'key': (B, block_size, H, D), 'value': same}}, but it is {names}.")
    for layer, entry in cache.items():
        if not isinstance(entry, dict) or set(entry) != {"key", "value"}:
            checks.fail(f"{what}['{layer}'] should be {{'key': ..., 'value': ...}}, but it is "
                        f"{sorted(entry) if isinstance(entry, dict) else type(entry).__name__}.")
        for name in ("key", "value"):
            shape = tuple(np.shape(entry[name]))
            if shape != expected[layer][name]:
                hint = {(batch, H, S, D): " The heads come before the slots: the lesson's layout is (B, block_size, "
                                          "H, D), the layout of the 'key' and 'value' projections (B, T, H, D).",
                        (batch, S, H * D): " The heads are merged: keep them apart, (B, block_size, H, D), as the "
                                           "'key' and 'value' projections give them (B, T, H, D)."}.get(shape, "")
                checks.fail(f"{what}['{layer}']['{name}'] should have shape {expected[layer][name]} "
                            f"(batch, block_size slots, heads, head size), but it has shape {shape}.{hint}")


_JITTED_CALLS: dict = {}  # the learner's model -> its call, jitted once (position traced, as in the loop)


def _run_model(model, params, idx, cache, position, *, jit=True):
    """(logits, cache) from the learner's model, jitted with position traced, as the loop calls it."""
    if model not in _JITTED_CALLS:
        _JITTED_CALLS[model] = jax.jit(lambda params, idx, cache, position: model.apply({"params": params}, idx,
                                                                                          cache, position))
    call = _JITTED_CALLS[model] if jit else (lambda *args: model.apply({"params": args[0]}, *args[1:]))
    try:
        out = call(params, idx, cache, jnp.int32(position) if jit else position)
    except (NotImplementedError, checks.CheckFailed):
        raise
    except TypeError as err:
        if "positional argument" in str(err) or "unexpected keyword" in str(err):
            checks.fail(f"CachedMiniGPT could not be called as model.apply({{'params': params}}, idx, cache, "
                        f"position), the lesson's call ({err}).")
        raise
    except Exception as err:
        tracer = any(word in type(err).__name__ for word in ("Tracer", "Concretization"))
        if tracer:
            where = outcomes.learner_frame(err)
            checks.fail("CachedMiniGPT could not be called with a traced position (inside generate_cached's loop the "
                        f"position is a traced value): {type(err).__name__}" + (f" at {where}" if where else "")
                        + ". Use it in arithmetic (position + jnp.arange(T)) and in jax.lax.dynamic_update_slice, "
                        "never in int(), range() or a Python slice.")
        raise
    if not isinstance(out, (tuple, list)) or len(out) != 2:
        checks.fail(f"CachedMiniGPT should return (logits, cache), a pair, but it returned a "
                    f"{type(out).__name__}" + (f" of {len(out)} items" if isinstance(out, (tuple, list)) else "")
                    + ".")
    logits, new_cache = out
    B, T = idx.shape
    checks.assert_shape(logits, (B, T, FIELDS["vocab_size"]), "CachedMiniGPT's logits",
                        hint="One row of vocab_size scores per new token: (B, T, vocab_size).")
    _check_cache_layout(new_cache, B, "the cache CachedMiniGPT returns")
    return np.asarray(logits), jax.tree_util.tree_map(np.asarray, new_cache)


# ----------------------------------------------------------------------------------------------------
# The reference: MiniGPT's logits and its attention's keys and values


@og.kept
@functools.lru_cache(maxsize=None)
def _jitted_reference(reference_minigpt):
    """MiniGPT's logits and its attention's keys and values, recorded while tracing, in one compiled function."""
    model = reference_minigpt(**FIELDS)

    def run(params, idx):
        recorded = {}

        def intercept(next_fun, args, kwargs, context):
            out = next_fun(*args, **kwargs)
            path = context.module.scope.path if context.module.scope is not None else ()
            if context.method_name == "__call__" and len(path) == 3 and path[1] == "attn" and \
                    path[2] in ("key", "value"):
                recorded.setdefault(path[0], {})[path[2]] = out  # (B, T, H, D)
            return out

        with nn.intercept_methods(intercept):
            logits = model.apply({"params": params}, idx)
        return logits, recorded

    return jax.jit(run)


_REFERENCE_RUNS: dict = og.kept_value(__file__, "_REFERENCE_RUNS", dict)  # by the input's bytes, for the process


def _reference_run(reference, idx):
    """MiniGPT's logits (B, T, V) on idx, and every layer's keys and values {'blocks_i': {'key': (B, T, H, D)}}."""
    idx = np.asarray(idx, np.int32)
    minigpt = reference.other(1).MiniGPT
    memo = (minigpt, idx.tobytes(), idx.shape)
    if memo not in _REFERENCE_RUNS:
        logits, kv = _jitted_reference(minigpt)(_params(), jnp.asarray(idx))
        _REFERENCE_RUNS[memo] = (np.asarray(logits), jax.tree_util.tree_map(np.asarray, kv))
    return _REFERENCE_RUNS[memo]


def _tolerance(expected):
    return ATOL * max(1.0, float(np.abs(expected).max()))


def _close(got, expected):
    return got.shape == expected.shape and bool(np.all(np.abs(got - expected) <= _tolerance(expected)
                                                       + RTOL * np.abs(expected)))


def _garbage_cache(batch, seed):
    """A cache whose every slot holds random numbers: what an unwritten slot holds is never to be read."""
    rng = np.random.default_rng(seed)
    return {f"blocks_{i}": {name: rng.standard_normal((batch, S, H, D)).astype(np.float32) * 3.0
                            for name in ("key", "value")} for i in range(FIELDS["n_layer"])}


def _filled(cache, kv, upto):
    """`cache` with the reference's keys and values written into slots 0 .. upto - 1."""
    out = jax.tree_util.tree_map(np.array, cache)
    for layer, entry in kv.items():
        for name in ("key", "value"):
            out[layer][name][:, :upto] = entry[name][:, :upto]
    return out


# ----------------------------------------------------------------------------------------------------
# The mistakes a cached call makes, recomputed from the parameters


def _oracle_call(p, idx, cache, position, *, mask="lesson", write_at=0, positions="advanced", values="value",
                 scale="head", layer_cache="own"):
    """The lesson's cached call written out with Flax's own layers, with switches for the known mistakes:
    mask "lesson" (query t sees slots <= position + t), "all" (every slot, written or not), "square" (slots
    <= t, as if position were 0), "written" (every written slot, no causality among the new tokens); write_at
    moves the slots written by that many; positions "zero" (the new tokens' positions start at 0); values "key"
    (the keys cached as values too); layer_cache "first" (every block reads blocks_0's cache); mask "before" (slots
    strictly before the query's own)."""
    idx = jnp.asarray(idx)
    B, T = idx.shape
    start = 0 if positions == "zero" else position
    x = p["token_embedding"]["embedding"][idx] + p["position_embedding"]["embedding"][start + np.arange(T)]
    new_cache = {}
    slot = np.arange(S)[None, :]
    query = position + np.arange(T)[:, None]
    visible = {"lesson": slot <= query, "all": np.ones((T, S), bool), "square": slot <= np.arange(T)[:, None],
               "written": slot < position + T, "before": slot < query}[mask]
    for i in range(FIELDS["n_layer"]):
        b = p[f"blocks_{i}"]
        h = og.layer_norm(b["ln1"], x)

        def project(name):
            return jnp.einsum("btc,chd->bthd", h, b["attn"][name]["kernel"]) + b["attn"][name]["bias"]

        q, k, v = project("query"), project("key"), project("value")
        if values == "key":
            v = k
        at = int(np.clip(position + write_at, 0, S - T))
        read = cache["blocks_0" if layer_cache == "first" else f"blocks_{i}"]
        keys = jnp.asarray(read["key"]).at[:, at:at + T].set(k)
        vals = jnp.asarray(read["value"]).at[:, at:at + T].set(v)
        new_cache[f"blocks_{i}"] = {"key": np.asarray(keys), "value": np.asarray(vals)}
        wei = jnp.einsum("bthd,bshd->bhts", q, keys) * (D if scale == "head" else FIELDS["n_embd"]) ** -0.5
        wei = jax.nn.softmax(jnp.where(visible, wei, -jnp.inf), axis=-1)
        out = jnp.einsum("bhts,bshd->bthd", wei, vals)
        x = x + jnp.einsum("bthd,hdc->btc", out, b["attn"]["out"]["kernel"]) + b["attn"]["out"]["bias"]
        x = x + og.feed_forward(b["ffwd"], og.layer_norm(b["ln2"], x))
    x = og.layer_norm(p["ln_f"], x)
    return np.asarray(x @ p["lm_head"]["kernel"] + p["lm_head"]["bias"]), new_cache


CALL_MISTAKES = (
    (dict(mask="all"), "the attention lets a query see every slot of the cache, including slots not written yet (which "
                       "hold whatever the cache held): mask the scores so that query t sees only slots 0 .. position + "
                       "t, jnp.arange(block_size)[None, :] <= position + jnp.arange(T)[:, None]."),
    (dict(mask="square"), "the mask is the (T, T) causal triangle of the new tokens, as if they started at slot 0: "
                          "with a cache, query t is at slot position + t and sees slots 0 .. position + t."),
    (dict(mask="written"), "the mask lets every new token see every slot written by this call, later new tokens "
                           "included: query t sees slots 0 .. position + t only (causal among the new tokens too)."),
    (dict(positions="zero"), "the position embedding of the new tokens starts at 0 whatever `position` is: the "
                             "positions are not advanced. Embed position + jnp.arange(T)."),
    (dict(write_at=1), "the cache is written at the wrong position: the new keys and values go one slot late (at "
                       "position + 1); write them at slots position .. position + T - 1."),
    (dict(write_at=-1), "the cache is written at the wrong position: the new keys and values go one slot early (at "
                        "position - 1); write them at slots position .. position + T - 1."),
    (dict(values="key"), "the cache's values hold the keys (one projection reused for both): cache the 'value' "
                         "projection as the values."),
    (dict(scale="embd"), "the scores are scaled by n_embd ** -0.5; scale by head_size ** -0.5."),
    (dict(layer_cache="first"), "every block reads one layer's cache, blocks_0's: the keys and values of each layer "
                                "are its own, so give block i cache['blocks_i'] and return its new cache under that "
                                "name."),
)


def _call_cause(logits, cache, idx, start_cache, position, upto=None):
    """The CALL_MISTAKES entry whose recomputation gives the learner's logits (and cache), else None."""
    for switches, why in CALL_MISTAKES:
        try:
            want_logits, want_cache = _oracle_call(_params(), idx, start_cache, position, **switches)
        except Exception:
            continue
        if _close(logits, want_logits):
            return why
    return None


def _where_written(got_cache, kv, position, T):
    """A sentence saying where the learner's cache holds the new keys, when not at position .. position + T - 1."""
    got = got_cache["blocks_0"]["key"]
    new = kv["blocks_0"]["key"][:, position:position + T]  # (B, T, H, D)
    found = [s for s in range(S - T + 1) if _close(got[:, s:s + T], new)]
    if not found or position in found:
        return None
    return (f"the new keys were written at slot {found[0]} instead of slot {position}: the cache is written at the "
            f"wrong position. Write the keys and values of the tokens at positions position .. position + T - 1 "
            f"into those slots (jax.lax.dynamic_update_slice(cache, k, (0, position, 0, 0))).")


def _assert_call(impl, reference, full_idx, position, T, start_cache, what):
    """One call of the learner's model on full_idx[:, position:position + T], the cache filled by the reference up
    to `position` (start_cache beyond): its logits are MiniGPT's at those positions, its cache the reference's
    keys and values at slots 0 .. position + T - 1."""
    model = _model(impl)
    full_idx = np.asarray(full_idx, np.int32)
    expected_logits, kv = _reference_run(reference, full_idx)
    start = _filled(start_cache, kv, position)
    idx = full_idx[:, position:position + T]
    logits, cache = _run_model(model, _params(), jnp.asarray(idx), start, position)
    if not np.all(np.isfinite(logits)):
        hidden, _ = _oracle_call(_params(), idx, start, position, mask="before")
        if np.array_equal(np.isfinite(hidden), np.isfinite(logits)):
            checks.fail(f"CachedMiniGPT's logits ({what}) hold NaN where a query's row of scores is masked everywhere. "
                        "Likely cause: the mask keeps only the slots before each query's own slot (s < position + t), so "
                        "the first token sees nothing: query t sees slots 0 .. position + t, its own slot included "
                        "(<=).")
    checks.assert_finite(logits, f"CachedMiniGPT's logits ({what})")
    want = expected_logits[:, position:position + T]
    if not _close(logits, want):
        why = _call_cause(logits, cache, idx, start, position) or _where_written(cache, kv, position, T)
        checks.assert_close(logits, want, f"CachedMiniGPT's logits ({what}), against MiniGPT's at positions "
                            f"{position} .. {position + T - 1}", rtol=RTOL, atol=_tolerance(want),
                            diagnose=lambda _: why)
    for layer in sorted(kv):
        for name in ("key", "value"):
            got = cache[layer][name][:, :position + T]
            expected = kv[layer][name][:, :position + T]
            if _close(got, expected):
                continue
            why = _where_written(cache, kv, position, T)
            if why is None and name == "value" and _close(got[:, position:], kv[layer]["key"][:, position:position + T]):
                why = "the cache's values hold the keys (one projection reused for both): cache the 'value' projection."
            if why is None and _close(cache[layer][name], np.asarray(start[layer][name])):
                why = ("the cache comes back as it went in: return the cache with the new keys and values written into "
                       "it (the call returns (logits, new_cache)).")
            checks.assert_close(got, expected, f"the cache's {name}s in {layer} after {what}, at slots 0 .. "
                                f"{position + T - 1} (the reference MiniGPT's {name} projections)", rtol=RTOL,
                                atol=_tolerance(expected), diagnose=lambda _: why)


# ----------------------------------------------------------------------------------------------------
# The model


def test_parameter_tree_is_minigpts(impl):
    """CachedMiniGPT's parameter tree is MiniGPT's (jaxgpt/contract.py), so trained task-1 and task-6 weights load"""
    model = _model(impl)
    cache = _empty_cache(model, 1)
    try:
        tree = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 3), jnp.int32), cache, 0))
    except (NotImplementedError, checks.CheckFailed):
        raise
    except TypeError as err:
        checks.fail(f"CachedMiniGPT could not be initialised as model.init(key, idx, model.init_cache(B), 0) ({err}): "
                    "its call is (idx, cache, position).")
    if "params" not in tree:
        checks.fail(f"CachedMiniGPT's variables have no 'params' collection (they have {sorted(tree)}).")
    expected = jax.tree_util.tree_map(lambda s: jax.ShapeDtypeStruct(s, jnp.float32),
                                      contract.model_shapes(**FIELDS), is_leaf=lambda s: isinstance(s, tuple))
    checks.assert_tree(tree["params"], expected, "CachedMiniGPT's parameter tree")
    extra = sorted(set(tree) - {"params"})
    if extra:
        checks.fail(f"CachedMiniGPT keeps variables other than its parameters ({extra}): the cache is an argument and "
                    "a result of the call, not a Flax collection, so apply needs nothing but {'params': params}.")


def test_init_cache_is_empty_slots(impl):
    """model.init_cache(B) gives each block's keys and values as zeros (B, block_size, H, D)"""
    model = _model(impl)
    for batch in (1, 3):
        cache = _empty_cache(model, batch)
        _check_cache_layout(cache, batch, f"model.init_cache({batch})")
        for layer, entry in cache.items():
            for name, value in entry.items():
                array = np.asarray(value)
                if array.dtype != np.float32:
                    checks.fail(f"model.init_cache({batch})['{layer}']['{name}'] should hold float32 numbers, the dtype "
                                f"of the keys and values it stores, but its dtype is {array.dtype} (a cache of lower "
                                "precision rounds every key, and the tokens part from task 8's).")
                if np.any(array != 0):
                    checks.fail(f"model.init_cache({batch})['{layer}']['{name}'] should be zeros (no slot written yet).")


SEQUENCE = np.random.default_rng(7).integers(0, FIELDS["vocab_size"], (3, S)).astype(np.int32)  # batch 3, block_size
ONE_TOKEN = np.array([[4]], np.int32)  # batch 1, one token


def test_prefill_gives_minigpts_logits_and_cache(impl, reference):
    """A call at position 0 on an empty cache gives MiniGPT's logits and caches the reference's keys and values
    (a prompt of 1 token in a batch of one, of block_size tokens in a batch of 3)"""
    model = _model(impl)
    _assert_call(impl, reference, ONE_TOKEN, 0, 1, _empty_cache(model, 1), "a prefill of 1 token, batch 1")
    _assert_call(impl, reference, SEQUENCE, 0, S, _empty_cache(model, 3), f"a prefill of {S} tokens, batch 3")


def test_prefill_reads_no_unwritten_slot(impl, reference):
    """A prefill of 3 tokens in a batch of 3 on a cache whose slots hold random numbers: the same logits, and the
    reference's keys and values in slots 0 .. 2"""
    _assert_call(impl, reference, SEQUENCE, 0, 3, _garbage_cache(3, 6), "a prefill of 3 tokens on a cache of random "
                 "slots")


def test_one_token_steps_give_minigpts_logits(impl, reference):
    """One token at a time at positions 3 .. block_size - 1, each on the reference's cache of the earlier positions
    (unwritten slots random): MiniGPT's logits at that position, the new key and value at that slot"""
    for position in range(3, S):
        _assert_call(impl, reference, SEQUENCE, position, 1, _garbage_cache(3, position),
                     f"one token at position {position}")


def test_several_tokens_on_a_filled_cache(impl, reference):
    """3 new tokens at positions 2 .. 4 on the reference's cache of positions 0 .. 1: each new token sees the cache
    and the new tokens before it, no later one"""
    _assert_call(impl, reference, SEQUENCE, 2, 3, _garbage_cache(3, 9), "3 tokens at position 2")


def test_own_cache_step_by_step(impl, reference):
    """The learner's own cache, carried: a prefill of 3 tokens, then one token at a time up to block_size, gives
    MiniGPT's logits at every position"""
    model = _model(impl)
    expected, _ = _reference_run(reference, SEQUENCE)
    logits, cache = _run_model(model, _params(), jnp.asarray(SEQUENCE[:, :3]), _empty_cache(model, 3), 0)
    got = [logits]
    for position in range(3, S):
        logits, cache = _run_model(model, _params(), jnp.asarray(SEQUENCE[:, position:position + 1]), cache, position)
        got.append(logits)
    checks.assert_close(np.concatenate(got, axis=1), expected, "CachedMiniGPT's logits, fed its own cache one token "
                        "at a time after a prefill of 3", rtol=RTOL, atol=_tolerance(expected))


# ----------------------------------------------------------------------------------------------------
# The loop, graded in integers on a model whose cache holds the tokens


HASH_VOCAB = 13
SENTINEL = 13  # the token HashCacheLM gives when called past its block_size slots
HASH_BLOCK = 5
MULTIPLIERS = np.array((3, 5, 7, 2, 11), np.int32)  # one per slot, none 0 mod 13


@og.kept
@jax.jit
def _hash_cache_logits(idx, slots, position, table):
    B, T = idx.shape
    outside = (position < 0) | (position + T > HASH_BLOCK)
    slots = jax.lax.dynamic_update_slice(slots, idx.astype(jnp.int32), (0, position))  # (B, S)
    running = jnp.cumsum(slots * jnp.asarray(MULTIPLIERS), axis=1)  # (B, S)
    query = jnp.clip(position + jnp.arange(T), 0, HASH_BLOCK - 1)  # (T,)
    h = (running[:, query] + query + 1) % HASH_VOCAB  # (B, T)
    h = jnp.where(outside, SENTINEL, h)
    return table[h], slots  # (B, T, V + 1)


class HashCacheLM(nn.Module):
    """The lesson's cache interface on integers: the cache holds the tokens, slot by slot, and the logits at query
    slot q are row h of a table, h = (sum over slots s <= q of token[s] * m[s] + q + 1) mod 13: task 8's hash of the
    window when slot s holds the window's token s. Called past its block_size slots it answers SENTINEL."""

    block_size: int = HASH_BLOCK

    @nn.nowrap
    def init_cache(self, batch_size):
        return {"tokens": jnp.zeros((batch_size, self.block_size), jnp.int32)}

    @nn.compact
    def __call__(self, idx, cache, position):
        _TRACES[0] += 1  # how often the call runs in Python: once per trace in a compiled loop
        table = self.param("table", nn.initializers.normal(1.0), (HASH_VOCAB + 1, HASH_VOCAB + 1))
        logits, slots = _hash_cache_logits(idx, cache["tokens"], position, table)
        return logits, {"tokens": slots}


_TRACES = [0]
HASH_CACHE = HashCacheLM()


def _table(sharp):
    if sharp:  # row h puts everything on token h: the next token is the hash whatever the sampler
        table = np.where(np.eye(HASH_VOCAB + 1, dtype=bool), 0.0, -1e9)
    else:  # random logits of spread 1 over the 13 real tokens; the sentinel only from its own row
        table = np.full((HASH_VOCAB + 1, HASH_VOCAB + 1), -1e9)
        table[:HASH_VOCAB, :HASH_VOCAB] = np.random.default_rng(11).standard_normal((HASH_VOCAB, HASH_VOCAB))
        table[SENTINEL, SENTINEL] = 0.0
    return {"table": jnp.asarray(table, jnp.float32)}


SHARP, SOFT = _table(True), _table(False)
_PROMPTS = np.random.default_rng(13)
# (prompt, max_new_tokens, temperature, top_k): one token in a batch of one; block_size tokens in a batch of 3; a
# prompt longer than block_size in a batch of 3. Every case crosses block_size.
HASH_CASES = (
    (_PROMPTS.integers(0, HASH_VOCAB, (1, 1)), 9, 0.8, 4),
    (_PROMPTS.integers(0, HASH_VOCAB, (3, HASH_BLOCK)), 4, 1.3, None),
    (_PROMPTS.integers(0, HASH_VOCAB, (3, 7)), 3, 1.0, 3),
    # a high temperature over many draws, so that a temperature left out of any step changes tokens
    (_PROMPTS.integers(0, HASH_VOCAB, (2, 3)), 12, 2.5, None),
)


def _hash(slots, q):
    return (sum(int(v) * int(MULTIPLIERS[s]) for s, v in enumerate(slots[:q + 1])) + q + 1) % HASH_VOCAB


def _hash_loop(prompt, max_new_tokens, variant="lesson"):
    """HashCacheLM's sharp tokens under the lesson's loop, or under a known mistake's, replayed in Python."""
    rows = []
    for row in np.asarray(prompt).tolist():
        seq, T = list(row), len(row)
        slots = [0] * HASH_BLOCK

        def call(tokens, position, cache):
            if position < 0 or position + len(tokens) > HASH_BLOCK:
                return SENTINEL, cache
            cache = cache[:position] + list(tokens) + cache[position + len(tokens):]
            return _hash(cache, position + len(tokens) - 1), cache

        if variant == "prefill_skipped":  # only the prompt's last token, at its position, on an empty cache
            last = min(T, HASH_BLOCK)
            token, slots = call(seq[T - 1:T], last - 1, slots)
        else:
            token, slots = call(seq[-HASH_BLOCK:], 0, slots)
        prefill_slots = slots
        seq.append(token)
        for i in range(1, max_new_tokens):
            length = T + i
            crop = length > HASH_BLOCK
            if variant == "never_cropped":
                crop = False
            elif variant == "crop_late":
                crop = length > HASH_BLOCK + 1
            elif variant == "position_clamped":
                crop = False
            if crop:
                width = HASH_BLOCK - 1 if variant == "window_one_short" else HASH_BLOCK
                token, slots = call(seq[length - width:length], 0, [0] * HASH_BLOCK)
            elif variant == "written_one_late":
                token, slots = call(seq[length - 1:length], length, slots)
            elif variant == "position_clamped":  # past block_size, the newest token overwrites the last slot
                token, slots = call(seq[length - 1:length], min(length - 1, HASH_BLOCK - 1), slots)
            elif variant == "position_fixed":
                token, slots = call(seq[length - 1:length], min(T, HASH_BLOCK), slots)
            elif variant == "cache_dropped":
                token, _ = call(seq[length - 1:length], length - 1, prefill_slots)
            elif variant == "fed_unwritten":  # feeds the slot after the newest token, still padding
                token, slots = call([0], length - 1, slots)
            else:
                token, slots = call(seq[length - 1:length], length - 1, slots)
            seq.append(token)
        rows.append(seq)
    return np.array(rows)


LOOP_MISTAKES = (
    ("written_one_late", "the cache is written at the wrong position: the newest token is fed at position length "
                         "(one slot late); the token at column length - 1 goes to slot length - 1, so feed it with "
                         "position = length - 1."),
    ("position_fixed", "the positions are not advanced: every step feeds its token at the same position; the token "
                       "at column length - 1 goes to position length - 1."),
    ("prefill_skipped", "the prefill is skipped: only the prompt's last token reaches the model, so the cache never "
                        "holds the others. Run the whole prompt (its last block_size tokens) through the model at "
                        "position 0 first."),
    ("cache_dropped", "the cache the model returns is dropped: every step starts again from the prefill's cache, so "
                      "the tokens sampled since are never in it. Carry the returned cache into the next step."),
    ("fed_unwritten", "each step feeds the buffer's column `length`, which still holds padding: the newest token is "
                      "at column length - 1."),
    ("never_cropped", "the cache is never cropped: past block_size the model is asked for slots it does not have. "
                      "When length > block_size, recompute the cache from the last block_size tokens at position 0."),
    ("crop_late", "off by one at the boundary: the cache is recomputed only from length > block_size + 1, so the "
                  "step at length = block_size + 1 writes past the last slot. Recompute as soon as length > "
                  "block_size."),
    ("position_clamped", "past block_size the position is clamped to the last slot, block_size - 1, and the newest "
                         "token overwrites it, so the older tokens keep the keys of their old positions: past "
                         "block_size every position shifts; recompute the cache from the last block_size tokens at "
                         "position 0."),
    ("window_one_short", "the recompute past block_size takes the last block_size - 1 tokens, one short: take the "
                         "last block_size, starting at length - block_size."),
)

CALLS = {"generate_cached": (("model", "params", "idx", "key", "max_new_tokens"), ("temperature", "top_k"))}


def _generate(impl):
    positional, keywords = CALLS["generate_cached"]
    return checks.learner_function(impl.generate_cached, "generate_cached", positional, keywords)


def _call_generate(fn, model, params, idx, key, max_new_tokens, **options):
    out = fn(model, params, idx, key, max_new_tokens, **options)
    B, T = idx.shape
    array = checks.as_array(out, "generate_cached's output")
    hint = {(B, T): "It has the prompt's shape: return the whole buffer, the prompt then the new tokens.",
            (B, max_new_tokens): "It holds only the new tokens: return the whole sequence, the prompt first."
            }.get(tuple(array.shape), "")
    checks.assert_shape(array, (B, T + max_new_tokens), "generate_cached's output", hint=hint)
    if not np.issubdtype(array.dtype, np.integer):
        checks.fail(f"generate_cached's output should hold integer token ids, but its dtype is {array.dtype}.")
    if not np.array_equal(array[:, :T], np.asarray(idx)):
        checks.fail(f"generate_cached's output should start with the prompt unchanged, but its first {T} columns are "
                    f"{array[:2, :T].tolist()}... instead of {np.asarray(idx)[:2].tolist()}....")
    return array


def _difference_text(got, expected, expected_name):
    rows = np.flatnonzero(np.any(got != expected, axis=1))
    row = int(rows[0])
    column = int(np.argmax(got[row] != expected[row]))
    return (f"{len(rows)} of {got.shape[0]} rows differ; row {row} first differs at column {column}:\n"
            f"  {expected_name.ljust(15)} {expected[row].tolist()}\n  {'generate_cached'.ljust(15)} "
            f"{got[row].tolist()}"), column


def _case_text(prompt, max_new_tokens, block_size, options=None):
    B, T = np.shape(prompt)
    setting = ", ".join(f"{k}={v}" for k, v in (options or {}).items())
    return (f"a prompt of {T} token{'s' if T > 1 else ''} in a batch of {B}, {max_new_tokens} new tokens, "
            f"block_size {block_size}" + (f", {setting}" if setting else ""))


def _sentinel_text(got, T):
    rows, columns = np.nonzero(got[:, T:] == SENTINEL)
    if not len(rows):
        return None
    column = int(columns[0]) + T
    return (f"the token at column {column} is {SENTINEL}, which this model gives only when it is called past its "
            f"{HASH_BLOCK} slots (position + number of tokens > block_size): the cache was not cropped in time. When "
            "the sequence outgrows block_size, recompute the cache from the last block_size tokens at position 0.")


def _task8_tokens(logits_of, prompt, key, max_new_tokens, block_size, temperature=1.0, top_k=None, keys="lesson",
                 later_temperature=None):
    """Task 8's tokens, written out step by step: each step's window is the last block_size tokens, logits_of(window)
    gives its last position's logits (B, V), and the lesson's recipe samples (key, subkey = jax.random.split(key);
    logits / temperature; the top_k largest kept; jax.random.categorical(subkey, logits)). Also returns the
    smallest gap between the best and the second-best Gumbel-perturbed score over all steps (categorical is the
    argmax of logits plus Gumbel noise drawn from subkey): how far the case is from a tie that rounding could flip.
    `keys` replays the known key mistakes: "same", "carried", "after_use"; `later_temperature` the temperature
    used after the first token (a loop that forgets the one the prefill was given)."""
    seq = np.asarray(prompt)
    closest = np.inf
    first = key
    for step in range(max_new_tokens):
        if step == 1 and later_temperature is not None:
            temperature = later_temperature
        if keys == "lesson":
            key, subkey = jax.random.split(key)
        elif keys == "same":  # the key it was given, at every step
            subkey = first
        elif keys == "carried":  # split, then sample with the half it carries on
            key, _ = jax.random.split(key)
            subkey = key
        elif keys == "after_use":  # sample with the key, then split it for the next step
            subkey, key = key, jax.random.split(key)[0]
        new, scores = _lesson_sample(jnp.asarray(logits_of(seq[:, -block_size:]), jnp.float32), subkey, temperature,
                                     top_k)
        scores = np.sort(np.asarray(scores), axis=-1)
        closest = min(closest, float(np.min(scores[:, -1] - scores[:, -2])))
        seq = np.concatenate([seq, np.asarray(new)[:, None].astype(seq.dtype)], axis=1)
    return seq, closest


@og.kept
@functools.partial(jax.jit, static_argnames="top_k")
def _lesson_sample(logits, subkey, temperature, top_k):
    """Task 8's step on (B, V) logits: the token, and the Gumbel-perturbed scores categorical takes the argmax of."""
    logits = logits / temperature
    if top_k is not None:
        kth = jax.lax.top_k(logits, top_k)[0][:, -1:]  # (B, 1)
        logits = jnp.where(logits < kth, -jnp.inf, logits)
    return jax.random.categorical(subkey, logits, axis=-1), jax.random.gumbel(subkey, logits.shape) + logits


def _soft_hash_logits(window):
    """HashLM's logits at the window's last position with the soft table: a table row, exactly."""
    table = np.asarray(SOFT["table"])
    return table[[_hash(list(row), len(row) - 1) for row in np.asarray(window).tolist()]]


SAMPLING_MISTAKES = (
    (dict(keys="same"), "the same key is used at every step: split it each step, key, subkey = jax.random.split(key), "
                        "and sample with subkey."),
    (dict(keys="carried"), "each token is sampled with the key carried on to the next step (key, subkey = "
                           "jax.random.split(key), then sampling with key): sample with subkey."),
    (dict(keys="after_use"), "each token is sampled with the key itself, which is then split for the next step: split "
                             "first, key, subkey = jax.random.split(key), and sample with subkey."),
    (dict(temperature=1.0), "the temperature is not applied: divide the logits by it before sampling, as in task 8."),
    (dict(later_temperature=1.0), "the temperature is applied to the prefill's token only: the loop samples every "
                                  "later token at temperature 1. Pass temperature to every step's sampling."),
    (dict(top_k=None), "top_k is ignored: keep only the top_k largest logits, as in task 8."),
)


def test_generate_cached_writes_the_lessons_window(impl):
    """generate_cached's tokens on a model whose cache holds the tokens: exactly task 8's window at every step,
    across block_size (prompts of 1, block_size and more tokens; batches of 1 and 3)"""
    fn = _generate(impl)
    for prompt, max_new_tokens, _, top_k in HASH_CASES:
        options = {"top_k": top_k} if top_k is not None else {}
        idx = jnp.asarray(prompt, jnp.int32)
        got = _call_generate(fn, HASH_CACHE, SHARP, idx, jax.random.key(11), max_new_tokens, **options)
        expected = _hash_loop(prompt, max_new_tokens)
        if np.array_equal(got, expected):
            continue
        why = next((w for variant, w in LOOP_MISTAKES if np.array_equal(got, _hash_loop(prompt, max_new_tokens,
                                                                                        variant))), None)
        why = why or _sentinel_text(got, idx.shape[1])
        text, _ = _difference_text(got, expected, "expected")
        checks.fail("generate_cached should continue each prompt with the tokens of task 8's window, on a model whose "
                    f"next token is a hash of its cached tokens ({_case_text(prompt, max_new_tokens, HASH_BLOCK)}): "
                    + text + (f"\n  Likely cause: {why}" if why else "\n  The prefill puts the last block_size prompt "
                              "tokens in slots 0 ..; each step then feeds the newest token at position length - 1 "
                              "while length <= block_size, and past it recomputes the cache from the last block_size "
                              "tokens at position 0."))


def test_generate_cached_same_tokens_as_task8(impl, reference):
    """generate_cached gives exactly task 8's reference tokens for the same key, temperature and top-k (the hash
    model, a soft table)"""
    fn = _generate(impl)
    for prompt, max_new_tokens, temperature, top_k in HASH_CASES:
        options = {"temperature": temperature} | ({"top_k": top_k} if top_k is not None else {})
        idx = jnp.asarray(prompt, jnp.int32)
        key = jax.random.key(21)
        got = _call_generate(fn, HASH_CACHE, SOFT, idx, key, max_new_tokens, **options)
        expected, _ = _task8_tokens(_soft_hash_logits, prompt, key, max_new_tokens, HASH_BLOCK, **options)
        if np.array_equal(got, expected):
            continue
        why = _sentinel_text(got, idx.shape[1])
        if why is None:
            sharp = _call_generate(fn, HASH_CACHE, SHARP, idx, key, max_new_tokens, **options)
            if not np.array_equal(sharp, _hash_loop(prompt, max_new_tokens)):
                why = ("generate_cached does not show the model task 8's window (see the check with the sharp hash "
                       "model): fix that first.")
        if why is None:
            why = next((w for switches, w in SAMPLING_MISTAKES if np.array_equal(got, _task8_tokens(
                _soft_hash_logits, prompt, key, max_new_tokens, HASH_BLOCK, **(options | switches))[0])), None)
        text, _ = _difference_text(got, expected, "reference")
        checks.fail("generate_cached's tokens should be exactly task 8's for the same model, "
                    f"parameters, prompt, key, temperature and top-k ({_case_text(prompt, max_new_tokens, HASH_BLOCK, options)}): "
                    + text + (f"\n  Likely cause: {why}" if why else "\n  Sample as in task 8: key, subkey = "
                              "jax.random.split(key) before each token (the prefill's token first), the last "
                              "position's logits divided by temperature, the top_k largest kept, "
                              "jax.random.categorical(subkey, logits)."))


# ----------------------------------------------------------------------------------------------------
# End to end: the learner's loop on the learner's model against task 8 on MiniGPT


MODEL_CASES = (  # (batch, prompt length, max_new_tokens, temperature, top_k): both cross block_size (7)
    (1, 1, 10, 0.8, 5),
    (3, S, 3, 1.3, None),
)


def _minigpt_last_logits(reference):
    """The reference MiniGPT's logits at a window's last position, run on the window padded to block_size (a causal
    model's logits at a position do not depend on later slots): one compiled program per batch size."""
    def logits_of(window):
        B, W = window.shape
        padded = np.zeros((B, S), np.int32)
        padded[:, :W] = window
        logits, _ = _reference_run(reference, padded)
        return logits[:, W - 1]

    return logits_of


def _sliding_cache_tokens(cached_model, idx, key, max_new_tokens, temperature=1.0, top_k=None):
    """The tokens of a loop that, past block_size, rolls the cache left by one slot and feeds the newest token at
    slot block_size - 1 (keys keep the positions they were computed at), on `cached_model` with _params(), with the
    lesson's keys and sampling: the known way to slide a cache that task 8's tokens rule out."""
    params = {"params": _params()}
    seq = np.asarray(idx)
    logits, cache = cached_model.apply(params, jnp.asarray(seq[:, -S:]), cached_model.init_cache(seq.shape[0]), 0)
    for step in range(max_new_tokens):
        if step:
            length = seq.shape[1]
            newest = jnp.asarray(seq[:, -1:])
            if length <= S:
                logits, cache = cached_model.apply(params, newest, cache, length - 1)
            else:
                cache = jax.tree_util.tree_map(lambda c: jnp.roll(c, -1, axis=1), cache)
                logits, cache = cached_model.apply(params, newest, cache, S - 1)
        key, subkey = jax.random.split(key)
        new, _ = _lesson_sample(jnp.asarray(logits[:, -1, :], jnp.float32), subkey, temperature, top_k)
        seq = np.concatenate([seq, np.asarray(new)[:, None].astype(seq.dtype)], axis=1)
    return seq


def test_generate_cached_on_cached_minigpt_equals_task8(impl, reference):
    """generate_cached on CachedMiniGPT gives exactly task 8's reference tokens on MiniGPT with the same parameters,
    key, temperature and top-k, across block_size (a prompt of 1 token in a batch of one, of block_size in 3)"""
    fn, model = _generate(impl), _model(impl)
    for batch, T, max_new_tokens, temperature, top_k in MODEL_CASES:
        prompt = SEQUENCE[:batch, :T]
        idx = jnp.asarray(prompt)
        key = jax.random.key(0)
        options = {"temperature": temperature} | ({"top_k": top_k} if top_k is not None else {})
        got = _call_generate(fn, model, _params(), idx, key, max_new_tokens, **options)
        expected, gap = _task8_tokens(_minigpt_last_logits(reference), prompt, key, max_new_tokens, S, **options)
        if np.array_equal(got, expected):
            continue
        text, column = _difference_text(got, expected, "task 8")
        why = None
        reference_model = reference.CachedMiniGPT(**FIELDS)

        def gives_these_tokens(loop, cached_model):
            try:
                return np.array_equal(_call_generate(loop, cached_model, _params(), idx, key, max_new_tokens,
                                                     **options), got)
            except Exception:  # a loop or a model that does not run with the other half says nothing here
                return False

        if gives_these_tokens(reference.generate_cached, model):
            why = ("the reference loop on your CachedMiniGPT gives these tokens too: the model is where they part (see "
                   "the checks of its calls).")
        elif gives_these_tokens(fn, reference_model):
            sliding = _sliding_cache_tokens(reference_model, idx, key, max_new_tokens, **options)
            why = ("your generate_cached gives these tokens with the reference CachedMiniGPT too: the loop is where they "
                   "part" + (": past block_size it keeps the keys cached at their old positions (rolling the cache "
                             "and feeding the newest token at the last slot gives exactly these tokens), but every "
                             "position shifts as the window slides, so those keys are stale. Recompute the cache from "
                             "the last block_size tokens at position 0." if np.array_equal(sliding, got) else
                             f" (at column {column}, past block_size = {S}, where the lesson's loop recomputes the "
                             "cache from the last block_size tokens at position 0)." if column > S else "."))
        if why is None and gap < 1e-4:
            why = (f"two Gumbel-perturbed scores lie {gap:.1e} apart in this case, so rounding in the logits can "
                   "change a token: tell the maintainers, this case needs another key.")
        checks.fail("generate_cached on CachedMiniGPT should give exactly task 8's tokens on the reference "
                    f"MiniGPT with the same parameters ({_case_text(idx, max_new_tokens, S, options)}): "
                    + text + (f"\n  Likely cause: {why}" if why else ""))


# ----------------------------------------------------------------------------------------------------
# One compiled loop




def _loop_size(jaxpr):
    """(primitive names, number of equations) of a jaxpr and every jaxpr nested in it."""
    eqns = [eqn for eqn, _ in checks.program_equations(jaxpr.jaxpr)]
    return {eqn.primitive.name for eqn in eqns}, len(eqns)


def test_generate_cached_is_one_compiled_loop(impl):
    """generate_cached compiles to one lax loop that does not grow with max_new_tokens, and a second call with
    another key runs the compiled program without tracing the model again"""
    fn = _generate(impl)
    model = HashCacheLM(block_size=HASH_BLOCK)
    idx = jnp.array([[1, 2]], jnp.int32)

    def program(max_new_tokens):
        _TRACES[0] = 0
        try:
            jaxpr = jax.make_jaxpr(lambda params, idx, key: fn(model, params, idx, key, max_new_tokens))(
                SOFT, idx, jax.random.key(0))
        except (NotImplementedError, checks.CheckFailed):
            raise
        except Exception as err:
            where = outcomes.learner_frame(err)
            first = str(err).strip().splitlines()[0][:300] if str(err).strip() else ""
            tracer = any(word in type(err).__name__ for word in ("Tracer", "Concretization"))
            checks.fail(f"generate_cached could not be traced by jax.make_jaxpr (as jax.jit traces it): "
                        f"{type(err).__name__}: {first}" + (f"\n    at {where}" if where else "")
                        + ("\n  Inside a compiled loop the tokens, the step counter and the position are traced "
                           "values: no int() or numpy on them, slices of a fixed size (jax.lax.dynamic_slice), and "
                           "jax.lax.cond to choose between the cached step and the recompute." if tracer else ""))
        return jaxpr, _TRACES[0]

    (small_jaxpr, small_traces), (large_jaxpr, large_traces) = program(12), program(40)
    names, small = _loop_size(small_jaxpr)
    _, large = _loop_size(large_jaxpr)
    if large > small * 1.5 or large_traces > small_traces or not ({"while", "scan"} & names):
        checks.fail(f"generate_cached's program has {small} operations and calls the model {small_traces} times "
                    f"for 12 new tokens, {large} and {large_traces} for 40"
                    + ("" if {"while", "scan"} & names else ", and it has no loop primitive")
                    + ": the token loop is unrolled into the program, one copy of the model per token. Write it with "
                    "jax.lax.fori_loop (or jax.lax.scan) over a fixed-size buffer, so that it compiles once whatever "
                    "max_new_tokens is.")
    _TRACES[0] = 0
    for seed in (1, 2):
        _call_generate(fn, model, SOFT, idx, jax.random.key(seed), 12)
        if seed == 1:
            first = _TRACES[0]
    if _TRACES[0] > first:
        checks.fail("a second call of generate_cached with the same shapes and another key traced the model again "
                    f"({first} calls of the model the first time, {_TRACES[0] - first} more the second): wrap "
                    "generate_cached in jax.jit with model, max_new_tokens and top_k static, so that the loop is "
                    "compiled once and every later call runs the compiled program.")
