"""Task 1: `FeedForward`, `Block` and `MiniGPT` from Flax's own layers.

Oracles: a GPT built from Flax's layers (tests/oracles_gpt.py) with the parameter tree the lesson fixes, run
on the very parameters loaded into the learner's model; the feed-forward computed by hand in float64;
the reference modules themselves (jaxgpt/grader/differential.py), run on the same parameters and compared submodule
by submodule in evaluation and training mode, with every dropout judged by what it drops and at what rate;
causality, shapes, jit and the dropout RNG. A failure names its likely cause by recomputing the usual wrong
variants (post-norm, a missing residual, no causal mask, GELU, ...) from the same parameters, or the
catalogued mistake whose output the learner's equals, or else the first submodule where the two part.

The sizes are all different (vocab 13, block_size 37, n_embd 24, 3 heads of 8, batch 2), so that no
confusion of one with another hides; the differential checks also try T = 1, T = 5 (below the length the
parameters were made for), a batch of one, and for Block T = 257, beyond any length a mask might be built
for. dropout_rate 0.37 is no rate anyone writes by hand.
"""


import jax
import numpy as np
import pytest

from jaxgpt.grader import checks
import oracles_gpt as og
from module_checks import RATE, block_names, build as _build, feedforward_names, jitted_logits
from module_checks import logits as _logits, model_names, output, own_params as _own_params, position_explainer
from module_checks import first_non_finite, leak_cause, logits_shape_hint, require_tree
from module_checks import require_tree_where_it_traces, same_behaviour, same_dropout, tree_of as _tree_of

TASK = 1

V, BLOCK_SIZE, C, H, L = 13, 37, 24, 3, 2  # vocab_size, block_size, n_embd, n_head (head_size 8), n_layer
B, T = 2, BLOCK_SIZE
LONG_T = 257  # for Block and FeedForward: longer than any block_size a mask could be built for by hand
FIELDS = dict(vocab_size=V, block_size=BLOCK_SIZE, n_embd=C, n_head=H, n_layer=L)
TOL = dict(rtol=1e-4, atol=1e-4)


@pytest.fixture(scope="module")
def idx():
    return np.random.default_rng(0).integers(0, V, (B, T)).astype(np.int32)  # (B, T) token ids


@pytest.fixture(scope="module")
def params(idx):
    """One parameter tree, in the lesson's layout, shared by the learner's modules and the oracle."""
    return og.random_params(og.OracleGPT(**FIELDS), idx)


@pytest.fixture(scope="module")
def x():
    return np.random.default_rng(1).standard_normal((B, T, C)).astype(np.float32)  # (B, T, C) activations


@pytest.fixture(scope="module")
def x_long():
    return np.random.default_rng(4).standard_normal((1, LONG_T, C)).astype(np.float32)  # a batch of one


def _tree_hints(shapes):
    hints = []
    for path, shape in shapes.items():
        if path.endswith("fc/kernel") and shape == (C, C):
            hints.append("the feed-forward's hidden layer is n_embd wide; it should be 4 * n_embd wide.")
        if path.endswith("attn/query/kernel") and shape == (C, C // H, H):
            hints.append("num_heads got the head size (n_embd // n_head): nn.MultiHeadDotProductAttention takes "
                         "the number of heads, num_heads=n_head, and works out the head size itself.")
    return sorted(set(hints))


def assert_tree(module, args, expected, name):
    """The full difference, for the check of the tree itself."""
    got = _tree_of(module, *args)
    try:
        checks.assert_tree(got, expected, f"{name}'s parameter tree")
    except checks.CheckFailed as err:
        checks.fail(str(err) + "".join(f"\n  Likely cause: {h}" for h in _tree_hints(checks.tree_shapes(got))))


MASK_ADVICE = ("pass mask=nn.make_causal_mask(jnp.ones((1, T))) (or a (T, T) jnp.tril of booleans) to "
               "nn.MultiHeadDotProductAttention.")


def _diagnose_block(p, x):
    return checks.diagnose_from((why, lambda kw=kw: og.block(p, x, H, **kw))
                                for why, kw in og.block_mistakes(MASK_ADVICE))


def _diagnose_model(p, idx):
    return checks.diagnose_from((why, lambda kw=kw: og.gpt(p, idx, H, **kw))
                                for why, kw in og.model_mistakes(MASK_ADVICE))


# --- FeedForward --------------------------------------------------------------------------------------------


def test_feedforward_parameter_tree(impl, params, x):
    """FeedForward's parameters are fc (n_embd -> 4 * n_embd) and proj (4 * n_embd -> n_embd), with biases"""
    ffwd = _build(impl.FeedForward, n_embd=C)
    assert_tree(ffwd, (x,), {"params": params["params"]["blocks_0"]["ffwd"]}, "FeedForward")


def test_feedforward_output(impl, params, x):
    """FeedForward computes proj(relu(fc(x))): checked by hand in float64 on the same parameters"""
    ffwd = _build(impl.FeedForward, n_embd=C)
    p = params["params"]["blocks_0"]["ffwd"]
    require_tree(ffwd, (x,), {"params": p}, "FeedForward")
    x64 = x.astype(np.float64)
    fc = x64 @ p["fc"]["kernel"] + p["fc"]["bias"]  # (B, T, 4C)
    expected = np.maximum(fc, 0.0) @ p["proj"]["kernel"] + p["proj"]["bias"]  # (B, T, C)
    out = output(lambda: ffwd.apply({"params": p}, x), (B, T, C), "FeedForward's output")
    diagnose = checks.diagnose_from([
        ("the feed-forward uses GELU (as nanoGPT does); this lesson's uses ReLU, as in the video.",
         lambda: og.feed_forward(p, x64, lambda h: jax.nn.gelu(h, approximate=True))),
        ("the feed-forward uses the exact GELU; this lesson's uses ReLU, as in the video.",
         lambda: og.feed_forward(p, x64, lambda h: jax.nn.gelu(h, approximate=False))),
        ("there is no ReLU between fc and proj.", lambda: og.feed_forward(p, x64, lambda h: h)),
        ("the ReLU comes after proj instead of between fc and proj.",
         lambda: np.maximum(og.feed_forward(p, x64, lambda h: h), 0.0)),
    ])
    checks.assert_close(out, expected, "FeedForward's output", **TOL, diagnose=diagnose)


def test_feedforward_same_as_reference(impl, reference, params, x, x_long):
    """FeedForward computes what the lesson's does, for T = 1, 37 and 257, batch 1, in evaluation and training"""
    ffwd = _build(impl.FeedForward, n_embd=C, dropout_rate=RATE)
    variables = {"params": params["params"]["blocks_0"]["ffwd"]}
    require_tree_where_it_traces(ffwd, (x,), variables, "FeedForward")
    same_behaviour(ffwd, reference.FeedForward(n_embd=C, dropout_rate=RATE), variables,
                   [(x,), (x[:, :1],), (x_long,)], "FeedForward", task=impl.task,
                   build=lambda view: view.FeedForward(n_embd=C, dropout_rate=RATE))


def test_feedforward_dropout(impl, reference, params, x):
    """In training FeedForward drops its output (after proj), once, at dropout_rate"""
    ffwd = _build(impl.FeedForward, n_embd=C, dropout_rate=RATE)
    variables = {"params": params["params"]["blocks_0"]["ffwd"]}
    require_tree(ffwd, (x,), variables, "FeedForward")
    same_dropout(ffwd, reference.FeedForward(n_embd=C, dropout_rate=RATE), variables, (x,), "FeedForward",
                 feedforward_names())


# --- Block --------------------------------------------------------------------------------------------------


def test_block_parameter_tree(impl, params, x):
    """Block's parameters are ln1, attn (Flax's multi-head attention), ln2 and ffwd, shaped as the lesson fixes"""
    block = _build(impl.Block, n_embd=C, n_head=H)
    assert_tree(block, (x,), {"params": params["params"]["blocks_0"]}, "Block")


def test_block_output(impl, params, x):
    """Block computes x + attn(ln1(x)), then x + ffwd(ln2(x)), with causal attention: same numbers as Flax's layers"""
    block = _build(impl.Block, n_embd=C, n_head=H)
    p = params["params"]["blocks_0"]
    require_tree(block, (x,), {"params": p}, "Block")
    out = output(lambda: block.apply({"params": p}, x), (B, T, C), "Block's output")
    checks.assert_close(out, og.block(p, x, H), "Block's output", **TOL, diagnose=_diagnose_block(p, x))


def test_block_is_causal(impl, params, x):
    """Block's output at position t does not depend on inputs after t"""
    block = _build(impl.Block, n_embd=C, n_head=H)
    p = _own_params(block, x)
    before = output(lambda: block.apply(p, x), (B, T, C), "Block's output")
    position = T // 2
    changed = x.copy()
    changed[:, position + 1:] = 3.0
    after = output(lambda: block.apply(p, changed), (B, T, C), "Block's output")
    change = np.abs(before[:, :position + 1] - after[:, :position + 1]).max()
    if change > 1e-5:
        lesson = params["params"]["blocks_0"]
        lesson_tree = checks.tree_shapes(_tree_of(block, x)) == checks.tree_shapes({"params": lesson})
        got = block.apply({"params": lesson}, x) if lesson_tree else None
        checks.fail(f"Block's output at positions 0..{position} changed by {change:.3g} when only the inputs after "
                    f"position {position} changed: attention sees the future."
                    + leak_cause(got, _diagnose_block(lesson, x) if lesson_tree else None))


def test_block_same_as_reference(impl, reference, params, x, x_long):
    """Block computes what the lesson's does, layer by layer, for T = 1, 5, 37 and 257, in evaluation and training"""
    block = _build(impl.Block, n_embd=C, n_head=H, dropout_rate=RATE)
    variables = {"params": params["params"]["blocks_0"]}
    require_tree_where_it_traces(block, (x,), variables, "Block")
    same_behaviour(block, reference.Block(n_embd=C, n_head=H, dropout_rate=RATE), variables,
                   [(x,), (x[:1, :5],), (x[:, :1],), (x_long,)], "Block", task=impl.task,
                   build=lambda view: view.Block(n_embd=C, n_head=H, dropout_rate=RATE))


def test_block_dropout(impl, reference, params, x):
    """In training Block drops attention weights, attention output and feed-forward output, once each, at its rate"""
    block = _build(impl.Block, n_embd=C, n_head=H, dropout_rate=RATE)
    variables = {"params": params["params"]["blocks_0"]}
    require_tree(block, (x,), variables, "Block")
    same_dropout(block, reference.Block(n_embd=C, n_head=H, dropout_rate=RATE), variables, (x,), "Block",
                 block_names())


# --- MiniGPT ------------------------------------------------------------------------------------------------


def test_model_parameter_tree(impl, params, idx):
    """MiniGPT's parameters are token_embedding, position_embedding, blocks_0 .. blocks_{n_layer-1}, ln_f and lm_head"""
    model = _build(impl.MiniGPT, **FIELDS)
    assert_tree(model, (idx,), params, "MiniGPT")


def test_logits_shape_and_dtype(impl, idx):
    """MiniGPT returns float32 logits of shape (B, T, vocab_size)"""
    model = _build(impl.MiniGPT, **FIELDS)
    logits = _logits(model, _own_params(model, idx), idx)
    checks.assert_shape(logits, (B, T, V), "MiniGPT's logits", logits_shape_hint(np.shape(logits), B, T, V, C))
    checks.assert_dtype(logits, np.float32, "MiniGPT's logits")


def test_logits_match_flax_oracle(impl, params, idx):
    """MiniGPT gives the same logits as a GPT built from Flax's layers, with the same parameters"""
    model = _build(impl.MiniGPT, **FIELDS)
    require_tree(model, (idx,), params, "MiniGPT")
    expected = og.oracle_apply(og.OracleGPT(**FIELDS), params, idx)  # kept for the process (oracles_gpt)
    checks.assert_close(_logits(model, params, idx), expected, "MiniGPT's logits", **TOL,
                        diagnose=_diagnose_model(params["params"], idx))


def test_causal(impl, params, idx):
    """The logits at position t do not depend on tokens after t"""
    model = _build(impl.MiniGPT, **FIELDS)
    own = _own_params(model, idx)
    shape = (B, T, V)
    first = _logits(model, own, idx)
    before = output(lambda: first, shape, "MiniGPT's logits", logits_shape_hint(np.shape(first), B, T, V, C))
    for position in (0, T // 2):
        changed = idx.copy()
        changed[:, position + 1:] = (changed[:, position + 1:] + 1) % V
        after = output(lambda: model.apply(own, changed), shape, "MiniGPT's logits")
        change = np.abs(before[:, :position + 1] - after[:, :position + 1]).max()
        if change > 1e-5:
            lesson_tree = checks.tree_shapes(_tree_of(model, idx)) == checks.tree_shapes(params)
            got = model.apply(params, idx) if lesson_tree else None
            checks.fail(f"MiniGPT's logits at positions 0..{position} changed by {change:.3g} when only tokens "
                        f"after position {position} changed: the model sees the future."
                        + leak_cause(got, _diagnose_model(params["params"], idx) if lesson_tree else None))


def test_shorter_sequences_under_jit(impl, params, idx):
    """Works under jax.jit, and for T shorter than block_size"""
    model = _build(impl.MiniGPT, **FIELDS)
    require_tree(model, (idx,), params, "MiniGPT")
    t = 5
    logits = jitted_logits(model, params, idx[:, :t], BLOCK_SIZE)
    checks.assert_shape(logits, (B, t, V), f"MiniGPT's logits for T={t} under jax.jit")
    first_non_finite(model, params, (idx[:, :t],), logits, f"MiniGPT's logits for T={t}")
    # Causality makes the logits of a prefix the first t rows of the whole sequence's logits.
    expected = og.oracle_apply(og.OracleGPT(**FIELDS), params, idx)[:, :t]
    checks.assert_close(logits, expected, f"MiniGPT's logits for T={t} under jax.jit", **TOL,
                        diagnose=_diagnose_model(params["params"], idx[:, :t]))


def test_model_same_as_reference(impl, reference, params, idx):
    """MiniGPT computes what the lesson's does, layer by layer, for T = 1, 5 and block_size, in eval and training"""
    model = _build(impl.MiniGPT, **FIELDS, dropout_rate=RATE)
    require_tree_where_it_traces(model, (idx,), params, "MiniGPT")
    same_behaviour(model, reference.MiniGPT(**FIELDS, dropout_rate=RATE), params,
                   [(idx,), (idx[:1, :5],), (idx[:, :1],)], "MiniGPT", task=impl.task,
                   build=lambda view: view.MiniGPT(**FIELDS, dropout_rate=RATE),
                   explain=position_explainer(model, params, BLOCK_SIZE))


def test_model_dropout(impl, reference, params, idx):
    """In training MiniGPT drops the embedding sum and, in every block, what Block drops, once each, at dropout_rate"""
    model = _build(impl.MiniGPT, **FIELDS, dropout_rate=RATE)
    require_tree(model, (idx,), params, "MiniGPT")
    same_dropout(model, reference.MiniGPT(**FIELDS, dropout_rate=RATE), params, (idx,), "MiniGPT", model_names(L))


def test_dropout_off_when_deterministic(impl, idx):
    """With deterministic=True (the default) dropout_rate changes nothing and no 'dropout' RNG is needed"""
    model = _build(impl.MiniGPT, **FIELDS, dropout_rate=RATE)
    plain = _build(impl.MiniGPT, **FIELDS)
    params = _own_params(plain, idx)
    checks.assert_close(_logits(model, params, idx), _logits(plain, params, idx),
                        f"the logits with dropout_rate={RATE} and the default deterministic", rtol=1e-6, atol=1e-6)
    checks.assert_close(_logits(model, params, idx, deterministic=True), _logits(plain, params, idx),
                        f"the logits with dropout_rate={RATE} and deterministic=True", rtol=1e-6, atol=1e-6)


def test_dropout_in_training(impl, idx):
    """With deterministic=False dropout draws from the 'dropout' RNG: same key, same logits; another key, others"""
    model = _build(impl.MiniGPT, **FIELDS, dropout_rate=RATE)
    params = _own_params(model, idx)
    training = jax.jit(lambda p, i, key: model.apply(p, i, deterministic=False, rngs={"dropout": key}))
    quiet = output(lambda: model.apply(params, idx), (B, T, V), "MiniGPT's logits")
    noisy, again, other = (output(lambda k=k: training(params, idx, jax.random.key(k)), (B, T, V),
                                  "MiniGPT's logits in training") for k in (3, 3, 4))
    first_non_finite(model, params, (idx,), noisy, "MiniGPT's logits in training", deterministic=False)
    if np.allclose(noisy, quiet):
        checks.fail(f"with deterministic=False and dropout_rate={RATE} the logits did not change: is nn.Dropout "
                    "applied, and does it receive `deterministic`?")
    checks.assert_close(again, noisy, "the logits for the same dropout key", rtol=0, atol=0)
    if np.allclose(noisy, other):
        checks.fail("two different dropout keys gave the same logits: dropout must draw from the 'dropout' RNG "
                    "stream that apply(..., rngs={'dropout': key}) provides.")
