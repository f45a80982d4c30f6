"""Task 6: `LayerNorm` by hand, and `Block` and `MiniGPT` rebuilt from the learner's own parts.

Oracles: Flax's `nn.LayerNorm` and a float64 layer norm by hand (with inputs of tiny variance, where epsilon
matters); a GPT built from Flax's layers (tests/oracles_gpt.py) whose parameters, in task 1's tree, are
loaded into the learner's Block and MiniGPT; the reference modules themselves (jaxgpt/grader/differential.py), run on
the same parameters and compared submodule by submodule in evaluation and training mode, with every dropout
judged by what it drops and at what rate; causality, jit and the dropout RNG. A failure names its likely
cause by recomputing the usual wrong variants or the catalogued mistake whose output the learner's equals,
or else the first submodule where the two part; and when that submodule is the learner's FeedForward (task 1)
or EinsumMultiHeadAttention (task 5) and it is wrong on its own, it says so, with the task to fix first.

Sizes as in task 1's suite: all different (vocab 13, block_size 37, n_embd 24, 3 heads of 8, batch 2), T = 1,
5 and block_size, a batch of one, T = 257 for Block, and dropout_rate 0.37.
"""


import jax
import flax.linen as nn
import numpy as np
import pytest

from jaxgpt.grader import checks, differential
import oracles_gpt as og
from module_checks import RATE, block_names, build as _build, first_non_finite, first_of, jitted_logits
from module_checks import logits as _logits, logits_shape_hint, model_names, output, own_params as _own_params
from module_checks import position_explainer, require_tree, require_tree_where_it_traces, same_behaviour
from module_checks import same_dropout, tree_of as _tree_of

TASK = 6

V, BLOCK_SIZE, C, H, L = 13, 37, 24, 3, 2  # vocab_size, block_size, n_embd, n_head (head_size 8), n_layer
B, T = 2, BLOCK_SIZE
LONG_T = 257  # for Block: longer than any block_size a mask could be built for by hand
FIELDS = dict(vocab_size=V, block_size=BLOCK_SIZE, n_embd=C, n_head=H, n_layer=L)
TOL = dict(rtol=1e-4, atol=1e-4)


@pytest.fixture(scope="module")
def idx():
    return np.random.default_rng(0).integers(0, V, (B, T)).astype(np.int32)  # (B, T) token ids


@pytest.fixture(scope="module")
def params(idx):
    """One parameter tree in task 1's layout (a task-1 model's), shared by the learner's modules and the oracle."""
    return og.random_params(og.OracleGPT(**FIELDS), idx)


@pytest.fixture(scope="module")
def x():
    return np.random.default_rng(1).standard_normal((B, T, C)).astype(np.float32)  # (B, T, C) activations


@pytest.fixture(scope="module")
def x_long():
    return np.random.default_rng(4).standard_normal((1, LONG_T, C)).astype(np.float32)  # a batch of one


@pytest.fixture(scope="module")
def ln_params():
    rng = np.random.default_rng(3)
    return {"params": {"scale": (1 + 0.3 * rng.standard_normal(C)).astype(np.float32),
                       "bias": (0.3 * rng.standard_normal(C)).astype(np.float32)}}


# --- LayerNorm ----------------------------------------------------------------------------------------------


def layer_norm64(x, p, *, epsilon=1e-6, axis=-1, ddof=0, eps_inside_sqrt=True, sqrt=True, centre=True,
                 affine=True, swap_scale_bias=False, affine_first=False):
    """Layer norm in float64 by hand, with switches for the usual mistakes."""
    x = np.asarray(x, np.float64)
    if affine_first:  # scale and bias applied to x, which is normalised afterwards
        return layer_norm64(x * p["scale"] + p["bias"], p, epsilon=epsilon, affine=False)
    mean = x.mean(axis=axis, keepdims=True)
    var = x.var(axis=axis, keepdims=True, ddof=ddof)
    if not sqrt:
        spread = var + epsilon
    elif eps_inside_sqrt:
        spread = np.sqrt(var + epsilon)
    else:
        spread = np.sqrt(var) + epsilon
    y = ((x - mean) if centre else x) / spread
    scale, bias = (p["bias"], p["scale"]) if swap_scale_bias else (p["scale"], p["bias"])
    return y * scale + bias if affine else y


def _diagnose_layer_norm(x, p, epsilon=1e-6):
    """Compares with the usual wrong layer norms, each computed with the `epsilon` the check asked for."""
    variants = [
        (f"the statistics are taken {where}; a LayerNorm normalises each position over its own channels: "
         "mean and variance over the last axis (axis=-1, keepdims=True).", dict(axis=axis))
        for axis, where in ((1, "over axis 1 (time)"), (0, "over axis 0 (the batch)"), (None, "over the whole array"))]
    variants += [
        ("the variance is unbiased (ddof=1, Bessel's correction, as torch.var does by default); LayerNorm "
         "divides by C: jnp.var(x, axis=-1) or the mean of the squared deviations.", dict(ddof=1)),
        ("epsilon is added outside the square root, (x - mean) / (sqrt(var) + eps); it goes inside: "
         "(x - mean) / sqrt(var + eps).", dict(eps_inside_sqrt=False)),
        ("x is divided by var + eps without the square root: divide by sqrt(var + eps), the standard deviation.",
         dict(sqrt=False)),
        ("the mean is not subtracted: (x - mean) / sqrt(var + eps).", dict(centre=False)),
        ("scale and bias are not applied: return normalised * scale + bias.", dict(affine=False)),
        ("scale and bias are swapped: normalised * scale + bias.", dict(swap_scale_bias=True)),
        ("scale and bias are applied to x before normalising, so normalising undoes them: normalise first, then "
         "normalised * scale + bias.", dict(affine_first=True)),
    ]
    if epsilon == 1e-6:
        variants += [
            ("epsilon is 1e-5 (PyTorch's default); nn.LayerNorm's, and this lesson's, is 1e-6.", dict(epsilon=1e-5)),
            ("epsilon is missing (0); add it to the variance: sqrt(var + epsilon).", dict(epsilon=0.0))]
    else:
        variants += [("the epsilon field is ignored: use self.epsilon, not a number written into the formula.",
                      dict(epsilon=e)) for e in (1e-6, 1e-5, 0.0)]
    return checks.diagnose_from((why, lambda kw=kw: layer_norm64(x, p, **{"epsilon": epsilon, **kw}))
                                for why, kw in variants)


def _layer_norm_out(ln, ln_params, x, what):
    try:
        return ln.apply(ln_params, x)
    except (ValueError, TypeError) as err:
        checks.fail(f"LayerNorm fails on {what} of shape {np.shape(x)} ({type(err).__name__}: "
                    f"{str(err).strip().splitlines()[0][:300]}). Take C = x.shape[-1] and reduce over axis=-1 with "
                    "keepdims=True, so that any leading shape works.")


def test_layernorm_parameters(impl, x):
    """LayerNorm's parameters are scale (C,) initialised to ones and bias (C,) initialised to zeros"""
    ln = _build(impl.LayerNorm)
    expected = {"params": {"scale": np.ones(C, np.float32), "bias": np.zeros(C, np.float32)}}
    checks.assert_tree(_tree_of(ln, x), expected, "LayerNorm's parameter tree")
    got = ln.init(jax.random.key(0), x)["params"]
    checks.assert_close(got["scale"], expected["params"]["scale"], "LayerNorm's initial scale", rtol=0, atol=0)
    checks.assert_close(got["bias"], expected["params"]["bias"], "LayerNorm's initial bias", rtol=0, atol=0)


def test_layernorm_matches_flax(impl, x, ln_params):
    """LayerNorm gives the same numbers as Flax's nn.LayerNorm with the same scale and bias"""
    ln = _build(impl.LayerNorm)
    require_tree(ln, (x,), ln_params, "LayerNorm")
    inputs = 2.0 * x + 0.5  # a mean and a spread that normalising must remove
    expected = nn.LayerNorm().apply(ln_params, inputs)
    checks.assert_close(_layer_norm_out(ln, ln_params, inputs, "an input"), expected, "LayerNorm's output",
                        **TOL, diagnose=_diagnose_layer_norm(inputs, ln_params["params"]))


def test_layernorm_tiny_variance(impl, x, ln_params):
    """LayerNorm is right for inputs of tiny variance, where epsilon counts: checked by hand in float64"""
    ln = _build(impl.LayerNorm)
    require_tree(ln, (x,), ln_params, "LayerNorm")
    inputs = 1e-3 * x  # variance about 1e-6, as large as epsilon: its size and place now show
    expected = layer_norm64(inputs, ln_params["params"])
    checks.assert_close(_layer_norm_out(ln, ln_params, inputs, "an input"), expected,
                        "LayerNorm's output for an input of variance about 1e-6", **TOL,
                        diagnose=_diagnose_layer_norm(inputs, ln_params["params"]))


def test_layernorm_epsilon_field(impl, x, ln_params):
    """LayerNorm's epsilon defaults to 1e-6 and LayerNorm(epsilon=...) uses the value it is given"""
    default = getattr(_build(impl.LayerNorm), "epsilon", None)
    if default != 1e-6:
        checks.fail(f"LayerNorm().epsilon should default to 1e-6 (nn.LayerNorm's default), but it is {default!r}."
                    + (" Declare the field `epsilon: float = 1e-6`." if default is None else ""))
    ln = _build(impl.LayerNorm, epsilon=0.5)
    require_tree(ln, (x,), ln_params, "LayerNorm")
    expected = nn.LayerNorm(epsilon=0.5).apply(ln_params, x)
    checks.assert_close(_layer_norm_out(ln, ln_params, x, "an input"), expected, "LayerNorm(epsilon=0.5)'s output",
                        **TOL, diagnose=_diagnose_layer_norm(x, ln_params["params"], epsilon=0.5))


def test_layernorm_any_leading_shape(impl, x, ln_params):
    """LayerNorm works on any leading shape, (C,), (T, C) or (2, B, T, C), and under jax.jit"""
    ln = _build(impl.LayerNorm)
    require_tree(ln, (x,), ln_params, "LayerNorm")
    for inputs in (x[0, 0], x[0], np.stack([x, -x])):
        expected = layer_norm64(inputs, ln_params["params"])
        checks.assert_close(_layer_norm_out(ln, ln_params, inputs, "an input"), expected,
                            f"LayerNorm's output for an input of shape {inputs.shape}", **TOL,
                            diagnose=_diagnose_layer_norm(inputs, ln_params["params"]))
    jitted = jax.jit(lambda v: ln.apply(ln_params, v))(x)
    checks.assert_close(jitted, layer_norm64(x, ln_params["params"]), "LayerNorm's output under jax.jit", **TOL)


def test_layernorm_same_as_reference(impl, reference, x, ln_params):
    """LayerNorm computes what the lesson's does, for T = 1 and 5, a batch of one and tiny variance"""
    ln = _build(impl.LayerNorm)
    require_tree_where_it_traces(ln, (x,), ln_params, "LayerNorm")
    same_behaviour(ln, reference.LayerNorm(), ln_params,
                   [(2.0 * x + 0.5,), (1e-3 * x[:1, :5],), (x[:, :1],)], "LayerNorm", task=impl.task,
                   build=lambda view: view.LayerNorm(), plain=True)


# --- Block --------------------------------------------------------------------------------------------------


def _ln_of(impl):
    return lambda p, h: impl.LayerNorm().apply({"params": p}, h)


def _own_part_mistakes(impl):
    """When the block is right but a part is wrong, say which part: the block recomputed with that part."""
    attention = lambda p, h: impl.other(5).EinsumMultiHeadAttention(H).apply({"params": p}, h)
    ffwd = lambda p, h: impl.other(1).FeedForward(C).apply({"params": p}, h)
    return [
        ("your LayerNorm differs from nn.LayerNorm: the LayerNorm checks above say how.", dict(ln=_ln_of(impl))),
        ("your EinsumMultiHeadAttention (task 5) differs from Flax's attention: make task 5's check pass first.",
         dict(attention=attention)),
        ("your FeedForward (task 1) is not Dense -> ReLU -> Dense: make task 1's check pass first.",
         dict(ffwd=ffwd)),
        ("the Block is wired right, but more than one of its parts differs from Flax's: make the LayerNorm checks "
         "and the checks of tasks 1 and 5 pass first.", dict(ln=_ln_of(impl), attention=attention, ffwd=ffwd)),
    ]


def _diagnose_block(impl, p, x):
    mistakes = _own_part_mistakes(impl) + og.block_mistakes(
        "the Block should use your EinsumMultiHeadAttention, which always applies the mask.")
    return checks.diagnose_from((why, lambda kw=kw: og.block(p, x, H, **kw)) for why, kw in mistakes)


def _diagnose_model(impl, p, idx):
    mistakes = _own_part_mistakes(impl) + og.model_mistakes(
        "the Block should use your EinsumMultiHeadAttention, which always applies the mask.")
    return checks.diagnose_from((why, lambda kw=kw: og.gpt(p, idx, H, **kw)) for why, kw in mistakes)


def test_block_parameter_tree(impl, params, x):
    """Block's parameters are task 1's: ln1, attn, ln2 and ffwd, with the same names and shapes"""
    block = _build(impl.Block, n_embd=C, n_head=H)
    checks.assert_tree(_tree_of(block, x), {"params": params["params"]["blocks_0"]}, "Block's parameter tree")


def test_block_output(impl, params, x):
    """Block computes x + attn(ln1(x)), then x + ffwd(ln2(x)): same numbers as Flax's layers with task 1's parameters"""
    block = _build(impl.Block, n_embd=C, n_head=H)
    p = params["params"]["blocks_0"]
    require_tree(block, (x,), {"params": p}, "Block")
    out = output(lambda: block.apply({"params": p}, x), (B, T, C), "Block's output")
    checks.assert_close(out, og.block(p, x, H), "Block's output", **TOL, diagnose=_diagnose_block(impl, p, x))


def _leaks(make, x, position):
    """Whether the module `make()` (initialised on x) lets outputs up to `position` see inputs after it."""
    changed = x.copy()
    changed[:, position + 1:] = 3.0
    try:
        module = make()
        p = module.init(jax.random.key(0), x)
        change = np.abs(np.asarray(module.apply(p, x)) - np.asarray(module.apply(p, changed)))
        return change[:, :position + 1].max() > 1e-5
    except Exception:  # the part's own checks report its errors
        return False


def _why_positions_mix(impl, x, position):
    """Which of the learner's parts lets a position see later ones, each run alone: their LayerNorm, their
    task-5 attention; else where to look, said as a pointer rather than as the cause."""
    if _leaks(lambda: impl.LayerNorm(), x, position):
        return ("\n  Likely cause: your LayerNorm mixes positions: its mean and variance must be over the last axis "
                "(the channels of one position), not over time.")
    if _leaks(lambda: impl.other(5).EinsumMultiHeadAttention(H), x, position):
        return ("\n  Likely cause: your EinsumMultiHeadAttention (task 5) lets a position see later ones: make task "
                "5's check pass first.")
    return ("\n  Your LayerNorm and your task-5 attention are each causal on their own, so look at how the Block "
            "uses them: it should call your EinsumMultiHeadAttention (task 5), which always applies the mask, and "
            "mix nothing over the time axis outside it.")


def test_block_is_causal(impl, x):
    """Block's output at position t does not depend on inputs after t"""
    block = _build(impl.Block, n_embd=C, n_head=H)
    p = _own_params(block, x)
    before = output(lambda: block.apply(p, x), (B, T, C), "Block's output")
    position = T // 2
    changed = x.copy()
    changed[:, position + 1:] = 3.0
    after = output(lambda: block.apply(p, changed), (B, T, C), "Block's output")
    change = np.abs(before[:, :position + 1] - after[:, :position + 1]).max()
    if change > 1e-5:
        checks.fail(f"Block's output at positions 0..{position} changed by {change:.3g} when only the inputs after "
                    f"position {position} changed." + _why_positions_mix(impl, x, position))


# The learner's own parts inside Block and MiniGPT: (submodule name, the part's class in the learner's
# implementation, how it is built, the task it comes from).
def _parts():
    return [("ln1", lambda v: v.LayerNorm, lambda m: m(), 6), ("ln2", lambda v: v.LayerNorm, lambda m: m(), 6),
            ("attn", lambda v: v.other(5).EinsumMultiHeadAttention, lambda m: m(H, RATE), 5),
            ("ffwd", lambda v: v.other(1).FeedForward, lambda m: m(C, RATE), 1)]


def _part_explainer(impl, reference_module, learner_module, variables, prefixes):
    """When Block or MiniGPT part ways with the reference, whether one of the learner's own parts (their
    LayerNorm, their task-5 attention, their task-1 FeedForward) is itself wrong: each part the learner's
    module calls is run alone on the input it receives in the reference, with the same parameters, and
    compared with the reference's part. Says the task and the part; None when every part is right alone."""

    def explain(args):
        try:
            expected = differential.record(reference_module, variables, *args, deterministic=True)
            mine = differential.record(learner_module, variables, *args, deterministic=True)
        except Exception:
            return None
        ref_events = {ev.key: ev for ev in expected.events}
        used = {(ev.path, ev.cls) for ev in mine.events}
        for prefix in prefixes:
            for name, part_of, make, task in _parts():
                path = f"{prefix}/{name}" if prefix else name
                given, wanted = ref_events.get(("in", path, 0)), ref_events.get(("out", path, 0))
                try:
                    cls = part_of(impl)
                except Exception:
                    continue
                if given is None or wanted is None or (path, cls.__name__) not in used:
                    continue
                sub = variables["params"]
                for key in path.split("/"):
                    sub = sub[key]
                try:
                    got = np.asarray(make(cls).apply({"params": sub}, given.value))
                except Exception:
                    continue
                if differential._close(got, wanted.value):
                    continue
                diff = differential._difference(got, wanted.value)
                if task == 6:
                    return (f"Likely cause: `{path}` is your LayerNorm, and on its own it does not compute what the "
                            f"lesson's does on the input `{path}` receives ({diff}): the LayerNorm checks say how.")
                where = impl.implementation.where(impl.other(task).task)
                return (f"Likely cause: `{path}` is your {cls.__name__} from task {task} ({where}), and on its own "
                        f"it does not compute what the lesson's {cls.__name__} does on the input `{path}` receives "
                        f"({diff}): task {task}'s check says how; make it pass first.")
        return None

    return explain


def test_block_same_as_reference(impl, reference, params, x, x_long):
    """Block computes what the lesson's does, layer by layer, for T = 1, 5, 37 and 257, in evaluation and training"""
    block = _build(impl.Block, n_embd=C, n_head=H, dropout_rate=RATE)
    variables = {"params": params["params"]["blocks_0"]}
    require_tree_where_it_traces(block, (x,), variables, "Block")
    expected = reference.Block(n_embd=C, n_head=H, dropout_rate=RATE)
    same_behaviour(block, expected, variables, [(x,), (x[:1, :5],), (x[:, :1],), (x_long,)], "Block",
                   task=impl.task, build=lambda view: view.Block(n_embd=C, n_head=H, dropout_rate=RATE),
                   explain=_part_explainer(impl, expected, block, variables, [""]))


def test_block_dropout(impl, reference, params, x):
    """In training Block drops attention weights, attention output and feed-forward output, once each, at its rate"""
    block = _build(impl.Block, n_embd=C, n_head=H, dropout_rate=RATE)
    variables = {"params": params["params"]["blocks_0"]}
    require_tree(block, (x,), variables, "Block")
    quiet = output(lambda: block.apply(variables, x, deterministic=True), (B, T, C),
                   f"Block's output with dropout_rate={RATE} and deterministic=True")
    checks.assert_close(quiet, _build(impl.Block, n_embd=C, n_head=H).apply(variables, x),
                        f"Block's output with dropout_rate={RATE} and deterministic=True", rtol=1e-6, atol=1e-6)
    expected = reference.Block(n_embd=C, n_head=H, dropout_rate=RATE)
    same_dropout(block, expected, variables, (x,), "Block", block_names(own_parts=True),
                 explain=_part_explainer(impl, expected, block, variables, [""]))


# --- MiniGPT ------------------------------------------------------------------------------------------------


def test_model_parameter_tree(impl, params, idx):
    """MiniGPT's own init has task 1's parameter tree, so task 1's trained weights load into it"""
    model = _build(impl.MiniGPT, **FIELDS)
    checks.assert_tree(_tree_of(model, idx), params, "MiniGPT's parameter tree")


def test_logits_match_task1_model(impl, params, idx):
    """MiniGPT, given a task-1 model's parameters, gives the same logits as that model built from Flax's layers"""
    model = _build(impl.MiniGPT, **FIELDS)
    require_tree(model, (idx,), params, "MiniGPT")
    logits = _logits(model, params, idx)
    checks.assert_shape(logits, (B, T, V), "MiniGPT's logits", logits_shape_hint(np.shape(logits), B, T, V, C))
    checks.assert_dtype(logits, np.float32, "MiniGPT's logits")
    checks.assert_close(logits, og.oracle_apply(og.OracleGPT(**FIELDS), params, idx), "MiniGPT's logits", **TOL,
                        diagnose=_diagnose_model(impl, params["params"], idx))


def test_causal(impl, idx, x):
    """The logits at position t do not depend on tokens after t"""
    model = _build(impl.MiniGPT, **FIELDS)
    p = _own_params(model, idx)
    shape = (B, T, V)
    first = _logits(model, p, idx)
    before = output(lambda: first, shape, "MiniGPT's logits", logits_shape_hint(np.shape(first), B, T, V, C))
    for position in (0, T // 2):
        changed = idx.copy()
        changed[:, position + 1:] = (changed[:, position + 1:] + 1) % V
        after = output(lambda: model.apply(p, changed), shape, "MiniGPT's logits")
        change = np.abs(before[:, :position + 1] - after[:, :position + 1]).max()
        if change > 1e-5:
            checks.fail(f"MiniGPT's logits at positions 0..{position} changed by {change:.3g} when only tokens "
                        f"after position {position} changed: the model sees the future."
                        + _why_positions_mix(impl, x, position))


def test_shorter_sequences_under_jit(impl, params, idx):
    """Works under jax.jit, and for T shorter than block_size"""
    model = _build(impl.MiniGPT, **FIELDS)
    require_tree(model, (idx,), params, "MiniGPT")
    t = 5
    logits = jitted_logits(model, params, idx[:, :t], BLOCK_SIZE)
    checks.assert_shape(logits, (B, t, V), f"MiniGPT's logits for T={t} under jax.jit")
    first_non_finite(model, params, (idx[:, :t],), logits, f"MiniGPT's logits for T={t}")
    # Causality makes the logits of a prefix the first t rows of the whole sequence's logits.
    expected = og.oracle_apply(og.OracleGPT(**FIELDS), params, idx)[:, :t]
    checks.assert_close(logits, expected, f"MiniGPT's logits for T={t} under jax.jit", **TOL,
                        diagnose=_diagnose_model(impl, params["params"], idx[:, :t]))


def test_model_same_as_reference(impl, reference, params, idx):
    """MiniGPT computes what the lesson's does, layer by layer, for T = 1, 5 and block_size, in eval and training"""
    model = _build(impl.MiniGPT, **FIELDS, dropout_rate=RATE)
    require_tree_where_it_traces(model, (idx,), params, "MiniGPT")
    expected = reference.MiniGPT(**FIELDS, dropout_rate=RATE)
    same_behaviour(model, expected, params, [(idx,), (idx[:1, :5],), (idx[:, :1],)], "MiniGPT", task=impl.task,
                   build=lambda view: view.MiniGPT(**FIELDS, dropout_rate=RATE),
                   explain=first_of(position_explainer(model, params, BLOCK_SIZE),
                                    _part_explainer(impl, expected, model, params, [f"blocks_{i}" for i in range(L)])))


def test_model_dropout(impl, reference, params, idx):
    """In training MiniGPT drops the embedding sum and, in every block, what Block drops, once each, at dropout_rate"""
    model = _build(impl.MiniGPT, **FIELDS, dropout_rate=RATE)
    require_tree(model, (idx,), params, "MiniGPT")
    expected = reference.MiniGPT(**FIELDS, dropout_rate=RATE)
    same_dropout(model, expected, params, (idx,), "MiniGPT", model_names(L, own_parts=True),
                 explain=_part_explainer(impl, expected, model, params, [f"blocks_{i}" for i in range(L)]))


def test_dropout(impl, idx):
    """With deterministic=True dropout is off; with False it draws from the 'dropout' RNG (same key, same logits)"""
    model = _build(impl.MiniGPT, **FIELDS, dropout_rate=RATE)
    p = _own_params(model, idx)
    quiet = output(lambda: _logits(model, p, idx), (B, T, V), "MiniGPT's logits")
    checks.assert_close(quiet, _build(impl.MiniGPT, **FIELDS).apply(p, idx),
                        f"the logits with dropout_rate={RATE} and the default deterministic", rtol=1e-6, atol=1e-6)
    training = jax.jit(lambda key: model.apply(p, idx, deterministic=False, rngs={"dropout": key}))
    noisy, again, other = (output(lambda k=k: training(jax.random.key(k)), (B, T, V), "MiniGPT's logits in training")
                           for k in (3, 3, 4))
    first_non_finite(model, p, (idx,), noisy, "MiniGPT's logits in training", deterministic=False)
    if np.allclose(noisy, quiet):
        checks.fail(f"with deterministic=False and dropout_rate={RATE} the logits did not change: is dropout "
                    "applied, and does it receive `deterministic`?")
    checks.assert_close(again, noisy, "the logits for the same dropout key", rtol=0, atol=0)
    if np.allclose(noisy, other):
        checks.fail("two different dropout keys gave the same logits: dropout must draw from the 'dropout' RNG "
                    "stream that apply(..., rngs={'dropout': key}) provides.")
