"""Checkpoints: what is saved comes back exactly, and every way a checkpoint can be broken is one sentence."""

from __future__ import annotations

import dataclasses
import json

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
