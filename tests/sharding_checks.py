"""Task 14's checks, run in a process of their own that JAX starts with 8 simulated CPU devices.

A JAX process fixes its device count when its backend starts, and the grading worker's JAX has long started
with one CPU device; so tests/test_task14_sharding.py starts this file as a subprocess (through
tests/sharding_runner.py) once per suite, sends it where the learner's code is (a directory, or the notebook's
definitions by value), and reads one JSON line per check: its status and its sentence, as the grader's
`outcomes.classify` words them, and what the learner's code printed.

Oracles: a single-device step, flax's TrainState stepped by optax.adamw (eps 1e-3, see below) through
jax.value_and_grad, on task 1's reference MiniGPT (2 layers, dropout on), compiled in the background while the
first checks run; every sharded mode must give its losses, parameters and optimiser state over three steps. The layouts are graded as such, by the device-to-slice map each sharding gives
(`Sharding.is_equivalent_to`), against Megatron's rule for tensor parallelism and against properties for FSDP
(any axis that divides will do), and the compiled programs are read: bytes per device, floating-point work per
device (XLA's cost analysis) and the collectives between devices, by kind.

Shapes: vocabulary 13, block_size 37, n_embd 24, 4 heads of 6, 2 layers; batch B = 16 (divides by 8 and by 4),
T = 11; the meshes are 8 x 1 and 4 x 2 (and 2 x 4 where a mesh's shape is checked), so an axis read from the
wrong place shows.

Tolerances, from float32's unit roundoff u = 2**-24 = 6e-8:
  - the sharded step sums the loss's B * T terms and each gradient's terms in another order (partial sums per
    device, then an all-reduce), which moves a loss of order log V by a few u * log V: losses are compared at
    rtol 1e-5, atol 1e-6;
  - AdamW's first step moves a parameter by lr * g / (|g| + eps), whose slope in g is up to 1 / eps: a
    gradient entry near eps turns a tiny difference in g into a large one in the update (with Optax's
    eps = 1e-8 a 1e-10 change in such a g moves the parameter by lr / 100, and layouts that reorder the sums
    differently moved one parameter by 3e-5 even at eps = 1e-4). The checks' optimiser uses eps = 1e-3,
    where a reordered sum (|dg| <= 1e-8 at these sizes) moves a parameter by at most lr * 1e-8 / 1e-3 = 1e-7
    per step: measured at most 3e-7 after three steps, over the four modes and two wrong-but-usable layouts.
    Parameters and moments are compared at STATE_ATOL = 2e-5. A different batch or dropout mask moves them by
    about lr = 1e-2;
  - sharded_init's blocks are drawn by the same initialiser at the same shape, inside and outside jit: they
    differ by at most one rounding of the scale (measured 7e-9 at stddev 0.02): rtol 1e-6, atol 1e-7.
"""

from __future__ import annotations

import contextlib
import functools
import io
import json
import linecache
import os
import pickle
import re
import sys
import threading
import time

N_DEVICES = 8

VOCAB, BLOCK, C, H, LAYERS = 13, 37, 24, 4, 2  # all different; C and 4C divide by 8, H by 2 and 4
B, T = 16, 11  # B divides by 8 and 4; T by neither, so a batch split on time cannot be laid out
LEARNING_RATE, WEIGHT_DECAY, EPS = 1e-2, 0.01, 1e-3  # eps: see the module docstring
STEPS = 3
STATE_ATOL = 2e-5
COLLECTIVES = ("all-reduce", "all-gather", "reduce-scatter", "all-to-all", "collective-permute",
               "collective-broadcast")

CHECKS: dict = {}


def check(fn):
    CHECKS[fn.__name__] = fn
    return fn


# ----------------------------------------------------------------------------------------------------
# Set-up (imported after the device count is set: see main)

jax = jnp = np = optax = train_state = P = NamedSharding = checks = None


def _imports():
    global jax, jnp, np, optax, train_state, P, NamedSharding, checks
    import jax as _jax
    import jax.numpy as _jnp
    import numpy as _np
    import optax as _optax
    from flax.training import train_state as _train_state
    from jax.sharding import NamedSharding as _NamedSharding, PartitionSpec as _P

    from jaxgpt.grader import checks as _checks

    jax, jnp, np, optax, train_state, P, NamedSharding, checks = (
        _jax, _jnp, _np, _optax, _train_state, _P, _NamedSharding, _checks)


def _once(fn):
    """functools.lru_cache, safe when the background oracle and a check ask for the same value at once."""
    cached = functools.lru_cache(maxsize=None)(fn)
    lock = threading.Lock()

    @functools.wraps(fn)
    def wrapper(*args):
        with lock:
            return cached(*args)

    return wrapper


@_once
def _mesh(n_data, n_model):
    from jax.sharding import AxisType
    return jax.make_mesh((n_data, n_model), ("data", "model"), axis_types=(AxisType.Auto, AxisType.Auto),
                         devices=jax.devices()[: n_data * n_model])


@_once
def _model():
    from jaxgpt.grader import implementation, task_list
    MiniGPT = implementation.resolve("reference").get(task_list.get_task(1), "MiniGPT")
    return MiniGPT(vocab_size=VOCAB, block_size=BLOCK, n_embd=C, n_head=H, n_layer=LAYERS, dropout_rate=0.1)


@_once
def _params():
    # Jitted: one compiled program, where an eager init compiles each of its small operations on its own.
    return jax.jit(_model().init)(jax.random.key(0), jnp.zeros((B, T), jnp.int32))["params"]


@_once
def _tx():
    return optax.adamw(LEARNING_RATE, weight_decay=WEIGHT_DECAY, eps=EPS)


@_once
def _state():
    # On the host: placing host arrays on a mesh copies their slices, with no program to compile per array.
    return jax.device_get(jax.jit(lambda params: train_state.TrainState.create(apply_fn=_model().apply, params=params,
                                                                               tx=_tx()))(_params()))


def oracle_train_step(state, x, y, dropout_key):
    """Task 7's step: one AdamW step on (x, y) with dropout on; returns (state, loss). Not jitted: the sharded
    step's jit compiles it."""

    def loss_fn(params):
        logits = state.apply_fn({"params": params}, x, deterministic=False, rngs={"dropout": dropout_key})
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    loss, grads = jax.value_and_grad(loss_fn)(state.params)
    return state.apply_gradients(grads=grads), loss


@_once
def _batches():
    rng = np.random.default_rng(14)
    keys = jax.random.split(jax.random.key(7), STEPS)
    return [(rng.integers(0, VOCAB, (B, T)).astype(np.int32), rng.integers(0, VOCAB, (B, T)).astype(np.int32),
             keys[i]) for i in range(STEPS)]


_ORACLE_LOCK = threading.Lock()


def _oracle_run():
    """The single-device steps: (losses, final state, flops of one step). Started in the background when the
    process starts (it compiles while the first checks run), so the first mode check seldom waits for it."""
    with _ORACLE_LOCK:
        return _oracle_steps()


@functools.lru_cache(maxsize=None)
def _oracle_steps():
    step = jax.jit(oracle_train_step)
    state, losses = _state(), []
    x, y, key = _batches()[0]
    compiled = step.lower(state, x, y, key).compile()
    for x, y, key in _batches():
        state, loss = compiled(state, x, y, key)
        losses.append(float(loss))
    return np.array(losses), jax.device_get(state), _flops(compiled)


# The lesson's layouts, written here independently of the reference: (module, submodule, parameter) -> spec.
_TP_SPECS = {}
for _qkv in ("query", "key", "value"):
    _TP_SPECS[("attn", _qkv, "kernel")] = ("C", "H", "D"), (None, "model", None)
    _TP_SPECS[("attn", _qkv, "bias")] = ("H", "D"), ("model", None)
_TP_SPECS[("attn", "out", "kernel")] = ("H", "D", "C"), ("model", None, None)
_TP_SPECS[("attn", "out", "bias")] = ("C",), (None,)
_TP_SPECS[("ffwd", "fc", "kernel")] = ("C", "4C"), (None, "model")
_TP_SPECS[("ffwd", "fc", "bias")] = ("4C",), ("model",)
_TP_SPECS[("ffwd", "proj", "kernel")] = ("4C", "C"), ("model", None)
_TP_SPECS[("ffwd", "proj", "bias")] = ("C",), (None,)


def _names(path):
    out = []
    for part in path:
        for attribute in ("key", "name"):
            if hasattr(part, attribute):
                out.append(str(getattr(part, attribute)))
                break
    return tuple(out)


def _where(path):
    return "/".join(_names(path))


def _tp_spec(path, leaf):
    names = _names(path)
    if names and names[0].startswith("blocks_") and names[-3:] in _TP_SPECS:
        return _TP_SPECS[names[-3:]][1]
    return (None,) * leaf.ndim


def _full(spec, ndim):
    """A PartitionSpec as a tuple of one entry per axis, each None, a name or a tuple of names."""
    entries = list(spec) + [None] * (ndim - len(spec))
    return tuple(tuple(e) if isinstance(e, (tuple, list)) and len(e) > 1 else
                 (e[0] if isinstance(e, (tuple, list)) and len(e) == 1 else (None if e == () else e))
                 for e in entries)


def _axes_of(entry):
    if entry is None:
        return ()
    return tuple(entry) if isinstance(entry, tuple) else (entry,)


def _fsdp_spec(spec, shape, n_data):
    spec = list(spec)
    free = [d for d in range(len(shape)) if spec[d] is None and shape[d] % n_data == 0]
    if free:
        spec[max(free, key=lambda d: shape[d])] = "data"
    return tuple(spec)


def _shardings(mesh, specs):
    return jax.tree.map(lambda spec: NamedSharding(mesh, P(*spec)), specs, is_leaf=lambda s: isinstance(s, tuple))


def _tp_shardings(mesh):
    return _shardings(mesh, jax.tree_util.tree_map_with_path(_tp_spec, _params()))


def _fsdp_shardings(mesh, tensor_parallel):
    n_data = mesh.shape["data"]

    def spec(path, leaf):
        base = _tp_spec(path, leaf) if tensor_parallel else (None,) * leaf.ndim
        return _fsdp_spec(base, leaf.shape, n_data)

    return _shardings(mesh, jax.tree_util.tree_map_with_path(spec, _params()))


def _replicated(mesh, tree):
    return jax.tree.map(lambda _: NamedSharding(mesh, P()), tree)


def _state_shardings(state, param_shardings, mesh):
    replicated = NamedSharding(mesh, P())
    opt_state = optax.tree_map_params(state.tx, lambda _, s: s, state.opt_state, param_shardings,
                                      transform_non_params=lambda _: replicated)
    return state.replace(step=replicated, params=param_shardings, opt_state=opt_state)


def _bytes_per_device(tree, shardings):
    total = 0
    for leaf, sharding in zip(jax.tree.leaves(tree), jax.tree.leaves(shardings)):
        total += int(np.prod(sharding.shard_shape(np.shape(leaf)), dtype=np.int64)) * np.asarray(leaf).dtype.itemsize
    return total


def _a_mesh(n_data, n_model):
    """'an 8 x 1 mesh', 'a 4 x 2 mesh'."""
    return f"{'an' if str(n_data).startswith('8') else 'a'} {n_data} x {n_model} mesh"


def _divides(sharding, shape):
    """Whether every axis of shape divides into the parts sharding cuts it into."""
    try:
        sharding.shard_shape(tuple(shape))
        return True
    except Exception:
        return False


def _spec_text(sharding, ndim):
    spec = getattr(sharding, "spec", None)
    if spec is None:
        return type(sharding).__name__
    return "P(" + ", ".join("None" if e is None else repr(e) for e in _full(spec, ndim)) + ")"


def _sharding_of(value, what):
    sharding = getattr(value, "sharding", None)
    if sharding is None:
        checks.fail(f"{what} should be a jax.Array laid out on the mesh, but it is a {type(value).__name__}.")
    return sharding


def _same_layout(a, b, ndim):
    try:
        return bool(a.is_equivalent_to(b, ndim))
    except Exception:
        return False


# ----------------------------------------------------------------------------------------------------
# Calling the learner's code: JAX's sharding errors said as sentences


def _call(who, fn, *args, **kwargs):
    from jaxgpt.grader import outcomes
    try:
        return fn(*args, **kwargs)
    except (NotImplementedError, checks.CheckFailed):
        raise
    except Exception as err:
        text = str(err)
        first = text.strip().splitlines()[0][:300] if text.strip() else type(err).__name__
        where = outcomes.learner_frame(err)
        at = f"\n    at {where}" if where else ""
        if "does not match the sharding on the respective arg" in text or "sharding on the respective arg" in text:
            checks.fail(f"{who}: the compiled step expects its arguments laid out otherwise than they arrive ({first})."
                        f"{at}\n  The state arrives as state_shardings lays it out, x and y split over 'data' "
                        "(P('data', None)) as shard_batch places them, the key replicated (P()): jit's "
                        "in_shardings must say the same, or be left out so that jit takes the arguments' own.")
        if "divisible" in text or "evenly divide" in text:
            checks.fail(f"{who} asks for a split that does not divide the array ({first}).{at}\n  A NamedSharding "
                        "can only cut an axis into as many equal parts as the mesh axes it names have devices: "
                        "split an axis whose size divides by them, or leave it whole (None).")
        if type(err).__name__ == "ShardingTypeError" or "Explicit" in text and "axis" in text:
            checks.fail(f"{who} fails in JAX's explicit-sharding mode ({first}).{at}\n  The mesh's axes must be "
                        "AxisType.Auto, so that jit decides where the collectives go.")
        raise


# ----------------------------------------------------------------------------------------------------
# make_mesh


@check
def make_mesh(impl):
    fn = checks.learner_function(impl.make_mesh, "make_mesh", ("n_data", "n_model"), ("devices",))
    from jax.sharding import AxisType, Mesh
    for n_data, n_model in ((8, 1), (4, 2), (2, 4)):
        mesh = _call("make_mesh", fn, n_data, n_model)
        if not isinstance(mesh, Mesh):
            checks.fail(f"make_mesh({n_data}, {n_model}) should return a jax.sharding.Mesh (jax.make_mesh makes one), "
                        f"but it returned a {type(mesh).__name__}.")
        names = tuple(mesh.axis_names)
        if names != ("data", "model"):
            checks.fail(f"make_mesh({n_data}, {n_model})'s axes are named {names}: the lesson's are ('data', 'model'), "
                        "in that order, and every sharding in this task names them.")
        shape = (mesh.shape["data"], mesh.shape["model"])
        if shape != (n_data, n_model):
            swapped = shape == (n_model, n_data)
            checks.fail(f"make_mesh({n_data}, {n_model}) has {shape[0]} devices along 'data' and {shape[1]} along "
                        f"'model'; it should have {n_data} and {n_model}."
                        + ("\n  Likely cause: the sizes are swapped against the names: jax.make_mesh((n_data, "
                           "n_model), ('data', 'model')) pairs the first size with the first name." if swapped else ""))
        types = tuple(getattr(mesh, "axis_types", ()) or ())
        if any(t != AxisType.Auto for t in types):
            checks.fail(f"make_mesh({n_data}, {n_model})'s axes are of types {tuple(str(t) for t in types)}: they must "
                        "be AxisType.Auto. jax.make_mesh's own default in this JAX is AxisType.Explicit, where every "
                        "operation must say how its result is sharded, and Flax's layers do not (an nn.Embed lookup "
                        "on a batch split over 'data' raises ShardingTypeError). Pass "
                        "axis_types=(AxisType.Auto, AxisType.Auto), from jax.sharding import AxisType.")
    mesh = _call("make_mesh", fn, 8)
    if dict(mesh.shape) != {"data": 8, "model": 1}:
        checks.fail(f"make_mesh(8) has the shape {dict(mesh.shape)}: n_model defaults to 1, so it should be "
                    "{'data': 8, 'model': 1}.")
    chosen = jax.devices()[4:]
    mesh = _call("make_mesh", fn, 2, 2, devices=chosen)
    used = {d.id for d in np.asarray(mesh.devices).flat}
    if used != {d.id for d in chosen}:
        checks.fail(f"make_mesh(2, 2, devices=jax.devices()[4:]) lays out the devices {sorted(used)}; it should use "
                    f"the devices it is given, {sorted(d.id for d in chosen)} (jax.make_mesh(..., devices=devices)).")


# ----------------------------------------------------------------------------------------------------
# shard_batch


def _batch_problem(out, batch, mesh, who="shard_batch"):
    """None when out is batch laid out with its rows split over 'data' and replicated over 'model'."""
    sharding = _sharding_of(out, f"what {who} returns")
    checks.assert_shape(out, batch.shape, f"the batch {who} returns")
    if not np.array_equal(np.asarray(out), batch):
        return f"the batch {who} returns holds other values than the batch it was given: place it, don't change it."
    ndim = batch.ndim
    expected = NamedSharding(mesh, P("data", None))
    if _same_layout(sharding, expected, ndim):
        return None
    got = _spec_text(sharding, ndim)
    alternatives = [
        (P(None, "data"), "the batch is split along its time axis (axis 1), not its batch axis: each device would hold "
                          "every sequence's slice of time steps, and attention, which mixes the time steps of a "
                          "sequence, would need them all. Split the rows: P('data', None)."),
        (P(("data", "model"), None), "the rows are split over 'model' too: the devices along 'model' work together on "
                                     "the same rows (each holds part of every layer), so they must each hold the "
                                     "same rows. Split over 'data' only: P('data', None)."),
        (P(), "the batch is replicated: every device holds (and would compute on) the whole batch. Split the rows "
              "over 'data': P('data', None)."),
        (P("model", None), "the rows are split over 'model' instead of 'data'."),
    ]
    for spec, why in alternatives:
        try:
            if _same_layout(sharding, NamedSharding(mesh, spec), ndim):
                return f"{who} lays the batch out as {got}.\n  Likely cause: {why}"
        except Exception:
            continue
    if len(sharding.device_set) == 1:
        return (f"{who} puts the whole batch on one device ({next(iter(sharding.device_set))}): place it on the mesh "
                "with jax.device_put(batch, NamedSharding(mesh, P('data', None))).")
    return (f"{who} lays the batch out as {got}: its rows should be split over 'data' and each row copied over "
            "'model', NamedSharding(mesh, P('data', None)).")


@check
def shard_batch(impl):
    fn = checks.learner_function(impl.shard_batch, "shard_batch", ("batch", "mesh"))
    batch = np.arange(16 * 24, dtype=np.int32).reshape(16, 24) % VOCAB  # T = 24 divides by 8: a time split shows
    for n_data, n_model in ((8, 1), (4, 2)):
        mesh = _mesh(n_data, n_model)
        out = _call("shard_batch", fn, batch, mesh)
        problem = _batch_problem(out, batch, mesh)
        if problem:
            checks.fail(f"on {_a_mesh(n_data, n_model)}, {problem}")


# ----------------------------------------------------------------------------------------------------
# tensor_parallel_shardings


_TP_WHY = {
    ("ffwd", "fc", "kernel"): "Megatron splits the MLP's first kernel (C, 4C) on its output axis, the hidden units: each "
                              "device computes its own hidden units from the whole input and applies the ReLU without "
                              "the others. Split on its input axis C, every hidden unit is a sum over devices, and XLA "
                              "must gather or add those up before the ReLU.",
    ("ffwd", "fc", "bias"): "the fc bias (4C,) belongs to the hidden units, split like fc's output axis.",
    ("ffwd", "proj", "kernel"): "Megatron splits the MLP's second kernel (4C, C) on its input axis, the hidden units each "
                                "device already holds, so that each device computes a partial sum of the output and "
                                "one all-reduce adds them. Split on its output axis C, every device needs every hidden "
                                "unit, and XLA must gather the hidden activations first.",
    ("attn", "out", "kernel"): "the attention's output kernel (H, D, C) is split by heads, the heads each device already "
                               "computed, so that one all-reduce adds the partial outputs.",
}
for _qkv in ("query", "key", "value"):
    _TP_WHY[("attn", _qkv, "kernel")] = ("the query, key and value kernels (C, H, D) are split by heads (axis 1), so that "
                                         "each device computes whole heads of attention on its own.")
    _TP_WHY[("attn", _qkv, "bias")] = "the query, key and value biases (H, D) are split by heads like their kernels."


def _tp_problems(got, params, mesh, who="tensor_parallel_shardings"):
    """Sentences about each parameter whose sharding is not Megatron's."""
    if jax.tree.structure(got) != jax.tree.structure(params):
        return [f"{who} should return a tree with the parameters' structure (jax.tree_util.tree_map_with_path over "
                f"params), one NamedSharding per parameter; it returned a {type(got).__name__} with "
                f"{len(jax.tree.leaves(got))} leaves for {len(jax.tree.leaves(params))} parameters."]
    wrong = []
    flat = jax.tree_util.tree_flatten_with_path(params)[0]
    for (path, leaf), sharding in zip(flat, jax.tree.leaves(got)):
        if not hasattr(sharding, "is_equivalent_to"):
            return [f"{who} returns a {type(sharding).__name__} for {_where(path)}: each leaf should be a "
                    "NamedSharding(mesh, P(...)), which says the mesh as well as the split."]
        expected = _tp_spec(path, leaf)
        if _same_layout(sharding, NamedSharding(mesh, P(*expected)), leaf.ndim):
            continue
        names = _names(path)
        got_spec = _spec_text(sharding, leaf.ndim)
        want = "P(" + ", ".join("None" if e is None else repr(e) for e in expected) + ")"
        line = f"{_where(path)} {tuple(leaf.shape)}: expected {want}, got {got_spec}"
        why = _TP_WHY.get(names[-3:])
        if all(e is None for e in expected):
            why = ("it is replicated in Megatron's split: each device needs all of it (an embedding, a layer norm, the "
                   "lm_head, or a bias added after the partial sums are added up).")
        wrong.append((line, why))
    return wrong


@check
def tensor_parallel_shardings(impl):
    fn = checks.learner_function(impl.tensor_parallel_shardings, "tensor_parallel_shardings", ("params", "mesh"))
    params = _params()
    for n_data, n_model in ((4, 2), (2, 4)):
        mesh = _mesh(n_data, n_model)
        got = _call("tensor_parallel_shardings", fn, params, mesh)
        wrong = _tp_problems(got, params, mesh)
        if wrong and isinstance(wrong[0], str):
            checks.fail(wrong[0])
        if wrong:
            lines = [f"on {_a_mesh(n_data, n_model)}, {len(wrong)} of {len(jax.tree.leaves(params))} parameters are not "
                     "split as Megatron splits them:"]
            lines += [f"  {line}" for line, _ in wrong[:6]] + (["  ..."] if len(wrong) > 6 else [])
            whys = list(dict.fromkeys(why for _, why in wrong if why))
            lines += [f"  Why: {why}" for why in whys[:3]]
            checks.fail("\n".join(lines))


# ----------------------------------------------------------------------------------------------------
# fsdp_shardings


def _fsdp_problems(got, params, mesh, base, who="fsdp_shardings"):
    """Sentences about the parameters that are not split over 'data' where they could be, or lost base's splits."""
    if jax.tree.structure(got) != jax.tree.structure(params):
        return [f"{who} should return a tree with the parameters' structure, one NamedSharding per parameter; it "
                f"returned a {type(got).__name__} with {len(jax.tree.leaves(got))} leaves for "
                f"{len(jax.tree.leaves(params))} parameters."]
    n_data = mesh.shape["data"]
    whole, lost, bad, unchanged = [], [], [], 0
    flat = jax.tree_util.tree_flatten_with_path(params)[0]
    for (path, leaf), sharding, base_sharding in zip(flat, jax.tree.leaves(got), jax.tree.leaves(base)):
        spec = getattr(sharding, "spec", None)
        if spec is None or getattr(sharding, "mesh", None) is None:
            return [f"{who} returns a {type(sharding).__name__} for {_where(path)}: each leaf should be a "
                    "NamedSharding(mesh, P(...))."]
        entries = _full(spec, leaf.ndim)
        base_entries = _full(base_sharding.spec, leaf.ndim)
        kept = tuple(tuple(a for a in _axes_of(e) if a != "data") for e in entries)
        if kept != tuple(_axes_of(e) for e in base_entries):
            lost.append(f"{_where(path)}: {_spec_text(base_sharding, leaf.ndim)} became {_spec_text(sharding, leaf.ndim)}")
            continue
        uses = [d for d, e in enumerate(entries) if "data" in _axes_of(e)]
        for d in uses:
            parts = int(np.prod([mesh.shape[a] for a in _axes_of(entries[d])]))
            if leaf.shape[d] % parts:
                bad.append(f"{_where(path)} {tuple(leaf.shape)} is split over {entries[d]!r} on axis {d}, whose size "
                           f"{leaf.shape[d]} does not divide by {parts}")
        free = [d for d in range(leaf.ndim) if base_entries[d] is None and leaf.shape[d] % n_data == 0]
        if not uses:
            unchanged += 1
            if free and n_data > 1:
                whole.append(f"{_where(path)} {tuple(leaf.shape)} ({_spec_text(sharding, leaf.ndim)})")
    problems = []
    if lost:
        problems.append(f"{len(lost)} parameters lost the splits they were given in `shardings` (tensor parallelism's "
                        f"'model' splits must stay; FSDP adds 'data' on another axis): " + "; ".join(lost[:4])
                        + (" ..." if len(lost) > 4 else ""))
    if bad:
        problems.append("; ".join(bad[:3]) + ". Choose an axis whose size divides by the mesh's 'data' size.")
    if whole:
        everything = unchanged == len(flat)
        problems.append(
            (f"no parameter is split over 'data': fsdp_shardings shards nothing, so every device still holds the "
             f"whole model (the FSDP step then equals data parallelism). " if everything else
             f"{len(whole)} parameters are left whole over 'data' though one of their axes divides by {n_data}: ")
            + ", ".join(whole[:5]) + (" ..." if len(whole) > 5 else "")
            + f". Split each over 'data' along an axis whose size divides by n_data = {n_data} and that is not split "
              "already (the lesson takes the largest).")
    return problems


@check
def fsdp_shardings(impl):
    fn = checks.learner_function(impl.fsdp_shardings, "fsdp_shardings", ("params", "mesh"), ("shardings",))
    params = _params()
    for n_data, n_model, tensor_parallel in ((8, 1, False), (4, 2, False), (4, 2, True)):
        mesh = _mesh(n_data, n_model)
        if tensor_parallel:
            base = _tp_shardings(mesh)
            got = _call("fsdp_shardings", fn, params, mesh, shardings=base)
            said = f"fsdp_shardings(params, mesh, shardings=Megatron's) on {_a_mesh(n_data, n_model)}"
        else:
            base = _replicated(mesh, params)
            got = _call("fsdp_shardings", fn, params, mesh)
            said = f"fsdp_shardings(params, mesh) on {_a_mesh(n_data, n_model)}"
        problems = _fsdp_problems(got, params, mesh, base)
        if problems:
            usable = jax.tree.structure(got) == jax.tree.structure(params) and all(
                _divides(s, leaf.shape) for leaf, s in zip(jax.tree.leaves(params), jax.tree.leaves(got)))
            best = _bytes_per_device(params, _fsdp_shardings(mesh, tensor_parallel))
            memory = (f"\n  Parameters per device: {_bytes_per_device(params, got):,} bytes; fully sharded: "
                      f"{best:,}." if usable else "")
            checks.fail(f"{said}: " + "\n  ".join(problems) + memory)


# ----------------------------------------------------------------------------------------------------
# state_shardings


def _state_label(path):
    names = [n for n in _names(path)]
    if names and names[0] == "opt_state":
        moments = [n for n in names if n in ("mu", "nu")]
        if moments:
            return f"the optimiser's {moments[0]}"
        return "the optimiser's " + (names[-1] if len(names) > 1 else "state")
    return names[0] if names else "the state"


def _state_problems(got, state, param_shardings, mesh, who="state_shardings"):
    if jax.tree.structure(got) != jax.tree.structure(state):
        return (f"{who} should return a tree with the TrainState's own structure (state.replace(step=..., params=..., "
                "opt_state=...)), so that jax.device_put(state, shardings) and jit's in_shardings can pair every "
                f"array with its sharding; it returned a {type(got).__name__} with {len(jax.tree.leaves(got))} leaves "
                f"for the state's {len(jax.tree.leaves(state))}.")
    expected = _state_shardings(state, param_shardings, mesh)
    wrong, replicated = {}, {}
    flat = jax.tree_util.tree_flatten_with_path(state)[0]
    for (path, leaf), sharding, want in zip(flat, jax.tree.leaves(got), jax.tree.leaves(expected)):
        if not hasattr(sharding, "is_equivalent_to"):
            return f"{who} returns a {type(sharding).__name__} for {_where(path)}: every leaf should be a NamedSharding."
        if not _same_layout(sharding, want, np.ndim(leaf)):
            label = _state_label(path)
            wrong.setdefault(label, []).append(f"{_where(path)}: expected {_spec_text(want, np.ndim(leaf))}, got "
                                               f"{_spec_text(sharding, np.ndim(leaf))}")
            replicated.setdefault(label, []).append(bool(getattr(sharding, "is_fully_replicated", False)))
    if not wrong:
        return None
    lines = [f"{who} lays out {sum(len(v) for v in wrong.values())} arrays of the state otherwise than the lesson:"]
    for label, items in wrong.items():
        lines.append(f"  {label}: " + "; ".join(items[:2]) + (f" (and {len(items) - 2} more)" if len(items) > 2 else ""))
    moments = [label for label in wrong if label.endswith(("mu", "nu"))]
    if moments:
        which = " and ".join(label.removeprefix("the optimiser's ") for label in moments)
        if all(all(replicated[label]) for label in moments):
            lines.append(f"  Likely cause: AdamW's {which} {'is' if len(moments) == 1 else 'are'} left replicated: "
                         "AdamW keeps two moments per parameter, each as big as the model, so a device holding them "
                         "whole loses most of what FSDP (ZeRO) saves. Lay mu and nu out like the parameters: "
                         "optax.tree_map_params(state.tx, lambda p, s: s, state.opt_state, param_shardings, "
                         "transform_non_params=lambda _: replicated).")
        else:
            lines.append(f"  Likely cause: AdamW's {which} must be laid out exactly like the parameters they follow.")
    elif "params" in wrong:
        lines.append("  Likely cause: state.params should take param_shardings as they are.")
    else:
        lines.append("  Likely cause: the step counts (state.step, the optimiser's count) are scalars: replicate "
                     "them, P().")
    return "\n".join(lines)


@check
def state_shardings(impl):
    fn = checks.learner_function(impl.state_shardings, "state_shardings", ("state", "param_shardings"))
    state = _state()
    for n_data, n_model, tensor_parallel in ((8, 1, False), (4, 2, True)):
        mesh = _mesh(n_data, n_model)
        param_shardings = _fsdp_shardings(mesh, tensor_parallel)
        got = _call("state_shardings", fn, state, param_shardings)
        problem = _state_problems(got, state, param_shardings, mesh)
        if problem:
            checks.fail(f"with fully sharded parameters on {_a_mesh(n_data, n_model)}, {problem}")
        _call("jax.device_put(state, state_shardings(...))", jax.device_put, state, got)


# ----------------------------------------------------------------------------------------------------
# sharded_init


def _block_numbers(sharding, shape, order="row"):
    """{device id: block number} for the lesson's numbering (or another, to diagnose)."""
    shard_shape = sharding.shard_shape(shape)
    blocks = [s // b for s, b in zip(shape, shard_shape)]
    numbers = {}
    for device, index in sharding.devices_indices_map(shape).items():
        coords = [((sl.start or 0) // b) for sl, b in zip(index, shard_shape)]
        number = 0
        dims = range(len(shape)) if order == "row" else reversed(range(len(shape)))
        for d in dims:
            number = number * blocks[d] + coords[d]
        numbers[device.id] = number
    return numbers


INIT_CASES = (
    # (shape, mesh, spec, initialiser, what it shows)
    ((24, 96), (4, 2), ("data", "model"), ("normal", 0.02)),
    ((96, 24), (4, 2), (None, "model"), ("normal", 1.0)),  # replicated over 'data': four copies of each block
    ((24, 4, 6), (2, 4), (None, "model", None), ("normal", 0.02)),
    ((32, 48), (4, 2), ("model", "data"), ("uniform", 1.0)),  # the array's axes, not the mesh's, set the order
    ((16,), (8, 1), ("data",), ("normal", 0.02)),
)


def _initialiser(kind, scale):
    if kind == "normal":
        return jax.nn.initializers.normal(scale)
    return jax.nn.initializers.uniform(scale)


@check
def sharded_init(impl):
    fn = checks.learner_function(impl.sharded_init, "sharded_init", ("init_fn", "key", "shape", "sharding"))
    for case, (shape, mesh_shape, spec, (kind, scale)) in enumerate(INIT_CASES):
        mesh = _mesh(*mesh_shape)
        sharding = NamedSharding(mesh, P(*spec))
        init = _initialiser(kind, scale)
        key = jax.random.key(40 + case)
        said = (f"sharded_init(jax.nn.initializers.{kind}({scale:g}), key, {shape}, NamedSharding({mesh_shape[0]} x "
                f"{mesh_shape[1]} mesh, P{spec}))")
        out = _call("sharded_init", fn, init, key, shape, sharding)
        got_sharding = _sharding_of(out, f"what {said} returns")
        checks.assert_shape(out, shape, f"what {said} returns")
        checks.assert_dtype(np.asarray(out), np.float32, f"what {said} returns")
        if not _same_layout(got_sharding, sharding, len(shape)):
            checks.fail(f"{said} returns an array laid out as {_spec_text(got_sharding, len(shape))}: it should be laid out "
                        "as the sharding it is given (shard_map's out_specs=sharding.spec, or jit's out_shardings).")
        shard_shape = sharding.shard_shape(shape)
        numbers = _block_numbers(sharding, shape)
        held = {s.device.id: np.asarray(s.data) for s in out.addressable_shards}
        expected = {n: np.asarray(init(jax.random.fold_in(key, n), shard_shape)) for n in set(numbers.values())}
        wrong = [d for d, n in numbers.items() if not np.allclose(held[d], expected[n], rtol=1e-6, atol=1e-7 * scale)]
        if not wrong:
            continue
        copies = {}
        for d, n in numbers.items():
            copies.setdefault(n, []).append(d)
        message = (f"{said}: the blocks on {len(wrong)} of {len(numbers)} devices are not "
                   f"init_fn(jax.random.fold_in(key, number), {shard_shape}) for their block's number.")
        first = held[min(held)]
        if all(np.array_equal(h, first) for h in held.values()):
            cause = ("every device holds the same numbers: all the blocks are drawn from the same key. Fold each "
                     "block's number into the key, jax.random.fold_in(key, number), so that the blocks differ.")
        elif np.allclose(np.asarray(out), np.asarray(init(key, shape)), rtol=1e-6, atol=1e-7 * scale):
            cause = ("the array is init_fn(key, shape), drawn whole with one key and then laid out: that builds the "
                     "whole tensor before splitting it, which is what sharded initialisation avoids. Draw each block "
                     "at the shard's shape from its own key, on its own device (jax.shard_map).")
        elif any(len({held[d].tobytes() for d in ds}) > 1 for ds in copies.values() if len(ds) > 1):
            cause = ("devices that hold the same block (copies along a mesh axis the sharding does not name) hold "
                     "different numbers: the array is no longer one array. Number the blocks, not the devices: the "
                     "number must come only from the mesh axes the sharding splits over (jax.lax.axis_index of "
                     "the spec's axes), so that copies draw the same numbers.")
        elif all(np.allclose(held[d], np.asarray(init(jax.random.fold_in(key, d), shard_shape)), rtol=1e-6,
                             atol=1e-7 * scale) for d in held):
            cause = "the blocks are numbered by device id: number them by their place in the array (row-major)."
        else:
            other = _block_numbers(sharding, shape, order="column")
            if all(np.allclose(held[d], np.asarray(init(jax.random.fold_in(key, n), shard_shape)), rtol=1e-6,
                               atol=1e-7 * scale) for d, n in other.items()):
                cause = ("the blocks are numbered in another order: the lesson numbers them row-major over the "
                         "array's axes, ((b_0 * nb_1 + b_1) * nb_2 + b_2)..., with b_d the block's place along array "
                         "axis d.")
            else:
                cause = None
        checks.fail(message + (f"\n  Likely cause: {cause}" if cause else
                               "\n  Draw block number n from jax.random.fold_in(key, n) at the shard's shape, with n "
                               "row-major over the blocks' places along the array's axes."))


# ----------------------------------------------------------------------------------------------------
# The training modes


def _flops(compiled):
    try:
        analysis = compiled.cost_analysis()
        if isinstance(analysis, (list, tuple)):
            analysis = analysis[0] if analysis else {}
        return float(analysis.get("flops", 0.0)) or None
    except Exception:
        return None


_COLLECTIVE = re.compile(r"^\s*(?:ROOT\s+)?%?[\w.\-]+\s*=\s*(.*?)\s+(" + "|".join(COLLECTIVES) + r")(?:-start)?\(")
_OP_NAME = re.compile(r'op_name="([^"]*)"')


def collectives(hlo_text):
    """{kind: [(bytes, op name)]} for every collective of a compiled program's text."""
    found = {}
    for line in hlo_text.splitlines():
        match = _COLLECTIVE.match(line)
        if not match:
            continue
        sizes = {"f64": 8, "s64": 8, "u64": 8, "f32": 4, "s32": 4, "u32": 4, "bf16": 2, "f16": 2, "s16": 2, "u16": 2,
                 "s8": 1, "u8": 1, "pred": 1}
        nbytes = 0
        for dtype, dims in re.findall(r"\b(f64|s64|u64|f32|s32|u32|bf16|f16|s16|u16|s8|u8|pred)\[([\d,]*)\]",
                                      match.group(1)):
            nbytes += sizes[dtype] * int(np.prod([int(v) for v in dims.split(",") if v] or [1]))
        op = _OP_NAME.search(line)
        name = op.group(1) if op else ""
        name = re.sub(r"^jit\([^)]*\)/", "", name)
        found.setdefault(match.group(2), []).append((nbytes, name))
    return found


def _collectives_text(found):
    return ", ".join(f"{len(v)} {k}{'s' if len(v) > 1 else ''} ({sum(b for b, _ in v):,} bytes)"
                     for k, v in sorted(found.items())) or "none"


def _places(items, n=3):
    names = []
    for _, name in items:
        short = re.sub(r"transpose\(jvp\((\w+)\)\)", r"backward of \1", name)
        short = re.sub(r"jvp\((\w+)\)", r"\1", short)
        if short and short not in names:
            names.append(short)
    return ", ".join(names[:n])


MODES = {
    # name: (mesh, tensor parallel, fully sharded)
    "data_parallel": ((8, 1), False, False),
    "fully_sharded": ((8, 1), False, True),
    "tensor_parallel": ((4, 2), True, False),
    "fully_sharded_tensor_parallel": ((4, 2), True, True),
}


def _mode_words(name):
    (n_data, n_model), tensor_parallel, fully_sharded = MODES[name]
    what = {"data_parallel": "data parallel", "fully_sharded": "fully sharded (FSDP)",
            "tensor_parallel": "tensor parallel", "fully_sharded_tensor_parallel": "FSDP with tensor parallelism"}[name]
    return f"{what} on {_a_mesh(n_data, n_model)}"


def _learner_param_shardings(impl, name, mesh, params):
    (_, _), tensor_parallel, fully_sharded = MODES[name]
    if tensor_parallel:
        shardings = _call("tensor_parallel_shardings", impl.tensor_parallel_shardings, params, mesh)
        wrong = _tp_problems(shardings, params, mesh)
        if wrong and isinstance(wrong[0], str):
            checks.fail(f"not checked: {wrong[0]}")
        if fully_sharded:
            shardings = _call("fsdp_shardings", impl.fsdp_shardings, params, mesh, shardings=shardings)
    elif fully_sharded:
        shardings = _call("fsdp_shardings", impl.fsdp_shardings, params, mesh)
    else:
        shardings = _replicated(mesh, params)
    owner = "fsdp_shardings" if fully_sharded else "tensor_parallel_shardings"
    if jax.tree.structure(shardings) != jax.tree.structure(params) or not all(
            isinstance(s, NamedSharding) for s in jax.tree.leaves(shardings)):
        checks.fail(f"not checked: the parameters' shardings are not a tree of NamedSharding like params ({owner}'s "
                    "check says why).")
    for leaf, sharding in zip(jax.tree.leaves(params), jax.tree.leaves(shardings)):
        if not _divides(sharding, leaf.shape):
            checks.fail(f"not checked: {owner} splits an axis into parts that do not divide it, so the parameters "
                        f"cannot be laid out ({owner}'s check says which).")
    return shardings


def _run_mode(impl, name):
    (n_data, n_model), tensor_parallel, fully_sharded = MODES[name]
    words = _mode_words(name)
    mesh = _mesh(n_data, n_model)
    state, params = _state(), _params()
    param_shardings = _learner_param_shardings(impl, name, mesh, params)
    shardings = _call("state_shardings", impl.state_shardings, state, param_shardings)
    if jax.tree.structure(shardings) != jax.tree.structure(state):
        checks.fail("not checked: state_shardings does not return a tree shaped like the state (its own check says "
                    "why), so the state cannot be laid out for the step.")
    placed = _call("jax.device_put(state, state_shardings(state, param_shardings))", jax.device_put, state, shardings)
    batch = NamedSharding(mesh, P("data", None))
    replicated = NamedSharding(mesh, P())
    step = checks.learner_function(impl.sharded_train_step, "sharded_train_step",
                                   ("train_step", "state_shardings", "mesh"))
    step = _call("sharded_train_step", step, oracle_train_step, shardings, mesh)
    if not callable(step):
        checks.fail(f"sharded_train_step should return the compiled step (a function), but it returned a "
                    f"{type(step).__name__}.")
    batches = [(jax.device_put(x, batch), jax.device_put(y, batch), jax.device_put(key, replicated))
               for x, y, key in _batches()]
    # What the first call is given, kept apart from the arrays (a step that donates its state deletes them).
    given = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=a.sharding), (placed,) + batches[0])
    expected_losses, expected_state, single_flops = _oracle_run()
    current, losses = placed, []
    for i, (x, y, key) in enumerate(batches):
        out = _call("sharded_train_step's step", step, current, x, y, key)
        if not (isinstance(out, tuple) and len(out) == 2):
            checks.fail(f"the sharded step should return (state, loss), as train_step does, but it returned a "
                        f"{type(out).__name__}.")
        current, loss = out
        losses.append(float(np.asarray(loss)))
        moved = []
        for (path, leaf), want in zip(jax.tree_util.tree_flatten_with_path(current)[0], jax.tree.leaves(shardings)):
            got = getattr(leaf, "sharding", None)
            if got is None or not _same_layout(got, want, np.ndim(leaf)):
                moved.append((path, leaf, got, want))
        if moved:
            path, leaf, got, want = next((m for m in moved if _names(m[0])[:1] == ("params",)), moved[0])
            shown = (f"{_spec_text(got, np.ndim(leaf))} on {len(got.device_set)} device(s)" if got is not None
                     else "not an array")
            on_one = all(g is not None and len(g.device_set) == 1 for _, _, g, _ in moved)
            everywhere = all(g is not None and getattr(g, "is_fully_replicated", False) for _, _, g, _ in moved)
            if on_one:
                cause = ("the step returns the state on one device: everything was gathered there, and that "
                         "device computed the step alone. Compile the step for the mesh, jax.jit(train_step, "
                         "in_shardings=..., out_shardings=(state_shardings, replicated)), and give it the arrays "
                         "where they are.")
            elif everywhere:
                cause = ("the step gathers the state onto every device: its results must stay as sharded as its "
                         "arguments, jax.jit(..., out_shardings=(state_shardings, replicated)). Gathered, each "
                         "device holds the whole model and its moments again.")
            else:
                cause = ("jit's out_shardings should be (state_shardings, replicated), so that the state keeps its "
                         "layout from step to step.")
            checks.fail(f"{words}: after step {i + 1}, {len(moved)} of the state's {len(jax.tree.leaves(shardings))} "
                        f"arrays come back laid out otherwise than state_shardings; {_where(path)} is {shown} instead "
                        f"of {_spec_text(want, np.ndim(leaf))}.\n  Likely cause: {cause}")
    checks.assert_close(np.array(losses), expected_losses,
                        f"{words}: the losses of {STEPS} steps, against the same steps on one device", rtol=1e-5,
                        atol=1e-6)
    final = jax.device_get(current)
    for (path, got), want in zip(jax.tree_util.tree_flatten_with_path(final)[0], jax.tree.leaves(expected_state)):
        if not np.allclose(np.asarray(got, np.float64), np.asarray(want, np.float64), rtol=1e-5, atol=STATE_ATOL):
            diff = float(np.max(np.abs(np.asarray(got, np.float64) - np.asarray(want, np.float64))))
            checks.fail(f"{words}: after {STEPS} steps, {_where(path)} differs from the single-device steps' by up to "
                        f"{diff:.3g} (the losses agree). The sharded step must compute exactly train_step: pass it "
                        "its arguments unchanged.")
    # The program the first call compiled (jit caches it: lowering again for the same arguments costs nothing).
    lower = step.lower if hasattr(step, "lower") else jax.jit(step).lower
    compiled = _call("sharded_train_step's step", lambda: lower(*given).compile())
    return mesh, param_shardings, shardings, compiled, single_flops


def _layout_causes(impl, name, mesh, param_shardings, shardings):
    """Which of the learner's layouts differ from the lesson's in this mode: {function name: its sentence}."""
    (_, _), tensor_parallel, fully_sharded = MODES[name]
    params, causes = _params(), {}
    base = _replicated(mesh, params)
    if tensor_parallel:
        try:
            base = impl.tensor_parallel_shardings(params, mesh)
            if _tp_problems(base, params, mesh):
                causes["tensor_parallel_shardings"] = ("Megatron's split is not the lesson's (tensor_parallel_shardings' "
                                                       "check names the parameters)")
        except Exception:  # noqa: BLE001 - the function's own check says what it raised
            base = _tp_shardings(mesh)
    if fully_sharded and _fsdp_problems(param_shardings, params, mesh, base):
        causes["fsdp_shardings"] = "the parameters are not fully sharded (fsdp_shardings' check says which)"
    if _state_problems(shardings, _state(), param_shardings, mesh):
        causes["state_shardings"] = ("AdamW's moments or the counts are laid out otherwise than the parameters they "
                                     "go with (state_shardings' check says which)")
    return causes


def _check_memory(words, state, shardings, mesh, name, causes):
    (_, _), tensor_parallel, fully_sharded = MODES[name]
    mine = _bytes_per_device(state, shardings)
    ideal_params = (_fsdp_shardings(mesh, tensor_parallel) if fully_sharded else
                    _tp_shardings(mesh) if tensor_parallel else _replicated(mesh, state.params))
    ideal_shardings = _state_shardings(state, ideal_params, mesh)
    ideal = _bytes_per_device(state, ideal_shardings)
    whole = _bytes_per_device(state, _replicated(mesh, state))
    if mine <= ideal * 1.01 + 64:
        return
    extra = {}
    flat = jax.tree_util.tree_flatten_with_path(state)[0]
    for (path, leaf), got, want in zip(flat, jax.tree.leaves(shardings), jax.tree.leaves(ideal_shardings)):
        more = (int(np.prod(got.shard_shape(np.shape(leaf)))) - int(np.prod(want.shard_shape(np.shape(leaf))))) * 4
        if more > 0:
            label = _state_label(path)
            extra[label] = extra.get(label, 0) + more
    biggest = ", ".join(f"{label} {nbytes:,} bytes more" for label, nbytes in
                        sorted(extra.items(), key=lambda kv: -kv[1])[:3])
    said = list(causes.values()) or ["the state is laid out otherwise than this mode asks"]
    checks.fail(f"{words}: the state takes {mine:,} bytes on each device ({mine / whole:.0%} of the whole {whole:,}); "
                f"laid out as the lesson says it would take {ideal:,} ({ideal / whole:.0%}). Where the difference is: "
                f"{biggest}.\n  Likely cause: " + "; ".join(said) + ".")


def _check_program(words, compiled, name, single_flops, causes):
    (n_data, n_model), tensor_parallel, fully_sharded = MODES[name]
    found = collectives(compiled.as_text())
    said = _collectives_text(found)
    if not found:
        checks.fail(f"{words}: the compiled step holds no collective at all: the devices never exchange anything, "
                    "so each must be computing the whole step on its own data. (The gradients of a batch split over "
                    "'data' must be summed across the devices: jit places an all-reduce there when the batch is "
                    "split and the state laid out as the mode asks.)")
    if fully_sharded:
        if "all-gather" not in found:
            checks.fail(f"{words}: the compiled step gathers no parameters ({said}): under FSDP each device holds "
                        "a slice of every parameter and XLA gathers each one just before it is used. With nothing "
                        "gathered, nothing was sharded over 'data'."
                        + (f"\n  Likely cause: {causes['fsdp_shardings']}." if "fsdp_shardings" in causes else ""))
    else:
        others = {k: v for k, v in found.items() if k != "all-reduce"}
        if others:
            kinds = ", ".join(f"{len(v)} {k}{'s' if len(v) > 1 else ''}" for k, v in others.items())
            places = _places([item for v in others.values() for item in v])
            why = ("with Megatron's split only partial sums travel, one all-reduce after each attention and each MLP "
                   "(and their mirror images in the backward pass), besides the gradients' all-reduce over 'data'; "
                   "anything else means XLA must gather weights, activations or optimiser state to where they are "
                   "needed." if tensor_parallel else
                   "in data parallelism only the gradients travel, summed by all-reduce; anything else means an "
                   "array is laid out so that XLA must move it.")
            cause = (causes.get("tensor_parallel_shardings") or causes.get("state_shardings") or
                     "sharded_train_step moves the arrays: its in_shardings and out_shardings should be "
                     "(state_shardings, the batch's P('data', None) twice, replicated) and (state_shardings, replicated)")
            checks.fail(f"{words}: the compiled step holds {kinds} besides its all-reduces ({said})"
                        + (f", e.g. at {places}" if places else "") + f".\n  Why it matters: {why}"
                        + f"\n  Likely cause: {cause}.")
    if single_flops:
        flops = _flops(compiled)
        if flops and flops > 0.5 * single_flops:
            checks.fail(f"{words}: each device does {flops:,.0f} floating-point operations per step, "
                        f"{flops / single_flops:.0%} of the whole step on one device ({single_flops:,.0f}); split "
                        f"over {n_data * n_model} devices it should be far less. Likely cause: the batch is not split "
                        "over 'data' inside the step (every device computes every row).")


def _mode_check(impl, name):
    words = _mode_words(name)
    mesh, param_shardings, shardings, compiled, single_flops = _run_mode(impl, name)
    causes = _layout_causes(impl, name, mesh, param_shardings, shardings)
    _check_program(words, compiled, name, single_flops, causes)
    _check_memory(words, _state(), shardings, mesh, name, causes)


@check
def data_parallel(impl):
    _mode_check(impl, "data_parallel")


@check
def fully_sharded(impl):
    _mode_check(impl, "fully_sharded")


@check
def tensor_parallel(impl):
    _mode_check(impl, "tensor_parallel")


@check
def fully_sharded_tensor_parallel(impl):
    _mode_check(impl, "fully_sharded_tensor_parallel")


# ----------------------------------------------------------------------------------------------------
# The process


def _implementation(spec):
    from jaxgpt.grader import implementation
    if spec[0] == "path":
        return implementation.resolve(spec[1])
    if spec[0] == "namespace":
        return implementation.NamespaceImplementation(pickle.loads(spec[2]), label=spec[1])
    raise ValueError(f"unknown implementation {spec[0]!r}")


def _outcome(name, fn, impl, task):
    from jaxgpt.grader import outcomes
    printed = io.StringIO()
    started = time.perf_counter()
    result = {"name": name, "status": "passed", "message": "", "load_error": False, "raised": None}
    try:
        with contextlib.redirect_stdout(printed), contextlib.redirect_stderr(printed):
            fn(impl)
    except BaseException as err:  # noqa: BLE001 - every outcome is reported, none ends the process
        if os.environ.get("JAXGPT_SHARDING_DEBUG"):
            import traceback
            traceback.print_exc()
        outcome = outcomes.classify(err, task)
        result.update(status=str(outcome.status), message=outcome.message, load_error=outcome.load_error)
        if isinstance(err, NotImplementedError):
            owner = outcomes.task_that_is_unfinished(err)
            result["raised"] = str(err) if owner is None or f"{owner.number}" in str(err) else \
                f"Task {owner.number}: {err}"
    result["output"] = printed.getvalue()
    result["seconds"] = round(time.perf_counter() - started, 2)
    return result


def _oracle_quietly():
    try:
        _oracle_run()
    except Exception:  # noqa: BLE001 - the mode check that needs it calls it again and reports
        pass


def _watch_parent():
    parent = os.getppid()

    def watch():
        while True:
            time.sleep(1.0)
            if os.getppid() != parent:
                os._exit(0)

    threading.Thread(target=watch, daemon=True).start()


def main():
    answers = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # what anything prints at the C level goes to the log, not into the answers
    _watch_parent()
    import jax as _jax
    _jax.config.update("jax_num_cpu_devices", N_DEVICES)  # before JAX's backend starts: the reason for this process
    request = pickle.load(sys.stdin.buffer)
    for entry in request.get("sys_path", []):
        if entry not in sys.path:
            sys.path.append(entry)
    if request.get("cwd") and os.path.isdir(request["cwd"]):
        os.chdir(request["cwd"])
    linecache.cache.update(request.get("linecache") or {})
    _imports()
    from jaxgpt import settings
    from jaxgpt.grader import task_list
    if "jax_disable_most_optimizations" in jax.config.values:
        jax.config.update("jax_disable_most_optimizations", True)
    cache_dir = settings.xla_cache_dir()
    if cache_dir:
        try:
            jax.config.update("jax_compilation_cache_dir", cache_dir)
            jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
            jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)
        except Exception:
            pass
    jax.config.update("jax_default_matmul_precision", "highest")
    task = task_list.get_task(14)
    answers.write(json.dumps({"ready": len(jax.devices())}) + "\n")
    if any(name in MODES for name in request["checks"]):
        threading.Thread(target=_oracle_quietly, daemon=True, name="oracle").start()
    impl = None
    for name in request["checks"]:
        if impl is None:
            try:
                impl = _implementation(request["impl"]).for_task(task)
            except Exception as err:  # noqa: BLE001
                answers.write(json.dumps({"name": name, "status": "error", "load_error": True, "raised": None,
                                          "message": f"the code to grade could not be unpacked ({type(err).__name__}: "
                                                     f"{str(err)[:300]})", "output": ""}) + "\n")
                continue
        answers.write(json.dumps(_outcome(name, CHECKS[name], impl, task)) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
