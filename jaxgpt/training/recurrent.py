"""Training a character LSTM (task 15's CharLSTM) with truncated backpropagation through time: the harness
behind `jaxgpt train --model lstm`.

A GPT trains on random windows, each read from nothing. An LSTM carries a state, so it trains on the text
read in order (Karpathy's char-rnn, PyTorch's word-language model):

    batching   the text as batch_size parallel streams cut into consecutive chunks of block_size tokens,
               the layout of task 15's `stream_chunks` (`chunks` here): row b of step i + 1 continues row b
               of step i
    state      each step starts from the LSTM state the previous step ended with, and from zeros where a
               pass over the text begins (step % N == 0); the gradient stops at the chunk's start, as the
               state enters the step as data (truncated backpropagation through time)
    optimizer  the GPT's: AdamW, global-norm clipping, warmup and cosine decay (loop.make_optimizer)
    eval       the mean loss of the first eval_iters chunks of each split, read in order from the zero
               state, the way the model reads text; deterministic, so no key
    tokenizer  the GPT's: one token per character of the text, or per UTF-8 byte (config.train.tokenizer)
    resume     prepare(resume=directory) continues a saved run exactly as it would have gone on: the step
               says where in the stream it is (step s trains on chunk s % N, and N is fixed by the text, whose
               SHA-256 the checkpoint keeps, and the configuration), and the LSTM state the last step ended
               with is saved with the optimiser state (see below), so the next chunk starts from it
    the rest   loop.fit's: the progress bar, evaluations, checkpoints (source task 15, so that `jaxgpt sample`
               rebuilds a CharLSTM), history.json, Ctrl-C

The LSTM state is part of what a step carries to the next, so it travels where loop.fit keeps that: the Run's
`opt_state` is the pair (the optimiser's state, the LSTM state). loop.save writes it into the checkpoint's
training state in the same atomic save as the parameters, so a checkpoint's LSTM state always belongs to its
step, and a resumed run starts its next chunk from the state the interrupted run would have carried into it.
Without it a resume would have to restart every stream from zeros mid-pass: the lesson's "state reset"
mistake once, and losses that differ from the uninterrupted run's.

A configuration is the GPT's `Config`, its fields read as: block_size the chunk length T, n_embd the LSTM's
width (embedding and hidden state), n_layer the LSTM layers; n_head and dropout_rate are unused. `CONFIGS`
holds the LSTM's configurations, sized to the GPT's of the same name (a similar parameter count).
"""

from __future__ import annotations

import functools
import hashlib
import os
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from jaxgpt.grader import task_list
from jaxgpt.training import loop
from jaxgpt.training.configs import Config, ConfigError, ModelConfig, TrainConfig

LSTM_TASK = 15  # the task whose CharLSTM is trained; saved as the checkpoint's source task

CONFIGS: dict[str, Config] = {
    "tiny": Config(
        "lstm-tiny",
        # One LSTM layer of 312: 820,625 parameters with 65 characters, the tiny GPT's 818,241 within 0.3%.
        # Chunks of 64 tokens, 64 streams: the GPT's batch of 64 x 64 tokens a step.
        ModelConfig(block_size=64, n_embd=312, n_head=1, n_layer=1, dropout_rate=0.0),
        TrainConfig(batch_size=64, learning_rate=2e-3, max_iters=2000, eval_interval=250, eval_iters=20,
                    weight_decay=0.1, schedule="cosine", warmup_iters=100, min_lr=2e-4),
        "a one-layer LSTM of 312 with the tiny GPT's parameter count and tokens per step",
    ),
    "micro": Config(
        "lstm-micro",
        ModelConfig(block_size=16, n_embd=32, n_head=1, n_layer=2, dropout_rate=0.0),
        TrainConfig(batch_size=8, learning_rate=3e-3, max_iters=40, eval_interval=20, eval_iters=2,
                    weight_decay=0.1, schedule="constant", warmup_iters=0, min_lr=3e-3),
        "a toy LSTM for tests and smoke runs",
    ),
}


def get_config(name: str) -> Config:
    """The LSTM configuration `name` ("tiny", "micro", or their full names "lstm-tiny", "lstm-micro")."""
    for key, config in CONFIGS.items():
        if name in (key, config.name):
            return config
    known = ", ".join(CONFIGS)
    raise ConfigError(f"There is no LSTM configuration {name!r}; the LSTM configurations are {known}.")


# ----------------------------------------------------------------------------------------------------
# The model


def model_class(impl: Any = "reference"):
    """Task 15's CharLSTM class from implementation `impl` (see implementation.resolve)."""
    from jaxgpt.grader import implementation

    try:
        return implementation.resolve(impl).get(task_list.get_task(LSTM_TASK), "CharLSTM")
    except (implementation.LoadError, implementation.MissingName) as err:
        raise loop.TrainingError(str(err)) from None


def build_model(model_cls, config: Config):
    """CharLSTM(vocab_size, n_embd, n_layer) from the configuration."""
    m = config.model
    if m.vocab_size is None:
        raise ConfigError("The configuration has no vocab_size yet: call config.with_vocab_size(...) first.")
    try:
        return model_cls(vocab_size=m.vocab_size, n_embd=m.n_embd, n_layer=m.n_layer)
    except TypeError as err:
        raise loop.TrainingError(f"`{getattr(model_cls, '__name__', model_cls)}` could not be built with the "
                                 f"lesson's fields (vocab_size, n_embd, n_layer): {err}.") from None


def param_shapes(model: ModelConfig) -> dict[str, Any]:
    """CharLSTM's parameter tree (task 15's lesson) as nested dicts of shapes: what a checkpoint must hold."""
    C, V = model.n_embd, model.vocab_size
    tree: dict[str, Any] = {"token_embedding": {"embedding": (V, C)}}
    for layer in range(model.n_layer):
        tree[f"lstm_{layer}"] = {"ih": {"kernel": (C, 4 * C)}, "hh": {"kernel": (C, 4 * C), "bias": (4 * C,)}}
    tree["lm_head"] = {"kernel": (C, V), "bias": (V,)}
    return tree


def zero_state(model: ModelConfig, batch_size: int):
    """The zero state the lesson fixes: n_layer pairs (c, h) of zeros (batch_size, n_embd)."""
    import jax.numpy as jnp

    zeros = jnp.zeros((batch_size, model.n_embd), jnp.float32)
    return tuple((zeros, zeros) for _ in range(model.n_layer))


def as_state(state):
    """A model's returned state as tuples of tuples (a model may return lists), so that it can be carried."""
    return tuple((pair[0], pair[1]) for pair in state)


def init_params(model, config: Config, key):
    """model.init's parameter tree, checked against the lesson's tree so that checkpoints load anywhere."""
    import jax
    import jax.numpy as jnp

    dummy = jnp.zeros((1, config.model.block_size), jnp.int32)
    try:
        params = jax.jit(model.init)(key, dummy)["params"]
    except Exception as err:  # the learner's code: a stub or a bug
        raise loop.TrainingError(loop.explain_model_error(err, LSTM_TASK, "CharLSTM")) from None
    _check_tree(params, config)
    return params


def check_model_tree(model, config: Config) -> None:
    """The model's parameter tree, traced (not run), checked against the lesson's tree: a model changed since
    its checkpoint was saved is named here, not deep inside a compiled step."""
    import jax
    import jax.numpy as jnp

    dummy = jnp.zeros((1, config.model.block_size), jnp.int32)
    try:
        shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), dummy)["params"]
    except Exception as err:  # the learner's code: a stub or a bug
        raise loop.TrainingError(loop.explain_model_error(err, LSTM_TASK, "CharLSTM")) from None
    _check_tree(shapes, config)


def _check_tree(params, config: Config) -> None:
    from jaxgpt.training.checkpoint import tree_mismatch

    problem = tree_mismatch(loop._plain_dict(params), param_shapes(config.model))
    if problem:
        raise loop.TrainingError(f"The CharLSTM of task {LSTM_TASK} does not have the lesson's parameter tree "
                                 f"({problem}); run `jaxgpt check {LSTM_TASK}` to see what differs.")


# ----------------------------------------------------------------------------------------------------
# Chunks, steps, evaluation


def chunks(ids, batch_size: int, block_size: int):
    """(x, y), int32 (N, B, T) each: the text as batch_size streams of consecutive chunks (task 15's
    stream_chunks). N = (len(ids) - 1) // (B * T); x[i, b] = ids[(b * N + i) * T : (b * N + i + 1) * T]."""
    ids = np.asarray(ids, np.int32)
    B, T = batch_size, block_size
    N = (len(ids) - 1) // (B * T)
    x = ids[: B * N * T].reshape(B, N, T).transpose(1, 0, 2)
    y = ids[1: B * N * T + 1].reshape(B, N, T).transpose(1, 0, 2)
    return x, y


def _chunk_loss(model, params, lstm_state, x, y):
    """(mean cross entropy of one chunk, the state it ends with)."""
    import optax

    logits, lstm_state = model.apply({"params": params}, x, lstm_state)  # (B, T, vocab_size)
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), as_state(lstm_state)


def make_train_steps(model, tx, config: Config, steps_per_call: int, carry_state: bool = True):
    """A jitted function running `steps_per_call` steps of truncated backpropagation through time:
    (params, opt_state, lstm_state, xs, ys, first_step) -> (params, opt_state, lstm_state, losses).
    xs, ys (N, B, T) from `chunks`; step s trains on chunk s % N from the carried state, zeros at s % N == 0.
    carry_state=False resets the state to zeros at every chunk instead (the mistake task 15's lesson
    measures: bench/lstm_vs_gpt.py)."""
    import jax
    import jax.numpy as jnp
    import optax

    zeros = zero_state(config.model, config.train.batch_size)
    value_and_grad = jax.value_and_grad(functools.partial(_chunk_loss, model), has_aux=True)

    def one_step(carry, step):
        params, opt_state, lstm_state, xs, ys = carry
        i = step % xs.shape[0]
        reset = (i == 0) | (not carry_state)
        lstm_state = jax.tree_util.tree_map(lambda z, s: jnp.where(reset, z, s), zeros, lstm_state)
        (loss, lstm_state), grads = value_and_grad(params, lstm_state, xs[i], ys[i])
        updates, opt_state = tx.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        return (params, opt_state, lstm_state, xs, ys), loss

    @jax.jit
    def train_steps(params, opt_state, lstm_state, xs, ys, first_step):
        steps = first_step + jnp.arange(steps_per_call)
        (params, opt_state, lstm_state, _, _), losses = jax.lax.scan(
            one_step, (params, opt_state, as_state(lstm_state), xs, ys), steps)
        return params, opt_state, lstm_state, losses

    return train_steps


def make_evaluate(model, config: Config):
    """A jitted function (params, xs, ys) -> the mean loss of the chunks xs, ys (n, B, T), read in order from
    the zero state: every token predicted from all the text of its stream before it."""
    import jax
    import jax.numpy as jnp

    zeros = zero_state(config.model, config.train.batch_size)

    @jax.jit
    def evaluate(params, xs, ys):
        def one_chunk(carry, chunk):
            lstm_state, total = carry
            loss, lstm_state = _chunk_loss(model, params, lstm_state, *chunk)
            return (lstm_state, total + loss), None

        (_, total), _ = jax.lax.scan(one_chunk, (zeros, jnp.float32(0.0)), (xs, ys))
        return total / xs.shape[0]

    return evaluate


class CarriedSteps:
    """loop.fit's training call, `(params, opt_state, data, key, first_step) -> (params, opt_state, losses)`,
    for the LSTM. Its `opt_state` is the pair (the optimiser's state, the LSTM state): the state one call ends
    with is where the next call begins, and it is saved and resumed with the rest of the training state. The
    chunks (N, B, T) live here; `data` and `key` are unused (the chunks are read in order, step s chunk s % N).
    """

    def __init__(self, train_steps: Callable, xs, ys):
        self.train_steps, self.xs, self.ys = train_steps, xs, ys

    def __call__(self, params, opt_state, data=None, key=None, first_step=0):
        tx_state, lstm_state = opt_state
        params, tx_state, lstm_state, losses = self.train_steps(params, tx_state, lstm_state, self.xs, self.ys,
                                                                first_step)
        return params, (tx_state, lstm_state), losses

    def lower(self, params, opt_state, data=None, key=None, first_step=0):
        """jax.jit's `lower` for loop.fit, which compiles the step ahead of its first call (so that tokens per
        second count training alone): `.compile()` gives a CarriedSteps around the compiled function."""
        lowered = self.train_steps.lower(params, *opt_state, self.xs, self.ys, first_step)
        return _Lowered(lambda: CarriedSteps(lowered.compile(), self.xs, self.ys))


class _Lowered:
    def __init__(self, compile: Callable[[], CarriedSteps]):
        self.compile = compile


# ----------------------------------------------------------------------------------------------------
# The run


def prepare(config: Config | None, *, impl: Any = None, text: str | None = None,
            data_path: str | os.PathLike | None = None, steps_per_call: int = 10,
            resume: str | os.PathLike | None = None, data_named_by: str = "data_path") -> loop.Run:
    """Reads the text, builds task 15's CharLSTM from `impl` (default "reference"), initialises it and the
    optimiser: a loop.Run at step 0 that loop.fit trains. The Run's opt_state is the pair (the optimiser's
    state, the LSTM state), see CarriedSteps.

    resume: a checkpoint directory of a CharLSTM run to continue where it stopped, with its configuration
    (config may be None; one that differs is refused), parameters, optimiser state, step and carried LSTM
    state, so that every loss is the uninterrupted run's; impl defaults to the code that trained it, and the
    text must be the same. Raises loop.TrainingError, ConfigError, data.DataError."""
    import jax

    from jaxgpt import data
    from jaxgpt.tokenizer import ByteTokenizer, CharTokenizer

    started = time.perf_counter()
    resumed = _load_for_resume(resume, config) if resume is not None else None
    if resumed is not None:
        config = resumed["config"]
        impl = resumed["source"].get("impl", "reference") if impl is None else impl
    if config is None:
        raise ConfigError("No configuration was given: name one (recurrent.get_config('tiny')) or resume a "
                          "checkpoint.")
    impl = "reference" if impl is None else impl
    if text is None:
        text = data.load_text(data_path, named_by=data_named_by)
    text_sha256 = hashlib.sha256(text.encode("utf-8")).hexdigest()
    if resumed is not None and text_sha256 != resumed["training"]["text_sha256"]:
        raise loop.TrainingError(f"The run in {resume} was trained on another text: resume it with the same text "
                                 f"(the same --data) it started with.")
    tokenizer = ByteTokenizer() if config.train.tokenizer == "byte" else CharTokenizer.from_text(text)
    config = config.with_vocab_size(tokenizer.vocab_size)
    B, T = config.train.batch_size, config.model.block_size
    ids = np.asarray(tokenizer.encode(text), dtype=np.int32)
    train_ids, eval_ids = data.train_eval_split(ids)
    if len(eval_ids) < B * T + 1:
        raise loop.TrainingError(
            f"The text has {len(ids):,} characters; its last 10% (the eval split, {len(eval_ids):,}) must hold "
            f"at least batch_size x block_size + 1 = {B * T + 1}, one chunk of every stream. Use a longer text "
            f"or a configuration with fewer or shorter streams.")
    train_xs, train_ys = chunks(train_ids, B, T)
    eval_xs, eval_ys = chunks(eval_ids, B, T)
    n_eval = min(config.train.eval_iters, eval_xs.shape[0], train_xs.shape[0])

    impl_label = loop._impl_label(impl)
    model = build_model(model_class(impl), config)
    tx = loop.make_optimizer(config.train)
    if resumed is None:
        init_key, train_key, eval_key = jax.random.split(jax.random.PRNGKey(config.train.seed), 3)
        params = init_params(model, config, init_key)
        opt_state, step = (tx.init(params), zero_state(config.model, B)), 0
        history = loop.History(config=config.to_dict(), impl=impl_label, task=LSTM_TASK,
                               n_params=loop.count_params(params))
    else:
        check_model_tree(model, config)
        training = resumed["training"]
        params, opt_state = jax.device_put(resumed["params"]), jax.device_put(training["opt_state"])
        train_key, eval_key = jax.device_put(training["train_key"]), jax.device_put(training["eval_key"])
        step = training["step"]
        history = loop._history_for_resume(Path(resume), config, impl_label, LSTM_TASK,
                                           loop.count_params(params), step)
    history.params, history.tokenizer = params, tokenizer
    k = loop._steps_per_call(steps_per_call, config.train, start=step)
    steps = CarriedSteps(make_train_steps(model, tx, config, k), jax.device_put(train_xs),
                         jax.device_put(train_ys))
    evaluate_chunks = make_evaluate(model, config)
    split = [jax.device_put(a[:n_eval]) for a in (train_xs, train_ys, eval_xs, eval_ys)]

    def evaluate(params, train_data=None, eval_data=None, key=None):
        return evaluate_chunks(params, split[0], split[1]), evaluate_chunks(params, split[2], split[3])

    return loop.Run(config=config, task=LSTM_TASK, impl_label=impl_label, tokenizer=tokenizer, model=model,
                    params=params, opt_state=opt_state, train_data=jax.device_put(train_ids),
                    eval_data=jax.device_put(eval_ids), train_steps=steps, evaluate=evaluate, steps_per_call=k,
                    train_key=train_key, eval_key=eval_key, history=history, started=started, step=step,
                    text_sha256=text_sha256, resumed_from=None if resume is None else str(resume),
                    earlier_wall_seconds=history.wall_seconds if resume is not None else 0.0)


def _load_for_resume(resume: str | os.PathLike, config: Config | None) -> dict[str, Any]:
    """The CharLSTM checkpoint to resume, with its training state (the optimiser's and the LSTM's);
    loop.TrainingError with a sentence if it cannot be resumed."""
    from jaxgpt.training import checkpoint

    try:
        params, saved_config, _, meta = checkpoint.load(resume)
    except checkpoint.CheckpointError as err:
        raise loop.TrainingError(str(err)) from None
    source = meta.get("source") or {}
    task = int(source.get("task", 1))
    if task != LSTM_TASK:
        raise loop.TrainingError(f"The run in {resume} trained task {task}'s MiniGPT, not task {LSTM_TASK}'s "
                                 f"CharLSTM: a resumed run keeps its model, so continue it as a GPT run "
                                 f"(`jaxgpt train --resume {resume}`, without --model lstm).")
    if config is not None and config.with_vocab_size(saved_config.model.vocab_size) != saved_config:
        raise loop.TrainingError(
            f"The run in {resume} was trained with the configuration `{saved_config.name}` (max_iters "
            f"{saved_config.train.max_iters:,}, eval_interval {saved_config.train.eval_interval:,}, tokenizer "
            f"{saved_config.train.tokenizer}); a resumed run keeps its configuration and tokenizer, so that it "
            f"goes on exactly as it would have without the interruption.")
    template = (loop.make_optimizer(saved_config.train).init(params),
                zero_state(saved_config.model, saved_config.train.batch_size))
    try:
        training = checkpoint.load_training_state(resume, template)
    except checkpoint.CheckpointError as err:
        raise loop.TrainingError(f"{err} (A CharLSTM checkpoint holds the optimiser's state and the LSTM state "
                                 f"its last step ended with.)") from None
    if training["step"] >= saved_config.train.max_iters:
        raise loop.TrainingError(f"The run in {resume} is finished (step {training['step']:,} of "
                                 f"{saved_config.train.max_iters:,}): there is nothing to resume. Sample from it "
                                 f"(`jaxgpt sample --checkpoint {resume}`), or start a new run with more steps.")
    return {"params": params, "config": saved_config, "source": source, "training": training}


def train(config: Config | str | None = "tiny", *, impl: Any = None, text: str | None = None,
          data_path: str | os.PathLike | None = None, out_dir: str | os.PathLike | None = None,
          progress: bool = True, steps_per_call: int = 10, log: Callable[[str], None] | None = None,
          resume: str | os.PathLike | None = None, overwrite: bool = False,
          data_named_by: str = "data_path") -> loop.History:
    """Trains task 15's CharLSTM from `impl` (default "reference") with truncated backpropagation through time
    and returns its History; with out_dir, saves checkpoints and history.json there (loop.fit), never over
    the checkpoint of another run unless overwrite=True. config: a Config or the name of one of CONFIGS.
    resume: a checkpoint directory whose run to continue (config may then be None; see prepare); it saves
    back there unless out_dir names another directory."""
    from jaxgpt import data

    if isinstance(config, str):
        config = get_config(config)
    if resume is not None and out_dir is None:
        out_dir = resume
    if text is None:  # first, so that a wrong path is said before anything else
        text = data.load_text(data_path, named_by=data_named_by)
    if out_dir is not None:
        loop.check_out_dir(out_dir, overwrite=overwrite, resume=resume)
    run = prepare(config, impl=impl, text=text, steps_per_call=steps_per_call, resume=resume,
                  data_named_by=data_named_by)
    return loop.fit(run, out_dir=out_dir, progress=progress, log=log)


def default_out_dir(config: Config, impl: Any = "tasks"):
    """checkpoints/lstm-tiny (with -reference for the reference's CharLSTM), beside the GPT's checkpoints."""
    return loop.default_out_dir(config.name, impl, LSTM_TASK)


__all__ = ["CONFIGS", "LSTM_TASK", "CarriedSteps", "as_state", "build_model", "check_model_tree", "chunks",
           "default_out_dir", "get_config", "init_params", "make_evaluate", "make_train_steps", "model_class",
           "param_shapes", "prepare", "train", "zero_state"]
