"""Training a MiniGPT on a text: the harness behind `jaxgpt train` and the milestones.

The model class comes from an implementation (`reference`, your `tasks`, a directory or a file): task 1's
MiniGPT by default, task 6's hand-built one with task=6. Everything else is the standard recipe:

    loss       mean cross entropy over batch and time
    optimizer  AdamW (optax), global-norm clipping, linear warmup then cosine decay (see configs.py)
    step       jitted; several steps run inside one compiled call with jax.lax.scan, which saves a Python
               round trip per step (about a third faster on a 2-core CPU for the tiny model)
    dropout    a fresh key every step, folded from the step number, so a run is reproducible
    eval       every eval_interval steps: the mean loss of eval_iters batches from each split, dropout off
    save       a checkpoint (see checkpoint.py) at each evaluation and at the end, history.json beside it;
               never over the checkpoint of another run unless told (overwrite=True)
    Ctrl-C     answered at once; the run stops when the compiled call in progress ends, evaluates and saves
               (a second Ctrl-C skips the evaluation); see _CtrlC
    resume     prepare(resume=directory) continues a saved run with its optimiser state, step and key
               streams: the same batches, dropout masks and losses as the run never interrupted
    speed      the training step is compiled ahead of its first call, so tokens per second counts every
               call, also in a run of one call
    at scale   bfloat16 compute on float32 parameters, gradient accumulation over micro-batches, a device
               mesh (data, model and fully sharded parallelism): TrainConfig's precision, accumulate,
               data_parallel, model_parallel and fully_sharded, built by scaling.py; the defaults take the
               plain path (one float32 pass on one device), whose step is unchanged
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from jaxgpt.grader import task_list, outcomes
from jaxgpt import contract
from jaxgpt.training.configs import Config, ConfigError, TrainConfig

MODEL_TASKS = (1, 6)  # the tasks whose MiniGPT can be trained


class TrainingError(Exception):
    """Training could not start or go on; the message says why in a sentence a learner can act on."""


@dataclasses.dataclass
class History:
    """What a run did: the losses at each evaluation, the loss of every training batch, and its speed."""

    config: dict[str, Any]
    impl: str
    task: int
    n_params: int
    steps: list[int] = dataclasses.field(default_factory=list)  # the steps at which it evaluated
    train_losses: list[float] = dataclasses.field(default_factory=list)  # at those steps, dropout off
    eval_losses: list[float] = dataclasses.field(default_factory=list)
    batch_losses: list[float] = dataclasses.field(default_factory=list)  # every step's training batch
    wall_seconds: float = 0.0  # the whole run: compiling, training, evaluating, saving
    compile_seconds: float = 0.0  # the first call of the training step, which compiles it
    train_seconds: float = 0.0  # the training steps after the first call
    tokens_per_second: float = 0.0  # training tokens per second over train_seconds
    interrupted: bool = False
    checkpoint: str | None = None
    # The trained model, to sample from at once; not written to history.json.
    params: Any = dataclasses.field(default=None, repr=False, compare=False)
    tokenizer: Any = dataclasses.field(default=None, repr=False, compare=False)

    @property
    def final_eval_loss(self) -> float | None:
        return self.eval_losses[-1] if self.eval_losses else None

    @property
    def final_train_loss(self) -> float | None:
        return self.train_losses[-1] if self.train_losses else None

    def to_dict(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
             if f.name not in ("params", "tokenizer")}
        d["final_train_loss"] = self.final_train_loss
        d["final_eval_loss"] = self.final_eval_loss
        return d


# ----------------------------------------------------------------------------------------------------
# The model class


def model_class(impl: Any = "reference", task: int = 1):
    """The MiniGPT class of task `task` (1 or 6) from implementation `impl` (see implementation.resolve)."""
    from jaxgpt.grader import implementation

    if int(task) not in MODEL_TASKS:
        raise TrainingError(f"Only tasks 1 and 6 define a MiniGPT to train; got task {task}.")
    try:
        return implementation.resolve(impl).get(task_list.get_task(task), "MiniGPT")
    except (implementation.LoadError, implementation.MissingName) as err:
        raise TrainingError(str(err)) from None


def build_model(model_cls, config: Config):
    m = config.model
    if m.vocab_size is None:
        raise ConfigError("The configuration has no vocab_size yet: call config.with_vocab_size(...) first.")
    if m.n_embd % m.n_head:
        raise ConfigError(f"n_embd ({m.n_embd}) must be a multiple of n_head ({m.n_head}).")
    try:
        return model_cls(**{field: getattr(m, field) for field in contract.MODEL_FIELDS})
    except TypeError as err:
        raise TrainingError(f"`{getattr(model_cls, '__name__', model_cls)}` could not be built with the "
                            f"lesson's fields ({', '.join(contract.MODEL_FIELDS)}): "
                            f"{err}.") from None


def model_name(task: int) -> str:
    """The class a run of task `task` trains, for its sentences: task 15's CharLSTM, else the MiniGPT."""
    return "CharLSTM" if int(task) == 15 else "MiniGPT"


def explain_model_error(err: BaseException, task: int, name: str | None = None) -> str:
    """A sentence for an exception raised inside a learner's model (a stub, a bug), for the command line.
    name: the class named when it is unfinished (default model_name(task))."""
    name = name or model_name(task)
    verdict = outcomes.classify(err, task_list.get_task(task))
    if verdict.status == outcomes.NOT_STARTED:
        return f"task {task} is not finished: `{name}` still raises NotImplementedError."
    if verdict.status == outcomes.BLOCKED:
        return verdict.message[0].upper() + verdict.message[1:]
    where = outcomes.learner_frame(err)
    text = outcomes._trim(str(err), 400)
    if where is None:
        return f"the model raised {type(err).__name__}: {text}"
    return f"your model raised {type(err).__name__}: {text}\n    at {where}"


def init_params(model, config: Config, key, task: int = 1):
    """model.init's parameter tree, checked against the lessons' tree so that checkpoints load anywhere."""
    import jax
    import jax.numpy as jnp

    from jaxgpt.training.checkpoint import expected_param_shapes, tree_mismatch

    dummy = jnp.zeros((1, config.model.block_size), jnp.int32)
    try:
        # Jitted: run eagerly, the first init compiles every operation on its own, which is slower.
        variables = jax.jit(functools.partial(model.init, deterministic=True))(key, dummy)
    except Exception as err:  # the learner's code: a stub or a bug
        raise TrainingError(explain_model_error(err, task)) from None
    params = variables["params"]
    problem = tree_mismatch(_plain_dict(params), expected_param_shapes(config.model))
    if problem:
        raise TrainingError(f"The MiniGPT of task {task} does not have the lesson's parameter tree "
                            f"({problem}); run `jaxgpt check {task}` to see what differs.")
    return params


def _plain_dict(tree):
    if hasattr(tree, "keys"):
        return {k: _plain_dict(tree[k]) for k in tree.keys()}
    return tree


def count_params(params) -> int:
    import jax

    return int(sum(np.size(x) for x in jax.tree_util.tree_leaves(params)))


# ----------------------------------------------------------------------------------------------------
# Optimiser, loss, steps


def learning_rate_schedule(train: TrainConfig):
    """The learning rate: a constant, or a linear warmup from 0 to learning_rate over warmup_iters steps
    followed by a cosine decay that reaches min_lr at max_iters."""
    import optax

    if train.schedule == "constant":
        return train.learning_rate
    if train.schedule == "cosine":
        warmup = min(train.warmup_iters, max(train.max_iters - 1, 0))
        # optax's decay_steps counts the warmup too.
        return optax.warmup_cosine_decay_schedule(
            init_value=0.0, peak_value=train.learning_rate, warmup_steps=warmup,
            decay_steps=max(train.max_iters, warmup + 1), end_value=train.min_lr)
    raise ConfigError(f"schedule must be 'cosine' or 'constant', got {train.schedule!r}.")


def make_optimizer(train: TrainConfig):
    """AdamW with the configuration's schedule, decay and clipping."""
    import jax
    import optax

    learning_rate = learning_rate_schedule(train)

    def decayed(params):
        # Weight matrices and embeddings decay; biases and LayerNorm scales do not. By name, not nanoGPT's
        # `ndim >= 2`: Flax's attention biases are (n_head, head_size) and would decay (task 1's lesson).
        return jax.tree_util.tree_map_with_path(
            lambda path, _: getattr(path[-1], "key", None) in ("kernel", "embedding"), params)

    adamw = optax.adamw(learning_rate, b1=0.9, b2=train.beta2, weight_decay=train.weight_decay, mask=decayed)
    if train.grad_clip > 0:
        return optax.chain(optax.clip_by_global_norm(train.grad_clip), adamw)
    return adamw


def loss_fn(model, params, x, y, deterministic=True, dropout_key=None, compute_dtype=None):
    """Mean cross entropy of the next-token predictions over batch and time.

    compute_dtype (e.g. jnp.bfloat16): the model runs on a copy of the parameters cast to it, so that it
    computes in that dtype (any MiniGPT, no dtype field needed); its logits are cast back to float32 for the
    softmax and the loss. The gradient with respect to `params` keeps their dtype (float32)."""
    import jax.numpy as jnp
    import optax

    from jaxgpt.training import scaling

    rngs = None if deterministic else {"dropout": dropout_key}
    if compute_dtype is not None:
        params = scaling.cast_floats(params, compute_dtype)
    logits = model.apply({"params": params}, x, deterministic=deterministic, rngs=rngs)  # (B, T, vocab_size)
    if compute_dtype is not None:
        logits = logits.astype(jnp.float32)
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()


def make_grad_fn(model, config: Config, mesh=None):
    """(params, x, y, dropout_key) -> (loss, grads): a step's mean loss over its batch x, y (B, T) and the
    gradient, in the configuration's precision, over its `accumulate` micro-batches, split over `mesh`.

    With accumulate K the batch is reshaped to (K, B/K, T) and a scan adds the K micro-batch gradients in
    float32; their mean is the gradient of the mean loss over the whole batch, as the micro-batches are
    equal in size. Micro-batch i takes dropout key fold_in(dropout_key, i)."""
    import jax
    import jax.numpy as jnp

    from jaxgpt.training import scaling

    K = config.train.accumulate
    deterministic = config.model.dropout_rate == 0.0
    dtype = scaling.compute_dtype(config.train)
    value_and_grad = jax.value_and_grad(
        lambda p, x, y, key: loss_fn(model, p, x, y, deterministic, key, compute_dtype=dtype))

    if K == 1:
        def grad_fn(params, x, y, dropout_key):
            x, y = scaling.shard_batch((x, y), mesh)
            return value_and_grad(params, x, y, dropout_key)

        return grad_fn

    def grad_fn(params, x, y, dropout_key):
        B, T = x.shape
        xs, ys = scaling.shard_batch((x.reshape(K, B // K, T), y.reshape(K, B // K, T)), mesh, batch_axis=1)

        def micro_batch(total, inputs):
            i, x_i, y_i = inputs  # (B/K, T) each
            loss, grads = value_and_grad(params, x_i, y_i, jax.random.fold_in(dropout_key, i))
            return jax.tree_util.tree_map(jnp.add, total, grads), loss

        zeros = jax.tree_util.tree_map(jnp.zeros_like, params)
        total, losses = jax.lax.scan(micro_batch, zeros, (jnp.arange(K), xs, ys))
        return losses.mean(), jax.tree_util.tree_map(lambda g: g / K, total)

    return grad_fn


def make_train_steps(model, tx, config: Config, steps_per_call: int, mesh=None, donate: bool = False):
    """A jitted function running `steps_per_call` training steps: (params, opt_state, data, key, first_step)
    -> (params, opt_state, losses (steps_per_call,)). With `mesh` (scaling.make_mesh), the parameters and
    optimiser state come and go placed as scaling.place puts them, and each batch is split over the mesh.
    donate: the call may overwrite the parameters and optimiser state it is given (their buffers become the
    results'), so the caller must not use them again."""
    import jax

    from jaxgpt.data import get_batch
    from jaxgpt.training import scaling

    B, T = config.train.batch_size, config.model.block_size
    grad_fn = make_grad_fn(model, config, mesh)

    def one_step(carry, step):
        params, opt_state, data, key = carry
        batch_key, dropout_key = jax.random.split(jax.random.fold_in(key, step))  # fresh keys every step
        x, y = get_batch(batch_key, data, B, T)  # (B, T), (B, T)
        loss, grads = grad_fn(params, x, y, dropout_key)
        updates, opt_state = tx.update(grads, opt_state, params)
        params = jax.tree_util.tree_map(lambda p, u: p + u, params, updates)
        if mesh is not None:
            params, opt_state = scaling.constrain((params, opt_state), mesh, config.train)
        return (params, opt_state, data, key), loss

    @functools.partial(jax.jit, donate_argnums=(0, 1) if donate else ())
    def train_steps(params, opt_state, data, key, first_step):
        steps = first_step + jax.numpy.arange(steps_per_call)
        (params, opt_state, _, _), losses = jax.lax.scan(one_step, (params, opt_state, data, key), steps)
        return params, opt_state, losses

    return train_steps


def make_evaluate(model, config: Config, mesh=None):
    """A jitted function: (params, train_data, eval_data, key) -> (train loss, eval loss), each the mean over
    eval_iters random batches, dropout off. In float32 whatever the training precision: the parameters as
    they are saved and sampled. With `mesh`, each batch is split over it."""
    import jax
    import jax.numpy as jnp

    from jaxgpt.data import get_batch
    from jaxgpt.training import scaling

    B, T, n = config.train.batch_size, config.model.block_size, config.train.eval_iters

    @jax.jit
    def evaluate(params, train_data, eval_data, key):
        def one_batch(total, batch_key):
            k1, k2 = jax.random.split(batch_key)
            split = functools.partial(scaling.shard_batch, mesh=mesh)  # no-op on one device
            losses = jnp.stack([loss_fn(model, params, *split(get_batch(k1, train_data, B, T))),
                                loss_fn(model, params, *split(get_batch(k2, eval_data, B, T)))])
            return total + losses, None

        total, _ = jax.lax.scan(one_batch, jnp.zeros(2), jax.random.split(key, n))
        return total / n

    return evaluate


def _steps_per_call(wanted: int, train: TrainConfig, start: int = 0) -> int:
    # Each compiled call must end exactly at every evaluation and at max_iters, so its length divides both,
    # and, for a resumed run, the step it starts from.
    boundary = math.gcd(math.gcd(train.eval_interval, train.max_iters), start)
    return max(k for k in range(1, max(1, min(wanted, boundary)) + 1) if boundary % k == 0)


# ----------------------------------------------------------------------------------------------------
# The run


@dataclasses.dataclass
class Run:
    """A run ready to go: the model, its data on the device, its compiled steps, and the state they change."""

    config: Config
    task: int
    impl_label: str
    tokenizer: Any
    model: Any
    params: Any
    opt_state: Any
    train_data: Any
    eval_data: Any
    train_steps: Callable  # (params, opt_state, data, key, first_step) -> (params, opt_state, losses)
    evaluate: Callable  # (params, train_data, eval_data, key) -> (train_loss, eval_loss)
    steps_per_call: int
    train_key: Any
    eval_key: Any
    history: History
    started: float  # time.perf_counter() when preparing began: wall_seconds counts from there
    step: int = 0
    text_sha256: str = ""  # the training text's, saved with the checkpoint so that a resume uses the same text
    resumed_from: str | None = None  # the checkpoint directory this run continues
    earlier_wall_seconds: float = 0.0  # the wall time of the sessions before a resume
    mesh: Any = None  # the device mesh the step is split over (scaling.make_mesh); None: one device


class CheckpointExists(TrainingError):
    """The output directory holds the checkpoint of another run, which training would replace."""

    def __init__(self, directory: Path, description: str, resumable: bool):
        self.directory, self.description, self.resumable = directory, description, resumable
        resume = "Resume that run (resume=...), save" if resumable else "Save"
        super().__init__(f"{directory} already holds a checkpoint of another run ({description}); training "
                         f"now would replace it. {resume} this one elsewhere (out_dir=...), or pass "
                         f"overwrite=True to replace it.")


def default_out_dir(config_name: str, impl: Any = "tasks", task: int = 1) -> Path:
    """Where `jaxgpt train` saves when no directory is named: checkpoints/<config>, with -task6 for task 6's
    MiniGPT and -reference for the reference's, so that the runs of the course (the reference's, your task
    1's, your task 6's) each keep their own checkpoint."""
    name = config_name + ("-task6" if int(task) == 6 else "") + ("-reference" if impl == "reference" else "")
    return Path("checkpoints") / name


def check_out_dir(out_dir: str | os.PathLike, *, overwrite: bool = False,
                  resume: str | os.PathLike | None = None) -> None:
    """Raises CheckpointExists when `out_dir` holds a checkpoint that this run would replace: one of another
    run, unless `overwrite`; the run being resumed may be saved over."""
    from jaxgpt.training import checkpoint

    out = Path(out_dir)
    if overwrite or not checkpoint.holds_checkpoint(out):
        return
    if resume is not None and _same_path(out, Path(resume)):
        return
    raise CheckpointExists(out, checkpoint.describe(out), checkpoint.resumable(out))


def _same_path(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve()
    except OSError:
        return a == b


def prepare(config: Config | None, *, impl: Any = None, task: int | None = None, text: str | None = None,
            data_path: str | os.PathLike | None = None, steps_per_call: int = 10,
            resume: str | os.PathLike | None = None, data_named_by: str = "data_path") -> Run:
    """Reads the text, builds the model from `impl` and initialises it and the optimiser: a `Run` at step 0.
    With `resume` (a checkpoint directory), the run continues where that checkpoint stopped instead: its
    configuration, parameters, optimiser state, step and key streams, so that it goes on exactly as the
    uninterrupted run would have.

    impl, task: default "reference" and 1; for a resumed run, those that trained the checkpoint.
    text: the text to train on; default load_text(data_path) (tiny Shakespeare, or the file named, which
    error messages call `data_named_by`). A resumed run must be given the same text as the first.
    Raises TrainingError (an unfinished or broken model, a text too short, a checkpoint that cannot be
    resumed), ConfigError, data.DataError.
    """
    import jax

    from jaxgpt import data
    from jaxgpt.tokenizer import ByteTokenizer, CharTokenizer

    started = time.perf_counter()
    resumed = _load_for_resume(resume, config) if resume is not None else None
    if resumed is not None:
        config = resumed["config"]
        impl = resumed["source"].get("impl", "reference") if impl is None else impl
        task = int(resumed["source"].get("task", 1)) if task is None else task
    if config is None:
        raise ConfigError("No configuration was given: name one (configs.get_config('tiny')) or resume a "
                          "checkpoint.")
    from jaxgpt.training import scaling

    mesh = scaling.make_mesh(config.train)  # first: too few devices is said before anything loads
    impl = "reference" if impl is None else impl
    task = 1 if task is None else int(task)
    if text is None:
        text = data.load_text(data_path, named_by=data_named_by)
    text_sha256 = hashlib.sha256(text.encode("utf-8")).hexdigest()
    tokenizer = ByteTokenizer() if config.train.tokenizer == "byte" else CharTokenizer.from_text(text)
    if resumed is not None and text_sha256 != resumed["training"]["text_sha256"]:
        raise TrainingError(f"The run in {resume} was trained on another text: resume it with the same text "
                            f"(the same --data) it started with.")
    config = config.with_vocab_size(tokenizer.vocab_size)
    train_cfg, T = config.train, config.model.block_size
    ids = np.asarray(tokenizer.encode(text), dtype=np.int32)
    train_ids, eval_ids = data.train_eval_split(ids)
    if len(eval_ids) < T + 1:
        raise TrainingError(
            f"The text has {len(ids):,} characters; its last 10% (the eval split, {len(eval_ids):,}) must hold "
            f"at least block_size + 1 = {T + 1}. Use a longer text or a configuration with a smaller block.")

    impl_label = _impl_label(impl)
    model = build_model(model_class(impl, task), config)
    tx = make_optimizer(train_cfg)
    if resumed is None:
        init_key, train_key, eval_key = jax.random.split(jax.random.PRNGKey(train_cfg.seed), 3)
        params = init_params(model, config, init_key, task)
        opt_state, step = tx.init(params), 0
        history = History(config=config.to_dict(), impl=impl_label, task=task, n_params=count_params(params))
    else:
        check_model_tree(model, config, task)
        params = jax.device_put(resumed["params"])
        training = resumed["training"]
        opt_state = jax.device_put(training["opt_state"])
        train_key, eval_key = jax.device_put(training["train_key"]), jax.device_put(training["eval_key"])
        step = training["step"]
        history = _history_for_resume(Path(resume), config, impl_label, task, count_params(params), step)
    train_data, eval_data = jax.device_put(train_ids), jax.device_put(eval_ids)
    if mesh is not None:  # the state split or copied over the mesh; the text and keys copied on every device
        params, opt_state = scaling.place((params, opt_state), mesh, train_cfg)
        train_data, eval_data, train_key, eval_key = scaling.replicate(
            (train_data, eval_data, train_key, eval_key), mesh)
    history.params, history.tokenizer = params, tokenizer
    k = _steps_per_call(steps_per_call, train_cfg, start=step)
    return Run(config=config, task=task, impl_label=impl_label, tokenizer=tokenizer, model=model,
               params=params, opt_state=opt_state, train_data=train_data, eval_data=eval_data,
               train_steps=make_train_steps(model, tx, config, k, mesh), evaluate=make_evaluate(model, config, mesh),
               steps_per_call=k, train_key=train_key, eval_key=eval_key, history=history, started=started,
               step=step, text_sha256=text_sha256, resumed_from=None if resume is None else str(resume),
               earlier_wall_seconds=history.wall_seconds if resume is not None else 0.0, mesh=mesh)


def _load_for_resume(resume: str | os.PathLike, config: Config | None) -> dict[str, Any]:
    """The checkpoint to resume, with its training state; TrainingError if it cannot be resumed."""
    from jaxgpt.training import checkpoint

    try:
        params, saved_config, _, meta = checkpoint.load(resume)
    except checkpoint.CheckpointError as err:
        raise TrainingError(str(err)) from None
    from jaxgpt.training.recurrent import LSTM_TASK

    if int((meta.get("source") or {}).get("task", 1)) == LSTM_TASK:  # its training state also holds LSTM state
        raise TrainingError(f"The run in {resume} trained task {LSTM_TASK}'s CharLSTM, not a MiniGPT: a resumed "
                            f"run keeps its model, so continue it with recurrent.train(None, resume=...) "
                            f"(`jaxgpt train --resume {resume}` finds its model itself).")
    try:
        training = checkpoint.load_training_state(resume, make_optimizer(saved_config.train).init(params))
    except checkpoint.CheckpointError as err:
        raise TrainingError(str(err)) from None
    if config is not None and config.with_vocab_size(saved_config.model.vocab_size) != saved_config:
        raise TrainingError(f"The run in {resume} was trained with the configuration `{saved_config.name}` "
                            f"(max_iters {saved_config.train.max_iters:,}, eval_interval "
                            f"{saved_config.train.eval_interval:,}); a resumed run keeps its configuration, "
                            f"so that it goes on exactly as it would have without the interruption.")
    if training["step"] >= saved_config.train.max_iters:
        raise TrainingError(f"The run in {resume} is finished (step {training['step']:,} of "
                            f"{saved_config.train.max_iters:,}): there is nothing to resume. Sample from it "
                            f"(`jaxgpt sample --checkpoint {resume}`), or start a new run with more steps.")
    return {"params": params, "config": saved_config, "source": meta.get("source") or {}, "training": training}


def check_model_tree(model, config: Config, task: int) -> None:
    """The model's parameter tree, traced (not run), checked against the lessons' tree: a model changed since
    its checkpoint was saved is named here, not deep inside a compiled step."""
    import jax
    import jax.numpy as jnp

    from jaxgpt.training.checkpoint import expected_param_shapes, tree_mismatch

    dummy = jnp.zeros((1, config.model.block_size), jnp.int32)
    try:
        shapes = jax.eval_shape(functools.partial(model.init, deterministic=True), jax.random.PRNGKey(0), dummy)
    except Exception as err:  # the learner's code: a stub or a bug
        raise TrainingError(explain_model_error(err, task)) from None
    problem = tree_mismatch(_plain_dict(shapes["params"]), expected_param_shapes(config.model))
    if problem:
        raise TrainingError(f"The MiniGPT of task {task} does not have the lesson's parameter tree "
                            f"({problem}); run `jaxgpt check {task}` to see what differs.")


def _history_for_resume(directory: Path, config: Config, impl_label: str, task: int, n_params: int,
                        step: int) -> History:
    """The history saved beside the checkpoint, cut at the checkpoint's step (history.json is written just
    before the checkpoint, so it may be one save ahead); a fresh one if it is missing or unreadable."""
    fresh = History(config=config.to_dict(), impl=impl_label, task=task, n_params=n_params)
    try:
        saved = json.loads((directory / HISTORY_FILE).read_text(encoding="utf-8"))
        known = {f.name for f in dataclasses.fields(History)} - {"params", "tokenizer"}
        history = History(**{name: value for name, value in saved.items() if name in known})
        kept = [i for i, s in enumerate(history.steps) if int(s) <= step]
        history.steps = [int(history.steps[i]) for i in kept]
        history.train_losses = [float(history.train_losses[i]) for i in kept]
        history.eval_losses = [float(history.eval_losses[i]) for i in kept]
        history.batch_losses = [float(v) for v in history.batch_losses[:step]]
    except (OSError, ValueError, TypeError, IndexError, AttributeError):
        return fresh
    history.config, history.impl, history.task, history.n_params = fresh.config, impl_label, task, n_params
    history.interrupted, history.checkpoint = False, None
    history.wall_seconds = float(history.wall_seconds or 0.0)
    history.train_seconds = float(history.train_seconds or 0.0)
    return history


HISTORY_FILE = "history.json"


def save(run: Run, out_dir: str | os.PathLike) -> None:
    """A checkpoint of `run` at its current step, with what resuming needs, and history.json beside it.
    history.json is written first: the checkpoint is the record, and a resume cuts the history at its step."""
    from jaxgpt.training import checkpoint

    out = Path(out_dir)
    history = run.history
    history.checkpoint = str(out)
    history.wall_seconds = run.earlier_wall_seconds + time.perf_counter() - run.started
    metrics = {"train_loss": history.final_train_loss, "eval_loss": history.final_eval_loss}
    try:
        out.mkdir(parents=True, exist_ok=True)
        _write_json(out / HISTORY_FILE, history.to_dict())
        checkpoint.save(out, run.params, run.config, run.tokenizer, run.step, metrics,
                        source={"impl": run.impl_label, "task": run.task},
                        training={"opt_state": run.opt_state, "train_key": run.train_key,
                                  "eval_key": run.eval_key, "text_sha256": run.text_sha256})
    except OSError as err:
        raise TrainingError(f"Could not save to {out}: {err.strerror or err}.") from None
    except checkpoint.CheckpointError as err:
        raise TrainingError(str(err)) from None


class _CtrlC:
    """Ctrl-C while `fit` runs. The first press is answered at once and stops the run when the compiled call
    in progress ends (a call cannot be cut short), then evaluates and saves; a second press skips that
    evaluation; presses during the save wait for it, so a checkpoint is never left half-written.

    So that the answer comes at once, the compiled calls run in a worker thread while this (the main) thread
    waits in short slices, in which Python runs signal handlers. Away from the main thread (where signal
    handlers cannot be set), calls run in place and Ctrl-C is the usual KeyboardInterrupt.
    """

    def __init__(self, say: Callable[[str], None], out: Path | None):
        self.say, self.out = say, out
        self.presses = 0
        self.answered = 0
        self.doing = "starting"  # "training", "compiling", "evaluating", "saving"
        self.steps = (0, 0)  # the steps of the call in progress
        self.saved_step: int | None = None
        self.installed = False
        self.previous: Any = None

    def __enter__(self) -> "_CtrlC":
        if threading.current_thread() is threading.main_thread():
            self.previous = signal.signal(signal.SIGINT, self._on_sigint)
            self.installed = True
        return self

    def __exit__(self, *exc) -> None:
        if self.installed:
            signal.signal(signal.SIGINT, self.previous)

    def _on_sigint(self, signum, frame) -> None:
        # Only counted here. Printing from a signal handler can interrupt a print of the main thread, and
        # Python's buffered streams are not reentrant; `wait` prints the answer within 50 ms.
        self.presses += 1

    @property
    def stop(self) -> bool:
        return self.presses > 0

    @property
    def skip_evaluation(self) -> bool:
        return self.presses > 1

    def run(self, doing: str, fn: Callable[[], Any]) -> Any:
        """fn()'s result (or exception), computed in a worker thread while this thread answers Ctrl-C."""
        self.doing = doing
        if not self.installed:
            return fn()
        box: dict[str, Any] = {}

        def work() -> None:
            try:
                box["value"] = fn()
            except BaseException as err:  # handed to the main thread, with its traceback
                box["error"] = err

        worker = threading.Thread(target=work, name="jaxgpt-train", daemon=True)
        worker.start()
        while worker.is_alive():
            worker.join(0.05)
            self.answer()
        self.answer()
        if "error" in box:
            raise box["error"]
        return box["value"]

    def answer(self) -> None:
        while self.answered < self.presses:
            self.answered += 1
            self.say(self._message(self.answered))

    def _then_save(self) -> str:
        """How the stop ends: with a save, or why without one."""
        if self.out is None:
            return "saving nothing (there is no output directory)"
        if self.steps[1] == 0:
            return "saving nothing, as nothing has been trained yet"
        if self.saved_step == self.steps[1]:
            return f"keeping the checkpoint of step {self.saved_step:,} in {self.out}"
        return f"saving a checkpoint in {self.out}"

    def _message(self, press: int) -> str:
        first, last = self.steps
        if self.doing == "saving":
            if press == 1:
                return f"Ctrl-C: stopping as soon as the checkpoint of step {last:,} is saved."
            return f"Still saving: the checkpoint of step {last:,} is written whole in a moment, then it stops."
        if self.doing == "compiling":
            what, cannot = "the training step is compiled", "compiling"
            self.steps = (first, first)  # it stops before training those steps
        elif self.doing == "training":
            what, cannot = f"steps {first + 1:,}-{last:,} are done", "a compiled call"
        else:
            what, cannot = "the evaluation in progress ends", "an evaluation"
        if press == 1:
            skip = " Press Ctrl-C again to skip the evaluation." if self.doing == "training" else ""
            evaluate = "evaluating and " if self.doing == "training" else ""
            return (f"Ctrl-C: stopping when {what} ({cannot} cannot be cut short), then {evaluate}"
                    f"{self._then_save()}.{skip}")
        if press == 2:
            return f"Ctrl-C again: no final evaluation; stopping when {what}, then {self._then_save()}."
        kept = (f"; the checkpoint of step {self.saved_step:,} in {self.out} stays as it is"
                if self.saved_step is not None else "")
        return (f"Still stopping when {what}. To quit at once without saving, press Ctrl-\\ or close the "
                f"terminal{kept}.")


def fit(run: Run, *, out_dir: str | os.PathLike | None = None, progress: bool = True,
        log: Callable[[str], None] | None = None) -> History:
    """Trains `run` to its configuration's max_iters with a progress bar, evaluating every eval_interval
    steps (and saving there, with out_dir). Ctrl-C stops it when the compiled call in progress ends, then it
    evaluates and saves where it stopped (see _CtrlC); `prepare(..., resume=out_dir)` continues it."""
    import jax
    from tqdm.auto import tqdm

    config, history, task = run.config, run.history, run.task
    train_cfg = config.train
    k = run.steps_per_call
    say = log if log is not None else _say
    tokens_per_step = train_cfg.batch_size * config.model.block_size
    out = Path(out_dir) if out_dir is not None else None
    session_steps, session_seconds = 0, 0.0

    with _CtrlC(say, out) as ctrl_c:

        def run_eval() -> None:
            key = jax.random.fold_in(run.eval_key, run.step)
            try:
                train_loss, eval_loss = ctrl_c.run("evaluating", lambda: tuple(
                    float(v) for v in run.evaluate(run.params, run.train_data, run.eval_data, key)))
            except Exception as err:
                raise TrainingError(explain_model_error(err, task)) from None
            history.steps.append(run.step)
            history.train_losses.append(train_loss)
            history.eval_losses.append(eval_loss)
            speed = f", {history.tokens_per_second:,.0f} tok/s" if history.tokens_per_second else ""
            say(f"step {run.step}: train {train_loss:.4f}, eval {eval_loss:.4f}{speed}")

        def checkpoint() -> None:
            if out is not None:
                ctrl_c.steps = (run.step, run.step)
                ctrl_c.run("saving", lambda: save(run, out))
                ctrl_c.saved_step = run.step

        if run.resumed_from is None:
            say(f"Training `{config.name}`: {history.n_params:,} parameters, task {task}'s {model_name(task)} from "
                f"{run.impl_label}, {int(run.train_data.shape[0]):,} training tokens, {train_cfg.max_iters:,} "
                f"steps of {tokens_per_step:,} tokens.")
        else:
            say(f"Resuming `{config.name}` from {run.resumed_from} at step {run.step:,} of "
                f"{train_cfg.max_iters:,}: task {task}'s {model_name(task)} from {run.impl_label}, the same "
                f"{'optimiser state, LSTM state and chunks' if int(task) == 15 else 'optimiser state and batches'}.")
            ctrl_c.saved_step = run.step if out is not None and _same_path(out, Path(run.resumed_from)) else None
        from jaxgpt.training import scaling

        say(scaling.describe(train_cfg, config.model.block_size, run.mesh))
        bar = None
        try:
            ctrl_c.steps = (run.step, run.step)
            if not history.steps or history.steps[-1] != run.step:
                run_eval()
            train_steps = None
            while run.step < train_cfg.max_iters and not ctrl_c.stop:
                ctrl_c.steps = (run.step, run.step + k)
                if train_steps is None:
                    train_steps, history.compile_seconds = _compiled(run, ctrl_c, task)
                    if ctrl_c.stop:
                        break
                    # Made after compiling, so that its steps per second are training's alone.
                    bar = tqdm(total=train_cfg.max_iters, initial=run.step, unit="step", disable=not progress,
                               dynamic_ncols=True, leave=False)
                call_started = time.perf_counter()
                try:
                    run.params, run.opt_state, losses = ctrl_c.run("training", lambda: _block(train_steps(
                        run.params, run.opt_state, run.train_data, run.train_key, run.step)))
                except Exception as err:
                    raise TrainingError(explain_model_error(err, task)) from None
                history.params = run.params
                seconds = time.perf_counter() - call_started
                session_steps += k
                session_seconds += seconds
                history.train_seconds += seconds
                history.tokens_per_second = session_steps * tokens_per_step / session_seconds
                run.step += k
                history.batch_losses.extend(float(v) for v in losses)
                if not np.all(np.isfinite(losses)):
                    bad = losses[~np.isfinite(losses)][0]
                    raise TrainingError(f"The training loss became {bad} by step {run.step}: "
                                        f"lower the learning rate, or look for a log of 0 or a division by 0.")
                bar.update(k)
                bar.set_postfix({"loss": f"{losses.mean():.4f}",
                                 "tok/s": f"{history.tokens_per_second:,.0f}"}, refresh=False)
                if run.step % train_cfg.eval_interval == 0 or run.step == train_cfg.max_iters:
                    if not ctrl_c.skip_evaluation:
                        run_eval()
                    if run.step < train_cfg.max_iters:
                        checkpoint()
        except KeyboardInterrupt:  # only where _CtrlC could not take Ctrl-C over (away from the main thread)
            ctrl_c.presses = max(ctrl_c.presses, 1)
        finally:
            if bar is not None:
                bar.close()

        if run.step < train_cfg.max_iters:
            history.interrupted = True
            if not ctrl_c.skip_evaluation and (not history.steps or history.steps[-1] != run.step):
                run_eval()
            if ctrl_c.saved_step != run.step and run.step > 0:
                checkpoint()
            saved = ""
            if out is not None and ctrl_c.saved_step == run.step:
                history.checkpoint, saved = str(out), f"; the checkpoint is in {out}"
            say(f"Stopped at step {run.step:,} of {train_cfg.max_iters:,}{saved}.")
        else:
            checkpoint()
        history.wall_seconds = run.earlier_wall_seconds + time.perf_counter() - run.started
        return history


def _say(line: str) -> None:
    from tqdm.auto import tqdm

    tqdm.write(line)
    sys.stdout.flush()  # a log file or a pipe sees each line when it is said, not at the end


def _block(result):
    """Waits for a training call's results; its losses as numpy."""
    params, opt_state, losses = result
    return params, opt_state, np.asarray(losses)


def _compiled(run: Run, ctrl_c: _CtrlC, task: int):
    """The training step compiled ahead of time, so that its first call is timed like every other and a run
    of one call still has a speed; and the seconds compiling took."""
    started = time.perf_counter()
    if not hasattr(run.train_steps, "lower"):  # not a jitted function: it compiles on its first call
        return run.train_steps, 0.0
    try:
        compiled = ctrl_c.run("compiling", lambda: run.train_steps.lower(
            run.params, run.opt_state, run.train_data, run.train_key, run.step).compile())
    except Exception as err:
        raise TrainingError(explain_model_error(err, task)) from None
    return compiled, time.perf_counter() - started


def train(config: Config | None, *, impl: Any = None, task: int | None = None, text: str | None = None,
          data_path: str | os.PathLike | None = None, out_dir: str | os.PathLike | None = None,
          progress: bool = True, steps_per_call: int = 10, log: Callable[[str], None] | None = None,
          resume: str | os.PathLike | None = None, overwrite: bool = False,
          data_named_by: str = "data_path") -> History:
    """Trains `config` and returns its History; with out_dir, saves checkpoints and history.json there.
    `prepare`, then `fit` (which calls `save` at each evaluation).

    out_dir: never replaces the checkpoint of another run (CheckpointExists) unless overwrite=True.
    resume: a checkpoint directory whose run to continue (config may then be None); it saves back there
    unless out_dir names another directory.
    """
    from jaxgpt import data

    if resume is not None and out_dir is None:
        out_dir = resume
    if text is None:  # first, so that a wrong path is said before anything else
        text = data.load_text(data_path, named_by=data_named_by)
    if out_dir is not None:
        check_out_dir(out_dir, overwrite=overwrite, resume=resume)
    run = prepare(config, impl=impl, task=task, text=text, data_path=data_path, steps_per_call=steps_per_call,
                  resume=resume, data_named_by=data_named_by)
    return fit(run, out_dir=out_dir, progress=progress, log=log)


def _impl_label(impl: Any) -> str:
    if not isinstance(impl, (str, os.PathLike)):  # the notebook's globals, or an Implementation object
        return getattr(impl, "label", "the notebook")
    text = str(impl)
    if text in ("tasks", "reference"):
        return text
    path = Path(text).expanduser()
    return str(path.resolve()) if path.exists() else text


def _write_json(path: Path, obj: Any) -> None:
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(obj, indent=1) + "\n")
    os.replace(partial, path)
