"""Task 2: the causal running mean three ways (`causal_mean_loop`, `causal_mean_matmul`,
`causal_mean_softmax`).

Oracles: a case small enough to check by eye ([1, 2, 3, 6] -> [1, 1.5, 2, 3]); the running mean as a
float64 cumulative sum divided by t + 1 (tests/oracles.py); the three ways agreeing with each other; jax.jit.
Known mistakes are named by recomputing them in numpy and comparing.

Shapes: T = 1, batch 1 (with C = 1 in the hand case), shapes whose B, T and C all differ (so that reading one
axis for another fails), and T = 1030 for the two vectorised ways, longer than any length a learner might fix in
advance (the video's 8, 32, 256; GPT-2's 1024). A failure on one shape is explained by running the learner's
function on neighbouring shapes (`_shape_cause`): what the verdict says about shapes is what those runs showed.

Tolerance (`_tolerance`): a float32 mean of n numbers carries a rounding error below n * u * mean|x| with
u = 2**-24 (the worst-case bound for summation in any order, plus one rounding for the division), which is
6e-6 for n = 100 and |x| ~ 1 and 5e-5 for n = 1030. Each position is allowed 1e-5 + 1e-5 * |mean| plus twice that
bound; correct solutions measure 1e-7, and the nearest mistake (a wrong count at one position) is off by
|mean| / (t + 1), above 1e-3 wherever t < 1000.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxgpt.grader import checks, outcomes
import oracles

TASK = 2

B, T, C = 2, 5, 3
WAYS = ("causal_mean_loop", "causal_mean_matmul", "causal_mean_softmax")
# B, T, C all different (C as in the other checks: fewer shapes to compile); T = 9 is longer than the video's T = 8.
AGREE_SHAPE = (6, 9, 3)
LONG_SHAPE = (1, 1030, 2)  # a batch of one, and longer than any fixed length a learner might choose
U = 2.0 ** -24  # float32's unit roundoff

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
        (WAYS, "the weights are divided by the sum of the whole matrix (wei.sum()) instead of each row's sum: "
               "wei / wei.sum(axis=1, keepdims=True).", lambda: weighted(tril / tril.sum())),
        (WAYS, "the weights are applied transposed: position t takes column t of wei (einsum('st,bsc->btc') or "
               "wei.T @ x) instead of row t. Use wei @ x, or einsum('ts,bsc->btc', wei, x).",
         lambda: weighted((tril / tril.sum(axis=1, keepdims=True)).T)),
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
        (("causal_mean_softmax",), "every value is NaN, at every position. In the softmax way that is what a "
                                   "mask multiplied by -inf gives (0 * -inf = NaN on the kept entries): build the "
                                   "scores with jnp.where(tril == 0, -jnp.inf, 0.0).", lambda: np.full_like(x, np.nan)),
    ]
    variants = [(why, compute) for ways, why, compute in variants if way in ways]

    def diagnose(got: np.ndarray):
        for why, compute in variants:
            if _same(got, compute()):
                return why
        return None

    return diagnose


def _tolerance(x) -> np.ndarray:
    """Allowed absolute error at each (b, t, c): 1e-5 plus twice float32's worst-case rounding of a mean of
    t + 1 numbers, 2 * (t + 1) * u * mean|x[b, :t+1, c]| (see the module docstring)."""
    x = np.abs(np.asarray(x, np.float64))
    n = np.arange(1, x.shape[1] + 1)[None, :, None]
    return 1e-5 + 2 * n * U * (np.cumsum(x, axis=1) / n)


def _random_x(shape, seed=0):
    return jax.random.normal(jax.random.key(seed), shape)


def _learner_error_text(err: Exception) -> str:
    where = outcomes.learner_frame(err)
    first = str(err).strip().splitlines()[0] if str(err).strip() else ""
    return f"{type(err).__name__}: {first[:300]}" + (f"\n    at {where}" if where else "")


def _run_way(fn, x):
    """("ok", out) when fn(x) is the running mean of x, else ("raised", error), ("shape", out) or ("values", out).
    NotImplementedError (a stub) is passed on."""
    try:
        out = fn(x)
    except NotImplementedError:
        raise
    except Exception as err:
        return "raised", err
    try:
        got = np.asarray(out, np.float64)
    except Exception:
        return "shape", None
    if got.shape != tuple(x.shape):
        return "shape", got
    expected = oracles.running_mean(x)
    ok = np.all(np.abs(got - expected) <= _tolerance(x) + 1e-5 * np.abs(expected))
    return ("ok" if ok else "values"), got


def _shape_text(shape) -> str:
    return "(" + ", ".join(str(int(n)) for n in shape) + ")"


def _shape_cause(fn, shape) -> str | None:
    """Why `fn` fails on x of `shape`, from runs on neighbouring shapes: each sentence states what those runs
    showed (None when they show nothing shape-related)."""
    b, t, c = shape
    runs = {}

    def run(s):
        s = tuple(int(n) for n in s)
        if s[0] * s[1] > max(400, b * t):  # the loop way does B * T eager means: keep probes cheap
            return "skipped", None
        if s not in runs:
            runs[s] = _run_way(fn, _random_x(s, seed=3))
        return runs[s]

    status, out = run(shape)
    if status == "ok":
        return None
    names = ("batch", "length", "channel")
    # 1. An output size that stays put while x's changes: a size written into the code.
    other = (b + 3, t + 5, c + 2)  # away from the video's 4, 8, 2, so that a size fixed at those shows
    other_status, other_out = run(other)
    if status == "shape" and other_status == "shape" and out is not None and other_out is not None \
            and out.ndim == other_out.ndim == 3:
        fixed = [f"its {names[i]} axis is {out.shape[i]}" for i in range(3)
                 if out.shape[i] == other_out.shape[i] and shape[i] != other[i]]
        if fixed:
            return (f"the output's shape does not follow x: for x of shape {_shape_text(shape)} it is "
                    f"{_shape_text(out.shape)}, for x of shape {_shape_text(other)} it is "
                    f"{_shape_text(other_out.shape)}; " + " and ".join(fixed) + " whatever x is. A size is "
                    "written into the code (like the video's module-level B, T, C = 4, 8, 2): read the sizes "
                    "from x.shape (B, T, C = x.shape).")
    # 2. An axis read for another: it works once the two sizes are equal.
    if b != t and run((t, t, c))[0] == "ok":
        return (f"it fails for x of shape {_shape_text(shape)} but works for {_shape_text((t, t, c))}, where the "
                "batch size equals the length: T is read from the batch axis (len(x) or x.shape[0] is B). The "
                "length is x.shape[1].")
    if c != t and run((b, t, t))[0] == "ok":
        return (f"it fails for x of shape {_shape_text(shape)} but works for {_shape_text((b, t, t))}, where the "
                "number of channels equals the length: T is read from the channel axis (x.shape[-1] is C). The "
                "length is x.shape[1].")
    # 3. A batch of one, or one channel.
    if b == 1 and run((2, t, c))[0] == "ok":
        return (f"it works for a batch of 2 (x of shape {_shape_text((2, t, c))}) but not for a batch of one "
                f"(x of shape {_shape_text(shape)}): look for an axis of size 1 squeezed away (jnp.squeeze) or a "
                "batch index (x[0]).")
    if c == 1 and run((b, t, 2))[0] == "ok":
        return (f"it works for 2 channels (x of shape {_shape_text((b, t, 2))}) but not for one channel (x of "
                f"shape {_shape_text(shape)}): look for an axis of size 1 squeezed away (jnp.squeeze).")
    # 4. A longest length that works, beyond the short ones: a length fixed in advance.
    if t > 6 and run((b, 5, c))[0] == "ok":
        lo = 5
        hi = t
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if run((b, mid, c))[0] == "ok":
                lo = mid
            else:
                hi = mid
        return (f"it works for every length up to T = {lo} and fails from T = {hi} (x of shape "
                f"{_shape_text((b, hi, c))}): a length of {lo} is fixed in the code (a mask or weights built "
                f"once for {lo} positions, a module-level constant). Build them from the input's own length, "
                "T = x.shape[1].")
    # 5. One length that works: the video's T = 8 (or another usual size) written into the code.
    for n in (8, 32):
        if t != n and run((b, n, c))[0] == "ok":
            return (f"it fails for x of shape {_shape_text(shape)} but works for {_shape_text((b, n, c))}: a length "
                    f"of {n} is fixed in the code (like the video's module-level T = 8). Build the weights from the "
                    "input's own length, T = x.shape[1].")
    return None


def _call_way(fn, way: str, x, what: str):
    """fn(x), or a failure sentence when the learner's function raises, with what its runs on other shapes show."""
    try:
        return fn(x)
    except NotImplementedError:
        raise
    except Exception as err:
        message = f"{what} raised {_learner_error_text(err)}"
        cause = _shape_cause(fn, tuple(x.shape))
        if cause is None and tuple(x.shape) != (B, T, C) and _run_way(fn, _random_x((B, T, C)))[0] == "ok":
            cause = (f"it works for x of shape {_shape_text((B, T, C))} but not for x of shape "
                     f"{_shape_text(x.shape)}: a size is fixed in the code where it should come from x.shape.")
        checks.fail(message + (f"\n  Likely cause: {cause}" if cause else ""))


def _assert_running_mean(got, x, way: str, what: str, expected=None, fn=None) -> None:
    """`got` is the causal running mean of `x` (`expected` where given); a NaN or a known mistake is named, and a
    wrong shape is explained by runs of `fn` on other shapes."""
    expected = oracles.running_mean(x) if expected is None else expected
    array = checks.as_array(got, what)
    if tuple(array.shape) != tuple(expected.shape):
        cause = _shape_cause(fn, tuple(x.shape)) if fn is not None else None
        checks.fail(f"{what} should have shape {tuple(expected.shape)}, but it has shape {tuple(array.shape)}."
                    + (f"\n  Likely cause: {cause}" if cause else f" {SHAPE_HINT}"))
    got = array.astype(np.float64)
    diagnose = _diagnose(x, way)
    if not np.isfinite(got).all() and x.shape[1] > 1:  # with one position every NaN looks alike
        hint = diagnose(got)
        if hint:
            positions = sorted({int(t) for t in np.argwhere(~np.isfinite(got))[:, 1]})
            shown = positions if len(positions) <= 12 else positions[:12] + ["..."]
            checks.fail(f"{what} has NaN or infinite values at positions {shown}.\n  Likely cause: {hint}")

    def diagnose_with_shapes(values):
        hint = diagnose(values)
        if hint is None and fn is not None and x.shape[1] > 2:
            hint = _shape_cause(fn, tuple(x.shape))
        return hint

    checks.assert_close(got, expected, what, rtol=1e-5, atol=_tolerance(x), diagnose=diagnose_with_shapes)


def _check_way(impl, way: str, x) -> None:
    fn = getattr(impl, way)
    what = f"{way} on a random x of shape {tuple(x.shape)}"
    _assert_running_mean(_call_way(fn, way, x, what), x, way, what, fn=fn)
    what = f"{way} on x = [1, 2, 3, 6] (shape (1, 4, 1))"
    _assert_running_mean(_call_way(fn, way, jnp.asarray(HAND_X), what), HAND_X, way, what, expected=HAND_MEANS,
                         fn=fn)


def test_output_shape_and_dtype(impl, x):
    """All three ways return an array of the input's shape (B, T, C) and dtype float32"""
    for way in WAYS:
        fn = getattr(impl, way)
        out = checks.as_array(_call_way(fn, way, x, f"{way}(x)"), f"{way}'s output")
        if out.shape != (B, T, C):
            cause = _shape_cause(fn, (B, T, C))
            checks.fail(f"{way}'s output should have shape {(B, T, C)}, but it has shape {tuple(out.shape)}."
                        + (f"\n  Likely cause: {cause}" if cause else f" {SHAPE_HINT}"))
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
    """The three ways give the same numbers as each other, and the running mean, on x of shape (6, 9, 3)"""
    other = _random_x(AGREE_SHAPE, seed=7)
    outs = {}
    for way in WAYS:
        fn = getattr(impl, way)
        what = f"{way}(x) for x of shape {AGREE_SHAPE}"
        outs[way] = _call_way(fn, way, other, what)
        _assert_running_mean(outs[way], other, way, what, fn=fn)
    for way in ("causal_mean_matmul", "causal_mean_softmax"):
        checks.assert_close(outs[way], outs["causal_mean_loop"], f"{way}(x), compared with causal_mean_loop(x),",
                            rtol=1e-5, atol=_tolerance(other))


def test_any_length(impl):
    """causal_mean_matmul and causal_mean_softmax work for a batch of one and T = 1030, longer than any fixed size"""
    x = _random_x(LONG_SHAPE, seed=11)
    for way in ("causal_mean_matmul", "causal_mean_softmax"):
        fn = getattr(impl, way)
        what = f"{way} on x of shape {LONG_SHAPE}"
        _assert_running_mean(_call_way(fn, way, x, what), x, way, what, fn=fn)


def test_softmax_has_no_nan(impl, x):
    """causal_mean_softmax returns finite numbers: every row of its scores keeps at least one 0"""
    what = "causal_mean_softmax(x)"
    out = checks.assert_shape(_call_way(impl.causal_mean_softmax, "causal_mean_softmax", x, what), (B, T, C), what,
                              hint=SHAPE_HINT)
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
        fn = getattr(impl, way)
        what = f"{way} on x of shape {tuple(one.shape)}"
        _assert_running_mean(_call_way(fn, way, one, what), one, way, what, fn=fn)


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
            _call_way(fn, way, x, f"{way}(x)")  # fails without jit as well: that error is the one to report
            # Failing outside the except block keeps JAX's long traceback out of the report.
            where = outcomes.learner_frame(jit_error) or "inside jax.jit"
            first = str(jit_error).strip().splitlines()[0] if str(jit_error).strip() else ""
            checks.fail(
                f"{way}(x) works on its own but raises {type(jit_error).__name__} under jax.jit ({first[:200]})\n"
                f"    at {where}\n"
                "  Likely cause: under jit the arrays are tracers, whose shapes are known but whose values are "
                "not, so boolean-mask indexing (wei.at[tril == 0]) and Python `if` on array values fail. "
                "Select with jnp.where(tril == 0, -jnp.inf, wei) instead.")
        _assert_running_mean(out, x, way, f"jax.jit({way})(x)", fn=fn)
