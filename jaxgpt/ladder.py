"""The loss ladder: the video's models, one step at a time, trained from your own modules and compared.

Karpathy's video builds its GPT in steps and reads the validation loss after each. This module trains the
same steps, the *rungs*, with the modules of an implementation (your `tasks`, the `reference`, the
notebook's globals), each with the same number of steps and the same seed, so that the only thing that
changes from one rung to the next is the model:

    rung                 the model                                                     your code
    bigram               a (vocab, vocab) lookup table                                 Part 0's SimpleDecoder
    one head             embeddings -> Head(32) -> lm_head                             task 3
    multi-head           embeddings -> MultiHeadAttention(4 heads of 8) -> lm_head     tasks 3, 4
    + feed-forward       ... -> MultiHeadAttention -> FeedForward -> lm_head           tasks 1, 3, 4
    + residual           3 blocks of x = x + attn(x); x = x + ffwd(x)                  tasks 1, 3, 4
    + LayerNorm          pre-norm blocks, x + attn(ln1(x)), and a final ln_f           tasks 1, 3, 4, 6
    scale, CPU-sized     task 6's MiniGPT: context 32, 48 wide, 3 layers, dropout 0.1  tasks 1, 5, 6
    dropout and scale    task 6's MiniGPT at the video's final size (a GPU's job)      tasks 1, 5, 6

The first six use the video's sizes (batch 32, context 8, n_embd 32, AdamW at a constant 1e-3, 1e-2 for
the bigram); on a 2-core CPU each takes well under a minute of computing, most of it compiling. The
video's last step (batch 64, context 256, n_embd 384, 6 heads, 6 layers, dropout 0.2, 3e-4) needs a GPU: it
runs only with gpu=True (`--gpu`) or on a GPU, and the CPU-sized rung (a few minutes) stands in for it.
bench/ladder.py records the reference's ladder in bench/results/ladder.json and pictures/loss_ladder.png.

Two differences from the video's models, both from the lessons: task 4's MultiHeadAttention ends with its
projection from the start (the video adds `proj` together with the residual connections), and task 1's
FeedForward is the 4x MLP with a projection (the video's first feed-forward is one Linear(32, 32) and a
ReLU; it grows to the 4x MLP at the residual step). AdamW decays only the kernels and embeddings (the
harness's optimizer; PyTorch's decays every parameter), at the video's 0.01.

    python -m jaxgpt.ladder --data PATH [--impl DIR] [--steps N] [--out FILE] [--gpu]

The training loop is the harness's (jaxgpt/training/loop.py): one jitted lax.scan over the steps between
two evaluations, the batches drawn on the device with data.get_batch, a fresh key per step folded from the
step number; each evaluation is the mean loss of `eval_iters` batches of each split, as the video's
`estimate_loss`.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import sys
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from jaxgpt.grader import task_list

VIDEO_URL = "https://www.youtube.com/watch?v=kCc8FmEb1nY"
REFERENCE_JSON = task_list.REPO_ROOT / "bench" / "results" / "ladder.json"
DEFAULT_STEPS = 5000  # the video's max_iters from the first attention model on
DEFAULT_SEED = 1337  # the video's torch.manual_seed
DEFAULT_EVAL_ITERS = 200  # the video's eval_iters
EVALUATIONS = 10  # evaluations along a run (the video evaluates every 500 of 5,000 steps)


# ----------------------------------------------------------------------------------------------------
# The rungs


@dataclasses.dataclass(frozen=True)
class Rung:
    """One step of the video: which model, its sizes and optimiser, and what the video measured."""

    name: str
    adds: str  # what this rung adds to the one before, in a few words
    model: str  # "bigram", "ladder" (LadderLM with the switches below) or "minigpt" (task 6's MiniGPT)
    tasks: tuple[int, ...]  # the tasks whose code it uses
    video_loss: float | None  # the validation loss the video reports for this step ("about")
    video_note: str = ""
    # LadderLM's switches
    n_head: int = 4  # 1: a single Head of size n_embd; more: MultiHeadAttention(n_head, n_embd // n_head)
    feed_forward: bool = False
    residual: bool = False
    layer_norm: bool = False
    n_layer: int = 1
    # sizes and optimiser
    batch_size: int = 32
    block_size: int = 8
    n_embd: int = 32
    dropout_rate: float = 0.0
    learning_rate: float = 1e-3
    gpu: bool = False  # too big for a CPU: runs only when asked or on a GPU

    def sizes(self) -> dict[str, Any]:
        return {"batch_size": self.batch_size, "block_size": self.block_size, "n_embd": self.n_embd,
                "n_head": self.n_head, "n_layer": self.n_layer, "dropout_rate": self.dropout_rate,
                "learning_rate": self.learning_rate}


RUNGS: tuple[Rung, ...] = (
    Rung("bigram", "a lookup table: one character of context", "bigram", (), 2.49,
         "bigram.py: learning rate 1e-2, 3,000 steps", n_head=1, learning_rate=1e-2),
    Rung("one head", "embeddings, one head of self-attention (head_size 32)", "ladder", (3,), 2.4, n_head=1),
    Rung("multi-head", "4 heads of 8, concatenated", "ladder", (3, 4), 2.28,
         "without the projection, which the video adds at the residual step"),
    Rung("+ feed-forward", "a feed-forward layer after attention", "ladder", (1, 3, 4), 2.24,
         "a 1x Linear + ReLU; yours is task 1's 4x MLP with a projection", feed_forward=True),
    Rung("+ residual", "3 blocks with residual connections", "ladder", (1, 3, 4), 2.08,
         "3 blocks, the projection and the 4x MLP", feed_forward=True, residual=True, n_layer=3),
    Rung("+ LayerNorm", "pre-norm blocks and a final LayerNorm", "ladder", (1, 3, 4, 6), 2.06,
         feed_forward=True, residual=True, layer_norm=True, n_layer=3),
    # About 4 minutes of CPU time for 5,000 steps (bench/results/ladder.json); 64 wide and 4 layers reach
    # lower but take twice as long.
    Rung("scale, CPU-sized", "task 6's MiniGPT: context 32, 48 wide, 3 layers, dropout 0.1", "minigpt",
         (1, 5, 6), None, "no video figure: a CPU stand-in for the next rung", n_head=4, n_layer=3,
         block_size=32, n_embd=48, dropout_rate=0.1),
    Rung("dropout and scale", "context 256, 384 wide, 6 heads, 6 layers, dropout 0.2", "minigpt", (1, 5, 6),
         1.48, "batch 64, learning rate 3e-4, on the video's A100 GPU", n_head=6, n_layer=6, batch_size=64,
         block_size=256, n_embd=384, dropout_rate=0.2, learning_rate=3e-4, gpu=True),
)

# What the notebook's own tests run (JAXGPT_SMOKE): between them they use every module of the ladder.
SMOKE_RUNGS = ("bigram", "+ LayerNorm", "scale, CPU-sized")

# The public names each task lends the ladder.
_NAMES = {"Head": 3, "MultiHeadAttention": 4, "FeedForward": 1, "LayerNorm": 6, "MiniGPT": 6}


def get_rung(name: str) -> Rung:
    for rung in RUNGS:
        if rung.name == name:
            return rung
    raise LookupError(f"There is no rung {name!r}; the rungs are " + ", ".join(repr(r.name) for r in RUNGS) + ".")


# ----------------------------------------------------------------------------------------------------
# The models


@dataclasses.dataclass(frozen=True)
class Parts:
    """The classes a LadderLM is built from: one implementation's Head, MultiHeadAttention, FeedForward and
    LayerNorm (None where a rung does not need it)."""

    Head: Any = None
    MultiHeadAttention: Any = None
    FeedForward: Any = None
    LayerNorm: Any = None


@functools.cache
def _models():
    """LadderBlock and LadderLM. Defined on first use (see `__getattr__` below) so that importing this module
    stays light: `jaxgpt`'s command line imports it to build its parser, and starts without JAX."""
    import flax.linen as nn
    import jax.numpy as jnp

    class LadderBlock(nn.Module):
        """Attention, then (optionally) a feed-forward layer, each with or without a residual connection and a
        LayerNorm before it: the block as the video grows it."""

        n_embd: int
        n_head: int
        feed_forward: bool
        residual: bool
        layer_norm: bool
        parts: Parts

        @nn.compact
        def __call__(self, x, deterministic=True):
            p = self.parts
            h = p.LayerNorm(name="ln1")(x) if self.layer_norm else x
            if self.n_head == 1:
                h = p.Head(self.n_embd, name="attn")(h, deterministic=deterministic)  # (B, T, C)
            else:
                h = p.MultiHeadAttention(self.n_head, self.n_embd // self.n_head, name="attn")(
                    h, deterministic=deterministic)  # (B, T, C)
            x = x + h if self.residual else h
            if self.feed_forward:
                h = p.LayerNorm(name="ln2")(x) if self.layer_norm else x
                h = p.FeedForward(self.n_embd, name="ffwd")(h, deterministic=deterministic)  # (B, T, C)
                x = x + h if self.residual else h
            return x

    class LadderLM(nn.Module):
        """Token and position embeddings, n_layer LadderBlocks, an optional final LayerNorm, then lm_head.

        Call: model.apply(params, idx, deterministic=True), idx int (B, T) -> logits (B, T, vocab_size).
        """

        vocab_size: int
        block_size: int
        n_embd: int
        n_head: int
        n_layer: int
        feed_forward: bool
        residual: bool
        layer_norm: bool
        parts: Parts

        @nn.compact
        def __call__(self, idx, deterministic=True):
            B, T = idx.shape
            tok = nn.Embed(self.vocab_size, self.n_embd, name="token_embedding")(idx)  # (B, T, C)
            pos = nn.Embed(self.block_size, self.n_embd, name="position_embedding")(jnp.arange(T))  # (T, C)
            x = tok + pos
            for i in range(self.n_layer):
                x = LadderBlock(self.n_embd, self.n_head, self.feed_forward, self.residual, self.layer_norm,
                                self.parts, name=f"blocks_{i}")(x, deterministic)
            if self.layer_norm:
                x = self.parts.LayerNorm(name="ln_f")(x)
            return nn.Dense(self.vocab_size, name="lm_head")(x)  # (B, T, vocab_size)

    LadderBlock.__qualname__, LadderLM.__qualname__ = "LadderBlock", "LadderLM"
    return LadderBlock, LadderLM


def __getattr__(name: str):
    if name in ("LadderBlock", "LadderLM"):
        return dict(zip(("LadderBlock", "LadderLM"), _models()))[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _needed_names(rung: Rung) -> tuple[str, ...]:
    if rung.model == "bigram":
        return ()
    if rung.model == "minigpt":
        return ("MiniGPT",)
    names = ["Head" if rung.n_head == 1 else "MultiHeadAttention"]
    if rung.feed_forward:
        names.append("FeedForward")
    if rung.layer_norm:
        names.append("LayerNorm")
    return tuple(names)


def build_model(rung: Rung, impl: Any, vocab_size: int):
    """The rung's Flax model with `impl`'s modules (an Implementation, or anything implementation.resolve
    takes). Raises implementation.MissingName or LoadError when a module cannot be found."""
    from jaxgpt import bigram
    from jaxgpt.grader import implementation

    impl = implementation.resolve(impl)
    found = {name: impl.get(task_list.get_task(_NAMES[name]), name) for name in _needed_names(rung)}
    if rung.model == "bigram":
        return bigram.SimpleDecoder(vocab_size)
    if rung.model == "minigpt":
        return found["MiniGPT"](vocab_size=vocab_size, block_size=rung.block_size, n_embd=rung.n_embd,
                                n_head=rung.n_head, n_layer=rung.n_layer, dropout_rate=rung.dropout_rate)
    _, LadderLM = _models()
    return LadderLM(vocab_size, rung.block_size, rung.n_embd, rung.n_head, rung.n_layer, rung.feed_forward,
                    rung.residual, rung.layer_norm, Parts(**found))


# ----------------------------------------------------------------------------------------------------
# Training


@dataclasses.dataclass
class RungResult:
    """What one rung did. eval_loss is None when it did not run; `note` then says why, in a sentence."""

    rung: str
    adds: str
    tasks: tuple[int, ...]
    video_loss: float | None
    video_note: str
    sizes: dict[str, Any]
    params: int | None = None
    eval_loss: float | None = None
    train_loss: float | None = None
    wall_seconds: float | None = None  # building, compiling, training and evaluating
    cpu_seconds: float | None = None  # the process's CPU time over the same span (all threads): less noisy
    steps: list[int] = dataclasses.field(default_factory=list)  # where it evaluated
    eval_losses: list[float] = dataclasses.field(default_factory=list)
    train_losses: list[float] = dataclasses.field(default_factory=list)
    note: str = ""
    gpu: bool = False

    @property
    def ran(self) -> bool:
        return self.eval_loss is not None

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["tasks"] = list(self.tasks)
        for key in ("eval_loss", "train_loss"):
            d[key] = None if d[key] is None else round(d[key], 4)
        for key in ("wall_seconds", "cpu_seconds"):
            d[key] = None if d[key] is None else round(d[key], 1)
        d["eval_losses"] = [round(v, 4) for v in self.eval_losses]
        d["train_losses"] = [round(v, 4) for v in self.train_losses]
        return d


@dataclasses.dataclass
class Ladder:
    """Every rung's result, with the budget they shared."""

    rows: list[RungResult]
    steps: int
    seed: int
    eval_iters: int
    eval_interval: int
    impl: str
    backend: str

    def __getitem__(self, name: str) -> RungResult:
        for row in self.rows:
            if row.rung == name:
                return row
        raise KeyError(name)

    def to_dict(self) -> dict[str, Any]:
        return {"steps": self.steps, "seed": self.seed, "eval_iters": self.eval_iters,
                "eval_interval": self.eval_interval, "impl": self.impl, "backend": self.backend,
                "rungs": [row.to_dict() for row in self.rows]}

    def table(self) -> str:
        """The results as an aligned plain-text table (the notebook and the terminal print it)."""
        return text_table(self.to_dict())

    def markdown(self) -> str:
        return markdown_table(self.to_dict())


def _skip_sentence(rung: Rung, err: BaseException) -> str:
    """One sentence for a rung that cannot train: an unfinished stub, a missing name, or a bug."""
    from jaxgpt.grader import implementation
    from jaxgpt.milestone import _task_span
    from jaxgpt.training import loop

    span = _task_span(rung.tasks) if rung.tasks else "Part 0"
    if isinstance(err, NotImplementedError):
        said = f' ("{err}")' if str(err) else ""
        return (f"Skipped: it uses your code from {span}, and a stub still raises NotImplementedError{said}; "
                f"finish {span} and run the ladder again.")
    if isinstance(err, (implementation.MissingName, implementation.LoadError)):
        return f"Skipped: {err}".replace("then this check again.", "then the ladder again.")
    owner = next((n for n in reversed(rung.tasks) if n in task_list.BY_NUMBER), 1)
    return (f"Stopped: {loop.explain_model_error(err, owner)} Run the checks of {span} to find out why "
            f"(`jaxgpt check N`, or check(N) in the notebook).")


def _config(rung: Rung, vocab_size: int, steps: int, interval: int, eval_iters: int, seed: int):
    """The rung as one of the harness's configurations: the video's optimiser (AdamW, constant rate,
    weight decay 0.01, beta2 0.999, no clipping)."""
    from jaxgpt.training.configs import Config, ModelConfig, TrainConfig

    model = ModelConfig(vocab_size=vocab_size, block_size=rung.block_size, n_embd=rung.n_embd,
                        n_head=rung.n_head, n_layer=rung.n_layer, dropout_rate=rung.dropout_rate)
    train = TrainConfig(batch_size=rung.batch_size, learning_rate=rung.learning_rate, max_iters=steps,
                        eval_interval=interval, eval_iters=eval_iters, weight_decay=0.01, schedule="constant",
                        warmup_iters=0, min_lr=rung.learning_rate, beta2=0.999, grad_clip=0.0, seed=seed)
    return Config(f"ladder: {rung.name}", model, train)


def train_rung(rung: Rung, impl: Any, train_data, eval_data, vocab_size: int, *, steps: int = DEFAULT_STEPS,
               seed: int = DEFAULT_SEED, eval_iters: int = DEFAULT_EVAL_ITERS,
               eval_interval: int | None = None) -> RungResult:
    """Trains one rung from `impl`'s modules; train_data and eval_data are 1-D int32 arrays of token ids.
    A rung that cannot train (an unfinished task, a missing name, a bug) comes back with a sentence in
    `note` and eval_loss None; any other error (a data problem, Ctrl-C) is raised."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from jaxgpt.training import loop

    result = RungResult(rung.name, rung.adds, rung.tasks, rung.video_loss, rung.video_note, rung.sizes(),
                        gpu=rung.gpu)
    interval = eval_interval or max(1, steps // EVALUATIONS)
    config = _config(rung, vocab_size, steps, interval, eval_iters, seed)
    started, cpu_started = time.perf_counter(), time.process_time()
    try:
        model = build_model(rung, impl, vocab_size)
        init_key, train_key, eval_key = jax.random.split(jax.random.PRNGKey(seed), 3)
        dummy = jnp.zeros((1, rung.block_size), jnp.int32)
        params = jax.jit(functools.partial(model.init, deterministic=True))(init_key, dummy)["params"]
        tx = loop.make_optimizer(config.train)
        opt_state = tx.init(params)
        evaluate = loop.make_evaluate(model, config)
        calls = {}  # one compiled scan per chunk length: `interval`, and the remainder if steps % interval

        def train(params, opt_state, first, count):
            if count not in calls:
                calls[count] = loop.make_train_steps(model, tx, config, count)
            return calls[count](params, opt_state, train_data, train_key, first)

        def measure(step, params):
            losses = evaluate(params, train_data, eval_data, jax.random.fold_in(eval_key, step))
            train_loss, eval_loss = (float(v) for v in np.asarray(losses))
            result.steps.append(step)
            result.train_losses.append(train_loss)
            result.eval_losses.append(eval_loss)

        measure(0, params)
        step = 0
        while step < steps:
            count = min(interval, steps - step)
            params, opt_state, _ = train(params, opt_state, step, count)
            step += count
            measure(step, params)
    except Exception as err:  # the learner's code: a stub, a missing name, a bug
        from jaxgpt.data import DataError

        if isinstance(err, (DataError, loop.ConfigError)):
            raise
        result.note = _skip_sentence(rung, err)
        return result
    result.wall_seconds = time.perf_counter() - started
    result.cpu_seconds = time.process_time() - cpu_started
    result.params = loop.count_params(params)
    result.eval_loss, result.train_loss = result.eval_losses[-1], result.train_losses[-1]
    return result


def _count_without_running(rung: Rung, impl: Any, vocab_size: int) -> int | None:
    """The rung's parameter count from the shapes alone (jax.eval_shape: nothing is computed), or None when
    its model cannot be built yet."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    try:
        model = build_model(rung, impl, vocab_size)
        shapes = jax.eval_shape(functools.partial(model.init, deterministic=True), jax.random.PRNGKey(0),
                                jnp.zeros((1, rung.block_size), jnp.int32))
    except Exception:  # an unfinished or broken model: its row says "GPU only" and the count stays empty
        return None
    return int(sum(np.prod(leaf.shape) for leaf in jax.tree_util.tree_leaves(shapes["params"])))


def _gpu_present() -> bool:
    import jax

    return jax.default_backend() != "cpu"


def train_ladder(impl: Any = "reference", *, text: str | None = None, data_path: str | None = None,
                 steps: int = DEFAULT_STEPS, seed: int = DEFAULT_SEED, eval_iters: int = DEFAULT_EVAL_ITERS,
                 eval_interval: int | None = None, gpu: bool | None = None,
                 rungs: Sequence[Rung | str] | None = None,
                 say: Callable[[str], None] | None = print) -> Ladder:
    """Trains every rung with the same steps and seed on `text` (default: load_text(data_path), tiny
    Shakespeare) and returns the Ladder of results.

    impl: whose modules (`tasks`, `reference`, a directory, a .py file, a namespace such as globals()).
    gpu: run the GPU-sized rung; None: only when JAX runs on a GPU. Otherwise its row shows the video's figure
    and says how to run it.
    rungs: a subset of RUNGS (names or Rung objects, e.g. with smaller sizes), in the order to train them.
    say: where each rung's line goes as it finishes (None: nowhere).
    """
    import jax
    import numpy as np

    from jaxgpt import data
    from jaxgpt.grader import implementation
    from jaxgpt.tokenizer import CharTokenizer
    from jaxgpt.training import loop

    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}.")
    if eval_iters < 1:
        raise ValueError(f"eval_iters must be at least 1, got {eval_iters}.")
    chosen = [get_rung(r) if isinstance(r, str) else r for r in (RUNGS if rungs is None else rungs)]
    if text is None:
        text = data.load_text(data_path, named_by="--data")
    tokenizer = CharTokenizer.from_text(text)
    ids = np.asarray(tokenizer.encode(text), dtype=np.int32)
    train_ids, eval_ids = data.train_eval_split(ids)
    longest = max(r.block_size for r in chosen)
    if len(eval_ids) < longest + 1:
        raise loop.TrainingError(f"The text has {len(ids):,} characters; its last 10% ({len(eval_ids):,}) "
                                 f"must hold at least {longest + 1} for the longest context ({longest}).")
    train_data, eval_data = jax.device_put(train_ids), jax.device_put(eval_ids)
    run_gpu = _gpu_present() if gpu is None else bool(gpu)
    resolved = implementation.resolve(impl)
    interval = eval_interval or max(1, steps // EVALUATIONS)
    rows = []
    for rung in chosen:
        if rung.gpu and not run_gpu:
            row = RungResult(rung.name, rung.adds, rung.tasks, rung.video_loss, rung.video_note, rung.sizes(),
                             params=_count_without_running(rung, resolved, tokenizer.vocab_size), gpu=True,
                             note="Not run: a GPU rung (hours on a CPU); run it with --gpu or gpu=True on a GPU.")
        else:
            row = train_rung(rung, resolved, train_data, eval_data, tokenizer.vocab_size, steps=steps,
                             seed=seed, eval_iters=eval_iters, eval_interval=interval)
        rows.append(row)
        if say is not None:
            say(_line(row))
    return Ladder(rows, steps, seed, eval_iters, interval, resolved.label, jax.default_backend())


def _line(row: RungResult) -> str:
    video = f"the video: about {row.video_loss:g}" if row.video_loss is not None else "no video figure"
    if not row.ran:
        return f"{row.rung:18s} {video}. {row.note}"
    return (f"{row.rung:18s} eval loss {row.eval_loss:.3f} ({video}), {row.params:,} parameters, "
            f"{row.wall_seconds:.0f} s")


# ----------------------------------------------------------------------------------------------------
# Tables and the picture


def _fmt_loss(value: float | None) -> str:
    return "" if value is None else f"{value:.3f}"


def _fmt_seconds(value: float | None) -> str:
    if value is None:
        return ""
    return f"{value:.0f} s" if value < 120 else f"{value / 60:.1f} min"


def _cells(rung: Mapping[str, Any]) -> list[str]:
    video = "" if rung.get("video_loss") is None else f"{rung['video_loss']:g}"
    ours = _fmt_loss(rung.get("eval_loss")) or ("GPU only" if rung.get("gpu") else "skipped")
    params = "" if rung.get("params") is None else f"{rung['params']:,}"
    return [rung["rung"], rung.get("adds", ""), params, ours, video, _fmt_seconds(rung.get("wall_seconds")),
            _fmt_seconds(rung.get("cpu_seconds"))]


_HEADERS = ["rung", "adds", "parameters", "eval loss", "the video (about)", "wall time", "CPU time"]


def markdown_table(result: Mapping[str, Any]) -> str:
    """A markdown table of a ladder's results (Ladder.to_dict() or bench/results/ladder.json)."""
    lines = ["| " + " | ".join(_HEADERS) + " |", "|---|---|---:|---:|---:|---:|---:|"]
    lines += ["| " + " | ".join(_cells(rung)) + " |" for rung in result["rungs"]]
    return "\n".join(lines)


def text_table(result: Mapping[str, Any]) -> str:
    """The same table as aligned plain text, for a terminal or a notebook's output."""
    rows = [_HEADERS] + [_cells(rung) for rung in result["rungs"]]
    rows = [row[:1] + row[2:] for row in rows]  # "adds" is too wide for a terminal
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = []
    for row in rows:
        lines.append("  ".join(cell.ljust(w) if i == 0 else cell.rjust(w)
                               for i, (cell, w) in enumerate(zip(row, widths))))
    return "\n".join(lines)


def reference_table(path: str | Path = REFERENCE_JSON) -> str:
    """The reference ladder (bench/results/ladder.json) as a markdown table, with the budget and machine it
    was measured on."""
    return result_table(json.loads(Path(path).read_text(encoding="utf-8")))


def result_table(result: Mapping[str, Any]) -> str:
    """A ladder's result as a markdown table with its budget and machine: what the README and the ladder's
    lesson quote (the figure `ladder.table` of jaxgpt/notebook/figures.py)."""
    machine = result.get("machine", {})
    where = ", ".join(str(x) for x in (machine.get("cpu"), f"{machine.get('cpus')} cores" if machine.get("cpus")
                                       else None) if x)
    load = machine.get("load_average_at_start")
    busy = (f", load average {load[0]:g} at the start and {machine['load_average_at_end'][0]:g} at the end"
            if load and machine.get("load_average_at_end") else "")
    budget = (f"*{result['steps']:,} steps per rung, seed {result['seed']}, eval loss = the mean of "
              f"{result['eval_iters']} batches of the last 10% of the text. Wall time on {where or 'a CPU'}"
              f"{busy}, compiling included: on a busy machine read the times as rough. CPU time is the "
              f"process's, all threads together, and hardly depends on the load: on a quiet 2-core machine the "
              f"wall time lies between half of it and all of it. The video's figures "
              f"are read from [Let's build GPT]({VIDEO_URL}) and its code.*")
    return markdown_table(result) + "\n\n" + budget


def plot_ladder(result: Ladder | Mapping[str, Any], axes=None):
    """One picture of a ladder: eval loss against the step for every rung that ran (left), and each rung's
    final eval loss beside the video's figure (right). Returns the two matplotlib axes."""
    import numpy as np

    from jaxgpt import plots

    d = result.to_dict() if isinstance(result, Ladder) else result
    rungs = d["rungs"]
    if axes is None:
        plt = plots._pyplot()
        _, axes = plt.subplots(1, 2, figsize=(12, 4.6), layout="constrained", width_ratios=[1.25, 1])
    curves, dots = axes
    colours = [f"C{i}" for i in range(len(rungs))]
    ran = [r for r in rungs if r.get("eval_loss") is not None]
    for rung, colour in zip(rungs, colours):
        if rung.get("eval_loss") is not None:
            curves.plot(rung["steps"], rung["eval_losses"], "o-", color=colour, markersize=3, linewidth=1.4,
                        label=rung["rung"])
    values = [v for r in rungs for v in (r.get("eval_loss"), r.get("video_loss")) if v is not None]
    low = min(values) if values else 1.0
    lowest_curve = min((min(r["eval_losses"]) for r in ran), default=low)
    # The first evaluation (about 4.2-4.7, an untrained model) is above the top: the rungs differ below 3.
    curves.set_ylim(lowest_curve - 0.1, max(3.2, lowest_curve + 0.5))
    curves.set_xlabel("step")
    curves.set_ylabel("eval loss (nats per character)")
    curves.set_title(f"Eval loss while training ({d['steps']:,} steps, seed {d['seed']})")
    curves.grid(alpha=0.3)
    if ran:
        curves.legend(fontsize=8)

    y = np.arange(len(rungs))[::-1]
    for yi, rung, colour in zip(y, rungs, colours):
        if rung.get("video_loss") is not None:
            dots.plot(rung["video_loss"], yi, "D", markerfacecolor="white", markeredgecolor="black",
                      markersize=9, zorder=3)
        if rung.get("eval_loss") is not None:
            dots.plot(rung["eval_loss"], yi, "o", color=colour, markersize=6, zorder=4)
            dots.annotate(f"{rung['eval_loss']:.2f}", (rung["eval_loss"], yi), textcoords="offset points",
                          xytext=(0, 7), ha="center", fontsize=8)
        else:
            x = rung.get("video_loss") if rung.get("video_loss") is not None else low
            dots.annotate("GPU only: not run" if rung.get("gpu") else "skipped", (x, yi),
                          textcoords="offset points", xytext=(10, -3), fontsize=8, color="gray")
    dots.plot([], [], "o", color="gray", label="this run")
    dots.plot([], [], "D", markerfacecolor="white", markeredgecolor="black", label="the video (about)")
    dots.set_yticks(y, [r["rung"] for r in rungs])
    dots.set_ylim(-0.6, len(rungs) - 0.3)
    dots.margins(x=0.08)
    dots.set_xlabel("final eval loss")
    dots.set_title("Each rung beside the video's figure")
    dots.grid(alpha=0.3, axis="x")
    dots.legend(fontsize=8, loc="lower right")
    return axes


# ----------------------------------------------------------------------------------------------------
# The notebook and the command line


def run_ladder(namespace: Mapping[str, Any], steps: int = DEFAULT_STEPS, eval_iters: int = DEFAULT_EVAL_ITERS,
               gpu: bool | None = None, rungs: Sequence[Rung | str] | None = None) -> Ladder:
    """The notebook's milestone: the ladder from the notebook's own classes (its globals), its table printed
    and its picture drawn. Under the notebook's tests (JAXGPT_SMOKE) a few steps of three rungs, which use
    every module between them (compiling, not training, is what a rung costs there)."""
    from jaxgpt import settings
    from jaxgpt.data import DataError
    from jaxgpt.grader import implementation

    steps, eval_iters = settings.steps(steps, 4), settings.steps(eval_iters, 2)
    if settings.smoke() and rungs is None:
        rungs = SMOKE_RUNGS
    try:
        ladder = train_ladder(implementation.NamespaceImplementation(namespace), steps=steps,
                              eval_iters=eval_iters, gpu=gpu, rungs=rungs)
    except DataError as err:
        print(f"The ladder cannot run: {err}")
        return None
    print()
    print(ladder.table())
    plot_ladder(ladder)
    return ladder


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The command line's options (also for a `jaxgpt ladder` subcommand)."""
    parser.add_argument("--data", default=None, help="a UTF-8 text file to train on (default: tiny Shakespeare)")
    parser.add_argument("--impl", default="tasks", help="whose modules: `tasks` (yours, the default), "
                        "`reference`, a directory laid out like tasks/, or one .py file")
    parser.add_argument("--steps", type=int, default=DEFAULT_STEPS,
                        help="training steps for every rung (default: the video's %(default)s)")
    parser.add_argument("--eval-iters", type=int, default=DEFAULT_EVAL_ITERS,
                        help="batches averaged for each eval loss (default: the video's %(default)s)")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED, help="the seed every rung shares")
    parser.add_argument("--gpu", action="store_true",
                        help="also run the GPU-sized rung (the video's last model) even without a GPU")
    parser.add_argument("--rungs", default=None,
                        help="a comma-separated subset of the rungs, e.g. 'bigram,one head'")
    parser.add_argument("--out", default="loss_ladder.png", help="where to save the picture (%(default)s)")
    parser.add_argument("--json", default=None, metavar="FILE", help="also write the results as JSON here")


def run_from_args(args: argparse.Namespace) -> int:
    from jaxgpt.data import DataError
    from jaxgpt.grader import implementation
    from jaxgpt.training import loop

    try:
        rungs = None if not args.rungs else [get_rung(name.strip()) for name in args.rungs.split(",")]
        ladder = train_ladder(args.impl, data_path=args.data, steps=args.steps, seed=args.seed,
                              eval_iters=args.eval_iters, gpu=True if args.gpu else None, rungs=rungs)
    except (DataError, implementation.LoadError, loop.TrainingError, LookupError, ValueError) as err:
        print(err, file=sys.stderr)
        return 1
    print()
    print(ladder.table())
    axes = plot_ladder(ladder)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    axes[0].figure.savefig(out, dpi=110)
    print(f"\nThe picture: {out}")
    if args.json:
        Path(args.json).write_text(json.dumps(ladder.to_dict(), indent=1) + "\n", encoding="utf-8")
        print(f"The results: {args.json}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jaxgpt.ladder", description=__doc__.splitlines()[0])
    add_arguments(parser)
    return run_from_args(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
