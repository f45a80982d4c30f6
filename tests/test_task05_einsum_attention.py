"""Task 5: `EinsumMultiHeadAttention`, every head at once, laid out like Flax's own attention layer.

Oracles: `nn.MultiHeadDotProductAttention` run with the learner's parameters and `nn.make_causal_mask`; its
`init` for the parameter tree; the GPT of tests/oracles_gpt.py with the learner's attention in place of
Flax's, on the same parameters; a float64 numpy computation, head by head; the reference's layer on the same
parameters, submodule by submodule, for lengths and batches that don't hide mistakes (jaxgpt/grader/differential.py);
its dropout, matched by what it drops; causality. Known mistakes are named by recomputing them in numpy from the
learner's parameters, and by the catalogue's mistakes when one gives exactly the learner's output.
"""

import jax
import jax.numpy as jnp
import flax.linen as nn
import numpy as np
import pytest

from jaxgpt.grader import checks, differential, outcomes
import oracles
import oracles_gpt

TASK = 5

B, T, C, H = 2, 6, 12, 3
D = C // H  # 4: the head dimension
# The reference-differential check's inputs (B, T): the initialisation's, T longer than any small constant a
# learner might hard-code, T = 1 with batch 1; B, T, C, H and D differ from each other.
SHAPES = [(B, T), (5, 37), (1, 1)]
RATE = oracles.DROPOUT_RATE
DROPOUT_NAMES = {"Dropout_0": "the attention weights (wei, after the softmax)", "in:": "the layer's input x",
                 "out:query": "q (the query projection)", "out:key": "k (the key projection)",
                 "out:value": "v (the value projection)", "in:out": "the heads' outputs (the out projection's input)",
                 "out:out": "the layer's output (the out projection's)", "out:": "the layer's output"}


@pytest.fixture
def x():
    return jax.random.normal(jax.random.key(0), (B, T, C))


def _init(impl, x, **fields):
    attn = impl.EinsumMultiHeadAttention(num_heads=H, **fields)
    params = _run(lambda: attn.init(jax.random.key(1), x))
    return attn, params


def _apply(attn, params, x, **kwargs):
    return _run(lambda: attn.apply(params, x, **kwargs))


def _run(call):
    """Runs the learner's module, with a word on the classic broadcasting error of a mask without a head
    axis; any other error is reported as it is, at the learner's line."""
    try:
        return call()
    except NotImplementedError:
        raise
    except (ValueError, TypeError) as err:
        if "broadcast" not in str(err):
            raise
        where = outcomes.learner_frame(err)
        if where is None or not any(word in where.lower() for word in ("mask", "tril", "where", "inf")):
            raise  # a broadcasting error elsewhere: the learner's own traceback says it best
        if not _mask_misses_head_axis(str(err)):
            raise  # a mask of another length, say: the check that made the call says what it tried
        message = (
            f"your code raised {type(err).__name__}: {str(err).strip().splitlines()[0][:300]}\n    at {where}\n"
            "  Likely cause: the scores hold every head at once, shape (B, H, T, S), and a "
            "mask must broadcast against that: a (T, T) tril serves every head, a mask with a batch axis "
            "needs a head axis too, e.g. (B, 1, T, T) as nn.make_causal_mask gives.")
    # Failing outside the except block keeps JAX's long traceback out of the report (and its formatting time).
    checks.fail(message)


def _mask_misses_head_axis(error: str) -> bool:
    """Whether a broadcasting error between the (B, H, T, S) scores and a mask is in the axes before (T, S):
    the mask fits the time axes and not the head axis, which is what the hint in `_run` says."""
    import re

    shapes = [tuple(int(n) for n in re.findall(r"\d+", group)) for group in re.findall(r"\(([\d,\s]*)\)", error)]
    scores = [shape for shape in shapes if len(shape) == 4]
    if not scores:
        return False
    fits = lambda a, b: all(m == n or 1 in (m, n) for m, n in zip(a, b))  # noqa: E731
    return any(shape != scores[0] and len(shape) >= 2 and fits(shape[-2:], scores[0][-2:]) for shape in shapes)


def _flax_tree(x):
    return jax.eval_shape(nn.MultiHeadDotProductAttention(num_heads=H).init, jax.random.key(1), x)


def _tree_hint(params) -> str | None:
    shapes = checks.tree_shapes(params)
    top = {path.split("/")[1] for path in shapes if path.startswith("params/")}
    names = {"query", "key", "value", "out"}
    if not names <= top:
        return (f"Flax's layer names its four projections query, key, value and out; yours are "
                f"{', '.join(sorted(top)) or 'missing'}. Pass name=... to each.")
    if shapes.get("params/query/kernel") == (C, C) or shapes.get("params/out/kernel") == (C, C):
        return ("a projection kernel is (C, C), as nn.Dense(C) makes; Flax's layer keeps the heads apart: "
                "nn.DenseGeneral((num_heads, head_dim), axis=-1) makes a (C, num_heads, head_dim) kernel for "
                "query, key and value, and nn.DenseGeneral(C, axis=(-2, -1)) a (num_heads, head_dim, C) "
                "kernel for out.")
    missing_bias = [n for n in ("query", "key", "value") if f"params/{n}/bias" not in shapes]
    if missing_bias:
        return (f"{', '.join(missing_bias)} {'has' if len(missing_bias) == 1 else 'have'} no bias: unlike task "
                "3's Head, Flax's layer gives query, key and value biases of shape (num_heads, head_dim); "
                "keep DenseGeneral's default use_bias=True.")
    if "params/out/bias" not in shapes:
        return "the out projection has no bias: Flax's layer has one of shape (C,) (use_bias=True)."
    return None


def _assert_tree(params, x, what="the parameter tree"):
    try:
        checks.assert_tree(params, _flax_tree(x), what)
        return
    except checks.CheckFailed as err:
        message = str(err)
    hint = _tree_hint(params)
    checks.fail(message + (f"\n  Likely cause: {hint}" if hint else ""))


def _f64(a):
    return np.asarray(a, np.float64)


def _projections(params, x):
    """q, k, v in float64 from the learner's kernels and biases, each (B, T, H, D)."""
    p, x64 = params["params"], _f64(x)
    return tuple(np.einsum("btc,chd->bthd", x64, _f64(p[n]["kernel"])) + _f64(p[n]["bias"])
                 for n in ("query", "key", "value"))


def _merge(params, out):
    """The out projection of (B, T, H, D) head outputs: (B, T, C)."""
    p = params["params"]["out"]
    return np.einsum("bthd,hdc->btc", out, _f64(p["kernel"])) + _f64(p["bias"])


def _by_head(a):  # (B, T, H, D) -> (B, H, T, D)
    return a.transpose(0, 2, 1, 3)


def _attention(params, x, **mistake):
    """Causal multi-head attention in float64, head by head; `mistake` switches on a known error."""
    q, k, v = (_by_head(a) for a in _projections(params, x))
    mistake.setdefault("scale", D**-0.5)
    return _merge(params, _by_head(oracles.causal_attention(q, k, v, **mistake)))


def _tril(n):
    return np.tril(np.ones((n, n), bool))


def _masked_scores(q, k, fill=-np.inf):  # (B, H, T, S), the future filled
    wei = np.einsum("bhtd,bhsd->bhts", q, k) * D**-0.5
    return np.where(_tril(q.shape[-2]), wei, fill)


def _softmax_over_heads(params, x, fill):
    q, k, v = (_by_head(a) for a in _projections(params, x))
    with np.errstate(invalid="ignore"):
        wei = oracles.softmax(_masked_scores(q, k, fill), axis=1)
        return _merge(params, _by_head(wei @ v))


def _softmax_over_axes(params, x, axes):  # the masked scores (B, H, T, S) normalised over other axes
    q, k, v = (_by_head(a) for a in _projections(params, x))
    scores = _masked_scores(q, k)
    with np.errstate(invalid="ignore"):
        shifted = scores - np.max(scores, axis=axes, keepdims=True)
        e = np.exp(shifted)
        return _merge(params, _by_head(e / e.sum(axis=axes, keepdims=True) @ v))


def _heads_share_scores(params, x):  # 'bthd,bshd->bts': the scores summed over the heads as well
    q, k, v = _projections(params, x)
    wei = np.einsum("bthd,bshd->bts", q, k) * D**-0.5
    wei = oracles.softmax(np.where(_tril(x.shape[1]), wei, -np.inf))
    return _merge(params, np.einsum("bts,bshd->bthd", wei, v))


def _weights_transposed_in_sum(params, x):  # 'bhst,bshd->bthd': position t collects from the future
    q, k, v = (_by_head(a) for a in _projections(params, x))
    wei = oracles.softmax(_masked_scores(q, k))
    return _merge(params, np.einsum("bhst,bhsd->bthd", wei, v))


def _reshaped_not_transposed(params, x):  # (B, T, H, D).reshape(B, H, T, D) and back
    b, t = x.shape[:2]
    q, k, v = (a.reshape(b, H, t, D) for a in _projections(params, x))
    out = oracles.causal_attention(q, k, v, scale=D**-0.5)  # (B, H, T, D)
    return _merge(params, out.reshape(b, t, H, D))


def _split_d_h(params, x):  # features split as (D, H), head-minor, instead of (H, D)
    p, x64 = params["params"], _f64(x)
    b, t = x.shape[:2]

    def split(name):
        flat = x64 @ _f64(p[name]["kernel"]).reshape(C, C) + _f64(p[name]["bias"]).reshape(C)  # (B, T, C)
        return flat.reshape(b, t, D, H).transpose(0, 3, 1, 2)  # (B, H, T, D)

    out = oracles.causal_attention(split("query"), split("key"), split("value"), scale=D**-0.5)
    flat = out.transpose(0, 2, 3, 1).reshape(b, t, C)  # back through the same (D, H) order
    return flat @ _f64(p["out"]["kernel"]).reshape(C, C) + _f64(p["out"]["bias"])


def _keys_summed(params, x):  # wei applied to k instead of v
    q, k, _ = (_by_head(a) for a in _projections(params, x))
    return _merge(params, _by_head(oracles.causal_attention(q, k, k, scale=D**-0.5)))


def _diagnose(params, x):
    candidates = [
        ("the scores are scaled by C ** -0.5 (the embedding width); scale by the head dimension, "
         "D ** -0.5 with D = C // num_heads.", lambda: _attention(params, x, scale=C**-0.5)),
        ("the scores are not scaled; multiply them by D ** -0.5, D = C // num_heads.",
         lambda: _attention(params, x, scale=1.0)),
        ("the scores are multiplied by sqrt(D); the factor is D ** -0.5, D = C // num_heads.",
         lambda: _attention(params, x, scale=D**0.5)),
        ("the weights sum the keys ('bhts,bshd->bthd' with k); the weighted sum is over the values v.",
         lambda: _keys_summed(params, x)),
        ("the causal mask is missing: every position attends to the future.",
         lambda: _attention(params, x, mask=None)),
        ("the mask keeps the upper triangle: position t should see 0..t (jnp.tril), not t..T-1.",
         lambda: _attention(params, x, mask="upper")),
        ("masked scores are set to 0 instead of -inf, so the future still gets weight after the softmax.",
         lambda: _attention(params, x, mask_value=0.0)),
        ("the scores are transposed: 'bthd,bshd->bhst' gives q_s . k_t at [t, s], so the mask lands on the "
         "wrong triangle of the true scores. The query's index comes first: 'bthd,bshd->bhts'.",
         lambda: _attention(params, x, swap_qk=True)),
        ("the weights are transposed in the weighted sum ('bhst,...'): position t collects values from its "
         "future. Sum over the key index s: 'bhts,bshd->bthd'.", lambda: _weights_transposed_in_sum(params, x)),
        ("the scores contract over the heads too ('bthd,bshd->bts'), so all heads share one attention "
         "pattern. Keep h in the output: 'bthd,bshd->bhts'.", lambda: _heads_share_scores(params, x)),
        ("the softmax runs over the heads axis: normalise over the keys, the last axis (axis=-1).",
         lambda: _softmax_over_heads(params, x, -np.inf)),
        ("the softmax runs over the heads axis: normalise over the keys, the last axis (axis=-1).",
         lambda: _softmax_over_heads(params, x, -1e9)),
        ("the softmax runs over the queries (axis=-2): normalise over the keys, the last axis (axis=-1).",
         lambda: _attention(params, x, softmax_axis=-2)),
        ("the softmax runs over the heads and the keys together (axis=(1, 3)): each head normalises its own "
         "row, over the keys alone (axis=-1).", lambda: _softmax_over_axes(params, x, (1, 3))),
        ("the softmax runs over the queries and the keys together (axis=(2, 3)): normalise each row, over the "
         "keys alone (axis=-1).", lambda: _softmax_over_axes(params, x, (2, 3))),
        ("the softmax runs over the batch axis (axis=0): normalise over the keys, the last axis (axis=-1).",
         lambda: _softmax_over_axes(params, x, 0)),
        ("the heads are reshaped where they should be transposed: (B, T, H, D).reshape(B, H, T, D) mixes "
         "positions and heads. Use .transpose(0, 2, 1, 3) (or einsum's index letters), and the same on the "
         "way back.", lambda: _reshaped_not_transposed(params, x)),
        ("the features are split into heads as (D, H) instead of (H, D): head h owns features "
         "h*D .. h*D+D-1, as reshape(B, T, H, D) gives, which is the layout of the (C, H, D) kernels.",
         lambda: _split_d_h(params, x)),
    ]

    def diagnose(got: np.ndarray):
        for why, compute in candidates:
            try:
                wrong = np.asarray(compute(), np.float64)
            except Exception:
                continue
            if wrong.shape == got.shape and np.allclose(got, wrong, rtol=1e-4, atol=1e-5, equal_nan=True):
                return why
        return None

    return diagnose


def _assert_attention(got, expected, params, x, what):
    """`got` equals `expected`; NaN and known mistakes are named."""
    got = checks.assert_shape(got, x.shape, what).astype(np.float64)
    diagnose = _diagnose(params, x)
    if not np.isfinite(got).all():
        hint = diagnose(got)
        if hint:
            positions = sorted({int(t) for t in np.argwhere(~np.isfinite(got))[:, 1]})
            checks.fail(f"{what} has NaN or infinite values at positions {positions}.\n  Likely cause: {hint}")
    checks.assert_close(got, expected, what, rtol=1e-4, atol=1e-5, diagnose=diagnose)


def test_parameter_tree(impl, x):
    """The parameter tree is nn.MultiHeadDotProductAttention's: query, key, value and out, with biases"""
    _, params = _init(impl, x)
    _assert_tree(params, x)


def test_output_shape_and_dtype(impl, x):
    """The output has the input's shape (B, T, C) and dtype float32"""
    attn, params = _init(impl, x)
    out = _apply(attn, params, x)
    checks.assert_shape(out, (B, T, C), "EinsumMultiHeadAttention's output")
    checks.assert_dtype(out, np.float32, "EinsumMultiHeadAttention's output")


def test_matches_flax_attention(impl, x):
    """Same numbers as Flax's nn.MultiHeadDotProductAttention with your parameters and a causal mask"""
    attn, params = _init(impl, x)
    _assert_tree(params, x)
    mask = nn.make_causal_mask(jnp.ones((B, T)))  # (B, 1, T, T)
    expected = nn.MultiHeadDotProductAttention(num_heads=H).apply(params, x, mask=mask)
    _assert_attention(_apply(attn, params, x), expected, params, x, "EinsumMultiHeadAttention's output")


def test_matches_hand_computation(impl, x):
    """Same numbers as causal attention computed head by head in float64, then the out projection"""
    attn, params = _init(impl, x)
    _assert_tree(params, x)
    _assert_attention(_apply(attn, params, x), _attention(params, x), params, x,
                      "EinsumMultiHeadAttention's output")


_GPT_HINT = ("your attention differs from Flax's layer inside the GPT. If the check against "
             "nn.MultiHeadDotProductAttention fails, it says how; if it passes, look at the fields and the call: "
             "the GPT builds EinsumMultiHeadAttention(num_heads, dropout_rate, name=...) and calls it as "
             "attn(x, deterministic).")


def test_drops_into_the_gpt(impl, x):
    """In place of Flax's layer in a GPT with the same parameters, it gives the same logits"""
    _assert_tree(_init(impl, x)[1], x)  # else the GPT's parameters cannot fit it
    config = dict(vocab_size=11, block_size=8, n_embd=C, n_head=H, n_layer=1)
    idx = jax.random.randint(jax.random.key(2), (B, T), 0, config["vocab_size"])
    flax_gpt = oracles_gpt.OracleGPT(**config)
    params = oracles_gpt.oracle_init(flax_gpt, 3, idx)  # the oracle's init and logits: once per process
    yours = oracles_gpt.OracleGPT(**config, attention=oracles_gpt.module_attention(impl.EinsumMultiHeadAttention))
    try:
        checks.assert_close(_apply(yours, params, idx), oracles_gpt.oracle_apply(flax_gpt, params, idx),
                            "the GPT's logits with your attention", rtol=1e-4, atol=1e-4)
    except checks.CheckFailed as failed:
        message = str(failed)
    else:
        return
    checks.fail(f"{message}\n  {_GPT_HINT[0].upper()}{_GPT_HINT[1:]}")  # a pointer, not a verified cause


def test_causal(impl, x):
    """Position t does not depend on tokens after t, in any head"""
    attn, params = _init(impl, x)
    for position in (0, T // 2):
        checks.assert_causal(lambda inp: _apply(attn, params, inp), x, position,
                             lambda inp: inp.at[:, position + 1:].set(7.0), "EinsumMultiHeadAttention's output")


def test_any_sequence_length(impl, x):
    """Works for any T, including T = 1, and under jax.jit"""
    attn, params = _init(impl, x)
    _assert_tree(params, x)
    apply = jax.jit(attn.apply)
    for t in (1, 4):
        short = x[:, :t]
        _assert_attention(_run(lambda: apply(params, short)), _attention(params, short), params, short,
                          f"jax.jit(apply) of EinsumMultiHeadAttention for T={t}")


def _both(impl, reference, x):
    """The learner's layer and the reference's, built alike with a non-round dropout rate, and the reference's
    parameters (which the learner's layer must accept)."""
    learner = impl.EinsumMultiHeadAttention(num_heads=H, dropout_rate=RATE)
    ref = reference.EinsumMultiHeadAttention(num_heads=H, dropout_rate=RATE)
    variables = ref.init(jax.random.key(1), x)
    oracles.require_tree(learner, x, variables, "EinsumMultiHeadAttention")
    return learner, ref, variables


def test_same_as_reference(impl, reference, x):
    """Same steps as the reference on its parameters, for T = 1, 6, 37, batch 1 to 5, training and evaluation"""
    learner, ref, variables = _both(impl, reference, x)
    oracles.same_as_reference(learner, ref, variables, SHAPES, "EinsumMultiHeadAttention", C=C, first=x, task=impl.task,
                              build=lambda view: view.EinsumMultiHeadAttention(num_heads=H, dropout_rate=RATE),
                              run=_run)


def test_dropout(impl, reference, x):
    """Dropout acts on the attention weights, at the dropout_rate, only in training, with the 'dropout' RNG"""
    attn, ref, params = _both(impl, reference, x)
    quiet = checks.without_dropout_rng(lambda: _apply(attn, params, x, deterministic=True),
                                       "EinsumMultiHeadAttention")
    checks.assert_close(quiet, _apply(impl.EinsumMultiHeadAttention(num_heads=H), params, x),
                        "the output with deterministic=True", rtol=1e-5, atol=1e-6)
    q, k, _ = (_by_head(a) for a in _projections(params, x))
    _run(lambda: differential.assert_same_dropout(
        attn, ref, params, (x,), "EinsumMultiHeadAttention", RATE, names=DROPOUT_NAMES,
        describe=oracles.scores_describer(lambda: q, lambda: k, D**-0.5)))
    # What it drops is right; now the randomness: the 'dropout' stream, the key, and nothing else.
    noisy = checks.as_array(_apply(attn, params, x, deterministic=False, rngs={"dropout": jax.random.key(3)}),
                            "EinsumMultiHeadAttention's output")
    again = _apply(attn, params, x, deterministic=False, rngs={"dropout": jax.random.key(3)})
    other = _apply(attn, params, x, deterministic=False, rngs={"dropout": jax.random.key(4)})
    if np.allclose(noisy, quiet):
        checks.fail(f"with deterministic=False and dropout_rate={RATE} the output did not change: is dropout "
                    "applied, and does it receive `deterministic`?")
    checks.assert_close(again, noisy, "the output for the same dropout key", rtol=0, atol=0)
    if np.allclose(noisy, other):
        checks.fail("two different dropout keys gave the same output: take the key from the 'dropout' stream.")
    # Dropout's mask depends on the key, not on x, so with one key changing the last token must leave the
    # earlier positions as they were, in training as well as in evaluation.
    changed = x.at[:, -1].add(1.0)
    noisy_changed = _apply(attn, params, changed, deterministic=False, rngs={"dropout": jax.random.key(3)})
    if not np.allclose(np.asarray(noisy_changed)[:, :-1], noisy[:, :-1], rtol=1e-5, atol=1e-6):
        quiet_changed = np.asarray(_apply(attn, params, changed, deterministic=True))
        leaks_anyway = not np.allclose(quiet_changed[:, :-1], np.asarray(quiet)[:, :-1], rtol=1e-5, atol=1e-6)
        checks.fail("with deterministic=False (same dropout key), changing the last token changed the earlier "
                    "positions: in training the future leaks in"
                    + (", and with deterministic=True as well: see the causality check." if leaks_anyway else
                       ", although with deterministic=True it does not."))
