"""Task 15: `LSTMCell`, `lstm_scan`, `CharLSTM`, `stream_chunks` and `train_tbptt`: an LSTM from scratch,
scanned over time, its state carried from chunk to chunk of the text (truncated backpropagation through time).

Oracles, strongest first:
  - Flax's own cells, `nn.LSTMCell` and `nn.OptimizedLSTMCell`, on the same parameters: the lesson's fused
    layout ('ih' kernel (D, 4H), 'hh' kernel (H, 4H) and bias (4H,), gates i, f, g, o along the 4H axis) is
    split into Flax's eight Dense layers ('ii', 'if', 'ig', 'io' without bias, 'hi', 'hf', 'hg', 'ho' with) by
    `_to_flax`, the same in flax 0.12.8 and 0.12.12. The carry given is random, not zeros, so a carry read in
    the wrong order or a cell state that is dropped shows.
  - A Python loop over time of Flax's cell, for `lstm_scan`, which is run with Flax's cell (not the learner's),
    so that a cell mistake cannot hide a loop mistake or the other way round; and the traced program, which must
    hold one `scan` of length T whose size does not grow with T (the lesson is about the scan).
  - `FlaxCharLSTM`, the character model built from nn.Embed, nn.RNN(nn.OptimizedLSTMCell) and nn.Dense, on the
    learner's parameters mapped into Flax's tree: the logits, and the state after the last token, from the
    zero state and from a random one. The state-carrying property on the learner's model alone: two calls on
    consecutive chunks, the second from the state the first returned, give the logits and state of one call on
    the whole sequence. And the challenge's own sampler (jaxgpt.sampling.sample) runs on the model unchanged.
  - `stream_chunks` exactly, on a text whose every token says where it stands (distinct values), so a wrong
    layout is named by where its chunks came from.
  - `train_tbptt` on FlaxCharLSTM (not the learner's model), whose every call notes the chunk it was given,
    the state it started from and the state it ended with (an ordered jax.debug.callback runs once per step of
    the learner's scan). The chunks must be chunk k % N of the lesson's layout, and the state given at step k
    must be exactly the state step k - 1 returned, except at k % N == 0 where it is zero: this behaviour is
    judged directly, whatever the parameters do. Then the losses and parameters must be those of the same
    steps replayed by an oracle step (jax.value_and_grad with has_aux, Optax's AdamW via Flax's TrainState).

When numbers differ, each known mistake is recomputed (gates read in another order, tanh and sigmoid swapped,
the 1 added to the forget gate in the forward pass, outputs one step late, a reshape where a transpose belongs,
the state reset every chunk, ...) and named only when it gives the learner's numbers.

Shapes: the cell and the scan use B, D, H, T = 3, 6, 5, 7; the model vocab 13, n_embd 10, 2 layers on (3, 7)
tokens; training B, T = 2, 5 with N = 3 chunks per stream, 7 steps (two pass boundaries). All dimensions differ,
so an axis mixed up shows as a shape or a value.

Tolerances, from float32's unit roundoff u = 2**-24 = 6e-8:
  - the fused cell and Flax's eight Dense layers sum the same products, maybe in another order: a few u per
    gate, growing by at most the number of steps through a recurrence whose derivatives are below 1 (sigmoid
    and tanh): 7 steps and 2 layers keep differences below 1e-6. Compared at rtol 1e-5, atol 1e-5; the nearest
    real mistakes (the forget bias added twice, outputs one step late) move values by 1e-2 or more.
  - training: the learner's steps and the oracle's run the same operations on the same numbers; AdamW's
    update divides by sqrt(v) + eps, so a relative difference d in a gradient moves a parameter by at most about
    lr * d per step: 7 steps at lr 0.01 with d = 1e-5 give 7e-7. Losses at rtol 1e-5, atol 1e-5, parameters at
    atol 2e-5 (task 7's), against 1e-3 for the nearest mistake (a state reset at one step).
  - carried states are passed along, not recomputed: compared at atol 1e-6.
"""

import dis
import functools
import inspect
import itertools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax.training import train_state

import oracles_gpt as og
from jaxgpt.grader import checks, outcomes

TASK = 15

B, D, H, T = 3, 6, 5, 7  # the cell and the scan: every size differs
V, C, L = 13, 10, 2  # the model: vocab, n_embd, layers (on B x T tokens)
TB, TT, TN, STEPS = 2, 5, 3, 7  # training: batch, block, chunks per stream, steps (passes begin at 0, 3, 6)
TRAIN_TOKENS = TB * TN * TT + 1 + 4  # 35: four tokens more than the chunks use, so a wrong count shows
LEARNING_RATE = 0.01
RTOL, ATOL = 1e-5, 1e-5
OPT_ATOL = 2e-5
STATE_ATOL = 1e-6
GATES = "ifgo"
GATE_NAMES = {"i": "input", "f": "forget", "g": "candidate", "o": "output"}

CALLS = {
    "lstm_scan": (("cell", "params", "carry", "xs"), ()),
    "stream_chunks": (("data", "batch_size", "block_size"), ()),
    "train_tbptt": (("model", "state", "data", "num_steps", "batch_size", "block_size"), ()),
}


# The operations of an untouched stub, whose body is `raise NotImplementedError("...")` and nothing else.
_STUB_OPERATIONS = {"RESUME", "NOP", "CACHE", "PUSH_NULL", "LOAD_GLOBAL", "LOAD_CONST", "PRECALL", "CALL",
                    "RAISE_VARARGS"}


def _not_started_yet(fn):
    """Calls `fn` at once when it is still the untouched stub, which can only raise its NotImplementedError: the
    check then says "not started" before it computes any oracle (seconds, for each check of a task not begun).
    Any other code, even one line more, is graded as usual."""
    fn = inspect.unwrap(fn)  # a Flax module's __call__ is wrapped
    code = getattr(fn, "__code__", None)
    if (code is None or code.co_names != ("NotImplementedError",)
            or not {i.opname for i in dis.get_instructions(code)} <= _STUB_OPERATIONS):
        return
    keywords = code.co_varnames[code.co_argcount:code.co_argcount + code.co_kwonlyargcount]
    fn(*[None] * code.co_argcount, **dict.fromkeys(keywords))


def _function(impl, name):
    positional, keywords = CALLS[name]
    fn = checks.learner_function(getattr(impl, name), name, positional, keywords)
    _not_started_yet(fn)
    return fn


def _f64(x):
    return np.asarray(x, np.float64)


# ----------------------------------------------------------------------------------------------------
# Parameters: the lesson's fused layout, and Flax's eight Dense layers


def _cell_shapes(d, h):
    return {"ih": {"kernel": (d, 4 * h)}, "hh": {"kernel": (h, 4 * h), "bias": (4 * h,)}}


def _model_shapes(vocab, n_embd, n_layer):
    tree = {"token_embedding": {"embedding": (vocab, n_embd)}}
    for layer in range(n_layer):
        tree[f"lstm_{layer}"] = _cell_shapes(n_embd, n_embd)
    tree["lm_head"] = {"kernel": (n_embd, vocab), "bias": (vocab,)}
    return tree


def _structs(shapes):
    return jax.tree_util.tree_map(lambda s: jax.ShapeDtypeStruct(s, jnp.float32), shapes,
                                  is_leaf=lambda s: isinstance(s, tuple))


def _random(shapes, seed):
    return jax.tree_util.tree_map(jnp.asarray, og.random_fill(_structs(shapes), seed=seed, scale=0.5))


def _to_flax(cell):
    """The lesson's cell tree in Flax's LSTMCell / OptimizedLSTMCell layout (the gates i, f, g, o)."""
    h = cell["hh"]["kernel"].shape[0]
    out = {}
    for k, gate in enumerate(GATES):
        part = slice(k * h, (k + 1) * h)
        out["i" + gate] = {"kernel": cell["ih"]["kernel"][:, part]}
        out["h" + gate] = {"kernel": cell["hh"]["kernel"][:, part], "bias": cell["hh"]["bias"][part]}
    return out


def _model_to_flax(params):
    return {name: (_to_flax(value) if name.startswith("lstm_") else value) for name, value in params.items()}


def _carry(seed, batch=B, h=H, scale=1.0):
    kc, kh = jax.random.split(jax.random.key(seed))
    return (scale * jax.random.normal(kc, (batch, h)), 0.8 * jnp.tanh(jax.random.normal(kh, (batch, h))))


# ----------------------------------------------------------------------------------------------------
# Oracle cells: Flax's, and the known mistakes written out


def _flax_cell(params, carry, x, cls=nn.OptimizedLSTMCell):
    h = carry[1].shape[-1]
    return cls(h).apply({"params": _to_flax(params)}, carry, x)


def _variant_cell(params, carry, x, order=GATES, gate=jax.nn.sigmoid, candidate=jnp.tanh, output=None,
                  forget_plus=0.0, carry_order="ch", emit="h", cell_tanh=True, input_gate=True, old_c=False):
    """The LSTM step as the lesson writes it, or with one of the known mistakes (the keywords)."""
    first, second = carry
    c, h = (first, second) if carry_order == "ch" else (second, first)
    z = x @ params["ih"]["kernel"] + h @ params["hh"]["kernel"] + params["hh"]["bias"]
    parts = dict(zip(order, jnp.split(z, 4, axis=-1)))
    i, f, o = gate(parts["i"]), gate(parts["f"] + forget_plus), (output or gate)(parts["o"])
    g = candidate(parts["g"])
    new_c = f * c + (i * g if input_gate else g)
    new_h = o * (jnp.tanh(c if old_c else new_c) if cell_tanh else new_c)
    out = (new_c, new_h) if carry_order == "ch" else (new_h, new_c)
    return out, (new_h if emit == "h" else new_c)


def _cell_candidates():
    """(what the learner did, keywords of _variant_cell)."""
    found = []
    for order in itertools.permutations(GATES):
        order = "".join(order)
        if order != GATES:
            named = ", ".join(f"{gate} ({GATE_NAMES[gate]})" for gate in order)
            found.append((f"the four slices of the 4H axis are read as {named}; the lesson's order (Flax's and "
                          "PyTorch's) is i, f, g, o: input, forget, candidate, output.", dict(order=order)))
    found += [
        ("the candidate g goes through a sigmoid: g = tanh(z_g), in -1 .. 1, so that the memory can be pushed down "
         "as well as up; only the three gates (i, f, o) are sigmoids.", dict(candidate=jax.nn.sigmoid)),
        ("tanh and sigmoid are swapped: the gates i, f, o take a sigmoid (a fraction between 0 and 1, how much "
         "to let through), the candidate g a tanh.", dict(gate=jnp.tanh, candidate=jax.nn.sigmoid)),
        ("the candidate and the output gate's functions are swapped: g = tanh(z_g), o = sigmoid(z_o).",
         dict(candidate=jax.nn.sigmoid, output=jnp.tanh)),
        ("1 is added to the forget gate's pre-activation in the forward pass (TensorFlow's old forget_bias): the "
         "lesson puts that 1 into the bias's initial value instead, where training can move it.",
         dict(forget_plus=1.0)),
        ("the carry is read and returned as (h, c): the lesson's (and Flax's) carry is (c, h), the cell state "
         "first.", dict(carry_order="hc")),
        ("the step emits c' as its output: the output is h' = o * tanh(c'), the same as the carry's second half.",
         dict(emit="c")),
        ("h' = o * c': the new cell state goes through a tanh before the output gate, h' = o * tanh(c').",
         dict(cell_tanh=False)),
        ("c' = f * c + g: the candidate must be scaled by the input gate, c' = f * c + i * g.",
         dict(input_gate=False)),
        ("h' uses the old cell state: h' = o * tanh(c') with the c' just computed, not the c the step was given.",
         dict(old_c=True)),
    ]
    return found


def _diagnose_cell(params, carry, x, pick):
    """A diagnose function: the known cell mistake whose output (pick(out) of each variant) is the learner's."""
    def diagnose(got):
        for why, options in _cell_candidates():
            try:
                if checks.matches(got, _f64(pick(_variant_cell(params, carry, x, **options))), rtol=1e-4, atol=1e-5):
                    return why
            except Exception:
                continue
        return None
    return diagnose


# ----------------------------------------------------------------------------------------------------
# LSTMCell


def _learner_cell(impl, hidden):
    cls = impl.LSTMCell
    _not_started_yet(getattr(cls, "__call__", None))
    try:
        return cls(hidden)
    except TypeError as err:
        checks.fail(f"LSTMCell({hidden}) could not be built ({err}): its one field is hidden_size, the width H of "
                    "c and h.")


def _cell_call(impl, params, carry, x, what="LSTMCell"):
    cell = _learner_cell(impl, carry[1].shape[-1])
    out = cell.apply({"params": params}, carry, x)
    return _split_cell_output(out, carry[1].shape, what)


def _split_cell_output(out, shape, what):
    if not (isinstance(out, (tuple, list)) and len(out) == 2 and isinstance(out[0], (tuple, list))
            and len(out[0]) == 2):
        checks.fail(f"{what} should return ((c', h'), h'), the new carry and the step's output, as Flax's cells "
                    f"do; it returned {_describe(out)}.")
    (new_c, new_h), y = out
    for value, name in ((new_c, "c'"), (new_h, "h'"), (y, "the output")):
        checks.assert_shape(value, shape, f"{what}'s {name}", hint="c and h are (B, hidden_size) each.")
    return _f64(new_c), _f64(new_h), _f64(y)


def _describe(out):
    if isinstance(out, (tuple, list)):
        return f"a {type(out).__name__} of {len(out)}: (" + ", ".join(
            _describe(o) if isinstance(o, (tuple, list)) else f"shape {tuple(np.shape(o))}" for o in out) + ")"
    return f"a {type(out).__name__} of shape {tuple(np.shape(out))}"


def test_cell_parameters_and_forget_bias(impl):
    """LSTMCell's parameter tree is the lesson's fused layout, and its bias starts at 0 except the forget gate's, at 1"""
    cell = _learner_cell(impl, H)
    carry, x = _carry(1), jax.random.normal(jax.random.key(2), (B, D))
    variables = cell.init(jax.random.key(0), carry, x)
    params = variables.get("params", {}) if hasattr(variables, "get") else {}
    shapes = checks.tree_shapes(params)
    if shapes == checks.tree_shapes(_structs(_to_flax_shapes())):
        checks.fail("LSTMCell has Flax's eight Dense layers ('ii', 'if', ..., 'ho'): the lesson fuses them into two, "
                    "'ih' (kernel (D, 4H), no bias) and 'hh' (kernel (H, 4H), bias (4H,)), gates i, f, g, o along "
                    "the 4H axis, so that one matmul computes all four gates.")
    checks.assert_tree(params, _structs(_cell_shapes(D, H)), "LSTMCell's parameter tree")
    bias = _f64(params["hh"]["bias"])
    expected = np.zeros(4 * H)
    expected[H:2 * H] = 1.0
    if not np.array_equal(bias, expected):
        blocks = [bias[k * H:(k + 1) * H] for k in range(4)]
        if not np.any(bias):
            why = ("the bias is all zeros (Dense's default): initialise the forget gate's slice, H .. 2H, to 1 "
                   "(bias_init=forget_bias_init), so that at the start f = sigmoid(1) = 0.73 keeps most of the "
                   "memory instead of sigmoid(0) = 0.5 halving it at every step.")
        elif np.all(bias == 1.0):
            why = "every gate's bias is 1: only the forget gate's slice, H .. 2H, starts at 1; the others at 0."
        elif sum(bool(np.all(b == 1.0)) for b in blocks) == 1 and all(np.all(b == 0) or np.all(b == 1) for b in blocks):
            which = GATES[[bool(np.all(b == 1.0)) for b in blocks].index(True)]
            why = (f"the 1s sit on the slice of gate {which} ({GATE_NAMES[which]}): the forget gate is the second of "
                   "i, f, g, o, the slice H .. 2H.")
        else:
            why = "set the forget gate's slice H .. 2H to exactly 1 and the rest to 0."
        checks.fail(f"LSTMCell's initial bias ('hh' bias) starts {np.array2string(bias[:4 * H], precision=3)}, "
                    f"but it should be 0 except the forget gate's {H} values (H .. 2H), which are 1: {why}")
    for name, leaf in (("ih", params["ih"]["kernel"]), ("hh", params["hh"]["kernel"])):
        if not np.all(np.isfinite(_f64(leaf))) or not np.any(_f64(leaf)):
            checks.fail(f"LSTMCell's initial '{name}' kernel is all zeros (or not finite): initialise the kernels "
                        "randomly (Dense's default, or an orthogonal init for 'hh'), so that the hidden units differ.")


def _to_flax_shapes():
    return {**{"i" + g: {"kernel": (D, H)} for g in GATES}, **{"h" + g: {"kernel": (H, H), "bias": (H,)} for g in GATES}}


def test_cell_matches_flax(impl):
    """LSTMCell gives Flax's nn.LSTMCell and nn.OptimizedLSTMCell's new carry and output on the same parameters"""
    params = _random(_cell_shapes(D, H), seed=3)
    for seed, scale in ((4, 1.0), (5, 3.0)):  # a random carry, then a large one
        carry, x = _carry(seed, scale=scale), 2.0 * jax.random.normal(jax.random.key(seed + 10), (B, D))
        got_c, got_h, got_y = _cell_call(impl, params, carry, x)
        for cls in (nn.LSTMCell, nn.OptimizedLSTMCell):
            (c, h), y = _flax_cell(params, carry, x, cls)
            where = f"on a carry of scale {scale:g}, against flax's nn.{cls.__name__}"
            checks.assert_close(got_c, c, f"LSTMCell's new cell state c' ({where})", rtol=RTOL, atol=ATOL,
                                diagnose=_diagnose_cell(params, carry, x, lambda out: out[0][0]))
            checks.assert_close(got_h, h, f"LSTMCell's new hidden state h' ({where})", rtol=RTOL, atol=ATOL,
                                diagnose=_diagnose_cell(params, carry, x, lambda out: out[0][1]))
            checks.assert_close(got_y, y, f"LSTMCell's output ({where})", rtol=RTOL, atol=ATOL,
                                diagnose=_diagnose_cell(params, carry, x, lambda out: out[1]))


def test_cell_any_batch_shape(impl):
    """LSTMCell runs on one sequence (B = 1) and on inputs wider than the state, and under jax.jit"""
    params = _random(_cell_shapes(11, 2), seed=6)
    carry, x = _carry(7, batch=1, h=2), jax.random.normal(jax.random.key(8), (1, 11))
    cell = _learner_cell(impl, 2)
    out = jax.jit(lambda p, c, x: cell.apply({"params": p}, c, x))(params, carry, x)
    got_c, got_h, got_y = _split_cell_output(out, (1, 2), "LSTMCell under jax.jit")
    (c, h), y = _flax_cell(params, carry, x)
    checks.assert_close(got_h, h, "LSTMCell's h' for B = 1, D = 11, H = 2", rtol=RTOL, atol=ATOL,
                        diagnose=_diagnose_cell(params, carry, x, lambda out: out[0][1]))
    checks.assert_close(got_c, c, "LSTMCell's c' for B = 1, D = 11, H = 2", rtol=RTOL, atol=ATOL)


# ----------------------------------------------------------------------------------------------------
# lstm_scan


class _OracleCell(nn.Module):
    """Flax's OptimizedLSTMCell with the lesson's carry (c, h), the cell that lstm_scan's checks scan."""

    hidden_size: int
    batch: int = B  # what each step must be given: x_t (batch, D), c and h (batch, H)
    steps: int = T

    @nn.compact
    def __call__(self, carry, x):
        _check_step_input(tuple(np.shape(x)), self.batch, self.steps)
        return nn.OptimizedLSTMCell(self.hidden_size, name="cell")(carry, x)


def _check_step_input(shape, batch, steps):
    """A sentence, from inside lstm_scan's step, when the cell is not given one time step of every sequence."""
    if shape == (batch, D) or batch < 0:
        return
    if shape == (steps, D) and steps != batch:
        why = ("the scan runs over the batch axis: jax.lax.scan steps along the leading axis, which for xs (B, T, D) "
               "is the batch, so each step gets one whole sequence (T, D). Bring time first, "
               "jnp.swapaxes(xs, 0, 1), and swap the outputs back.")
    elif sorted(shape) == sorted((batch, steps)) or shape in ((D, steps), (D, batch), (steps, batch)):
        why = ("xs.T (or a transpose of all the axes) reverses every axis of (B, T, D); swap only the first two, "
               "jnp.swapaxes(xs, 0, 1) or xs.transpose(1, 0, 2).")
    else:
        why = "each step's input is one time step of every sequence, xs[:, t], of shape (B, D)."
    checks.fail(f"lstm_scan gave the cell an input of shape {shape} at a step, but each step's input is x_t (B, D) "
                f"= {(batch, D)} for xs (B, T, D) = {(batch, steps, D)}.\n  Likely cause: {why}")


def _scan_inputs(seed=20, batch=B, steps=T):
    params = {"cell": _to_flax(_random(_cell_shapes(D, H), seed=seed))}
    carry = _carry(seed + 1, batch=batch)
    xs = 1.5 * jax.random.normal(jax.random.key(seed + 2), (batch, steps, D))
    return params, carry, xs


def _oracle_loop(params, carry, xs, *, reverse=False, late=False, frozen=False, reshape=False, batch_axis=False):
    """A Python loop over time of Flax's cell: (final carry, hs (B, T, H)), or a known mistake's."""
    cell = _OracleCell(H, batch=-1)  # (the oracle's own calls are not checked)
    steps = jnp.swapaxes(xs, 0, 1)  # (T, B, D)
    if reshape:
        steps = xs.reshape(xs.shape[1], xs.shape[0], xs.shape[2])
    if batch_axis:
        steps = xs  # the batch axis scanned as if it were time
    start, outs, carries = carry, [], [carry]
    order = range(steps.shape[0])[::-1] if reverse else range(steps.shape[0])
    for t in order:
        new, y = cell.apply({"params": params}, start if frozen else carries[-1], steps[t])
        outs.append(carries[-1][1] if late else y)
        carries.append(new)
    hs = jnp.stack(outs[::-1] if reverse else outs)  # (T, B, H)
    if reshape:
        return carries[-1], hs.reshape(xs.shape[0], xs.shape[1], -1), carries
    return carries[-1], jnp.swapaxes(hs, 0, 1), carries


def _call_scan(impl, params, carry, xs):
    fn = _function(impl, "lstm_scan")
    out = fn(_OracleCell(H, batch=xs.shape[0], steps=xs.shape[1]), params, carry, xs)
    if not (isinstance(out, (tuple, list)) and len(out) == 2 and isinstance(out[0], (tuple, list))
            and len(out[0]) == 2):
        checks.fail(f"lstm_scan should return (carry, hs): the carry (c, h) after the last step and the outputs "
                    f"(B, T, H); it returned {_describe(out)}.")
    (c, h), hs = out
    batch, steps = xs.shape[:2]
    hint = ("It is laid out (T, B, H): the scan stacks its outputs along time first; swap the axes back, "
            "jnp.swapaxes(hs, 0, 1)." if tuple(np.shape(hs)) == (steps, batch, H) else
            "One output per step of every sequence: (B, T, H).")
    hs = checks.assert_shape(hs, (batch, steps, H), "lstm_scan's outputs hs", hint=hint)
    checks.assert_shape(c, (batch, H), "the final carry's c")
    checks.assert_shape(h, (batch, H), "the final carry's h")
    return (_f64(c), _f64(h)), _f64(hs)


SCAN_MISTAKES = [
    ("the outputs are one step late: each step emits the h it was given instead of the new one; the scan's step "
     "returns (new_carry, y) with y the cell's output.", dict(late=True)),
    ("the sequence is run backwards (reverse=True, or the outputs reversed): an LSTM reads time forwards.",
     dict(reverse=True)),
    ("the time axis is brought forward with a reshape: xs.reshape(T, B, D) mixes the batch and time axes; "
     "transpose instead, jnp.swapaxes(xs, 0, 1) (and back for the outputs).", dict(reshape=True)),
    ("every step starts again from the carry lstm_scan was given: the step function must return the new carry, "
     "which the scan hands to the next step.", dict(frozen=True)),
]


def _scan_diagnose(params, carry, xs, pick):
    def diagnose(got):
        for why, options in SCAN_MISTAKES:
            try:
                if checks.matches(got, _f64(pick(_oracle_loop(params, carry, xs, **options))), rtol=1e-4, atol=1e-5):
                    return why
            except Exception:
                continue
        _, _, carries = _oracle_loop(params, carry, xs)
        if pick is _final_h and checks.matches(got, _f64(carries[-2][1]), rtol=1e-4, atol=1e-5):
            return "the carry returned is the one before the last step: return the carry the scan ends with."
        if pick is _final_h and checks.matches(got, _f64(carry[1]), rtol=1e-4, atol=1e-5):
            return "the carry returned is the one lstm_scan was given: return the carry the scan ends with."
        return None
    return diagnose


def _final_h(out):
    return out[0][1]


def test_scan_matches_a_python_loop(impl):
    """lstm_scan gives the outputs and final carry of a Python loop over time of the same cell"""
    params, carry, xs = _scan_inputs()
    try:
        (c, h), hs = _call_scan(impl, params, carry, xs)
    except (checks.CheckFailed, NotImplementedError):
        raise
    except Exception as err:
        _explain_scan_error(impl, err)
        raise
    expected_carry, expected_hs, _ = _oracle_loop(params, carry, xs)
    checks.assert_close(hs, expected_hs, "lstm_scan's outputs hs (B, T, H), against a Python loop over time",
                        rtol=RTOL, atol=ATOL, diagnose=_scan_diagnose(params, carry, xs, lambda out: out[1]))
    checks.assert_close(h, expected_carry[1], "the h of the carry lstm_scan returns, against the loop's last",
                        rtol=RTOL, atol=ATOL, diagnose=_scan_diagnose(params, carry, xs, _final_h))
    checks.assert_close(c, expected_carry[0], "the c of the carry lstm_scan returns, against the loop's last",
                        rtol=RTOL, atol=ATOL)


def _explain_scan_error(impl, err):
    """An error on (B, T, D) = (3, 7, 6): if the same code runs when B == T, it scanned the batch axis."""
    params, carry, xs = _scan_inputs(batch=T)
    try:
        _call_scan(impl, params, carry, xs)
    except Exception:
        return
    where = outcomes.learner_frame(err)
    checks.fail(f"lstm_scan fails on xs of shape {(B, T, D)} ({type(err).__name__}: "
                f"{str(err).strip().splitlines()[0][:200] if str(err).strip() else ''})"
                + (f"\n    at {where}" if where else "")
                + f"\n  but runs when the batch and time sizes are equal ({T} and {T}).\n  Likely cause: the scan "
                "runs over the batch axis: jax.lax.scan steps along the leading axis, which for xs (B, T, D) is "
                "the batch. Bring time first, jnp.swapaxes(xs, 0, 1), and swap the outputs back.")


def test_scan_one_step_and_one_sequence(impl):
    """lstm_scan on T = 1 is one cell step, and on B = 1 a single sequence"""
    for batch, steps in ((B, 1), (1, T)):
        params, carry, xs = _scan_inputs(seed=30 + steps, batch=batch, steps=steps)
        (c, h), hs = _call_scan(impl, params, carry, xs)
        expected_carry, expected_hs, _ = _oracle_loop(params, carry, xs)
        what = f"lstm_scan's outputs for B = {batch}, T = {steps}"
        checks.assert_close(hs, expected_hs, what, rtol=RTOL, atol=ATOL,
                            diagnose=_scan_diagnose(params, carry, xs, lambda out: out[1]))
        checks.assert_close(h, expected_carry[1], f"the final h for B = {batch}, T = {steps}", rtol=RTOL, atol=ATOL,
                            diagnose=_scan_diagnose(params, carry, xs, _final_h))


def _scan_program(impl, steps):
    params, carry, xs = _scan_inputs(steps=steps)
    fn = _function(impl, "lstm_scan")
    return jax.make_jaxpr(lambda p, c, x: fn(_OracleCell(H, steps=steps), p, c, x))(params, carry, xs)


def test_scan_is_one_scan_over_time(impl):
    """lstm_scan traces to a jax.lax.scan of T steps whose program does not grow with T"""
    short, long = _scan_program(impl, 4), _scan_program(impl, 16)
    size = lambda program: sum(1 for _ in checks.program_equations(program.jaxpr))  # noqa: E731
    scans = [eqn for eqn, _ in checks.program_equations(long.jaxpr) if eqn.primitive.name == "scan"]
    loops = [eqn for eqn, _ in checks.program_equations(long.jaxpr) if eqn.primitive.name in ("scan", "while")]
    if size(long) > 1.5 * size(short) or not loops:
        checks.fail(f"lstm_scan's program has {size(short)} operations for T = 4 and {size(long)} for T = 16"
                    + ("" if loops else ", and no loop") + ": the steps are unrolled, one copy of the cell per time "
                    "step (a Python loop over t does that). Write the loop with jax.lax.scan(step, carry, xs), so "
                    "that one step is compiled whatever the length.")
    lengths = sorted({int(eqn.params["length"]) for eqn in scans})
    if scans and 16 not in lengths:
        checks.fail(f"lstm_scan's scan runs {', '.join(map(str, lengths))} steps for T = 16 (batch {B}): it should "
                    "run once per time step. jax.lax.scan steps along the leading axis: put time first.")
    if scans and all(int(eqn.params.get("unroll", 1)) >= 16 for eqn in scans if int(eqn.params["length"]) == 16):
        checks.fail("lstm_scan's scan is built with unroll=True: XLA then compiles one copy of the cell per step, as "
                    "a Python loop would. Leave unroll at its default, 1.")


# ----------------------------------------------------------------------------------------------------
# CharLSTM


class FlaxCharLSTM(nn.Module):
    """The lesson's CharLSTM from Flax's own layers (its LSTM layers in Flax's tree: _model_to_flax); with
    `record`, every call notes its tokens, the state it was given and the state it returns."""

    vocab_size: int
    n_embd: int
    n_layer: int = 1
    record: bool = False

    @nn.nowrap
    def initial_state(self, batch_size):
        zeros = jnp.zeros((batch_size, self.n_embd), jnp.float32)
        return tuple((zeros, zeros) for _ in range(self.n_layer))

    @nn.compact
    def __call__(self, idx, state=None, deterministic=True):
        given = state is not None
        start = self.initial_state(idx.shape[0]) if state is None else state
        x = nn.Embed(self.vocab_size, self.n_embd, name="token_embedding")(idx)  # (B, T, C)
        new_state = []
        for layer in range(self.n_layer):
            rnn = nn.RNN(nn.OptimizedLSTMCell(self.n_embd, name=f"lstm_{layer}"), return_carry=True)
            carry, x = rnn(x, initial_carry=tuple(start[layer]))
            new_state.append(carry)
        logits = nn.Dense(self.vocab_size, name="lm_head")(x)
        if self.record:
            leaves_in = [jnp.asarray(v) for v in jax.tree_util.tree_leaves(start)]
            jax.debug.callback(functools.partial(_note_call, given=given), idx, leaves_in,
                               jax.tree_util.tree_leaves(new_state), ordered=True)
        return (logits, tuple(new_state)) if given else logits


_CALLS = []  # (tokens, whether a state was given, the state given, the state returned) per recorded call


def _note_call(idx, state_in, state_out, given):
    _CALLS.append((np.asarray(idx), bool(given), [np.asarray(s) for s in state_in], [np.asarray(s) for s in state_out]))


def _learner_model(impl, **fields):
    fields = fields or dict(vocab_size=V, n_embd=C, n_layer=L)
    _not_started_yet(getattr(impl.CharLSTM, "__call__", None))
    try:
        return impl.CharLSTM(**fields)
    except TypeError as err:
        checks.fail(f"CharLSTM({', '.join(f'{k}={v}' for k, v in fields.items())}) could not be built ({err}): keep "
                    "the fields vocab_size, n_embd and n_layer.")


def _tokens(seed, batch=B, steps=T):
    return jax.random.randint(jax.random.key(seed), (batch, steps), 0, V)


def _random_state(seed, batch=B):
    keys = jax.random.split(jax.random.key(seed), L)
    return tuple(_carry(int(jax.random.randint(k, (), 0, 10_000)), batch=batch, h=C) for k in keys)


def _model_params():
    return _random(_model_shapes(V, C, L), seed=40)


def _oracle_model(params, idx, state=None, **variant):
    model = FlaxCharLSTM(V, C, L)
    flax_params = {"params": _model_to_flax(params)}
    if not variant:
        return model.apply(flax_params, idx, state)
    return _variant_model(params, idx, state, **variant)


def _variant_model(params, idx, state, ignore_state=False, return_given=False, shared_state=False,
                   embeddings_every_layer=False):
    """The model with one of the known mistakes, layer by layer with Flax's cell."""
    start = FlaxCharLSTM(V, C, L).initial_state(idx.shape[0]) if (state is None or ignore_state) else state
    if shared_state:
        start = tuple(start[0] for _ in range(L))
    embedded = params["token_embedding"]["embedding"][idx]  # (B, T, C)
    x, new_state = embedded, []
    for layer in range(L):
        rnn = nn.RNN(nn.OptimizedLSTMCell(C), return_carry=True)
        carry, out = rnn.apply({"params": {"cell": _to_flax(params[f"lstm_{layer}"])}},
                               embedded if embeddings_every_layer else x, initial_carry=tuple(start[layer]))
        x = out
        new_state.append(carry)
    logits = x @ params["lm_head"]["kernel"] + params["lm_head"]["bias"]
    return logits, tuple(state if return_given else new_state)


MODEL_MISTAKES = [
    ("the state given is not used: every call starts from the zero state. Start layer l from state[l] when a state "
     "is given.", dict(ignore_state=True)),
    ("every layer starts from the first layer's state: layer l starts from state[l].", dict(shared_state=True)),
    ("every layer reads the embeddings: layer l + 1 reads layer l's outputs, so the layers stack.",
     dict(embeddings_every_layer=True)),
]


def _model_tree(model):
    return jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 4), jnp.int32)))


def _require_model_tree(model):
    try:
        variables = _model_tree(model)
    except Exception:
        return  # the checks that run the model say what fails
    params = variables.get("params", {}) if hasattr(variables, "get") else {}
    if checks.tree_shapes(params) != checks.tree_shapes(_structs(_model_shapes(V, C, L))):
        checks.fail("not checked: CharLSTM's parameter tree is not the lesson's, so the shared parameters cannot be "
                    "loaded into it (the parameter-tree check says what differs).")


def _apply(model, params, idx, state=None, impl=None):
    try:
        if state is None:
            return model.apply({"params": params}, idx)
        return model.apply({"params": params}, idx, state)
    except (checks.CheckFailed, NotImplementedError):
        raise
    except Exception as err:
        parts = _learner_parts_fail(impl) if impl is not None else None
        if parts:
            where = outcomes.learner_frame(err)
            checks.fail(f"CharLSTM fails ({type(err).__name__}: "
                        f"{str(err).strip().splitlines()[0][:200] if str(err).strip() else ''})"
                        + (f"\n    at {where}" if where else "") + f"\n  Likely cause: {parts}")
        raise


def _learner_parts_fail(impl):
    """A sentence when the learner's LSTMCell or lstm_scan fail on their own (they raise)."""
    try:
        _cell_call(impl, _random(_cell_shapes(C, C), seed=46), _carry(47, h=C), jnp.ones((B, C)))
    except NotImplementedError:
        return None
    except Exception:
        return "your LSTMCell fails on its own, and CharLSTM runs it: fix LSTMCell first (see its checks)."
    try:
        _call_scan(impl, *_scan_inputs())
    except NotImplementedError:
        return None
    except Exception:
        return "your lstm_scan fails on its own, and CharLSTM runs it: fix lstm_scan first (see its checks)."
    return None


def _split_model_output(out, batch, steps, what):
    if not (isinstance(out, (tuple, list)) and len(out) == 2):
        checks.fail(f"{what} should return (logits, state): the logits (B, T, vocab_size) and the state after the "
                    f"last token; it returned {_describe(out)}.")
    logits, state = out
    logits = checks.assert_shape(logits, (batch, steps, V), f"{what}'s logits")
    leaves = jax.tree_util.tree_leaves(state)
    if len(leaves) != 2 * L or any(tuple(np.shape(leaf)) != (batch, C) for leaf in leaves):
        checks.fail(f"{what}'s state should be {L} pairs (c, h), one per layer, each (B, n_embd) = {(batch, C)}; "
                    f"it is {_describe(state) if isinstance(state, (tuple, list)) else type(state).__name__}.")
    return _f64(logits), [_f64(leaf) for leaf in leaves]


def _learner_parts_differ(impl, params, seed):
    """A sentence when the learner's LSTMCell or lstm_scan, on their own, already differ from Flax's."""
    carry, x = _carry(seed, h=C), jax.random.normal(jax.random.key(seed), (B, C))
    try:
        _, got_h, _ = _cell_call(impl, params["lstm_0"], carry, x)
        (_, h), _ = _flax_cell(params["lstm_0"], carry, x)
        if not checks.matches(got_h, _f64(h), rtol=1e-4, atol=1e-5):
            return "your LSTMCell differs from Flax's cell, and CharLSTM runs it: fix LSTMCell first (see its check)."
    except Exception:
        return None
    try:
        scan_params, scan_carry, xs = _scan_inputs()
        (_, _), hs = _call_scan(impl, scan_params, scan_carry, xs)
        if not checks.matches(hs, _f64(_oracle_loop(scan_params, scan_carry, xs)[1]), rtol=1e-4, atol=1e-5):
            return "your lstm_scan differs from a loop over time, and CharLSTM runs it: fix lstm_scan first."
    except Exception:
        return None
    return None


def _model_diagnose(impl, params, idx, state, pick):
    def diagnose(got):
        parts = _learner_parts_differ(impl, params, seed=41)
        if parts:
            return parts
        for why, options in MODEL_MISTAKES:
            try:
                if checks.matches(got, _f64(pick(_variant_model(params, idx, state, **options))), rtol=1e-4,
                                  atol=1e-5):
                    return why
            except Exception:
                continue
        return None
    return diagnose


def test_model_parameter_tree(impl):
    """CharLSTM's parameter tree is the lesson's: token_embedding, lstm_0 .. lstm_{n_layer-1} (LSTMCell's tree), lm_head"""
    model = _learner_model(impl)
    variables = _model_tree(model)
    params = variables.get("params", {}) if hasattr(variables, "get") else {}
    checks.assert_tree(params, _structs(_model_shapes(V, C, L)), "CharLSTM's parameter tree")
    real = model.init(jax.random.key(0), jnp.zeros((1, 4), jnp.int32))["params"]
    for layer in range(L):
        bias = _f64(real[f"lstm_{layer}"]["hh"]["bias"])
        if not (np.all(bias[C:2 * C] == 1.0) and not np.any(bias[:C]) and not np.any(bias[2 * C:])):
            checks.fail(f"CharLSTM's initial lstm_{layer}/hh/bias is not 0 with the forget gate's slice at 1: build "
                        "each layer's parameters with LSTMCell's own init, cell.init(key, carry, x)['params'].")


def test_model_matches_flax(impl):
    """CharLSTM gives the logits and the final state of the same model built from Flax's layers, from the zero state and from a given one"""
    model = _learner_model(impl)
    _require_model_tree(model)
    params, idx = _model_params(), _tokens(42)
    logits = _apply(model, params, idx, impl=impl)
    if isinstance(logits, (tuple, list)):
        checks.fail(f"called without a state, CharLSTM returned {_describe(logits)}: it should return the logits "
                    "alone, so that the sampler (and anything that calls a GPT as model.apply(params, idx)) works "
                    "unchanged; return (logits, state) only when a state is given.")
    checks.assert_close(checks.assert_shape(logits, (B, T, V), "CharLSTM's logits"), _oracle_model(params, idx),
                        "CharLSTM's logits from the zero state (no state given)", rtol=RTOL, atol=ATOL,
                        diagnose=_model_diagnose(impl, params, idx, None, lambda out: out[0]))
    state = _random_state(43)
    got_logits, got_state = _split_model_output(_apply(model, params, idx, state, impl=impl), B, T, "CharLSTM with a state")
    expected_logits, expected_state = _oracle_model(params, idx, state)
    checks.assert_close(got_logits, expected_logits, "CharLSTM's logits from a given (random) state", rtol=RTOL,
                        atol=ATOL, diagnose=_model_diagnose(impl, params, idx, state, lambda out: out[0]))
    expected_leaves = jax.tree_util.tree_leaves(expected_state)
    names = [f"layer {layer}'s {part}" for layer in range(L) for part in ("c", "h")]
    for name, got, expected in zip(names, got_state, expected_leaves):
        def diagnose(value, name=name):
            given = dict(zip(names, jax.tree_util.tree_leaves(state)))[name]
            if checks.matches(value, _f64(given), rtol=1e-4, atol=1e-5):
                return ("the state returned is the one CharLSTM was given: return the carries lstm_scan returns, "
                        "one (c, h) per layer.")
            index = names.index(name)
            other = expected_leaves[index ^ 1]
            if checks.matches(value, _f64(other), rtol=1e-4, atol=1e-5):
                return "each layer's pair is returned as (h, c): the state's pairs are (c, h), as the carry's."
            for j, leaf in enumerate(expected_leaves):
                if j // 2 != index // 2 and checks.matches(value, _f64(leaf), rtol=1e-4, atol=1e-5):
                    return (f"this is the state of layer {j // 2}, returned where layer {index // 2}'s belongs: "
                            "return the layers' carries in layer order, state[l] for layer l, as they are given.")
            return _model_diagnose(impl, params, idx, state,
                                   lambda out: jax.tree_util.tree_leaves(out[1])[index])(value)
        checks.assert_close(got, expected, f"the state CharLSTM returns, {name} after the last token", rtol=RTOL,
                            atol=ATOL, diagnose=diagnose)


def test_model_carries_state_across_chunks(impl):
    """Two calls on consecutive chunks, the second from the state the first returned, equal one call on the whole sequence"""
    model = _learner_model(impl)
    _require_model_tree(model)
    params, idx, state = _model_params(), _tokens(44, steps=11), _random_state(45)
    whole_logits, whole_state = _split_model_output(_apply(model, params, idx, state, impl=impl), B, 11, "CharLSTM")
    first = _apply(model, params, idx[:, :4], state)
    first_logits, _ = _split_model_output(first, B, 4, "CharLSTM")
    middle_state = first[1]
    second_logits, end_state = _split_model_output(_apply(model, params, idx[:, 4:], middle_state), B, 7, "CharLSTM")
    chunked = np.concatenate([first_logits, second_logits], axis=1)

    def diagnose(got):
        if checks.matches(got[:, 4:], _f64(_apply(model, params, idx[:, 4:])), rtol=1e-4, atol=1e-5):
            return ("the second chunk's logits are those of a fresh start: the state the first call returned is "
                    "not where the second starts (the state returned, or the state given, is not used).")
        return None

    checks.assert_close(chunked, whole_logits, "the logits of chunks [0, 4) and [4, 11), the second started from the "
                        "state the first returned, against one call on tokens [0, 11)", rtol=RTOL, atol=ATOL,
                        diagnose=diagnose)
    for k, (got, expected) in enumerate(zip(end_state, whole_state)):
        checks.assert_close(got, expected, f"the state after the second chunk (leaf {k}) against the state after "
                            "the whole sequence", rtol=RTOL, atol=ATOL)


def test_model_samples_with_the_sampler(impl):
    """The challenge's sampler (jaxgpt.sampling.sample) runs on CharLSTM unchanged and picks the oracle's greedy tokens"""
    from jaxgpt import sampling

    model = _learner_model(impl)
    _require_model_tree(model)
    params = _model_params()
    prompt = np.array([3, 1, 4, 1, 5], np.int32)
    try:
        got = sampling.sample(model, {"params": params}, prompt, jax.random.key(0), 9, temperature=0.0)
    except (checks.CheckFailed, NotImplementedError):
        raise
    except Exception as err:
        where = outcomes.learner_frame(err)
        checks.fail(f"jaxgpt.sampling.sample could not run CharLSTM ({type(err).__name__}: "
                    f"{str(err).strip().splitlines()[0][:200] if str(err).strip() else ''})"
                    + (f"\n    at {where}" if where else "") + "\n  The sampler calls model.apply({'params': params}, "
                    "idx, deterministic=True) on (1, T) tokens and reads logits (1, T, vocab_size): without a state "
                    "CharLSTM must return the logits alone, and accept the deterministic keyword.")
    expected = sampling.sample(FlaxCharLSTM(V, C, L), {"params": _model_to_flax(params)}, prompt, jax.random.key(0), 9,
                               temperature=0.0)
    if not np.array_equal(np.asarray(got), np.asarray(expected)):
        checks.fail(f"greedy sampling (temperature 0) from CharLSTM gives {np.asarray(got).tolist()}, but the same "
                    f"parameters in the Flax-built model give {np.asarray(expected).tolist()}: the logits differ "
                    "(see the check against Flax's layers).")


# ----------------------------------------------------------------------------------------------------
# stream_chunks


def _marked_text(n):
    """n distinct token values, so that every token of a chunk says where in the text it stood."""
    return jnp.asarray((np.arange(n) * 7919) % 10007, jnp.int32)


def _positions(values, n):
    lookup = {int(v): i for i, v in enumerate(np.asarray(_marked_text(n)))}
    return np.vectorize(lambda v: lookup.get(int(v), -1))(np.asarray(values))


def _expected_chunks(n, batch, block):
    steps = (n - 1) // (batch * block)
    x = np.arange(batch * steps * block).reshape(batch, steps, block).transpose(1, 0, 2)  # positions
    return x, x + 1


CHUNK_CASES = ((100, 3, 7), (43, 3, 7), (64, 5, 2), (42, 3, 7))  # spare tokens; none spare; many chunks; one only


def _call_chunks(impl, data, batch, block):
    fn = _function(impl, "stream_chunks")
    try:
        out = fn(data, batch, block)
    except (checks.CheckFailed, NotImplementedError):
        raise
    except Exception as err:
        n = len(data)
        if n % (batch * block) == 0:  # the one length where len(data) // (B * T) and (len(data) - 1) // (B * T) part
            where = outcomes.learner_frame(err)
            checks.fail(f"stream_chunks(data of {n} tokens, batch_size={batch}, block_size={block}) raised "
                        f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
                        + (f"\n    at {where}" if where else "")
                        + f"\n  Likely cause: {n} is a multiple of batch_size * block_size = {batch * block}, and N "
                        "counts the chunks of the whole text, len(data) // (B * T); the targets need one token past "
                        f"the last chunk, so N = (len(data) - 1) // (B * T) = {(n - 1) // (batch * block)}.")
        raise
    if not (isinstance(out, (tuple, list)) and len(out) == 2):
        checks.fail(f"stream_chunks should return (x, y), two arrays (N, B, T); it returned {_describe(out)}.")
    return checks.as_array(out[0], "stream_chunks' x"), checks.as_array(out[1], "stream_chunks' y")


def _layout_diagnosis(pos, n, batch, block):
    steps = (n - 1) // (batch * block)
    per_stream = (n - 1) // batch
    candidates = [
        ("consecutive chunks sit side by side in a batch (chunk i * B + b in row b): then row b of the next step "
         "does not continue row b of this one, and the state carried in row b belongs to another stretch of text. "
         "Stream b is the stretch starting at b * N * T; chunk i of it is row b of step i.",
         np.arange(steps * batch * block).reshape(steps, batch, block)),
        (f"stream b starts at b * (len(data) - 1) // B: the lesson trims the text to B * N * T tokens first, so "
         "stream b starts at b * N * T.",
         (np.arange(batch)[None, :, None] * per_stream + np.arange(steps)[:, None, None] * block
          + np.arange(block)[None, None, :])),
    ]
    for why, expected in candidates:
        if pos.shape == expected.shape and np.array_equal(pos, expected):
            return why
    return None


def test_stream_chunks_layout(impl):
    """stream_chunks lays the text out as B streams of consecutive chunks, the targets one token on, exactly"""
    for n, batch, block in CHUNK_CASES:
        data = _marked_text(n)
        x, y = _call_chunks(impl, data, batch, block)
        ex, ey = _expected_chunks(n, batch, block)
        steps = ex.shape[0]
        what = f"stream_chunks(data of {n} tokens, batch_size={batch}, block_size={block})"
        if x.shape != ex.shape:
            hint = ""
            if x.shape == (batch, steps, block):
                hint = " It is laid out (B, N, T): put the chunks first, (N, B, T), so that x[i] is step i's batch."
            elif len(x.shape) == 3 and x.shape[1:] == (batch, block):
                hint = (f" N = (len(data) - 1) // (batch_size * block_size) = {steps}: the targets need one token "
                        "past the last chunk, so the last token cannot start a chunk.")
            checks.fail(f"{what} returned x of shape {tuple(x.shape)}; it should be (N, B, T) = {ex.shape}.{hint}")
        checks.assert_shape(y, ex.shape, f"{what}'s y")
        if not np.issubdtype(x.dtype, np.integer) or not np.issubdtype(y.dtype, np.integer):
            checks.fail(f"{what} returned {x.dtype} and {y.dtype}: token ids are integers (int32).")
        pos_x, pos_y = _positions(x, n), _positions(y, n)
        if not np.array_equal(pos_x, ex):
            first = tuple(int(i) for i in np.argwhere(pos_x != ex)[0])
            message = (f"{what}: x{list(first)} is the token at position {pos_x[first]} of the text, but it should be "
                       f"the one at {ex[first]} (x[i, b] = data[(b * N + i) * T : (b * N + i + 1) * T]).")
            why = _layout_diagnosis(pos_x, n, batch, block)
            checks.fail(message + (f"\n  Likely cause: {why}" if why else ""))
        if not np.array_equal(pos_y, ey):
            first = tuple(int(i) for i in np.argwhere(pos_y != ey)[0])
            why = ("the targets are the inputs themselves: y is the next token, data shifted by one."
                   if np.array_equal(pos_y, pos_x) else
                   "the targets are shifted the wrong way: y[i, b, t] is the token after x[i, b, t]."
                   if np.array_equal(pos_y, pos_x - 1) else None)
            checks.fail(f"{what}: y{list(first)} is the token at position {pos_y[first]}, but it should be the one at "
                        f"{ey[first]}, one after x's." + (f"\n  Likely cause: {why}" if why else ""))


# ----------------------------------------------------------------------------------------------------
# train_tbptt


TRAIN_MODEL = FlaxCharLSTM(V, C, 1, record=True)
TRAIN_TEXT = jnp.asarray(np.random.default_rng(15).integers(0, V, TRAIN_TOKENS), jnp.int32)


@functools.lru_cache(maxsize=None)
def _train_start():
    params = TRAIN_MODEL.init(jax.random.key(50), jnp.zeros((1, TT), jnp.int32))["params"]
    params = jax.tree_util.tree_map(lambda p: p + 0.3 * jax.random.normal(jax.random.key(51), p.shape), params)
    return train_state.TrainState.create(apply_fn=TRAIN_MODEL.apply, params=params, tx=optax.adamw(LEARNING_RATE))


def _copy(state):
    return jax.tree_util.tree_map(jnp.array, state)


def _oracle_loss(params, lstm_state, x, y):
    logits, lstm_state = FlaxCharLSTM(V, C, 1).apply({"params": params}, x, lstm_state)
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), lstm_state


@jax.jit
def _oracle_step(state, lstm_state, x, y):
    (loss, lstm_state), grads = jax.value_and_grad(_oracle_loss, has_aux=True)(state.params, lstm_state, x, y)
    return state.apply_gradients(grads=grads), lstm_state, loss


def _oracle_training(chunks, reset_every=False, reset_passes=True, steps=STEPS):
    """The lesson's loop with the oracle step: (final state, losses); or a known mistake's."""
    xs, ys = chunks
    state = _train_start()
    zeros = FlaxCharLSTM(V, C, 1).initial_state(TB)
    lstm_state, losses = zeros, []
    for k in range(steps):
        i = k % xs.shape[0]
        if reset_every or (reset_passes and i == 0):
            lstm_state = zeros
        state, lstm_state, loss = _oracle_step(state, lstm_state, jnp.asarray(xs[i]), jnp.asarray(ys[i]))
        losses.append(float(loss))
    return state, np.array(losses)


def _lesson_chunks():
    data = np.asarray(TRAIN_TEXT)
    pos_x, pos_y = _expected_chunks(TRAIN_TOKENS, TB, TT)
    return data[pos_x], data[pos_y]


def _call_train(impl):
    fn = _function(impl, "train_tbptt")
    start = _copy(_train_start())  # (its init ran the recording model once)
    jax.effects_barrier()
    _CALLS.clear()
    try:
        out = fn(TRAIN_MODEL, start, TRAIN_TEXT, STEPS, TB, TT)
    except (checks.CheckFailed, NotImplementedError):
        raise
    except Exception as err:
        name = type(err).__name__
        if "Tracer" in name or "Concretization" in name:
            where = outcomes.learner_frame(err)
            checks.fail(f"train_tbptt fails while being traced: {name}" + (f"\n    at {where}" if where else "")
                        + "\n  Under jax.jit, model, num_steps, batch_size and block_size decide shapes and code, so "
                        "they must be static: static_argnames=('model', 'num_steps', 'batch_size', 'block_size').")
        raise
    jax.effects_barrier()
    if not (isinstance(out, (tuple, list)) and len(out) == 2):
        checks.fail(f"train_tbptt should return (state, losses); it returned {_describe(out)}.")
    state, losses = out
    if not hasattr(state, "params") or not hasattr(state, "opt_state"):
        checks.fail(f"the state train_tbptt returns should be the TrainState, but it is a {type(state).__name__}.")
    losses = checks.assert_shape(losses, (STEPS,), "train_tbptt's losses",
                                 hint="One loss per step: the scan stacks each step's loss, (num_steps,).")
    return state, checks.assert_finite(losses, "train_tbptt's losses"), list(_CALLS)


def _steps_seen(calls):
    """One recorded call per training step (a step that runs the model twice on the same chunk counts once)."""
    if len(calls) == 2 * STEPS and all(np.array_equal(calls[2 * k][0], calls[2 * k + 1][0]) for k in range(STEPS)):
        return calls[::2]
    return calls


def test_train_feeds_consecutive_chunks(impl):
    """train_tbptt trains step k on chunk k % N of stream_chunks' layout"""
    _, _, calls = _call_train(impl)
    calls = _steps_seen(calls)
    if len(calls) != STEPS:
        checks.fail(f"train_tbptt ran the model {len(calls)} times in {STEPS} steps: once per step, on that step's "
                    "chunk (jax.lax.scan over the steps, one model call inside).")
    xs, _ = _lesson_chunks()
    for k, (idx, _, _, _) in enumerate(calls):
        if idx.shape != (TB, TT):
            checks.fail(f"train_tbptt's step {k} ran the model on tokens of shape {idx.shape}; each step's chunk is "
                        f"(batch_size, block_size) = {(TB, TT)}: x[k % N] of stream_chunks.")
        if not np.array_equal(idx, xs[k % TN]):
            message = f"train_tbptt's step {k} trained on a batch that is not chunk {k} % N = {k % TN} of the text."
            clamped = xs[min(k, TN - 1)]
            if np.array_equal(idx, clamped):
                message += (f"\n  Likely cause: the chunk is indexed by the step, xs[k], without % N: past the last "
                            f"of the N = {TN} chunks JAX clamps the index, and the last chunk repeats.")
            elif any(np.array_equal(idx, chunk) for chunk in xs):
                message += "\n  The chunks are taken in another order: step k takes chunk k % N."
            else:
                try:
                    mine = np.asarray(_function(impl, "stream_chunks")(TRAIN_TEXT, TB, TT)[0])
                    if mine.shape[1:] == (TB, TT) and any(np.array_equal(idx, chunk) for chunk in mine):
                        message += "\n  It is one of your stream_chunks' chunks: fix stream_chunks first (see its check)."
                    else:
                        message += ("\n  It is no chunk of the text's streams: are the batches drawn at random "
                                    "(get_batch)? Truncated backpropagation through time reads the streams in "
                                    "order, so that each chunk continues the one before.")
                except Exception:
                    pass
            checks.fail(message)


def test_train_carries_the_state(impl):
    """train_tbptt starts each chunk from the state the previous chunk ended with, and from zeros where a pass over the text begins"""
    _, _, calls = _call_train(impl)
    calls = _steps_seen(calls)
    if len(calls) != STEPS:
        checks.fail(f"not checked: train_tbptt ran the model {len(calls)} times in {STEPS} steps (see the check of "
                    "the chunks).")
    if not any(given for _, given, _, _ in calls):
        checks.fail("train_tbptt calls the model without a state, model.apply({'params': p}, x): every chunk then "
                    "starts from zeros, and the model never learns anything that reaches across a chunk boundary. "
                    "Call it with the carried state, model.apply({'params': p}, x, lstm_state), and carry the state "
                    "it returns to the next step.")
    for k, (_, _, state_in, _) in enumerate(calls):
        zero = all(not np.any(leaf) for leaf in state_in)
        if k % TN == 0:
            if not zero:
                previous = calls[k - 1][3] if k else None
                carried = previous is not None and all(np.allclose(a, b, atol=STATE_ATOL)
                                                       for a, b in zip(state_in, previous))
                checks.fail(f"train_tbptt's step {k} starts chunk 0 of a new pass over the text from a non-zero state"
                            + (f" (the state step {k - 1} ended with, at the end of the streams)" if carried else "")
                            + ": where a pass begins (k % N == 0) the state is reset to zeros, as chunk 0 continues "
                            "nothing.")
            continue
        previous_out = calls[k - 1][3]
        if len(previous_out) != len(state_in) or not all(
                np.allclose(a, b, atol=STATE_ATOL) for a, b in zip(state_in, previous_out)):
            if zero and all(all(not np.any(leaf) for leaf in call[2]) for call in calls):
                why = ("Likely cause: the state is reset every chunk (or the model is given the zero state each "
                       "step). Then the LSTM never learns anything that reaches across a chunk boundary, and the first "
                       "characters of every chunk are predicted with no memory at all. Carry the state each step "
                       "returns into the next: the scan's carry is (state, lstm_state).")
            elif all(np.allclose(a, b, atol=STATE_ATOL) for a, b in zip(state_in, calls[k - 1][2])):
                why = ("Likely cause: the state is passed on unchanged: return the state the model returned (the "
                       "loss function's aux output, has_aux=True) from the step function.")
            else:
                why = "Carry exactly the state the previous step's model call returned."
            checks.fail(f"train_tbptt's step {k} starts chunk {k % TN} from a state that is not the one step {k - 1} "
                        f"ended with (largest difference "
                        f"{max(float(np.max(np.abs(a - b))) for a, b in zip(state_in, previous_out)):.3g}): chunk "
                        f"{k % TN} of each stream continues chunk {k % TN - 1}, so its state must be carried.\n  {why}")


def test_train_replays_the_lesson_steps(impl):
    """train_tbptt's losses and parameters are those of the lesson's steps replayed one by one"""
    state, losses, _ = _call_train(impl)
    chunks = _lesson_chunks()
    expected_state, expected = _oracle_training(chunks)

    def diagnose(got):
        for why, options in (
                ("the state is reset every chunk: carry the state each step returns into the next.",
                 dict(reset_every=True)),
                ("the state is not reset where a pass over the text begins (k % N == 0).", dict(reset_passes=False))):
            if checks.matches(got, _oracle_training(chunks, **options)[1], rtol=1e-5, atol=1e-5):
                return why
        if checks.matches(got[1:], expected[:-1], rtol=1e-5, atol=1e-5):
            return "each loss is reported one step late: losses[k] is the loss of step k's chunk."
        for factor, over in ((TT, "the chunk's tokens (time)"), (TB, "the batch"), (TB * TT, "batch and time")):
            if abs(got[0] - factor * expected[0]) < 1e-4 * factor:
                return (f"the loss is summed over {over}: the lesson's loss is the mean cross entropy over batch and "
                        "time, optax.softmax_cross_entropy_with_integer_labels(logits, y).mean().")
        return None

    checks.assert_close(losses, expected, "train_tbptt's losses, against the lesson's steps replayed one by one",
                        rtol=RTOL, atol=ATOL, diagnose=diagnose)
    if int(state.step) != STEPS:
        checks.fail(f"the state train_tbptt returns has step {int(state.step)} after {STEPS} steps: return the state "
                    "the scan carried out, one apply_gradients per step.")
    got_leaves = jax.tree_util.tree_flatten_with_path(state.params)[0]
    expected_leaves = dict((jax.tree_util.keystr(p), v) for p, v in jax.tree_util.tree_flatten_with_path(
        expected_state.params)[0])
    for path, leaf in got_leaves:
        name = jax.tree_util.keystr(path)
        if name in expected_leaves:
            checks.assert_close(_f64(leaf), expected_leaves[name], f"the trained parameter {name}", rtol=RTOL,
                                atol=OPT_ATOL)


def test_train_is_one_compiled_loop(impl):
    """train_tbptt's program holds one loop over the steps that does not grow with num_steps"""
    fn = _function(impl, "train_tbptt")
    model = FlaxCharLSTM(V, C, 1)
    state = _train_start().replace(apply_fn=model.apply)

    def size(steps):
        program = jax.make_jaxpr(lambda s, d: fn(model, s, d, steps, TB, TT))(state, TRAIN_TEXT)
        equations = list(checks.program_equations(program.jaxpr))
        return len(equations), [eqn for eqn, _ in equations if eqn.primitive.name in ("scan", "while")]

    (small, _), (large, loops) = size(2), size(8)
    if large > 1.5 * small or not loops:
        checks.fail(f"train_tbptt's program has {small} operations for 2 steps and {large} for 8: the steps are "
                    "unrolled (a Python loop inside jax.jit). Write the loop with jax.lax.scan over the steps, so "
                    "that one step is compiled whatever num_steps is.")
