"""Checkpoints: what is saved comes back exactly, and every way a checkpoint can be broken is one sentence."""

from __future__ import annotations

import dataclasses
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxgpt.grader import task_list, implementation
from jaxgpt.training import checkpoint, configs
from jaxgpt.training.checkpoint import CheckpointError
from jaxgpt.tokenizer import CharTokenizer

TOKENIZER = CharTokenizer.from_text("to be, or not to be: that is the question.\n")
CONFIG = configs.get_config("micro").with_vocab_size(TOKENIZER.vocab_size)


def random_params(config: configs.Config, seed: int = 0):
    """A parameter tree of the lessons' shapes, filled with random numbers (no model needed)."""
    rng = np.random.default_rng(seed)

    def fill(tree):
        if isinstance(tree, dict):
            return {k: fill(v) for k, v in tree.items()}
        return rng.standard_normal(tree).astype(np.float32)

    return fill(checkpoint.expected_param_shapes(config.model))


@pytest.fixture
def saved(tmp_path):
    directory = tmp_path / "ckpt"
    params = random_params(CONFIG)
    checkpoint.save(directory, params, CONFIG, TOKENIZER, step=40, metrics={"eval_loss": np.float32(2.5)},
                    source={"impl": "reference", "task": 1})
    return directory, params


def load_error(directory) -> str:
    with pytest.raises(CheckpointError) as info:
        checkpoint.load(directory)
    message = str(info.value)
    assert "\n" not in message and message.endswith("."), f"not one sentence: {message!r}"
    return message


def test_round_trip_gives_back_params_config_tokenizer_and_metadata(saved):
    directory, params = saved
    loaded, config, tokenizer, meta = checkpoint.load(directory)
    assert jax.tree_util.tree_structure(loaded) == jax.tree_util.tree_structure(params)
    for got, want in zip(jax.tree_util.tree_leaves(loaded), jax.tree_util.tree_leaves(params)):
        np.testing.assert_array_equal(got, want)
    assert config == CONFIG
    assert tokenizer == TOKENIZER
    assert meta["step"] == 40 and meta["metrics"] == {"eval_loss": 2.5}
    assert meta["source"] == {"impl": "reference", "task": 1}


def test_save_accepts_the_variables_dict_and_jax_arrays(tmp_path):
    params = jax.tree_util.tree_map(jnp.asarray, random_params(CONFIG))
    checkpoint.save(tmp_path, {"params": params}, CONFIG, TOKENIZER, step=1)
    loaded, *_ = checkpoint.load(tmp_path)
    assert "token_embedding" in loaded


@pytest.mark.parametrize("task", [1, 6])
def test_expected_tree_is_the_reference_minigpt_tree(task):
    """The tree load checks against is the one the lessons' MiniGPT (task 1 and task 6) really builds."""
    model_cls = implementation.resolve("reference").get(task_list.get_task(task), "MiniGPT")
    m = CONFIG.model
    model = model_cls(m.vocab_size, m.block_size, m.n_embd, m.n_head, m.n_layer, m.dropout_rate)
    shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, m.block_size), jnp.int32))
    assert checkpoint.tree_mismatch(shapes["params"], checkpoint.expected_param_shapes(m)) is None


def test_missing_directory(tmp_path):
    assert "does not exist" in load_error(tmp_path / "nowhere")


def test_a_file_instead_of_a_directory(tmp_path):
    path = tmp_path / "params.msgpack"
    path.write_bytes(b"x")
    assert "is a file" in load_error(path)


def test_directory_without_description(tmp_path):
    assert "holds no checkpoint.json" in load_error(tmp_path)


def test_missing_params_file(saved):
    directory, _ = saved
    (directory / "params.msgpack").unlink()
    assert "params.msgpack is missing" in load_error(directory)


def test_truncated_params_file(saved):
    directory, _ = saved
    path = directory / "params.msgpack"
    path.write_bytes(path.read_bytes()[:-100])
    assert "does not match the SHA-256" in load_error(directory)


def test_corrupted_params_file(saved):
    directory, _ = saved
    path = directory / "params.msgpack"
    blob = bytearray(path.read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    path.write_bytes(bytes(blob))
    assert "does not match the SHA-256" in load_error(directory)


def _rewrite_meta(directory, **changes):
    path = directory / "checkpoint.json"
    meta = json.loads(path.read_text())
    meta.update(changes)
    path.write_text(json.dumps(meta))


def test_params_file_that_is_not_msgpack(saved):
    """A file whose hash was updated to match garbage still fails, with the reason msgpack gives."""
    import hashlib

    directory, _ = saved
    garbage = b"\xc1 this is not msgpack at all"
    (directory / "params.msgpack").write_bytes(garbage)
    _rewrite_meta(directory, params_sha256=hashlib.sha256(garbage).hexdigest())
    assert "could not be read as Flax msgpack" in load_error(directory)


def test_description_that_is_not_json(saved):
    directory, _ = saved
    (directory / "checkpoint.json").write_text("{ not json")
    assert "is not valid JSON" in load_error(directory)


def test_json_that_is_not_ours(saved):
    directory, _ = saved
    (directory / "checkpoint.json").write_text(json.dumps({"model": "gpt2", "step": 3}))
    assert "is not a jaxgpt checkpoint" in load_error(directory)


def test_other_format_version(saved):
    directory, _ = saved
    _rewrite_meta(directory, version=99)
    assert "format version 99" in load_error(directory)


def test_description_missing_a_field(saved):
    directory, _ = saved
    path = directory / "checkpoint.json"
    meta = json.loads(path.read_text())
    del meta["params_sha256"]
    path.write_text(json.dumps(meta))
    assert "incomplete or damaged" in load_error(directory) and "params_sha256" in load_error(directory)


def test_config_with_an_unknown_field(saved):
    directory, _ = saved
    meta = json.loads((directory / "checkpoint.json").read_text())
    meta["config"]["model"]["n_experts"] = 8
    _rewrite_meta(directory, config=meta["config"])
    assert "n_experts" in load_error(directory)


def test_vocab_size_that_disagrees_with_the_tokenizer(saved):
    directory, _ = saved
    _rewrite_meta(directory, tokenizer={"type": "char", "chars": "abc"})
    assert "inconsistent" in load_error(directory)


def _load_mismatched(tmp_path, **params_model_fields) -> str:
    """Saves parameters built for CONFIG's model with some fields changed, described as CONFIG, and loads."""
    other = dataclasses.replace(CONFIG, model=dataclasses.replace(CONFIG.model, **params_model_fields))
    checkpoint.save(tmp_path, random_params(other), CONFIG, TOKENIZER, step=1)
    return load_error(tmp_path)


def test_params_missing_a_layer(tmp_path):
    assert "blocks_1 is missing" in _load_mismatched(tmp_path, n_layer=1)


def test_params_with_an_extra_layer(tmp_path):
    assert "blocks_2 is not part of the model" in _load_mismatched(tmp_path, n_layer=3)


def test_params_of_another_shape(tmp_path):
    message = _load_mismatched(tmp_path, block_size=8)
    assert "position_embedding/embedding has shape (8, 32), the configuration asks for (16, 32)" in message


# ---- a save that is stopped never breaks the checkpoint -----------------------------------------------


def _files(directory) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


def _stop_at_rename(monkeypatch, nth: int) -> None:
    """Makes the nth os.replace of the next save raise KeyboardInterrupt before it renames: the save stops
    there, as at a Ctrl-C or a crash."""
    real_replace = os.replace
    calls = []

    def replace(src, dst):
        calls.append((src, dst))
        if len(calls) == nth:
            raise KeyboardInterrupt
        return real_replace(src, dst)

    monkeypatch.setattr(checkpoint.os, "replace", replace)


# A save with a training state renames six times: the staged params and training files, checkpoint.json
# naming them, the two files to their usual names, checkpoint.json again.
@pytest.mark.parametrize("stopped_at", range(1, 7))
def test_a_save_stopped_anywhere_leaves_a_whole_checkpoint(tmp_path, monkeypatch, stopped_at):
    """Whichever rename a second checkpoint's save stops before, the directory loads, as the first
    checkpoint or the second, never a mixture; the next save cleans up what the stopped one left."""
    first, second = random_params(CONFIG, seed=1), random_params(CONFIG, seed=2)
    state = {"opt_state": {"mu": np.zeros(3, np.float32)}, "train_key": np.array([0, 1], np.uint32),
             "eval_key": np.array([0, 2], np.uint32), "text_sha256": "a" * 64}
    checkpoint.save(tmp_path, first, CONFIG, TOKENIZER, step=10, training=state)
    _stop_at_rename(monkeypatch, stopped_at)
    with pytest.raises(KeyboardInterrupt):
        checkpoint.save(tmp_path, second, CONFIG, TOKENIZER, step=20, training=state)
    monkeypatch.undo()
    loaded, _, _, meta = checkpoint.load(tmp_path)
    expected = first if meta["step"] == 10 else second
    assert meta["step"] == (10 if stopped_at <= 3 else 20)
    for got, want in zip(jax.tree_util.tree_leaves(loaded), jax.tree_util.tree_leaves(expected)):
        np.testing.assert_array_equal(got, want)
    assert checkpoint.load_training_state(tmp_path, {"mu": np.zeros(3, np.float32)})["step"] == meta["step"]
    checkpoint.save(tmp_path, second, CONFIG, TOKENIZER, step=30, training=state)
    assert sorted(_files(tmp_path)) == ["checkpoint.json", "params.msgpack", "training.msgpack"]


def test_training_state_round_trips(tmp_path):
    import optax

    params = random_params(CONFIG)
    tx = optax.adamw(1e-3)
    opt_state = tx.init(params)
    opt_state = jax.tree_util.tree_map(lambda x: np.asarray(x) + 1, opt_state)  # not the fresh state
    checkpoint.save(tmp_path, params, CONFIG, TOKENIZER, step=7,
                    training={"opt_state": opt_state, "train_key": jax.random.PRNGKey(3),
                              "eval_key": jax.random.key(4), "text_sha256": "b" * 64})
    state = checkpoint.load_training_state(tmp_path, tx.init(params))
    assert jax.tree_util.tree_structure(state["opt_state"]) == jax.tree_util.tree_structure(opt_state)
    for got, want in zip(jax.tree_util.tree_leaves(state["opt_state"]), jax.tree_util.tree_leaves(opt_state)):
        np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(state["train_key"], jax.random.PRNGKey(3))
    np.testing.assert_array_equal(state["eval_key"], jax.random.key_data(jax.random.key(4)))
    assert state["step"] == 7 and state["text_sha256"] == "b" * 64


def test_training_state_of_another_optimiser_is_a_sentence(tmp_path):
    import optax

    params = random_params(CONFIG)
    checkpoint.save(tmp_path, params, CONFIG, TOKENIZER, step=7,
                    training={"opt_state": optax.sgd(0.1).init(params), "train_key": jax.random.PRNGKey(3),
                              "eval_key": jax.random.PRNGKey(4), "text_sha256": "b" * 64})
    with pytest.raises(CheckpointError, match="does not hold the state of this optimiser .* was the "
                                              "configuration changed"):
        checkpoint.load_training_state(tmp_path, optax.adamw(1e-3).init(params))


def test_damaged_training_state_is_a_sentence(tmp_path):
    import optax

    params = random_params(CONFIG)
    tx = optax.adamw(1e-3)
    checkpoint.save(tmp_path, params, CONFIG, TOKENIZER, step=7,
                    training={"opt_state": tx.init(params), "train_key": jax.random.PRNGKey(3),
                              "eval_key": jax.random.PRNGKey(4), "text_sha256": "b" * 64})
    path = tmp_path / "training.msgpack"
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(CheckpointError) as info:
        checkpoint.load_training_state(tmp_path, tx.init(params))
    assert "training.msgpack does not match the SHA-256 recorded in checkpoint.json: the training state file " \
           "is truncated" in str(info.value)
    path.unlink()
    with pytest.raises(CheckpointError, match="training.msgpack is missing"):
        checkpoint.load_training_state(tmp_path, tx.init(params))


def test_a_description_pointing_outside_its_folder_is_refused(saved):
    directory, _ = saved
    _rewrite_meta(directory, params_file="../params.msgpack")
    assert "which is not a file name in the checkpoint's folder" in load_error(directory)


def test_describe_and_holds_checkpoint(saved, tmp_path):
    directory, _ = saved
    assert checkpoint.holds_checkpoint(directory) and not checkpoint.holds_checkpoint(tmp_path / "none")
    assert checkpoint.describe(directory).startswith("`micro` at step 40 of 40, eval loss 2.5000, task 1's "
                                                     "MiniGPT from reference, saved ")
    assert not checkpoint.resumable(directory)  # saved without a training state
    (directory / "checkpoint.json").write_text("{ not json")
    assert checkpoint.holds_checkpoint(directory)
    assert checkpoint.describe(directory).startswith(f"damaged: {directory / 'checkpoint.json'} is not valid JSON")


def test_scaling_settings_round_trip_and_older_checkpoints_read_as_one_float32_pass(tmp_path, saved):
    """The settings of Part 5 (precision, micro-batches, mesh) are saved in the configuration; a checkpoint
    written before they existed has none, and reads as the plain run it was."""
    scaled = CONFIG.with_overrides(precision="bfloat16", accumulate=2, mesh="2x2", fully_sharded=True)
    checkpoint.save(tmp_path, random_params(scaled), scaled, TOKENIZER, step=1)
    assert checkpoint.load(tmp_path)[1] == scaled
    directory, _ = saved
    path = directory / "checkpoint.json"
    meta = json.loads(path.read_text())
    for name in ("precision", "accumulate", "data_parallel", "model_parallel", "fully_sharded"):
        del meta["config"]["train"][name]
    path.write_text(json.dumps(meta))
    train = checkpoint.load(directory)[1].train
    assert (train.precision, train.accumulate, train.mesh, train.fully_sharded) == ("float32", 1, "1", False)


def test_saved_scaling_settings_that_do_not_fit_are_a_sentence(saved):
    directory, _ = saved
    path = directory / "checkpoint.json"
    meta = json.loads(path.read_text())
    meta["config"]["train"]["accumulate"] = 3  # batch 8
    path.write_text(json.dumps(meta))
    assert "cannot be split into 3 equal micro-batches" in load_error(directory)
