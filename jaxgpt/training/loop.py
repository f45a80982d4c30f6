"""Training a MiniGPT on a text: the harness behind `jaxgpt train` and the milestones.

The model class comes from an implementation (`reference`, your `tasks`, a directory or a file): task 1's
MiniGPT by default, task 6's hand-built one with task=6. Everything else is the standard recipe:

    loss       mean cross entropy over batch and time
    optimizer  AdamW (optax), global-norm clipping, linear warmup then cosine decay (see configs.py)
    step       jitted; several steps run inside one compiled call with jax.lax.scan, which saves a Python
               round trip per step (about a third faster on a 2-core CPU for the tiny model)
    dropout    a fresh key every step, folded from the step number, so a run is reproducible
    eval       every eval_interval steps: the mean loss of eval_iters batches from each split, dropout off
    save       a checkpoint (see checkpoint.py) at each evaluation and at the end, history.json beside it
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
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


def explain_model_error(err: BaseException, task: int, name: str = "MiniGPT") -> str:
    """A sentence for an exception raised inside a learner's model (a stub, a bug), for the command line."""
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

    def decayed(params):  # as nanoGPT: weight matrices and embeddings decay; biases and LayerNorms do not
        return jax.tree_util.tree_map(lambda p: p.ndim >= 2, params)

    adamw = optax.adamw(learning_rate, b1=0.9, b2=train.beta2, weight_decay=train.weight_decay, mask=decayed)
    if train.grad_clip > 0:
        return optax.chain(optax.clip_by_global_norm(train.grad_clip), adamw)
    return adamw


def loss_fn(model, params, x, y, deterministic=True, dropout_key=None):
    """Mean cross entropy of the next-token predictions over batch and time."""
    import optax

    rngs = None if deterministic else {"dropout": dropout_key}
    logits = model.apply({"params": params}, x, deterministic=deterministic, rngs=rngs)  # (B, T, vocab_size)
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()


def make_train_steps(model, tx, config: Config, steps_per_call: int):
    """A jitted function running `steps_per_call` training steps: (params, opt_state, data, key, first_step)
    -> (params, opt_state, losses (steps_per_call,))."""
    import jax

    from jaxgpt.data import get_batch

    B, T = config.train.batch_size, config.model.block_size
    deterministic = config.model.dropout_rate == 0.0

    def one_step(carry, step):
        params, opt_state, data, key = carry
        batch_key, dropout_key = jax.random.split(jax.random.fold_in(key, step))  # fresh keys every step
        x, y = get_batch(batch_key, data, B, T)  # (B, T), (B, T)
        loss, grads = jax.value_and_grad(lambda p: loss_fn(model, p, x, y, deterministic, dropout_key))(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        params = jax.tree_util.tree_map(lambda p, u: p + u, params, updates)
        return (params, opt_state, data, key), loss

    @jax.jit
    def train_steps(params, opt_state, data, key, first_step):
        steps = first_step + jax.numpy.arange(steps_per_call)
        (params, opt_state, _, _), losses = jax.lax.scan(one_step, (params, opt_state, data, key), steps)
        return params, opt_state, losses

    return train_steps


def make_evaluate(model, config: Config):
    """A jitted function: (params, train_data, eval_data, key) -> (train loss, eval loss), each the mean over
    eval_iters random batches, dropout off."""
    import jax
    import jax.numpy as jnp

    from jaxgpt.data import get_batch

    B, T, n = config.train.batch_size, config.model.block_size, config.train.eval_iters

    @jax.jit
    def evaluate(params, train_data, eval_data, key):
        def one_batch(total, batch_key):
            k1, k2 = jax.random.split(batch_key)
            losses = jnp.stack([loss_fn(model, params, *get_batch(k1, train_data, B, T)),
                                loss_fn(model, params, *get_batch(k2, eval_data, B, T))])
            return total + losses, None

        total, _ = jax.lax.scan(one_batch, jnp.zeros(2), jax.random.split(key, n))
        return total / n

    return evaluate


def _steps_per_call(wanted: int, train: TrainConfig) -> int:
    # Each compiled call must end exactly at every evaluation and at max_iters, so its length divides both.
    boundary = math.gcd(train.eval_interval, train.max_iters)
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


def prepare(config: Config, *, impl: Any = "reference", task: int = 1, text: str | None = None,
            data_path: str | os.PathLike | None = None, steps_per_call: int = 10) -> Run:
    """Reads the text, builds the model from `impl` and initialises it and the optimiser: a `Run` at step 0.

    text: the text to train on; default load_text(data_path) (tiny Shakespeare, or the file named).
    Raises TrainingError (an unfinished or broken model, a text too short), ConfigError, data.DataError.
    """
    import jax

    from jaxgpt import data
    from jaxgpt.tokenizer import CharTokenizer

    started = time.perf_counter()
    if text is None:
        text = data.load_text(data_path)
    tokenizer = CharTokenizer.from_text(text)
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
    init_key, train_key, eval_key = jax.random.split(jax.random.PRNGKey(train_cfg.seed), 3)
    params = init_params(model, config, init_key, task)
    tx = make_optimizer(train_cfg)
    k = _steps_per_call(steps_per_call, train_cfg)
    history = History(config=config.to_dict(), impl=impl_label, task=int(task), n_params=count_params(params),
                      params=params, tokenizer=tokenizer)
    return Run(config=config, task=int(task), impl_label=impl_label, tokenizer=tokenizer, model=model,
               params=params, opt_state=tx.init(params), train_data=jax.device_put(train_ids),
               eval_data=jax.device_put(eval_ids), train_steps=make_train_steps(model, tx, config, k),
               evaluate=make_evaluate(model, config), steps_per_call=k, train_key=train_key, eval_key=eval_key,
               history=history, started=started)


def save(run: Run, out_dir: str | os.PathLike) -> None:
    """A checkpoint of `run` at its current step, and history.json beside it."""
    from jaxgpt.training import checkpoint

    out = Path(out_dir)
    history = run.history
    metrics = {"train_loss": history.final_train_loss, "eval_loss": history.final_eval_loss}
    checkpoint.save(out, run.params, run.config, run.tokenizer, run.step, metrics,
                    source={"impl": run.impl_label, "task": run.task})
    history.checkpoint = str(out)
    history.wall_seconds = time.perf_counter() - run.started
    _write_json(out / "history.json", history.to_dict())


def fit(run: Run, *, out_dir: str | os.PathLike | None = None, progress: bool = True,
        log: Callable[[str], None] | None = None) -> History:
    """Trains `run` to its configuration's max_iters with a progress bar, evaluating every eval_interval
    steps (and saving there, with out_dir). Ctrl-C stops it, evaluates and saves where it stopped."""
    import jax
    from tqdm.auto import tqdm

    config, history, task = run.config, run.history, run.task
    train_cfg = config.train
    k = run.steps_per_call
    say = log or tqdm.write
    tokens_per_step = train_cfg.batch_size * config.model.block_size

    def run_eval() -> None:
        try:
            train_loss, eval_loss = (float(v) for v in run.evaluate(
                run.params, run.train_data, run.eval_data, jax.random.fold_in(run.eval_key, run.step)))
        except Exception as err:
            raise TrainingError(explain_model_error(err, task)) from None
        history.steps.append(run.step)
        history.train_losses.append(train_loss)
        history.eval_losses.append(eval_loss)
        speed = f", {history.tokens_per_second:,.0f} tok/s" if history.tokens_per_second else ""
        say(f"step {run.step}: train {train_loss:.4f}, eval {eval_loss:.4f}{speed}")

    def checkpoint() -> None:
        if out_dir is not None:
            save(run, out_dir)

    say(f"Training `{config.name}`: {history.n_params:,} parameters, task {task}'s MiniGPT from {run.impl_label}, "
        f"{int(run.train_data.shape[0]):,} training tokens, {train_cfg.max_iters:,} steps of "
        f"{tokens_per_step:,} tokens.")
    run_eval()
    bar = tqdm(total=train_cfg.max_iters, unit="step", disable=not progress, dynamic_ncols=True, leave=False)
    try:
        while run.step < train_cfg.max_iters:
            call_started = time.perf_counter()
            try:
                run.params, run.opt_state, losses = run.train_steps(run.params, run.opt_state, run.train_data,
                                                                    run.train_key, run.step)
                losses = np.asarray(losses)  # waits for the computation
                history.params = run.params
            except Exception as err:
                raise TrainingError(explain_model_error(err, task)) from None
            seconds = time.perf_counter() - call_started
            if run.step == 0:
                history.compile_seconds = seconds
            else:
                history.train_seconds += seconds
                # The first call compiled, so it is left out: `step` counts this call's steps and every
                # earlier call's but the first's.
                history.tokens_per_second = run.step * tokens_per_step / history.train_seconds
            run.step += k
            history.batch_losses.extend(float(v) for v in losses)
            if not np.all(np.isfinite(losses)):
                bad = losses[~np.isfinite(losses)][0]
                raise TrainingError(f"The training loss became {bad} by step {run.step}: "
                                    f"lower the learning rate, or look for a log of 0 or a division by 0.")
            bar.update(k)
            postfix = {"loss": f"{losses.mean():.4f}"}
            if history.tokens_per_second:
                postfix["tok/s"] = f"{history.tokens_per_second:,.0f}"
            bar.set_postfix(postfix, refresh=False)
            if run.step % train_cfg.eval_interval == 0 or run.step == train_cfg.max_iters:
                run_eval()
                checkpoint()
    except KeyboardInterrupt:
        history.interrupted = True
        bar.close()
        if run.step > 0 and (not history.steps or history.steps[-1] != run.step):
            run_eval()
        checkpoint()
        say(f"Interrupted at step {run.step}" + (f"; checkpoint saved in {out_dir}." if out_dir is not None
                                                  else "."))
        return history
    finally:
        bar.close()
    history.wall_seconds = time.perf_counter() - run.started
    checkpoint()
    return history


def train(config: Config, *, impl: Any = "reference", task: int = 1, text: str | None = None,
          data_path: str | os.PathLike | None = None, out_dir: str | os.PathLike | None = None,
          progress: bool = True, steps_per_call: int = 10, log: Callable[[str], None] | None = None
          ) -> History:
    """Trains `config` and returns its History; with out_dir, saves checkpoints and history.json there.
    `prepare`, then `fit` (which calls `save` at each evaluation)."""
    run = prepare(config, impl=impl, task=task, text=text, data_path=data_path, steps_per_call=steps_per_call)
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
