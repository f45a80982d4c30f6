"""Task 1: `FeedForward`, `Block` and `MiniGPT` from Flax's own layers.

Oracles: a GPT built from Flax's layers (tests/oracles_gpt.py) with the parameter tree the lesson fixes, run
on the very parameters loaded into the learner's model; the feed-forward computed by hand in float64;
causality, shapes, jit and dropout properties. A failure names its likely cause by recomputing the usual
wrong variants (post-norm, a missing residual, no causal mask, GELU, ...) from the same parameters.
"""


import jax
import numpy as np
import pytest

from jaxgpt import checks
import oracles_gpt as og
from module_checks import build as _build, jitted_logits, logits as _logits, missing_dropouts
from module_checks import own_params as _own_params, require_tree, tree_of as _tree_of

TASK = 1

V, BLOCK_SIZE, C, H, L = 11, 8, 16, 2, 2  # vocab_size, block_size, n_embd, n_head, n_layer
B, T = 2, BLOCK_SIZE
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
    out = checks.without_dropout_rng(lambda: ffwd.apply({"params": p}, x), "FeedForward")
    checks.assert_shape(out, (B, T, C), "FeedForward's output")
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


def test_feedforward_dropout_after_proj(impl, params, x):
    """In training FeedForward's dropout acts on its output: each value is 0 or the deterministic one / (1 - rate)"""
    rate = 0.5
    ffwd = _build(impl.FeedForward, n_embd=C, dropout_rate=rate)
    p = {"params": params["params"]["blocks_0"]["ffwd"]}
    require_tree(ffwd, (x,), p, "FeedForward")
    quiet = np.asarray(checks.without_dropout_rng(lambda: ffwd.apply(p, x), "FeedForward"))
    noisy = np.asarray(ffwd.apply(p, x, deterministic=False, rngs={"dropout": jax.random.key(3)}))
    if np.allclose(noisy, quiet):
        checks.fail("with deterministic=False and dropout_rate=0.5 FeedForward's output did not change: apply "
                    "nn.Dropout(dropout_rate) to proj's output and pass it `deterministic`.")
    kept = noisy != 0.0
    if kept.all() or not np.allclose(noisy[kept], quiet[kept] / (1 - rate), rtol=1e-4, atol=1e-5):
        checks.fail("with deterministic=False FeedForward's outputs should each be 0 or the deterministic value "
                    "divided by (1 - dropout_rate), which is what dropout on proj's output gives.\n  Likely cause: "
                    "the dropout sits before proj; the order is fc, ReLU, proj, then Dropout (the video's "
                    "nn.Sequential ends with nn.Dropout).")


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
    out = checks.without_dropout_rng(lambda: block.apply({"params": p}, x), "Block")
    checks.assert_close(out, og.block(p, x, H), "Block's output", **TOL, diagnose=_diagnose_block(p, x))


def test_block_is_causal(impl, x):
    """Block's output at position t does not depend on inputs after t"""
    block = _build(impl.Block, n_embd=C, n_head=H)
    p = _own_params(block, x)
    before = np.asarray(block.apply(p, x))
    position = T // 2
    changed = x.copy()
    changed[:, position + 1:] = 3.0
    after = np.asarray(block.apply(p, changed))
    change = np.abs(before[:, :position + 1] - after[:, :position + 1]).max()
    if change > 1e-5:
        checks.fail(f"Block's output at positions 0..{position} changed by {change:.3g} when only the inputs after "
                    f"position {position} changed: attention sees the future. Pass the causal mask "
                    "(nn.make_causal_mask(jnp.ones((1, T)))) to nn.MultiHeadDotProductAttention.")


# --- MiniGPT ------------------------------------------------------------------------------------------------


def test_model_parameter_tree(impl, params, idx):
    """MiniGPT's parameters are token_embedding, position_embedding, blocks_0 .. blocks_{n_layer-1}, ln_f and lm_head"""
    model = _build(impl.MiniGPT, **FIELDS)
    assert_tree(model, (idx,), params, "MiniGPT")


def test_logits_shape_and_dtype(impl, idx):
    """MiniGPT returns float32 logits of shape (B, T, vocab_size)"""
    model = _build(impl.MiniGPT, **FIELDS)
    logits = _logits(model, _own_params(model, idx), idx)
    checks.assert_shape(logits, (B, T, V), "MiniGPT's logits",
                        "One row of vocab_size scores per position: end with lm_head = nn.Dense(vocab_size).")
    checks.assert_dtype(logits, np.float32, "MiniGPT's logits")


def test_logits_match_flax_oracle(impl, params, idx):
    """MiniGPT gives the same logits as a GPT built from Flax's layers, with the same parameters"""
    model = _build(impl.MiniGPT, **FIELDS)
    require_tree(model, (idx,), params, "MiniGPT")
    expected = og.OracleGPT(**FIELDS).apply(params, idx)
    checks.assert_close(_logits(model, params, idx), expected, "MiniGPT's logits", **TOL,
                        diagnose=_diagnose_model(params["params"], idx))


def test_causal(impl, idx):
    """The logits at position t do not depend on tokens after t"""
    model = _build(impl.MiniGPT, **FIELDS)
    params = _own_params(model, idx)
    before = np.asarray(_logits(model, params, idx))
    for position in (0, T // 2):
        changed = idx.copy()
        changed[:, position + 1:] = (changed[:, position + 1:] + 1) % V
        after = np.asarray(model.apply(params, changed))
        change = np.abs(before[:, :position + 1] - after[:, :position + 1]).max()
        if change > 1e-5:
            checks.fail(f"MiniGPT's logits at positions 0..{position} changed by {change:.3g} when only tokens "
                        f"after position {position} changed: the model sees the future. Each Block's attention "
                        "needs the causal mask (mask=nn.make_causal_mask(jnp.ones((1, T)))).")


def test_shorter_sequences_under_jit(impl, params, idx):
    """Works under jax.jit, and for T shorter than block_size"""
    model = _build(impl.MiniGPT, **FIELDS)
    require_tree(model, (idx,), params, "MiniGPT")
    t = 5
    logits = jitted_logits(model, params, idx[:, :t], BLOCK_SIZE)
    checks.assert_shape(logits, (B, t, V), f"MiniGPT's logits for T={t} under jax.jit")
    # Causality makes the logits of a prefix the first t rows of the whole sequence's logits.
    expected = np.asarray(og.OracleGPT(**FIELDS).apply(params, idx))[:, :t]
    checks.assert_close(logits, expected, f"MiniGPT's logits for T={t} under jax.jit", **TOL,
                        diagnose=_diagnose_model(params["params"], idx[:, :t]))


def test_dropout_off_when_deterministic(impl, idx):
    """With deterministic=True (the default) dropout_rate changes nothing and no 'dropout' RNG is needed"""
    model = _build(impl.MiniGPT, **FIELDS, dropout_rate=0.5)
    plain = _build(impl.MiniGPT, **FIELDS)
    params = _own_params(plain, idx)
    checks.assert_close(_logits(model, params, idx), _logits(plain, params, idx),
                        "the logits with dropout_rate=0.5 and the default deterministic", rtol=1e-6, atol=1e-6)
    checks.assert_close(_logits(model, params, idx, deterministic=True), _logits(plain, params, idx),
                        "the logits with dropout_rate=0.5 and deterministic=True", rtol=1e-6, atol=1e-6)


def test_dropout_in_training(impl, idx):
    """With deterministic=False dropout runs in every layer, drawn from the 'dropout' RNG (same key, same logits)"""
    model = _build(impl.MiniGPT, **FIELDS, dropout_rate=0.5)
    params = _own_params(model, idx)
    training = jax.jit(lambda p, i, key: model.apply(p, i, deterministic=False, rngs={"dropout": key}))
    calls = og.dropout_calls(lambda: jax.eval_shape(training, params, idx, jax.random.key(0)))
    ignored = [path for path, deterministic in calls if deterministic]
    if ignored:
        checks.fail(f"MiniGPT was called with deterministic=False, but {', '.join(ignored[:4])} ran with "
                    "deterministic=True, so dropout stays off there in training: pass `deterministic` on to "
                    "every Block, FeedForward, nn.Dropout and the attention layer.")
    missing = missing_dropouts(calls, FIELDS["n_layer"])
    if missing:
        checks.fail("with deterministic=False a dropout of the lesson's model never ran.\n  Likely cause: "
                    + "; ".join(missing[:2]) + ".")
    quiet = np.asarray(model.apply(params, idx))
    noisy, again, other = (np.asarray(training(params, idx, jax.random.key(k))) for k in (3, 3, 4))
    if np.allclose(noisy, quiet):
        checks.fail("with deterministic=False and dropout_rate=0.5 the logits did not change: is nn.Dropout "
                    "applied, and does it receive `deterministic`?")
    checks.assert_close(again, noisy, "the logits for the same dropout key", rtol=0, atol=0)
    if np.allclose(noisy, other):
        checks.fail("two different dropout keys gave the same logits: dropout must draw from the 'dropout' RNG "
                    "stream that apply(..., rngs={'dropout': key}) provides.")
