"""The training harness: configurations, the optimiser, a short run, and the sentences for a learner's model
that is unfinished or broken. A toy model and a made-up corpus keep it to seconds."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import textwrap
import time
import types
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxgpt.training import checkpoint, configs, loop
from jaxgpt.training.configs import Config, ConfigError, ModelConfig, TrainConfig

CORPUS = "the quick brown fox jumps over the lazy dog.\nthe lazy dog sleeps in the sun.\n" * 60
VOCAB = len(set(CORPUS))  # 29: the alphabet, space, full stop, newline

# The command-line tests train the same configuration on the same text, so within one pytest run the
# second training finds its compiled steps in JAX's compilation cache.
RUN = configs.get_config("micro").with_overrides(max_iters=10, eval_interval=5)

# A smaller model with dropout on, for the step-level checks.
TOY = Config(
    "toy",
    ModelConfig(block_size=8, n_embd=16, n_head=2, n_layer=1, dropout_rate=0.1),
    TrainConfig(batch_size=8, learning_rate=1e-2, max_iters=12, eval_interval=6, eval_iters=2,
                schedule="cosine", warmup_iters=2, min_lr=1e-3),
)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("micro")
    history = loop.train(RUN, impl="reference", text=CORPUS, out_dir=out, progress=False,
                             log=lambda line: None)
    return history, out


def _reference_model(config: Config, task: int = 1):
    return loop.build_model(loop.model_class("reference", task), config)


# ---- configurations ---------------------------------------------------------------------------------


def test_named_configurations_hold_the_promised_settings():
    challenge = configs.get_config("challenge")
    assert (challenge.model.n_layer, challenge.model.n_embd, challenge.model.n_head) == (4, 128, 4)
    assert (challenge.train.batch_size, challenge.model.block_size, challenge.train.learning_rate,
            challenge.train.max_iters) == (16, 32, 1e-3, 4000)
    video = configs.get_config("video")
    assert (video.model.n_embd, video.model.n_head, video.model.n_layer, video.model.block_size,
            video.train.batch_size, video.model.dropout_rate, video.train.learning_rate,
            video.train.max_iters) == (384, 6, 6, 256, 64, 0.2, 3e-4, 5000)
    for config in configs.CONFIGS.values():
        assert config.model.vocab_size is None  # it comes from the data
        assert config.model.n_embd % config.model.n_head == 0


@pytest.mark.parametrize("name, expected", [("video", 10_795_841), ("tiny", 818_241)])
def test_parameter_counts_with_65_characters(name, expected):
    """The video config has 10,795,841 parameters: the video's 10,788,929 plus Flax's q/k/v biases."""
    config = configs.get_config(name).with_vocab_size(65)
    model = _reference_model(config)
    shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, 8), jnp.int32))
    assert loop.count_params(shapes["params"]) == expected
    if name == "video":
        assert expected - 10_788_929 == 3 * config.model.n_layer * config.model.n_embd


def test_unknown_configuration_is_a_sentence():
    with pytest.raises(ConfigError, match="There is no configuration 'huge'; the configurations are tiny"):
        configs.get_config("huge")


def test_config_round_trips_through_a_dict():
    config = configs.get_config("tiny").with_vocab_size(65)
    assert Config.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    broken = config.to_dict()
    broken["train"]["learning_rat"] = 1.0
    with pytest.raises(ConfigError, match="learning_rat"):
        Config.from_dict(broken)


def test_overrides_change_length_and_evaluation_only():
    tiny = configs.get_config("tiny")
    short = tiny.with_overrides(max_iters=50, eval_interval=10)
    assert (short.train.max_iters, short.train.eval_interval) == (50, 10)
    assert short.train.warmup_iters <= 5 and short.model == tiny.model
    with pytest.raises(ConfigError):
        tiny.with_overrides(max_iters=0)


# ---- optimiser and steps ------------------------------------------------------------------------------


def test_cosine_schedule_warms_up_then_decays_to_min_lr():
    train = TrainConfig(learning_rate=1e-3, max_iters=100, warmup_iters=10, min_lr=1e-4, schedule="cosine")
    lr = loop.learning_rate_schedule(train)
    assert float(lr(0)) == 0.0
    assert float(lr(5)) == pytest.approx(5e-4)
    assert float(lr(10)) == pytest.approx(1e-3)
    assert float(lr(55)) == pytest.approx(1e-4 + 0.5 * (1e-3 - 1e-4), rel=1e-5)  # halfway down the cosine
    assert float(lr(100)) == pytest.approx(1e-4)
    assert loop.learning_rate_schedule(dataclasses.replace(train, schedule="constant")) == 1e-3
    with pytest.raises(ConfigError):
        loop.learning_rate_schedule(dataclasses.replace(train, schedule="linear"))


def test_weight_decay_spares_biases_and_layer_norms():
    """With zero gradients only decay moves parameters: matrices shrink, vectors stay."""
    train = TrainConfig(learning_rate=0.1, weight_decay=0.5, schedule="constant", grad_clip=1.0)
    tx = loop.make_optimizer(train)
    params = {"dense": {"kernel": jnp.ones((3, 4)), "bias": jnp.ones(4)}, "ln": {"scale": jnp.ones(4)}}
    updates, _ = tx.update(jax.tree_util.tree_map(jnp.zeros_like, params), tx.init(params), params)
    new = optax.apply_updates(params, updates)
    np.testing.assert_allclose(new["dense"]["kernel"], 1 - 0.1 * 0.5)
    np.testing.assert_allclose(new["dense"]["bias"], 1.0)
    np.testing.assert_allclose(new["ln"]["scale"], 1.0)


@pytest.mark.parametrize("wanted, eval_interval, max_iters, expected",
                         [(10, 250, 2000, 10), (10, 6, 12, 6), (4, 6, 12, 3), (10, 7, 13, 1)])
def test_steps_per_call_ends_on_every_evaluation(wanted, eval_interval, max_iters, expected):
    train = TrainConfig(eval_interval=eval_interval, max_iters=max_iters)
    assert loop._steps_per_call(wanted, train) == expected


def test_scanned_steps_equal_single_steps():
    """Three steps in one compiled call give the same parameters as three calls of one step (TOY's run, whose
    three-step program the Ctrl-C tests below share)."""
    run = _prepare_toy()
    model, config, params, data, key = run.model, run.config, run.params, run.train_data, run.train_key
    tx = loop.make_optimizer(config.train)
    three = run.train_steps
    one = loop.make_train_steps(model, tx, config, 1)
    p3, _, losses3 = three(params, tx.init(params), data, key, 0)
    p1, s1, losses1 = params, tx.init(params), []
    for step in range(3):
        p1, s1, loss = one(p1, s1, data, key, step)
        losses1.append(float(loss[0]))
    np.testing.assert_allclose(np.asarray(losses3), losses1, rtol=1e-5)
    for a, b in zip(jax.tree_util.tree_leaves(p3), jax.tree_util.tree_leaves(p1)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


# ---- a short run ----------------------------------------------------------------------------------------


def test_run_evaluates_on_schedule_and_the_loss_falls(run):
    history, _ = run
    assert history.steps == [0, 5, 10]
    assert len(history.batch_losses) == 10 and np.all(np.isfinite(history.batch_losses))
    assert history.eval_losses[-1] < history.eval_losses[0] - 0.3
    assert history.train_losses[-1] < history.train_losses[0] - 0.3
    assert history.eval_losses[0] == pytest.approx(np.log(VOCAB), abs=1.0)  # about uniform over the characters
    assert history.n_params > 0 and history.tokens_per_second > 0 and history.wall_seconds > 0


def test_run_writes_a_checkpoint_and_its_history(run):
    history, out = run
    params, config, tokenizer, meta = checkpoint.load(out)
    assert meta["step"] == 10 and meta["source"] == {"impl": "reference", "task": 1}
    assert meta["metrics"]["eval_loss"] == pytest.approx(history.final_eval_loss)
    assert config.model.vocab_size == tokenizer.vocab_size == VOCAB
    assert tokenizer.decode(tokenizer.encode("the lazy dog")) == "the lazy dog"
    saved = json.loads((out / "history.json").read_text())
    assert saved["eval_losses"] == history.eval_losses and saved["final_eval_loss"] == history.final_eval_loss
    # The loaded parameters run in a freshly built model of the saved configuration.
    model = _reference_model(config)
    logits = model.apply({"params": params}, jnp.asarray([tokenizer.encode("the lazy d")]))
    assert logits.shape == (1, 10, VOCAB)


def test_same_seed_same_run(toy_uninterrupted):
    """The same configuration and seed give the same run again: every batch loss, evaluation and parameter (TOY,
    dropout on: its masks too). Prepared anew (initialised, batches and keys drawn from the seed), then trained
    by the compiled step every toy run here shares."""
    again = loop.fit(_prepare_toy(), progress=False, log=lambda s: None)
    assert again.batch_losses == toy_uninterrupted.batch_losses and again.eval_losses == toy_uninterrupted.eval_losses
    _leaves_equal(again.params, toy_uninterrupted.params)


# ---- a learner's model ------------------------------------------------------------------------------------


def _learner_file(tmp_path, body: str):
    path = tmp_path / "solution.py"
    path.write_text(textwrap.dedent(body))
    return path


def test_unfinished_model_is_a_sentence(tmp_path):
    path = _learner_file(tmp_path, '''\
        import flax.linen as nn

        class MiniGPT(nn.Module):
            vocab_size: int
            block_size: int
            n_embd: int
            n_head: int
            n_layer: int
            dropout_rate: float = 0.0

            @nn.compact
            def __call__(self, idx, deterministic=True):
                raise NotImplementedError("Task 1: write MiniGPT")
        ''')
    with pytest.raises(loop.TrainingError) as info:
        loop.train(TOY, impl=path, text=CORPUS, progress=False, log=lambda s: None)
    assert str(info.value) == "task 1 is not finished: `MiniGPT` still raises NotImplementedError."


def test_model_with_another_parameter_tree_is_refused(tmp_path):
    path = _learner_file(tmp_path, '''\
        import flax.linen as nn

        class MiniGPT(nn.Module):  # a bigram model: right call, wrong parameters
            vocab_size: int
            block_size: int
            n_embd: int
            n_head: int
            n_layer: int
            dropout_rate: float = 0.0

            @nn.compact
            def __call__(self, idx, deterministic=True):
                return nn.Embed(self.vocab_size, self.vocab_size, name="token_embedding")(idx)
        ''')
    with pytest.raises(loop.TrainingError, match="does not have the lesson's parameter tree "
                                                     r"\(position_embedding is missing\)"):
        loop.train(TOY, impl=path, text=CORPUS, progress=False, log=lambda s: None)


def test_bug_in_the_model_names_the_learners_line(tmp_path):
    path = _learner_file(tmp_path, '''\
        import flax.linen as nn

        class MiniGPT(nn.Module):
            vocab_size: int
            block_size: int
            n_embd: int
            n_head: int
            n_layer: int
            dropout_rate: float = 0.0

            @nn.compact
            def __call__(self, idx, deterministic=True):
                x = nn.Embed(self.vocab_size, self.n_embd)(idx)
                return x @ x  # (B, T, C) @ (B, T, C): the shapes do not fit
        ''')
    with pytest.raises(loop.TrainingError) as info:
        loop.train(TOY, impl=path, text=CORPUS, progress=False, log=lambda s: None)
    message = str(info.value)
    assert message.startswith("your model raised TypeError") and "solution.py, line 14" in message
    assert "return x @ x" in message


def test_only_tasks_1_and_6_can_be_trained():
    with pytest.raises(loop.TrainingError, match="Only tasks 1 and 6"):
        loop.model_class("reference", 3)
    assert loop.model_class("reference", 6).__module__.endswith("task06_own_parts")


def test_text_too_short_for_a_block_is_a_sentence():
    with pytest.raises(loop.TrainingError, match="eval split"):
        loop.train(TOY, impl="reference", text="abcdefghij" * 5, progress=False, log=lambda s: None)


# ---- never losing work: Ctrl-C, resume, other runs' checkpoints ------------------------------------------
#
# Ctrl-C is a real SIGINT sent to this process, at a point the test chooses: from the log line of an
# evaluation, or from inside a compiled call (a wrapper around the compiled step). The run's own handler
# takes it; pytest never sees a KeyboardInterrupt.


class Log(list):
    """The lines a run says, in order."""

    def __call__(self, line: str) -> None:
        self.append(line)

    def after(self, prefix: str) -> list[str]:
        return [line for line in self if line.startswith(prefix)]


def _ctrl_c(times: int = 1) -> None:
    for press in range(times):
        if press:
            # Apart, as a person presses: Python calls its handler once for signals that arrive together.
            time.sleep(0.1)
        os.kill(os.getpid(), signal.SIGINT)


class CtrlCDuringCall:
    """Stands in for a run's jitted training step: compiles it as fit does, and sends Ctrl-C `times` times
    from inside call number `call` (from the worker thread, as a terminal's Ctrl-C arrives while XLA
    computes), then waits a moment so that an answer given at once lands while the call still runs."""

    def __init__(self, jitted, log: Log, call: int = 1, times: int = 1):
        self.jitted, self.log, self.call, self.times = jitted, log, call, times
        self.calls = 0
        self.lines_before_return: list[str] = []

    def lower(self, *args):
        compiled = self.jitted.lower(*args).compile()

        def call(*call_args):
            self.calls += 1
            result = compiled(*call_args)
            if self.calls == self.call:
                _ctrl_c(self.times)
                time.sleep(0.3)
                self.lines_before_return = list(self.log)
            return result

        return types.SimpleNamespace(compile=lambda: call)


_TOY_PROGRAMS: dict[int, tuple] = {}


def _prepare_toy(steps_per_call: int = 3, **kwargs):
    """TOY prepared to train. Every toy run of this file runs the same compiled step and evaluation (the first
    run's): what these tests watch is the loop around them, and a program traced and compiled once instead of
    once per run saves about a second each."""
    run = loop.prepare(TOY, impl="reference", text=CORPUS, steps_per_call=steps_per_call, **kwargs)
    run.train_steps, run.evaluate = _TOY_PROGRAMS.setdefault(run.steps_per_call, (run.train_steps, run.evaluate))
    return run


def _leaves_equal(a, b) -> None:
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.fixture(scope="module")
def toy_uninterrupted(tmp_path_factory):
    """TOY (dropout on, a cosine schedule) for 12 steps in calls of 3, never interrupted."""
    run = _prepare_toy()
    history = loop.fit(run, out_dir=tmp_path_factory.mktemp("uninterrupted"), progress=False,
                       log=lambda line: None)
    return history


def test_ctrl_c_is_answered_at_once_and_saves_after_the_call(tmp_path, toy_uninterrupted):
    """Ctrl-C during the first call is answered while that call still runs; the run then evaluates at step
    3 and saves there; a run of that one call still reports its speed."""
    log = Log()
    run = _prepare_toy()
    run.train_steps = stand_in = CtrlCDuringCall(run.train_steps, log)
    history = loop.fit(run, out_dir=tmp_path, progress=False, log=log)
    answer = "Ctrl-C: stopping when steps 1-3 are done (a compiled call cannot be cut short), then evaluating " \
             f"and saving a checkpoint in {tmp_path}. Press Ctrl-C again to skip the evaluation."
    assert answer in stand_in.lines_before_return, log
    assert history.interrupted and history.steps == [0, 3] and len(history.batch_losses) == 3
    assert log[-1] == f"Stopped at step 3 of 12; the checkpoint is in {tmp_path}."
    assert history.tokens_per_second > 0
    params, *_, meta = checkpoint.load(tmp_path)
    assert meta["step"] == 3
    assert meta["metrics"]["eval_loss"] == history.eval_losses[-1]
    assert history.batch_losses == toy_uninterrupted.batch_losses[:3]


def test_second_ctrl_c_skips_the_evaluation_and_still_saves(tmp_path):
    log = Log()
    run = _prepare_toy()
    run.train_steps = CtrlCDuringCall(run.train_steps, log, times=2)
    history = loop.fit(run, out_dir=tmp_path, progress=False, log=log)
    assert log.after("Ctrl-C again: no final evaluation; stopping when steps 1-3 are done, then saving"), log
    assert history.steps == [0]  # no evaluation at step 3
    *_, meta = checkpoint.load(tmp_path)
    assert meta["step"] == 3


def test_ctrl_c_during_the_save_waits_for_a_whole_checkpoint(tmp_path, monkeypatch):
    """Ctrl-C pressed twice while the checkpoint of step 6 is being written: the save ends whole, then the
    run stops there."""
    real_save = checkpoint.save

    def save_with_ctrl_c(directory, *args, **kwargs):
        _ctrl_c(2)
        time.sleep(0.2)  # the handler has run: the presses arrived in the middle of the save
        return real_save(directory, *args, **kwargs)

    monkeypatch.setattr(checkpoint, "save", save_with_ctrl_c)
    log = Log()
    history = loop.fit(_prepare_toy(), out_dir=tmp_path, progress=False, log=log)
    assert log.after("Ctrl-C: stopping as soon as the checkpoint of step 6 is saved."), log
    assert log.after("Still saving: the checkpoint of step 6 is written whole in a moment"), log
    assert history.interrupted and history.steps[-1] == 6
    params, *_, meta = checkpoint.load(tmp_path)
    _leaves_equal(params, history.params)
    assert meta["step"] == 6


def test_resume_gives_the_losses_and_parameters_of_the_uninterrupted_run(tmp_path, toy_uninterrupted):
    """Stopped by Ctrl-C at the evaluation of step 6, then resumed: the batches, dropout masks, learning
    rates and Adam moments are those of the run never stopped, so every loss and every parameter is
    bit for bit the same (the same compiled step on the same inputs; no tolerance is needed)."""
    log = Log()

    def ctrl_c_at_step_6(line: str) -> None:
        log(line)
        if line.startswith("step 6:"):
            _ctrl_c()

    first = loop.fit(_prepare_toy(), out_dir=tmp_path, progress=False, log=ctrl_c_at_step_6)
    assert first.interrupted and first.steps == [0, 6] and len(first.batch_losses) == 6
    resumed = loop.train(None, resume=tmp_path, text=CORPUS, steps_per_call=3, progress=False, log=log)
    assert log.after(f"Resuming `toy` from {tmp_path} at step 6 of 12")
    assert not resumed.interrupted
    assert resumed.batch_losses == toy_uninterrupted.batch_losses
    assert resumed.steps == toy_uninterrupted.steps == [0, 6, 12]
    assert resumed.eval_losses == toy_uninterrupted.eval_losses
    _leaves_equal(resumed.params, toy_uninterrupted.params)
    saved = json.loads((tmp_path / "history.json").read_text())
    assert saved["batch_losses"] == toy_uninterrupted.batch_losses and not saved["interrupted"]


def test_resume_needs_the_same_text_and_an_unfinished_run(tmp_path, toy_uninterrupted):
    finished = toy_uninterrupted.checkpoint
    with pytest.raises(loop.TrainingError, match=r"is finished \(step 12 of 12\): there is nothing to resume"):
        loop.train(None, resume=finished, text=CORPUS, progress=False, log=lambda line: None)
    params, config, tokenizer, _ = checkpoint.load(finished)
    early = dataclasses.replace(config, train=dataclasses.replace(config.train, max_iters=24))
    tx = loop.make_optimizer(early.train)
    training = {"opt_state": tx.init(params), "train_key": jax.random.PRNGKey(1),
                "eval_key": jax.random.PRNGKey(2), "text_sha256": "0" * 64}
    checkpoint.save(tmp_path, params, early, tokenizer, step=12, training=training)
    with pytest.raises(loop.TrainingError, match="was trained on another text: resume it with the same text"):
        loop.train(None, resume=tmp_path, text=CORPUS, progress=False, log=lambda line: None)
    checkpoint.save(tmp_path, params, early, tokenizer, step=12)  # no training state: sampling only
    with pytest.raises(loop.TrainingError, match="holds no training state .* so it cannot be resumed"):
        loop.train(None, resume=tmp_path, text=CORPUS, progress=False, log=lambda line: None)


def test_stopped_before_any_step_saves_nothing(tmp_path):
    """Ctrl-C at the first evaluation: nothing has been trained, so no checkpoint is written (and none can
    then stand in the way of the next run)."""
    log = Log()

    def ctrl_c_at_step_0(line: str) -> None:
        log(line)
        if line.startswith("step 0:"):
            _ctrl_c()

    history = loop.fit(_prepare_toy(), out_dir=tmp_path, progress=False, log=ctrl_c_at_step_0)
    assert history.interrupted and history.steps == [0] and not history.batch_losses
    assert log[-1] == "Stopped at step 0 of 12." and not checkpoint.holds_checkpoint(tmp_path)


# ---- another run's checkpoint ------------------------------------------------------------------------------


def _saved_checkpoint(directory, step: int = 40):
    from jaxgpt.tokenizer import CharTokenizer

    tokenizer = CharTokenizer.from_text(CORPUS)
    config = RUN.with_vocab_size(tokenizer.vocab_size)
    model = _reference_model(config)
    params = jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, 8), jnp.int32))["params"]
    params = jax.tree_util.tree_map(lambda s: np.zeros(s.shape, s.dtype), params)
    tx = loop.make_optimizer(config.train)
    training = {"opt_state": tx.init(params), "train_key": jax.random.PRNGKey(1),
                "eval_key": jax.random.PRNGKey(2), "text_sha256": "0" * 64}
    checkpoint.save(directory, params, config, tokenizer, step=step, metrics={"eval_loss": 2.5},
                    source={"impl": "reference", "task": 1}, training=training)
    return {p.name: p.read_bytes() for p in directory.iterdir()}


def test_a_checkpoint_of_another_run_is_never_replaced_silently(tmp_path):
    before = _saved_checkpoint(tmp_path, step=5)
    with pytest.raises(loop.CheckpointExists) as info:
        loop.train(RUN, impl="reference", text=CORPUS, out_dir=tmp_path, progress=False, log=lambda s: None)
    assert "`micro` at step 5 of 10, eval loss 2.5000, task 1's MiniGPT from reference, saved 20" in str(info.value)
    assert info.value.resumable
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before
    loop.check_out_dir(tmp_path, overwrite=True)  # told to
    loop.check_out_dir(tmp_path, resume=tmp_path)  # the run being resumed
    loop.check_out_dir(tmp_path / "elsewhere")


def test_each_kind_of_run_has_its_own_default_directory():
    dirs = {loop.default_out_dir("tiny", impl, task) for impl in ("tasks", "reference") for task in (1, 6)}
    assert dirs == {Path("checkpoints/tiny"), Path("checkpoints/tiny-task6"), Path("checkpoints/tiny-reference"),
                    Path("checkpoints/tiny-task6-reference")}


# ---- the command line -------------------------------------------------------------------------------------


def _cli(capsys, *argv):
    from jaxgpt import cli

    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return code, out, err


def test_cli_refuses_another_runs_checkpoint_and_names_the_ways_out(capsys, tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(CORPUS)
    out = tmp_path / "run"
    out.mkdir()
    before = _saved_checkpoint(out, step=5)
    code, _, err = _cli(capsys, "train", "--config", "micro", "--impl", "reference", "--data", str(corpus),
                        "--out", str(out))
    assert code == 2
    assert err.startswith(f"{out} already holds the checkpoint of another run (`micro` at step 5 of 10")
    assert (f"nothing was started: continue that run with `jaxgpt train --resume {out}`, save this one "
            "elsewhere with --out DIR, or replace it with --overwrite.") in err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_cli_resume_keeps_the_runs_settings(capsys, tmp_path):
    _saved_checkpoint(tmp_path, step=5)
    code, _, err = _cli(capsys, "train", "--resume", str(tmp_path), "--config", "tiny", "--max-iters", "10",
                        "--task", "6")
    assert code == 2
    assert (f"--resume continues the run in {tmp_path} with its own settings, so that it goes on as if never "
            "interrupted; these flags ask for others: --config tiny (it has micro); --task 6 (it has 1).") in err
    code, _, err = _cli(capsys, "train", "--resume", str(tmp_path / "nothing"))
    assert code == 1 and "the directory does not exist" in err


def test_cli_names_the_data_flag(capsys, tmp_path):
    code, _, err = _cli(capsys, "train", "--config", "micro", "--impl", "reference", "--data",
                        str(tmp_path / "missing.txt"), "--out", str(tmp_path / "out"))
    assert code == 1 and err.strip() == f"There is no file at {tmp_path / 'missing.txt'} (named by --data); " \
                                        "check the path."


@pytest.mark.slow
@pytest.mark.timeout(600)  # 106 s measured on a 2-core machine under a load average of 8
def test_terminal_ctrl_c_then_resume(tmp_path):
    """As at a terminal: `jaxgpt train` in its own process, Ctrl-C once after the evaluation of step 10, then
    `--resume`, Ctrl-C again after step 30. Each Ctrl-C is answered within a second, each stop saves where
    it stopped (the step of that evaluation, or the end of the call then starting) and names the command
    that continues. (Slow: two processes import JAX and compile.)"""
    import re
    import subprocess
    import sys

    corpus = tmp_path / "corpus.txt"
    corpus.write_text(CORPUS)
    out = tmp_path / "run"

    def train_until(args: list[str], line_prefix: str) -> tuple[int, list[str], int]:
        process = subprocess.Popen([sys.executable, "-m", "jaxgpt.cli", "train", *args, "--no-progress"],
                                   stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                   env=dict(os.environ, PYTHONUNBUFFERED="1"), cwd=tmp_path)
        lines, sent = [], None
        for line in process.stdout:
            lines.append((time.perf_counter(), line.rstrip("\n")))
            if sent is None and line.startswith(line_prefix):
                process.send_signal(signal.SIGINT)
                sent = time.perf_counter()
        code = process.wait(timeout=300)
        answer = next(t for t, line in lines if line.startswith("Ctrl-C: stopping"))
        assert answer - sent < 1.0, lines
        text = [line for _, line in lines]
        stopped = next(re.fullmatch(rf"Stopped at step (\d+) of 4,000; the checkpoint is in {re.escape(str(out))}\.",
                                    line) for line in text if line.startswith("Stopped at step"))
        assert code == 130 and stopped, text
        assert f"Continue this run with `jaxgpt train --resume {out} --data {corpus}`." in text
        return int(stopped.group(1))

    first = train_until(["--config", "micro", "--impl", "reference", "--data", str(corpus), "--out", str(out),
                         "--max-iters", "4000", "--eval-interval", "10"], "step 10:")
    assert first in (10, 20) and checkpoint.load(out)[3]["step"] == first
    second = train_until(["--resume", str(out), "--data", str(corpus)], "step 30:")
    assert second in (30, 40) and checkpoint.load(out)[3]["step"] == second
    history = json.loads((out / "history.json").read_text())
    assert history["steps"] == list(range(0, second + 1, 10)) and len(history["batch_losses"]) == second


def test_weight_decay_spares_biases_and_norms_by_name():
    """AdamW decays kernels and embeddings only: Flax's attention biases are 2-D, so `ndim >= 2` would decay them."""
    import jax
    import jax.numpy as jnp
    import optax

    from jaxgpt import contract
    from jaxgpt.training import configs, loop

    shapes = contract.model_shapes(vocab_size=11, block_size=7, n_embd=12, n_head=3, n_layer=1)
    params = jax.tree_util.tree_map(lambda shape: np.ones(shape, np.float32), shapes,
                                    is_leaf=lambda x: isinstance(x, tuple))
    train = configs.get_config("micro").train
    tx = loop.make_optimizer(dataclasses.replace(train, grad_clip=0.0, weight_decay=0.5))
    zero = jax.tree_util.tree_map(np.zeros_like, params)
    # One compiled update rather than Optax's operations one by one, which take seconds on this tree.
    updates, _ = jax.jit(lambda g, p: tx.update(g, tx.init(p), p))(zero, params)
    moved = {jax.tree_util.keystr(path): bool(np.any(np.asarray(u) != 0))
             for path, u in jax.tree_util.tree_flatten_with_path(updates)[0]}
    for path, decays in moved.items():
        assert decays == (path.endswith("['kernel']") or path.endswith("['embedding']")), path
    assert any(path.endswith("['attn']['query']['bias']") for path in moved)


# ---- at scale: mixed precision, gradient accumulation, a device mesh (scaling.py) --------------------------
#
# Tolerances. float32 has a 24-bit significand (eps 1.2e-7): adding the same terms in another order (micro-
# batches, devices) moves a gradient of size g by a few eps * g, so 1e-5 relative to the largest gradient
# leaves a margin of about 100 while the nearest real mistakes (a sum of micro-batch gradients instead of
# their mean, one micro-batch's gradient alone) are off by 25% or more. bfloat16 keeps 8 bits (eps 7.8e-3):
# the toy's loss, about 3, moves by a few hundredths at most.

PLAIN = Config("plain", ModelConfig(block_size=8, n_embd=16, n_head=2, n_layer=1, dropout_rate=0.0),
               TrainConfig(batch_size=12, learning_rate=1e-2, max_iters=12, eval_interval=6, eval_iters=2,
                           schedule="constant"))


def _toy_batch(config: Config, seed: int = 0):
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 20, (config.train.batch_size, config.model.block_size)).astype(np.int32)  # (B, T)
    return jnp.asarray(x), jnp.asarray((x * 7 + 3) % 20)


def _max_abs(tree) -> float:
    return max(float(np.max(np.abs(np.asarray(leaf)))) for leaf in jax.tree_util.tree_leaves(tree))


_INITIAL: dict = {}


def _initial_params(model, config: Config):
    """The model's parameters from PRNGKey(0), initialised by one compiled program (Flax's init op by op takes
    seconds) and shared by the tests of one model configuration."""
    if config.model not in _INITIAL:
        _INITIAL[config.model] = jax.jit(model.init)(jax.random.PRNGKey(0), jnp.zeros((1, 8), jnp.int32))["params"]
    return _INITIAL[config.model]


def test_bfloat16_steps_keep_float32_parameters_and_state_and_a_close_loss():
    config = PLAIN.with_vocab_size(20)
    model = _reference_model(config)
    params = _initial_params(model, config)
    data = jnp.arange(300, dtype=jnp.int32) * 7 % 20
    results = {}
    for precision in ("float32", "bfloat16"):
        cfg = config.with_overrides(precision=precision)
        tx = loop.make_optimizer(cfg.train)
        results[precision] = loop.make_train_steps(model, tx, cfg, 2)(params, tx.init(params), data,
                                                                      jax.random.PRNGKey(1), 0)
    new_params, opt_state, losses = results["bfloat16"]
    for leaf in jax.tree_util.tree_leaves((new_params, opt_state)):
        assert leaf.dtype in (jnp.float32, jnp.int32), leaf.dtype  # float32 masters and moments; Adam's count
    assert losses.dtype == jnp.float32 and np.all(np.isfinite(losses))
    gap = np.abs(np.asarray(losses) - np.asarray(results["float32"][2]))
    assert 0 < gap.max() < 0.05, gap  # computed in bfloat16 (not a no-op), yet close


def test_accumulated_gradient_equals_the_big_batch_gradient():
    """3 micro-batches of 4 sequences; the oracle: jax.grad of the mean loss over the whole batch of 12 in one
    pass. (That the run then sees the same batches: tests/test_cli.py, runs with --accumulate 2.)"""
    config = dataclasses.replace(PLAIN, train=dataclasses.replace(PLAIN.train, accumulate=3))
    config = config.with_vocab_size(20)
    model = _reference_model(config)
    params = _initial_params(model, config)
    x, y = _toy_batch(config)
    want_loss, want = jax.jit(jax.value_and_grad(lambda p: loop.loss_fn(model, p, x, y)))(params)
    loss, grads = jax.jit(loop.make_grad_fn(model, config))(params, x, y, jax.random.PRNGKey(2))
    assert float(loss) == pytest.approx(float(want_loss), rel=1e-6)
    scale = _max_abs(want)
    for (path, got), expected in zip(jax.tree_util.tree_flatten_with_path(grads)[0],
                                     jax.tree_util.tree_leaves(want), strict=True):
        assert got.dtype == jnp.float32
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5 * scale,
                                   err_msg=jax.tree_util.keystr(path))


def test_scaling_settings_that_do_not_fit_are_sentences():
    micro = configs.get_config("micro")  # batch 8
    cases = [
        (dict(accumulate=3), "A step's batch of 8 sequences cannot be split into 3 equal micro-batches "
                             "(--accumulate 3): choose a number of micro-batches that divides 8"),
        (dict(accumulate=2, mesh="3"), "Each micro-batch of 4 sequences cannot be split evenly over the mesh's "
                                       "3 data-parallel devices (--mesh 3)"),
        (dict(mesh="16x2"), "A step's batch of 8 sequences cannot be split evenly over the mesh's 16"),
        (dict(precision="float16"), "--precision must be float32 or bfloat16, got 'float16'."),
        (dict(accumulate=0), "--accumulate must be a whole number of at least 1, got 0."),
        (dict(batch_size=0), "--batch-size must be a whole number of at least 1, got 0."),
        (dict(fully_sharded=True), "--fsdp splits the parameters over the mesh's data-parallel devices, and this "
                                   "mesh has one"),
        (dict(mesh="2x"), "--mesh takes D or DxM, whole numbers of at least 1"),
        (dict(mesh="0"), "--mesh takes D or DxM"),
        (dict(mesh="2x2x2"), "--mesh takes D or DxM"),
    ]
    for overrides, words in cases:
        with pytest.raises(ConfigError) as info:
            micro.with_overrides(**overrides)
        message = str(info.value)
        assert message.startswith(words) and message.endswith(".") and "\n" not in message, (overrides, message)
    scaled = micro.with_overrides(batch_size=16, accumulate=2, mesh="2x2", fully_sharded=True, precision="bfloat16")
    assert (scaled.train.batch_size, scaled.train.micro_batch_size, scaled.train.mesh) == (16, 8, "2x2")
    assert Config.from_dict(json.loads(json.dumps(scaled.to_dict()))) == scaled


def test_parameters_are_copied_split_by_model_and_fully_sharded_as_promised():
    from jax.sharding import PartitionSpec as P

    from jaxgpt.training import scaling

    def spec(shape, **overrides):
        return scaling.param_spec(shape, configs.get_config("micro").with_overrides(**overrides).train)

    assert spec((32, 128), mesh="4") == P(None, None)  # data parallel: every device holds all of it
    assert spec((32, 128), mesh="2x2") == P(None, "model")  # the last axis the model size divides
    assert spec((32, 2, 16), mesh="1x4") == P(None, None, "model")
    assert spec((29, 32), mesh="1x2") == P(None, "model")
    assert spec((32, 29), mesh="1x2") == P("model", None)  # 29 is not split
    assert spec((32, 128), mesh="4", fully_sharded=True) == P(None, "data")  # the largest axis
    assert spec((32, 128), mesh="4x2", fully_sharded=True) == P("data", "model")
    assert spec((), mesh="4", fully_sharded=True) == P()  # Adam's count


def test_resume_keeps_the_scaling_settings_or_refuses_a_change(capsys, tmp_path):
    import hashlib

    from jaxgpt.tokenizer import CharTokenizer

    jax.devices()  # JAX has started in this process: the CPU can no longer be split
    tokenizer = CharTokenizer.from_text(CORPUS)
    scaled = RUN.with_overrides(precision="bfloat16", accumulate=2).with_vocab_size(tokenizer.vocab_size)
    model = _reference_model(scaled)
    params = jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, 8), jnp.int32))["params"]
    params = jax.tree_util.tree_map(lambda s: np.zeros(s.shape, s.dtype), params)  # values do not matter here
    tx = loop.make_optimizer(scaled.train)
    training = {"opt_state": tx.init(params), "train_key": jax.random.PRNGKey(1), "eval_key": jax.random.PRNGKey(2),
                "text_sha256": hashlib.sha256(CORPUS.encode("utf-8")).hexdigest()}
    checkpoint.save(tmp_path / "a", params, scaled, tokenizer, step=5, source={"impl": "reference", "task": 1},
                    training=training)
    run = loop.prepare(None, resume=tmp_path / "a", text=CORPUS)
    assert (run.config.train.precision, run.config.train.accumulate) == ("bfloat16", 2)
    code, _, err = _cli(capsys, "train", "--resume", str(tmp_path / "a"), "--precision", "float32",
                        "--accumulate", "1", "--mesh", "2x1", "--fsdp")
    assert code == 2
    assert ("these flags ask for others: --precision float32 (it has bfloat16); --accumulate 1 (it has 2); "
            "--mesh 2 (it has 1); --fsdp (it trained without).") in err
    meshed = RUN.with_overrides(mesh="2").with_vocab_size(tokenizer.vocab_size)
    checkpoint.save(tmp_path / "b", params, meshed, tokenizer, step=5, source={"impl": "reference", "task": 1},
                    training=training)
    if jax.device_count() == 1 and jax.devices()[0].platform == "cpu":  # as in a plain test run
        with pytest.raises(ConfigError, match=r"^--mesh 2 needs 2 devices, but JAX sees 1 \(cpu\), and the CPU "
                                              r"can only be split into simulated devices before JAX starts"):
            loop.prepare(None, resume=tmp_path / "b", text=CORPUS)
