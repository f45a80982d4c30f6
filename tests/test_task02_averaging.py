"""Task 2: the causal running mean three ways (`causal_mean_loop`, `causal_mean_matmul`,
`causal_mean_softmax`).

Oracles: a case small enough to check by eye ([1, 2, 3, 6] -> [1, 1.5, 2, 3]); the running mean as a
float64 cumulative sum divided by t + 1 (tests/oracles.py); the three ways agreeing with each other; T = 1;
jax.jit. Known mistakes are named by recomputing them in numpy and comparing.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxgpt import checks, outcomes
import oracles

TASK = 2

B, T, C = 2, 5, 3
WAYS = ("causal_mean_loop", "causal_mean_matmul", "causal_mean_softmax")

# One sequence of four one-number tokens, small enough to average by eye: (1, 4, 1).
HAND_X = np.array([[[1.0], [2.0], [3.0], [6.0]]], np.float32)
HAND_MEANS = np.array([[[1.0], [1.5], [2.0], [3.0]]])  # 1, (1+2)/2, (1+2+3)/3, (1+2+3+6)/4

SHAPE_HINT = ("out[:, t] averages x over positions 0..t (axis 1) and keeps the batch and channel axes, so "
              "the output has the shape of x.")


@pytest.fixture
def x():
    return jax.random.normal(jax.random.key(0), (B, T, C))


def _same(got: np.ndarray, candidate) -> bool:
    """Whether `got` equals a wrong answer, NaN where it has NaN (checks.matches treats NaN as different)."""
    candidate = np.asarray(candidate, np.float64)
    return candidate.shape == got.shape and bool(np.allclose(got, candidate, rtol=1e-4, atol=1e-5,
                                                             equal_nan=True))


def _diagnose(x, way: str):
    """A diagnose function for `way`'s output on `x`: each known mistake recomputed in float64."""
    x = np.asarray(x, np.float64)
    n = x.shape[1]
    tril = np.tril(np.ones((n, n)))
    running_sum = np.cumsum(x, axis=1)  # (B, T, C): x[0] + ... + x[t]
    count = np.arange(1, n + 1)[None, :, None]  # t + 1 positions in the prefix 0..t
    suffix_sum = np.cumsum(x[:, ::-1], axis=1)[:, ::-1]  # x[t] + ... + x[T-1]
    suffix_count = (n - np.arange(n))[None, :, None]

    def weighted(wei):
        return np.einsum("ts,bsc->btc", wei, x)

    def without_self():  # the mean of x[:t], empty (NaN) at t = 0
        out = np.full_like(x, np.nan)
        out[:, 1:] = running_sum[:, :-1] / count[:, :-1]
        return out

    def strictly_future():  # the mean of x[t+1:], empty (NaN) at the last position
        out = np.full_like(x, np.nan)
        out[:, :-1] = suffix_sum[:, 1:] / suffix_count[:, 1:]
        return out

    variants = [
        (WAYS, "each prefix sum is divided by T instead of t + 1: row t of the weights holds 1/(t+1) in "
               "columns 0..t.", lambda: running_sum / n),
        (WAYS, "every position averages all T positions, the future included: the causal mask is missing "
               "(jnp.tril for the matmul; -inf above the diagonal before the softmax).",
         lambda: np.broadcast_to(x.mean(axis=1, keepdims=True), x.shape)),
        (WAYS, "the weights are not normalised: a tril of ones adds x[0..t] up instead of averaging it; "
               "divide each row of wei by its sum.", lambda: running_sum),
        (WAYS, "position t averages x[t..T-1], its future: the weights keep the upper triangle (jnp.triu) "
               "where the lower one (jnp.tril) belongs.", lambda: suffix_sum / suffix_count),
        (WAYS, "the columns of the weights sum to 1 instead of the rows: normalise each row "
               "(wei.sum(axis=1, keepdims=True)), or take the softmax over the last axis (axis=-1).",
         lambda: weighted(tril / tril.sum(axis=0, keepdims=True))),
        (WAYS, "wei / wei.sum(axis=1) without keepdims=True: broadcasting divides column s by s + 1 instead "
               "of row t by t + 1.", lambda: weighted(tril / tril.sum(axis=1))),
        (WAYS, "the mean runs over the channels as well as the positions: average x[b, :t+1] over the time "
               "axis only (axis=0 of that (t+1, C) slice).",
         lambda: np.broadcast_to((running_sum / count).mean(axis=-1, keepdims=True), x.shape)),
        (WAYS, "the running sum runs over the batch axis: jnp.cumsum(x, axis=0) adds up batch rows; the "
               "prefix runs over time, axis=1.", lambda: np.cumsum(x, axis=0) / count),
        (WAYS, "position t averages x[0..t-1] and leaves itself out (position 0 then averages nothing, which "
               "is NaN): the prefix is x[b, :t+1].", without_self),
        (("causal_mean_softmax",), "the mask is inverted: -inf on and below the diagonal keeps only the "
                                   "future, and the last row, masked everywhere, becomes NaN. Put -inf "
                                   "where tril == 0.", strictly_future),
        (("causal_mean_softmax",), "every value is NaN: multiplying a mask by -inf gives 0 * -inf = NaN on "
                                   "the kept entries. Build the scores with jnp.where(tril == 0, -jnp.inf, "
                                   "0.0).", lambda: np.full_like(x, np.nan)),
    ]
    variants = [(why, compute) for ways, why, compute in variants if way in ways]

    def diagnose(got: np.ndarray):
        for why, compute in variants:
            if _same(got, compute()):
                return why
        return None

    return diagnose


def _assert_running_mean(got, x, way: str, what: str, expected=None) -> None:
    """`got` is the causal running mean of `x` (`expected` where given); a NaN or a known mistake is named."""
    expected = oracles.running_mean(x) if expected is None else expected
    got = checks.assert_shape(got, expected.shape, what, hint=SHAPE_HINT).astype(np.float64)
    diagnose = _diagnose(x, way)
    if not np.isfinite(got).all() and x.shape[1] > 1:  # with one position every NaN looks alike
        hint = diagnose(got)
        if hint:
            positions = sorted({int(t) for t in np.argwhere(~np.isfinite(got))[:, 1]})
            checks.fail(f"{what} has NaN or infinite values at positions {positions}.\n  Likely cause: {hint}")
    checks.assert_close(got, expected, what, rtol=1e-5, atol=1e-5, diagnose=diagnose)


def _check_way(impl, way: str, x) -> None:
    fn = getattr(impl, way)
    _assert_running_mean(fn(jnp.asarray(HAND_X)), HAND_X, way, f"{way} on x = [1, 2, 3, 6] (shape (1, 4, 1))",
                         expected=HAND_MEANS)
    _assert_running_mean(fn(x), x, way, f"{way} on a random x of shape {tuple(x.shape)}")


def test_output_shape_and_dtype(impl, x):
    """All three ways return an array of the input's shape (B, T, C) and dtype float32"""
    for way in WAYS:
        out = checks.assert_shape(getattr(impl, way)(x), (B, T, C), f"{way}'s output", hint=SHAPE_HINT)
        if out.dtype == np.float64:
            checks.fail(f"{way}'s output has dtype float64 where x is float32: numpy computes in float64. Build "
                        "the result with jax.numpy (jnp.stack, jnp.zeros(...).at[b, t].set(...)) so that it "
                        "stays float32 like x.")
        checks.assert_dtype(out, np.float32, f"{way}'s output")


def test_loop_is_the_running_mean(impl, x):
    """causal_mean_loop: out[:, t] is the mean of x[:, 0..t] ([1, 2, 3, 6] gives [1, 1.5, 2, 3])"""
    _check_way(impl, "causal_mean_loop", x)


def test_matmul_is_the_running_mean(impl, x):
    """causal_mean_matmul: the same running mean from one matmul by normalised tril weights"""
    _check_way(impl, "causal_mean_matmul", x)


def test_softmax_is_the_running_mean(impl, x):
    """causal_mean_softmax: the same running mean from a softmax over -inf-masked zeros"""
    _check_way(impl, "causal_mean_softmax", x)


def test_three_ways_agree(impl):
    """The three ways give the same numbers as each other on another input"""
    other = jax.random.normal(jax.random.key(7), (3, 7, 2))
    outs = {way: checks.assert_finite(getattr(impl, way)(other), f"{way}(x)") for way in WAYS}
    for way in ("causal_mean_matmul", "causal_mean_softmax"):
        checks.assert_close(outs[way], outs["causal_mean_loop"], f"{way}(x), compared with causal_mean_loop(x),",
                            rtol=1e-5, atol=1e-5)


def test_softmax_has_no_nan(impl, x):
    """causal_mean_softmax returns finite numbers: every row of its scores keeps at least one 0"""
    what = "causal_mean_softmax(x)"
    out = checks.assert_shape(impl.causal_mean_softmax(x), (B, T, C), what, hint=SHAPE_HINT)
    out = out.astype(np.float64)
    bad = ~np.isfinite(out)
    if bad.any():
        positions = sorted({int(t) for t in np.argwhere(bad)[:, 1]})
        hint = _diagnose(x, "causal_mean_softmax")(out) or (
            "a row of the scores is -inf everywhere, so its softmax divides 0 by 0. Keep 0 on and below the "
            "diagonal (jnp.where(tril == 0, -jnp.inf, 0.0)) and never multiply -inf by 0.")
        checks.fail(f"{what} has NaN or infinite values at positions {positions} of 0..{T - 1}.\n"
                    f"  Likely cause: {hint}")


def test_single_position(impl, x):
    """With T = 1 each way returns its input: one position is its own mean"""
    one = x[:, :1]
    for way in WAYS:
        _assert_running_mean(getattr(impl, way)(one), one, way, f"{way} on x of shape {tuple(one.shape)}")


def test_under_jit(impl, x):
    """causal_mean_matmul and causal_mean_softmax work under jax.jit and give the same numbers"""
    for way in ("causal_mean_matmul", "causal_mean_softmax"):
        fn = getattr(impl, way)
        jit_error = None
        try:
            out = jax.jit(fn)(x)
        except NotImplementedError:
            raise
        except Exception as err:
            jit_error = err
        if jit_error is not None:
            fn(x)  # fails without jit as well: that error, at the learner's line, is the one to report
            # Failing outside the except block keeps JAX's long traceback out of the report.
            where = outcomes.learner_frame(jit_error) or "inside jax.jit"
            first = str(jit_error).strip().splitlines()[0] if str(jit_error).strip() else ""
            checks.fail(
                f"{way}(x) works on its own but raises {type(jit_error).__name__} under jax.jit ({first[:200]})\n"
                f"    at {where}\n"
                "  Likely cause: under jit the arrays are tracers, whose shapes are known but whose values are "
                "not, so boolean-mask indexing (wei.at[tril == 0]) and Python `if` on array values fail. "
                "Select with jnp.where(tril == 0, -jnp.inf, wei) instead.")
        _assert_running_mean(out, x, way, f"jax.jit({way})(x)")
