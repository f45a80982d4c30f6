"""A GPT built only from Flax's own layers, with the attention layer pluggable: the oracle that task 1's
MiniGPT is compared with, that task 5's attention must drop into, and whose parameters task 6's MiniGPT must
accept. Its parameter tree is the one the lessons fix (see reference/task01_minigpt.py's docstrings)."""

from __future__ import annotations

from typing import Any, Callable

import jax.numpy as jnp
import flax.linen as nn


def flax_attention(num_heads: int, dropout_rate: float, name: str) -> Callable[..., Any]:
    layer = nn.MultiHeadDotProductAttention(num_heads=num_heads, dropout_rate=dropout_rate, name=name)

    def attend(x, deterministic):
        mask = nn.make_causal_mask(jnp.ones((1, x.shape[1])))
        return layer(x, mask=mask, deterministic=deterministic)

    return attend


def module_attention(cls) -> Callable[..., Any]:
    """An attention class with fields (num_heads, dropout_rate) and call (x, deterministic), as task 5's."""

    def make(num_heads: int, dropout_rate: float, name: str):
        layer = cls(num_heads, dropout_rate, name=name)
        return lambda x, deterministic: layer(x, deterministic)

    return make


class OracleGPT(nn.Module):
    vocab_size: int
    block_size: int
    n_embd: int
    n_head: int
    n_layer: int
    dropout_rate: float = 0.0
    attention: Callable[..., Any] = flax_attention

    @nn.compact
    def __call__(self, idx, deterministic=True):
        T = idx.shape[1]
        x = nn.Embed(self.vocab_size, self.n_embd, name="token_embedding")(idx)
        x = x + nn.Embed(self.block_size, self.n_embd, name="position_embedding")(jnp.arange(T))
        x = nn.Dropout(self.dropout_rate)(x, deterministic=deterministic)
        for i in range(self.n_layer):
            x = _OracleBlock(self.n_embd, self.n_head, self.dropout_rate, self.attention,
                             name=f"blocks_{i}")(x, deterministic)
        x = nn.LayerNorm(name="ln_f")(x)
        return nn.Dense(self.vocab_size, name="lm_head")(x)


class _OracleBlock(nn.Module):
    n_embd: int
    n_head: int
    dropout_rate: float
    attention: Callable[..., Any]

    @nn.compact
    def __call__(self, x, deterministic):
        attend = self.attention(self.n_head, self.dropout_rate, "attn")
        x = x + nn.Dropout(self.dropout_rate)(attend(nn.LayerNorm(name="ln1")(x), deterministic),
                                              deterministic=deterministic)
        return x + _OracleFeedForward(self.n_embd, self.dropout_rate, name="ffwd")(
            nn.LayerNorm(name="ln2")(x), deterministic)


class _OracleFeedForward(nn.Module):
    n_embd: int
    dropout_rate: float

    @nn.compact
    def __call__(self, x, deterministic):
        h = nn.relu(nn.Dense(4 * self.n_embd, name="fc")(x))
        return nn.Dropout(self.dropout_rate)(nn.Dense(self.n_embd, name="proj")(h), deterministic=deterministic)


# --- The same GPT as plain functions over a parameter tree, with switches for the usual mistakes. ---
# Deterministic (no dropout). Each piece calls Flax's own layer on its part of the tree, so the right answer
# is Flax's; a switch recomputes a known wrong variant from the same parameters, which lets a failing check
# name its likely cause. `p` is always the inner tree (params["params"] or a sub-tree of it).


def layer_norm(p, x, epsilon: float = 1e-6):
    return nn.LayerNorm(epsilon=epsilon).apply({"params": p}, x)


def self_attention(p, x, n_head: int, causal: bool = True):
    """Flax's multi-head attention of x on itself, causal unless told otherwise."""
    mask = nn.make_causal_mask(jnp.ones((1, x.shape[1]))) if causal else None
    return nn.MultiHeadDotProductAttention(num_heads=n_head).apply({"params": p}, x, mask=mask)


def feed_forward(p, x, activation: Callable[[Any], Any] = nn.relu):
    h = activation(x @ p["fc"]["kernel"] + p["fc"]["bias"])  # (B, T, 4C)
    return h @ p["proj"]["kernel"] + p["proj"]["bias"]  # (B, T, C)


def block(p, x, n_head: int, *, norm: str = "pre", residual: str = "both", residual_of_normed: bool | str = False,
          causal: bool = True, activation: Callable[[Any], Any] = nn.relu,
          attention: Callable[[Any, Any], Any] | None = None, ffwd: Callable[[Any, Any], Any] | None = None,
          ln: Callable[[Any, Any], Any] = layer_norm):
    """One block. norm: "pre" (x + f(ln(x)), the lesson's) or "post" (ln(x + f(x)), the 2017 paper's);
    residual: "both", "attn" (only around attention), "ffwd" (only around the MLP) or "none";
    residual_of_normed: the skip paths start from ln(x) instead of x (True: both; "ffwd": only the
    feed-forward's, as when x = ln2(x) overwrites x before the second residual); attention(p_attn, h),
    ffwd(p_ffwd, h) and ln(p_ln, h) replace Flax's attention, the ReLU MLP and Flax's LayerNorm (with a
    learner's own layers, say, to tell which part is wrong)."""
    attend = attention or (lambda pa, h: self_attention(pa, h, n_head, causal))
    mlp = ffwd or (lambda pf, h: feed_forward(pf, h, activation))
    keep_attn, keep_ffwd = residual in ("both", "attn"), residual in ("both", "ffwd")
    if norm == "post":
        x = ln(p["ln1"], (x if keep_attn else 0) + attend(p["attn"], x))
        return ln(p["ln2"], (x if keep_ffwd else 0) + mlp(p["ffwd"], x))
    h = ln(p["ln1"], x)
    x = (h if residual_of_normed is True else x if keep_attn else 0) + attend(p["attn"], h)
    h = ln(p["ln2"], x)
    return (h if residual_of_normed in (True, "ffwd") else x if keep_ffwd else 0) + mlp(p["ffwd"], h)


def gpt(p, idx, n_head: int, *, positions: bool = True, final_norm: bool = True,
        ln: Callable[[Any, Any], Any] = layer_norm, **block_switches):
    """The whole model's logits (B, T, vocab_size); block_switches go to `block`."""
    T = idx.shape[1]
    x = p["token_embedding"]["embedding"][idx]  # (B, T, C)
    if positions:
        x = x + p["position_embedding"]["embedding"][:T]  # (T, C) broadcast over B
    n_layer = sum(name.startswith("blocks_") for name in p)
    for i in range(n_layer):
        x = block(p[f"blocks_{i}"], x, n_head, ln=ln, **block_switches)
    if final_norm:
        x = ln(p["ln_f"], x)
    return x @ p["lm_head"]["kernel"] + p["lm_head"]["bias"]  # (B, T, vocab_size)


def block_mistakes(mask_advice: str = "") -> list[tuple[str, dict]]:
    """The usual wrong blocks: (what the learner likely did, switches of `block` and `gpt` that compute it)."""
    return [
        ("the block is post-norm, ln(x + f(x)) as in the 2017 paper; this GPT is pre-norm: x + f(ln(x)).",
         dict(norm="post")),
        ("the residual connections are missing: the block should return x + attn(ln1(x)), then "
         "x + ffwd(ln2(x)).", dict(residual="none")),
        ("the residual connection around the feed-forward is missing: x = x + ffwd(ln2(x)).",
         dict(residual="attn")),
        ("the residual connection around attention is missing: x = x + attn(ln1(x)).", dict(residual="ffwd")),
        ("the residual is added to the normalised x (x = ln1(x); x = x + attn(x)); keep x itself on the skip "
         "path: x = x + attn(ln1(x)).", dict(residual_of_normed=True)),
        ("the feed-forward's residual is added to the normalised x (x = ln2(x); x = x + ffwd(x)); keep x itself "
         "on the skip path: x = x + ffwd(ln2(x)).", dict(residual_of_normed="ffwd")),
        ("attention has no causal mask, so every position sees the future" + (f": {mask_advice}" if mask_advice
                                                                              else "."), dict(causal=False)),
        ("the feed-forward uses GELU (as nanoGPT does); this lesson's uses ReLU, as in the video.",
         dict(activation=lambda h: nn.gelu(h, approximate=True))),
        ("the feed-forward uses the exact GELU; this lesson's uses ReLU, as in the video.",
         dict(activation=lambda h: nn.gelu(h, approximate=False))),
        ("the feed-forward has no ReLU between its two Dense layers.", dict(activation=lambda h: h)),
    ]


def model_mistakes(mask_advice: str = "") -> list[tuple[str, dict]]:
    """`block_mistakes` and the model's own: (what the learner likely did, switches of `gpt`)."""
    return block_mistakes(mask_advice) + [
        ("the final LayerNorm (ln_f) is not applied before lm_head.", dict(final_norm=False)),
        ("the position embedding is not added to the token embedding.", dict(positions=False)),
    ]


def random_params(module: nn.Module, *args, seed: int = 0, scale: float = 0.2, **kwargs):
    """A parameter tree for `module.init(key, *args, **kwargs)`, filled from numpy rather than by the init
    (the tree's shapes are traced, nothing is compiled, so it is quick). LayerNorm scales are drawn around 1
    and biases around 0, not left at 1 and 0, so that a forgotten or misplaced scale or bias shows in the
    numbers."""
    import jax
    import numpy as np

    try:
        key = (module, tuple((np.shape(a), str(np.asarray(a).dtype)) for a in args), tuple(sorted(kwargs.items())))
        hash(key)
    except TypeError:
        key = None
    shapes = _INIT_SHAPES.get(key) if key is not None else None
    if shapes is None:
        shapes = jax.eval_shape(lambda: module.init(jax.random.key(0), *args, **kwargs))
        if key is not None:
            _INIT_SHAPES[key] = shapes
    return random_fill(shapes, seed, scale)


_INIT_SHAPES: dict = {}  # an oracle module's traced parameter tree, by module and input shapes: traced once


def random_fill(shapes, seed: int = 0, scale: float = 0.2):
    """Numpy values for a tree of shapes (what `jax.eval_shape` of an init returns), as `random_params`."""
    import jax
    import numpy as np

    rng = np.random.default_rng(seed)

    def fill(path, leaf):
        name = str(getattr(path[-1], "key", path[-1]))
        noise = rng.standard_normal(leaf.shape)
        if name == "scale":
            value = 1.0 + scale * noise
        elif name == "bias":
            value = scale * noise
        elif name == "kernel" and leaf.ndim >= 2:  # variance 1 / fan-in; an attention output kernel (H, D, C)
            is_out = len(path) > 1 and str(getattr(path[-2], "key", "")) == "out"  # takes H * D inputs
            value = noise / np.sqrt(leaf.shape[0] * (leaf.shape[1] if is_out else 1))
        else:
            value = noise
        return np.asarray(value, leaf.dtype)

    return jax.tree_util.tree_map_with_path(fill, shapes)


# --- Kept across checks: what a suite computes from the oracles and the reference, once per process ---------
# The grader imports a task's test module afresh for every check (jaxgpt/grader/runner.py), so a jitted helper
# or a cache defined there starts empty each time: the background grader, the notebook's worker and the
# catalogue runner would trace and compile the same oracle programs again at every check. This module is
# imported once per process, so what is kept here survives. Nothing kept depends on the code under test: only
# the oracles' and the reference's outputs, keyed by everything they depend on.

_KEPT: dict = {}


def _file_digest(filename: str) -> str:
    import hashlib

    try:
        with open(filename, "rb") as f:
            return hashlib.sha1(f.read()).hexdigest()
    except OSError:
        return ""


def kept(fn):
    """A decorator for a module-level helper of a test module (a jitted function, an lru_cache): the first
    object made for it in this process, as long as the test file is unchanged, so that its compiled programs
    and cached results are reused by later checks. (A changed file makes a new one.)"""
    import inspect

    inner = inspect.unwrap(fn)
    code = getattr(inner, "__code__", None)
    filename = code.co_filename if code is not None else ""
    key = (getattr(inner, "__module__", ""), getattr(inner, "__qualname__", repr(inner)), filename,
           _file_digest(filename))
    return _KEPT.setdefault(key, fn)


def kept_value(file: str, name: str, factory):
    """A value (a dict used as a cache, say) made once per process under `name` for the test module `file`
    (its __file__), shared by every import of that module as long as the file is unchanged."""
    key = (file, name, _file_digest(file))
    if key not in _KEPT:
        _KEPT[key] = factory()
    return _KEPT[key]


def digest(*trees) -> tuple:
    """A key for the arrays of `trees`: their structure, dtypes, shapes and bytes."""
    import hashlib

    import jax
    import numpy as np

    h = hashlib.sha1()
    leaves, structure = jax.tree_util.tree_flatten(trees)
    for leaf in leaves:
        array = np.asarray(leaf)
        h.update(f"{array.dtype}{array.shape}".encode())
        h.update(np.ascontiguousarray(array).tobytes())
    return (str(structure), h.hexdigest())


_ORACLE_OUTPUTS: dict = {}


def oracle_apply(module: nn.Module, variables, *args):
    """`module.apply(variables, *args)` for an oracle module (this file's, or the reference's), as a numpy
    array, remembered by the module and the bytes of the parameters and inputs for the life of the process: a
    worker's later checks of the task find it there. Run eagerly, as before: its operations are the ones the
    suites' eager records compile anyway (a jitted oracle was measured to add a whole-model compilation to a
    first check and to save none of those)."""
    import jax
    import numpy as np

    try:
        key = (module, digest(variables, args), str(jax.config.jax_default_matmul_precision))
        hash(key)
    except TypeError:  # a module with unhashable fields: run as it is
        return np.asarray(module.apply(variables, *args))
    if key not in _ORACLE_OUTPUTS:
        out = np.array(module.apply(variables, *args))
        out.setflags(write=False)  # shared by every later check: read-only, so that none can change it
        _ORACLE_OUTPUTS[key] = out
        if len(_ORACLE_OUTPUTS) > 256:
            del _ORACLE_OUTPUTS[next(iter(_ORACLE_OUTPUTS))]
    return _ORACLE_OUTPUTS[key]


_ORACLE_INITS: dict = {}


def oracle_init(module: nn.Module, seed: int, *args):
    """`module.init(jax.random.key(seed), *args)` for an oracle module, remembered for the process (by the module,
    the seed and the inputs' bytes)."""
    import jax

    try:
        key = (module, seed, digest(args))
        hash(key)
    except TypeError:
        return module.init(jax.random.key(seed), *args)
    if key not in _ORACLE_INITS:
        _ORACLE_INITS[key] = module.init(jax.random.key(seed), *args)
    return _ORACLE_INITS[key]
