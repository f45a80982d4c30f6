"""Task 4: `MultiHeadAttention`, several task-3 `Head`s concatenated and projected back to C.

Oracles: the same computation in float64 numpy from the learner's own parameters (each head's causal
attention by tests/oracles.causal_attention, concatenated in head order, then the projection); the
parameter tree; the reference's MultiHeadAttention on the same parameters, submodule by submodule, for
lengths and batches that don't hide mistakes (jaxgpt/grader/differential.py); its dropouts, matched by what they drop;
causality. C = 12 differs from num_heads * head_size = 15, so a projection to the wrong width shows. Known
mistakes are named by recomputing them, and by the catalogue's mistakes when one gives exactly the learner's
output.
"""

import jax
import numpy as np
import pytest

from jaxgpt.grader import checks, differential
import oracles

TASK = 4

B, T, C = 2, 6, 12
NH, HS = 3, 5  # NH * HS = 15 != C on purpose
# The reference-differential check's inputs (B, T): the initialisation's, T longer than any small constant a
# learner might hard-code, T = 1 with batch 1; B, T, C, num_heads and head_size differ from each other.
SHAPES = [(B, T), (4, 37), (1, 1)]
RATE = oracles.DROPOUT_RATE
DROPOUT_NAMES = {"Dropout_0": "the projection's output (after proj)",
                 "in:": "the input x (the layer's and every head's)",
                 "in:proj": "the concatenated heads (proj's input)", "out:proj": "the projection's output",
                 "out:": "the layer's output"}
for _i in range(NH):
    DROPOUT_NAMES.update({**oracles.dropout_names(f"heads_{_i}", f"head {_i}"),
                          f"heads_{_i}/Dropout_0": f"head {_i}'s attention weights (wei, after the softmax)"})


@pytest.fixture
def x():
    return jax.random.normal(jax.random.key(0), (B, T, C))


def _init(impl, x, **fields):
    mha = impl.MultiHeadAttention(num_heads=NH, head_size=HS, **fields)
    params = mha.init(jax.random.key(1), x)
    return mha, params


def _expected_tree():
    head = {n: {"kernel": np.zeros((C, HS))} for n in ("key", "query", "value")}
    tree = {f"heads_{i}": head for i in range(NH)}
    tree["proj"] = {"kernel": np.zeros((NH * HS, C)), "bias": np.zeros((C,))}
    return {"params": tree}


def _f64(a):
    return np.asarray(a, np.float64)


def _head_outputs(params, x):
    """Each head's causal attention in float64, from that head's own kernels: a list of (B, T, HS)."""
    p, x64 = params["params"], _f64(x)
    outs = []
    for i in range(NH):
        q, k, v = (x64 @ _f64(p[f"heads_{i}"][n]["kernel"]) for n in ("query", "key", "value"))
        outs.append(oracles.causal_attention(q, k, v, scale=HS**-0.5))
    return outs


def _project(params, h):
    proj = params["params"]["proj"]
    return h @ _f64(proj["kernel"]) + _f64(proj["bias"])


def _expected(params, x):
    return _project(params, np.concatenate(_head_outputs(params, x), axis=-1))  # (B, T, C)


def _combined_heads_hint(params, x, got) -> str:
    """proj's kernel has head_size rows: say how the heads were combined, when that can be told."""
    first = _head_outputs(params, x) if "heads_0" in params["params"] else None
    if first is not None and got is not None and np.shape(got) == (B, T, C):
        got = _f64(got)
        if checks.matches(got, _project(params, sum(first))):
            return "the heads are summed: concatenate them along the last axis instead."
        if checks.matches(got, _project(params, sum(first) / NH)):
            return "the heads are averaged: concatenate them along the last axis instead."
    return (f"proj's kernel has head_size = {HS} rows where num_heads * head_size = {NH * HS} belong: the "
            "heads were summed, averaged or concatenated along another axis. Concatenate the head outputs "
            "along the last axis (the features), so proj sees num_heads * head_size of them.")


def _tree_hint(params, x, got=None) -> str | None:
    shapes = checks.tree_shapes(params)
    top = {path.split("/")[1] for path in shapes if path.startswith("params/")}
    heads = {path.rsplit("/", 2)[0] for path in shapes if path.endswith("query/kernel")}
    proj = shapes.get("params/proj/kernel")
    if NH > 1 and len(heads) == 1:
        return ("there is only one head's key/query/value: a single Head instance is called num_heads times, "
                "so every head is the same head with the same parameters. Create num_heads Heads, each with "
                "its own name (heads_0, heads_1, ...).")
    if heads and not any(h.startswith("params/heads_") for h in heads):
        return ("the heads are named heads_0 .. heads_{num_heads-1}: pass name=f'heads_{i}' to each Head, or "
                "keep them in a list attribute `self.heads` in setup(), which Flax names heads_0, heads_1, ...")
    if proj is None:
        others = sorted(top - {f"heads_{i}" for i in range(NH)})
        if others:
            return (f"the output projection is named {others[0]}: name it proj (nn.Dense(C, name='proj')).")
        return ("there is no output projection: after concatenating the heads, project back to C with "
                "nn.Dense(C, name='proj').")
    if proj == (HS, C):
        return _combined_heads_hint(params, x, got)
    if proj == (NH * HS, NH * HS):
        return (f"the projection maps to num_heads * head_size = {NH * HS} features; it maps back to C = "
                f"x.shape[-1] = {C}, the width of the input, so that the block can add it to x.")
    if "params/proj/bias" not in shapes:
        return "proj has no bias: use nn.Dense's default use_bias=True."
    return None


def _assert_tree(params, x, got=None):
    try:
        checks.assert_tree(params, _expected_tree())
        return
    except checks.CheckFailed as err:
        message = str(err)
    hint = _tree_hint(params, x, got)
    checks.fail(message + (f"\n  Likely cause: {hint}" if hint else ""))


def _shape_hint(shape) -> str:
    if shape == (B, T, NH * HS):
        return "That is num_heads * head_size features: project the concatenation back to C with proj."
    if shape == (B, NH * T, C) or shape == (B, NH * T, HS):
        return ("The heads were concatenated along the time axis: concatenate along the last axis "
                "(axis=-1), the features.")
    if shape == (B, T, HS):
        return "That is one head's width: concatenate the heads and project back to C."
    return ""


def _assert_output(out, what):
    shape = tuple(checks.as_array(out, what).shape)
    return checks.assert_shape(out, (B, T, C), what, hint=_shape_hint(shape))


def _diagnose(impl, params, x):
    outs = _head_outputs(params, x)
    p = params["params"]

    def with_own_heads():  # the learner's Head (task 3) run on each head's parameters, then proj
        head = impl.other(3).Head(head_size=HS)
        return _project(params, np.concatenate(
            [_f64(head.apply({"params": p[f"heads_{i}"]}, x)) for i in range(NH)], axis=-1))

    return checks.diagnose_from([
        ("the heads' features are interleaved: jnp.stack(heads, axis=-1).reshape(B, T, -1) puts feature 0 of "
         "every head first. Concatenate along the last axis, head 0's features first "
         "(or stack on axis=-2 before reshaping).", lambda: _project(params, np.stack(outs, axis=-1).reshape(
             B, T, NH * HS))),
        ("the heads are concatenated in the wrong order: heads_0's output comes first, then heads_1's, ...",
         lambda: _project(params, np.concatenate(outs[::-1], axis=-1))),
        ("the heads are not plain causal attention: your Head from task 3 gives these numbers, so fix it "
         "first (run task 3's check).", with_own_heads),
    ])


def test_parameter_tree(impl, x):
    """The parameters are heads_0 .. heads_2 (each a Head's key/query/value) and proj (15 -> C = 12)"""
    _, params = _init(impl, x)
    _assert_tree(params, x)


def test_output_shape_and_dtype(impl, x):
    """The output has the input's shape (B, T, C), not (B, T, num_heads * head_size), and dtype float32"""
    mha, params = _init(impl, x)
    out = mha.apply(params, x)
    _assert_output(out, "MultiHeadAttention's output")
    checks.assert_dtype(out, np.float32, "MultiHeadAttention's output")


def test_matches_heads_concatenated_and_projected(impl, x):
    """Same numbers as each head's causal attention, concatenated in head order, then proj (float64)"""
    mha, params = _init(impl, x)
    out = mha.apply(params, x)
    _assert_output(out, "MultiHeadAttention's output")
    _assert_tree(params, x, out)
    checks.assert_close(out, _expected(params, x), "MultiHeadAttention's output", rtol=1e-4, atol=1e-5,
                        diagnose=_diagnose(impl, params, x))


def test_causal(impl, x):
    """Position t does not depend on tokens after t"""
    mha, params = _init(impl, x)
    for position in (0, T // 2):
        checks.assert_causal(lambda inp: mha.apply(params, inp), x, position,
                             lambda inp: inp.at[:, position + 1:].set(7.0), "MultiHeadAttention's output")


def _both(impl, reference, x):
    """The learner's MultiHeadAttention and the reference's, built alike with a non-round dropout rate, and the
    reference's parameters (which the learner's must accept)."""
    learner = impl.MultiHeadAttention(num_heads=NH, head_size=HS, dropout_rate=RATE)
    ref = reference.MultiHeadAttention(num_heads=NH, head_size=HS, dropout_rate=RATE)
    variables = ref.init(jax.random.key(1), x)
    oracles.require_tree(learner, x, variables, "MultiHeadAttention")
    return learner, ref, variables


def _heads_are_task_3(message: str) -> str:
    if "the output of `heads_" not in message:  # the heads agree up to where the two part
        return message
    return (message + "\n  The heads are your Head from task 3: if its check fails, fix it first; if it passes, "
            "look at how the heads are built and called here (head_size, dropout_rate, deterministic).")


def test_same_as_reference(impl, reference, x):
    """Same steps as the reference on its parameters, for T = 1, 6, 37, batch 1 to 4, training and evaluation"""
    learner, ref, variables = _both(impl, reference, x)
    try:
        oracles.same_as_reference(
            learner, ref, variables, SHAPES, "MultiHeadAttention", C=C, first=x, task=impl.task,
            build=lambda view: view.MultiHeadAttention(num_heads=NH, head_size=HS, dropout_rate=RATE))
    except checks.CheckFailed as failed:
        checks.fail(_heads_are_task_3(str(failed)))


def test_dropout(impl, reference, x):
    """Dropout acts in every head and after proj, at the dropout_rate, only in training, with the 'dropout' RNG"""
    mha, ref, params = _both(impl, reference, x)
    quiet = checks.without_dropout_rng(lambda: mha.apply(params, x, deterministic=True), "MultiHeadAttention")
    checks.assert_close(quiet, impl.MultiHeadAttention(NH, HS).apply(params, x),
                        "the output with deterministic=True", rtol=1e-5, atol=1e-6)
    differential.assert_same_dropout(mha, ref, params, (x,), "MultiHeadAttention", RATE, names=DROPOUT_NAMES)
    # What it drops is right; now the randomness: the 'dropout' stream, the key, and nothing else.
    noisy = checks.as_array(mha.apply(params, x, deterministic=False, rngs={"dropout": jax.random.key(3)}),
                            "MultiHeadAttention's output")
    again = mha.apply(params, x, deterministic=False, rngs={"dropout": jax.random.key(3)})
    other = mha.apply(params, x, deterministic=False, rngs={"dropout": jax.random.key(4)})
    if np.allclose(noisy, quiet):
        checks.fail(f"with deterministic=False and dropout_rate={RATE} the output did not change: is dropout "
                    "applied, and does it receive `deterministic`?")
    checks.assert_close(again, noisy, "the output for the same dropout key", rtol=0, atol=0)
    if np.allclose(noisy, other):
        checks.fail("two different dropout keys gave the same output: take the key from the 'dropout' stream.")
