"""Assertions that teach: each says what was checked and shows expected against got.

Task suites use these rather than bare `assert`, so a failure reads as a sentence with numbers in it.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Iterator

import numpy as np


class CheckFailed(AssertionError):
    """A check's teaching message."""


def fail(message: str) -> None:
    raise CheckFailed(message)


def as_array(value: Any, what: str) -> np.ndarray:
    """`value` as a numpy array, or a sentence saying why it is not one."""
    if isinstance(value, (tuple, list)) and value and not np.isscalar(value[0]):
        fail(f"{what} should be one array, but it is a {type(value).__name__} of {len(value)} items.")
    try:
        array = np.asarray(value)
    except Exception as err:  # a tracer leaked out of jit, a Flax module, ...
        fail(f"{what} should be an array, but it is a {type(value).__name__} ({err}).")
    if array.dtype == object:
        fail(f"{what} should be an array of numbers, but it is a {type(value).__name__}.")
    return array


def assert_shape(value: Any, expected: tuple[int, ...], what: str, hint: str = "") -> np.ndarray:
    array = as_array(value, what)
    if tuple(array.shape) != tuple(expected):
        extra = f" {hint}" if hint else ""
        fail(f"{what} should have shape {tuple(expected)}, but it has shape {tuple(array.shape)}.{extra}")
    return array


def assert_floating(value: Any, what: str) -> np.ndarray:
    array = as_array(value, what)
    if not np.issubdtype(array.dtype, np.floating):
        fail(f"{what} should hold floating-point numbers, but its dtype is {array.dtype}.")
    return array


def assert_dtype(value: Any, expected: Any, what: str) -> np.ndarray:
    array = as_array(value, what)
    if array.dtype != np.dtype(expected):
        fail(f"{what} should have dtype {np.dtype(expected)}, but it has dtype {array.dtype}.")
    return array


def assert_finite(value: Any, what: str) -> np.ndarray:
    array = as_array(value, what).astype(np.float64, copy=False)
    bad = ~np.isfinite(array)
    if bad.any():
        first = tuple(int(i) for i in np.argwhere(bad)[0])
        kind = "NaN" if np.isnan(array[first]) else "infinite"
        fail(f"{what} has {int(bad.sum())} NaN or infinite values (the first, at index {first}, is {kind}). "
             "Look for a division by zero, a log of zero, or -inf left in a row that is masked everywhere.")
    return array


def _slice_text(array: np.ndarray) -> str:
    flat = array.reshape(-1)[:6]
    return np.array2string(flat, precision=4, suppress_small=True, max_line_width=120)


def assert_close(got: Any, expected: Any, what: str, *, rtol: float = 1e-5, atol: float = 1e-5,
                 diagnose: Callable[[np.ndarray], str | None] | None = None) -> None:
    """`got` equals `expected` within tolerance; on failure shows the largest difference and where,
    and asks `diagnose(got)` whether the difference looks like a known mistake."""
    expected_array = np.asarray(expected)
    got_array = assert_shape(got, expected_array.shape, what)
    assert_finite(got_array, what)
    got64 = got_array.astype(np.float64)
    exp64 = expected_array.astype(np.float64)
    diff = np.abs(got64 - exp64)
    allowed = atol + rtol * np.abs(exp64)
    if (diff <= allowed).all():
        return
    where = tuple(int(i) for i in np.unravel_index(np.argmax(diff - allowed), diff.shape)) if diff.ndim else ()
    message = (f"{what} is not what was expected: the largest difference is {diff[where]:.3g} at index "
               f"{where} (expected {exp64[where]:.6g}, got {got64[where]:.6g}); "
               f"{int((diff > allowed).sum())} of {diff.size} values differ.\n"
               f"  expected starts {_slice_text(exp64)}\n  got      starts {_slice_text(got64)}")
    if diagnose is not None:
        hint = diagnose(got64)
        if hint:
            message += f"\n  Likely cause: {hint}"
    fail(message)


def matches(got: np.ndarray, candidate: Any, rtol: float = 1e-4, atol: float = 1e-5) -> bool:
    """Whether `got` equals a known wrong answer: the basis of a diagnosis."""
    try:
        candidate = np.asarray(candidate, dtype=np.float64)
    except Exception:
        return False
    return candidate.shape == got.shape and bool(np.allclose(got, candidate, rtol=rtol, atol=atol))


def diagnose_from(candidates: Iterable[tuple[str, Callable[[], Any]]]) -> Callable[[np.ndarray], str | None]:
    """A `diagnose` function that compares the learner's output with each known mistake's output."""
    candidates = list(candidates)

    def diagnose(got: np.ndarray) -> str | None:
        for explanation, compute in candidates:
            try:
                if matches(got, compute()):
                    return explanation
            except Exception:
                continue
        return None

    return diagnose


def tree_shapes(tree: Any) -> dict[str, tuple[int, ...]]:
    """`{'blocks_0/attn/query/kernel': (32, 4, 8), ...}` for a parameter pytree."""
    import jax

    shapes = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        key = "/".join(str(getattr(p, "key", getattr(p, "idx", p))) for p in path)
        shapes[key] = tuple(np.shape(leaf))
    return shapes


def assert_tree(got: Any, expected: Any, what: str = "the parameter tree") -> None:
    """Same names and shapes; on failure lists what is missing, unexpected and mis-shaped."""
    got_shapes, expected_shapes = tree_shapes(got), tree_shapes(expected)
    if got_shapes == expected_shapes:
        return
    missing = sorted(set(expected_shapes) - set(got_shapes))
    extra = sorted(set(got_shapes) - set(expected_shapes))
    wrong = sorted(k for k in set(got_shapes) & set(expected_shapes) if got_shapes[k] != expected_shapes[k])
    lines = [f"{what} does not match the one the lesson fixes."]
    if missing:
        lines.append("  missing:    " + ", ".join(f"{k} {expected_shapes[k]}" for k in missing[:8])
                     + (" ..." if len(missing) > 8 else ""))
    if extra:
        lines.append("  unexpected: " + ", ".join(f"{k} {got_shapes[k]}" for k in extra[:8])
                     + (" ..." if len(extra) > 8 else ""))
    for k in wrong[:8]:
        lines.append(f"  {k}: expected shape {expected_shapes[k]}, got {got_shapes[k]}")
    if missing and extra:
        lines.append("  (Flax names a submodule after its attribute, or `name=`; check the names.)")
    fail("\n".join(lines))


def assert_causal(apply: Callable[[Any], Any], x: Any, position: int, perturb: Callable[[Any], Any],
                  what: str) -> None:
    """Outputs at positions <= `position` must not change when inputs after `position` change."""
    before = np.asarray(apply(x), dtype=np.float64)
    after = np.asarray(apply(perturb(x)), dtype=np.float64)
    change = np.abs(before[:, : position + 1] - after[:, : position + 1]).max()
    if change > 1e-5:
        fail(f"{what} at position {position} changed by {change:.3g} when only inputs after position "
             f"{position} changed: the output at a position depends on later tokens. Is the causal mask "
             "applied before the softmax, with the lower triangle (tril) kept?")


def is_missing_dropout_rng(err: BaseException) -> bool:
    """Whether `err` is Flax's InvalidRngError for a 'dropout' RNG the call was not given."""
    return type(err).__name__ == "InvalidRngError" and "dropout" in str(err)


def without_dropout_rng(apply: Callable[[], Any], what: str) -> Any:
    """Runs `apply` (a deterministic call) and explains a request for a dropout RNG."""
    try:
        return apply()
    except Exception as err:
        if is_missing_dropout_rng(err):
            fail(f"{what} asked for a 'dropout' RNG when called with deterministic=True: pass "
                 "`deterministic` on to nn.Dropout (a dropout written by hand must do nothing and take no key "
                 "when deterministic is True) so that dropout is off at evaluation time.")
        raise


def learner_function(fn: Any, name: str, positional: tuple[str, ...], keywords: tuple[str, ...] = ()) -> Any:
    """`fn`, once it is known to accept the call the checks make: `positional` arguments then `keywords`
    (else a sentence that shows the lesson's call next to the learner's definition). An untouched stub raises
    its NotImplementedError here, before the check computes anything (see `not_started_yet`)."""
    import inspect

    if not callable(fn):
        fail(f"`{name}` should be a function, but it is a {type(fn).__name__}.")
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):  # an object inspect cannot read: the call itself will tell
        return fn
    try:
        signature.bind(*positional, **{k: None for k in keywords})
    except TypeError:
        wanted = ", ".join(positional + tuple(f"{k}=..." for k in keywords))
        fail(f"{name} should accept ({wanted}), as the lesson says, but it is defined as {name}{signature}.")
    not_started_yet(fn)
    return fn


def program_equations(jaxpr: Any, around: tuple = ()) -> Iterator[tuple[Any, tuple]]:
    """Every equation of a jaxpr (`jax.make_jaxpr(f)(...).jaxpr`) and of the jaxprs nested in it (loop bodies,
    branches, inner jits), each with the equations that enclose it, outermost first: a compiled program's
    operations and loops, for the checks that grade what a function compiles to rather than its wrapper."""
    for eqn in jaxpr.eqns:
        yield eqn, around
        for value in eqn.params.values():
            for sub in value if isinstance(value, (tuple, list)) else (value,):
                if hasattr(sub, "eqns"):
                    yield from program_equations(sub, around + (eqn,))
                elif hasattr(getattr(sub, "jaxpr", None), "eqns"):
                    yield from program_equations(sub.jaxpr, around + (eqn,))


# What an untouched stub's body compiles to (CPython 3.11 to 3.13), a docstring aside: the starter lines some
# stubs give (`B, T, C = x.shape`, `H, D = self.num_heads, C // self.num_heads`: local names, attributes,
# subscripts, arithmetic, unpacking), then `raise NotImplementedError("Task N: ...")`. No call but that one, no
# jump, no return: it can only raise.
_STARTER_OPERATIONS = frozenset({"RESUME", "NOP", "CACHE", "LOAD_FAST", "LOAD_FAST_CHECK", "LOAD_FAST_LOAD_FAST",
                                 "STORE_FAST", "STORE_FAST_STORE_FAST", "LOAD_ATTR", "BINARY_SUBSCR", "BINARY_OP",
                                 "UNPACK_SEQUENCE", "BUILD_TUPLE", "SWAP", "COPY", "POP_TOP", "LOAD_CONST"})
_RAISE_OPERATIONS = frozenset({"CACHE", "PUSH_NULL", "LOAD_CONST", "PRECALL", "CALL", "RAISE_VARARGS"})


def _stub_message(fn: Any) -> tuple[Any, bool, str] | None:
    """(the plain function, whether its body is the raise alone, the message it raises) when `fn` (unwrapped; a
    method's function) is still an untouched stub, else None."""
    import dis
    import inspect

    try:
        fn = inspect.unwrap(fn)
        fn = getattr(fn, "__func__", fn)
        code = fn.__code__
        instructions = [i for i in dis.get_instructions(code) if i.opname != "CACHE"]
    except Exception:  # noqa: BLE001 - not a plain function (a builtin, a cycle of __wrapped__): graded as usual
        return None
    loads = [n for n, i in enumerate(instructions) if i.opname == "LOAD_GLOBAL"]
    if (code.co_freevars or len(loads) != 1 or instructions[loads[0]].argval != "NotImplementedError"
            or not instructions or instructions[-1].opname != "RAISE_VARARGS"):
        return None
    before, after = instructions[:loads[0]], instructions[loads[0] + 1:]
    if not ({i.opname for i in before} <= _STARTER_OPERATIONS and {i.opname for i in after} <= _RAISE_OPERATIONS
            and sum(i.opname == "CALL" for i in after) <= 1):
        return None
    message = next((i.argval for i in after if i.opname == "LOAD_CONST" and isinstance(i.argval, str)), "")
    return fn, {i.opname for i in before} <= {"RESUME", "NOP"}, message


def is_untouched_stub(fn: Any) -> bool:
    """Whether `fn` (a function, or a method such as a Flax module's `__call__`, wrapped or not) is still a stub:
    at most the starter lines some stubs give (`B, T = idx.shape`), then `raise NotImplementedError("...")`, so
    that it can do nothing but raise. One line more of the learner's, even an unused call, and it is not."""
    return _stub_message(fn) is not None


def not_started_yet(fn: Any) -> None:
    """Raises the NotImplementedError("Task N: ...") of `fn` at once when it is still the untouched stub
    (`is_untouched_stub`): the check then says "not started" (or "blocked", for an earlier task's stub) before it
    computes any oracle or compiles the reference, which would cost seconds for each check of a task not begun.
    A stub that is the raise alone is called (its own traceback); one with starter lines raises its message from
    here, since the starter lines need the check's real arguments. Any other function is left alone."""
    found = _stub_message(fn)
    if found is None:
        return
    stub, raise_alone, message = found
    if raise_alone:
        code = stub.__code__
        keywords = code.co_varnames[code.co_argcount:code.co_argcount + code.co_kwonlyargcount]
        stub(*[None] * code.co_argcount, **dict.fromkeys(keywords))
    raise NotImplementedError(message)


def untouched_task(objects: Iterable[Any]) -> Any:
    """The first of a task's objects (its functions and Flax modules, by the task's names) when every one is still
    its untouched stub: each function, and each class's `__call__`, can do nothing but raise NotImplementedError.
    Then no check of the task can pass, and every one would say "not started" once it reached the learner's code:
    the grader says so before a check computes its oracles (tests/conftest.py). None as soon as one is written."""
    first = None
    for obj in objects:
        fn = getattr(obj, "__call__", None) if isinstance(obj, type) else obj
        if not is_untouched_stub(fn):
            return None
        first = fn if first is None else first
    return first
