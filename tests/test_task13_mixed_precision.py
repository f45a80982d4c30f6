"""Task 13: `MixedPrecisionMiniGPT` (float32 parameters, computation in bfloat16), `mixed_precision_loss` (the
cross entropy in float32) and `accumulated_grads` (a large batch's gradient, one micro-batch at a time, in one
jax.lax.scan).

The model. Numbers computed in bfloat16 differ from float32 ones by bfloat16's rounding everywhere, so values
cannot tell a softmax in bfloat16 from one in float32; what the lesson fixes is *where* each dtype is used, and
that is checked exactly. The learner's model is traced once (jax.make_jaxpr) with nn.intercept_methods noting
the dtype every submodule receives and returns: every activation the reference names (the embeddings, each
block's input and output, ln1, attn and its projections, ln2, ffwd, fc, proj, ln_f, lm_head, the logits) must
carry the dtype the reference's carries, and a layer that does not is named with its cause, read off the layer
itself (a Flax layer built without dtype, or with a dtype other than the model's). The parameters' dtypes come
from model.init. In the traced program every `exp` (the softmax) and every `rsqrt`/`sqrt` of an array (the
LayerNorm statistics) must run on float32 numbers. The structure is checked in float32: built with
dtype=jnp.float32 the model is task 1's MiniGPT, compared on the same parameters with the reference's task-1
MiniGPT at float32's tolerance (jaxgpt/grader/differential.py names the first submodule where they part), its
dropouts judged by what they drop. In bfloat16 the logits must lie within bfloat16's rounding of the
reference's: tolerance 4 E, E the largest distance between the reference's bfloat16 and float32 logits on the
same input, measured in the check (0.021 to 0.026 on logits of magnitude 3.6: about 2 unit roundoffs of
bfloat16, u = 2**-8). A learner's bfloat16 error is of the same size, so the two lie within about 2 E; a
correct alternative with an attention of its own measured 1.0 E from float32 and 0.7 E from the reference.
Every dtype mistake also moves the logits by about E, which is why values are not what decides them.

The loss is graded on a model of our own whose logits are a table's rows returned in bfloat16 (as a model with a
bfloat16 head returns them): the loss must be the float32 cross entropy of those bfloat16 numbers, within 16
units in the last place of the largest logits (16 * 2**-20, 1.5e-5) plus 1e-5 relative; two ways of writing it
(optax, log_softmax and take_along_axis) measured 2e-7 apart. Two cases: mixed predictions (loss 2.810; in
bfloat16, 2.797) and confident ones, every per-token loss about 1e-3, which bfloat16's log-softmax rounds to
exactly 0 (loss 0.00119 against 0): that case names the cause. With a dropout key the loss must be that of the
model run with deterministic=False and rngs={'dropout': dropout_key} (on float32 logits there, so that only the
keys are judged).

The accumulation is graded in float32 on a tiny model (embeddings, a causal running mean over time, dropout, a
Dense head) with batch 6 and 10 tokens, for 1, 2, 3 and 6 micro-batches: without a key its (loss, grads) must be
jax.value_and_grad of the whole batch, and with a key the mean over micro-batches i of value_and_grad on
micro-batch i with jax.random.fold_in(key, i), at 1e-5 times max(1, the largest gradient or loss). Both sides
add the same float32 token contributions in another order: measured 4.5e-8 on gradients of magnitude 0.15 and
7e-7 on a loss of 2.3; a running sum kept in bfloat16 moves them by 3e-4 or more, a sum not averaged by a factor
of 2 or more. The loss function notes the shapes it is traced with, so a split along time or the whole batch
at every step is named. The program: jax.make_jaxpr of accumulated_grads for 2 and 6 micro-batches must hold a
loop (scan or while) with the model's matmuls inside, no bigger for 6 than for 2, the loss function traced as
often for both (a Python loop traces it once per micro-batch), and no stack of one gradient per micro-batch
(jax.lax.map, or a scan that emits the gradients, keeps n of them).

Sizes: vocab 19, block_size 11, n_embd 24, 3 heads of 8, 2 layers, batch 5; T = 1, 4 and 11. Note:
jax.random.split(key, n)[i] is jax.random.fold_in(key, i) under JAX's default (partitionable) threefry, so a
learner who splits gets the lesson's keys.
"""

import dataclasses
import functools
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

import oracles_gpt as og
from jaxgpt import contract
from jaxgpt.grader import checks, differential, outcomes

TASK = 13

FIELDS = dict(vocab_size=19, block_size=11, n_embd=24, n_head=3, n_layer=2)  # head size 8: all different
V, S = FIELDS["vocab_size"], FIELDS["block_size"]
RATE = 0.37  # the dropout audit's rate: no rate anyone writes by hand
BF16, F32 = np.dtype(jnp.bfloat16), np.dtype(jnp.float32)
BF16_SLACK = 4.0  # bfloat16 logits within 4 E of the reference's (module docstring)
IDX = np.random.default_rng(13).integers(0, V, (5, S)).astype(np.int32)  # batch 5, T = block_size
SHORT = IDX[:1, :4]  # batch 1, T = 4
ONE = IDX[:1, :1]  # batch 1, T = 1

# ----------------------------------------------------------------------------------------------------
# The model: building, calling, tracing


@functools.lru_cache(maxsize=None)
def _params():
    """Random float32 parameters in MiniGPT's tree, the same for the learner's model and the reference's."""
    shapes = contract.model_shapes(**FIELDS)
    structs = jax.tree_util.tree_map(lambda s: jax.ShapeDtypeStruct(s, jnp.float32), shapes,
                                     is_leaf=lambda s: isinstance(s, tuple))
    return jax.tree_util.tree_map(jnp.asarray, og.random_fill(structs, seed=13))


def _model(impl, **fields):
    given = {**FIELDS, **fields}
    try:
        return impl.MixedPrecisionMiniGPT(**given)
    except TypeError as err:
        checks.fail(f"MixedPrecisionMiniGPT({', '.join(f'{k}={v!r}' for k, v in given.items())}) could not be "
                    f"built ({err}): keep MiniGPT's fields and add dtype, the computation's dtype (default "
                    "jnp.bfloat16).")


def _name(dtype):
    return np.dtype(dtype).name if dtype is not None else "None"


def _dtype_of(value):
    dtype = getattr(value, "dtype", None)
    if dtype is None or not hasattr(value, "shape") or isinstance(value, (tuple, list, dict)):
        return None
    try:
        return np.dtype(dtype)
    except TypeError:
        return None


def _layer_dtype(module):
    value = getattr(module, "dtype", None)
    try:
        return None if value is None else np.dtype(value)
    except TypeError:
        return None


@dataclasses.dataclass
class Trace:
    """What a model did while traced once: events (kind 'in'/'out', path, class, dtype, the layer's own dtype
    field) in call order, and the program (a ClosedJaxpr)."""

    events: list
    jaxpr: object


_TRACES: dict = {}


def _trace(model, idx):
    """The model's forward on _params(), traced with every submodule's dtypes noted (nothing is compiled)."""
    memo = (model, idx.shape)
    if memo in _TRACES:
        return _TRACES[memo]
    events = []

    def intercept(next_fun, args, kwargs, context):
        if context.method_name != "__call__":
            return next_fun(*args, **kwargs)
        module = context.module
        path = "/".join(module.scope.path) if module.scope is not None else ""
        first = args[0] if args else next(iter(kwargs.values()), None)
        layer = _layer_dtype(module)
        events.append(("in", path, type(module).__name__, _dtype_of(first), layer))
        out = next_fun(*args, **kwargs)
        events.append(("out", path, type(module).__name__, _dtype_of(out), layer))
        return out

    def forward(params, idx):
        with nn.intercept_methods(intercept):
            return model.apply({"params": params}, idx)

    jaxpr = checks.without_dropout_rng(lambda: jax.make_jaxpr(forward)(_params(), jnp.asarray(idx)),
                                       "MixedPrecisionMiniGPT")
    if isinstance(jaxpr.out_avals, (list, tuple)) and len(jaxpr.out_avals) != 1:
        checks.fail(f"MixedPrecisionMiniGPT returns {len(jaxpr.out_avals)} arrays; it should return the logits "
                    "alone, (B, T, vocab_size).")
    _TRACES[memo] = Trace(events, jaxpr)
    return _TRACES[memo]


def _residual(path):
    """The activations whose *input* is audited too: each block's and ln_f's input is the residual stream."""
    return path == "ln_f" or re.fullmatch(r"blocks_\d+", path) is not None


FLAX_LAYERS = ("Dense", "DenseGeneral", "Embed", "LayerNorm", "MultiHeadDotProductAttention", "MultiHeadAttention",
               "SelfAttention")


def _dtype_problem(learner, reference, model_dtype):
    """A sentence for the first activation (in the reference's call order) whose dtype is not the reference's,
    or None."""
    mine = {}
    for kind, path, cls, dtype, layer in learner.events:
        mine.setdefault((kind, path), (cls, dtype, layer))
    for kind, path, cls, expected, _ in reference.events:
        if cls == "Dropout" or expected is None or (kind == "in" and not _residual(path)):
            continue
        if (kind, path) not in mine:
            continue
        their_cls, got, layer = mine[(kind, path)]
        if got is None or got == expected:
            continue
        wanted = f"with dtype={_name(model_dtype)}"
        if path == "":
            if expected == F32:
                return (f"MixedPrecisionMiniGPT's logits are {_name(got)}; they should be float32. Likely cause: "
                        "lm_head's output is not cast: return logits.astype(jnp.float32), so that the softmax and "
                        "the loss after the model start from float32 numbers.")
            return f"MixedPrecisionMiniGPT's logits are {_name(got)}; {wanted} they should be {_name(expected)}."
        name = f"`{path}` ({their_cls})"
        if kind == "in":
            return (f"the residual stream entering {name} is {_name(got)}, but {wanted} it is {_name(expected)}: "
                    "the embeddings (nn.Embed with dtype=self.dtype) are in dtype, and every block adds its "
                    "attention and feed-forward outputs (in dtype) to it. Do not cast it to another dtype.")
        said = f"{name} returns {_name(got)}, but {wanted} it should return {_name(expected)}"
        if their_cls in FLAX_LAYERS and layer is None:
            return (f"{said}. Likely cause: it is built without dtype, and a Flax layer without one computes in "
                    f"what its inputs and its float32 parameters promote to, {_name(got)}. Build it with "
                    "dtype=self.dtype.")
        if their_cls in FLAX_LAYERS and layer != np.dtype(model_dtype):
            return (f"{said}. Likely cause: it is built with dtype={_name(layer)}, not the model's dtype field: "
                    "pass dtype=self.dtype down to every layer (and to every block and feed-forward of your own, "
                    "which pass it on).")
        if layer is not None and layer != np.dtype(model_dtype):
            return (f"{said}. Likely cause: it is built with dtype={_name(layer)}, not the model's dtype field: "
                    "pass the model's dtype down (MixedPrecisionBlock(..., dtype=self.dtype)).")
        inner = sorted({_name(d) for k, p, _, d, _ in learner.events
                        if k == "out" and d is not None and p.startswith(path + "/")})
        return (f"{said}: something inside it computes in {_name(got)} (the layers inside it return "
                f"{', '.join(inner) or 'nothing'}).")
    return None


def _assert_dtypes(impl, reference, dtype):
    fields = {} if dtype is None else {"dtype": dtype}
    model = _model(impl, **fields)
    expected_model = reference.MixedPrecisionMiniGPT(**FIELDS, **fields)
    problem = _dtype_problem(_trace(model, IDX), _trace(expected_model, IDX), dtype or BF16)
    if problem:
        checks.fail(problem)


# ----------------------------------------------------------------------------------------------------
# The model's checks


def test_parameters_are_minigpts_tree_in_float32(impl):
    """The parameter tree is MiniGPT's and every parameter is float32, whatever dtype is

    (Task-1 weights load, and the optimiser updates float32 numbers.)"""
    for fields in ({}, {"dtype": jnp.float32}):
        model = _model(impl, **fields)
        try:
            tree = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.asarray(IDX)))
        except (NotImplementedError, checks.CheckFailed):
            raise
        except TypeError as err:
            if "positional argument" in str(err) or "unexpected keyword" in str(err):
                checks.fail(f"MixedPrecisionMiniGPT could not be initialised as model.init(key, idx) ({err}): its "
                            "call is model(idx, deterministic=True), as MiniGPT's.")
            raise
        if "params" not in tree:
            checks.fail(f"MixedPrecisionMiniGPT's variables have no 'params' collection (they have {sorted(tree)}).")
        expected = jax.tree_util.tree_map(lambda s: jax.ShapeDtypeStruct(s, jnp.float32),
                                          contract.model_shapes(**FIELDS), is_leaf=lambda s: isinstance(s, tuple))
        checks.assert_tree(tree["params"], expected, "MixedPrecisionMiniGPT's parameter tree")
        wrong = [(path, np.dtype(leaf.dtype)) for path, leaf in
                 zip(checks.tree_shapes(tree["params"]), jax.tree_util.tree_leaves(tree["params"]))
                 if np.dtype(leaf.dtype) != F32]
        if wrong:
            shown = ", ".join(f"{path} ({_name(dtype)})" for path, dtype in wrong[:3])
            count = len(jax.tree_util.tree_leaves(tree["params"]))
            mode = "the default dtype" if not fields else "dtype=float32"
            checks.fail(f"{len(wrong)} of the {count} parameters are not float32 ({shown}"
                        f"{' ...' if len(wrong) > 3 else ''}), with {mode}. Likely cause: layers are built with "
                        "param_dtype (the computation's dtype, or bfloat16). Parameters are stored in float32 (leave "
                        "param_dtype at Flax's default): an optimiser step changes a weight by about 1e-3 of itself "
                        "or less, and bfloat16, with 8 significant bits, rounds such a change away. Only dtype, the "
                        "computation, is bfloat16.")


def test_every_layer_computes_in_bfloat16(impl, reference):
    """With the default dtype every layer's output and the residual stream are bfloat16, the logits float32

    The embeddings, every block's input and output, ln1, attn and its projections, ln2, ffwd, fc, proj, ln_f and
    lm_head carry the dtype the reference's carry."""
    model = _model(impl)
    if _layer_dtype(model) != BF16:
        checks.fail(f"MixedPrecisionMiniGPT's dtype field defaults to {_name(_layer_dtype(model))}; the lesson's "
                    "default is jnp.bfloat16 (dtype: jnp.dtype = jnp.bfloat16).")
    _assert_dtypes(impl, reference, None)


def _low_precision(dtype):
    return dtype is not None and jnp.issubdtype(dtype, jnp.floating) and jnp.finfo(dtype).bits < 32


def test_softmax_and_layernorm_statistics_in_float32(impl):
    """The attention's softmax (exp) and the LayerNorm statistics (square roots) run on float32 numbers

    Read from the bfloat16 model's traced program."""
    trace = _trace(_model(impl), IDX)
    for eqn, _ in checks.program_equations(trace.jaxpr.jaxpr):
        name = eqn.primitive.name
        if not eqn.invars:
            continue
        aval = eqn.invars[0].aval
        dtype, shape = _dtype_of(aval), tuple(getattr(aval, "shape", ()))
        if not _low_precision(dtype):
            continue
        if name in ("exp", "exp2"):
            checks.fail(f"the model's program computes exp on {_name(dtype)} numbers of shape {shape}: the "
                        "attention's softmax runs in bfloat16, where weights near 1 keep 8 significant bits and "
                        "the sum over the keys rounds. Give nn.MultiHeadDotProductAttention "
                        "force_fp32_for_softmax=True (or, in an attention of your own, cast the scores to float32 "
                        "before jax.nn.softmax).")
        if name in ("rsqrt", "sqrt") and len(shape) >= 1:
            checks.fail(f"the model's program takes a square root of {_name(dtype)} numbers of shape {shape}: the "
                        "LayerNorm statistics (the variance, and its inverse square root) are computed in bfloat16. "
                        "nn.LayerNorm(dtype=self.dtype) computes them in float32 whatever dtype is; a LayerNorm of "
                        "your own must cast x to float32 for the mean and variance and cast the result back.")


def _jitted(model):
    return jax.jit(lambda params, idx: model.apply({"params": params}, idx))


_LOGITS: dict = {}


def _logits(model, idx, what):
    memo = (model, idx.tobytes(), idx.shape)
    if memo not in _LOGITS:
        out = checks.without_dropout_rng(lambda: _jitted(model)(_params(), jnp.asarray(idx)), what)
        if isinstance(out, (tuple, list)):
            checks.fail(f"{what} should be one array, the logits (B, T, vocab_size), but the model returns a "
                        f"{type(out).__name__} of {len(out)} items.")
        B, T = idx.shape
        shape = tuple(np.shape(out))
        hint = ("One row of vocab_size scores per position." if not (T < S and len(shape) == 3 and shape[1] == S)
                else f"The input has T = {T} tokens but the logits have block_size = {S} positions: something is "
                "sized by block_size instead of the input (the causal mask, or the positions): build them from "
                "T = idx.shape[1].")
        checks.assert_shape(out, (B, T, V), what, hint=hint)
        _LOGITS[memo] = np.asarray(jnp.asarray(out, jnp.float32))
    return _LOGITS[memo]


def test_float32_dtype_is_task1_minigpt(impl, reference):
    """Built with dtype=jnp.float32 it is task 1's MiniGPT: every layer float32, same logits, same dropouts

    The reference MiniGPT's logits on the same parameters for T = 1 and block_size; the dropouts in training judged
    by what they drop."""
    _assert_dtypes(impl, reference, jnp.float32)
    model = _model(impl, dtype=jnp.float32)
    minigpt = reference.other(1).MiniGPT(**FIELDS)
    variables = {"params": _params()}
    for idx in (IDX, ONE):
        got = _logits(model, idx, "MixedPrecisionMiniGPT's logits with dtype=float32")
        expected = _logits(minigpt, idx, "the reference MiniGPT's logits")
        if differential._close(got, expected):
            continue
        differential.assert_same_behaviour(model, reference.MixedPrecisionMiniGPT(**FIELDS, dtype=jnp.float32),
                                           variables, [(idx,)], "MixedPrecisionMiniGPT with dtype=float32",
                                           modes=(True,))
        checks.assert_close(got, expected, f"MixedPrecisionMiniGPT's logits with dtype=float32, against task 1's "
                            f"MiniGPT on the same parameters (batch {idx.shape[0]}, T = {idx.shape[1]})",
                            rtol=differential.RTOL, atol=differential.ATOL * max(1.0, float(np.abs(expected).max())))
    learner = _model(impl, dtype=jnp.float32, dropout_rate=RATE)
    attention = {path: cls for kind, path, cls, _, _ in _trace(model, IDX).events}.get("blocks_0/attn")
    if attention in ("MultiHeadDotProductAttention", "MultiHeadAttention", "SelfAttention"):  # Flax's own
        lesson = reference.MixedPrecisionMiniGPT(**FIELDS, dtype=jnp.float32, dropout_rate=RATE)
    else:  # an attention of the learner's own drops its weights with an nn.Dropout, as task 5's does
        lesson = og.OracleGPT(**FIELDS, dropout_rate=RATE,
                              attention=og.module_attention(reference.other(5).EinsumMultiHeadAttention))
    differential.assert_same_dropout(learner, lesson, variables, (IDX,), "MixedPrecisionMiniGPT with dtype=float32",
                                     RATE)


def test_bfloat16_logits_within_rounding_of_the_reference(impl, reference):
    """In bfloat16 the logits lie within bfloat16's rounding of the reference's

    4 times the reference's own distance from float32; batch 5 with T = block_size and batch 1 with T = 4."""
    model = _model(impl)
    reference_model = reference.MixedPrecisionMiniGPT(**FIELDS)
    minigpt = reference.other(1).MiniGPT(**FIELDS)
    for idx in (IDX, SHORT):
        got = _logits(model, idx, "MixedPrecisionMiniGPT's logits")
        expected = _logits(reference_model, idx, "the reference's bfloat16 logits")
        exact = _logits(minigpt, idx, "the reference MiniGPT's float32 logits")
        rounding = float(np.abs(expected - exact).max())  # E: what bfloat16 does to the reference's logits
        B, T = idx.shape

        def diagnose(got):
            if float(np.abs(got - exact).max()) < rounding / 100:
                return ("they are the float32 model's logits: the model computes in float32 (are the layers given "
                        "dtype=self.dtype?).")
            return None

        checks.assert_close(got, expected, f"MixedPrecisionMiniGPT's bfloat16 logits, against the reference's "
                            f"(batch {B}, T = {T}; bfloat16 moves the reference's logits by up to {rounding:.3g} "
                            f"from float32, and {BF16_SLACK:g} times that is allowed)", rtol=0.0,
                            atol=BF16_SLACK * rounding, diagnose=diagnose)


# ----------------------------------------------------------------------------------------------------
# mixed_precision_loss, on a model whose logits are a table's rows in bfloat16

LV = 23
LOSS_RATE = 0.3


class BFloat16TableLM(nn.Module):
    """Logits = row idx of a float32 table, dropped out in training, returned in bfloat16 (as a model with a
    bfloat16 head returns them), or in out_dtype."""

    rate: float = 0.0
    out_dtype: jnp.dtype = jnp.bfloat16

    @nn.compact
    def __call__(self, idx, deterministic=True):
        table = self.param("table", nn.initializers.zeros_init(), (LV, LV))
        logits = table[idx]  # (B, T, LV), float32
        logits = nn.Dropout(self.rate)(logits, deterministic=deterministic)
        return logits.astype(self.out_dtype)


def _loss_case(confident):
    """A table whose diagonal stands above the rest, tokens x and targets y. Mixed: diagonal 9 above noise of spread
    1, targets y = x (confident predictions, per-token loss about 5e-3) except every fourth, random (about 9).
    Confident: diagonal 10 above noise of spread 0.5 and y = x everywhere: per-token losses of about 1e-3, each of
    which bfloat16's log-softmax rounds to exactly 0."""
    rng = np.random.default_rng(6 if confident else 5)
    spread, margin = (0.5, 10.0) if confident else (1.0, 9.0)
    table = (spread * rng.standard_normal((LV, LV)) + margin * np.eye(LV)).astype(np.float32)
    x = rng.integers(0, LV, (4, 9)).astype(np.int32)
    y = x.copy()
    if not confident:
        y[:, ::4] = rng.integers(0, LV, (4, 3))
    return {"table": jnp.asarray(table)}, jnp.asarray(x), jnp.asarray(y)


LOSS_CASES = {"mixed": _loss_case(False), "confident": _loss_case(True)}
LOSS_RTOL = 1e-5  # module docstring
LOSS_ATOL = 16 * 2.0**-20  # 16 units in the last place of float32 numbers between 8 and 16, the largest logits


def _loss_close(got, expected):
    return abs(got - expected) <= LOSS_ATOL + LOSS_RTOL * abs(expected)


def _oracle_loss(model, params, x, y, dropout_key=None, dtype=jnp.float32, reduce="mean"):
    """The lesson's loss, or with dtype=bfloat16 the cross entropy computed in bfloat16 (reduce: 'mean', 'sum',
    'time_sum': summed over time, averaged over the batch)."""
    if dropout_key is None:
        logits = model.apply({"params": params}, x)
    else:
        logits = model.apply({"params": params}, x, deterministic=False, rngs={"dropout": dropout_key})
    losses = optax.softmax_cross_entropy_with_integer_labels(logits.astype(dtype), y)  # (B, T)
    total = {"mean": losses.mean, "sum": losses.sum, "time_sum": lambda: losses.sum(axis=1).mean()}[reduce]()
    return total.astype(jnp.float32)


def _bfloat16_log_softmax_loss(model, params, x, y):
    logits = model.apply({"params": params}, x)  # bfloat16
    picked = jnp.take_along_axis(jax.nn.log_softmax(logits, axis=-1), y[..., None], axis=-1)[..., 0]
    return -picked.astype(jnp.float32).mean()


def _loss_function(impl):
    return checks.learner_function(impl.mixed_precision_loss, "mixed_precision_loss",
                                   ("model", "params", "x", "y"), ("dropout_key",))


def _call_loss(fn, model, params, x, y, *key):
    try:
        out = fn(model, params, x, y, *key)
    except (NotImplementedError, checks.CheckFailed):
        raise
    except Exception as err:
        if (type(err).__name__ == "ScopeCollectionNotFound" and 'collection "params"' in str(err)) or \
                type(err).__name__ == "ApplyScopeInvalidVariablesTypeError":
            checks.fail("mixed_precision_loss ran the model on the parameter tree as it is, and Flax found no 'params' "
                        "collection in it: params is the inner tree, model.init(...)['params'], so wrap it when you "
                        "call the model, model.apply({'params': params}, x, ...).")
        if type(err).__name__ == "InvalidRngError" and "dropout" in str(err):
            if key:
                checks.fail("model.apply asked for a 'dropout' RNG it was not given: with a dropout_key, run the model "
                            "with deterministic=False and rngs={'dropout': dropout_key}.")
            checks.fail("with dropout_key=None the model asked for a 'dropout' RNG: without a key, run it with "
                        "deterministic=True (no dropout).")
        raise
    array = checks.as_array(out, "mixed_precision_loss's result")
    if array.shape != ():
        checks.fail(f"mixed_precision_loss should return a scalar, the mean over every position, but it returns an "
                    f"array of shape {array.shape}.")
    return out


def _loss_cause(fn, model):
    """The known mistake that gives the learner's losses, recomputed: a bfloat16 cross entropy is told by the
    confident case, where it gives 0 and float32 about 1e-3; a sum by the mixed case."""
    params, x, y = LOSS_CASES["confident"]
    try:
        got = float(np.asarray(fn(model, params, x, y), np.float64))
    except Exception:
        got = None
    exact = float(_oracle_loss(model, params, x, y))
    why = ("the log-softmax is computed in bfloat16: the logits reach it as bfloat16 numbers (or only its result is "
           "cast to float32), and every confident prediction's loss, about 1e-3 here, rounds to exactly 0 there. Cast "
           "the logits to float32 before the log-softmax, logits.astype(jnp.float32).")
    for compute in (lambda: _oracle_loss(model, params, x, y, dtype=jnp.bfloat16),
                    lambda: _bfloat16_log_softmax_loss(model, params, x, y)):
        try:
            wrong = float(compute())
        except Exception:
            continue
        if got is not None and abs(got - wrong) <= 1e-6 + 2.0**-8 * abs(wrong) and abs(exact - wrong) > 0.25 * exact:
            return why, f" (on confident predictions, where the float32 loss is {exact:.3g}, yours is {got:.3g})"
    params, x, y = LOSS_CASES["mixed"]
    try:
        got = float(np.asarray(fn(model, params, x, y), np.float64))
    except Exception:
        return None, ""
    if _loss_close(got, float(_oracle_loss(model, params, x, y, reduce="sum"))):
        return "the loss is summed over the positions: take the mean over batch and time.", ""
    if _loss_close(got, float(_oracle_loss(model, params, x, y, reduce="time_sum"))):
        return "the loss is summed over time and averaged over the batch: take the mean over batch and time.", ""
    return None, ""


def test_loss_is_float32_cross_entropy_of_bfloat16_logits(impl):
    """The loss of bfloat16 logits is their float32 cross entropy: a float32 scalar with float32 gradients

    On a model that returns bfloat16 logits (confident and mixed predictions), the mean over batch and time."""
    fn = _loss_function(impl)
    model = BFloat16TableLM()
    for case, (params, x, y) in LOSS_CASES.items():
        out = _call_loss(fn, model, params, x, y)
        expected = float(_oracle_loss(model, params, x, y))
        got = float(np.asarray(out, np.float64))
        if not _loss_close(got, expected):
            why, numbers = _loss_cause(fn, model)
            checks.fail(f"mixed_precision_loss on a model that returns bfloat16 logits ({case} predictions) is "
                        f"{got:.6g}; the float32 cross entropy of those logits is {expected:.6g}."
                        + (f"\n  Likely cause{numbers}: {why}" if why else ""))
        if _dtype_of(out) != F32:
            checks.fail(f"mixed_precision_loss returns a {_name(_dtype_of(out))} scalar; it should be float32 (the "
                        "mean taken in float32, of float32 per-token losses).")
    params, x, y = LOSS_CASES["mixed"]
    try:
        grads = jax.grad(lambda p: fn(model, p, x, y))(params)
    except (NotImplementedError, checks.CheckFailed):
        raise
    except Exception as err:
        where = outcomes.learner_frame(err)
        checks.fail(f"jax.grad of mixed_precision_loss with respect to params failed ({type(err).__name__}: "
                    f"{str(err).strip().splitlines()[0][:200] if str(err).strip() else ''})"
                    + (f" at {where}" if where else "") + ": the loss must be a JAX function of params (no float(), "
                    "no numpy on traced values).")
    table = grads["table"] if isinstance(grads, dict) and "table" in grads else None
    if table is None or _dtype_of(table) != F32:
        checks.fail(f"the gradient of mixed_precision_loss with respect to float32 parameters should be float32, but "
                    f"it is {_name(_dtype_of(table))}.")
    expected_grads = jax.grad(lambda p: _oracle_loss(model, p, x, y))(params)["table"]
    # Both pass the same float32 softmax back through the bfloat16 cast, which rounds it: one bfloat16 unit apart.
    checks.assert_close(table, expected_grads, "the gradient of mixed_precision_loss with respect to the table",
                        rtol=2.0**-8, atol=2.0**-8 * float(np.abs(expected_grads).max()))


def test_loss_with_a_dropout_key(impl):
    """With a dropout_key the loss runs the model in training mode with that key, without one in evaluation mode

    deterministic=False and rngs={'dropout': dropout_key}; deterministic=True without a key."""
    fn = _loss_function(impl)
    model = BFloat16TableLM(rate=LOSS_RATE, out_dtype=jnp.float32)  # float32 logits: only the keys are judged here
    key = jax.random.key(31)
    params, x, y = LOSS_CASES["mixed"]
    evaluation = float(_oracle_loss(model, params, x, y))
    got = float(np.asarray(_call_loss(fn, model, params, x, y), np.float64))
    if not _loss_close(got, evaluation):
        checks.fail(f"not checked: with dropout_key=None and float32 logits mixed_precision_loss is {got:.6f}, not "
                    f"the evaluation-mode cross entropy {evaluation:.6f}, so the keys cannot be judged (the check of "
                    "the loss itself says more).")
    expected = float(_oracle_loss(model, params, x, y, key))
    got = float(np.asarray(_call_loss(fn, model, params, x, y, key), np.float64))
    if _loss_close(got, expected):
        return
    why = None
    if _loss_close(got, evaluation):
        why = ("the dropout_key is not used: the loss is the evaluation-mode one. With a key, run the model with "
               "deterministic=False and rngs={'dropout': dropout_key}.")
    else:
        for other, words in ((jax.random.split(key)[0], "jax.random.split(dropout_key)[0]"),
                             (jax.random.split(key)[1], "jax.random.split(dropout_key)[1]")):
            if _loss_close(got, float(_oracle_loss(model, params, x, y, other))):
                why = (f"the model's dropout key is {words}, not dropout_key itself: pass it as it is, "
                       "rngs={'dropout': dropout_key} (the caller splits keys).")
    checks.fail(f"with a dropout_key mixed_precision_loss is {got:.6f}; the model's loss with deterministic=False and "
                f"rngs={{'dropout': dropout_key}} is {expected:.6f}." + (f"\n  Likely cause: {why}" if why else ""))


# ----------------------------------------------------------------------------------------------------
# accumulated_grads, graded in float32 on a tiny model

AV, AC = 7, 5  # the tiny model's vocabulary and width
AB, AT = 6, 10  # batch and tokens: 2, 3 and 6 micro-batches of 3, 2 and 1 rows; 10 tokens split in 2 show
ACC_TOL = 1e-5  # of the largest gradient (module docstring)


class TinyLM(nn.Module):
    """Embeddings, a causal running mean over time (a split along time changes each token's context), tanh,
    dropout at 0.5, a Dense head."""

    @nn.compact
    def __call__(self, idx, deterministic=True):
        T = idx.shape[1]
        e = nn.Embed(AV, AC, name="embed")(idx)  # (B, T, C)
        h = jnp.cumsum(e, axis=1) / jnp.arange(1, T + 1, dtype=e.dtype)[:, None]  # (B, T, C)
        h = nn.Dropout(0.5)(jnp.tanh(h), deterministic=deterministic)
        return nn.Dense(AV, name="head")(h)  # (B, T, V)


TINY = TinyLM()


def _tiny_loss(params, x, y, dropout_key):
    if dropout_key is None:
        logits = TINY.apply({"params": params}, x)
    else:
        logits = TINY.apply({"params": params}, x, deterministic=False, rngs={"dropout": dropout_key})
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()


_SHAPES_SEEN: list = []  # the shapes of (x, y) each time the graded loss function is traced


def _recording_loss(params, x, y, dropout_key):
    """The loss function given to accumulated_grads: _tiny_loss, noting the shapes it is called with."""
    _SHAPES_SEEN.append((tuple(np.shape(x)), tuple(np.shape(y))))
    return _tiny_loss(params, x, y, dropout_key)


@functools.lru_cache(maxsize=None)
def _tiny_case():
    rng = np.random.default_rng(17)
    x = rng.integers(0, AV, (AB, AT)).astype(np.int32)
    y = rng.integers(0, AV, (AB, AT)).astype(np.int32)
    params = TINY.init(jax.random.key(3), jnp.asarray(x))["params"]
    params = jax.tree_util.tree_map(lambda p: p * 2.0, params)  # larger weights: gradients well away from 0
    return params, jnp.asarray(x), jnp.asarray(y)


_VALUE_AND_GRAD = jax.jit(jax.value_and_grad(_tiny_loss))


def _micro_batches(x, n, rows="contiguous"):
    m = x.shape[0] // n
    if rows == "strided":  # micro-batch i: rows i, i + n, i + 2n, ...
        return [x[i::n] for i in range(n)]
    return [x[i * m:(i + 1) * m] for i in range(n)]


def _oracle_accumulated(params, x, y, key, n, keys="fold_in", rows="contiguous", reduce="mean", precision=None):
    """The mean over micro-batches of value_and_grad on each, with micro-batch i's key from `keys`: 'fold_in'
    (the lesson's), 'same' (the key itself) or 'fold_in_next' (fold_in(key, i + 1)); rows 'strided' takes every n-th
    row; reduce 'sum' sums; precision 'bfloat16' keeps the running sum of the gradients in bfloat16."""
    xs, ys = _micro_batches(x, n, rows), _micro_batches(y, n, rows)
    loss_sum = jnp.float32(0.0)
    grad_sum = jax.tree_util.tree_map(lambda p: jnp.zeros(p.shape, precision or p.dtype), params)
    for i, (xi, yi) in enumerate(zip(xs, ys)):
        k = None if key is None else {"fold_in": lambda: jax.random.fold_in(key, i), "same": lambda: key,
                                      "fold_in_next": lambda: jax.random.fold_in(key, i + 1)}[keys]()
        loss, grads = _VALUE_AND_GRAD(params, xi, yi, k)
        loss_sum = loss_sum + loss
        grad_sum = jax.tree_util.tree_map(lambda a, g: a + g.astype(a.dtype), grad_sum, grads)
    if reduce == "sum":
        return loss_sum, grad_sum
    if reduce == "from_params":  # the carry started from params instead of zeros
        return loss_sum / n, jax.tree_util.tree_map(lambda p, g: (p + g) / n, params, grad_sum)
    if reduce == "by_batch":  # the gradients divided by the batch size
        return loss_sum / n, jax.tree_util.tree_map(lambda g: g / x.shape[0], grad_sum)
    return loss_sum / n, jax.tree_util.tree_map(lambda g: (g / n).astype(jnp.float32), grad_sum)


def _accumulate_function(impl):
    return checks.learner_function(impl.accumulated_grads, "accumulated_grads",
                                   ("loss_fn", "params", "x", "y", "dropout_key", "num_micro_batches"))


def _static_problem(err):
    """A sentence when accumulated_grads failed because loss_fn or num_micro_batches is not static under jax.jit."""
    name, text = type(err).__name__, str(err)
    first = text.strip().splitlines()[0][:300] if text.strip() else ""
    where = outcomes.learner_frame(err)
    said = f"({name}: {first})" + (f", at {where}" if where else "")
    if "abstract array" in text or "not a valid JAX type" in text:
        return (f"accumulated_grads could not be called {said}: under jax.jit every argument that is not static "
                "must be an array, and loss_fn is a function. Mark it static, with num_micro_batches, which decides "
                "shapes: @partial(jax.jit, static_argnames=('loss_fn', 'num_micro_batches')).")
    if any(word in f"{name} {text}" for word in ("Tracer", "Concretization", "concrete value")):
        return (f"accumulated_grads fails while being traced {said}: num_micro_batches decides shapes (the "
                "micro-batches', the scan's length), so under jax.jit it must be static, and loss_fn too: "
                "@partial(jax.jit, static_argnames=('loss_fn', 'num_micro_batches')).")
    return None


def _call_accumulated(impl, params, x, y, key, n):
    fn = _accumulate_function(impl)
    _SHAPES_SEEN.clear()
    try:
        out = fn(_recording_loss, params, x, y, key, n)
    except (NotImplementedError, checks.CheckFailed):
        raise
    except Exception as err:
        problem = _static_problem(err)
        if problem:
            checks.fail(problem)
        if key is None:
            try:  # with a key it runs: the trouble is the None
                fn(_recording_loss, params, x, y, jax.random.key(0), n)
            except Exception:
                raise err from None
            where = outcomes.learner_frame(err)
            first = str(err).strip().splitlines()[0][:300] if str(err).strip() else ""
            checks.fail(f"accumulated_grads(loss_fn, params, x, y, None, {n}) raised {type(err).__name__}: {first}"
                        + (f", at {where}" if where else "") + ", and runs with a key. With dropout_key=None there "
                        "is no dropout: give loss_fn None for every micro-batch (no jax.random.fold_in of None).")
        raise
    _check_shapes_seen(n)
    if not (isinstance(out, tuple) and len(out) == 2):
        checks.fail(f"accumulated_grads should return a pair (loss, grads), but it returned a {type(out).__name__}"
                    + (f" of {len(out)} items." if isinstance(out, (tuple, list)) else "."))
    loss, grads = out
    checks.assert_tree(grads, params, "the gradients accumulated_grads returns (a tree like params)")
    wrong = sorted({_name(_dtype_of(g)) for g in jax.tree_util.tree_leaves(grads) if _dtype_of(g) != F32})
    if wrong:
        checks.fail(f"accumulated_grads returns gradients of dtype {', '.join(wrong)}; they should have the "
                    "parameters' dtype, float32. Likely cause: the running sum of the gradients is kept in "
                    f"{wrong[0]}: start the scan's carry from float32 zeros shaped like params "
                    "(jax.tree_util.tree_map(jnp.zeros_like, params)) and add each micro-batch's float32 gradients "
                    "to it as they are.")
    loss = checks.assert_shape(loss, (), "accumulated_grads's loss", hint="The mean of the micro-batches' losses, "
                               "a scalar.")
    if _dtype_of(loss) != F32:
        checks.fail(f"accumulated_grads's loss is {_name(_dtype_of(loss))}; it should be a float32 scalar.")
    return float(loss), jax.tree_util.tree_map(np.asarray, grads)


def _check_shapes_seen(n):
    """The shapes loss_fn was traced with, if it was traced in this call (a jit cache may skip the trace)."""
    if not _SHAPES_SEEN:
        return
    m = AB // n
    want = ((m, AT), (m, AT))
    shapes = sorted(set(_SHAPES_SEEN))
    if shapes == [want]:
        return
    said = ", ".join(f"x {sx}, y {sy}" for sx, sy in shapes)
    why = ""
    if ((AB, AT // n), (AB, AT // n)) in shapes:
        why = (" The batch is split along time: each micro-batch holds every row's tokens "
               f"{AT // n} at a time, so a token loses the context before its piece. Split the batch axis, "
               "x.reshape(n, B // n, T).")
    elif ((AB, AT), (AB, AT)) in shapes:
        why = (" loss_fn is given the whole batch: run it on one micro-batch at a time, micro-batch i the rows "
               "i * B // n .. (i + 1) * B // n - 1.")
    elif ((n, AT), (n, AT)) in shapes and n != m:
        why = (f" The micro-batches hold {n} rows each, so there are {m} of them, not {n}: x.reshape(n, B // n, T) "
               "gives n micro-batches of B // n rows.")
    checks.fail(f"with x of shape ({AB}, {AT}) and num_micro_batches={n}, each micro-batch should be x {want[0]}, "
                f"y {want[1]}, but loss_fn was called with {said}." + why)


def _tree_max(tree):
    return max(float(np.abs(np.asarray(leaf)).max()) for leaf in jax.tree_util.tree_leaves(tree))


def _tree_close(got, expected, scale):
    return all(np.all(np.abs(np.asarray(g, np.float64) - np.asarray(e, np.float64)) <= ACC_TOL * scale)
               for g, e in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(expected)))


def _assert_accumulated(got, expected, what, variants):
    """got and expected are (loss, grads); variants: (why, compute) pairs, each a known mistake's (loss, grads)."""
    (loss, grads), (want_loss, want_grads) = got, expected
    scale = max(1.0, _tree_max(want_grads))
    loss_ok = abs(loss - float(want_loss)) <= ACC_TOL * max(1.0, abs(float(want_loss)))
    if loss_ok and _tree_close(grads, want_grads, scale):
        return
    why = None
    for words, compute in variants:
        try:
            other_loss, other_grads = compute()
        except Exception:
            continue
        same_loss = abs(loss - float(other_loss)) <= ACC_TOL * max(1.0, abs(float(other_loss)))
        if (same_loss or loss_ok) and _tree_close(grads, other_grads, max(1.0, _tree_max(other_grads))):
            why = words
            break
        if same_loss and not loss_ok and words.startswith("the loss"):
            why = words
            break
    if not loss_ok:
        message = f"{what}: the loss is {loss:.7f}, expected {float(want_loss):.7f}"
    else:
        leaves = zip(checks.tree_shapes(grads), jax.tree_util.tree_leaves(grads), jax.tree_util.tree_leaves(want_grads))
        path, g, e = max(leaves, key=lambda t: float(np.abs(np.asarray(t[1], np.float64) - np.asarray(t[2])).max()))
        diff = np.abs(np.asarray(g, np.float64) - np.asarray(e))
        where = tuple(int(i) for i in np.unravel_index(np.argmax(diff), diff.shape))
        message = (f"{what}: the loss is right, but the gradient {path} differs by {float(diff[where]):.3g} at "
                   f"{where} (expected {float(np.asarray(e)[where]):.6g}, got {float(np.asarray(g)[where]):.6g}; "
                   f"allowed {ACC_TOL * scale:.2g})")
    checks.fail(message + (f".\n  Likely cause: {why}" if why else "."))


def _value_variants(params, x, y, key, n):
    last_key = None if key is None else jax.random.fold_in(key, n - 1)
    return (
        ("the micro-batches' gradients are summed, not averaged: divide the sums by num_micro_batches.",
         lambda: _oracle_accumulated(params, x, y, key, n, reduce="sum")),
        ("the loss is summed over the micro-batches, not averaged: divide it by num_micro_batches too.",
         lambda: (_oracle_accumulated(params, x, y, key, n, reduce="sum")[0],
                  _oracle_accumulated(params, x, y, key, n)[1])),
        ("the running sum of the gradients is kept in bfloat16, which rounds every addition to 8 significant bits: "
         "keep the carry in float32, the parameters' dtype.",
         lambda: _oracle_accumulated(params, x, y, key, n, precision=jnp.bfloat16)),
        ("the gradients' carry starts from params instead of zeros: start it from float32 zeros shaped like params, "
         "jax.tree_util.tree_map(jnp.zeros_like, params).",
         lambda: _oracle_accumulated(params, x, y, key, n, reduce="from_params")),
        ("the summed gradients are divided by the batch size, not by num_micro_batches: each micro-batch's gradient "
         "is already a mean over its rows, so their mean divides the sum by num_micro_batches.",
         lambda: _oracle_accumulated(params, x, y, key, n, reduce="by_batch")),
        ("the result is the last micro-batch's alone: the carry is replaced by each micro-batch's gradients instead of "
         "added to (carry + grads).", lambda: _oracle_accumulated(params, x[-(AB // n):], y[-(AB // n):], last_key,
                                                                  1, keys="same")),
        ("the loss is the last micro-batch's alone: add each micro-batch's loss to the carried sum, then divide by "
         "num_micro_batches.", lambda: (_VALUE_AND_GRAD(params, x[-(AB // n):], y[-(AB // n):], last_key)[0],
                                        _oracle_accumulated(params, x, y, key, n)[1])),
    )


def test_accumulated_grads_equal_the_large_batch_gradient(impl):
    """Without a dropout key, accumulated_grads over 1, 2, 3 or 6 micro-batches is the whole batch's value_and_grad

    A float32 loss and float32 gradients shaped like params."""
    params, x, y = _tiny_case()
    expected = _VALUE_AND_GRAD(params, x, y, None)
    for n in (2, 3, 6, 1):
        got = _call_accumulated(impl, params, x, y, None, n)
        _assert_accumulated(got, expected, f"accumulated_grads over {n} micro-batch{'es' if n > 1 else ''} of a batch "
                            f"({AB}, {AT}), against jax.value_and_grad on the whole batch",
                            _value_variants(params, x, y, None, n))


def test_each_micro_batch_has_its_own_dropout_key(impl):
    """With a dropout key, micro-batch i runs with jax.random.fold_in(dropout_key, i)

    The mean of those micro-batches' value_and_grad (3 micro-batches of 2 rows)."""
    params, x, y = _tiny_case()
    key, n = jax.random.key(23), 3
    got = _call_accumulated(impl, params, x, y, key, n)
    expected = _oracle_accumulated(params, x, y, key, n)
    variants = (
        ("every micro-batch runs with the same dropout key, so they all drop the same positions: give micro-batch i "
         "jax.random.fold_in(dropout_key, i).", lambda: _oracle_accumulated(params, x, y, key, n, keys="same")),
        ("micro-batch i holds rows i, i + n, i + 2n, ... (a strided split); the lesson's micro-batch i is rows "
         "i * B // n .. (i + 1) * B // n - 1, x.reshape(n, B // n, T), so that its dropout key is the one replayed.",
         lambda: _oracle_accumulated(params, x, y, key, n, rows="strided")),
        ("micro-batch i runs with jax.random.fold_in(dropout_key, i + 1), one off: count the micro-batches from 0, "
         "jax.random.fold_in(dropout_key, i) for i = 0 .. n - 1.",
         lambda: _oracle_accumulated(params, x, y, key, n, keys="fold_in_next")),
        ("the dropout key is not used: with a key, loss_fn gets one per micro-batch, "
         "jax.random.fold_in(dropout_key, i).", lambda: _oracle_accumulated(params, x, y, None, n)),
    ) + _value_variants(params, x, y, key, n)
    _assert_accumulated(got, expected, f"accumulated_grads over {n} micro-batches with a dropout key, against the mean "
                        "of value_and_grad on each micro-batch i with jax.random.fold_in(dropout_key, i)", variants)


def _loop_length(eqn):
    if eqn.primitive.name == "scan":
        return int(eqn.params["length"])
    if eqn.primitive.name == "while":
        return -1
    return None


def _program(impl, n):
    """accumulated_grads traced for n micro-batches with a loss function made for this trace (a jit cache keyed on
    loss_fn then never skips it): (the jaxpr, how many times the loss function was traced, with which shapes)."""
    fn = _accumulate_function(impl)
    params, x, y = _tiny_case()
    seen = []

    def loss_fn(params, x, y, dropout_key):
        seen.append(tuple(np.shape(x)))
        return _tiny_loss(params, x, y, dropout_key)

    try:
        jaxpr = jax.make_jaxpr(lambda p, x, y, k: fn(loss_fn, p, x, y, k, n))(params, x, y, jax.random.key(0))
    except (NotImplementedError, checks.CheckFailed):
        raise
    except Exception as err:
        problem = _static_problem(err)
        if problem:
            checks.fail(problem)
        where = outcomes.learner_frame(err)
        first = str(err).strip().splitlines()[0][:300] if str(err).strip() else ""
        checks.fail(f"accumulated_grads could not be traced by jax.make_jaxpr (as jax.jit traces it): "
                    f"{type(err).__name__}: {first}" + (f"\n    at {where}" if where else ""))
    return jaxpr, seen


def test_accumulation_is_one_scan(impl):
    """accumulated_grads is one loop over the micro-batches that carries running sums, whatever their number

    The model inside the loop, a program no bigger for 6 micro-batches than for 2, no stack of one gradient per
    micro-batch."""
    (small, small_seen), (large, large_seen) = _program(impl, 2), _program(impl, 6)
    small_size = sum(1 for _ in checks.program_equations(small.jaxpr))
    large_size = sum(1 for _ in checks.program_equations(large.jaxpr))
    if len(large_seen) > len(small_seen) or large_size > 1.5 * small_size:
        checks.fail(f"accumulated_grads calls loss_fn {len(small_seen)} times for 2 micro-batches and "
                    f"{len(large_seen)} times for 6, and its program has {small_size} and {large_size} operations: "
                    "the micro-batches are unrolled, one copy of the model per micro-batch (a Python loop does that). "
                    "Write the loop with jax.lax.scan over the micro-batches, so that one step is compiled whatever "
                    "num_micro_batches is.")
    equations = list(checks.program_equations(large.jaxpr))
    loops = [eqn for eqn, _ in equations if _loop_length(eqn) is not None]
    inside = [eqn for eqn, around in equations if eqn.primitive.name == "dot_general"
              and any(_loop_length(outer) is not None for outer in around)]
    if not loops or not inside:
        shapes = sorted(set(large_seen))
        if (AB, AT) in shapes:
            why = ("loss_fn runs on the whole batch at once, so all its activations are in memory together: that is "
                   "the large-batch gradient, not an accumulation.")
        elif (AB // 6, AT) in shapes:
            why = ("the micro-batches run side by side (jax.vmap over them?), which holds every micro-batch's "
                   "activations in memory at once, as the whole batch would.")
        else:
            why = "the model does not run inside a loop."
        checks.fail(f"accumulated_grads's program has {'no loop' if not loops else 'no matmul inside its loop'}: "
                    f"{why} Accumulation runs one micro-batch after another in jax.lax.scan, carrying the running "
                    "sums, so that only one micro-batch's activations exist at a time.")
    for eqn, _ in equations:
        length = _loop_length(eqn)
        if eqn.primitive.name == "scan" and length == 6 and int(eqn.params.get("unroll", 1)) >= 6:
            checks.fail("accumulated_grads's scan is built with unroll=True (or unroll=num_micro_batches): XLA then "
                        "compiles one copy of the step per micro-batch, as a Python loop would. Leave unroll at 1.")
    params = _tiny_case()[0]
    stacked = {(6,) + tuple(leaf.shape) for leaf in jax.tree_util.tree_leaves(params) if np.ndim(leaf) >= 2}
    for eqn in loops:
        outs = [tuple(getattr(v.aval, "shape", ())) for v in eqn.outvars]
        if stacked & set(outs):
            checks.fail("accumulated_grads's loop returns every micro-batch's gradients stacked, (6, ...) for 6 "
                        "micro-batches, and averages them afterwards (jax.lax.map, or a scan that emits the "
                        "gradients): that keeps num_micro_batches copies of the gradients in memory. Carry the "
                        "running sum in the scan's carry and emit nothing.")
