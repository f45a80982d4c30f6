"""Task 10: the training loop as one `jax.lax.scan`, and a learning-rate sweep with `jax.vmap`.

Oracles: task 7's (tests/test_task07_training.py): Flax's own TrainState stepped by optax.adamw with
jax.value_and_grad, on tiny hand-made models so that each check compiles in a fraction of a second; the
training loop replayed exactly. The key contract is task 7's `train`, so the scanned loop must give, step for
step, exactly the losses and parameters of n calls of that step with the lesson's keys: a recording model
notes the dropout key and the batch of every step inside the scan, the first step where they part from the
lesson's recipe is named (and, when they follow a known other recipe, which one), and the replay with those
keys gives the losses and the state. The sweep is compared with separate runs, one per rate, from the same
parameters and key; its traced program must hold one training loop for all the rates (vmap), not one per rate;
and on a synthetic corpus its curves must pick the rate that separate runs pick.

Shapes: task 7's B, T, V = 3, 5, 7 (all different); 4 steps; 3 learning rates (R differs from the number of
steps, so a loss array laid out (num_steps, R) shows).

Tolerances, from float32's unit roundoff u = 2**-24 (as task 7's):
  - train_scan runs the very operations of train_step, so its losses and parameters equal the replay's up to
    reordering inside XLA's fused loop body: a few u per operation; compared at task 7's rtol 1e-5 and
    OPT_ATOL 2e-5 (the nearest mistakes, a reused key or a dropped optimiser state, move values by 1e-2);
  - the sweep's oracle keeps its hyperparameters as float32 arrays (optax.inject_hyperparams); a sweep built on
    plain optax.adamw with a traced learning rate rounds 1 - b2 otherwise, which moves each AdamW update by
    at most 3e-5 of its size lr (task 7's docstring): after k steps at the largest rate 0.3, k * 0.3 * 3e-5 =
    3.6e-5. SWEEP_ATOL is 1e-4 (measured: 1.8e-5), against 3e-3 for the nearest real mistake (Optax's default
    weight decay, lr * (0.01 - 1e-4) * |p| per step).
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax.training import train_state

from jaxgpt.grader import checks, outcomes
from jaxgpt.data import get_batch
from test_task07_training import (ADAMW, B, CYCLE, DROPPY, OPT_ATOL, RANDOM_TOKENS, T, _assert_is_train_state,
                                  _assert_tree_close, _batch_of, _copy, _key_data, _lineage_problems, _oracle_loss,
                                  _oracle_state, _oracle_step, _targets_of, _tree_matches, _unwrapped_params)

TASK = 10

STEPS = 4  # training steps of each check: enough for a lineage to show, few enough to compile quickly
REPLAY_KEY = 16
SWEEP_RATES = (0.003, 0.03, 0.3)  # R = 3 differs from STEPS = 4
BEST_RATES = (0.002, 0.2, 20.0)  # too slow, right, wild: on CYCLE the middle one wins (BEST_RATE_INDEX)
BEST_RATE_INDEX = 1
WEIGHT_DECAY = 0.01
SWEEP_ATOL = 1e-4  # module docstring: 3.6e-5 from float32 hyperparameters; 3e-3 for the nearest mistake

CALLS = {
    "train_scan": (("state", "data", "key", "num_steps", "batch_size", "block_size"), ()),
    "sweep_learning_rates": (("model", "params", "data", "key", "learning_rates", "num_steps", "batch_size",
                              "block_size"), ("weight_decay",)),
}


def _function(impl, name):
    positional, keywords = CALLS[name]
    return checks.learner_function(getattr(impl, name), name, positional, keywords)


def _run(who, fn, *args, **kwargs):
    """fn(*args), with the usual failures said as sentences: Flax's error for unwrapped parameters, and a
    shape argument that reached the compiled program as a traced value."""
    try:
        return fn(*args, **kwargs)
    except (NotImplementedError, checks.CheckFailed):
        raise
    except Exception as err:
        why = _unwrapped_params(err, who)
        if why:
            checks.fail(why)
        name = type(err).__name__
        if "Tracer" in name or "Concretization" in name or "NonConcrete" in name:
            where = outcomes.learner_frame(err)
            first = str(err).strip().splitlines()[0][:300] if str(err).strip() else ""
            checks.fail(f"{who} fails while being traced: {name}: {first}" + (f"\n    at {where}" if where else "")
                        + "\n  Under jax.jit, num_steps, batch_size and block_size decide shapes (the scan's length, "
                        "the batch's shape), so they must be static: jax.jit(..., static_argnames=('num_steps', "
                        "'batch_size', 'block_size')); the model too, in the sweep.")
        raise


def _walk(jaxpr):
    """(equation, the loop lengths around it) for every equation of a jaxpr and of the jaxprs nested in it."""
    for eqn, around in checks.program_equations(jaxpr):
        yield eqn, tuple(length for outer in around if (length := _loop_length(outer)) is not None)


def _loop_length(eqn):
    if eqn.primitive.name == "scan":
        return int(eqn.params["length"])
    if eqn.primitive.name == "while":
        return -1  # a fori_loop whose length is not visible
    return None


def _trace(who, fn):
    """jax.make_jaxpr of fn(), as jax.jit traces it, with a sentence when that fails."""
    return _run(who, lambda: jax.make_jaxpr(fn)())


# ----------------------------------------------------------------------------------------------------
# train_scan


_SEEN = []  # (dropout key data, x) for each training call of the recording model, in order


def _recording_apply(variables, x, *args, rngs=None, **kwargs):
    """DROPPY.apply that also notes the dropout key and the batch of each training call, in order, even inside
    a compiled loop (an ordered jax.debug.callback runs once per step of a scan)."""
    if rngs and "dropout" in rngs:
        key = rngs["dropout"]
        data = jax.random.key_data(key) if jnp.issubdtype(key.dtype, jax.dtypes.prng_key) else key
        jax.debug.callback(lambda k, batch: _SEEN.append((np.asarray(k), np.asarray(batch))), data, x, ordered=True)
    return DROPPY.apply(variables, x, *args, rngs=rngs, **kwargs)


def _call_train_scan(impl, state, data, key, num_steps):
    out = _run("train_scan", _function(impl, "train_scan"), _copy(state), data, key, num_steps, B, T)
    if not (isinstance(out, tuple) and len(out) == 2):
        checks.fail(f"train_scan should return a pair (state, losses), but it returned a {type(out).__name__}"
                    + (f" of {len(out)} items." if isinstance(out, (tuple, list)) else "."))
    new_state, losses = out
    _assert_is_train_state(new_state, "the state train_scan returns")
    losses = checks.assert_shape(losses, (num_steps,), "train_scan's losses",
                                 hint="The scan emits one loss per step: return the stacked losses it gives.")
    return new_state, checks.assert_finite(losses, "train_scan's losses")


def _lesson_recipe(key, num_steps):
    """The lesson's keys (task 7's train): (dropout key data, batch) of each step."""
    out = []
    for _ in range(num_steps):
        key, batch_key, dropout_key = jax.random.split(key, 3)
        out.append((_key_data(dropout_key), _batch_of(_key_data(batch_key))))
    return out


def _other_recipes(key, num_steps):
    """Other ways of making each step's keys, each sound or not, that a learner may write instead of the
    lesson's: (what was done, [(dropout key data, batch) per step])."""
    def steps(pairs):
        return [(_key_data(d), _batch_of(_key_data(b))) for b, d in pairs]

    def swapped():
        k, pairs = key, []
        for _ in range(num_steps):
            k, dropout_key, batch_key = jax.random.split(k, 3)
            pairs.append((batch_key, dropout_key))
        return steps(pairs)

    def up_front():
        pairs = []
        for k in jax.random.split(key, num_steps):
            batch_key, dropout_key = jax.random.split(k)
            pairs.append((batch_key, dropout_key))
        return steps(pairs)

    def up_front_three():
        return steps([tuple(jax.random.split(k, 3)[1:]) for k in jax.random.split(key, num_steps)])

    def folded():
        pairs = []
        for i in range(num_steps):
            _, batch_key, dropout_key = jax.random.split(jax.random.fold_in(key, i), 3)
            pairs.append((batch_key, dropout_key))
        return steps(pairs)

    def folded_two():
        return steps([tuple(jax.random.split(jax.random.fold_in(key, i))) for i in range(num_steps)])

    def two_way():
        k, pairs = key, []
        for _ in range(num_steps):
            k, sub = jax.random.split(k)
            batch_key, dropout_key = jax.random.split(sub)
            pairs.append((batch_key, dropout_key))
        return steps(pairs)

    return [
        ("the keys are split in another order (key, dropout_key, batch_key = jax.random.split(key, 3)): the lesson "
         "splits key, batch_key, dropout_key, in that order.", swapped),
        ("the step keys are split up front (jax.random.split(key, num_steps), or jax.random.fold_in(key, step), "
         "which gives the same keys) and each split again: the lesson "
         "carries the key through the scan, key, batch_key, dropout_key = jax.random.split(key, 3) at each step.",
         up_front),
        ("the step keys are split up front (jax.random.split(key, num_steps)), each split in three: the lesson "
         "carries the key through the scan, key, batch_key, dropout_key = jax.random.split(key, 3) at each step.",
         up_front_three),
        ("each step's keys come from jax.random.fold_in(key, step): the lesson carries the key through the scan, "
         "key, batch_key, dropout_key = jax.random.split(key, 3) at each step.", folded),
        ("each step's keys come from jax.random.fold_in(key, step): the lesson carries the key through the scan, "
         "key, batch_key, dropout_key = jax.random.split(key, 3) at each step.", folded_two),
        ("each step splits the key in two and the second half again (key, sub = split(key); batch_key, dropout_key "
         "= split(sub)): the lesson's step is key, batch_key, dropout_key = jax.random.split(key, 3).", two_way),
    ]


def _same_steps(a, b):
    return len(a) == len(b) and all(np.array_equal(x[0], y[0]) and np.array_equal(x[1], y[1]) for x, y in zip(a, b))


def _seen_steps(num_steps):
    jax.effects_barrier()  # every callback has run
    seen = list(_SEEN)
    calls = len(seen) // num_steps if num_steps else 0
    if len(seen) > num_steps and len(seen) % num_steps == 0 and all(
            np.array_equal(seen[i][0], seen[i - i % calls][0]) and np.array_equal(seen[i][1], seen[i - i % calls][1])
            for i in range(len(seen))):
        seen = seen[::calls]  # a step that runs the model more than once, with one key and batch
    return seen


def _replay(state, steps, reset_opt_state=False, from_start=False):
    """The oracle's steps on the given (dropout key, batch) pairs: (states after each step, losses)."""
    current, states, losses = state, [state], []
    for dropout_key, x in steps:
        start = state if from_start else current
        if reset_opt_state:
            start = start.replace(opt_state=state.opt_state)
        current, loss, _ = _oracle_step(start, jnp.asarray(x), _targets_of(x),
                                        jax.random.wrap_key_data(jnp.asarray(dropout_key)))
        states.append(current)
        losses.append(float(loss))
    return states, np.array(losses)


def _learner_train_steps(impl, state, steps):
    """The same steps redone with the learner's own task-7 train_step (None when it cannot run)."""
    try:
        train_step = impl.other(7).train_step
        current, out = state, []
        for dropout_key, x in steps:
            current, loss = train_step(_copy(current), jnp.asarray(x), _targets_of(x),
                                       jax.random.wrap_key_data(jnp.asarray(dropout_key)))
            out.append(float(loss))
        return current, np.array(out)
    except Exception:
        return None


def test_train_scan_replays_train(impl):
    """train_scan gives, step for step, the losses and state of task 7's train with the lesson's keys"""
    state = _oracle_state(DROPPY, ADAMW)
    key = jax.random.key(REPLAY_KEY)
    _SEEN.clear()
    new_state, losses = _call_train_scan(impl, state.replace(apply_fn=_recording_apply), RANDOM_TOKENS, key, STEPS)
    seen = _seen_steps(STEPS)
    if not seen:
        checks.fail(f"in {STEPS} steps of train_scan the model never ran with a dropout key: each step should call "
                    "train_step (or do what it does), which runs the model with deterministic=False and "
                    "rngs={'dropout': dropout_key}.")
    shapes = sorted({tuple(x.shape) for _, x in seen})
    if shapes != [(B, T)]:
        checks.fail(f"train_scan ran the model on batches of shape {', '.join(map(str, shapes))}, but it was asked "
                    f"for batch_size={B}, block_size={T}: draw each step's batch with get_batch(batch_key, data, "
                    "batch_size, block_size).")
    if len(seen) != STEPS:
        checks.fail(f"train_scan ran {len(seen)} training steps (calls of the model with dropout) for "
                    f"num_steps={STEPS}: the scan should have length num_steps, one train_step per step.")
    recipe = _lesson_recipe(key, STEPS)
    if not _same_steps(seen, recipe):
        first = next(i for i, (a, b) in enumerate(zip(seen, recipe))
                     if not (np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])))
        part = ("batch and dropout key" if not np.array_equal(seen[first][1], recipe[first][1])
                and not np.array_equal(seen[first][0], recipe[first][0])
                else "batch" if not np.array_equal(seen[first][1], recipe[first][1]) else "dropout key")
        agree = f"steps 0 to {first - 1} use the lesson's keys; " if first else ""
        message = (f"train_scan must replay task 7's train key for key, but {agree}step {first}'s {part} is not the "
                   "lesson's.")
        problems = _lineage_problems(key, seen)
        if problems:
            message += "\n  Likely cause: " + "\n  Also: ".join(problems)
        else:
            known = next((why for why, make in _other_recipes(key, STEPS) if _same_steps(seen, make())), None)
            message += ("\n  Likely cause: " + known) if known else (
                "\n  The keys follow JAX's rule (each used once), but not the lesson's recipe: carry the key in "
                "the scan and split key, batch_key, dropout_key = jax.random.split(key, 3) at each step.")
        checks.fail(message)
    states, expected = _replay(state, seen)

    def diagnose(got):
        if checks.matches(got[1:], expected[:-1]):
            return "each loss is reported one step late: losses[i] should be the loss of step i."
        candidates = [
            ("each step starts again from the state train_scan was given: carry the state each step returns in "
             "the scan's carry, (state, key), and return it from the step function.",
             lambda: _replay(state, seen, from_start=True)[1]),
            ("the optimiser state is dropped: each step keeps the new parameters but starts AdamW's moments "
             "afresh. Carry the whole TrainState (params, opt_state and step) from step to step.",
             lambda: _replay(state, seen, reset_opt_state=True)[1]),
            ("each step's loss is the one after its update: emit the loss train_step returns, at the parameters "
             "the step started from.",
             lambda: [float(_oracle_loss(st.params, DROPPY.apply, jnp.asarray(x), _targets_of(x),
                                         jax.random.wrap_key_data(jnp.asarray(d))))
                      for st, (d, x) in zip(states[1:], seen)]),
        ]
        for why, compute in candidates:
            try:
                if checks.matches(got, compute(), rtol=1e-5, atol=OPT_ATOL):
                    return why
            except Exception:
                continue
        mine = _learner_train_steps(impl, state, seen)
        if mine is not None and checks.matches(got, mine[1], rtol=1e-5, atol=OPT_ATOL):
            return ("these are the losses your own task-7 train_step gives on these batches and keys, so the scan "
                    "is right and the difference is in train_step: make task 7's check pass first.")
        return None

    checks.assert_close(losses, expected, "train_scan's losses, replayed step by step with the lesson's keys",
                        rtol=1e-5, atol=OPT_ATOL, diagnose=diagnose)
    if int(new_state.step) != STEPS:
        given = int(new_state.step) == 0 and _tree_matches(new_state.params, state.params, atol=0.0)
        checks.fail(f"the state train_scan returns has step {int(new_state.step)} after {STEPS} steps; it should "
                    "count one per step." + ("\n  Likely cause: the state returned is the one train_scan was given: "
                                             "return the state the scan carried out, (state, key), losses = "
                                             "jax.lax.scan(...)." if given else
                                             " Return the state the scan carried out."))
    _assert_tree_close(new_state.params, states[-1].params,
                       "the parameters train_scan returns, replayed step by step with the lesson's keys",
                       atol=OPT_ATOL, candidates=[
        ("the state returned is the one train_scan was given: return the state the scan carried out, "
         "(state, key), losses = jax.lax.scan(...).", lambda: states[0].params),
        ("the state returned is the one before the last step.", lambda: states[-2].params),
    ])


def test_train_scan_one_step_and_a_batch_of_one(impl):
    """train_scan runs for num_steps = 1 and a batch of one 1-token window, the lesson's step exactly"""
    state = _oracle_state(DROPPY, ADAMW)
    key = jax.random.key(REPLAY_KEY + 1)
    out = _run("train_scan", _function(impl, "train_scan"), _copy(state), RANDOM_TOKENS, key, 1, 1, 1)
    if not (isinstance(out, tuple) and len(out) == 2):
        checks.fail(f"train_scan should return a pair (state, losses), but it returned a {type(out).__name__}.")
    new_state, losses = out
    losses = checks.assert_shape(losses, (1,), "train_scan's losses for num_steps=1",
                                 hint="One loss per step, even for a single step: shape (num_steps,).")
    _, batch_key, dropout_key = jax.random.split(key, 3)
    x, y = get_batch(batch_key, RANDOM_TOKENS, 1, 1)
    expected_state, expected, _ = _oracle_step(state, x, y, dropout_key)
    checks.assert_close(losses, [float(expected)], "train_scan's loss for one step of batch_size=1, block_size=1",
                        rtol=1e-5, atol=OPT_ATOL)
    _assert_tree_close(new_state.params, expected_state.params, "the parameters after that step", atol=OPT_ATOL,
                       candidates=[("the state returned is the one train_scan was given: return the state the scan "
                                    "carried out.", lambda: state.params)])


def _scan_program(impl, num_steps):
    fn = _function(impl, "train_scan")
    state = _oracle_state(DROPPY, ADAMW)
    return _trace("train_scan", lambda: fn(_copy(state), RANDOM_TOKENS, jax.random.key(0), num_steps, B, T))


def _size(jaxpr):
    return sum(1 for _ in _walk(jaxpr.jaxpr))


def test_train_scan_is_one_scan(impl):
    """train_scan traces to one jax.lax.scan of num_steps steps whose program does not grow with num_steps"""
    small, large = _scan_program(impl, 3), _scan_program(impl, 12)
    loops = [length for eqn, _ in _walk(large.jaxpr) if (length := _loop_length(eqn)) is not None]
    grows = _size(large) > 1.5 * _size(small)
    if grows or not loops:
        checks.fail(f"train_scan's program has {_size(small)} operations for 3 steps and {_size(large)} for 12"
                    + ("" if loops else ", and no loop primitive")
                    + ": the steps are unrolled into the program, one copy of the step per step (a Python loop "
                    "inside jax.jit does that). Write the loop with jax.lax.scan(step, (state, key), None, "
                    "length=num_steps), so that one step is compiled whatever num_steps is.")
    unrolled = [int(eqn.params.get("unroll", 1)) for eqn, _ in _walk(large.jaxpr)
                if eqn.primitive.name == "scan" and int(eqn.params["length"]) == 12]
    if unrolled and all(u >= 12 for u in unrolled):
        checks.fail("train_scan's scan is built with unroll=True (or unroll=num_steps): XLA then compiles one copy "
                    "of the step per step, as a Python loop would. Leave unroll at its default, 1.")
    if 12 not in loops and -1 not in loops:
        checks.fail(f"train_scan's program holds loops of lengths {sorted(set(loops))} for num_steps=12: the "
                    "training scan should run num_steps times (length=num_steps).")


# ----------------------------------------------------------------------------------------------------
# sweep_learning_rates


# One optimiser for every rate: its learning rate is a float32 array inside the optimiser state, so the oracle's
# step compiles once for all of them (a plain optax.adamw(lr) per rate would compile once per rate).
INJECTED = optax.inject_hyperparams(optax.adamw)(learning_rate=0.0, weight_decay=WEIGHT_DECAY)


@functools.lru_cache(maxsize=None)
def _init_params():
    return _oracle_state(DROPPY, ADAMW).params


def _separate_run(params, data, key, learning_rate, keys="lesson", weight_decay=WEIGHT_DECAY, num_steps=STEPS,
                  b1=None):
    """One rate trained on its own with the oracle's step and the lesson's keys: (params, losses)."""
    state = train_state.TrainState.create(apply_fn=DROPPY.apply, params=params, tx=INJECTED)
    hyper = dict(state.opt_state.hyperparams, learning_rate=jnp.float32(learning_rate),
                 weight_decay=jnp.float32(weight_decay))
    if b1 is not None:  # a known mistake: weight_decay passed by position lands on b1
        hyper["b1"] = jnp.float32(b1)
    state = state.replace(opt_state=state.opt_state._replace(hyperparams=hyper))
    losses = []
    for _ in range(num_steps):
        key, batch_key, dropout_key = jax.random.split(key, 3)
        x, y = get_batch(batch_key, data, B, T)
        state, loss, _ = _oracle_step(state, x, y, dropout_key)
        losses.append(float(loss))
    return state.params, np.array(losses)


def _separate_runs(data, key, rates, **options):
    runs = [_separate_run(_init_params(), data, key, lr, **options) for lr in rates]
    return [r[0] for r in runs], np.stack([r[1] for r in runs])


def _call_sweep(impl, data, key, rates, **kwargs):
    fn = _function(impl, "sweep_learning_rates")
    out = _run("sweep_learning_rates", fn, DROPPY, _init_params(), data, key, jnp.asarray(rates, jnp.float32),
               STEPS, B, T, **kwargs)
    if not (isinstance(out, tuple) and len(out) == 2):
        checks.fail("sweep_learning_rates should return a pair (params, losses), but it returned a "
                    f"{type(out).__name__}" + (f" of {len(out)} items." if isinstance(out, (tuple, list)) else "."))
    params, losses = out
    R = len(rates)
    array = checks.as_array(losses, "sweep_learning_rates's losses")
    hint = ("It is laid out (num_steps, R): put the rates first, one row per learning rate (vmap stacks its "
            "outputs along axis 0)." if tuple(array.shape) == (STEPS, R) else
            "One loss curve per rate: (len(learning_rates), num_steps).")
    checks.assert_shape(array, (R, STEPS), "sweep_learning_rates's losses", hint=hint)
    checks.assert_finite(array, "sweep_learning_rates's losses")
    expected_tree = jax.tree_util.tree_map(lambda leaf: jnp.zeros((R,) + leaf.shape), _init_params())
    checks.assert_tree(params, expected_tree, "the parameters sweep_learning_rates returns (every leaf stacked "
                                              "along a first axis of one model per rate)")
    return params, array


def _rate(params, r):
    return jax.tree_util.tree_map(lambda leaf: np.asarray(leaf)[r], params)


def test_sweep_equals_separate_runs(impl):
    """The vmapped sweep gives each rate the losses and parameters of its own run from the same parameters and key"""
    key = jax.random.key(21)
    params, losses = _call_sweep(impl, RANDOM_TOKENS, key, SWEEP_RATES)
    expected_params, expected = _separate_runs(RANDOM_TOKENS, key, SWEEP_RATES)

    def diagnose(got):
        rows_alike = all(checks.matches(got[r], got[0], rtol=0, atol=0) for r in range(len(SWEEP_RATES)))
        if rows_alike:
            for r, lr in enumerate(SWEEP_RATES):
                if checks.matches(got[0], expected[r], rtol=1e-5, atol=SWEEP_ATOL):
                    return (f"every rate's curve is the one of learning rate {lr:g} alone: the function you vmap "
                            "closes over one learning rate instead of using its argument. Build the optimiser "
                            "inside the vmapped function from the rate it is given.")
            return ("every rate gives the same curve: the function you vmap does not use the learning rate it is "
                    "given (a rate fixed in the code, or the optimiser built outside the vmapped function).")
        candidates = [
            ("each rate trains with its own key (jax.random.split(key, R)): every model must see the same "
             "batches and dropout keys, the key given to the sweep, so that only the rate differs.",
             lambda: np.stack([_separate_run(_init_params(), RANDOM_TOKENS, k, lr)[1]
                               for k, lr in zip(jax.random.split(key, len(SWEEP_RATES)), SWEEP_RATES)])),
            ("the weight decay is not the one given: pass weight_decay=weight_decay to optax.adamw (the lesson's "
             "default is 0.01, Optax's own 1e-4).",
             lambda: _separate_runs(RANDOM_TOKENS, key, SWEEP_RATES, weight_decay=1e-4)[1]),
            ("there is no weight decay: the optimiser is optax.adam, or weight_decay=0; use optax.adamw(rate, "
             "weight_decay=weight_decay).", lambda: _separate_runs(RANDOM_TOKENS, key, SWEEP_RATES, weight_decay=0.0)[1]),
            ("weight_decay is passed to the optimiser by position, where the second argument of optax.adamw is "
             "b1 (Adam's momentum): write weight_decay=weight_decay.",
             lambda: _separate_runs(RANDOM_TOKENS, key, SWEEP_RATES, weight_decay=1e-4, b1=WEIGHT_DECAY)[1]),
        ]
        for why, compute in candidates:
            try:
                if checks.matches(got, compute(), rtol=1e-5, atol=SWEEP_ATOL):
                    return why
            except Exception:
                continue
        try:
            _, mine = _run("train_scan", impl.train_scan,
                           train_state.TrainState.create(apply_fn=DROPPY.apply, params=_init_params(),
                                                         tx=optax.adamw(SWEEP_RATES[0], weight_decay=WEIGHT_DECAY)),
                           RANDOM_TOKENS, key, STEPS, B, T)
            if checks.matches(np.asarray(mine), got[0], rtol=1e-5, atol=SWEEP_ATOL) and \
                    not checks.matches(np.asarray(mine), expected[0], rtol=1e-5, atol=SWEEP_ATOL):
                return ("your train_scan gives these curves on its own: the sweep follows it, so fix train_scan "
                        "first (see its checks).")
        except Exception:
            pass
        return None

    checks.assert_close(losses, expected, "the sweep's loss curves (row r: learning rate r), against one run per "
                        "rate from the same parameters and key", rtol=1e-5, atol=SWEEP_ATOL, diagnose=diagnose)
    for r, lr in enumerate(SWEEP_RATES):
        _assert_tree_close(_rate(params, r), expected_params[r],
                           f"the parameters the sweep trained at learning rate {lr:g} (row {r})", atol=SWEEP_ATOL,
                           candidates=[("the parameters returned are the ones the sweep was given: return the "
                                        "trained state's params from the vmapped function.",
                                        lambda: _init_params())])
    # The weight decay argument is honoured, not only its default.
    _, losses = _call_sweep(impl, RANDOM_TOKENS, key, SWEEP_RATES, weight_decay=0.5)
    _, expected = _separate_runs(RANDOM_TOKENS, key, SWEEP_RATES, weight_decay=0.5)
    checks.assert_close(losses, expected, "the sweep's loss curves with weight_decay=0.5", rtol=1e-5,
                        atol=SWEEP_ATOL, diagnose=checks.diagnose_from([
        ("the weight_decay argument is not passed on to optax.adamw.",
         lambda: _separate_runs(RANDOM_TOKENS, key, SWEEP_RATES)[1])]))


def test_sweep_trains_the_rates_at_once(impl):
    """The sweep's program holds one training scan for all the rates (vmap), not one per rate nor one after another"""
    fn = _function(impl, "sweep_learning_rates")
    R = len(SWEEP_RATES)
    program = _trace("sweep_learning_rates", lambda: fn(DROPPY, _init_params(), RANDOM_TOKENS, jax.random.key(0),
                                                        jnp.asarray(SWEEP_RATES, jnp.float32), STEPS, B, T))
    loops = [(length, around) for eqn, around in _walk(program.jaxpr) if (length := _loop_length(eqn)) is not None]
    training = [(length, around) for length, around in loops if length == STEPS]
    if not training:
        checks.fail(f"the sweep's program holds no loop of num_steps={STEPS} steps (loops found: "
                    f"{sorted({length for length, _ in loops}) or 'none'}): train each model with train_scan, one "
                    "jax.lax.scan over the steps.")
    if len(training) >= R:
        checks.fail(f"the sweep's program holds {len(training)} training loops for {R} learning rates: the models "
                    "are trained one after another (a Python loop over the rates), each with its own copy of the "
                    "program. jax.vmap over the rates gives one loop that trains them all at once.")
    if any(R in around or -1 in around for _, around in training):
        checks.fail(f"the sweep's training loop sits inside a loop of {R} iterations: the rates run one after "
                    "another (jax.lax.map or a scan over the rates). jax.vmap over the rates trains them all at once, "
                    "in the same steps.")


def test_sweep_finds_the_best_rate(impl):
    """On a synthetic corpus the sweep's curves pick the rate that separate runs pick (neither the slowest nor the wildest)"""
    key = jax.random.key(22)
    _, losses = _call_sweep(impl, CYCLE[:len(RANDOM_TOKENS)], key, BEST_RATES)
    _, expected = _separate_runs(CYCLE[:len(RANDOM_TOKENS)], key, BEST_RATES)
    tail = STEPS // 2
    final = losses[:, -tail:].mean(axis=1)
    assert int(np.argmin(expected[:, -tail:].mean(axis=1))) == BEST_RATE_INDEX, "the synthetic corpus lost its point"
    best = int(np.argmin(final))
    if best != BEST_RATE_INDEX:
        said = ", ".join(f"{lr:g}: {v:.3f}" for lr, v in zip(BEST_RATES, final))
        checks.fail(f"on text where every token predicts the next, the mean loss of the last {tail} steps for each "
                    f"rate is {said}, so the sweep picks {BEST_RATES[best]:g}; separate runs pick "
                    f"{BEST_RATES[BEST_RATE_INDEX]:g} (too small a rate learns slowly, too large a one jumps about)."
                    + (" Every rate gives the same curve: the vmapped function does not use the rate it is given."
                       if np.allclose(losses, losses[:1]) else ""))
