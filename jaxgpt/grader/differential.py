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

A dropout written by hand (a key from `self.make_rng('dropout')`, a mask from `jax.random`, no nn.Dropout)
cannot be made transparent. `record` notes every key taken from the 'dropout' stream and who took it; a module
that takes one for itself is compared in training mode by behaviour instead, mask for mask: both modules get
the same keys in call order (`Keyed`), so an equal dropout gives equal numbers
(`hand_written_dropout_problem`, which also says how many masks each draws, the rate a mask keeps, whether the
kept values are scaled, and where the two first part). With equal masks the only difference left is how the
kept values are scaled (x / (1 - rate), x * (1 / (1 - rate)), a mask multiplied in): at most an ulp, far inside
the tolerances below; a wrong rate, place or scaling changes values by the size of the values themselves.

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
    position: int = 0  # how many events came before it


@dataclasses.dataclass
class Draw:
    """One key the module took from the 'dropout' RNG stream, in call order, and who took it."""

    path: str  # the module that asked for it
    by: str  # "Dropout" (nn.Dropout), "attention" (Flax's attention layer), "dot_product_attention", or "hand"
    keep: float | None = None  # its mask's probability of keeping a value: for a key drawn by hand the p given
    shape: tuple | None = None  # to jax.random.bernoulli, for nn.Dropout (when `Keyed`) 1 - rate; the mask's shape
    key: Any = dataclasses.field(default=None, repr=False)  # the key itself, to know it again (never compared)


@dataclasses.dataclass
class Record:
    events: list[Event]
    dropouts: list[DropoutCall]
    output: Any
    rates: dict[str, float]  # path -> the `dropout_rate` field of each submodule that has one
    draws: list[Draw] = dataclasses.field(default_factory=list)

    @property
    def drawn_by_hand(self) -> list[Draw]:
        """The keys the module took from the 'dropout' stream for a dropout of its own making: neither
        nn.Dropout, nor Flax's attention layer, nor nn.dot_product_attention's dropout_rng."""
        return [d for d in self.draws if d.by == "hand"]


@dataclasses.dataclass(frozen=True)
class Keyed:
    """How `record` runs dropout for real instead of transparently: the n-th key any part of the module takes
    from the 'dropout' stream is `fold_in(key(seed), n)`, whoever asks (masks then depend on call order, not on
    module paths), and every nn.Dropout draws its mask by `formula` (see `_keep_mask`). `overrides` change the
    n-th draw of an nn.Dropout, for recomputing a suspected mistake: ((n, rate or None, scaled), ...)."""

    seed: int = 0
    formula: str = "bernoulli"
    overrides: tuple = ()


# A hand-written dropout may draw its mask another way than nn.Dropout does, equally right: each is tried.
MASK_FORMULAS = ("bernoulli", "uniform_above_rate")


def _keep_mask(formula: str, key, rate: float, shape):
    """The mask of kept values: jax.random.bernoulli(key, 1 - rate, shape) as nn.Dropout draws it (the same as
    jax.random.uniform(key, shape) < 1 - rate), or jax.random.uniform(key, shape) > rate."""
    import jax

    if formula == "uniform_above_rate":
        return jax.random.uniform(key, shape) > rate
    return jax.random.uniform(key, shape) < 1.0 - rate  # what jax.random.bernoulli(key, 1 - rate, shape) computes


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


def record(module, variables, *args, deterministic: bool | None = None, rngs: dict | None = None,
           keyed: Keyed | None = None) -> Record:
    """Runs `module.apply(variables, *args, deterministic=...)` eagerly, with dropout transparent, and returns
    what every submodule received and returned, every dropout it asked for and every key it took from the
    'dropout' stream. Errors raised by the module propagate unchanged. The last few records are remembered (by
    module, parameters, inputs, mode and key), so that a suite's checks of one module's behaviour and of its
    dropout share them.

    A dropout written by hand (a key from self.make_rng('dropout'), a mask from jax.random) cannot be made
    transparent: it is noted as a draw `by="hand"` and runs for real. With `keyed`, no dropout is transparent:
    every part of the module takes its keys from one sequence in call order (see `Keyed`), so that a module
    whose dropout is hand-written can be compared with the reference's mask for mask."""
    import flax.linen as nn

    key = _memo_key(module, variables, args, deterministic, rngs, keyed)
    if key is not None and key in _MEMO:
        _MEMO[key] = _MEMO.pop(key)  # the most recently used last: the reference's records outlive the learner's
        return _MEMO[key]

    events: list[Event] = []
    dropouts: list[DropoutCall] = []
    draws: list[Draw] = []
    rates: dict[str, float] = {}
    counts: dict[str, int] = {}
    depth = [0]
    calling = [""]  # the paths of the modules whose __call__ is running, innermost last
    inside_flax_attention = [0]  # nn.MultiHeadDotProductAttention calls in progress (its dropout is noted once)
    overrides = {n: (rate, scaled) for n, rate, scaled in (keyed.overrides if keyed else ())}

    def next_key(path: str, by: str):
        import jax

        draw_key = jax.random.fold_in(jax.random.key(keyed.seed), len(draws))
        draws.append(Draw(path, by, key=draw_key))
        return draw_key

    def claim(draw_key, by: str) -> None:
        """A key the module took itself and then gave to nn.Dropout(rng=...) or nn.dot_product_attention."""
        for d in draws:
            if d.key is draw_key and d.by == "hand":
                d.by = by

    def intercept(next_fun, call_args, call_kwargs, context):
        mod = context.module
        if context.method_name != "__call__":
            return next_fun(*call_args, **call_kwargs)
        path = _path(mod)
        if isinstance(mod, nn.Dropout):
            return _dropout(mod, path, call_args, call_kwargs)
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

    def _dropout(mod, path, call_args, call_kwargs):
        bound = inspect.signature(type(mod).__call__).bind(mod, *call_args, **call_kwargs)
        flag = bound.arguments.get("deterministic")
        flag = mod.deterministic if flag is None else flag
        inputs = bound.arguments.get("inputs")
        given_key = bound.arguments.get("rng")
        if given_key is not None:
            claim(given_key, "Dropout")
        dims = tuple(getattr(mod, "broadcast_dims", ()) or ())
        dropouts.append(DropoutCall(path, float(mod.rate), bool(flag), _numpy(inputs), broadcast_dims=dims,
                                    position=len(events)))
        if keyed is None or flag or not mod.rate:
            return inputs
        import jax.numpy as jnp

        if given_key is None:
            given_key = next_key(path, "Dropout")
        rate, scaled = overrides.get(len(draws) - 1, (None, True))
        rate = float(mod.rate) if rate is None else rate
        if rate >= 1.0:
            return jnp.zeros_like(inputs)
        shape = [1 if i in {d % jnp.ndim(inputs) for d in dims} else n for i, n in enumerate(jnp.shape(inputs))]
        for d in draws:
            if d.key is given_key:
                d.keep, d.shape = 1.0 - rate, tuple(shape)
        keep = jnp.broadcast_to(_keep_mask(keyed.formula, given_key, rate, tuple(shape)), jnp.shape(inputs))
        return jnp.where(keep, inputs / (1.0 - rate) if scaled else inputs, jnp.zeros_like(inputs))

    def _flax_attention(next_fun, call_args, call_kwargs, mod, path, occurrence):
        try:
            bound = inspect.signature(type(mod).__call__).bind(mod, *call_args, **call_kwargs)
            flag = bound.arguments.get("deterministic")
        except TypeError:
            flag = None
        flag = mod.deterministic if flag is None else flag
        dropouts.append(DropoutCall(path, float(mod.dropout_rate), bool(flag), None, inside_attention=True,
                                    position=len(events)))
        if keyed is not None:
            return _call_and_note(next_fun, call_args, call_kwargs, mod, path, occurrence)  # its own dropout, real
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
        nn.Dropout: noted as a dropout on those weights (made transparent unless `keyed`) unless Flax's attention
        layer, noted above, is the caller."""
        signature = inspect.signature(original)

        def weights(*call_args, **call_kwargs):
            if inside_flax_attention[0]:
                return original(*call_args, **call_kwargs)
            bound = signature.bind(*call_args, **call_kwargs)
            bound.apply_defaults()
            if bound.arguments.get("dropout_rng") is not None:
                claim(bound.arguments["dropout_rng"], "dot_product_attention")
            if not bound.arguments["dropout_rate"]:
                return original(*call_args, **call_kwargs)  # no dropout asked for here (an nn.Dropout may follow)
            flag = bool(bound.arguments["deterministic"])
            if keyed is None:
                bound.arguments["deterministic"] = True
            out = original(*bound.args, **bound.kwargs)
            where = calling[-1] + "/" if calling[-1] else ""
            dropouts.append(DropoutCall(where + "dot_product_attention", float(bound.arguments["dropout_rate"]),
                                        flag, _numpy(out), position=len(events)))
            return out

        return weights

    def make_rng_noted(original):
        """Scope.make_rng, noting every key taken from the 'dropout' stream (and handing out the sequence's
        keys when `keyed`)."""

        def make_rng(scope, name="params"):
            if name != "dropout":
                return original(scope, name)
            path = "/".join(scope.path) if getattr(scope, "path", None) else ""
            by = "attention" if inside_flax_attention[0] else "hand"
            if keyed is not None:
                return next_key(path, by)
            draw_key = original(scope, name)
            draws.append(Draw(path, by, key=draw_key))
            return draw_key

        return make_rng

    def bernoulli_noted(original):
        """jax.random.bernoulli, noting the p and shape of a draw made with a key taken by hand."""
        signature = inspect.signature(original)

        def bernoulli(*call_args, **call_kwargs):
            try:
                bound = signature.bind(*call_args, **call_kwargs)
                bound.apply_defaults()
                given = bound.arguments.get("key")
                for d in draws:
                    if d.key is given and d.by == "hand" and d.keep is None:
                        d.keep = float(bound.arguments.get("p"))
                        shape = bound.arguments.get("shape")
                        d.shape = None if shape is None else tuple(shape)
            except Exception:
                pass  # a p that is an array, a traced value: nothing to note
            return original(*call_args, **call_kwargs)

        return bernoulli

    kwargs = {} if deterministic is None else {"deterministic": deterministic}
    if rngs is not None:
        kwargs["rngs"] = rngs
    import flax.linen.attention as flax_attention
    import jax
    from flax.core import scope as flax_scope

    original = flax_attention.dot_product_attention_weights
    patched = weights_with_dropout(original)
    original_make_rng = flax_scope.Scope.make_rng
    original_bernoulli = jax.random.bernoulli
    try:
        for home in (flax_attention, nn):  # nn.dot_product_attention looks it up in the first
            setattr(home, "dot_product_attention_weights", patched)
        flax_scope.Scope.make_rng = make_rng_noted(original_make_rng)
        jax.random.bernoulli = bernoulli_noted(original_bernoulli)
        with nn.intercept_methods(intercept):
            output = module.apply(variables, *args, **kwargs)
    finally:
        for home in (flax_attention, nn):
            setattr(home, "dot_product_attention_weights", original)
        flax_scope.Scope.make_rng = original_make_rng
        jax.random.bernoulli = original_bernoulli
    result = Record(events, dropouts, output, rates, draws)
    if key is not None:
        _MEMO[key] = result
        while len(_MEMO) > _MEMO_SIZE:
            del _MEMO[next(iter(_MEMO))]
    return result


def drawn_keys(module, variables, *args, **kwargs) -> list[tuple[Draw, list[bytes]]]:
    """Every key `module.apply(variables, *args, **kwargs)` takes from the 'dropout' stream, in call order, with
    who took it (a `Draw`: nn.Dropout, Flax's attention layer, or by hand) and the key's bytes each time it is
    used: a key taken inside nn.scan is one traced value used once per layer, read with a pure callback, so that
    keys shared by every layer show."""
    import flax.linen as nn
    import jax
    import jax.numpy as jnp
    from flax.core import scope as flax_scope

    stack: list[Any] = []
    found: list[tuple[Draw, list[bytes]]] = []

    def intercept(next_fun, call_args, call_kwargs, context):
        stack.append(context.module)
        try:
            return next_fun(*call_args, **call_kwargs)
        finally:
            stack.pop()

    original = flax_scope.Scope.make_rng

    def make_rng(scope, name="params"):
        rng = original(scope, name)
        if name != "dropout":
            return rng
        by = ("Dropout" if stack and isinstance(stack[-1], nn.Dropout) else
              "attention" if any(isinstance(m, nn.MultiHeadDotProductAttention) for m in stack) else "hand")
        seen: list[bytes] = []
        found.append((Draw("/".join(scope.path) if scope.path else "", by), seen))
        data = jax.random.key_data(rng)

        def note(value):
            seen.append(np.asarray(value).tobytes())
            return np.zeros((), np.uint32)

        zero = jax.pure_callback(note, jax.ShapeDtypeStruct((), jnp.uint32), data)
        return jax.random.wrap_key_data(data + zero, impl=jax.random.key_impl(rng))

    try:
        flax_scope.Scope.make_rng = make_rng
        with nn.intercept_methods(intercept):
            module.apply(variables, *args, **kwargs)
        jax.effects_barrier()
    finally:
        flax_scope.Scope.make_rng = original
    return found


_MEMO: dict = {}
# A suite makes a few dozen records. The learner's are made anew at every check (their module is imported
# afresh), the reference's are the same at every check of a task: the memo keeps the most recently used, enough
# for a worker's checks of one task after another to find the reference's records still there.
_MEMO_SIZE = 256


def _memo_key(module, variables, args, deterministic, rngs, keyed=None):
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
               deterministic, keys, keyed, str(jax.config.jax_default_matmul_precision))
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
            shapes = ", ".join(f"{tuple(np.shape(a))}" for a in args)
            if deterministic is False and got.drawn_by_hand:
                # Its own dropout runs for real: compared mask for mask instead (see hand_written_dropout_problem).
                problem = hand_written_dropout_problem(learner, reference, variables, args, what, None)
                if problem:
                    checks.fail(f"{what} and the reference, given the same parameters and input {shapes} with "
                                f"deterministic=False, part ways. {problem}")
                continue
            divergence = first_divergence(got, expected)
            if divergence is None:
                continue
            mode = ("" if deterministic is None else " with deterministic=True" if deterministic
                    else " with deterministic=False (dropout made transparent)")
            message = (f"{what} and the reference, given the same parameters and input {shapes}{mode}, "
                       f"part ways. " + divergence.sentence(what))
            if deterministic and got.drawn_by_hand:
                message += (f"\n  With deterministic=True your module still takes a key from the 'dropout' RNG at "
                            f"`{got.drawn_by_hand[0].path or what}`: a dropout written by hand must do nothing "
                            "(and draw nothing) when deterministic is True.")
            if deterministic is False and first_divergence(
                    record(learner, variables, *args, deterministic=True), expected) is None:
                message += ("\n  With deterministic=True they agree, so something other than dropout depends on "
                            "`deterministic` (only nn.Dropout and the attention layer's dropout should)."
                            + _OWN_KEY * (not got.dropouts and not got.draws and bool(expected.dropouts)))
            # Only a wrong output can be looked up: where the outputs agree and only an intermediate differs, a
            # catalogued mistake that leaves the output unchanged (a misplaced dropout) would be named wrongly.
            wrong_output = _numpy(got.output) is not None and not _close(_numpy(got.output), _numpy(expected.output))
            cause = (catalogue_diagnosis(task, build, variables, args, got.output)
                     if task and build and wrong_output else None)
            if cause:
                message += f"\n  Likely cause (yours gives exactly what this known mistake gives): {cause}"
            checks.fail(message)


# Said when a module's training mode differs while it uses no nn.Dropout and takes no key from the stream.
_OWN_KEY = (" If that is a dropout written by hand: take its key from self.make_rng('dropout'), the stream that "
            "apply(..., rngs={'dropout': key}) provides, not from a key of its own.")


def _rngs():
    import jax
    return {"dropout": jax.random.key(0)}


# --- Dropout written by hand ---------------------------------------------------------------------------------
# A learner may write dropout without nn.Dropout: keep = jax.random.bernoulli(self.make_rng('dropout'), 1 - rate,
# x.shape); x = jnp.where(keep, x / (1 - rate), 0). Such a dropout cannot be made transparent (its mask and its
# scaling are the learner's own code), so a module that takes a key from the 'dropout' stream for itself is
# judged by behaviour instead: the learner's module and the reference's run in training mode with every key
# taken from the stream in call order handed out from one sequence, and the reference's nn.Dropout drawing its
# mask from its key as a hand-written dropout would. Equal dropouts (same place, rate, scaling, number) then give
# the same numbers, to float32 roundoff, at every submodule; any other gives other masks or other values. The
# two usual ways to draw a mask (jax.random.bernoulli(key, 1 - rate, shape), which nn.Dropout uses, and
# jax.random.uniform(key, shape) > rate) are both tried, so either is accepted.


def _words_for_draw(draw: Draw, names: dict[str, str], what: str) -> str:
    where = f"`{draw.path}`" if draw.path else what
    if draw.by == "attention":
        return names.get(draw.path + ":attention") or f"the attention weights inside {where} (Flax's attention layer)"
    if draw.by == "Dropout":
        return names.get(draw.path) or f"the nn.Dropout at {where}"
    if draw.by == "dot_product_attention":
        return f"the attention weights in {where} (nn.dot_product_attention's dropout)"
    return f"your dropout in {where}"


def _keyed_records(learner, reference, variables, args, spec: Keyed, reference_spec: Keyed | None = None):
    expected = record(reference, variables, *args, deterministic=False, rngs=_rngs(), keyed=reference_spec or spec)
    got = record(learner, variables, *args, deterministic=False, rngs=_rngs(), keyed=spec)
    return got, expected


def _agree_keyed(got: Record, expected: Record) -> bool:
    return first_divergence(got, expected) is None and _close(_numpy(got.output), _numpy(expected.output))


def hand_written_dropout_problem(learner, reference, variables, args: tuple, what: str, rate: float | None,
                                 names: dict[str, str] | None = None) -> str | None:
    """None when `learner`, whose dropout is written by hand, drops what the reference drops in training mode,
    mask for mask (see above); else the sentences that say how they differ: how many masks each draws, the rate
    a hand-drawn mask keeps (read from jax.random.bernoulli's p, and recomputed), a dropout that does not
    scale, the value whose zeros are a hand-drawn mask's, and the first submodule where the two part."""
    names = names or {}
    rate = getattr(reference, "dropout_rate", None) if rate is None else rate
    for formula in MASK_FORMULAS:
        got, expected = _keyed_records(learner, reference, variables, args, Keyed(formula=formula))
        if _agree_keyed(got, expected):
            return None
    got, expected = _keyed_records(learner, reference, variables, args, Keyed())
    hand = got.drawn_by_hand
    where = ", ".join(dict.fromkeys(f"`{d.path}`" if d.path else what for d in hand))
    intro = (f"{what} writes its own dropout (it takes keys from the 'dropout' RNG stream in {where}, not through "
             "nn.Dropout), so its dropout was judged by what it does: run in training mode beside the reference with "
             "the same keys, handed out in call order, the reference's masks drawn as nn.Dropout draws them "
             "(keep = jax.random.bernoulli(key, 1 - rate, x.shape), kept values divided by 1 - rate), the two "
             "differ.")
    causes: list[str] = []
    n_ref, n_got = len(expected.draws), len(got.draws)
    if n_got != n_ref:
        listed = "; ".join(_words_for_draw(d, names, what) for d in expected.draws[:8])
        causes.append(f"The reference draws {n_ref} dropout mask{'s' if n_ref != 1 else ''} in this call ({listed}); "
                      f"yours draws {n_got}: "
                      + ("a dropout is missing (or takes its key from elsewhere than self.make_rng('dropout'))."
                         if n_got < n_ref else "there is an extra dropout."))
    wrong = [(i, d) for i, d in enumerate(got.draws) if rate is not None and d.by == "hand" and d.keep is not None
             and abs((1.0 - d.keep) - rate) > 1e-6]
    for keep in dict.fromkeys(d.keep for _, d in wrong):
        at = ", ".join(dict.fromkeys(f"`{d.path or what}`" for _, d in wrong if d.keep == keep))
        causes.append(f"Your dropout in {at} keeps each value with probability {keep:g} (the p given to "
                      f"jax.random.bernoulli), a dropout rate of {1.0 - keep:g}; it should use the module's "
                      f"dropout_rate ({rate:g}): keep each value with probability 1 - self.dropout_rate.")
    if n_got == n_ref:
        for d, ref in zip(got.draws, expected.draws):
            if d.by == "hand" and d.shape is not None and ref.shape is not None and d.shape != ref.shape:
                causes.append(f"Your dropout in `{d.path or what}` draws a mask of shape {d.shape}, where the "
                              f"reference's dropout there draws one of shape {ref.shape}, the shape of the value it "
                              "drops: one draw per value, x.shape (a smaller mask shares each draw along the missing "
                              "axes, dropping whole rows at once).")
    if wrong and n_got == n_ref:
        spec = Keyed(overrides=tuple((i, 1.0 - d.keep, True) for i, d in wrong))
        if _agree_keyed(got, _keyed_records(learner, reference, variables, args, Keyed(), spec)[1]):
            causes.append("(Recomputed: the reference with its dropout at that rate there gives exactly your "
                          "numbers.)")
    if not causes:
        hand_at = tuple((i, None, False) for i, d in enumerate(got.draws) if d.by == "hand")
        for formula in MASK_FORMULAS:
            mine, _ = _keyed_records(learner, reference, variables, args, Keyed(formula=formula))
            unscaled = Keyed(formula=formula, overrides=hand_at)
            if _agree_keyed(mine, _keyed_records(learner, reference, variables, args, Keyed(formula=formula),
                                                 unscaled)[1]):
                causes.append("Your dropout is not scaled: divide the values it keeps by 1 - rate (inverted "
                              "dropout), so that each value's expectation in training is its value at evaluation. "
                              "(Recomputed: the reference's dropout without that division gives exactly your "
                              "numbers.)")
                break
    divergence = first_divergence(got, expected)
    located = False
    if divergence is not None:
        text, located = _keyed_divergence(divergence, got, expected, names, what, bool(causes))
        causes.append(text)
    if len(causes) == 1 and divergence is not None and not located:
        causes.append("Is your dropout on the value the lesson drops, once, at dropout_rate? (If it is and only "
                      "draws its mask another way, draw it as keep = jax.random.bernoulli(key, 1 - rate, "
                      "x.shape), one key per dropout, in the order the values are computed.)")
    return intro + "\n" + "\n".join(f"  - {c}" for c in causes)


def _keyed_divergence(divergence: Divergence, got: Record, expected: Record, names: dict[str, str], what: str,
                      explained: bool) -> tuple[str, bool]:
    """Where the keyed records first part, with the reference's nearest dropout before that point and, unless
    a cause is already `explained`, the hand-drawn mask whose zeros that value carries (the dropout acts there)."""
    ev = divergence.event
    label = f"`{ev.path}`" if ev.path else what
    value = f"the {'input' if ev.kind == 'in' else 'output'} of {label}"
    diff = _difference(divergence.got, ev.value) if ev.value is not None else "it differs"
    agreed = divergence.agreed[-3:]
    text = ("With the same masks, " + (f"{', '.join(f'`{p}`' for p in agreed)} agree{'s' if len(agreed) == 1 else ''}"
                                       " with the reference, and " if agreed else "")
            + f"the first value that differs is {value} ({diff}).")
    index = next((i for i, e in enumerate(expected.events) if e is ev), len(expected.events))
    before = [c for c in expected.dropouts if c.position <= index and (c.rate > 0 or c.inside_attention)]
    if before:
        last = before[-1]
        if last.inside_attention:
            words = f"the one on the attention weights inside `{last.path}`"
        else:
            words = names.get(last.path) or (_describe_value(last.value, expected.events, names)
                                             if last.value is not None else "")
            words = f"the one on {words}" if words else f"the nn.Dropout at `{last.path}`"
        text += f" The reference's last dropout before it is {words}."
    if not explained and divergence.got is not None:
        for d in got.drawn_by_hand:
            if d.keep is None or d.shape is None or tuple(d.shape) != tuple(divergence.got.shape):
                continue
            import jax

            kept = np.asarray(jax.random.uniform(d.key, d.shape) < d.keep)
            if kept.all() or not kept.any() or np.any(divergence.got[~kept] != 0):
                continue
            words = names.get(f"{ev.kind}:{ev.path}") or f"{value} itself"
            text += (f" Your dropout in `{d.path or what}` acts there, on {words}: that value is zero exactly "
                     "where the mask drawn from its key drops.")
            return text, True
    return text, False


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

    got = record(learner, variables, *args, deterministic=False, rngs=_rngs())
    if got.drawn_by_hand:
        # A dropout written by hand runs for real even here: judged mask for mask (hand_written_dropout_problem).
        problem = hand_written_dropout_problem(learner, reference, variables, args, what, rate, names)
        if problem:
            expected = record(reference, variables, *args, deterministic=False, rngs=_rngs())
            checks.fail(f"with deterministic=False and dropout_rate={rate:g}, {what}'s dropouts differ from the "
                        "lesson's:\n" + "".join(f"  - {p}\n" for p in _field_problems(got, expected))
                        + "  " + problem)
        return
    expected = record(reference, variables, *args, deterministic=False, rngs=_rngs())
    field_problems = _field_problems(got, expected)
    divergence = first_divergence(got, expected)
    if divergence is not None:
        checks.fail(f"not checked: in training mode (dropout made transparent) {what} does not compute what the "
                    "reference does, so its dropouts cannot be matched to the reference's. "
                    + divergence.sentence(what)
                    + _OWN_KEY * (not got.dropouts and not got.draws and bool(expected.dropouts)))
    # A submodule built with the wrong dropout_rate: its own dropouts, at that rate, need no second sentence.
    said = {f" uses rate {value:g};" for path, value in got.rates.items()
            if path in expected.rates and value != expected.rates[path]}
    audit = [p for p in audit_dropout(got, expected, rate, names, describe) if not any(s in p for s in said)]
    problems = field_problems + audit
    if problems:
        checks.fail(f"with deterministic=False and dropout_rate={rate:g}, {what}'s dropouts differ from the "
                    f"lesson's:\n" + "\n".join(f"  - {p}" for p in dict.fromkeys(problems)))


def _field_problems(got: Record, expected: Record) -> list[str]:
    """A submodule built with another `dropout_rate` than the reference's, in words."""
    return [f"`{path}` is built with dropout_rate={value:g}; pass it the model's dropout_rate "
            f"({expected.rates[path]:g})." for path, value in got.rates.items()
            if path in expected.rates and value != expected.rates[path]]


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
    import atexit
    import shutil
    import tempfile
    from pathlib import Path

    from jaxgpt.grader import implementation, mistakes

    if task.number not in _CATALOGUE_CACHE:
        views = []
        workdir = Path(tempfile.mkdtemp(prefix="jaxgpt-diagnosis-"))
        # The entries' modules are imported from there and stay loaded; the files go when the process ends.
        atexit.register(shutil.rmtree, workdir, ignore_errors=True)
        for entry in mistakes.entries(task):
            if entry.kind != "mistake":
                continue
            try:
                views.append((entry, implementation.resolve(mistakes.overlay(entry, workdir)).for_task(task)))
            except Exception:
                continue
        _CATALOGUE_CACHE[task.number] = views
    return _CATALOGUE_CACHE[task.number]
