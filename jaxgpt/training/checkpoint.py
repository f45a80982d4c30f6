"""Saving a trained model and loading it back: a directory of three files.

    checkpoint.json     what is needed to use it: the configuration, the tokenizer, the step, the metrics,
                        where the model class came from, a format version, and the name and SHA-256 of each
                        file below
    params.msgpack      the parameter tree, serialised by flax.serialization (msgpack)
    training.msgpack    what resuming needs besides the parameters: the optimiser state and the keys of the
                        batch and evaluation streams (absent from a checkpoint saved without them)

Saving never leaves a broken checkpoint, wherever it is stopped (Ctrl-C, a crash, a full disk). Every file
is written under a temporary name and renamed, which replaces a file whole. The new data files are first
written beside the old under names of their own (params-<hash>.msgpack), and checkpoint.json, renamed over
the old one, switches to them at one moment; they then take the usual names and checkpoint.json is written
again. A data file that checkpoint.json names but is gone (the save stopped between those two steps) is
found under the usual name by its SHA-256.

Any model with the lessons' parameter tree (task 1's MiniGPT, task 6's, the reference's) can load the
parameters, so `load` checks them against the tree the configuration fixes, not against one class.
Whatever is wrong with a checkpoint, `load` and `load_training_state` raise `CheckpointError` with one
sentence saying what.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from jaxgpt import contract
from jaxgpt.training.configs import Config, ConfigError, ModelConfig

FORMAT = "jaxgpt-checkpoint"
FORMAT_VERSION = 1
META_FILE = "checkpoint.json"
PARAMS_FILE = "params.msgpack"
TRAINING_FILE = "training.msgpack"
PARTIAL_SUFFIX = ".partial"


class CheckpointError(Exception):
    """A checkpoint that cannot be saved or loaded; the message says why in one sentence."""


def save(directory: str | os.PathLike, params: Any, config: Config, tokenizer: Any, step: int,
         metrics: dict[str, Any] | None = None, *, source: dict[str, Any] | None = None,
         training: dict[str, Any] | None = None) -> Path:
    """Writes a checkpoint into `directory` (made if needed), replacing the one there, and returns it.

    params: the parameter tree (model.init(...)['params'], or the whole {'params': ...}).
    source: where the model class came from, e.g. {'impl': 'tasks', 'task': 1}, so that `jaxgpt sample`
    can rebuild the same class.
    training: what `load_training_state` gives back to resume: {'opt_state': the optimiser state,
    'train_key': ..., 'eval_key': ..., 'text_sha256': the SHA-256 of the training text}.
    """
    from flax import serialization

    directory = Path(directory)
    params = _unwrap(params)
    try:
        directory.mkdir(parents=True, exist_ok=True)
        blob = serialization.msgpack_serialize(_to_numpy(params))
        params_sha = hashlib.sha256(blob).hexdigest()
        meta = {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "config": config.to_dict(),
            "tokenizer": tokenizer.to_dict(),
            "step": int(step),
            "metrics": _plain(metrics or {}),
            "source": _plain(source or {}),
            "saved_at": time.strftime("%Y-%m-%d %H:%M:%S"),
            "params_file": _staged_name(PARAMS_FILE, params_sha),
            "params_sha256": params_sha,
        }
        _write_atomically(directory / meta["params_file"], blob)
        if training is not None:
            state_blob = serialization.msgpack_serialize(_training_tree(training))
            state_sha = hashlib.sha256(state_blob).hexdigest()
            meta["training"] = {"file": _staged_name(TRAINING_FILE, state_sha), "sha256": state_sha,
                                "text_sha256": str(training["text_sha256"])}
            _write_atomically(directory / meta["training"]["file"], state_blob)
        # The moment the new checkpoint replaces the old: until this rename, checkpoint.json names the old
        # files, which are untouched.
        _write_meta(directory, meta)
        os.replace(directory / meta["params_file"], directory / PARAMS_FILE)
        meta["params_file"] = PARAMS_FILE
        if training is not None:
            os.replace(directory / meta["training"]["file"], directory / TRAINING_FILE)
            meta["training"]["file"] = TRAINING_FILE
        _write_meta(directory, meta)
    except OSError as err:
        raise CheckpointError(f"Could not write a checkpoint to {directory}: {err.strerror or err}.") from None
    _remove_unnamed(directory, meta)
    return directory


def _staged_name(usual: str, sha: str) -> str:
    stem, suffix = usual.rsplit(".", 1)
    return f"{stem}-{sha[:16]}.{suffix}"


def _write_meta(directory: Path, meta: dict[str, Any]) -> None:
    _write_atomically(directory / META_FILE, (json.dumps(meta, indent=1) + "\n").encode("utf-8"))


def holds_checkpoint(directory: str | os.PathLike) -> bool:
    """Whether `directory` holds a checkpoint, whole or damaged (a checkpoint.json or a parameter file)."""
    directory = Path(directory)
    if not directory.is_dir():
        return False
    return (directory / META_FILE).exists() or any(_is_data_file(p.name) for p in directory.iterdir())


def resumable(directory: str | os.PathLike) -> bool:
    """Whether the checkpoint in `directory` (not loaded, only its description read) holds a training state
    and stopped before its last step."""
    try:
        meta = _read_meta(Path(directory))
        max_iters = int(meta["config"]["train"]["max_iters"])
        return isinstance(meta.get("training"), dict) and int(meta["step"]) < max_iters
    except (CheckpointError, KeyError, TypeError, ValueError):
        return False


def describe(directory: str | os.PathLike) -> str:
    """The checkpoint in `directory` in a few words, for a message: its configuration, step, eval loss,
    model and time of saving; or why it cannot be read."""
    try:
        meta = _read_meta(Path(directory))
        config = meta.get("config") or {}
        max_iters = (config.get("train") or {}).get("max_iters")
        parts = [f"`{config.get('name', '?')}` at step {int(meta.get('step', 0)):,}"
                 + (f" of {int(max_iters):,}" if max_iters else "")]
        eval_loss = (meta.get("metrics") or {}).get("eval_loss")
        if isinstance(eval_loss, (int, float)):
            parts.append(f"eval loss {eval_loss:.4f}")
        source = meta.get("source") or {}
        if source.get("impl"):
            task = int(source.get("task", 1))
            parts.append(f"task {task}'s {'CharLSTM' if task == 15 else 'MiniGPT'} from {source['impl']}")
        if meta.get("saved_at"):
            parts.append(f"saved {meta['saved_at']}")
        return ", ".join(parts)
    except (CheckpointError, AttributeError, TypeError, ValueError) as err:
        return f"damaged: {str(err).rstrip('.')}"


def _read_meta(directory: Path) -> dict[str, Any]:
    if not directory.exists():
        raise CheckpointError(f"There is no checkpoint at {directory}: the directory does not exist.")
    if not directory.is_dir():
        raise CheckpointError(f"{directory} is a file; a checkpoint is a directory holding {META_FILE} and "
                              f"the parameter file it names.")
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
    return meta


def load(directory: str | os.PathLike) -> tuple[dict[str, Any], Config, Any, dict[str, Any]]:
    """(params, config, tokenizer, meta) from a directory `save` wrote; meta holds step, metrics, source.

    params is the bare parameter tree of numpy arrays: model.apply({'params': params}, idx).
    """
    from flax import serialization

    from jaxgpt.tokenizer import tokenizer_from_dict

    directory = Path(directory)
    meta = _read_meta(directory)
    meta_path = directory / META_FILE
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

    params_path, blob = _read_data_file(directory, meta.get("params_file", PARAMS_FILE), PARAMS_FILE,
                                        expected_sha, "parameters")
    try:
        params = serialization.msgpack_restore(blob)
    except Exception as err:  # msgpack raises several types (ExtraData, ValueError, ...) on bad bytes
        raise CheckpointError(f"{params_path} could not be read as Flax msgpack ({type(err).__name__}).") \
            from None
    if int((meta.get("source") or {}).get("task", 1)) == 15:  # task 15's CharLSTM, not a MiniGPT
        from jaxgpt.training import recurrent

        expected = recurrent.param_shapes(config.model)
    else:
        expected = expected_param_shapes(config.model)
    problem = tree_mismatch(params, expected)
    if problem:
        raise CheckpointError(f"The parameters in {params_path} do not fit the model in {META_FILE}: "
                              f"{problem}.")
    extra = {k: meta.get(k) for k in ("step", "metrics", "source", "version")}
    return params, config, tokenizer, extra


def load_training_state(directory: str | os.PathLike, opt_state_template: Any) -> dict[str, Any]:
    """What resuming needs besides the parameters: {'opt_state', 'train_key', 'eval_key', 'text_sha256'}.

    opt_state_template: the optimiser's fresh state (tx.init(params)), whose structure the saved state
    must have; it is filled with the saved values.
    """
    from flax import serialization

    directory = Path(directory)
    meta = _read_meta(directory)
    training = meta.get("training")
    if not isinstance(training, dict):
        raise CheckpointError(f"The checkpoint in {directory} holds no training state (the optimiser's moments "
                              f"and the data position), so it cannot be resumed; it can still be sampled.")
    try:
        name, expected_sha, text_sha = training["file"], str(training["sha256"]), str(training["text_sha256"])
    except KeyError as err:
        raise CheckpointError(f"{directory / META_FILE} is incomplete or damaged: the field {err} of "
                              f"\"training\" is missing.") from None
    path, blob = _read_data_file(directory, name, TRAINING_FILE, expected_sha, "training state")
    try:
        tree = serialization.msgpack_restore(blob)
        opt_state = serialization.from_state_dict(opt_state_template, tree["opt_state"])
        train_key, eval_key = np.asarray(tree["train_key"]), np.asarray(tree["eval_key"])
    except Exception as err:  # bad bytes, or a state saved by another optimiser
        raise CheckpointError(f"{path} does not hold the state of this optimiser ({type(err).__name__}: "
                              f"{_first_line(err)}); was the configuration changed?") from None
    import jax

    for got, want in zip(jax.tree_util.tree_leaves(opt_state), jax.tree_util.tree_leaves(opt_state_template)):
        if np.shape(got) != np.shape(want):
            raise CheckpointError(f"{path} holds an optimiser state of shape {np.shape(got)} where the model "
                                  f"needs {np.shape(want)}; the checkpoint's state does not fit its model.")
    return {"opt_state": opt_state, "train_key": train_key, "eval_key": eval_key, "text_sha256": text_sha,
            "step": int(meta.get("step", 0))}


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


def _training_tree(training: dict[str, Any]) -> dict[str, Any]:
    from flax import serialization

    return {"opt_state": _to_numpy(serialization.to_state_dict(training["opt_state"])),
            "train_key": _key_data(training["train_key"]), "eval_key": _key_data(training["eval_key"])}


def _key_data(key: Any) -> np.ndarray:
    import jax

    if jax.dtypes.issubdtype(getattr(key, "dtype", np.uint32), jax.dtypes.prng_key):
        key = jax.random.key_data(key)
    return np.asarray(key)


def _read_data_file(directory: Path, name: Any, usual: str, expected_sha: str, what: str) -> tuple[Path, bytes]:
    """The path and bytes of the data file checkpoint.json names, checked against its SHA-256. A staged name
    that is gone means a save stopped just after renaming the file to its usual name, so that one is read."""
    name = str(name)
    if Path(name).name != name or name in ("", ".", ".."):  # a description must not point outside its folder
        raise CheckpointError(f"{directory / META_FILE} names its {what} file {name!r}, which is not a file "
                              f"name in the checkpoint's folder; the description is damaged.")
    path = directory / name
    if not path.is_file() and name != usual and (directory / usual).is_file():
        path = directory / usual
    if not path.is_file():
        raise CheckpointError(f"{directory / name} is missing: the checkpoint has its description but not its "
                              f"{what}.")
    try:
        blob = path.read_bytes()
    except OSError as err:
        raise CheckpointError(f"{path} could not be read: {err.strerror or err}.") from None
    if hashlib.sha256(blob).hexdigest() != expected_sha:
        raise CheckpointError(f"{path} does not match the SHA-256 recorded in {META_FILE}: the {what} file is "
                              f"truncated or was changed after it was saved.")
    return path, blob


def _first_line(err: BaseException) -> str:
    return (str(err).strip().splitlines() or [""])[0][:200].rstrip(".")


def _is_data_file(name: str) -> bool:
    return name in (PARAMS_FILE, TRAINING_FILE) or (
        name.endswith(".msgpack") and name.startswith(("params-", "training-")))


def _remove_unnamed(directory: Path, meta: dict[str, Any]) -> None:
    """Removes what earlier saves left that the new checkpoint.json does not name: their data files and any
    half-written file of a save that was stopped. Only names that `save` writes are touched."""
    keep = {meta["params_file"], (meta.get("training") or {}).get("file")}
    for path in directory.iterdir():
        if path.name not in keep and (_is_data_file(path.name) or path.name.endswith(PARTIAL_SUFFIX)):
            try:
                path.unlink()
            except OSError:
                pass  # a file that cannot be removed costs disk space, not correctness


def _write_atomically(path: Path, data: bytes) -> None:
    """Writes `data` to `path` so that `path` is always either its old content or all of the new."""
    partial = path.with_name(path.name + PARTIAL_SUFFIX)
    with open(partial, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())  # the bytes are on disk before the name points at them
    os.replace(partial, path)
