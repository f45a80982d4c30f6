"""Task 12: AdamW with `jax.tree_util.tree_map`, global-norm clipping, a warmup-cosine schedule and the
weight-decay mask, each by hand and each graded against its Optax counterpart.

Oracles: Optax itself, nobody's code here. `warmup_cosine_schedule` against
`optax.warmup_cosine_decay_schedule(0.0, peak, warmup, decay, end)` at every step from 0 to past decay_steps,
called with Python ints and, under `jax.jit`, with a traced step; `clip_by_global_norm` against
`optax.clip_by_global_norm` on trees whose norm is above and below max_norm, and whose leaves have norms on
both sides of it (so a per-leaf clip shows); `decay_mask` against the rule of jaxgpt's own training (leaves
named 'kernel' or 'embedding' decay) on a MiniGPT tree and on task 9's stacked tree, where nanoGPT's
`ndim >= 2` rule is wrong; `adamw_update` against `optax.adamw` + `optax.apply_updates` over 100 steps of a
fixed gradient sequence, in three runs (Optax's defaults with mask=None; a schedule with b1, b2, eps, weight
decay and a mask tree all away from their defaults; a large learning rate and weight decay with a mask
function), after two first steps whose answer can be checked by hand (every parameter moves by exactly the
learning rate at t = 1; zero gradients leave weight decay alone). Last, end to end: 100 training steps of a
small GPT with the learner's four pieces against `optax.chain(optax.clip_by_global_norm,
optax.adamw(schedule, mask=...))` from the same parameters on the same batches.

Diagnosis: each known mistake is recomputed, and named only if it gives the learner's numbers: the schedule
variants (`_SCHEDULE_MISTAKES`: warmup one step ahead, end_value ignored, decay_steps counted after the
warmup, no hold after decay_steps, ...), the clipping variants (`_CLIP_MISTAKES`: per leaf, always rescaled,
no square root, ...), the masks (`_MASK_MISTAKES`: nanoGPT's ndim rule, LayerNorm scales decayed, ...), and
AdamW's (`_simulate`, a float64 replay of the whole 100 steps with one switch per mistake: the bias
correction's step count, moments not kept, L2 instead of decoupled decay, decay without the learning rate or
on the updated parameters, eps inside the square root, the schedule read after the increment, the mask
ignored, inverted or freezing, ...). End to end, a failing run is redone with one of the learner's pieces
replaced by Optax's at a time, and the piece whose replacement gives Optax's numbers is named.

Shapes: the unit runs use a tree of 9 leaves shaped like a MiniGPT's (an embedding (13, 6), a LayerNorm,
attention's query kernel (6, 2, 3) and bias (2, 3), a feed-forward and the head), 391 numbers, with gradients
whose scales run from 1e-3 to 1 across leaves (so eps's place and a per-leaf clip both show). The GPT of the
end-to-end run: vocab 13, block_size 11, n_embd 12, 3 heads of 4, 2 layers, batches of 5.

Tolerances, from float32's unit roundoff u = 2**-24 = 6e-8:
  - the schedule: Optax and a hand-written formula round differently in a handful of operations: a few u
    relative. SCHEDULE_RTOL = 1e-5 and an absolute 1e-6 of peak_value; the nearest mistake, a warmup one step
    off, moves a value by peak / warmup_steps (1/7 of the peak here);
  - clipping: one norm (a sum of 391 squares) and a product per entry: a few u relative (n u for the sum in the
    worst case, 2e-5 for 391 terms, far less in practice). CLIP_RTOL = 1e-5 (measured: 1e-7); the nearest mistake,
    a norm without its square root, changes every entry by a factor norm;
  - AdamW, 100 steps: each side rounds p - lr * u once per step (half an ulp of p, 3e-8 |p|) and computes u to a
    few u (lr * 3e-7); over 100 steps at most 3e-6 |p| + 100 * lr * 3e-7 (3e-6 at lr = 0.1) if every rounding went
    the same way. ADAMW_RTOL = 1e-5 and ADAMW_ATOL = 2e-5 (measured: the reference 2.9e-6 at |p| up to 9.4; the
    catalogue's correct alternatives, one of which decays in PyTorch's order, up to 4.5e-6). The nearest mistakes
    move parameters by 1e-3 or more over the run: decay applied to the updated parameters (lr**2 * weight_decay *
    |u| = 5e-3 per step in the strong-decay run), PyTorch's default decay (lr * 0.0099 * |p| = 1e-4 per step in
    the defaults run), the schedule read one step late (peak / warmup = 7e-3 per step of warmup);
  - end to end, the gradients depend on the parameters, so roundoff is fed back; measured up to 1.8e-6 on the
    parameters and 7e-7 on the losses after 100 steps (reference and correct alternatives), except for the
    attention's key biases: adding a constant to every key leaves the softmax unchanged, so their gradient is zero
    but for roundoff (1e-9), which Adam divides by its own square root and turns into steps of size lr in
    arbitrary directions (measured: 4e-2 apart between two correct implementations). The check sets those
    gradients to exactly zero before anyone sees them, so the key biases only decay, or not. Same ADAMW_ATOL;
    losses at LOSS_ATOL 1e-5.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax

import oracles_gpt as og
from jaxgpt import contract
from jaxgpt.grader import checks, outcomes

TASK = 12

SCHEDULE_RTOL = 1e-5
CLIP_RTOL = 1e-5
ADAMW_RTOL = 1e-5
ADAMW_ATOL = 2e-5  # module docstring: measured up to 4.5e-6; the nearest mistake 1e-3
LOSS_ATOL = 1e-5
STEPS = 100

CALLS = {
    "warmup_cosine_schedule": (("step", "peak_value", "warmup_steps", "decay_steps"), ("end_value",)),
    "clip_by_global_norm": (("grads", "max_norm"), ()),
    "decay_mask": (("params",), ()),
    "adamw_init": (("params",), ()),
    "adamw_update": (("grads", "state", "params", "learning_rate"),
                     ("b1", "b2", "eps", "weight_decay", "mask")),
}


def _function(impl, name):
    positional, keywords = CALLS[name]
    return checks.learner_function(getattr(impl, name), name, positional, keywords)


def _run(who, fn, *args, **kwargs):
    """fn(*args, **kwargs), with the learner's failures under jax.jit said as sentences."""
    try:
        return fn(*args, **kwargs)
    except (NotImplementedError, checks.CheckFailed):
        raise
    except Exception as err:
        name = type(err).__name__
        if "Tracer" in name or "Concretization" in name or "NonConcrete" in name:
            where = outcomes.learner_frame(err)
            first = str(err).strip().splitlines()[0][:300] if str(err).strip() else ""
            checks.fail(f"under jax.jit, where the step count and the arrays are traced values, {who} fails: "
                        f"{name}: {first}" + (f"\n    at {where}" if where else "")
                        + "\n  A jitted training step calls it, so it cannot use a Python `if` or `int(...)`, "
                        "`float(...)` on an array: choose between two values with jnp.where(condition, a, b), "
                        "and keep counts and norms as arrays.")
        raise


def _leaf_name(path):
    return "/".join(str(getattr(p, "key", getattr(p, "idx", getattr(p, "name", p)))) for p in path)


def _named_leaves(tree):
    return [(_leaf_name(path), leaf) for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]]


def _flat(tree):
    """Every number of a tree, in leaf order, as one float64 vector."""
    return np.concatenate([np.asarray(leaf, np.float64).reshape(-1) for leaf in jax.tree_util.tree_leaves(tree)])


def _fill(shapes, seed, scale=0.2):
    """Random jnp arrays for a tree of shapes (tuples), biases and scales as og.random_fill draws them."""
    structs = jax.tree_util.tree_map(lambda s: jax.ShapeDtypeStruct(s, jnp.float32), shapes,
                                     is_leaf=lambda s: isinstance(s, tuple))
    return jax.tree_util.tree_map(jnp.asarray, og.random_fill(structs, seed=seed, scale=scale))


def _by_name(tree):
    """The lesson's mask: True at leaves named 'kernel' or 'embedding'."""
    return jax.tree_util.tree_map_with_path(lambda path, _: getattr(path[-1], "key", None) in ("kernel", "embedding"),
                                            tree)


# ----------------------------------------------------------------------------------------------------
# warmup_cosine_schedule

# (peak_value, warmup_steps, decay_steps, end_value or None for the default): every number differs
SCHEDULES = ((3e-3, 7, 45, 3e-4), (0.5, 1, 20, None), (2.0, 12, 13, 0.25))


def _schedule_np(steps, peak, warmup, decay, end, *, ahead=0, reach_early=False, ignore_end=False,
                 end_on_top=False, decay_after_warmup=False, cosine_from_zero=False, no_hold=False,
                 quarter=False, linear=False, no_warmup=False, zero_after=False, warm_from_end=False):
    """The schedule in float64 for an array of steps, with one switch per known mistake."""
    t = np.asarray(steps, np.float64)
    warm = peak * (t + ahead) / (warmup - 1 if reach_early and warmup > 1 else warmup)
    if warm_from_end:
        warm = end + (peak - end) * t / warmup
    span = decay if decay_after_warmup else decay - warmup
    p = (t if cosine_from_zero else t - warmup) / span
    p = p if no_hold else np.clip(p, 0.0, 1.0)
    low = 0.0 if ignore_end else end
    shape = (1 - p if linear else np.cos(np.pi / 2 * p) if quarter else 0.5 * (1 + np.cos(np.pi * p)))
    cosine = (end + peak * shape) if end_on_top else low + (peak - low) * shape
    if zero_after:
        cosine = np.where(t > decay, 0.0, cosine)
    if no_warmup:
        return cosine
    return np.where(t < warmup, warm, cosine)


_SCHEDULE_MISTAKES = [
    ("the warmup is one step ahead: step 0 should give 0 and step warmup_steps the peak, peak_value * step / "
     "warmup_steps (Optax starts at init_value, here 0), not peak_value * (step + 1) / warmup_steps.", dict(ahead=1)),
    ("the warmup reaches the peak one step early (peak_value * step / (warmup_steps - 1)): it should be "
     "peak_value * step / warmup_steps, the peak at step warmup_steps.", dict(reach_early=True)),
    ("the cosine decays to 0 whatever end_value is: it should go from peak_value down to end_value, end_value + "
     "(peak_value - end_value) * (1 + cos(pi * progress)) / 2.", dict(ignore_end=True)),
    ("end_value is added on top of the cosine (end_value + peak_value * (1 + cos) / 2), so the decay starts above "
     "the peak: scale the cosine by (peak_value - end_value).", dict(end_on_top=True)),
    ("the cosine lasts decay_steps after the warmup, but decay_steps counts the warmup too (as Optax's does): "
     "progress = (step - warmup_steps) / (decay_steps - warmup_steps).", dict(decay_after_warmup=True)),
    ("the cosine's progress is counted from step 0, not from the end of the warmup: progress = (step - "
     "warmup_steps) / (decay_steps - warmup_steps).", dict(cosine_from_zero=True)),
    ("after decay_steps the cosine rises again: hold it at end_value, progress clipped to at most 1 "
     "(jnp.clip(progress, 0, 1), or jnp.minimum).", dict(no_hold=True)),
    ("after decay_steps the schedule drops to 0: it holds end_value from decay_steps on (Optax's does).",
     dict(zero_after=True)),
    ("the decay is a quarter cosine, cos(pi / 2 * progress): the lesson's (and Optax's) is the half cosine "
     "(1 + cos(pi * progress)) / 2, flat at both ends.", dict(quarter=True)),
    ("the decay is linear: the lesson's (and Optax's) is the half cosine (1 + cos(pi * progress)) / 2.",
     dict(linear=True)),
    ("there is no warmup: the schedule should climb linearly from 0 at step 0 to peak_value at step warmup_steps, "
     "then decay.", dict(no_warmup=True)),
    ("the warmup starts from end_value: it climbs from 0 at step 0 (Optax's init_value, here 0) to peak_value, "
     "peak_value * step / warmup_steps; end_value is where the cosine ends.", dict(warm_from_end=True)),
]


@functools.lru_cache(maxsize=None)
def _optax_schedule_values(peak, warmup, decay, end, last):
    schedule = optax.warmup_cosine_decay_schedule(0.0, peak, warmup, decay, 0.0 if end is None else end)
    return np.asarray(jax.jit(jax.vmap(schedule))(jnp.arange(last + 1)), np.float64)


def _schedule_call(fn, step, peak, warmup, decay, end):
    return fn(step, peak, warmup, decay) if end is None else fn(step, peak, warmup, decay, end)


def _schedule_diagnose(peak, warmup, decay, end, steps):
    def diagnose(got):
        for why, switches in _SCHEDULE_MISTAKES:
            if checks.matches(got, _schedule_np(steps, peak, warmup, decay, 0.0 if end is None else end, **switches),
                              rtol=1e-4, atol=1e-6 * peak):
                return why
        return None

    return diagnose


def test_schedule_matches_optax(impl):
    """warmup_cosine_schedule gives Optax's warmup_cosine_decay_schedule at every step, for a Python int and a traced step"""
    fn = _function(impl, "warmup_cosine_schedule")
    for peak, warmup, decay, end in SCHEDULES:
        last = decay + 9  # past decay_steps: the schedule holds end_value there
        steps = np.arange(last + 1)
        said = (f"warmup_cosine_schedule(step, peak_value={peak:g}, warmup_steps={warmup}, decay_steps={decay}"
                + (f", end_value={end:g})" if end is not None else ") (end_value left at its default, 0.0)"))
        # every step traced, as a jitted training step calls it
        jitted = jax.jit(lambda s: _schedule_call(fn, s, peak, warmup, decay, end))
        got = np.array([_scalar(_run("warmup_cosine_schedule", jitted, jnp.int32(step)), f"{said} at step {step}")
                        for step in steps])
        expected = _optax_schedule_values(peak, warmup, decay, end, last)
        checks.assert_floating(got, said)
        checks.assert_close(got, expected, f"{said} at steps 0 to {last} (index = step), under jax.jit",
                            rtol=SCHEDULE_RTOL, atol=1e-6 * peak,
                            diagnose=_schedule_diagnose(peak, warmup, decay, end, steps))
        # Python ints, eagerly, where the pieces meet
        for step in sorted({0, 1, warmup, decay, last}):
            value = _scalar(_run("warmup_cosine_schedule", _schedule_call, fn, step, peak, warmup, decay, end),
                            f"{said} at step {step}")
            checks.assert_close(np.array([value]), expected[step:step + 1],
                                f"{said} at the Python int step {step} (under jax.jit it gives {got[step]:.6g})",
                                rtol=SCHEDULE_RTOL, atol=1e-6 * peak)


def _scalar(value, what):
    array = checks.as_array(value, what)
    if array.size != 1:
        checks.fail(f"{what} should be one number (a scalar), but it has shape {array.shape}.")
    return float(array.reshape(()))


# ----------------------------------------------------------------------------------------------------
# clip_by_global_norm

SMALL_SHAPES = {  # 9 leaves shaped like a MiniGPT's, 391 numbers
    "token_embedding": {"embedding": (13, 6)},
    "blocks_0": {"ln1": {"scale": (6,), "bias": (6,)}, "attn": {"query": {"kernel": (6, 2, 3), "bias": (2, 3)}}},
    "blocks_1": {"ffwd": {"fc": {"kernel": (6, 24), "bias": (24,)}}},
    "lm_head": {"kernel": (6, 13), "bias": (13,)},
}
LEAF_SCALES = (1.0, 3e-3, 0.3, 1e-3, 0.05, 0.6, 2e-2, 0.1, 7e-3)  # one per leaf (in leaf order): 1e-3 to 1


def _global_norm(tree):
    return float(np.sqrt(sum(np.sum(np.square(np.asarray(leaf, np.float64)))
                             for leaf in jax.tree_util.tree_leaves(tree))))


@functools.lru_cache(maxsize=None)
def _small_params():
    return _fill(SMALL_SHAPES, seed=3)


@functools.lru_cache(maxsize=None)
def _small_grads():
    """STEPS gradients for the small tree: a drift the moments can follow plus noise, leaf scales 1e-3 to 1."""
    params = _small_params()
    leaves, treedef = jax.tree_util.tree_flatten(params)
    rng = np.random.default_rng(12)
    drift = [rng.standard_normal(leaf.shape) for leaf in leaves]
    out = []
    for _ in range(STEPS):
        out.append(jax.tree_util.tree_unflatten(treedef, [
            jnp.asarray(scale * (d + rng.standard_normal(leaf.shape)), jnp.float32)
            for leaf, d, scale in zip(leaves, drift, LEAF_SCALES)]))
    return tuple(out)


def _clip_np(grads, max_norm, *, per_leaf=False, always=False, squared=False, sum_of_norms=False,
             elementwise=False, rms=False, inverted=False, wrong_side=False, square_of_sums=False):
    leaves, treedef = jax.tree_util.tree_flatten(grads)
    leaves = [np.asarray(leaf, np.float64) for leaf in leaves]
    if elementwise:
        return jax.tree_util.tree_unflatten(treedef, [np.clip(x, -max_norm, max_norm) for x in leaves])
    if per_leaf:
        return jax.tree_util.tree_unflatten(treedef, [
            x * (max_norm / np.linalg.norm(x) if np.linalg.norm(x) > max_norm else 1.0) for x in leaves])
    squares = sum(np.sum(x) ** 2 for x in leaves) if square_of_sums else sum(np.sum(x * x) for x in leaves)
    if sum_of_norms:
        norm = sum(np.linalg.norm(x) for x in leaves)
    elif squared:
        norm = squares
    elif rms:
        norm = np.sqrt(squares / sum(x.size for x in leaves))
    else:
        norm = np.sqrt(squares)
    clip = (norm < max_norm) if wrong_side else (norm > max_norm)
    factor = (norm / max_norm if inverted else max_norm / norm) if (clip or always) else 1.0
    return jax.tree_util.tree_unflatten(treedef, [x * factor for x in leaves])


_CLIP_MISTAKES = [
    ("each leaf is clipped by its own norm: the norm is global, one length for the whole tree (the square root of "
     "the sum of every leaf's squares), and every leaf is scaled by the same factor.", dict(per_leaf=True)),
    ("the gradients are rescaled to max_norm even when their norm is smaller: scale only when the norm is larger "
     "than max_norm, by max_norm / norm (jnp.where(norm > max_norm, max_norm / norm, 1.0)).", dict(always=True)),
    ("the norm is the sum of squares without its square root: norm = sqrt(sum of every leaf's squares).",
     dict(squared=True)),
    ("each leaf is summed before it is squared (jnp.sum(g) ** 2): the norm squares every entry first, "
     "sqrt(sum of jnp.sum(g ** 2) over the leaves).", dict(square_of_sums=True)),
    ("the norm is the sum of the leaves' own norms: the global norm is sqrt(sum of every leaf's squares), the "
     "length of the whole tree seen as one vector.", dict(sum_of_norms=True)),
    ("each entry is clipped to [-max_norm, max_norm] (jnp.clip): that is clipping by value; clipping by global "
     "norm scales the whole tree by one factor and keeps its direction.", dict(elementwise=True)),
    ("the norm is a root mean square (divided by the number of entries): the global norm is sqrt(sum of "
     "squares), no mean.", dict(rms=True)),
    ("the factor is upside down, norm / max_norm: a norm above max_norm is brought down by max_norm / norm.",
     dict(inverted=True)),
    ("the test is the wrong way round: gradients are scaled when their norm is below max_norm, and left alone when "
     "it is above.", dict(wrong_side=True)),
]


def _call_clip(fn, grads, max_norm, what):
    out = _run("clip_by_global_norm", fn, grads, max_norm)
    checks.assert_tree(out, grads, f"the tree {what} returns (it should be shaped like grads)")
    return out


def test_clip_matches_optax(impl):
    """clip_by_global_norm scales the whole tree by max_norm / global norm when the norm is larger, as Optax's, and leaves smaller gradients alone"""
    fn = _function(impl, "clip_by_global_norm")
    grads = _small_grads()[0]
    norm = _global_norm(grads)
    leaf_norms = [float(np.linalg.norm(np.asarray(x))) for x in jax.tree_util.tree_leaves(grads)]
    cases = [
        (0.35 * norm, "above max_norm (leaves' own norms on both sides of it)"),
        (3.0 * norm, "below max_norm"),
        (0.02 * norm, "far above max_norm"),
    ]
    assert min(leaf_norms) < cases[0][0] < max(leaf_norms), "the clip case lost its point"
    jitted = jax.jit(fn)  # max_norm traced too: one compilation for the three cases, as a training step calls it
    oracle = jax.jit(lambda g, max_norm: optax.clip_by_global_norm(max_norm).update(g, optax.EmptyState())[0])
    for max_norm, what in cases:
        max_norm = float(np.float32(max_norm))
        got = _call_clip(jitted, grads, max_norm, "clip_by_global_norm")
        expected = oracle(grads, max_norm)
        said = (f"clip_by_global_norm(grads, max_norm={max_norm:.4g}) under jax.jit, with a global norm of "
                f"{norm:.4g}, {what}, every leaf flattened in leaf order,")

        def diagnose(flat, max_norm=max_norm):
            if checks.matches(flat, _flat(grads), rtol=CLIP_RTOL, atol=0.0) and norm > max_norm:
                return ("the gradients came back unchanged although their norm is larger than max_norm: scale "
                        "every leaf by max_norm / norm when norm > max_norm.")
            for why, switches in _CLIP_MISTAKES:
                if checks.matches(flat, _flat(_clip_np(grads, max_norm, **switches)), rtol=1e-4, atol=1e-9):
                    return why
            return None

        checks.assert_close(_flat(got), _flat(expected), said, rtol=CLIP_RTOL, atol=1e-9, diagnose=diagnose)


# ----------------------------------------------------------------------------------------------------
# decay_mask

GPT_FIELDS = dict(vocab_size=13, block_size=11, n_embd=12, n_head=3, n_layer=2)


def _stacked_shapes(fields):
    """Task 9's scanned tree: one 'blocks' entry whose leaves are stacked along a first axis of n_layer."""
    shapes = contract.model_shapes(**fields)
    blocks = [shapes.pop(f"blocks_{i}") for i in range(fields["n_layer"])]
    shapes["blocks"] = jax.tree_util.tree_map(lambda s: (fields["n_layer"],) + s, blocks[0],
                                              is_leaf=lambda s: isinstance(s, tuple))
    return shapes


_MASK_MISTAKES = [
    ("the mask follows nanoGPT's p.dim() >= 2 rule: Flax's attention biases are (n_head, head_size), two "
     "dimensions, and would decay (and in task 9's stacked tree every bias has two). Decide by the leaf's name, "
     "path[-1].key in ('kernel', 'embedding').", lambda name, leaf: np.ndim(leaf) >= 2),
    ("every leaf decays: biases and LayerNorm scales should not (True only at 'kernel' and 'embedding').",
     lambda name, leaf: True),
    ("no leaf decays: 'kernel' and 'embedding' leaves should be True.", lambda name, leaf: False),
    ("the LayerNorm scales decay: only leaves named 'kernel' or 'embedding' do; a scale pulled towards 0 switches "
     "its feature off (a bias and a scale are both spared).", lambda name, leaf: not name.endswith("bias")),
    ("the biases decay: only leaves named 'kernel' or 'embedding' do (biases and LayerNorm scales are both "
     "spared).", lambda name, leaf: not name.endswith("scale")),
    ("the embeddings do not decay: the token and position tables ('embedding') decay as the weight matrices "
     "('kernel') do.", lambda name, leaf: name.endswith("kernel")),
    ("the mask is inverted: True means 'decay this leaf' (Optax's convention), at 'kernel' and 'embedding'.",
     lambda name, leaf: not name.rsplit("/", 1)[-1] in ("kernel", "embedding")),
]


def _check_mask(fn, params, what):
    mask = _run("decay_mask", fn, params)
    if jax.tree_util.tree_structure(mask) != jax.tree_util.tree_structure(params):
        try:
            checks.assert_tree(mask, jax.tree_util.tree_map(lambda _: np.zeros(()), params),
                               f"the mask decay_mask gives for {what}")
        except checks.CheckFailed as err:
            checks.fail(f"{err}\n  decay_mask should return the same tree as params, one True or False per leaf "
                        "(jax.tree_util.tree_map_with_path keeps the structure).")
        checks.fail(f"the mask decay_mask gives for {what} is not the same kind of tree as params (a "
                    f"{type(mask).__name__}): one True or False per leaf, in the same nested dicts.")
    names = [name for name, _ in _named_leaves(params)]
    said = []
    for name, value in zip(names, jax.tree_util.tree_leaves(mask)):
        if np.ndim(value) != 0 or np.asarray(value).dtype not in (np.bool_,) and not isinstance(value, bool):
            if np.ndim(value) != 0:
                checks.fail(f"decay_mask gives an array of shape {np.shape(value)} at {name} for {what}: one Python "
                            "bool per leaf (True: this leaf decays), as Optax's mask expects.")
            checks.fail(f"decay_mask gives {value!r} at {name} for {what}: one bool per leaf, True or False.")
        said.append(bool(value))
    leaves = jax.tree_util.tree_leaves(params)
    expected = [name.rsplit("/", 1)[-1] in ("kernel", "embedding") for name in names]
    wrong = [(n, s, e) for n, s, e in zip(names, said, expected) if s != e]
    if not wrong:
        return
    listed = ", ".join(f"{n} {bool(s)} (should be {bool(e)})" for n, s, e in wrong[:4])
    message = (f"the mask decay_mask gives for {what} is wrong at {len(wrong)} of {len(names)} leaves: {listed}"
               + (" ..." if len(wrong) > 4 else "."))
    for why, rule in _MASK_MISTAKES:
        if said == [bool(rule(n, leaf)) for n, leaf in zip(names, leaves)]:
            message += f"\n  Likely cause: {why}"
            break
    checks.fail(message)


def test_decay_mask_by_name(impl):
    """decay_mask marks the kernels and embeddings of a MiniGPT tree True and its biases and LayerNorm scales False, also in task 9's stacked tree"""
    fn = _function(impl, "decay_mask")
    _check_mask(fn, _fill(contract.model_shapes(**GPT_FIELDS), seed=4), "a MiniGPT tree (2 layers)")
    _check_mask(fn, _fill(_stacked_shapes(GPT_FIELDS), seed=5), "task 9's stacked tree (every leaf of 'blocks' "
                                                                 "has a first axis of n_layer)")


# ----------------------------------------------------------------------------------------------------
# adamw_init and adamw_update


def _options_text(options):
    parts = []
    for key, value in options.items():
        if key == "learning_rate" and callable(value):
            parts.append("learning_rate=a schedule")
        elif key == "mask":
            parts.append("mask=" + ("None" if value is None else "a function" if callable(value) else "a tree"))
        else:
            parts.append(f"{key}={value:g}")
    return ", ".join(parts)


def _init(impl, params):
    state = _run("adamw_init", _function(impl, "adamw_init"), params)
    for name, leaf in _named_leaves(state):
        if not isinstance(leaf, (int, float, np.ndarray, np.generic, jax.Array)):
            checks.fail(f"adamw_init's state holds a {type(leaf).__name__} at {name or 'its top'}: the state should be "
                        "a pytree of arrays (a dict, tuple or NamedTuple of the count, mu and nu), so that jax.jit "
                        "and jax.lax.scan can carry it.")
    return state


def _unpack(out, params, first):
    if not (isinstance(out, (tuple, list)) and len(out) == 2):
        checks.fail("adamw_update should return a pair (new_params, new_state), but it returned a "
                    f"{type(out).__name__}" + (f" of {len(out)} items." if isinstance(out, (tuple, list)) else "."))
    new_params, state = out
    if first:
        checks.assert_tree(new_params, params, "the new parameters adamw_update returns (the first of the pair)")
    return new_params, state


def _learner_trajectory(impl, params, grads_seq, options, jit=True):
    """The learner's parameters after each step, as rows of one float64 array (steps, numbers)."""
    fn = _function(impl, "adamw_update")
    state = _init(impl, params)
    update = jax.jit(lambda g, s, p: fn(g, s, p, **options)) if jit else (lambda g, s, p: fn(g, s, p, **options))
    p, rows = params, []
    for k, g in enumerate(grads_seq):
        p, state = _unpack(_run("adamw_update", update, g, state, p), params, k == 0)
        rows.append(_flat(p))
    return np.stack(rows)


def _optax_trajectory(params, grads_seq, options):
    options = dict(options)
    tx = optax.adamw(options.pop("learning_rate"), **options)

    @jax.jit
    def update(g, s, p):
        updates, s = tx.update(g, s, p)
        return optax.apply_updates(p, updates), s

    state, p, rows = tx.init(params), params, []
    for g in grads_seq:
        p, state = update(g, state, p)
        rows.append(_flat(p))
    return np.stack(rows)


def _element_mask(params, mask):
    """The mask (None, a tree or a function of params) as one bool per number, in leaf order."""
    if mask is None:
        mask = jax.tree_util.tree_map(lambda _: True, params)
    elif callable(mask):
        mask = mask(params)
    return np.concatenate([np.full(np.size(leaf), bool(m)) for leaf, m in
                           zip(jax.tree_util.tree_leaves(params), jax.tree_util.tree_leaves(mask))])


@functools.lru_cache(maxsize=8)
def _lr_table(schedule):
    """A schedule's values at the counts 0 to STEPS + 2, computed once (the replays read them thousands of times)."""
    return [float(x) for x in jax.jit(jax.vmap(schedule))(jnp.arange(STEPS + 3))]


def _simulate(params, grads_seq, options, steps=None, *, count_from_zero=False, count_stuck=False, state_dropped=False,
              no_mu_correction=False, no_nu_correction=False, eps_inside=False, no_sqrt=False, betas_swapped=False,
              l2=False, decay_without_lr=False, decay_after_update=False, mask_ignored=False, mask_inverted=False,
              mask_none_no_decay=False, mask_freezes=False, lr_after_increment=False, weight_decay=None,
              default_weight_decay=1e-4, eps_added=False, count_start=0, corrections_swapped=False,
              corrected_kept=False, defaults=False, sign=1.0, mu_swapped=False, nu_of_g=False,
              power_outside=False):
    """The whole run in float64, one switch per known mistake: the parameters after each step, (steps, numbers)."""
    options = dict(options)
    lr = options.pop("learning_rate")
    b1, b2, eps = options.get("b1", 0.9), options.get("b2", 0.999), options.get("eps", 1e-8)
    if defaults:  # b1, b2 and eps fixed at Optax's defaults whatever was asked
        b1, b2, eps = 0.9, 0.999, 1e-8
    wd = options.get("weight_decay", default_weight_decay) if weight_decay is None else weight_decay
    mask = options.get("mask")
    decays = _element_mask(params, mask)
    if mask_ignored or (mask_none_no_decay and mask is None):
        decays = np.full_like(decays, not (mask_none_no_decay and mask is None))
    if mask_inverted:
        decays = ~decays
    lr_of = _lr_table(lr).__getitem__ if callable(lr) else (lambda c: lr)
    p = _flat(params)
    grads = [_flat(g) for g in grads_seq[:steps]]
    m, v, count, rows = np.zeros_like(p), np.zeros_like(p), count_start, []
    with np.errstate(all="ignore"):
        for g in grads:
            if l2:
                g = g + wd * p * decays
            m = (1 - b1) * m + b1 * g if betas_swapped or mu_swapped else b1 * m + (1 - b1) * g
            g2 = g if nu_of_g else g * g
            v = (1 - b2) * v + b2 * g2 if betas_swapped else b2 * v + (1 - b2) * g2
            t = 1 if count_stuck else count if count_from_zero else count + 1
            c1, c2 = (1 - b2 ** t, 1 - b1 ** t) if corrections_swapped else (1 - b1 ** t, 1 - b2 ** t)
            if power_outside:
                c1, c2 = (1 - b1) ** t, (1 - b2) ** t
            m_hat = m if no_mu_correction else m / c1
            v_hat = v if no_nu_correction else v / c2
            if eps_added:
                u = m_hat / np.sqrt(v_hat) + eps
            else:
                u = m_hat / (v_hat + eps if no_sqrt else np.sqrt(v_hat + eps) if eps_inside else np.sqrt(v_hat) + eps)
            rate = lr_of(count + 1 if lr_after_increment else count)
            decay = 0.0 if l2 else wd * p * decays
            if decay_without_lr and decay_after_update:
                new = (p - sign * rate * u) * (1 - wd * decays)
            elif decay_without_lr:
                new = p - sign * rate * u - decay
            elif decay_after_update:
                new = (p - sign * rate * u) * (1 - rate * wd * decays)
            else:
                new = p - sign * rate * (u + decay)
            p = np.where(~decays, p, new) if mask_freezes else new
            if corrected_kept:
                m, v = m_hat, v_hat
            if state_dropped:
                m, v, count = np.zeros_like(p), np.zeros_like(p), count_start
            elif not count_stuck:
                count += 1
            rows.append(p)
    return np.stack(rows)


_ADAMW_MISTAKES = [
    ("the bias correction uses the count before it is incremented: at the first step 1 - b1 ** 0 = 0, and mu / 0 is "
     "infinite. Step t counts from 1: t = count + 1, then mu / (1 - b1 ** t), nu / (1 - b2 ** t).",
     dict(count_from_zero=True)),
    ("the step count never advances: every step is bias-corrected as step 1 (and a schedule stays at step 0). Store "
     "count + 1 in the new state.", dict(count_stuck=True)),
    ("the state returned is the one it was given (or the moments start again from zero every step): return the new "
     "count, mu and nu, and the loop feeds them to the next step.", dict(state_dropped=True)),
    ("the bias correction is missing: mu_hat = mu / (1 - b1 ** t) and nu_hat = nu / (1 - b2 ** t); without it the "
     "first steps are 3.16 times too long (mu = 0.1 g, sqrt(nu) = 0.0316 |g| at t = 1).",
     dict(no_mu_correction=True, no_nu_correction=True)),
    ("the second moment nu is not bias-corrected: nu_hat = nu / (1 - b2 ** t) too, or the first steps are up to "
     "sqrt(1 / (1 - b2)) = 31.6 times too long.", dict(no_nu_correction=True)),
    ("the first moment mu is not bias-corrected: mu_hat = mu / (1 - b1 ** t) too, or the first steps are 10 times "
     "too short.", dict(no_mu_correction=True)),
    ("the bias corrections are swapped: mu goes with b1, mu / (1 - b1 ** t), and nu with b2, nu / (1 - b2 ** t).",
     dict(corrections_swapped=True)),
    ("eps is inside the square root, sqrt(nu_hat + eps): Adam's (and Optax's) eps is outside, sqrt(nu_hat) + eps.",
     dict(eps_inside=True)),
    ("eps is added to the step, not to the denominator (mu_hat / sqrt(nu_hat) + eps: mind the brackets): where "
     "nu is 0 that divides 0 by 0. It is mu_hat / (sqrt(nu_hat) + eps).", dict(eps_added=True)),
    ("the count starts at 1, so the first step is corrected as step 2 (and a schedule starts at step 1): "
     "adamw_init's count is 0, the number of steps done, and step t = count + 1.", dict(count_start=1)),
    ("the square root is missing: the step is mu_hat / (sqrt(nu_hat) + eps), not mu_hat / (nu_hat + eps).",
     dict(no_sqrt=True)),
    ("b1 and b2 weight the new gradient instead of the old moment: mu = b1 * mu + (1 - b1) * g keeps most of the "
     "old mu.", dict(betas_swapped=True)),
    ("in the first moment b1 weights the new gradient instead of the old moment: mu = b1 * mu + (1 - b1) * g keeps "
     "most of the old mu.", dict(mu_swapped=True)),
    ("the second moment accumulates g, not g ** 2: nu = b2 * nu + (1 - b2) * g ** 2, a running mean of the squares "
     "(a negative nu has no square root).", dict(nu_of_g=True)),
    ("the bias correction raises the wrong thing to the power t, (1 - b1) ** t: it is 1 - b1 ** t (and "
     "1 - b2 ** t), which tends to 1 as t grows.", dict(power_outside=True)),
    ("the weight decay is added to the gradient before the moments (L2 regularisation, PyTorch's Adam with "
     "weight_decay): Adam then divides it by sqrt(nu) like the rest. AdamW's decay is decoupled: u = mu_hat / "
     "(sqrt(nu_hat) + eps) + weight_decay * p, after the moments.", dict(l2=True)),
    ("the weight decay is not multiplied by the learning rate (p - lr * u - weight_decay * p): Optax's and "
     "PyTorch's AdamW take p - lr * (u + weight_decay * p).", dict(decay_without_lr=True)),
    ("the weight decay is not multiplied by the learning rate ((p - lr * u) * (1 - weight_decay)): Optax's and "
     "PyTorch's AdamW take p - lr * (u + weight_decay * p).", dict(decay_without_lr=True, decay_after_update=True)),
    ("the state keeps the bias-corrected moments: mu_hat and nu_hat are for this step's update only; the state "
     "keeps mu and nu themselves, or the next step corrects them a second time.", dict(corrected_kept=True)),
    ("the weight decay is applied to the updated parameters ((p - lr * u) * (1 - lr * weight_decay)): decay the "
     "parameters the step started from, p - lr * (u + weight_decay * p).", dict(decay_after_update=True)),
    ("every leaf decays, the mask is ignored: add weight_decay * p only where the mask is True.",
     dict(mask_ignored=True)),
    ("the mask is inverted: True means 'this leaf decays' (Optax's convention).", dict(mask_inverted=True)),
    ("with mask=None no leaf decays: as Optax's, mask=None means that every leaf decays.",
     dict(mask_none_no_decay=True)),
    ("the leaves where the mask is False do not move at all: the mask only says where weight decay applies; every "
     "leaf takes its Adam step.", dict(mask_freezes=True)),
    ("the schedule is read at the count after the increment: the learning rate of step t is learning_rate(count) "
     "with the count before this step (0 at the first step, as Optax's), so a warmup from 0 makes the first step "
     "a zero step.", dict(lr_after_increment=True)),
    ("the weight_decay argument is not used: the decay is Optax's default 1e-4 whatever is passed.",
     dict(weight_decay=1e-4)),
    ("the default weight_decay is PyTorch's 1e-2: the lesson's adamw_update, as Optax's adamw, defaults to 1e-4.",
     dict(default_weight_decay=1e-2)),
    ("there is no weight decay: u + weight_decay * p where the mask is True.", dict(weight_decay=0.0)),
    ("b1, b2 or eps are fixed at their defaults: use the arguments.", dict(defaults=True)),
    ("the step goes up the gradient: p - lr * u, not p + lr * u.", dict(sign=-1.0)),
]


def _finite_match(got, candidate, rtol=1e-4, atol=5e-5):
    """checks.matches, where non-finite numbers must be non-finite in both. A run whose parameters grow large
    (a wrong step of 1000 lr) and shrink back keeps float32 roundoff of its largest values: atol grows with them."""
    if candidate.shape != got.shape:
        return False
    finite = np.isfinite(candidate)
    if not np.array_equal(finite, np.isfinite(got)):
        return False
    scale = max(1.0, float(np.abs(candidate[finite]).max(initial=0.0)) / 10)
    return bool(np.allclose(got[finite], candidate[finite], rtol=rtol, atol=atol * scale))


def _adamw_diagnose(cases, got_all):
    """The known mistake that gives the learner's numbers in every case: cases is [(params, grads, options)],
    got_all the learner's trajectory of each."""
    params, grads_seq, options = cases[0]
    got = got_all[0]
    if np.isfinite(got[0]).all():
        p0 = _flat(params)
        right_first = _simulate(params, grads_seq, options, steps=1)[0]
        if checks.matches(got[0], right_first - p0, rtol=1e-4, atol=1e-6) and not checks.matches(got[0], right_first):
            return ("adamw_update returns the update (the change, -lr * u) where it should return the new parameters, "
                    "p - lr * u.")
    for why, switches in _ADAMW_MISTAKES:
        if all(_finite_match(got, _simulate(params, grads_seq, options, got.shape[0], **switches))
               for (params, grads_seq, options), got in zip(cases, got_all)):
            return why
    # A mistake whose run overflows (a bias correction (1 - b1) ** t that underflows float32 within 15 steps while
    # float64 holds on) cannot be followed to the end: it is named when it gives the learner's first EARLY steps.
    for why, switches in _ADAMW_MISTAKES:
        if switches.get("power_outside") and all(
                got.shape[0] >= EARLY and _finite_match(got[:EARLY], _simulate(params, grads_seq, options, EARLY,
                                                                                **switches))
                for (params, grads_seq, options), got in zip(cases, got_all)):
            return why
    return None


EARLY = 5  # steps of a run compared for a mistake that overflows later


def _compare_trajectories(got, expected, params, what, diagnose):
    """got, expected: (steps, numbers). Names the first step and the first number where they part."""
    names = [(name, index) for name, leaf in _named_leaves(params) for index in np.ndindex(np.shape(leaf))]
    bad = ~np.isfinite(got) | (np.abs(got - expected) > ADAMW_ATOL + ADAMW_RTOL * np.abs(expected))
    if not bad.any():
        return
    step = int(np.argmax(bad.any(axis=1)))
    where = int(np.argmax(bad[step]))
    name, index = names[where]
    message = (f"{what}: the parameters part from optax.adamw's at step {step + 1} of {got.shape[0]}, at "
               f"{name}{list(index)} (optax {expected[step, where]:.6g}, yours {got[step, where]:.6g}); "
               f"{int(bad[step].sum())} of {bad.shape[1]} numbers differ at that step, "
               f"{int(bad[-1].sum())} after the last.")
    if not np.isfinite(got[step]).all():
        message += f" Some are NaN or infinite from step {step + 1} on."
    hint = diagnose(got)
    if hint:
        message += f"\n  Likely cause: {hint}"
    checks.fail(message)


# The three runs of 100 steps: each keeps every hyperparameter that is not Optax's default away from it.
def _runs():
    mask_tree = _by_name(_small_params())
    schedule = optax.warmup_cosine_decay_schedule(0.0, 0.05, 7, 60, 5e-3)
    return {
        "Optax's defaults": dict(learning_rate=1e-2),
        "a schedule and a mask tree": dict(learning_rate=schedule, b1=0.8, b2=0.95, eps=1e-4, weight_decay=0.1,
                                           mask=mask_tree),
        "strong decay and a mask function": dict(learning_rate=0.1, b2=0.99, weight_decay=0.5, mask=_by_name),
    }


@functools.lru_cache(maxsize=None)
def _optax_run(name):
    return _optax_trajectory(_small_params(), _small_grads(), _runs()[name])


HAND_PARAMS = {"dense": {"kernel": [[1.0, -1.0, 2.0], [0.5, 3.0, -2.0]], "bias": [0.1, -0.2, 0.3]},
               "norm": {"scale": [1.0, 1.5, 0.5]}}
HAND_GRADS = {"dense": {"kernel": [[0.5, -2.0, 1e-3], [40.0, -0.02, 3.0]], "bias": [1e-2, -7.0, 0.25]},
              "norm": {"scale": [-0.3, 0.6, 2e-4]}}
HAND_MASK = {"dense": {"kernel": True, "bias": False}, "norm": {"scale": False}}


def _tree(values):
    return jax.tree_util.tree_map(lambda x: jnp.asarray(x, jnp.float32), values, is_leaf=lambda x: isinstance(x, list))


def _assert_finite_step(got, what, diagnose):
    if not np.isfinite(got).all():
        hint = diagnose(got)
        checks.fail(f"{what} hold {int((~np.isfinite(got)).sum())} NaN or infinite values of {got.size}."
                    + (f"\n  Likely cause: {hint}" if hint else " Look for a division by zero: at the first step, "
                       "what are 1 - b1 ** t and sqrt(nu_hat) + eps?"))


def test_adamw_first_steps_by_hand(impl):
    """After one AdamW step every parameter has moved by the learning rate whatever its gradient's size, and with zero gradients weight decay shrinks only the masked leaves"""
    params, grads = _tree(HAND_PARAMS), _tree(HAND_GRADS)
    zero = jax.tree_util.tree_map(jnp.zeros_like, params)
    p0, g = _flat(params), _flat(grads)
    lr = 0.1
    sign_step = dict(learning_rate=lr, weight_decay=0.0)
    decay_step = dict(learning_rate=lr, weight_decay=0.5, mask=HAND_MASK)
    got = [_learner_trajectory(impl, params, [grads], sign_step, jit=False),
           _learner_trajectory(impl, params, [zero], decay_step, jit=False)]  # (1, numbers) each

    def diagnose(_):  # the mistake that gives the learner's numbers in both cases
        return _adamw_diagnose([(params, [grads], sign_step), (params, [zero], decay_step)], got)

    first = got[0][0]
    _assert_finite_step(first, "the parameters after one step of adamw_update from adamw_init's state", diagnose)
    moved = np.round((p0 - first) / lr, 3)
    checks.assert_close(first, p0 - lr * g / (np.abs(g) + 1e-8), (  # t = 1: mu_hat = g, nu_hat = g ** 2
        f"one step of adamw_update from adamw_init's state, learning_rate={lr}, weight_decay=0, on gradients from "
        f"{np.abs(g).min():g} to {np.abs(g).max():g} in size: every parameter should move by {lr} against its "
        "gradient's sign (at t = 1 the bias correction gives mu_hat = g and nu_hat = g ** 2, so u = g / (|g| + eps) "
        f"= +-1); the moves divided by the learning rate are {moved.tolist()}"),
        rtol=1e-5, atol=1e-6, diagnose=diagnose)

    decayed = got[1][0]
    _assert_finite_step(decayed, "the parameters after one step of adamw_update with zero gradients", diagnose)
    checks.assert_close(decayed, np.where(_element_mask(params, HAND_MASK), p0 * (1 - lr * 0.5), p0), (
        f"one step with zero gradients, learning_rate={lr}, weight_decay=0.5 and a mask True only at the kernel: "
        f"with nothing to follow, a step is weight decay alone, so the kernel shrinks by the factor 1 - lr * "
        f"weight_decay = {1 - lr * 0.5:g} and the bias and the scale do not move (kernel first, then bias, then "
        "scale)"), rtol=1e-5, atol=1e-6, diagnose=diagnose)


def test_adamw_matches_optax_over_100_steps(impl):
    """adamw_update, from adamw_init's state, gives optax.adamw's parameters at each of 100 steps: defaults, a schedule with a mask tree, strong decay with a mask function"""
    params, grads = _small_params(), _small_grads()
    runs = _runs()
    got = {name: _learner_trajectory(impl, params, grads, options) for name, options in runs.items()}
    cases = [(params, grads, options) for options in runs.values()]
    for name, options in runs.items():
        what = f"{STEPS} steps of adamw_update under jax.jit, run '{name}' ({_options_text(options)})"
        _compare_trajectories(got[name], _optax_run(name), params, what,
                              lambda _: _adamw_diagnose(cases, list(got.values())))


# ----------------------------------------------------------------------------------------------------
# End to end: a small GPT trained 100 steps with the four pieces

PEAK, WARMUP, DECAY, END = 3e-2, 10, 80, 3e-3  # decay_steps < 100: the last 20 steps run at end_value
MAX_NORM = 0.5  # the gradient norm starts near 2 and falls to about 0.2: some steps are clipped, others not
WEIGHT_DECAY, B2 = 0.1, 0.95
BATCH = 5


@functools.lru_cache(maxsize=None)
def _gpt():
    model = og.OracleGPT(**GPT_FIELDS)
    params = jax.tree_util.tree_map(jnp.asarray, og.random_params(model, jnp.zeros((1, GPT_FIELDS["block_size"]),
                                                                               jnp.int32), seed=7)["params"])
    rng = np.random.default_rng(13)
    text = rng.integers(0, GPT_FIELDS["vocab_size"], 3000)
    T = GPT_FIELDS["block_size"]
    starts = rng.integers(0, len(text) - T - 1, (STEPS, BATCH))
    xs = np.stack([[text[s:s + T] for s in row] for row in starts]).astype(np.int32)  # (STEPS, B, T)
    ys = np.stack([[text[s + 1:s + T + 1] for s in row] for row in starts]).astype(np.int32)

    def loss_fn(p, x, y):
        logits = model.apply({"params": p}, x)  # (B, T, vocab_size)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    @jax.jit
    def loss_and_grads(p, x, y):
        loss, grads = jax.value_and_grad(loss_fn)(p, x, y)
        # The key projection's bias has no effect on the softmax: its gradient is roundoff, set to exactly zero.
        return loss, jax.tree_util.tree_map_with_path(
            lambda path, g: jnp.zeros_like(g) if _leaf_name(path).endswith("key/bias") else g, grads)

    return params, xs, ys, loss_and_grads


def _train(update, init):
    """100 steps: (losses (STEPS,), the final parameters as one vector)."""
    params, xs, ys, loss_and_grads = _gpt()
    state, p, losses = init, params, []
    for k in range(STEPS):
        loss, grads = loss_and_grads(p, xs[k], ys[k])
        losses.append(float(loss))
        p, state = _unpack(_run("your training step", update, grads, state, p), params, k == 0)
    return np.array(losses), _flat(p)


def _optax_pieces():
    return dict(schedule=optax.warmup_cosine_decay_schedule(0.0, PEAK, WARMUP, DECAY, END),
                clip=lambda g, max_norm: optax.clip_by_global_norm(max_norm).update(g, optax.EmptyState())[0],
                mask=_by_name)


@functools.lru_cache(maxsize=None)
def _optax_training():
    tx = optax.chain(optax.clip_by_global_norm(MAX_NORM),
                     optax.adamw(optax.warmup_cosine_decay_schedule(0.0, PEAK, WARMUP, DECAY, END), b2=B2,
                                 weight_decay=WEIGHT_DECAY, mask=_by_name))

    @jax.jit
    def update(g, s, p):
        updates, s = tx.update(g, s, p)
        return optax.apply_updates(p, updates), s

    return _train(update, tx.init(_gpt()[0]))


def _learner_training(impl, replace=()):
    """The learner's training, with the pieces named in `replace` taken from Optax instead."""
    optax_pieces = _optax_pieces()
    schedule_fn = _function(impl, "warmup_cosine_schedule")
    schedule = optax_pieces["schedule"] if "schedule" in replace else (
        lambda count: schedule_fn(count, peak_value=PEAK, warmup_steps=WARMUP, decay_steps=DECAY, end_value=END))
    clip = optax_pieces["clip"] if "clip" in replace else _function(impl, "clip_by_global_norm")
    mask = optax_pieces["mask"] if "mask" in replace else _function(impl, "decay_mask")
    if "adamw" in replace:
        tx = optax.adamw(schedule, b2=B2, weight_decay=WEIGHT_DECAY, mask=mask)

        def update(g, s, p):
            updates, s = tx.update(clip(g, MAX_NORM), s, p)
            return optax.apply_updates(p, updates), s

        return _train(jax.jit(update), tx.init(_gpt()[0]))
    adamw_update = _function(impl, "adamw_update")

    def update(g, s, p):
        return adamw_update(clip(g, MAX_NORM), s, p, learning_rate=schedule, b2=B2, weight_decay=WEIGHT_DECAY,
                            mask=mask)

    return _train(jax.jit(update), _init(impl, _gpt()[0]))


_PIECES = {
    "schedule": "your warmup_cosine_schedule",
    "clip": "your clip_by_global_norm",
    "mask": "your decay_mask (passed as the mask function)",
    "adamw": "your adamw_init and adamw_update",
}


def test_training_matches_optax_chain(impl):
    """100 steps of a small GPT with your schedule, clipping, mask and AdamW give the losses and parameters of optax.chain(clip_by_global_norm, adamw(schedule, mask=...))"""
    losses, final = _learner_training(impl)
    expected_losses, expected_params = _optax_training()
    good_losses = checks.matches(losses, expected_losses, rtol=0.0, atol=LOSS_ATOL)
    bad = ~np.isfinite(final) | (np.abs(final - expected_params) > ADAMW_ATOL + ADAMW_RTOL * np.abs(expected_params))
    if good_losses and not bad.any():
        return
    params = _gpt()[0]
    parts = np.abs(losses - expected_losses) > LOSS_ATOL
    first = int(np.argmax(parts | ~np.isfinite(losses))) if (parts | ~np.isfinite(losses)).any() else None
    names = [name for name, leaf in _named_leaves(params) for _ in range(np.size(leaf))]
    where = int(np.argmax(bad)) if bad.any() else None
    message = ("100 training steps (schedule peak_value=0.03, warmup_steps=10, decay_steps=80, end_value=0.003; "
               f"clipping at max_norm={MAX_NORM}; b2={B2}, weight_decay={WEIGHT_DECAY}, mask=decay_mask) part from "
               "Optax's: "
               + (f"the loss of step {first + 1} of {STEPS} (at the parameters the step starts from) is the first "
                  f"to differ (optax {expected_losses[first]:.6g}, yours {losses[first]:.6g}); " if first is not None
                  else "the losses agree; ")
               + (f"after the last step {int(bad.sum())} of {bad.size} parameters differ, first at {names[where]} "
                  f"(optax {expected_params[where]:.6g}, yours {final[where]:.6g})." if where is not None else
                  "the final parameters agree."))
    culprit = None
    for piece in _PIECES:
        try:
            with_optax = _learner_training(impl, replace=(piece,))
        except Exception:
            continue
        if checks.matches(with_optax[0], expected_losses, rtol=0.0, atol=LOSS_ATOL) and checks.matches(
                with_optax[1], expected_params, rtol=ADAMW_RTOL, atol=ADAMW_ATOL):
            culprit = piece
            break
    if culprit:
        message += (f"\n  Likely cause: {_PIECES[culprit]}: with Optax's in its place the run gives Optax's numbers. "
                    "Its own check above says more.")
    else:
        message += ("\n  No single piece explains it: with any one of them replaced by Optax's the run still "
                    "differs. Make the checks above pass first.")
    checks.fail(message)
