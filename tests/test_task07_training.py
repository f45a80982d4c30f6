"""Task 7: the loss, a jitted training step, evaluation and the training loop.

Oracles: optax.softmax_cross_entropy_with_integer_labels and optax.adamw (stepped by flax's own
TrainState); hand cases (uniform logits cost log V; the gradient is (softmax - one_hot) / (B * T)); and the
training loop replayed exactly: a recording model notes the dropout key and the batch of every step, the keys
are checked against the rule that a JAX key is used once (consumed, or split, never both), and the same steps
are replayed with the oracle's step to give the losses and parameters train must return. The models are tiny
hand-made Flax modules, not a GPT, so that each check compiles in a fraction of a second.

Shapes: B, T, V = 3, 5, 7 all differ (and differ from the video's batch 4, block 8 and vocabulary 65), so a size
read from the wrong axis or written into the code shows; cross_entropy is also tried on (1, 1, V) and on
(2, 37, 11).

Tolerances come from float32's unit roundoff u = 2**-24 = 6e-8:
  - a loss of order log V computed another way (logsumexp, a one-hot product, Optax's function) moves by a
    few u * log V, below 1e-6: losses are compared at rtol 1e-5, atol 1e-6 (the nearest mistake, a mean over
    the wrong axis, is off by a factor);
  - an optimiser built another way (optax.inject_hyperparams holds b1, b2, eps as float32 arrays) rounds
    1 - b2 = 1e-3 to relative precision u / (1 - b2) = 6e-5, so v_hat, and each AdamW update of size at most
    about lr, move by 3e-5 relative: k steps at learning rate lr move a parameter by at most k * lr * 3e-5
    (6e-6 for two steps at 0.1). Parameters after optimiser steps are compared at atol 2e-5, a decade below
    the nearest real mistake (Optax's default weight decay, 2.7e-3 after those two steps).
"""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax.training import train_state

from jaxgpt.grader import checks, outcomes
from jaxgpt.data import get_batch

TASK = 7

B, T, V = 3, 5, 7  # all different (and not the video's 4, 8, 65), so a sum over the wrong axis gives another number
HIDDEN = 8
LEARNING_RATE = 0.05
EVAL_ITERS = 3
# Parameters after a few AdamW steps: float32 rounding of the hyperparameters (held as arrays by
# optax.inject_hyperparams) moves them by at most steps * lr * 3e-5 (module docstring); the nearest mistake, 2.7e-3.
OPT_ATOL = 2e-5


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
EXAMPLE = jnp.zeros((B, T), jnp.int32)

RANDOM_TOKENS = jnp.asarray(np.random.default_rng(5).integers(0, V, 64), jnp.int32)  # its T-token windows are unique
CYCLE = jnp.asarray(np.arange(140) % V, jnp.int32)  # 0 1 2 .. 6 0 1 ..: each token predicts the next exactly


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


def _logits_and_targets(seed=0, scale=3.0, shape=(B, T, V)):
    rng = np.random.default_rng(seed)
    logits = (scale * rng.standard_normal(shape)).astype(np.float32)
    targets = rng.integers(0, shape[-1], shape[:-1]).astype(np.int32)
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
    B, T, V = np.shape(logits)  # this call's sizes, not the module's
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
        ("log_probs[..., targets] picks every target at every position (a (B, T, B, T) array, as PyTorch's "
         "indexing would too): pick one value per position with jnp.take_along_axis(log_probs, "
         "targets[..., None], axis=-1)[..., 0].",
         lambda: -_log_softmax64(logits)[..., np.asarray(targets)].mean()),
    ])


def _assert_scalar(value, what, B=B, T=T):
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
    """Leaf by leaf; on failure, names the known mistake whose whole tree is closest to `got` (within atol)."""
    checks.assert_tree(got, expected, what)

    def distance(candidate):
        a, b = _leaves(got), _leaves(candidate)
        if a.keys() != b.keys() or any(a[k].shape != b[k].shape for k in a):
            return np.inf
        return max(float(np.max(np.abs(a[k] - b[k]) - 1e-5 * np.abs(b[k]), initial=0.0)) for k in a)

    def diagnose(_):
        # The closest known mistake within the tolerance: two mistakes can lie close together (optax.adam and
        # Optax's default weight decay of 1e-4 differ by about 2 * lr * 1e-4 per parameter).
        found = []
        for why, compute in candidates:
            try:
                found.append((distance(compute()), why))
            except Exception:
                continue
        found = [f for f in found if f[0] <= atol]
        return min(found, key=lambda f: f[0])[1] if found else None

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


def _call_cross_entropy(impl, logits, targets, what):
    """The learner's cross_entropy(logits, targets); when it raises, runs on the usual fixed sizes (the video's batch
    4 and block 8, tiny Shakespeare's 65 characters) say whether a size is written into the code."""
    cross_entropy = _function(impl, "cross_entropy")
    try:
        return cross_entropy(jnp.asarray(logits), jnp.asarray(targets))
    except NotImplementedError:
        raise
    except Exception as error:
        where = outcomes.learner_frame(error)
        first = str(error).strip().splitlines()[0][:300] if str(error).strip() else ""
        b, t, v = np.shape(logits)
        cause = None
        for probe in ((b, t, 65), (4, 8, v), (4, 8, 65)):
            probe_logits, probe_targets = _logits_and_targets(seed=9, shape=probe)
            try:
                cross_entropy(jnp.asarray(probe_logits), jnp.asarray(probe_targets))
            except Exception:
                continue
            cause = (f"it runs for logits of shape {probe} but not {(b, t, v)}: a size is written into the code "
                     + ("(a vocabulary of 65, tiny Shakespeare's); read it from logits.shape[-1]." if probe[2] != v
                        else "(the video's batch 4 and block 8); read the sizes from logits.shape."))
            break
        checks.fail(f"{what} raised {type(error).__name__}: {first}" + (f"\n    at {where}" if where else "")
                    + (f"\n  Likely cause: {cause}" if cause else ""))


def test_cross_entropy_matches_optax(impl):
    """cross_entropy is Optax's softmax_cross_entropy_with_integer_labels averaged over batch and time"""
    logits, targets = _logits_and_targets()
    got = _call_cross_entropy(impl, logits, targets, "cross_entropy(logits, targets)")
    _assert_scalar(got, "cross_entropy(logits, targets)")
    expected = optax.softmax_cross_entropy_with_integer_labels(logits, targets).mean()
    checks.assert_close(got, expected, "cross_entropy(logits, targets)", rtol=1e-5, atol=1e-6,
                        diagnose=_diagnose_loss(logits, targets))


CROSS_ENTROPY_SHAPES = ((1, 1, V), (2, 37, 11))  # one position; a long sequence, another vocabulary size


def test_cross_entropy_any_shape(impl):
    """cross_entropy works for any (B, T, V): one position of a batch of one, and (2, 37, 11)"""
    cross_entropy = _function(impl, "cross_entropy")
    base_logits, base_targets = _logits_and_targets()

    def works(shape):
        logits, targets = _logits_and_targets(seed=9, shape=shape)
        try:
            got = np.asarray(cross_entropy(jnp.asarray(logits), jnp.asarray(targets)), np.float64)
        except NotImplementedError:
            raise
        except Exception:
            return False
        expected = -_picked(_log_softmax64(logits), targets).mean()
        return got.shape == () and abs(float(got) - expected) <= 1e-6 + 1e-5 * abs(expected)

    def size_cause(shape):
        """What runs on shapes between the base one and `shape` show (None unless the base shape works)."""
        if not works(base_logits.shape):
            return None
        sizes = []
        for axis, name in enumerate(("batch size", "length", "vocabulary size")):
            probe = list(base_logits.shape)
            probe[axis] = shape[axis]
            if probe != list(base_logits.shape) and not works(tuple(probe)):
                sizes.append(f"{name} {shape[axis]} (logits of shape {tuple(probe)})")
        return (f"it works for logits of shape {base_logits.shape} but not with "
                + (" nor with ".join(sizes) if sizes else f"shape {shape}")
                + ": a size is written into the code (a module-level constant, the video's B * T or a vocabulary "
                "of 65); read the sizes from logits.shape.")

    for shape in CROSS_ENTROPY_SHAPES:
        logits, targets = _logits_and_targets(seed=6, shape=shape)
        what = f"cross_entropy(logits, targets) for logits of shape {shape}"
        try:
            got = cross_entropy(jnp.asarray(logits), jnp.asarray(targets))
        except NotImplementedError:
            raise
        except Exception as error:
            where = outcomes.learner_frame(error)
            first = str(error).strip().splitlines()[0][:300] if str(error).strip() else ""
            cause = size_cause(shape)
            checks.fail(f"{what} raised {type(error).__name__}: {first}" + (f"\n    at {where}" if where else "")
                        + (f"\n  Likely cause: {cause}" if cause else ""))
        array = checks.as_array(got, what)
        if array.shape != ():
            cause = size_cause(shape)
            if cause:
                checks.fail(f"{what} should be a scalar, but it has shape {array.shape}.\n  Likely cause: {cause}")
        _assert_scalar(array, what, B=shape[0], T=shape[1])
        expected = optax.softmax_cross_entropy_with_integer_labels(logits, targets).mean()
        diagnose = _diagnose_loss(logits, targets)
        checks.assert_close(array, expected, what, rtol=1e-5, atol=1e-6,
                            diagnose=lambda got64, shape=shape: diagnose(got64) or size_cause(shape))


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
                           f"the parameters after two optimiser steps of {call}", atol=OPT_ATOL, candidates=[
            ("weight_decay is left at Optax's default (1e-4): pass weight_decay=weight_decay to optax.adamw "
             "(this lesson's default is 0.01, PyTorch's).", lambda: two_steps(optax.adamw(learning_rate))),
            ("the weight_decay argument is not passed on to optax.adamw.",
             lambda: two_steps(optax.adamw(learning_rate, weight_decay=0.01))),
            ("the optimiser is optax.adam, which has no weight decay: use optax.adamw.",
             lambda: two_steps(optax.adam(learning_rate))),
            ("the optimiser is plain SGD: use optax.adamw.", lambda: two_steps(optax.sgd(learning_rate))),
            ("weight_decay is passed to optax.adamw by position, where the second argument is b1 (Adam's "
             "momentum): write optax.adamw(learning_rate, weight_decay=weight_decay).",
             lambda: two_steps(optax.adamw(learning_rate, weight_decay))),
            ("the weight decay is added to the gradient before Adam (optax.chain(optax.add_decayed_weights(...), "
             "optax.adam(...)) is L2 regularisation, which Adam then rescales): AdamW decays the parameters "
             "after Adam's normalisation; use optax.adamw(learning_rate, weight_decay=weight_decay).",
             lambda: two_steps(optax.chain(optax.add_decayed_weights(weight_decay), optax.adam(learning_rate)))),
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


def _dropout_evidence(impl, state, x, y):
    """What train_step does with its dropout key, from two calls with two keys on a model with dropout rate 0.5:
    whether its loss and its update each change with the key, and whether the loss is the one without dropout.
    Each answer is a measurement, so a sentence built on it names a verified cause."""
    (state_a, loss_a), (state_b, loss_b) = (_call_train_step(impl, state, x, y, jax.random.key(k)) for k in (7, 8))
    quiet = float(_oracle_loss(state.params, state.apply_fn, x, y))
    return {
        "loss_follows_key": float(loss_a) != float(loss_b),
        "update_follows_key": not _tree_matches(state_a.params, state_b.params, atol=0.0),
        "loss_is_quiet": abs(float(loss_a) - quiet) <= 1e-6 + 1e-5 * abs(quiet),
    }


REPORTED_LOSS_QUIET = ("the loss train_step returns is computed with dropout off (a second, deterministic call of "
                       "the model), while the gradient does use dropout: return the loss jax.value_and_grad gives "
                       "with the gradient, from the same call with deterministic=False.")
DROPOUT_OFF = ("dropout is off in train_step: neither the loss nor the update changes with dropout_key. Call the "
               "model with deterministic=False and rngs={'dropout': dropout_key}.")


def _loss_diagnosis(impl, state, x, y, key):
    """A diagnose function for train_step's loss: each cause is recomputed and compared."""
    expected_state, expected, _ = _oracle_step(state, x, y, key)
    known = checks.diagnose_from([
        (FROM_CROSS_ENTROPY, lambda: _learner_loss(impl, state.params, DROPPY.apply, x, y, key)),
        ("the loss returned is the one after the update: return the loss at the parameters the step started "
         "from (jax.value_and_grad gives it with the gradient).",
         lambda: _oracle_loss(expected_state.params, DROPPY.apply, x, y, key)),
        ("the loss is summed over batch and time, not averaged.", lambda: expected * (B * T)),
    ])

    def diagnose(got):
        why = known(got)
        if why is None and checks.matches(got, _oracle_loss(state.params, DROPPY.apply, x, y)):
            # The loss is the one without dropout: is dropout off everywhere, or only in the reported loss?
            evidence = _dropout_evidence(impl, state, x, y)
            why = REPORTED_LOSS_QUIET if evidence["update_follows_key"] else DROPOUT_OFF
        return why

    return diagnose


def test_train_step_loss(impl):
    """train_step's loss is the mean cross entropy with dropout on (deterministic=False) at the old parameters"""
    state = _oracle_state(DROPPY, ADAMW)
    x, y = _batch()
    key = jax.random.key(7)
    _, loss = _call_train_step(impl, state, x, y, key)
    expected = _oracle_step(state, x, y, key)[1]
    checks.assert_close(loss, expected, "train_step's loss", rtol=1e-5, atol=1e-6,
                        diagnose=_loss_diagnosis(impl, state, x, y, key))


def test_train_step_update(impl):
    """train_step's new state is one AdamW step along the gradient of that loss, step increased by 1, twice in a row"""
    state = _oracle_state(DROPPY, ADAMW)
    x, y = _batch()
    key = jax.random.key(7)
    new_state, _ = _call_train_step(impl, state, x, y, key)
    expected_state, _, grads = _oracle_step(state, x, y, key)
    unchanged = _tree_matches(new_state.params, state.params, atol=0.0)
    step = checks.as_array(new_state.step, "the new state's step")
    if step.shape != () or not np.issubdtype(step.dtype, np.integer):
        checks.fail(f"the new state's step should be an integer counter, but it is {step!r}: build the new state "
                    "with state.apply_gradients(grads=grads), which keeps step an integer and adds 1.")
    step = int(step)
    if unchanged and step == 0:
        checks.fail("train_step returned the state it was given (step 0, parameters unchanged): "
                    "state.apply_gradients(grads=grads) returns a new state (nothing in JAX changes in place); "
                    "return that one.")
    if step != 1:
        moved = "" if unchanged else (" The parameters did move" + (
            ", exactly by one AdamW step" if _tree_matches(new_state.params, expected_state.params, OPT_ATOL) else "")
            + ", so the update happened but the counter was not kept.")
        checks.fail(f"after one train_step the state's step should be 1, but it is {step}.{moved}\n  Likely cause: "
                    + ("the step counter is not increased: a state rebuilt with state.replace(params=..., "
                       "opt_state=...) keeps the old step. state.apply_gradients(grads=grads) updates params, "
                       "opt_state and step together." if step == 0 and not unchanged else
                       "step should count the calls of apply_gradients, one per train_step."))
    zero_grads = jax.tree_util.tree_map(jnp.zeros_like, grads)
    _assert_tree_close(new_state.params, expected_state.params, "the parameters after train_step", atol=OPT_ATOL,
                       candidates=[
        (FROM_CROSS_ENTROPY, lambda: state.apply_gradients(grads=jax.grad(
            lambda p: _learner_loss(impl, p, DROPPY.apply, x, y, key))(state.params)).params),
        ("the gradients are all zero: differentiate a function of its argument `params`; a loss_fn that "
         "reads state.params instead ignores its argument, so its gradient is zero.",
         lambda: state.apply_gradients(grads=zero_grads).params),
        ("the gradient was taken with dropout off: the loss you differentiate should call the model with "
         "deterministic=False and rngs={'dropout': dropout_key}.",
         lambda: state.apply_gradients(grads=_oracle_deterministic_grads(state, x, y)).params),
        ("the parameters moved by exactly one AdamW step, but uphill: Optax's updates already carry the minus "
         "sign (-learning_rate * ...), so they are added, optax.apply_updates(params, updates), not subtracted "
         "as in PyTorch's p -= lr * g. state.apply_gradients(grads=grads) does it for you.",
         lambda: jax.tree_util.tree_map(lambda old, new: 2 * old - new, state.params, expected_state.params)),
    ])
    # A second step from the state the first returned: the optimiser's moments must travel in the state too.
    x2, y2 = _batch(seed=2)
    key2 = jax.random.key(8)
    second, _ = _call_train_step(impl, new_state, x2, y2, key2)
    expected_second, _, _ = _oracle_step(expected_state, x2, y2, key2)
    _assert_tree_close(second.params, expected_second.params, "the parameters after a second train_step",
                       atol=OPT_ATOL, candidates=[
        ("the optimiser state is not kept: the first step is right, but the second starts from the old Adam "
         "moments. state.apply_gradients(grads=grads) returns params, opt_state and step together; a state "
         "rebuilt by hand needs opt_state=new_opt_state as well.",
         lambda: _oracle_step(expected_state.replace(opt_state=state.opt_state), x2, y2, key2)[0].params),
    ])


def test_train_step_dropout_follows_key(impl):
    """Dropout is on in train_step and follows dropout_key: the same key gives the same loss, another key another"""
    state = _oracle_state(DROPPY, ADAMW)
    x, y = _batch()
    first = float(_call_train_step(impl, state, x, y, jax.random.key(7))[1])
    again = float(_call_train_step(impl, state, x, y, jax.random.key(7))[1])
    if first != again:
        checks.fail(f"the same dropout key gave two different losses ({first:.6f} and {again:.6f}): dropout "
                    "should draw its randomness from dropout_key alone.")
    evidence = _dropout_evidence(impl, state, x, y)
    if not evidence["loss_follows_key"]:
        if evidence["update_follows_key"] and evidence["loss_is_quiet"]:
            why = REPORTED_LOSS_QUIET
        elif evidence["loss_is_quiet"]:
            why = DROPOUT_OFF
        else:
            why = ("the model does not receive dropout_key: pass it on as rngs={'dropout': dropout_key} (a key "
                   "made inside the jitted step is the same at every call).")
        checks.fail(f"two different dropout keys gave the same loss ({first:.6f}) on a model with dropout rate "
                    f"0.5.\n  Likely cause: {why}")


def _compiled_as_one_program(fn, *args):
    """Whether tracing fn(*args) gives one jit-compiled call (a `jit`/`pjit` equation holding the computation)
    rather than operations run one by one: the behaviour @jax.jit gives, however the function is wrapped."""
    jaxpr = jax.make_jaxpr(fn)(*args)
    calls = [e for e in jaxpr.jaxpr.eqns if e.primitive.name in ("pjit", "jit")]
    heavy = [e for e in jaxpr.jaxpr.eqns if e.primitive.name not in ("pjit", "jit") and e.primitive.name in (
        "dot_general", "reduce_sum", "reduce_max", "exp", "log", "sqrt", "rsqrt", "gather", "scatter-add",
        "scatter_add", "div", "mul", "add", "sub", "integer_pow", "logistic", "select_n")]
    return bool(calls) and not heavy


def test_train_step_is_jitted(impl):
    """train_step is compiled with jax.jit, so that a step (forward, backward, update) runs as one compiled program"""
    train_step = _function(impl, "train_step")
    state = _oracle_state(DROPPY, ADAMW)
    x, y = _batch()
    try:
        compiled = _compiled_as_one_program(lambda s, a, b, k: train_step(s, a, b, k), _copy(state), x, y,
                                            jax.random.key(9))
    except NotImplementedError:
        raise
    except Exception as err:
        why = _unwrapped_params(err, "train_step")
        if why:
            checks.fail(why)
        where = outcomes.learner_frame(err)
        first = str(err).strip().splitlines()[0][:300] if str(err).strip() else ""
        tracer = any(word in type(err).__name__ for word in ("Tracer", "Concretization"))
        checks.fail(f"train_step could not be traced by jax.make_jaxpr (as jax.jit traces it): {type(err).__name__}: "
                    f"{first}" + (f"\n    at {where}" if where else "") + ("\n  A jitted step works on traced "
                    "arrays: no float() or int() of an array, no numpy on them, no Python `if` on their values."
                    if tracer else ""))
    if not compiled:
        checks.fail("train_step runs its operations one by one instead of as one compiled program: decorate it "
                    "with @jax.jit (then every step after the first reuses one compiled program).")
    # Same shapes, new values: a jitted step runs again without retracing, and its result is still right.
    new_state, loss = _call_train_step(impl, state, x, y, jax.random.key(9))
    checks.assert_close(loss, _oracle_step(state, x, y, jax.random.key(9))[1], "train_step's loss for another key",
                        rtol=1e-5, atol=1e-6, diagnose=_loss_diagnosis(impl, state, x, y, jax.random.key(9)))


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

    def trained_between_batches():
        s, found = state, []
        for k in jax.random.split(key, EVAL_ITERS):
            s, loss, _ = _oracle_step(s, *get_batch(k, RANDOM_TOKENS, B, T), k)
            found.append(float(loss))
        return np.mean(found)

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
        ("evaluate trains: it takes an optimiser step (train_step) on every batch, so the parameters move "
         "between batches. Evaluation only runs the model, state.apply_fn({'params': state.params}, x, "
         "deterministic=True), and takes the loss.", lambda: trained_between_batches()),
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
        checks.fail(f"train should return a pair (state, losses), but it returned a {type(out).__name__}"
                    + (f" of {len(out)} items." if isinstance(out, (tuple, list)) else "."))
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
        if _tree_matches(new_state.params, state.params, atol=0.0):
            why = ("the parameters are the ones train was given: keep the state each step returns "
                   "(`state, loss = train_step(state, x, y, dropout_key)`), or every step starts again from the "
                   "first parameters.")
        elif int(new_state.step) == 0:
            why = ("the parameters did change, so the loop keeps each step's state, but the counter never moved: "
                   "your train_step does not increase step (see its checks; state.apply_gradients does it).")
        else:
            why = "step should grow by one per training step."
        checks.fail(f"the state train returns has step {int(new_state.step)} after {num_steps} steps.\n"
                    f"  Likely cause: {why}")
    start, end = losses[0], losses[-5:].mean()
    if not end < 0.6 * start:
        checks.fail(f"on text where every token predicts the next, the loss went from {start:.3f} to "
                    f"{end:.3f} (mean of the last 5 steps) in {num_steps} steps at learning rate "
                    f"{LEARNING_RATE}; it should fall below {0.6 * start:.3f}. Does each step use the state "
                    "the previous step returned, and a batch with its targets?")


# The training loop replayed. A recording model notes, at every training call, the dropout key it receives and
# the batch it runs on; the keys are then checked against the rule that a JAX key is used once (consumed by
# get_batch or by dropout, or split into new keys, never both), and the steps are replayed with the oracle's
# train_step on the same batches and keys to give the losses and the final parameters train must return.
# Lesson's recipe: key, batch_key, dropout_key = jax.random.split(key, 3) at each step. Another sound lineage
# (fold_in, keys split up front) is accepted: the lesson fixes the rule, and the replay then uses the learner's keys.

REPLAY_STEPS = 3
REPLAY_KEY = 16
_SEEN_BY_MODEL = []  # (dropout key data, x) for each training call of the recording model below
_OTHER_STREAMS = set()  # RNG stream names other than 'dropout' that a training call of the model was given


def _key_data(key):
    key = jnp.asarray(key) if not hasattr(key, "dtype") else key
    return np.asarray(jax.random.key_data(key) if jnp.issubdtype(key.dtype, jax.dtypes.prng_key) else key)


def _recording_apply(variables, x, *args, rngs=None, **kwargs):
    """DROPPY.apply that also notes the dropout key and the batch each training call receives."""
    if rngs and "dropout" not in rngs and not kwargs.get("deterministic", True):
        _OTHER_STREAMS.update(rngs)  # noted while tracing: the streams a training call named instead
    if rngs and "dropout" in rngs:
        key = rngs["dropout"]
        data = jax.random.key_data(key) if jnp.issubdtype(key.dtype, jax.dtypes.prng_key) else key
        jax.debug.callback(lambda k, batch: _SEEN_BY_MODEL.append((np.asarray(k), np.asarray(batch))), data, x)
    return DROPPY.apply(variables, x, *args, rngs=rngs, **kwargs)


@functools.lru_cache(maxsize=None)
def _windows():
    """{window of T tokens of RANDOM_TOKENS: the T tokens that follow it one later}: every window is unique."""
    data = np.asarray(RANDOM_TOKENS)
    found = {tuple(data[i:i + T]): data[i + 1:i + T + 1] for i in range(len(data) - T)}
    assert len(found) == len(data) - T, "RANDOM_TOKENS must have unique windows"
    return found


def _targets_of(x):
    """The targets get_batch pairs with the batch x (None when a row is not a window of RANDOM_TOKENS)."""
    rows = [_windows().get(tuple(int(v) for v in row)) for row in np.asarray(x)]
    return None if any(r is None for r in rows) else jnp.asarray(np.stack(rows), jnp.int32)


def _batch_of(key):
    return np.asarray(get_batch(jax.random.wrap_key_data(jnp.asarray(key)) if np.ndim(key) else key,
                                RANDOM_TOKENS, B, T)[0])


def _children(key_data):
    """The keys jax.random.split(key, n) makes from a key, for n = 2 and 3: where a used key's keys would come from."""
    key = jax.random.wrap_key_data(jnp.asarray(key_data))
    return [(n, i, np.asarray(jax.random.key_data(k))) for n in (2, 3)
            for i, k in enumerate(jax.random.split(key, n))]


def _lineage_problems(root, steps):
    """Sentences for each broken key rule in `steps`, a list of (dropout key data, batch): each one a comparison
    of keys and batches recomputed here, so it states what happened, not a guess."""
    problems = []
    n = len(steps)
    same_dropout = [(i, j) for i in range(n) for j in range(i + 1, n) if np.array_equal(steps[i][0], steps[j][0])]
    same_batch = [(i, j) for i in range(n) for j in range(i + 1, n) if np.array_equal(steps[i][1], steps[j][1])]
    if same_dropout and len(same_dropout) == n * (n - 1) // 2:
        problems.append("the same dropout key is used at every step, so every step drops the same units: split a "
                        "fresh one from `key` each step.")
    elif same_dropout:
        i, j = same_dropout[0]
        problems.append(f"steps {i} and {j} use the same dropout key.")
    if same_batch and len(same_batch) == n * (n - 1) // 2:
        problems.append("every step trains on the same batch: it is drawn with the same key each time; split a "
                        "fresh batch key from `key` each step and pass it to get_batch.")
    elif same_batch:
        i, j = same_batch[0]
        problems.append(f"steps {i} and {j} train on the same batch, drawn with the same key.")
    root_data = _key_data(root)
    if any(np.array_equal(d, root_data) for d, _ in steps):
        problems.append("the key given to train is itself used as a dropout key, and also split for other keys: "
                        "a key is either used or split, never both.")
    root_batch = _batch_of(root_data)
    used_for_batch = [j for j, (_, x) in enumerate(steps) if np.array_equal(x, root_batch)]
    if used_for_batch and not same_batch:
        problems.append(f"the key given to train drew step {used_for_batch[0]}'s batch itself (get_batch(key, ...)) "
                        "and was then split for the next keys: split first, and use only the keys the split "
                        "gives (key, batch_key, dropout_key = jax.random.split(key, 3)).")
    for i, (dropout_i, _) in enumerate(steps):
        dropout_batch = _batch_of(dropout_i)
        served = [j for j, (_, x) in enumerate(steps) if np.array_equal(x, dropout_batch)]
        if served:
            j = served[0]
            problems.append(f"one key served both the batch and dropout: step {i}'s dropout key also drew the batch "
                            f"of step {j}. A JAX key is used once: split one for each use, "
                            "key, batch_key, dropout_key = jax.random.split(key, 3).")
            break
    if not same_dropout:
        for i in range(n - 1):
            later = []
            for count, index, child in _children(steps[i][0]):
                for j in range(i + 1, n):
                    if np.array_equal(child, steps[j][0]):
                        later.append(f"step {j}'s dropout key is jax.random.split(dropout key of step {i}, "
                                     f"{count})[{index}]")
                    elif np.array_equal(_batch_of(child), steps[j][1]):
                        later.append(f"step {j}'s batch was drawn with jax.random.split(dropout key of step {i}, "
                                     f"{count})[{index}]")
            if later:
                problems.append(f"step {i}'s dropout key was used by dropout and then split again for the next "
                                f"step's keys ({'; '.join(later[:2])}): it is carried on as the next `key`. Carry "
                                "the first key of the split instead: key, batch_key, dropout_key = "
                                "jax.random.split(key, 3), and pass only dropout_key to train_step.")
                break
    return problems


def test_train_keys_and_replay(impl):
    """train splits fresh keys each step (a key is used once) and returns exactly the replayed losses and state"""
    state = _oracle_state(DROPPY, ADAMW)
    key = jax.random.key(REPLAY_KEY)
    _SEEN_BY_MODEL.clear()
    _OTHER_STREAMS.clear()
    new_state, losses = _call_train(impl, state.replace(apply_fn=_recording_apply), RANDOM_TOKENS, key, REPLAY_STEPS)
    jax.effects_barrier()  # every callback has run
    seen = list(_SEEN_BY_MODEL)
    calls = len(seen) // REPLAY_STEPS
    if len(seen) > REPLAY_STEPS and len(seen) % REPLAY_STEPS == 0 and all(
            np.array_equal(seen[i][0], seen[i - i % calls][0]) and np.array_equal(seen[i][1], seen[i - i % calls][1])
            for i in range(len(seen))):
        seen = seen[::calls]  # a train_step that runs the model more than once per step, with one key and batch
    if not seen and _OTHER_STREAMS:
        checks.fail(f"in {REPLAY_STEPS} steps of train the model ran with dropout on but its key named "
                    + ", ".join(repr(n) for n in sorted(_OTHER_STREAMS)) + " (rngs={"
                    + ", ".join(f"{n!r}: ..." for n in sorted(_OTHER_STREAMS)) + "}): Flax's Dropout draws from "
                    "the stream named 'dropout', so pass rngs={'dropout': dropout_key}.")
    if not seen:
        checks.fail(f"in {REPLAY_STEPS} steps of train the model never ran with a dropout key: train should call "
                    "train_step, which runs the model with deterministic=False and rngs={'dropout': dropout_key}.")
    shapes = sorted({tuple(x.shape) for _, x in seen})
    if shapes != [(B, T)]:
        checks.fail(f"train ran the model on batches of shape {', '.join(map(str, shapes))}, but it was asked for "
                    f"batch_size={B}, block_size={T}: pass train's batch_size and block_size on to get_batch.")
    if len(seen) != REPLAY_STEPS:
        checks.fail(f"train ran {len(seen)} training steps (calls of the model with dropout) for "
                    f"num_steps={REPLAY_STEPS}: one train_step per step.")
    problems = _lineage_problems(key, seen)
    if problems:
        checks.fail(f"the keys of train's {REPLAY_STEPS} steps break JAX's rule that a key is used once (consumed, or "
                    "split, never both):\n  Likely cause: " + "\n  Also: ".join(problems))
    # The keys are sound: replay the same steps with the oracle's step, on the very batches and keys train used.
    expected_state, expected_losses, states = state, [], [state]
    for dropout_key, x in seen:
        y = _targets_of(x)
        if y is None:
            checks.fail("a batch the model saw in train is not a window of the data train was given: draw each "
                        "batch with get_batch(batch_key, data, batch_size, block_size).")
        expected_state, loss, _ = _oracle_step(expected_state, jnp.asarray(x), y,
                                               jax.random.wrap_key_data(jnp.asarray(dropout_key)))
        expected_losses.append(float(loss))
        states.append(expected_state)
    recipe = []
    k = key
    for _ in range(REPLAY_STEPS):
        k, batch_key, dropout_key = jax.random.split(k, 3)
        recipe.append((_key_data(dropout_key), _batch_of(_key_data(batch_key))))
    follows_recipe = all(np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1]) for a, b in zip(seen, recipe))
    replay = ("the lesson's keys" if follows_recipe else "your keys") + " and batches"
    after_update = checks.diagnose_from([
        ("each step's loss is the one after its update: train_step should return the loss at the parameters "
         "the step started from.",
         lambda: [float(_oracle_loss(st.params, DROPPY.apply, jnp.asarray(x), _targets_of(x),
                                     jax.random.wrap_key_data(jnp.asarray(d))))
                  for st, (d, x) in zip(states[1:], seen)])])

    def learner_steps():
        """train's steps redone with the learner's own train_step on the same batches and keys."""
        current, out = state, []
        for dropout_key, x in seen:
            current, loss = _call_train_step(impl, current, jnp.asarray(x), _targets_of(x),
                                             jax.random.wrap_key_data(jnp.asarray(dropout_key)))
            out.append(float(loss))
        return current, np.array(out)

    def diagnose(got):
        if checks.matches(got[1:], expected_losses[:-1]):
            return "each loss is reported one step late: losses[i] should be the loss of step i."
        try:
            if checks.matches(got, learner_steps()[1], rtol=1e-5, atol=OPT_ATOL):
                return ("these are the losses your own train_step gives on these batches and keys, so the loop is "
                        "right and the difference is in train_step: fix it first (see its checks).")
        except Exception:
            pass
        return after_update(got)

    checks.assert_close(losses, np.array(expected_losses), f"train's losses, replayed step by step with {replay},",
                        rtol=1e-5, atol=OPT_ATOL, diagnose=diagnose)
    if int(new_state.step) != REPLAY_STEPS:
        checks.fail(f"the state train returns has step {int(new_state.step)} after {REPLAY_STEPS} steps; it "
                    "should count one per step.")
    _assert_tree_close(new_state.params, expected_state.params,
                       f"the parameters train returns, replayed step by step with {replay},", atol=OPT_ATOL,
                       candidates=[
        ("the state returned is the one before the last step: return the state the last train_step gave.",
         lambda: states[-2].params),
        ("the state returned is the one train was given: keep and return the state each step returns.",
         lambda: states[0].params),
    ])
