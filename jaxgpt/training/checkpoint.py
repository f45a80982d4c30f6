"""Saving a trained model and loading it back: a directory with two files.

    params.msgpack    the parameter tree, serialised by flax.serialization (msgpack)
    checkpoint.json   what is needed to use it: the configuration, the tokenizer, the step, the metrics,
                      where the model class came from, a format version and the SHA-256 of params.msgpack

Any model with the lessons' parameter tree (task 1's MiniGPT, task 6's, the reference's) can load the
parameters, so `load` checks them against the tree the configuration fixes, not against one class.
Whatever is wrong with a checkpoint, `load` raises `CheckpointError` with one sentence saying what.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from jaxgpt import contract
from jaxgpt.training.configs import Config, ConfigError, ModelConfig

FORMAT = "jaxgpt-checkpoint"
FORMAT_VERSION = 1
PARAMS_FILE = "params.msgpack"
META_FILE = "checkpoint.json"


class CheckpointError(Exception):
    """A checkpoint that cannot be saved or loaded; the message says why in one sentence."""


def save(directory: str | os.PathLike, params: Any, config: Config, tokenizer: Any, step: int,
         metrics: dict[str, Any] | None = None, *, source: dict[str, Any] | None = None) -> Path:
    """Writes `directory/params.msgpack` and `directory/checkpoint.json` and returns the directory.

    params: the parameter tree (model.init(...)['params'], or the whole {'params': ...}).
    source: where the model class came from, e.g. {'impl': 'tasks', 'task': 1}, so that `jaxgpt sample`
    can rebuild the same class.
    Each file is written beside its final name and then renamed, so an interrupted save leaves the previous
    checkpoint whole.
    """
    from flax import serialization

    directory = Path(directory)
    params = _unwrap(params)
    try:
        directory.mkdir(parents=True, exist_ok=True)
        blob = serialization.msgpack_serialize(_to_numpy(params))
        meta = {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "config": config.to_dict(),
            "tokenizer": tokenizer.to_dict(),
            "step": int(step),
            "metrics": _plain(metrics or {}),
            "source": _plain(source or {}),
            "params_file": PARAMS_FILE,
            "params_sha256": hashlib.sha256(blob).hexdigest(),
        }
        _write_atomically(directory / PARAMS_FILE, blob)
        _write_atomically(directory / META_FILE, (json.dumps(meta, indent=1) + "\n").encode("utf-8"))
    except OSError as err:
        raise CheckpointError(f"Could not write a checkpoint to {directory}: {err.strerror or err}.") from None
    return directory


def load(directory: str | os.PathLike) -> tuple[dict[str, Any], Config, Any, dict[str, Any]]:
    """(params, config, tokenizer, meta) from a directory `save` wrote; meta holds step, metrics, source.

    params is the bare parameter tree of numpy arrays: model.apply({'params': params}, idx).
    """
    from flax import serialization

    from jaxgpt.tokenizer import tokenizer_from_dict

    directory = Path(directory)
    if not directory.exists():
        raise CheckpointError(f"There is no checkpoint at {directory}: the directory does not exist.")
    if not directory.is_dir():
        raise CheckpointError(f"{directory} is a file; a checkpoint is a directory holding {META_FILE} and "
                              f"{PARAMS_FILE}.")
    meta_path = directory / META_FILE
    if not meta_path.is_file():
        raise CheckpointError(f"{directory} holds no {META_FILE}, so it is not a checkpoint written by "
                              f"`jaxgpt train` (or the training was stopped before its first save).")
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise CheckpointError(f"{meta_path} is not valid JSON ({err}); the checkpoint is damaged.") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(f"{meta_path} is not a jaxgpt checkpoint description (it lacks "
                              f"\"format\": \"{FORMAT}\").")
    if meta.get("version") != FORMAT_VERSION:
        raise CheckpointError(f"{meta_path} has format version {meta.get('version')!r}; this jaxgpt reads "
                              f"version {FORMAT_VERSION}, so it was written by another version of jaxgpt.")
    try:
        config = Config.from_dict(meta["config"])
        tokenizer = tokenizer_from_dict(meta["tokenizer"])
        expected_sha = str(meta["params_sha256"])
    except (KeyError, ConfigError, ValueError, TypeError) as err:
        what = f"the field {err}" if isinstance(err, KeyError) else str(err)
        raise CheckpointError(f"{meta_path} is incomplete or damaged: {what.rstrip('.')}.") from None
    if config.model.vocab_size != tokenizer.vocab_size:
        raise CheckpointError(f"{meta_path} is inconsistent: the model's vocab_size is "
                              f"{config.model.vocab_size} but the tokenizer has {tokenizer.vocab_size} tokens.")

    params_path = directory / str(meta.get("params_file", PARAMS_FILE))
    if not params_path.is_file():
        raise CheckpointError(f"{params_path} is missing: the checkpoint has its description but not its "
                              f"parameters.")
    blob = params_path.read_bytes()
    if hashlib.sha256(blob).hexdigest() != expected_sha:
        raise CheckpointError(f"{params_path} does not match the SHA-256 recorded in {META_FILE}: the file is "
                              f"truncated or was changed after it was saved.")
    try:
        params = serialization.msgpack_restore(blob)
    except Exception as err:  # msgpack raises several types (ExtraData, ValueError, ...) on bad bytes
        raise CheckpointError(f"{params_path} could not be read as Flax msgpack ({type(err).__name__}).") \
            from None
    problem = tree_mismatch(params, expected_param_shapes(config.model))
    if problem:
        raise CheckpointError(f"The parameters in {params_path} do not fit the model in {META_FILE}: "
                              f"{problem}.")
    extra = {k: meta.get(k) for k in ("step", "metrics", "source", "version")}
    return params, config, tokenizer, extra


def expected_param_shapes(model: ModelConfig) -> dict[str, Any]:
    """The MiniGPT parameter tree the lessons fix (task 1), as nested dicts of shapes."""
    return contract.model_shapes(model.vocab_size, model.block_size, model.n_embd, model.n_head, model.n_layer)


def tree_mismatch(params: Any, expected: dict[str, Any], path: str = "") -> str | None:
    """The first difference between a parameter tree and a tree of expected shapes, in words, or None."""
    if not isinstance(params, dict):
        return f"{path or 'the top level'} is a {type(params).__name__}, not a group of parameters"
    missing = [k for k in expected if k not in params]
    if missing:
        return f"{_join(path, missing[0])} is missing"
    unexpected = [k for k in params if k not in expected]
    if unexpected:
        return f"{_join(path, unexpected[0])} is not part of the model"
    for name, want in expected.items():
        here = _join(path, name)
        if isinstance(want, dict):
            problem = tree_mismatch(params[name], want, here)
            if problem:
                return problem
        else:
            got = getattr(params[name], "shape", None)
            if got is None:
                return f"{here} is a {type(params[name]).__name__}, not an array"
            if tuple(got) != tuple(want):
                return f"{here} has shape {tuple(got)}, the configuration asks for {tuple(want)}"
    return None


def _join(path: str, name: str) -> str:
    return f"{path}/{name}" if path else name


def _unwrap(params: Any) -> Any:
    if isinstance(params, dict) and set(params) == {"params"}:
        return params["params"]
    if hasattr(params, "keys") and set(params.keys()) == {"params"}:  # a FrozenDict
        return params["params"]
    return params


def _to_numpy(tree: Any) -> Any:
    import jax

    return jax.tree_util.tree_map(lambda x: np.asarray(x), _as_dict(tree))


def _as_dict(tree: Any) -> Any:
    if hasattr(tree, "keys") and not isinstance(tree, dict):  # FrozenDict
        return {k: _as_dict(tree[k]) for k in tree.keys()}
    if isinstance(tree, dict):
        return {k: _as_dict(v) for k, v in tree.items()}
    return tree


def _plain(value: Any) -> Any:
    """JSON-safe: numpy and JAX scalars become Python numbers."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if hasattr(value, "item") and getattr(value, "ndim", None) == 0:
        return value.item()
    return value


def _write_atomically(path: Path, data: bytes) -> None:
    partial = path.with_name(path.name + ".partial")
    partial.write_bytes(data)
    os.replace(partial, path)
