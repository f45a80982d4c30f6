"""The training harness: configurations, the optimiser, a short run, and the sentences for a learner's model
that is unfinished or broken. A toy model and a made-up corpus keep it to seconds."""

from __future__ import annotations

import dataclasses
import json
import textwrap

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
    """Three steps in one compiled call give the same parameters as three calls of one step."""
    config = TOY.with_vocab_size(20)
    model = _reference_model(config)
    params = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 8), jnp.int32))["params"]
    tx = loop.make_optimizer(config.train)
    data = jnp.arange(200, dtype=jnp.int32) % 20
    key = jax.random.PRNGKey(1)
    three = loop.make_train_steps(model, tx, config, 3)
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


def test_same_seed_same_run(run):
    history, _ = run
    again = loop.train(RUN, impl="reference", text=CORPUS, progress=False, log=lambda s: None)
    assert again.batch_losses == history.batch_losses and again.eval_losses == history.eval_losses


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
