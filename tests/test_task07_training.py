"""Task 7: the loss, a jitted training step, evaluation and the training loop.

Oracles: optax.softmax_cross_entropy_with_integer_labels and optax.adamw (stepped by flax's own
TrainState); hand cases (uniform logits cost log V; the gradient is (softmax - one_hot) / (B * T)); and
properties of the training loop that only fresh keys satisfy. The models are tiny hand-made Flax modules,
not a GPT, so that each check compiles in a fraction of a second.
"""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax.training import train_state

from jaxgpt import checks
from jaxgpt.data import get_batch

TASK = 7

B, T, V = 4, 6, 7  # T != V on purpose, so that a sum over the wrong axis gives another number
HIDDEN = 8
LEARNING_RATE = 0.05
EVAL_ITERS = 3


class TinyLM(nn.Module):
    """A bigram model with a hidden layer and dropout on it: the logits at t depend on idx[:, t] only."""

    vocab_size: int = V
    dropout_rate: float = 0.0

    @nn.compact
    def __call__(self, idx, deterministic=True):
        h = nn.Embed(self.vocab_size, HIDDEN, name="token_embedding")(idx)  # (B, T, HIDDEN)
        h = nn.Dropout(self.dropout_rate)(h, deterministic=deterministic)
        return nn.Dense(self.vocab_size, name="lm_head")(h)  # (B, T, V)


PLAIN = TinyLM()
DROPPY = TinyLM(dropout_rate=0.5)
# A TrainState's apply_fn and tx are static parts of jit's cache key: sharing these objects across checks lets
# a jitted train_step compile once per (model, optimiser) instead of once per check.
ADAMW = optax.adamw(LEARNING_RATE, weight_decay=0.01)
FROZEN = optax.adamw(0.0, weight_decay=0.01)  # learning rate 0: the parameters never change
EXAMPLE = jnp.zeros((B, T), jnp.int32)

RANDOM_TOKENS = jnp.asarray(np.random.default_rng(5).integers(0, V, 64), jnp.int32)
CYCLE = jnp.asarray(np.arange(140) % V, jnp.int32)  # 0 1 2 .. 6 0 1 ..: each token predicts the next exactly
ONE_TOKEN = jnp.full((40,), 3, jnp.int32)  # every batch drawn from it is the same batch


CALLS = {  # how the checks call each function: the positional arguments, then the keyword ones
    "cross_entropy": (("logits", "targets"), ()),
    "create_train_state": (("model", "key", "example_idx", "learning_rate"), ("weight_decay",)),
    "train_step": (("state", "x", "y", "dropout_key"), ()),
    "evaluate": (("state", "data", "key", "eval_iters", "batch_size", "block_size"), ()),
    "train": (("state", "data", "key", "num_steps", "batch_size", "block_size"), ()),
}


def _function(impl, name):
    """The learner's `name`, once it is known to accept the call the checks make (else a sentence)."""
    positional, keywords = CALLS[name]
    return checks.learner_function(getattr(impl, name), name, positional, keywords)


# ----------------------------------------------------------------------------------------------------
# Oracles


@functools.lru_cache(maxsize=None)
def _oracle_state(model, tx):
    """A TrainState built by flax itself, so that the checks of train_step, evaluate and train do not depend
    on the learner's create_train_state. params is the inner tree model.init(...)['params']."""
    variables = model.init(jax.random.key(0), EXAMPLE)
    return train_state.TrainState.create(apply_fn=model.apply, params=variables["params"], tx=tx)


def _copy(state):
    # A train_step jitted with donate_argnums may consume its input state; each call gets its own copy.
    return jax.tree_util.tree_map(jnp.array, state)


def _oracle_loss(params, apply_fn, x, y, dropout_key=None):
    if dropout_key is None:
        logits = apply_fn({"params": params}, x, deterministic=True)
    else:
        logits = apply_fn({"params": params}, x, deterministic=False, rngs={"dropout": dropout_key})
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()


@jax.jit
def _oracle_step(state, x, y, dropout_key):
    loss, grads = jax.value_and_grad(_oracle_loss)(state.params, state.apply_fn, x, y, dropout_key)
    return state.apply_gradients(grads=grads), loss, grads


@jax.jit
def _oracle_deterministic_grads(state, x, y):
    return jax.grad(_oracle_loss)(state.params, state.apply_fn, x, y)


def _batch(seed=1):
    kx, ky = jax.random.split(jax.random.key(seed))
    return jax.random.randint(kx, (B, T), 0, V), jax.random.randint(ky, (B, T), 0, V)


def _logits_and_targets(seed=0, scale=3.0):
    rng = np.random.default_rng(seed)
    logits = (scale * rng.standard_normal((B, T, V))).astype(np.float32)
    targets = rng.integers(0, V, (B, T)).astype(np.int32)
    return logits, targets


def _log_softmax64(logits, axis=-1):
    z = np.asarray(logits, np.float64)
    z = z - z.max(axis=axis, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=axis, keepdims=True))


def _picked(values, targets):
    return np.take_along_axis(values, np.asarray(targets)[..., None], axis=-1)[..., 0]  # (B, T)


def _diagnose_loss(logits, targets):
    picked = _picked(_log_softmax64(logits), targets)  # (B, T): log-probabilities of the targets
    n = picked.size
    return checks.diagnose_from([
        ("the loss is summed over batch and time; the lesson's loss is the mean over all B * T positions.",
         lambda: -picked.sum()),
        ("the sign is flipped: the loss is minus the mean log-probability of the targets.",
         lambda: picked.mean()),
        ("probabilities are used where log-probabilities belong: average -log p(target), not -p(target).",
         lambda: -np.exp(picked).mean()),
        ("the mean also runs over the vocabulary axis: sum one_hot * log_probs over V, then average over B "
         "and T only.", lambda: -picked.sum() / (n * V)),
        ("the one-hot product is summed over the time axis instead of the vocabulary axis (axis=-1).",
         lambda: -picked.sum() / (B * V)),
        ("the softmax is normalised over the wrong axis: normalise over the vocabulary, axis=-1.",
         lambda: -_picked(_log_softmax64(logits, axis=1), targets).mean()),
        ("the loss is summed over time and averaged over the batch only: average over all B * T positions.",
         lambda: -picked.sum(axis=1).mean()),
        ("the loss is summed over the batch and averaged over time only: average over all B * T positions.",
         lambda: -picked.sum(axis=0).mean()),
        ("there is no log-softmax: the target's raw logit is used; take it from "
         "jax.nn.log_softmax(logits, axis=-1).", lambda: -_picked(np.asarray(logits, np.float64), targets).mean()),
    ])


def _assert_scalar(value, what):
    array = checks.as_array(value, what)
    hint = {(T,): "It looks averaged over the batch only: average over batch and time together.",
            (B,): "It looks averaged over time only: average over batch and time together.",
            (B, T): "These are the per-position losses: take their mean."}.get(tuple(array.shape), "")
    return checks.assert_shape(array, (), what, hint=hint)


def _leaves(tree):
    return {"/".join(str(getattr(p, "key", getattr(p, "idx", p))) for p in path): np.asarray(leaf, np.float64)
            for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _tree_matches(got, candidate, atol=1e-6):
    try:
        a, b = _leaves(got), _leaves(candidate)
    except Exception:
        return False
    return a.keys() == b.keys() and all(checks.matches(a[k], b[k], rtol=1e-5, atol=atol) for k in a)


def _assert_tree_close(got, expected, what, *, atol=1e-6, candidates=()):
    """Leaf by leaf; on failure, names the first known mistake whose whole tree matches `got`."""
    checks.assert_tree(got, expected, what)

    def diagnose(_):
        for why, compute in candidates:
            try:
                if _tree_matches(got, compute(), atol):
                    return why
            except Exception:
                continue
        return None

    got_leaves, expected_leaves = _leaves(got), _leaves(expected)
    for name in expected_leaves:
        checks.assert_close(got_leaves[name], expected_leaves[name], f"{what}, leaf {name},", rtol=1e-5,
                            atol=atol, diagnose=diagnose)


def _assert_is_train_state(state, who):
    missing = [a for a in ("params", "step", "opt_state", "apply_fn", "tx", "apply_gradients")
               if not hasattr(state, a)]
    if missing:
        checks.fail(f"{who} should be a flax.training.train_state.TrainState, but it is a "
                    f"{type(state).__name__} without " + ", ".join(f"`{m}`" for m in missing) + ".")


def _assert_inner_params(params, expected, who):
    """state.params must be the tree model.init(...)['params'], not the whole dict {'params': ...} around it."""
    if hasattr(params, "keys") and "params" in params and "params" not in expected:
        checks.fail(f"{who} holds the whole dict model.init returns, {{'params': ...}}: keep variables['params'], "
                    "the parameter tree inside it, as Flax's TrainState expects (the model then runs as "
                    "state.apply_fn({'params': state.params}, x)).")
    checks.assert_tree(params, expected, who)


def _unwrapped_params(err, who):
    """A sentence when Flax found no 'params' collection: the inner tree was passed to apply as it is."""
    if type(err).__name__ == "ScopeCollectionNotFound" and 'collection "params"' in str(err):
        return (f"{who} ran the model on the parameter tree as it is, and Flax found no 'params' collection in "
                "it: state.params is the inner tree model.init(...)['params'], so wrap it again when you call "
                "the model, state.apply_fn({'params': params}, x, ...).")
    return None


def _run(who, fn, *args):
    """fn(*args), with Flax's error for unwrapped parameters turned into a sentence."""
    try:
        return fn(*args)
    except Exception as err:
        why = _unwrapped_params(err, who)
        if why:
            checks.fail(why)
        raise


FROM_CROSS_ENTROPY = ("this is what your cross_entropy gives on the right logits: fix cross_entropy first "
                      "(see its checks).")


def _learner_loss(impl, params, apply_fn, x, y, dropout_key=None):
    """The learner's own cross_entropy on the right logits: when a later check's number equals it, the
    mistake is in cross_entropy, not in the function under check."""
    if dropout_key is None:
        logits = apply_fn({"params": params}, x, deterministic=True)
    else:
        logits = apply_fn({"params": params}, x, deterministic=False, rngs={"dropout": dropout_key})
    return _function(impl, "cross_entropy")(logits, y)


# ----------------------------------------------------------------------------------------------------
# cross_entropy


def test_cross_entropy_matches_optax(impl):
    """cross_entropy is Optax's softmax_cross_entropy_with_integer_labels averaged over batch and time"""
    logits, targets = _logits_and_targets()
    got = _function(impl, "cross_entropy")(jnp.asarray(logits), jnp.asarray(targets))
    _assert_scalar(got, "cross_entropy(logits, targets)")
    expected = optax.softmax_cross_entropy_with_integer_labels(logits, targets).mean()
    checks.assert_close(got, expected, "cross_entropy(logits, targets)", rtol=1e-5, atol=1e-6,
                        diagnose=_diagnose_loss(logits, targets))


def test_cross_entropy_hand_cases(impl):
    """Uniform logits cost log V whatever the targets; a confident right guess costs almost nothing"""
    _, targets = _logits_and_targets(seed=1)
    uniform = np.full((B, T, V), 2.5, np.float32)
    got = _function(impl, "cross_entropy")(jnp.asarray(uniform), jnp.asarray(targets))
    _assert_scalar(got, "the loss of uniform logits")
    checks.assert_close(got, np.log(V), "the loss of uniform logits (log V)", rtol=1e-5, atol=1e-6,
                        diagnose=_diagnose_loss(uniform, targets))
    confident = 20.0 * np.eye(V, dtype=np.float32)[targets]  # (B, T, V): 20 on the target, 0 elsewhere
    got = _function(impl, "cross_entropy")(jnp.asarray(confident), jnp.asarray(targets))
    checks.assert_close(got, np.log1p((V - 1) * np.exp(-20.0)), "the loss of a confident right guess",
                        rtol=1e-3, atol=1e-6, diagnose=_diagnose_loss(confident, targets))


def test_cross_entropy_large_logits(impl):
    """cross_entropy stays finite and exact for logits of size 1e4 (a log-softmax, not log of softmax)"""
    logits, targets = _logits_and_targets(seed=2, scale=1e4)
    got = checks.as_array(_function(impl, "cross_entropy")(jnp.asarray(logits), jnp.asarray(targets)),
                          "cross_entropy for large logits")
    if not np.isfinite(got).all():
        checks.fail(f"cross_entropy is {got} for logits of size about 1e4: computing log(softmax(logits)) in "
                    "two steps underflows (softmax gives exactly 0 and log(0) is -inf) or overflows (exp(1e4) "
                    "is inf). Use jax.nn.log_softmax(logits, axis=-1), which subtracts the maximum first.")
    expected = -_picked(_log_softmax64(logits), targets).mean()
    checks.assert_close(got, expected, "cross_entropy for large logits", rtol=1e-5, atol=1e-3,
                        diagnose=_diagnose_loss(logits, targets))


def test_cross_entropy_jit_and_grad(impl):
    """cross_entropy works under jax.jit and jax.grad; its gradient is (softmax - one_hot) / (B * T)"""
    logits, targets = _logits_and_targets(seed=3)
    expected_loss = -_picked(_log_softmax64(logits), targets).mean()
    cross_entropy = _function(impl, "cross_entropy")
    checks.assert_close(jax.jit(cross_entropy)(jnp.asarray(logits), jnp.asarray(targets)), expected_loss,
                        "cross_entropy under jax.jit", rtol=1e-5, atol=1e-6,
                        diagnose=_diagnose_loss(logits, targets))
    grad = jax.grad(cross_entropy)(jnp.asarray(logits), jnp.asarray(targets))
    expected = (np.exp(_log_softmax64(logits)) - np.eye(V)[targets]) / (B * T)  # (B, T, V)
    checks.assert_close(grad, expected, "the gradient of cross_entropy with respect to the logits", rtol=1e-4,
                        atol=1e-6, diagnose=checks.diagnose_from([
                            ("the gradient is B * T times too large: the loss is summed, not averaged.",
                             lambda: expected * (B * T))]))


# ----------------------------------------------------------------------------------------------------
# create_train_state


def test_create_train_state_params(impl):
    """create_train_state holds params = model.init(key, example_idx)['params'], step 0, apply_fn = model.apply"""
    key = jax.random.key(3)
    state = _function(impl, "create_train_state")(PLAIN, key, EXAMPLE, LEARNING_RATE)
    _assert_is_train_state(state, "create_train_state's result")
    expected = PLAIN.init(key, EXAMPLE)["params"]
    _assert_inner_params(state.params, expected, "state.params")
    _assert_tree_close(state.params, expected, "state.params", candidates=[
        ("the parameters were initialised with another key than the one given to create_train_state.",
         lambda: PLAIN.init(jax.random.key(0), EXAMPLE)["params"])])
    if int(state.step) != 0:
        checks.fail(f"a new state should have step 0, but it has step {int(state.step)}.")
    x, _ = _batch()
    checks.assert_close(state.apply_fn({"params": state.params}, x), PLAIN.apply({"params": expected}, x),
                        "state.apply_fn({'params': state.params}, x) (apply_fn should be model.apply)", rtol=1e-6,
                        atol=1e-6)


def test_create_train_state_optimizer(impl):
    """The optimiser is optax.adamw(learning_rate, weight_decay=weight_decay), weight_decay 0.01 by default"""
    key = jax.random.key(3)
    params = PLAIN.init(key, EXAMPLE)["params"]
    rng = np.random.default_rng(4)
    grads = [jax.tree_util.tree_map(lambda p: jnp.asarray(rng.standard_normal(p.shape), p.dtype), params)
             for _ in range(2)]

    def two_steps(tx):
        opt_state = tx.init(params)
        current = params
        for g in grads:
            updates, opt_state = tx.update(g, opt_state, current)
            current = optax.apply_updates(current, updates)
        return current

    learning_rate = 0.1
    for given, weight_decay in (({}, 0.01), ({"weight_decay": 0.1}, 0.1)):
        state = _function(impl, "create_train_state")(PLAIN, key, EXAMPLE, learning_rate, **given)
        _assert_is_train_state(state, "create_train_state's result")
        _assert_inner_params(state.params, params, "state.params")
        got = state.apply_gradients(grads=grads[0]).apply_gradients(grads=grads[1]).params
        call = f"create_train_state(model, key, idx, {learning_rate}" + (f", weight_decay={weight_decay})" if given
                                                                        else ")")
        _assert_tree_close(got, two_steps(optax.adamw(learning_rate, weight_decay=weight_decay)),
                           f"the parameters after two optimiser steps of {call}", candidates=[
            ("weight_decay is left at Optax's default (1e-4): pass weight_decay=weight_decay to optax.adamw "
             "(this lesson's default is 0.01, PyTorch's).", lambda: two_steps(optax.adamw(learning_rate))),
            ("the weight_decay argument is not passed on to optax.adamw.",
             lambda: two_steps(optax.adamw(learning_rate, weight_decay=0.01))),
            ("the optimiser is optax.adam, which has no weight decay: use optax.adamw.",
             lambda: two_steps(optax.adam(learning_rate))),
            ("the optimiser is plain SGD: use optax.adamw.", lambda: two_steps(optax.sgd(learning_rate))),
            *[("the learning_rate argument is not passed on to optax.adamw: it is fixed at the video's "
               f"{fixed}.", lambda fixed=fixed: two_steps(optax.adamw(fixed, weight_decay=weight_decay)))
              for fixed in (1e-3, 3e-4)],
        ])


# ----------------------------------------------------------------------------------------------------
# train_step


def _call_train_step(impl, state, x, y, dropout_key):
    out = _run("train_step", _function(impl, "train_step"), _copy(state), x, y, dropout_key)
    if not (isinstance(out, tuple) and len(out) == 2):
        checks.fail(f"train_step should return a pair (new_state, loss), but it returned a {type(out).__name__}"
                    + (f" of {len(out)} items." if isinstance(out, (tuple, list)) else "."))
    new_state, loss = out
    _assert_is_train_state(new_state, "the new state train_step returns")
    return new_state, _assert_scalar(loss, "train_step's loss")


def test_train_step_loss(impl):
    """train_step's loss is the mean cross entropy with dropout on (deterministic=False) at the old parameters"""
    state = _oracle_state(DROPPY, ADAMW)
    x, y = _batch()
    key = jax.random.key(7)
    _, loss = _call_train_step(impl, state, x, y, key)
    expected_state, expected, _ = _oracle_step(state, x, y, key)
    checks.assert_close(loss, expected, "train_step's loss", rtol=1e-5, atol=1e-6, diagnose=checks.diagnose_from([
        (FROM_CROSS_ENTROPY, lambda: _learner_loss(impl, state.params, DROPPY.apply, x, y, key)),
        ("dropout is off in train_step: call the model with deterministic=False and "
         "rngs={'dropout': dropout_key}.", lambda: _oracle_loss(state.params, DROPPY.apply, x, y)),
        ("the loss returned is the one after the update: return the loss at the parameters the step started "
         "from (jax.value_and_grad gives it with the gradient).",
         lambda: _oracle_loss(expected_state.params, DROPPY.apply, x, y, key)),
        ("the loss is summed over batch and time, not averaged.", lambda: expected * (B * T)),
    ]))


def test_train_step_update(impl):
    """train_step's new state is one AdamW step along the gradient of that loss, with step increased by 1"""
    state = _oracle_state(DROPPY, ADAMW)
    x, y = _batch()
    key = jax.random.key(7)
    new_state, _ = _call_train_step(impl, state, x, y, key)
    expected_state, _, grads = _oracle_step(state, x, y, key)
    unchanged = _tree_matches(new_state.params, state.params, atol=0.0)
    if unchanged or int(new_state.step) == 0:
        checks.fail("train_step returned the state it was given (step "
                    f"{int(new_state.step)}{', parameters unchanged' if unchanged else ''}): "
                    "state.apply_gradients(grads=grads) returns a new state (nothing in JAX changes in place); "
                    "return that one.")
    if int(new_state.step) != 1:
        checks.fail(f"after one train_step the state's step should be 1, but it is {int(new_state.step)}.")
    zero_grads = jax.tree_util.tree_map(jnp.zeros_like, grads)
    _assert_tree_close(new_state.params, expected_state.params, "the parameters after train_step", atol=1e-5,
                       candidates=[
        (FROM_CROSS_ENTROPY, lambda: state.apply_gradients(grads=jax.grad(
            lambda p: _learner_loss(impl, p, DROPPY.apply, x, y, key))(state.params)).params),
        ("the gradients are all zero: differentiate a function of its argument `params`; a loss_fn that "
         "reads state.params instead ignores its argument, so its gradient is zero.",
         lambda: state.apply_gradients(grads=zero_grads).params),
        ("the gradient was taken with dropout off: the loss you differentiate should call the model with "
         "deterministic=False and rngs={'dropout': dropout_key}.",
         lambda: state.apply_gradients(grads=_oracle_deterministic_grads(state, x, y)).params),
    ])


def test_train_step_dropout_follows_key(impl):
    """Dropout is on in train_step and follows dropout_key: the same key gives the same loss, another key another"""
    state = _oracle_state(DROPPY, ADAMW)
    x, y = _batch()
    first = float(_call_train_step(impl, state, x, y, jax.random.key(7))[1])
    again = float(_call_train_step(impl, state, x, y, jax.random.key(7))[1])
    other = float(_call_train_step(impl, state, x, y, jax.random.key(8))[1])
    if first != again:
        checks.fail(f"the same dropout key gave two different losses ({first:.6f} and {again:.6f}): dropout "
                    "should draw its randomness from dropout_key alone.")
    if first == other:
        quiet = float(_oracle_loss(state.params, DROPPY.apply, x, y))
        why = ("dropout is off in train_step: call the model with deterministic=False."
               if abs(first - quiet) < 1e-6 else "pass the key on as rngs={'dropout': dropout_key}.")
        checks.fail(f"two different dropout keys gave the same loss ({first:.6f}) on a model with dropout rate "
                    f"0.5. Likely cause: {why}")


def test_train_step_is_jitted(impl):
    """train_step is compiled with jax.jit, so that a step runs as one compiled program"""
    train_step = _function(impl, "train_step")
    if not hasattr(train_step, "lower"):
        checks.fail(f"train_step is a {type(train_step).__name__}, not a jax.jit-compiled function: "
                    "decorate it with @jax.jit (then every step after the first reuses one compiled program).")
    state = _oracle_state(DROPPY, ADAMW)
    x, y = _batch()
    # Same shapes, new values: a jitted step runs again without retracing, and its result is still right.
    new_state, loss = _call_train_step(impl, state, x, y, jax.random.key(9))
    checks.assert_close(loss, _oracle_step(state, x, y, jax.random.key(9))[1], "train_step's loss for another key",
                        rtol=1e-5, atol=1e-6, diagnose=checks.diagnose_from([
        (FROM_CROSS_ENTROPY, lambda: _learner_loss(impl, state.params, DROPPY.apply, x, y, jax.random.key(9)))]))


# ----------------------------------------------------------------------------------------------------
# evaluate


def _oracle_batch_losses(apply_fn, params, keys):
    return [float(_oracle_loss(params, apply_fn, *get_batch(k, RANDOM_TOKENS, B, T))) for k in keys]


def _call_evaluate(impl, state, key):
    try:
        got = _run("evaluate", _function(impl, "evaluate"), _copy(state), RANDOM_TOKENS, key, EVAL_ITERS, B, T)
    except Exception as err:
        if type(err).__name__ == "InvalidRngError" and "dropout" in str(err):
            checks.fail("evaluate asked the model for a 'dropout' RNG: evaluation runs with dropout off, "
                        "state.apply_fn({'params': state.params}, x, deterministic=True).")
        raise
    return _assert_scalar(got, "evaluate's result")


def test_evaluate_mean_over_batches(impl):
    """evaluate is the mean loss over eval_iters batches drawn with the keys jax.random.split(key, eval_iters)"""
    state = _oracle_state(PLAIN, ADAMW)
    key = jax.random.key(11)
    got = _call_evaluate(impl, state, key)
    losses = _oracle_batch_losses(PLAIN.apply, state.params, jax.random.split(key, EVAL_ITERS))

    def chained_keys():
        keys, k = [], key
        for _ in range(EVAL_ITERS):
            k, sub = jax.random.split(k)
            keys.append(sub)
        return keys

    checks.assert_close(got, np.mean(losses), "evaluate's result", rtol=1e-5, atol=1e-6,
                        diagnose=checks.diagnose_from([
        (FROM_CROSS_ENTROPY, lambda: np.mean([
            _learner_loss(impl, state.params, PLAIN.apply, *get_batch(k, RANDOM_TOKENS, B, T))
            for k in jax.random.split(key, EVAL_ITERS)])),
        ("every batch is drawn with the same key, so they are all one batch: draw batch i with "
         "keys[i], keys = jax.random.split(key, eval_iters).",
         lambda: _oracle_batch_losses(PLAIN.apply, state.params, [key])[0]),
        ("the batches are summed, not averaged.", lambda: np.sum(losses)),
        ("only the last batch's loss is returned: average the eval_iters losses.", lambda: losses[-1]),
        ("the batches are drawn with other keys than the lesson's: batch i uses keys[i] with "
         "keys = jax.random.split(key, eval_iters).",
         lambda: np.mean(_oracle_batch_losses(PLAIN.apply, state.params, chained_keys()))),
    ]))


def test_evaluate_dropout_off(impl):
    """evaluate runs the model with dropout off: on a model with dropout it gives the deterministic loss"""
    state = _oracle_state(DROPPY, ADAMW)
    key = jax.random.key(12)
    got = _call_evaluate(impl, state, key)
    expected = np.mean(_oracle_batch_losses(DROPPY.apply, state.params, jax.random.split(key, EVAL_ITERS)))

    def dropout_is_the_difference(got):
        try:
            if checks.matches(got, np.mean([_learner_loss(impl, state.params, DROPPY.apply,
                                                          *get_batch(k, RANDOM_TOKENS, B, T))
                                            for k in jax.random.split(key, EVAL_ITERS)])):
                return FROM_CROSS_ENTROPY
        except Exception:
            pass
        try:
            without_dropout = _copy(state.replace(apply_fn=PLAIN.apply))
            without = np.asarray(_function(impl, "evaluate")(without_dropout, RANDOM_TOKENS, key, EVAL_ITERS, B, T),
                                 np.float64)
        except Exception:
            return None
        if checks.matches(without, expected):
            return ("dropout is on in evaluate: the same parameters give the right loss once the model has no "
                    "dropout. Call the model with deterministic=True when evaluating.")
        return None

    checks.assert_close(got, expected, "evaluate's result on a model with dropout", rtol=1e-5, atol=1e-6,
                        diagnose=dropout_is_the_difference)


# ----------------------------------------------------------------------------------------------------
# train


def _call_train(impl, state, data, key, num_steps):
    out = _run("train", _function(impl, "train"), _copy(state), data, key, num_steps, B, T)
    if not (isinstance(out, tuple) and len(out) == 2):
        checks.fail(f"train should return a pair (state, losses), but it returned a {type(out).__name__}.")
    new_state, losses = out
    _assert_is_train_state(new_state, "the state train returns")
    if isinstance(losses, (list, tuple)):
        losses = [checks.as_array(v, f"train's loss number {i}") for i, v in enumerate(losses)]
        losses = np.stack([checks.assert_shape(v, (), f"train's loss number {i}") for i, v in enumerate(losses)])
    losses = checks.assert_shape(losses, (num_steps,), "train's losses", hint="train returns one loss per step.")
    return new_state, checks.assert_finite(losses, "train's losses")


def test_train_learns(impl):
    """train runs num_steps steps, returns the trained state and one loss per step, and the loss falls"""
    num_steps = 30
    state = _oracle_state(DROPPY, ADAMW)
    new_state, losses = _call_train(impl, state, CYCLE, jax.random.key(13), num_steps)
    if int(new_state.step) != num_steps:
        checks.fail(f"the state train returns has step {int(new_state.step)} after {num_steps} steps: keep the "
                    "state each step returns (`state, loss = train_step(state, x, y, dropout_key)`), or every "
                    "step starts again from the first parameters.")
    start, end = losses[0], losses[-5:].mean()
    if not end < 0.6 * start:
        checks.fail(f"on text where every token predicts the next, the loss went from {start:.3f} to "
                    f"{end:.3f} (mean of the last 5 steps) in {num_steps} steps at learning rate "
                    f"{LEARNING_RATE}; it should fall below {0.6 * start:.3f}. Does each step use the state "
                    "the previous step returned, and a batch with its targets?")


def test_train_fresh_dropout_key_each_step(impl):
    """train gives every step a fresh dropout key: with identical batches and frozen parameters the losses differ"""
    state = _oracle_state(DROPPY, FROZEN)
    _, losses = _call_train(impl, state, ONE_TOKEN, jax.random.key(14), 4)
    if np.ptp(losses) == 0.0:
        checks.fail(f"every step had the same loss ({losses[0]:.6f}) although each step should drop other "
                    "units. The data holds one repeated token and the learning rate is 0, so batches and "
                    "parameters never change: only the dropout key can differ. Likely cause: the same dropout "
                    "key is used at every step: split a fresh one from `key` each step "
                    "(key, batch_key, dropout_key = jax.random.split(key, 3)).")


def test_train_fresh_batch_each_step(impl):
    """train draws a fresh batch every step: with frozen parameters and no dropout the losses differ"""
    state = _oracle_state(PLAIN, FROZEN)
    _, losses = _call_train(impl, state, RANDOM_TOKENS, jax.random.key(15), 4)
    if np.ptp(losses) == 0.0:
        checks.fail(f"every step had the same loss ({losses[0]:.6f}). The model has no dropout and the learning "
                    "rate is 0, so only the batch can differ. Likely cause: every step trains on the same batch: "
                    "split a fresh batch key from `key` each step and pass it to get_batch.")


_SEEN_BY_MODEL = []  # (dropout key data, x) for each training call of the recording model below


def _recording_apply(variables, x, *args, rngs=None, **kwargs):
    """DROPPY.apply that also notes the dropout key and the batch each training call receives."""
    if rngs and "dropout" in rngs:
        key = rngs["dropout"]
        data = jax.random.key_data(key) if jnp.issubdtype(key.dtype, jax.dtypes.prng_key) else key
        jax.debug.callback(lambda k, batch: _SEEN_BY_MODEL.append((np.asarray(k), np.asarray(batch))), data, x)
    return DROPPY.apply(variables, x, *args, rngs=rngs, **kwargs)


def test_train_batch_and_dropout_keys_differ(impl):
    """train draws the batch and the dropout mask with different keys, both split from key"""
    state = _oracle_state(DROPPY, FROZEN).replace(apply_fn=_recording_apply)
    _SEEN_BY_MODEL.clear()
    _call_train(impl, state, RANDOM_TOKENS, jax.random.key(16), 3)
    jax.effects_barrier()  # every callback has run
    seen = list(_SEEN_BY_MODEL)
    # get_batch with the key that reached dropout gives the very batch the step trained on only if one key
    # served both: a key must be used once (split it instead).
    same = [np.array_equal(np.asarray(get_batch(jax.random.wrap_key_data(k), RANDOM_TOKENS, B, T)[0]), batch)
            for k, batch in seen]
    if seen and all(same):
        checks.fail("every step's batch is the one get_batch draws with that step's dropout key: one key served "
                    "both the batch and dropout.\n  Likely cause: the same subkey is given to get_batch and to "
                    "train_step; a JAX key is used once, so split one for each: "
                    "key, batch_key, dropout_key = jax.random.split(key, 3).")

