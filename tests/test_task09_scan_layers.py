"""Task 9: `stack_layers`, `unstack_layers` and `ScannedMiniGPT`, the blocks as one `nn.scan`.

Oracles: the unrolled GPT built from Flax's layers (tests/oracles_gpt.py), run on the unrolled parameters while
the learner's ScannedMiniGPT runs on the same parameters stacked by hand (numpy), so that the logits are
compared with a model nobody here wrote in scanned form; the reference ScannedMiniGPT
(jaxgpt/grader/differential.py), compared submodule by submodule outside the scan (inside it every value is
traced and only the scan's result can be compared), with the depth at which the two part when they do; the
stacking functions against numpy's np.stack, exactly, with 12 layers (so that 'blocks_10' sorted as a string
before 'blocks_2' shows); the traced program (one scan whose program does not grow with n_layer; a
rematerialised block in the gradient's program exactly when remat=True; no scan unrolled into one copy per
layer); dropout by what each site outside the scan drops, by the rate and mode of every site inside it, by the
number of sites per layer (your own Block's, run alone), and by the masks of the layers (recorded inside the
scan with a pure callback), which must differ from layer to layer; a dropout written by hand, mask for mask against
the reference with the same keys (differential.hand_written_dropout_problem), and by the keys each layer takes.

Sizes as in tasks 1 and 6: all different (vocab 13, block_size 37, n_embd 24, 3 heads of 8, batch 2), 3 layers
(the first, a middle and the last differ), T = 1, 5 and block_size, a batch of one, dropout_rate 0.37.

Tolerances: the scanned model runs the same float32 operations as the unrolled one, in the same order, so the
logits agree to a few ulp (measured 1e-6); they are compared at tasks 1 and 6's rtol = atol = 1e-4, while the
nearest mistakes (layers in another order, one layer's parameters in every layer) move them by 1e-1. With
remat, XLA may fuse the recomputed forward pass differently: gradients are compared at 1e-4 of the largest
gradient (measured 8e-6 against a gradient of order 1).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxgpt import contract
from jaxgpt.grader import checks, differential, outcomes
import oracles_gpt as og
from module_checks import RATE, build as _build, output, same_behaviour, tree_of as _tree_of

TASK = 9

V, BLOCK_SIZE, C, H, L = 13, 37, 24, 3, 3  # vocab_size, block_size, n_embd, n_head (head_size 8), n_layer
B, T = 2, BLOCK_SIZE
FIELDS = dict(vocab_size=V, block_size=BLOCK_SIZE, n_embd=C, n_head=H, n_layer=L)
TOL = dict(rtol=1e-4, atol=1e-4)
MANY = 12  # layers for the stacking checks: 'blocks_10' and 'blocks_11' sort before 'blocks_2' as strings
REMAT_PRIMITIVES = {"remat2", "checkpoint", "remat"}  # jax's name for a rematerialised call, across versions


@pytest.fixture(scope="module")
def idx():
    return np.random.default_rng(0).integers(0, V, (B, T)).astype(np.int32)  # (B, T) token ids


@pytest.fixture(scope="module")
def params(idx):
    """An unrolled model's inner tree (task 1's and task 6's layout), blocks_0 .. blocks_{L-1}."""
    return og.random_params(og.OracleGPT(**FIELDS), idx)["params"]


def _stack(params, order=None):
    """The lesson's stacking, by hand in numpy: 'blocks' with every leaf (L, ...), layer i = blocks_i."""
    n = sum(k.startswith("blocks_") for k in params)
    order = list(range(n)) if order is None else order
    out = {k: v for k, v in params.items() if not k.startswith("blocks_")}
    out["blocks"] = jax.tree_util.tree_map(lambda *leaves: np.stack([np.asarray(v) for v in leaves]),
                                           *[params[f"blocks_{i}"] for i in order])
    return out


@pytest.fixture(scope="module")
def stacked(params):
    return _stack(params)


def _numbered_tree(n_layer, seed=0):
    """An unrolled inner tree of n_layer small blocks whose every value is distinct (numpy, float32)."""
    rng = np.random.default_rng(seed)
    shapes = contract.model_shapes(vocab_size=5, block_size=6, n_embd=4, n_head=2, n_layer=n_layer)
    return jax.tree_util.tree_map(lambda s: rng.standard_normal(s).astype(np.float32), shapes,
                                  is_leaf=lambda s: isinstance(s, tuple))


def _leaves(tree):
    return {"/".join(str(getattr(p, "key", getattr(p, "idx", p))) for p in path): np.asarray(leaf)
            for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _same_tree(got, expected):
    try:
        a, b = _leaves(got), _leaves(expected)
    except Exception:
        return False
    return a.keys() == b.keys() and all(a[k].shape == b[k].shape and np.array_equal(a[k], b[k]) for k in a)


def _call(fn, name, tree):
    try:
        return fn(tree)
    except (NotImplementedError, checks.CheckFailed):
        raise
    except Exception as err:
        where = outcomes.learner_frame(err)
        first = str(err).strip().splitlines()[0][:300] if str(err).strip() else ""
        checks.fail(f"{name} raised {type(err).__name__} on a tree of {MANY} layers: {first}"
                    + (f"\n    at {where}" if where else ""))


def _copy_tree(tree):
    return jax.tree_util.tree_map(lambda v: np.array(v, copy=True), tree)


def _assert_untouched(before, after, name):
    if not _same_tree(after, before):
        checks.fail(f"{name} changed the tree it was given (a `del`, `pop` or assignment on it): build a new dict "
                    "and leave the argument as it was; JAX code treats parameters as values that never change.")


def test_stack_layers(impl):
    """stack_layers turns blocks_0 .. blocks_11 into 'blocks', each leaf stacked (L, ...) in layer order, exactly"""
    unrolled = _numbered_tree(MANY)
    given = _copy_tree(unrolled)
    got = _call(impl.stack_layers, "stack_layers", given)
    _assert_untouched(unrolled, given, "stack_layers")
    expected = _stack(unrolled)
    checks.assert_tree(got, expected, f"stack_layers' result for {MANY} layers")
    if _same_tree(got, expected):
        return
    by_name = sorted(range(MANY), key=lambda i: f"blocks_{i}")
    causes = [
        ("the layers are taken in the order of their names as strings ('blocks_10' and 'blocks_11' come before "
         "'blocks_2'): take them by number, params[f'blocks_{i}'] for i in range(n_layer).", _stack(unrolled, by_name)),
        ("the layers are stacked in reverse order: layer i must be stacked['blocks'][...][i].",
         _stack(unrolled, list(range(MANY))[::-1])),
        ("the first layer is stacked n_layer times: stack blocks_0, blocks_1, ..., each once.",
         _stack(unrolled, [0] * MANY)),
    ]
    why = next((w for w, tree in causes if _same_tree(got, tree)), None)
    a, b = _leaves(got), _leaves(expected)
    wrong = next(k for k in b if not np.array_equal(a[k], b[k]))
    layer = next(i for i in range(MANY) if not np.array_equal(a[wrong][i], b[wrong][i])) \
        if wrong.startswith("blocks/") else None
    checks.fail(f"stack_layers' result differs at {wrong}" + (f", layer {layer}" if layer is not None else "")
                + ": each leaf of 'blocks' should be np.stack([blocks_0's, blocks_1's, ...]), the other entries "
                "kept as they are." + (f"\n  Likely cause: {why}" if why else ""))


def test_unstack_layers(impl):
    """unstack_layers is stack_layers' inverse: 'blocks' back to blocks_0 .. blocks_11, layer i the slice [i]"""
    unrolled = _numbered_tree(MANY, seed=1)
    stacked = _stack(unrolled)
    given = _copy_tree(stacked)
    got = _call(impl.unstack_layers, "unstack_layers", given)
    _assert_untouched(stacked, given, "unstack_layers")
    checks.assert_tree(got, unrolled, f"unstack_layers' result for {MANY} layers")
    if not _same_tree(got, unrolled):
        a, b = _leaves(got), _leaves(unrolled)
        wrong = next(k for k in b if not np.array_equal(a[k], b[k]))
        reversed_tree = {**{k: v for k, v in unrolled.items() if not k.startswith("blocks_")},
                         **{f"blocks_{i}": unrolled[f"blocks_{MANY - 1 - i}"] for i in range(MANY)}}
        why = ("the layers come back in reverse order: blocks_i is every leaf's slice [i]."
               if _same_tree(got, reversed_tree) else None)
        checks.fail(f"unstack_layers' result differs at {wrong}: blocks_i should hold every leaf's slice [i] of "
                    "'blocks', the other entries kept as they are." + (f"\n  Likely cause: {why}" if why else ""))
    # Both ways round, on the functions' own results (a jax array tree, as model.init returns).
    there = _call(impl.stack_layers, "stack_layers", jax.tree_util.tree_map(jnp.asarray, unrolled))
    back = _call(impl.unstack_layers, "unstack_layers", there)
    if not _same_tree(back, unrolled):
        checks.fail("unstack_layers(stack_layers(params)) is not params again, for a tree of jax arrays.")


def _expected_tree_shapes():
    shapes = contract.model_shapes(**FIELDS)
    block = shapes.pop("blocks_0")
    for i in range(1, L):
        shapes.pop(f"blocks_{i}")
    shapes["blocks"] = jax.tree_util.tree_map(lambda s: (L,) + s, block, is_leaf=lambda s: isinstance(s, tuple))
    return {"params": jax.tree_util.tree_map(lambda s: np.zeros(s, np.float32), shapes,
                                             is_leaf=lambda s: isinstance(s, tuple))}


def test_parameter_tree(impl, idx):
    """ScannedMiniGPT's parameters are MiniGPT's with the blocks stacked: 'blocks', every leaf (n_layer, ...)"""
    model = _build(impl.ScannedMiniGPT, **FIELDS)
    got = _tree_of(model, idx)
    expected = _expected_tree_shapes()
    shapes = checks.tree_shapes(got)
    unstacked = shapes.get("params/blocks/ln1/scale") == (C,)
    per_layer = any(k.startswith("params/blocks_") for k in shapes)
    layers = {shape[0] for k, shape in shapes.items() if k.startswith("params/blocks/") and shape}
    other_depth = (len(layers) == 1 and not unstacked and layers != {L}
                   and shapes.get("params/blocks/ln1/scale") == (next(iter(layers)), C))
    try:
        checks.assert_tree(got, expected, "ScannedMiniGPT's parameter tree")
    except checks.CheckFailed as err:
        why = ("the blocks' parameters have no layer axis, so one block's parameters serve every layer (nn.scan "
               "with variable_broadcast='params'): give them one slice per layer, variable_axes={'params': 0}."
               if unstacked else "the blocks are separate modules, blocks_0, blocks_1, ...: that is the unrolled "
               "model. Run one Block, named 'blocks', through nn.scan over stacked parameters." if per_layer else
               f"every stacked leaf has {next(iter(layers))} layers where n_layer={L}: the scan's length is not "
               "self.n_layer (a number typed in?). Scan length=self.n_layer." if other_depth else None)
        checks.fail(str(err) + (f"\n  Likely cause: {why}" if why else ""))


def test_layers_initialised_apart(impl, idx):
    """ScannedMiniGPT.init gives each layer its own random parameters (the init RNG is split across layers)"""
    model = _build(impl.ScannedMiniGPT, **FIELDS)
    variables = checks.without_dropout_rng(lambda: jax.jit(model.init)(jax.random.key(0), idx[:1, :4]),
                                           "ScannedMiniGPT.init")
    checks.assert_tree(variables, _expected_tree_shapes(), "ScannedMiniGPT's parameter tree")
    kernel = np.asarray(variables["params"]["blocks"]["ffwd"]["fc"]["kernel"])  # (L, C, 4C), random at init
    same = [i for i in range(1, L) if np.array_equal(kernel[i], kernel[0])]
    if same:
        checks.fail(f"after init, layer {same[0]}'s feed-forward kernel equals layer 0's: every layer was "
                    "initialised with the same key, so the layers start as copies of each other. Split the 'params' "
                    "RNG across the scan: split_rngs={'params': True, ...}.")


# --- Logits ---------------------------------------------------------------------------------------------------


def _oracle_logits(params, idx, n_layer=L, kept=True):
    """The unrolled oracle's logits. The checks' own (`kept`, the default) are remembered for the process by the
    parameters' and inputs' bytes (tests/oracles_gpt.py's oracle_apply); the diagnoses' variants, computed only
    when a check fails, are not kept."""
    model = og.OracleGPT(**{**FIELDS, "n_layer": n_layer})
    if kept:
        return og.oracle_apply(model, {"params": params}, idx)
    return np.asarray(model.apply({"params": params}, idx))


def _unrolled_variant(params, order):
    out = {k: v for k, v in params.items() if not k.startswith("blocks_")}
    out.update({f"blocks_{j}": params[f"blocks_{i}"] for j, i in enumerate(order)})
    return out


def _diagnose_logits(params, idx):
    """Known wrong stacks recomputed with the unrolled oracle, on the same parameters."""
    variants = [
        ("the layers run in reverse order (a scan with reverse=True, or parameters stacked last layer first): "
         "layer 0 comes first.", list(range(L))[::-1]),
        ("every layer uses the first layer's parameters: the scan must hand each step its own slice of the stacked "
         "parameters (variable_axes={'params': 0}).", [0] * L),
        ("every layer uses the last layer's parameters.", [L - 1] * L),
        ("one layer too few runs: the scan's length is n_layer.", list(range(L - 1))),
        ("only the first layer runs: the scan's length is n_layer, and its carry is the next layer's input.", [0]),
        ("only the last layer acts, on the embeddings: every step gets the embeddings, not the previous layer's "
         "output. The step must return the block's output as the new carry, (block(x, deterministic), None), and "
         "the model continue from the final carry, not from the stacked outputs.", [L - 1]),
    ]
    return checks.diagnose_from((why, lambda order=order: _oracle_logits(_unrolled_variant(params, order), idx,
                                                                        len(order), kept=False))
                                for why, order in variants)


def _depth_explainer(impl, params, stacked_params):
    """Where the scanned stack first parts from the unrolled one, by depth: the learner's model with 1, 2, ...
    layers (the first layers' parameters) against the oracle with as many."""

    def explain(args):
        idx = np.asarray(args[0])
        for depth in range(1, L):
            try:
                model = impl.ScannedMiniGPT(**{**FIELDS, "n_layer": depth})
                sub = {**{k: v for k, v in stacked_params.items() if k != "blocks"},
                       "blocks": jax.tree_util.tree_map(lambda v: v[:depth], stacked_params["blocks"])}
                got = np.asarray(model.apply({"params": sub}, idx))
                expected = _oracle_logits({**{k: v for k, v in params.items() if not k.startswith("blocks_")},
                                           **{f"blocks_{i}": params[f"blocks_{i}"] for i in range(depth)}},
                                          idx, depth, kept=False)
            except Exception:
                return None
            if not differential._close(got, expected):
                return (f"With n_layer={depth} it already differs from the unrolled model, so look at one step of "
                        "the scan: the block it runs, what it returns as the carry." if depth == 1 else
                        f"With n_layer={depth - 1} it agrees with the unrolled model and with {depth} it does not: "
                        "look at how the scan goes from one layer to the next (each layer's parameter slice, the "
                        "carry passed on, the order of the layers).")
        return None

    return explain


def test_logits_match_unrolled(impl, params, stacked, idx):
    """ScannedMiniGPT on stacked parameters gives the unrolled MiniGPT's logits, T = block_size, under jax.jit"""
    model = _build(impl.ScannedMiniGPT, **FIELDS)
    try:
        logits = jax.jit(lambda p, i: model.apply({"params": p}, i))(stacked, idx)
    except (NotImplementedError, checks.CheckFailed):
        raise
    except Exception as err:
        name = type(err).__name__
        if name.startswith("Scope"):
            raise  # Flax's tree errors are said by outcomes.classify
        where = outcomes.learner_frame(err)
        first = str(err).strip().splitlines()[0][:300] if str(err).strip() else ""
        checks.fail(f"ScannedMiniGPT fails under jax.jit on stacked parameters: {name}: {first}"
                    + (f"\n    at {where}" if where else "")
                    + ("\n  Under jit the arrays are traced: a Python `if` or int() on one cannot work; inside "
                       "nn.scan a layer gets its slice of the parameters from the scan itself."
                       if "Tracer" in name or "Concretization" in name else ""))
    logits = output(lambda: logits, (B, T, V), "ScannedMiniGPT's logits")
    expected = _oracle_logits(params, idx)
    diagnose = _diagnose_logits(params, idx)
    explain = _depth_explainer(impl, params, stacked)

    def diagnosis(got):
        return diagnose(got) or explain((idx,))

    checks.assert_close(logits, expected, "ScannedMiniGPT's logits on the stacked parameters of an unrolled model",
                        **TOL, diagnose=diagnosis)


def test_same_as_reference(impl, reference, params, stacked, idx):
    """ScannedMiniGPT computes what the lesson's does for T = block_size and for one token of a batch of one, in evaluation and training"""
    model = _build(impl.ScannedMiniGPT, **FIELDS, dropout_rate=RATE)
    expected = reference.ScannedMiniGPT(**FIELDS, dropout_rate=RATE)
    same_behaviour(model, expected, {"params": stacked}, [(idx,), (idx[:1, :1],)], "ScannedMiniGPT",
                   task=impl.task, build=lambda view: view.ScannedMiniGPT(**FIELDS, dropout_rate=RATE),
                   explain=_depth_explainer(impl, params, stacked))


def test_unrolled_weights_round_trip(impl, idx):
    """Weights move both ways: the scanned model's own parameters, unstacked, give the same logits in the unrolled model"""
    model = _build(impl.ScannedMiniGPT, **FIELDS)
    own = og.random_fill(_tree_of(model, idx), seed=3)["params"]  # in the learner's own (checked) tree
    checks.assert_tree({"params": own}, _expected_tree_shapes(), "ScannedMiniGPT's parameter tree")
    unrolled = _call(impl.unstack_layers, "unstack_layers", own)
    scanned_logits = output(lambda: model.apply({"params": own}, idx), (B, T, V), "ScannedMiniGPT's logits")
    checks.assert_close(_oracle_logits(unrolled, idx), scanned_logits,
                        "the unrolled model's logits on unstack_layers(the scanned model's parameters)", **TOL)


# --- The program ------------------------------------------------------------------------------------------------


def _walk(jaxpr):
    return (eqn for eqn, _ in checks.program_equations(jaxpr))


NO_DROPOUT_RNG = ("inside the scan the layers get no 'dropout' RNG (Flax: \"needs PRNG for 'dropout'\"): nn.scan "
                  "hands an RNG stream to its steps only when split_rngs names it. Add it, split so that each layer "
                  "draws its own masks: split_rngs={'params': True, 'dropout': True}.")


def _no_dropout_rng(err):
    return type(err).__name__ == "InvalidRngError" and "dropout" in str(err)


def _program(impl, idx, what, fn, traced=False):
    """The program `fn` computes, traced by jax.make_jaxpr (or, `traced`, the ClosedJaxpr fn returns)."""
    try:
        return fn().jaxpr if traced else jax.make_jaxpr(fn)().jaxpr
    except (NotImplementedError, checks.CheckFailed):
        raise
    except Exception as err:
        if _no_dropout_rng(err):
            checks.fail(f"{what} fails in training mode: {NO_DROPOUT_RNG}")
        if type(err).__name__.startswith("Scope"):
            raise
        where = outcomes.learner_frame(err)
        first = str(err).strip().splitlines()[0][:300] if str(err).strip() else ""
        checks.fail(f"{what} could not be traced by jax.make_jaxpr (as jax.jit traces it): {type(err).__name__}: "
                    f"{first}" + (f"\n    at {where}" if where else ""))


def test_one_block_for_any_depth(impl, idx):
    """The traced model holds one scan over n_layer layers, whose program is the same size for 2 and 8 layers"""
    sizes, lengths, unrolled = {}, {}, {}
    for depth in (2, 8):
        model = _build(impl.ScannedMiniGPT, **{**FIELDS, "n_layer": depth})
        p = og.random_fill(_tree_of(model, idx[:1, :4]), seed=1)
        program = _program(impl, idx, "ScannedMiniGPT", lambda: model.apply(p, idx[:1, :4]))
        eqns = list(_walk(program))
        sizes[depth] = len(eqns)
        lengths[depth] = sorted({int(e.params["length"]) for e in eqns if e.primitive.name == "scan"})
        unrolled[depth] = any(e.primitive.name == "scan" and int(e.params["length"]) == depth
                              and int(e.params.get("unroll", 1)) >= depth for e in eqns)
    if sizes[8] > 1.5 * sizes[2] or not lengths[8]:
        checks.fail(f"ScannedMiniGPT's program has {sizes[2]} operations for 2 layers and {sizes[8]} for 8"
                    + ("" if lengths[8] else ", and no scan") + ": the layers are unrolled into the program, one "
                    "copy of the block per layer (a Python loop over the layers does that, even over stacked "
                    "parameters). Run the block with nn.scan, so that one block is compiled for any depth.")
    if unrolled[8]:
        checks.fail("the scan over the blocks is built with unroll=n_layer (or unroll=True): XLA then compiles one "
                    "copy of the block per layer, as the unrolled model does. Leave unroll at its default, 1.")
    if 8 not in lengths[8]:
        checks.fail(f"for n_layer=8 ScannedMiniGPT's program holds scans of lengths {lengths[8]}: the scan over the "
                    "blocks should run n_layer times (length=self.n_layer).")


_GRADIENTS: dict = {}  # model -> its traced training gradient: traced once, read by both remat checks


def _traced_gradient(model, stacked, short):
    """`jax.jit(jax.value_and_grad(loss)).trace(stacked)` for the summed training logits on `short` (dropout key 0):
    its program (.jaxpr) is what test_remat reads, and it is compiled (.lower().compile()) by
    test_remat_same_gradients, so that the scanned model's gradient is traced once per model, not once per check."""
    key = (model, short.tobytes(), short.shape)
    if key not in _GRADIENTS:
        def loss(params):
            return model.apply({"params": params}, short, deterministic=False,
                               rngs={"dropout": jax.random.key(0)}).sum()
        _GRADIENTS[key] = jax.jit(jax.value_and_grad(loss)).trace(stacked)
    return _GRADIENTS[key]


def test_remat(impl, stacked, idx):
    """remat=True rematerialises the blocks in the gradient's program, remat=False does not"""
    models = {flag: _build(impl.ScannedMiniGPT, **FIELDS, dropout_rate=RATE, remat=flag) for flag in (False, True)}
    short = idx[:1, :6]
    for flag, model in models.items():
        names = {e.primitive.name for e in _walk(_program(impl, idx, f"the gradient of ScannedMiniGPT(remat={flag})",
                                                          lambda m=model: _traced_gradient(m, stacked, short).jaxpr,
                                                          traced=True))}
        if flag and not names & REMAT_PRIMITIVES:
            checks.fail("with remat=True the gradient's program keeps every activation: nothing in it is "
                        "rematerialised. Wrap the scanned step (or the Block) in nn.remat when self.remat is True.")
        if not flag and names & REMAT_PRIMITIVES:
            checks.fail("with remat=False the gradient's program still rematerialises: remat costs a second forward "
                        "pass, so it is the learner's switch, off by default (use nn.remat only if self.remat).")



@pytest.mark.slow
def test_remat_same_gradients(impl, stacked, idx):
    """remat=True gives the gradients of remat=False (same parameters, same dropout key)"""
    models = {flag: _build(impl.ScannedMiniGPT, **FIELDS, dropout_rate=RATE, remat=flag) for flag in (False, True)}
    short = idx[:1, :6]

    def grads(model):
        return _traced_gradient(model, stacked, short).lower().compile()(stacked)  # traced once, by test_remat

    (plain_value, plain), (remat_value, remat) = grads(models[False]), grads(models[True])
    checks.assert_close(remat_value, plain_value, "the summed training logits with remat=True (same dropout key)",
                        rtol=1e-5, atol=1e-3)
    scale = max(float(np.abs(np.asarray(g)).max()) for g in jax.tree_util.tree_leaves(plain))
    for (path, got), expected in zip(_leaves(remat).items(), _leaves(plain).values()):
        checks.assert_close(got, expected, f"the gradient of {path} with remat=True, against remat=False",
                            rtol=1e-4, atol=1e-4 * scale)


# --- Dropout --------------------------------------------------------------------------------------------------


def _dropout_record(model, variables, idx):
    """Every nn.Dropout call in training mode: (path, rate, deterministic, value or None inside the scan), and
    the masks each call drew, in call order (recorded from inside the scan with a pure callback)."""
    import flax.linen as nn

    calls, masks = [], []

    def intercept(next_fun, args, kwargs, context):
        mod = context.module
        if context.method_name != "__call__" or not isinstance(mod, (nn.Dropout, nn.MultiHeadDotProductAttention)):
            return next_fun(*args, **kwargs)
        path = "/".join(mod.scope.path) if mod.scope is not None else ""
        if isinstance(mod, nn.MultiHeadDotProductAttention):
            flag = kwargs.get("deterministic")
            flag = mod.deterministic if flag is None else flag
            calls.append((path, float(mod.dropout_rate), bool(flag), None, "attention"))
            return next_fun(*args, **kwargs)
        flag = kwargs.get("deterministic", args[1] if len(args) > 1 else None)
        flag = mod.deterministic if flag is None else flag
        inputs = args[0] if args else kwargs.get("inputs")
        try:
            value = np.asarray(inputs)
        except Exception:
            value = None  # traced: inside the scan
        index = len(calls)
        calls.append((path, float(mod.rate), bool(flag), value, "dropout"))
        out = next_fun(*args, **kwargs)

        def record(dropped, i=index):
            masks.append((i, np.asarray(dropped)))
            return np.zeros((), out.dtype)

        # A pure callback whose (zero) result the output depends on, not an effectful debug callback: the newer
        # Flax traces a scan's body once more to find its broadcast variables and refuses any effect that
        # depends on the body's inputs; the data dependency alone keeps the call in the program, in layer order.
        return out + jax.pure_callback(record, jax.ShapeDtypeStruct((), out.dtype), out == 0)

    with nn.intercept_methods(intercept):
        model.apply(variables, idx, deterministic=False, rngs={"dropout": jax.random.key(5)})
    jax.effects_barrier()
    return calls, masks


def _block_dropout_sites(impl, stacked, x):
    """How many nn.Dropout sites the learner's own Block (the one the scan runs) has, run alone in training."""
    import flax.linen as nn

    seen = set()

    def intercept(next_fun, args, kwargs, context):
        if context.method_name == "__call__" and isinstance(context.module, nn.Dropout):
            seen.add("/".join(context.module.scope.path))
        return next_fun(*args, **kwargs)

    try:
        block = impl.other(impl.task.builds_on[0]).Block(C, H, RATE)
        layer = jax.tree_util.tree_map(lambda v: v[0], stacked["blocks"])
        h = np.random.default_rng(0).standard_normal((1, 4, C)).astype(np.float32)
        with nn.intercept_methods(intercept):
            block.apply({"params": layer}, h, False, rngs={"dropout": jax.random.key(0)})
    except Exception:
        return None
    return len(seen)


def _hand_written_dropout(model, expected, stacked, x, remat):
    """A dropout written by hand (a key from make_rng('dropout'), a mask from jax.random) is judged by behaviour,
    mask for mask against the reference (differential.hand_written_dropout_problem), and each key it takes inside
    the scan must differ from layer to layer."""
    differential.assert_same_dropout(model, expected, {"params": stacked}, (x,), f"ScannedMiniGPT(remat={remat})",
                                     RATE, names={"Dropout_0": "the embedding sum (tok + pos)"})
    for draw, seen in differential.drawn_keys(model, {"params": stacked}, x, deterministic=False,
                                              rngs={"dropout": jax.random.key(5)}):
        # A key taken inside the scan ('blocks') is one per layer when the scan splits the stream: L different
        # keys; else one key, the same for every layer (seen once: it is no traced value then).
        if draw.path.split("/")[0] == "blocks" and seen and len(set(seen)) == 1:
            checks.fail(f"with remat={remat}, every layer drops exactly the same units (the dropout key taken in "
                        f"`{draw.path}` is the same in every layer): the 'dropout' RNG is not split across the "
                        "layers. Add it to the scan's split_rngs: split_rngs={'params': True, 'dropout': True}.")


@pytest.mark.parametrize("remat", [False, True], ids=["remat_off", "remat_on"])
def test_dropout(impl, reference, stacked, idx, remat):
    """In training every site drops at dropout_rate, the embedding sum is dropped, and each layer draws its own masks"""
    model = _build(impl.ScannedMiniGPT, **FIELDS, dropout_rate=RATE, remat=remat)
    x = idx[:, :8]
    try:
        by_hand = differential.record(model, {"params": stacked}, x, deterministic=False,
                                      rngs={"dropout": jax.random.key(0)}).drawn_by_hand  # as the check below
        calls, masks = ([], []) if by_hand else _dropout_record(model, {"params": stacked}, x)
    except Exception as err:
        if _no_dropout_rng(err):
            checks.fail(f"ScannedMiniGPT(remat={remat}) fails in training mode: {NO_DROPOUT_RNG}")
        raise
    if by_hand:
        _hand_written_dropout(model, reference.ScannedMiniGPT(**FIELDS, dropout_rate=RATE, remat=remat), stacked, x,
                              remat)
        _one_key_one_output(model, stacked, x)
        return  # what follows audits nn.Dropout calls: the behaviour above has judged them all
    quiet = [c for c in calls if c[2] or c[1] != RATE]
    if quiet:
        path, rate, flag, _, kind = quiet[0]
        where = f"`{path}`" + (" (inside the scan)" if path.startswith("blocks") else "")
        if flag:
            why = ("the scan's step does not pass `deterministic` on to the Block" if path.startswith("blocks") else
                   "`deterministic` is not passed on to it")
            if remat:
                why += (" (with remat=True: nn.remat needs `deterministic` as a static argument, "
                        "static_argnums, or the step should close over it)")
            checks.fail(f"with remat={remat}, deterministic=False and dropout_rate={RATE}, the "
                        f"{'attention layer' if kind == 'attention' else 'dropout'} at {where} runs with "
                        f"deterministic=True, so it never drops anything: {why}.")
        checks.fail(f"the {'attention layer' if kind == 'attention' else 'dropout'} at {where} drops at rate {rate:g}; "
                    f"every dropout should use the model's dropout_rate ({RATE:g}): pass self.dropout_rate to the "
                    "Block you scan.")
    outside = [c for c in calls if c[3] is not None]
    tok_pos = stacked["token_embedding"]["embedding"][x] + stacked["position_embedding"]["embedding"][:x.shape[1]]
    if not any(differential._same_values(c[3], np.asarray(tok_pos)) for c in outside):
        checks.fail("in training, nothing drops the embedding sum (tok + pos) before the blocks: apply "
                    "nn.Dropout(self.dropout_rate) to it, as MiniGPT does.")
    extra = [c for c in outside if not differential._same_values(c[3], np.asarray(tok_pos))]
    if extra:
        checks.fail(f"there is an extra dropout outside the blocks, at `{extra[0][0]}`; MiniGPT drops only the "
                    "embedding sum there.")
    inside = [i for i, c in enumerate(calls) if c[3] is None and c[4] == "dropout"]
    if not inside:
        checks.fail("no dropout runs inside the scanned blocks in training: the Block's own dropouts should run "
                    "there (pass dropout_rate and deterministic on to the Block).")
    own = _block_dropout_sites(impl, stacked, x)
    sites = len({calls[i][0] for i in inside})
    if own is not None and sites != own:
        checks.fail(f"inside the scan each layer runs {sites} dropout{'s' if sites != 1 else ''}, but your Block "
                    f"(task {impl.task.builds_on[0]}'s) runs {own} on its own: "
                    + ("there is an extra dropout in the scanned step, besides the Block's own (the blocks' output "
                       "goes on to the next layer as it is)." if sites > own else
                       "some of the Block's dropouts do not run inside the scan."))
    # A site traced inside the scan runs once per layer: its masks, one per layer, must not all be the same.
    for site in inside:
        layer_masks = [m for i, m in masks if i == site]
        if len(layer_masks) > 1 and all(np.array_equal(layer_masks[0], m) for m in layer_masks[1:]):
            checks.fail(f"with remat={remat}, every layer drops exactly the same units (dropout site "
                        f"`{calls[site][0]}`): the 'dropout' RNG is not split across the layers. Add it to the "
                        "scan's split_rngs: split_rngs={'params': True, 'dropout': True}.")
    _one_key_one_output(model, stacked, x)


def _one_key_one_output(model, stacked, x):
    # One compiled program for three keys: the same key twice, then another.
    keys = jnp.stack([jax.random.key(k) for k in (3, 3, 4)])
    logits = np.asarray(jax.jit(jax.vmap(lambda k: model.apply({"params": stacked}, x, deterministic=False,
                                                               rngs={"dropout": k})))(keys))
    if not np.array_equal(logits[0], logits[1]):
        checks.fail("the same dropout key gave two different outputs: dropout must draw from the 'dropout' RNG alone.")
    if np.allclose(logits[0], logits[2]):
        checks.fail("two different dropout keys gave the same logits: dropout must draw from the 'dropout' RNG "
                    "stream that apply(..., rngs={'dropout': key}) provides.")
