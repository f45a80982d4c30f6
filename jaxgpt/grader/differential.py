"""The reference-differential oracle: the learner's module and the reference's, run on the same parameters and
inputs, compared submodule by submodule, so that a failing check names the first place where they part.

A module task fixes its parameter tree, so the same parameters load into both modules. `record` runs one
module with `nn.intercept_methods` and notes, in call order, what every submodule received and returned, and
every dropout it asked for (its rate, its `deterministic`, and the value it would drop). Dropout is made
*transparent* while recording: an `nn.Dropout` hands its input back unchanged and Flax's attention runs its
weight dropout as if deterministic. Training mode and evaluation mode then compute the same numbers, so the two
modules can be compared in both, and each dropout is judged by *what it acts on* rather than by the random
mask it would draw (masks depend on module paths, which a correct alternative may name differently).

`first_divergence` walks the reference's record and stops at the first submodule whose input or output the
learner's module does not reproduce; `audit_dropout` matches the learner's dropouts to the reference's by the
value they act on and says which is missing, extra, misplaced, at the wrong rate or never told to train.
`assert_same_behaviour` and `assert_same_dropout` turn both into a check's failure sentence.

Tolerances: both sides run the same float32 operations on the same numbers, except where a correct alternative
orders a reduction differently (einsum against matmul, a fused softmax). For the depth of these models
(a few dozen float32 operations between input and logits) that moves values by a few ulp times the magnitude,
about 1e-6 relative; the nearest real mistakes (a scale of sqrt(C) instead of sqrt(head_size), a missing
bias) move them by 1e-2 or more. `RTOL` and `ATOL` sit at 1e-4 of the reference's magnitude, two decades
from either side.
"""

from __future__ import annotations

import dataclasses
import inspect
import itertools
from typing import Any, Callable, Iterable, Sequence

import numpy as np

RTOL = 1e-4
ATOL = 1e-4  # times max(1, the largest magnitude among the reference's values at that point)


@dataclasses.dataclass
class Event:
    """One thing that happened in a module call: a submodule received (`"in"`) or returned (`"out"`) a value."""

    kind: str  # "in" or "out"
    path: str  # "blocks_0/attn"; "" is the module under test itself
    occurrence: int  # the how-manyth call of that path (a submodule may be called more than once)
    cls: str  # the submodule's class name
    value: Any  # a numpy array, or None when it was not one array
    depth: int

    @property
    def key(self) -> tuple[str, str, int]:
        return (self.kind, self.path, self.occurrence)


@dataclasses.dataclass
class DropoutCall:
    """One dropout the module asked for, on `value`, at `rate`, training unless `deterministic`."""

    path: str
    rate: float
    deterministic: bool
    value: Any  # what it would drop; None for the weight dropout inside Flax's attention layer
    inside_attention: bool = False  # Flax's attention layer drops its own weights, out of sight
    broadcast_dims: tuple = ()  # nn.Dropout's axes along which one draw is shared


@dataclasses.dataclass
class Record:
    events: list[Event]
    dropouts: list[DropoutCall]
    output: Any
    rates: dict[str, float]  # path -> the `dropout_rate` field of each submodule that has one


def _numpy(value: Any) -> Any:
    if isinstance(value, (tuple, list)) or value is None:
        return None
    try:
        array = np.asarray(value)
    except Exception:
        return None
    return array if array.dtype != object else None


def _path(module) -> str:
    scope = getattr(module, "scope", None)
    return "/".join(scope.path) if scope is not None and scope.path else ""


def record(module, variables, *args, deterministic: bool | None = None, rngs: dict | None = None) -> Record:
    """Runs `module.apply(variables, *args, deterministic=...)` eagerly, with dropout transparent, and returns
    what every submodule received and returned. Errors raised by the module propagate unchanged. The last few
    records are remembered (by module, parameters, inputs, mode and key), so that a suite's checks of one
    module's behaviour and of its dropout share them."""
    import flax.linen as nn

    key = _memo_key(module, variables, args, deterministic, rngs)
    if key is not None and key in _MEMO:
        return _MEMO[key]

    events: list[Event] = []
    dropouts: list[DropoutCall] = []
    rates: dict[str, float] = {}
    counts: dict[str, int] = {}
    depth = [0]
    calling = [""]  # the paths of the modules whose __call__ is running, innermost last
    inside_flax_attention = [0]  # nn.MultiHeadDotProductAttention calls in progress (its dropout is noted once)

    def intercept(next_fun, call_args, call_kwargs, context):
        mod = context.module
        if context.method_name != "__call__":
            return next_fun(*call_args, **call_kwargs)
        path = _path(mod)
        if isinstance(mod, nn.Dropout):
            bound = inspect.signature(type(mod).__call__).bind(mod, *call_args, **call_kwargs)
            flag = bound.arguments.get("deterministic")
            flag = mod.deterministic if flag is None else flag
            inputs = bound.arguments.get("inputs")
            dropouts.append(DropoutCall(path, float(mod.rate), bool(flag), _numpy(inputs),
                                        broadcast_dims=tuple(getattr(mod, "broadcast_dims", ()) or ())))
            return inputs
        occurrence = counts.get(path, 0)
        counts[path] = occurrence + 1
        rate = getattr(mod, "dropout_rate", None)
        if isinstance(rate, (int, float)) and path not in rates:
            rates[path] = float(rate)
        if isinstance(mod, nn.MultiHeadDotProductAttention):
            inside_flax_attention[0] += 1
            try:
                return _flax_attention(next_fun, call_args, call_kwargs, mod, path, occurrence)
            finally:
                inside_flax_attention[0] -= 1
        return _call_and_note(next_fun, call_args, call_kwargs, mod, path, occurrence)

    def _flax_attention(next_fun, call_args, call_kwargs, mod, path, occurrence):
        try:
            bound = inspect.signature(type(mod).__call__).bind(mod, *call_args, **call_kwargs)
            flag = bound.arguments.get("deterministic")
        except TypeError:
            flag = None
        flag = mod.deterministic if flag is None else flag
        dropouts.append(DropoutCall(path, float(mod.dropout_rate), bool(flag), None, inside_attention=True))
        call_kwargs = {**call_kwargs, "deterministic": True}
        if mod.deterministic is not None:
            # Flax refuses `deterministic` as a field and an argument at once; the field steps aside for
            # this one call (modules are frozen dataclasses, hence object.__setattr__).
            field = mod.deterministic
            object.__setattr__(mod, "deterministic", None)
            try:
                return _call_and_note(next_fun, call_args, call_kwargs, mod, path, occurrence)
            finally:
                object.__setattr__(mod, "deterministic", field)
        return _call_and_note(next_fun, call_args, call_kwargs, mod, path, occurrence)

    def _call_and_note(next_fun, call_args, call_kwargs, mod, path, occurrence):
        first = call_args[0] if call_args else next(iter(call_kwargs.values()), None)
        events.append(Event("in", path, occurrence, type(mod).__name__, _numpy(first), depth[0]))
        depth[0] += 1
        calling.append(path)
        try:
            out = next_fun(*call_args, **call_kwargs)
        finally:
            depth[0] -= 1
            calling.pop()
        events.append(Event("out", path, occurrence, type(mod).__name__, _numpy(out), depth[0]))
        return out

    def weights_with_dropout(original):
        """nn.dot_product_attention(_weights) drops the attention weights with its own random draw, not with an
        nn.Dropout: noted as a dropout on those weights (made transparent) unless Flax's attention layer,
        noted above, is the caller."""
        signature = inspect.signature(original)

        def weights(*call_args, **call_kwargs):
            if inside_flax_attention[0]:
                return original(*call_args, **call_kwargs)
            bound = signature.bind(*call_args, **call_kwargs)
            bound.apply_defaults()
            if not bound.arguments["dropout_rate"]:
                return original(*call_args, **call_kwargs)  # no dropout asked for here (an nn.Dropout may follow)
            flag = bool(bound.arguments["deterministic"])
            bound.arguments["deterministic"] = True
            out = original(*bound.args, **bound.kwargs)
            where = calling[-1] + "/" if calling[-1] else ""
            dropouts.append(DropoutCall(where + "dot_product_attention", float(bound.arguments["dropout_rate"]),
                                        flag, _numpy(out)))
            return out

        return weights

    kwargs = {} if deterministic is None else {"deterministic": deterministic}
    if rngs is not None:
        kwargs["rngs"] = rngs
    import flax.linen.attention as flax_attention
    original = flax_attention.dot_product_attention_weights
    patched = weights_with_dropout(original)
    try:
        for home in (flax_attention, nn):  # nn.dot_product_attention looks it up in the first
            setattr(home, "dot_product_attention_weights", patched)
        with nn.intercept_methods(intercept):
            output = module.apply(variables, *args, **kwargs)
    finally:
        for home in (flax_attention, nn):
            setattr(home, "dot_product_attention_weights", original)
    result = Record(events, dropouts, output, rates)
    if key is not None:
        _MEMO[key] = result
        while len(_MEMO) > _MEMO_SIZE:
            del _MEMO[next(iter(_MEMO))]
    return result


_MEMO: dict = {}
_MEMO_SIZE = 32  # a suite makes about a dozen records; the catalogue runner and a warm worker repeat them


def _memo_key(module, variables, args, deterministic, rngs):
    """A key that changes with anything the record depends on, or None where one cannot be made (a module
    with unhashable fields): the module (Flax modules compare by class and fields), the bytes of the
    parameters and inputs, the mode, the dropout key and the matmul precision."""
    import hashlib

    import jax

    try:
        digest = hashlib.sha1()
        for leaf in jax.tree_util.tree_leaves((variables, args)):
            array = np.asarray(leaf)
            digest.update(f"{array.dtype}{array.shape}".encode())
            digest.update(np.ascontiguousarray(array).tobytes())
        keys = tuple((name, np.asarray(jax.random.key_data(k)).tobytes()) for name, k in sorted((rngs or {}).items()))
        key = (type(module), module, digest.hexdigest(), jax.tree_util.tree_structure((variables, args)),
               deterministic, keys, str(jax.config.jax_default_matmul_precision))
        hash(key)
        return key
    except Exception:
        return None


# --- Comparing two records ---------------------------------------------------------------------------------


def _close(got: Any, expected: Any) -> bool:
    if got is None or expected is None:
        return got is None and expected is None
    if got.shape != expected.shape:
        return False
    if not np.issubdtype(expected.dtype, np.number) or not np.issubdtype(got.dtype, np.number):
        return bool(np.array_equal(got, expected))
    g, e = got.astype(np.float64), expected.astype(np.float64)
    if not np.isfinite(g).all() or not np.isfinite(e).all():
        return bool(np.array_equal(np.isfinite(g), np.isfinite(e))) and bool(
            np.allclose(np.where(np.isfinite(e), g, 0), np.where(np.isfinite(e), e, 0), rtol=RTOL,
                        atol=ATOL * max(1.0, float(np.abs(np.where(np.isfinite(e), e, 0)).max(initial=0)))))
    scale = max(1.0, float(np.abs(e).max(initial=0.0)))
    return bool(np.allclose(g, e, rtol=RTOL, atol=ATOL * scale))


def _same_values(got: Any, expected: Any) -> bool:
    """`_close`, allowing another layout of the same values: axes of length 1 added or removed, or the axes
    permuted (attention weights kept as (B, T, H, S) rather than (B, H, T, S)). What a dropout acts on is
    judged this way: dropping the same numbers in another layout is the same dropout."""
    if got is None or expected is None:
        return False
    if got.shape == expected.shape:
        return _close(got, expected)
    if got.size != expected.size:
        return False
    g, e = np.squeeze(got), np.squeeze(expected)
    if g.shape == e.shape:
        return _close(g, e)
    if sorted(g.shape) != sorted(e.shape) or g.ndim > 5:
        return False
    return any(tuple(g.shape[i] for i in order) == e.shape and _close(np.transpose(g, order), e)
               for order in itertools.permutations(range(g.ndim)))


def _difference(got: np.ndarray, expected: np.ndarray) -> str:
    if got is None:
        return "it is not one array"
    if got.shape != expected.shape:
        return f"its shape is {tuple(got.shape)}, the reference's {tuple(expected.shape)}"
    diff = np.abs(got.astype(np.float64) - expected.astype(np.float64))
    diff = np.where(np.isnan(diff), np.inf, diff)
    where = tuple(int(i) for i in np.unravel_index(np.argmax(diff), diff.shape)) if diff.ndim else ()
    return (f"the largest difference is {float(diff[where]):.3g} at index {where} "
            f"(reference {float(expected[where]):.5g}, yours {float(got[where]):.5g})")


@dataclasses.dataclass
class Divergence:
    """Where the learner's module first parts from the reference."""

    event: Event  # the reference's event that the learner's does not reproduce
    got: Any
    agreed: list[str]  # paths whose outputs agreed before it, in call order
    never_called: list[str]  # reference submodules the learner's module never called before that point
    children: list[str]  # for an "out" divergence: the direct submodules whose calls agreed inside it

    def sentence(self, what: str) -> str:
        ev = self.event
        name = f"`{ev.path}`" if ev.path else what
        expected = ev.value
        diff = _difference(self.got, expected) if expected is not None else "it differs"
        before = ""
        if self.agreed:
            shown = self.agreed[-5:]
            before = (f"{', '.join(f'`{p}`' for p in shown)}" + (" (and what came before)" if len(self.agreed) > 5
                                                                   else "")
                      + (" agrees" if len(shown) == 1 else " agree") + " with the reference; ")
        if ev.kind == "in":
            parent = ev.path.rsplit("/", 1)[0] if "/" in ev.path else ""
            where = f"`{parent}`" if parent else what
            text = (f"{before}the input of {name} does not ({diff}). {name} itself may be right: look at what "
                    f"{where} computes before it calls {name}.")
        elif self.children:
            text = (f"{before}the output of {name} does not ({diff}), although everything it called agrees "
                    f"({', '.join(f'`{c}`' for c in self.children[-4:])}): look at how {name} combines them "
                    f"(the residual adds, the order of the steps, what it returns).")
        else:
            text = (f"{before}the output of {name} does not ({diff}), on the same input: look at {name}'s own "
                    f"computation.")
        if self.never_called:
            text += (" Also, the reference calls " + ", ".join(f"`{p}`" for p in self.never_called[:4])
                     + " before that point and yours never does.")
        return text[0].upper() + text[1:]


def _agrees(got: Any, expected: Any, path: str) -> bool:
    """`_close`; inside the module (not for its own input or output) also the same values with axes of length 1
    added or dropped, which broadcasting makes the same (positions embedded as (1, T) rather than (T,))."""
    if _close(got, expected):
        return True
    return (bool(path) and got is not None and expected is not None and got.size == expected.size
            and np.squeeze(got).shape == np.squeeze(expected).shape and _close(np.squeeze(got), np.squeeze(expected)))


def first_divergence(got: Record, expected: Record) -> Divergence | None:
    """The first of the reference's events that the learner's record does not reproduce, or None."""
    mine = {ev.key: ev for ev in got.events}
    agreed: list[str] = []
    never: list[str] = []
    stack: list[list[str]] = [[]]  # agreeing direct children of each open call
    for ev in expected.events:
        other = mine.get(ev.key)
        if ev.kind == "in":
            stack.append([])
        if other is not None and other.cls != ev.cls:
            # Another kind of submodule under the same name (a correct alternative may keep its own kernel
            # holder where the reference has a Dense): its inputs and outputs follow another contract, so it
            # is not compared; what surrounds it still is.
            if ev.kind == "out":
                stack.pop()
            continue
        if other is None:
            if ev.kind == "out" and ev.path and ev.occurrence == 0 and ev.path not in never:
                never.append(ev.path)
            if ev.kind == "out":
                stack.pop()
            continue
        if ev.value is not None and not _agrees(other.value, ev.value, ev.path):
            children = stack[-1] if ev.kind == "out" else []
            return Divergence(ev, other.value, agreed, never, list(children))
        if ev.kind == "out":
            stack.pop()
            stack[-1].append(ev.path)
            if ev.path:
                agreed.append(ev.path)
    return None


def assert_same_behaviour(learner, reference, variables, inputs: Iterable[tuple], what: str, *,
                          modes: Sequence[bool] = (True, False), task=None, build=None) -> None:
    """The learner's module computes what the reference's does, submodule by submodule, for every input in
    `inputs` (each a tuple of positional arguments) and in each mode (`deterministic` True and False, dropout
    transparent; None calls without `deterministic`, for a module that takes none). On a mismatch, names the
    first place where they part and, where a catalogued mistake of `task` gives exactly the learner's output
    (`build(view)` makes that mistake's module), its diagnosis."""
    from jaxgpt.grader import checks

    for args in inputs:
        for deterministic in modes:
            expected = record(reference, variables, *args, deterministic=deterministic, rngs=_rngs())
            got = record(learner, variables, *args, deterministic=deterministic, rngs=_rngs())
            if deterministic:
                awake = [c for c in got.dropouts if c.rate > 0 and not c.deterministic]
                if awake:
                    sites = ", ".join(f"`{c.path}`" for c in awake[:3])
                    checks.fail(f"{what} was called with deterministic=True, but its dropout at {sites} still runs "
                                "in training mode, so evaluation is random: give each dropout the module's "
                                "`deterministic`, not a fixed deterministic=False.")
            if isinstance(got.output, (tuple, list)):
                checks.fail(f"{what} returns a {type(got.output).__name__} of {len(got.output)} items; it should "
                            f"return one array, shaped {tuple(np.shape(expected.output))}.")
            divergence = first_divergence(got, expected)
            if divergence is None:
                continue
            shapes = ", ".join(f"{tuple(np.shape(a))}" for a in args)
            mode = ("" if deterministic is None else " with deterministic=True" if deterministic
                    else " with deterministic=False (dropout made transparent)")
            message = (f"{what} and the reference, given the same parameters and input {shapes}{mode}, "
                       f"part ways. " + divergence.sentence(what))
            if deterministic is False and first_divergence(
                    record(learner, variables, *args, deterministic=True), expected) is None:
                message += ("\n  With deterministic=True they agree, so something other than dropout depends on "
                            "`deterministic` (only nn.Dropout and the attention layer's dropout should).")
            # Only a wrong output can be looked up: where the outputs agree and only an intermediate differs, a
            # catalogued mistake that leaves the output unchanged (a misplaced dropout) would be named wrongly.
            wrong_output = _numpy(got.output) is not None and not _close(_numpy(got.output), _numpy(expected.output))
            cause = (catalogue_diagnosis(task, build, variables, args, got.output)
                     if task and build and wrong_output else None)
            if cause:
                message += f"\n  Likely cause (yours gives exactly what this known mistake gives): {cause}"
            checks.fail(message)


def _rngs():
    import jax
    return {"dropout": jax.random.key(0)}


# --- Dropout, by what it drops -------------------------------------------------------------------------------


def _describe_value(value: Any, events: list[Event], names: dict[str, str]) -> str:
    """In words, what a value is in the reference's computation: the output or input of one of its submodules."""
    if value is None:
        return "a value"
    for kind in ("out", "in"):
        for ev in events:
            if ev.kind == kind and ev.value is not None and _same_values(value, ev.value):
                label = names.get(f"{kind}:{ev.path}")
                if label:
                    return label
                if not ev.path:
                    return "the module's input" if kind == "in" else "the module's output"
                return f"the {'output' if kind == 'out' else 'input'} of `{ev.path}`"
    return ""


def audit_dropout(learner_record: Record, reference_record: Record, rate: float,
                  names: dict[str, str] | None = None,
                  describe: Callable[[np.ndarray], str | None] | None = None) -> list[str]:
    """Sentences for every way the learner's dropouts differ from the reference's, judged by the value each acts
    on (with `rate`, the model's `dropout_rate`, to say which rate is right). `names` words the reference's
    sites: `"Dropout path" -> words` or `"out:<path>"`/`"in:<path>"` -> words for a submodule's output/input.
    `describe(value)` may word a value the learner drops that is no submodule's input or output (the scores
    before a softmax), recomputed by the caller; None when it is not one it knows."""
    names = names or {}
    problems: list[str] = []
    ref_events = reference_record.events
    mine_events = learner_record.events

    def site(call: DropoutCall) -> str:
        return (names.get(call.path) or _describe_value(call.value, ref_events, names)
                or f"the value dropped at `{call.path}`")

    def learner_site(call: DropoutCall) -> str:
        words = _describe_value(call.value, ref_events, names)
        if words:
            return words
        if describe is not None and call.value is not None:
            try:
                words = describe(call.value)
            except Exception:
                words = None
            if words:
                return words
        words = _describe_value(call.value, mine_events, {})
        return (words.replace("the output of", "the output of your") if words else "") or \
            f"a value the reference never drops (at `{call.path}`)"

    # The weight dropout inside Flax's attention layer is matched by path: it acts out of sight.
    ref_attn = {c.path: c for c in reference_record.dropouts if c.inside_attention}
    my_attn = {c.path: c for c in learner_record.dropouts if c.inside_attention}
    for path, ref in ref_attn.items():
        mine = my_attn.get(path)
        if mine is None:
            continue  # a differently built attention: its tree check and outputs speak for it
        if mine.rate != ref.rate:
            problems.append(f"`{path}` (Flax's attention layer) drops its attention weights at rate {mine.rate:g}; "
                            f"it should get the model's dropout_rate ({rate:g}): pass dropout_rate=... to it.")
        elif ref.rate and mine.deterministic and not ref.deterministic:
            problems.append(f"`{path}` runs with deterministic=True in training, so its weight dropout never "
                            "happens: pass `deterministic` on to it.")

    expected = [c for c in reference_record.dropouts if not c.inside_attention and c.rate > 0]
    mine = [c for c in learner_record.dropouts if not c.inside_attention and (c.rate > 0 or rate > 0)]
    unmatched_mine = list(range(len(mine)))
    unmatched_ref = []
    for ref in expected:
        match = next((i for i in unmatched_mine if _same_values(mine[i].value, ref.value)), None)
        if match is None:
            unmatched_ref.append(ref)
            continue
        unmatched_mine.remove(match)
        call = mine[match]
        if call.rate != ref.rate:
            problems.append(f"the dropout on {site(ref)} uses rate {call.rate:g}; it should use the module's "
                            f"dropout_rate ({ref.rate:g}), not a number of its own.")
        elif call.deterministic and not ref.deterministic:
            problems.append(f"the dropout on {site(ref)} runs with deterministic=True in training, so it never "
                            "drops anything: pass `deterministic` on to it.")
        elif call.broadcast_dims != ref.broadcast_dims:
            problems.append(f"the dropout on {site(ref)} is built with broadcast_dims={call.broadcast_dims}, so "
                            "one draw is shared along those axes and whole rows are dropped at once; "
                            + ("leave broadcast_dims out: each value is dropped on its own." if not ref.broadcast_dims
                               else f"the lesson's uses broadcast_dims={ref.broadcast_dims}."))
    extras = [mine[i] for i in unmatched_mine if mine[i].rate > 0]
    for ref in unmatched_ref:
        if extras:
            call = extras.pop(0)
            problems.append(f"the dropout that should act on {site(ref)} acts on {learner_site(call)} instead.")
        else:
            problems.append(f"the dropout on {site(ref)} is missing.")
    for call in extras:
        twice = any(_same_values(call.value, ref.value) for ref in expected)
        if twice:
            twin = next(r for r in expected if _same_values(call.value, r.value))
            problems.append(f"the dropout on {site(twin)} is applied twice: there is one dropout too many.")
        else:
            problems.append(f"there is an extra dropout, on {learner_site(call)}; the reference drops nothing "
                            "there.")
    return problems


def assert_same_dropout(learner, reference, variables, args: tuple, what: str, rate: float,
                        names: dict[str, str] | None = None,
                        describe: Callable[[np.ndarray], str | None] | None = None) -> None:
    """In training mode, the learner's module drops the same values as the reference's, at the same rate."""
    from jaxgpt.grader import checks

    expected = record(reference, variables, *args, deterministic=False, rngs=_rngs())
    got = record(learner, variables, *args, deterministic=False, rngs=_rngs())
    divergence = first_divergence(got, expected)
    if divergence is not None:
        checks.fail(f"not checked: in training mode (dropout made transparent) {what} does not compute what the "
                    "reference does, so its dropouts cannot be matched to the reference's. "
                    + divergence.sentence(what))
    field_problems = [f"`{path}` is built with dropout_rate={value:g}; pass it the model's dropout_rate "
                      f"({expected.rates[path]:g})." for path, value in got.rates.items()
                      if path in expected.rates and value != expected.rates[path]]
    # A submodule built with the wrong dropout_rate: its own dropouts, at that rate, need no second sentence.
    said = {f" uses rate {value:g};" for path, value in got.rates.items()
            if path in expected.rates and value != expected.rates[path]}
    audit = [p for p in audit_dropout(got, expected, rate, names, describe) if not any(s in p for s in said)]
    problems = field_problems + audit
    if problems:
        checks.fail(f"with deterministic=False and dropout_rate={rate:g}, {what}'s dropouts differ from the "
                    f"lesson's:\n" + "\n".join(f"  - {p}" for p in dict.fromkeys(problems)))


# --- The catalogue as a diagnosis table ----------------------------------------------------------------------

_CATALOGUE_CACHE: dict = {}



def catalogue_diagnosis(task, build: Callable[[Any], Any], variables, args: tuple, got: Any) -> str | None:
    """The DIAGNOSIS (or MISTAKE) of the first catalogued mistake of `task` whose module, built by
    `build(view)` from that entry's implementation and run on the same parameters and input, gives exactly
    the learner's output. A cause said this way has been recomputed, not guessed."""
    from jaxgpt import settings

    got = _numpy(got)
    if got is None:
        return None
    excluded = settings.catalogue_exclude()
    for entry, view in _catalogue_views(task):
        if str(entry.path) == excluded or entry.kind != "mistake":
            continue
        try:
            module = build(view)
            key = _memo_key(module, variables, args, None, None)
            if key is not None and key in _CATALOGUE_OUTPUTS:
                out = _CATALOGUE_OUTPUTS[key]
            else:
                out = _numpy(module.apply(variables, *args))
                if key is not None:
                    _CATALOGUE_OUTPUTS[key] = out
        except Exception:
            continue
        if out is not None and out.shape == got.shape and _close(got, out):
            # What the learner did, in the catalogue's words, and the diagnosis words the entry is known by.
            return entry.description + (f" ({entry.diagnosis})" if entry.diagnosis else "")
    return None


# Each catalogued mistake's output, by module, parameters and input: the catalogue runner, `jaxgpt watch` and
# a notebook's repeated checks ask for the same ones again.
_CATALOGUE_OUTPUTS: dict = {}


def _catalogue_views(task):
    import tempfile
    from pathlib import Path

    from jaxgpt.grader import implementation, mistakes

    if task.number not in _CATALOGUE_CACHE:
        views = []
        workdir = Path(tempfile.mkdtemp(prefix="jaxgpt-diagnosis-"))
        for entry in mistakes.entries(task):
            if entry.kind != "mistake":
                continue
            try:
                views.append((entry, implementation.resolve(mistakes.overlay(entry, workdir)).for_task(task)))
            except Exception:
                continue
        _CATALOGUE_CACHE[task.number] = views
    return _CATALOGUE_CACHE[task.number]
