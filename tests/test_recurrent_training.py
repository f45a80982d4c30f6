"""The LSTM's training harness (jaxgpt/training/recurrent.py), with the reference CharLSTM of task 15.

- The steps of truncated backpropagation through time equal a replay written out step by step: chunk s % N
  from the state the step before ended with, zeros where a pass begins; a run split into several compiled calls
  carries the state across them and equals one call; the state matters (a replay reset every chunk differs).
- Evaluation reads the chunks in order from the zero state.
- `train` runs loop.fit on a small text: evaluations, a checkpoint whose parameters have the lesson's tree and
  whose source is task 15, and the challenge's sampler runs on the model rebuilt from it.
- The `tiny` LSTM has the tiny GPT's parameter count (within 1%) and tokens per step.
Small shapes (the `micro` LSTM on a text of a few thousand characters), so the file runs in seconds.
"""

import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxgpt import contract, sampling
from jaxgpt.training import configs, loop, recurrent

TEXT = "".join(np.random.default_rng(0).choice(list("abcdefg \n"), 3000))
CONFIG = recurrent.get_config("micro").with_vocab_size(len(set(TEXT)))


@pytest.fixture(scope="module")
def setup():
    model = recurrent.build_model(recurrent.model_class("reference"), CONFIG)
    params = recurrent.init_params(model, CONFIG, jax.random.PRNGKey(0))
    ids = np.array([sorted(set(TEXT)).index(ch) for ch in TEXT], np.int32)
    xs, ys = recurrent.chunks(ids, CONFIG.train.batch_size, CONFIG.model.block_size)
    return model, params, xs, ys


def _replay(model, params, tx, xs, ys, steps, reset_every=False):
    """The steps written out one by one: (params, losses)."""
    zeros = recurrent.zero_state(CONFIG.model, CONFIG.train.batch_size)
    grad = jax.jit(jax.value_and_grad(lambda p, s, x, y: recurrent._chunk_loss(model, p, s, x, y), has_aux=True))
    opt_state, state, losses = tx.init(params), zeros, []
    for step in range(steps):
        i = step % xs.shape[0]
        if i == 0 or reset_every:
            state = zeros
        (loss, state), grads = grad(params, state, xs[i], ys[i])
        updates, opt_state = tx.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        losses.append(float(loss))
    return params, np.array(losses)


def test_chunks_are_consecutive_streams():
    """chunks lays the text out as task 15's stream_chunks does: row b of chunk i + 1 continues row b of chunk i"""
    ids = np.arange(100)
    x, y = recurrent.chunks(ids, 3, 7)
    assert x.shape == y.shape == (4, 3, 7)
    assert (y == x + 1).all()
    assert (x[1:, :, 0] == x[:-1, :, -1] + 1).all()  # each chunk continues its stream's previous chunk
    assert (x[0, :, 0] == np.arange(3) * 4 * 7).all()  # stream b starts at b * N * T


def test_steps_carry_the_state_across_calls(setup):
    """Two compiled calls of 3 steps, the state carried between them, equal the steps written out one by one; and the state matters"""
    model, params, xs, ys = setup
    steps = xs.shape[0] + 2  # across a pass boundary
    tx = loop.make_optimizer(CONFIG.train)
    half = (steps + 1) // 2
    carried = recurrent.CarriedSteps(recurrent.make_train_steps(model, tx, CONFIG, half), jnp.asarray(xs),
                                     jnp.asarray(ys))
    zeros = recurrent.zero_state(CONFIG.model, CONFIG.train.batch_size)
    p, opt_state, first = carried(params, (tx.init(params), zeros), None, None, 0)
    p, opt_state, second = carried(p, opt_state, None, None, half)
    losses = np.concatenate([first, second])
    expected_params, expected = _replay(model, params, tx, xs, ys, 2 * half)
    np.testing.assert_allclose(losses, expected, rtol=1e-5, atol=1e-5)
    for a, b in zip(jax.tree_util.tree_leaves(p), jax.tree_util.tree_leaves(expected_params)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=2e-5)
    _, reset = _replay(model, params, tx, xs, ys, 2 * half, reset_every=True)
    assert np.abs(reset - expected).max() > 1e-3, "resetting the state every chunk should change the losses"


def test_evaluation_reads_the_chunks_in_order(setup):
    """Evaluation is the mean loss of the chunks read in order from the zero state"""
    model, params, xs, ys = setup
    got = float(recurrent.make_evaluate(model, CONFIG)(params, jnp.asarray(xs[:3]), jnp.asarray(ys[:3])))
    state, total = recurrent.zero_state(CONFIG.model, CONFIG.train.batch_size), 0.0
    for i in range(3):
        loss, state = recurrent._chunk_loss(model, params, state, xs[i], ys[i])
        total += float(loss)
    assert got == pytest.approx(total / 3, rel=1e-5)


def test_train_saves_a_checkpoint_the_sampler_reads(tmp_path):
    """train evaluates, saves a checkpoint of task 15's CharLSTM with the lesson's tree, and the sampler runs on it"""
    from flax import serialization

    config = recurrent.get_config("micro").with_overrides(max_iters=4, eval_interval=2)
    lines = []
    history = recurrent.train(config, impl="reference", text=TEXT, out_dir=tmp_path / "run", progress=False,
                              log=lines.append)
    assert history.steps == [0, 2, 4] and all(np.isfinite(history.eval_losses))
    assert history.task == recurrent.LSTM_TASK and len(history.batch_losses) == 4
    assert history.compile_seconds > 0, "loop.fit compiles the LSTM's step ahead (CarriedSteps.lower)"
    meta = json.loads((tmp_path / "run" / "checkpoint.json").read_text())
    assert meta["source"]["task"] == recurrent.LSTM_TASK and meta["config"]["name"] == "lstm-micro"
    params = serialization.msgpack_restore((tmp_path / "run" / "params.msgpack").read_bytes())
    saved_config = configs.Config.from_dict(meta["config"])
    shapes = jax.tree_util.tree_map(np.shape, params)
    expected = recurrent.param_shapes(saved_config.model)
    assert jax.tree_util.tree_structure(shapes, is_leaf=lambda s: isinstance(s, tuple)) == \
        jax.tree_util.tree_structure(expected, is_leaf=lambda s: isinstance(s, tuple))
    assert jax.tree_util.tree_leaves(shapes, is_leaf=lambda s: isinstance(s, tuple)) == \
        jax.tree_util.tree_leaves(expected, is_leaf=lambda s: isinstance(s, tuple))
    model = recurrent.build_model(recurrent.model_class("reference"), saved_config)
    ids = sampling.sample(model, params, [0, 1], jax.random.PRNGKey(0), 12, block_size=saved_config.model.block_size)
    assert ids.shape == (14,) and ids.max() < saved_config.model.vocab_size


def test_tiny_lstm_matches_the_tiny_gpt():
    """The tiny LSTM has the tiny GPT's parameter count (within 1%) and its tokens per step"""
    lstm, gpt = recurrent.get_config("tiny").with_vocab_size(65), configs.get_config("tiny").with_vocab_size(65)
    count = lambda tree: sum(int(np.prod(s)) for s in jax.tree_util.tree_leaves(  # noqa: E731
        tree, is_leaf=lambda s: isinstance(s, tuple)))
    n_lstm, n_gpt = count(recurrent.param_shapes(lstm.model)), count(contract.model_shapes(**vars(gpt.model)))
    assert abs(n_lstm - n_gpt) / n_gpt < 0.01, (n_lstm, n_gpt)
    assert lstm.train.batch_size * lstm.model.block_size == gpt.train.batch_size * gpt.model.block_size


# ---- resuming: the carried state is saved with the optimiser's ------------------------------------------


def _leaves_equal(a, b) -> None:
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


RESUMED = recurrent.get_config("micro").with_overrides(max_iters=8, eval_interval=4)


def test_resume_continues_the_stream_with_the_carried_state(tmp_path):
    """Stopped by Ctrl-C at step 4 (mid-pass), then resumed: the same chunks from the LSTM state the interrupted
    run carried, so every loss and parameter is the uninterrupted run's bit for bit; a resume from the zero
    state (what saving the parameters and the optimiser alone would give) differs"""
    import os
    import signal

    from jaxgpt.training import checkpoint

    quiet = lambda line: None  # noqa: E731
    whole = recurrent.train(RESUMED, impl="reference", text=TEXT, out_dir=tmp_path / "whole", progress=False,
                            steps_per_call=2, log=quiet)

    def ctrl_c_at_step_4(line: str) -> None:
        if line.startswith("step 4:"):
            os.kill(os.getpid(), signal.SIGINT)  # the run's own handler takes it: it stops after saving

    first = recurrent.train(RESUMED, impl="reference", text=TEXT, out_dir=tmp_path / "cut", progress=False,
                            steps_per_call=2, log=ctrl_c_at_step_4)
    assert first.interrupted and first.steps == [0, 4] and checkpoint.load(tmp_path / "cut")[3]["step"] == 4
    assert 4 < recurrent.chunks(np.zeros(int(len(TEXT) * 0.9)), 8, 16)[0].shape[0], "step 4 is mid-pass"

    run = recurrent.prepare(None, resume=tmp_path / "cut", text=TEXT, steps_per_call=2)
    tx_state, carried = run.opt_state
    assert max(float(jnp.abs(h).max()) for _, h in carried) > 0.05, "the saved LSTM state is the carried one"
    run.opt_state = (tx_state, recurrent.zero_state(run.config.model, run.config.train.batch_size))
    restarted = loop.fit(run, progress=False, log=quiet)
    assert np.abs(np.array(restarted.batch_losses[4:]) - whole.batch_losses[4:]).max() > 1e-4

    lines = []
    resumed = recurrent.train(None, resume=tmp_path / "cut", text=TEXT, progress=False, steps_per_call=2,
                              log=lines.append)
    assert any(line.startswith(f"Resuming `lstm-micro` from {tmp_path / 'cut'} at step 4 of 8: task 15's CharLSTM "
                               f"from reference, the same optimiser state, LSTM state and chunks.")
               for line in lines), lines
    assert not resumed.interrupted and resumed.steps == whole.steps == [0, 4, 8]
    assert resumed.batch_losses == whole.batch_losses and resumed.eval_losses == whole.eval_losses
    _leaves_equal(resumed.params, whole.params)


def test_resume_refuses_another_configuration_text_or_model(tmp_path):
    """A resume keeps the run's configuration (its tokenizer too), its text and its model, and says so"""
    from jaxgpt.training import checkpoint

    run = recurrent.prepare(RESUMED, impl="reference", text=TEXT, steps_per_call=2)
    run.step = 2  # as if stopped there: the refusals come before any step
    loop.save(run, tmp_path / "lstm")
    quiet = dict(progress=False, log=lambda line: None)
    with pytest.raises(loop.TrainingError, match=r"keeps its configuration and tokenizer"):
        recurrent.train(RESUMED.with_overrides(tokenizer="byte"), resume=tmp_path / "lstm", text=TEXT, **quiet)
    with pytest.raises(loop.TrainingError, match=r"trained on another text: resume it with the same text"):
        recurrent.train(None, resume=tmp_path / "lstm", text=TEXT[::-1], **quiet)
    with pytest.raises(loop.TrainingError, match=r"trained task 15's CharLSTM, not a MiniGPT.*recurrent\.train"):
        loop.train(None, resume=tmp_path / "lstm", text=TEXT, **quiet)
    gpt = configs.get_config("micro").with_vocab_size(run.config.model.vocab_size)
    params = jax.tree_util.tree_map(np.zeros, contract.model_shapes(**vars(gpt.model)),
                                    is_leaf=lambda s: isinstance(s, tuple))
    checkpoint.save(tmp_path / "gpt", params, gpt, run.tokenizer, step=1, source={"impl": "reference", "task": 1},
                    training={"opt_state": loop.make_optimizer(gpt.train).init(params), "train_key": run.train_key,
                              "eval_key": run.eval_key, "text_sha256": run.text_sha256})
    with pytest.raises(loop.TrainingError, match=r"trained task 1's MiniGPT, not task 15's CharLSTM"):
        recurrent.train(None, resume=tmp_path / "gpt", text=TEXT, **quiet)
