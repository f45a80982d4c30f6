"""tiny Shakespeare: loading it, the 90/10 split, and random batches of (context, target) blocks.

`load_text()` looks for the text in this order and takes the first that works:
1. the `path` argument;
2. the file named by the environment variable JAXGPT_DATA;
3. the cached copy, `~/.cache/jaxgpt/tinyshakespeare/input.txt` (or `cache_dir/input.txt`), if its
   SHA-256 is the published one;
4. tensorflow-datasets' `tiny_shakespeare`, when the optional `tfds` extra is installed;
5. a direct download of char-rnn's `input.txt`, checked against its SHA-256 and then cached.
Offline and uncached it raises `DataUnavailable`, whose message names the three ways out.
"""

from __future__ import annotations

import hashlib
import operator
import os
import warnings
from pathlib import Path
from http.client import HTTPException
from urllib.error import URLError
from urllib.request import urlopen

import jax
import jax.numpy as jnp
import numpy as np

from jaxgpt import settings

TINY_SHAKESPEARE_URL = "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
TINY_SHAKESPEARE_SHA256 = "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"
TINY_SHAKESPEARE_CHARS = 1_115_394
DEFAULT_CACHE_DIR = Path.home() / ".cache" / "jaxgpt" / "tinyshakespeare"
DOWNLOAD_TIMEOUT_S = 30.0
ENV_VAR = settings.DATA


class DataError(Exception):
    """The text could not be loaded; the message says why and what to do about it."""


class DataUnavailable(DataError):
    """tiny Shakespeare is neither cached nor obtainable (offline, no tensorflow-datasets)."""


# ----------------------------------------------------------------------------------------------------
# Loading


def load_text(path: str | os.PathLike | None = None, *, cache_dir: str | os.PathLike | None = None,
              download: bool = True, named_by: str = "the path given to load_text") -> str:
    """The training text: a local file if one is named, else tiny Shakespeare (cached, tfds or downloaded).

    path: a local UTF-8 text file (any text, not only Shakespeare); it wins over everything else.
    cache_dir: the folder holding the cached `input.txt` (default ~/.cache/jaxgpt/tinyshakespeare).
    download: False never touches the network (nor tensorflow-datasets): only a named file or the cache.
    named_by: how an error message names where `path` came from (`jaxgpt train` says "--data").
    """
    if path is not None:
        return _read_text_file(Path(path).expanduser(), named_by)
    env_path = settings.data_path()
    if env_path:
        return _read_text_file(Path(env_path).expanduser(), f"the {ENV_VAR} environment variable")

    cache_file = (Path(cache_dir).expanduser() if cache_dir is not None else DEFAULT_CACHE_DIR) / "input.txt"
    reasons: list[str] = []
    cached = _read_cache(cache_file, reasons)
    if cached is not None:
        return cached
    if not download:
        reasons.append("download=False was given, so nothing was fetched")
        raise DataUnavailable(_ways_out(cache_file, reasons))

    text = _load_with_tfds(reasons)
    if text is None:
        text = _download(reasons)
    if text is None:
        raise DataUnavailable(_ways_out(cache_file, reasons))
    _write_cache(cache_file, text)
    return text


def _read_text_file(path: Path, named_by: str) -> str:
    if not path.exists():
        raise DataError(f"There is no file at {path} (named by {named_by}); check the path.")
    if path.is_dir():
        raise DataError(f"{path} (named by {named_by}) is a folder; name the text file inside it.")
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise DataError(f"{path} (named by {named_by}) could not be read: {err.strerror or err}.") from None
    if not raw:
        raise DataError(f"{path} (named by {named_by}) is empty; a model needs some text to learn from.")
    try:
        # Decoded from bytes, not opened in text mode, so that line endings stay exactly as in the file.
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise DataError(
            f"{path} (named by {named_by}) is not UTF-8 text: byte {raw[err.start]:#04x} at offset "
            f"{err.start} cannot be decoded; save the file as UTF-8 first.") from None


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _read_cache(cache_file: Path, reasons: list[str]) -> str | None:
    if not cache_file.is_file():
        return None
    try:
        text = cache_file.read_bytes().decode("utf-8")
    except (OSError, UnicodeDecodeError):
        text = None
    if text is not None and _sha256(text) == TINY_SHAKESPEARE_SHA256:
        return text
    # A damaged or truncated cache (an interrupted copy, an edited file) is ignored and fetched again.
    reasons.append(f"the cached copy at {cache_file} does not match the published SHA-256, so it was ignored")
    return None


def _write_cache(cache_file: Path, text: str) -> None:
    try:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        partial = cache_file.with_name(cache_file.name + ".partial")
        partial.write_bytes(text.encode("utf-8"))
        os.replace(partial, cache_file)  # atomic: an interrupted write never leaves a half file behind
    except OSError as err:
        warnings.warn(f"tiny Shakespeare was loaded but could not be cached at {cache_file} ({err}); "
                      f"it will be fetched again next time.", stacklevel=3)


def _load_with_tfds(reasons: list[str]) -> str | None:
    try:
        import tensorflow_datasets as tfds
    except ImportError:
        reasons.append("tensorflow-datasets is not installed")
        return None
    try:
        # tfds splits the char-rnn file 90/5/5 by characters, each split one example with a 'text' feature;
        # train + validation + test in that order is the original file.
        splits = tfds.load("tiny_shakespeare", split=["train", "validation", "test"])
        pieces = [example["text"] for split in splits for example in tfds.as_numpy(split)]
        text = b"".join(p if isinstance(p, bytes) else str(p).encode("utf-8") for p in pieces).decode("utf-8")
    except Exception as err:  # tfds fails in many ways offline (DownloadError, ConnectionError, TF errors)
        reasons.append(f"tensorflow-datasets could not load tiny_shakespeare ({type(err).__name__}: {err})")
        return None
    if _sha256(text) != TINY_SHAKESPEARE_SHA256:
        reasons.append("tensorflow-datasets returned a tiny_shakespeare that does not match the published "
                       "SHA-256")
        return None
    return text


def _download(reasons: list[str]) -> str | None:
    """char-rnn's input.txt, or None (with the reason) when the network cannot be reached."""
    from tqdm import tqdm

    try:
        with urlopen(TINY_SHAKESPEARE_URL, timeout=DOWNLOAD_TIMEOUT_S) as response:
            length = str(response.headers.get("Content-Length", "")) if response.headers else ""
            total = int(length) if length.isdigit() else None
            chunks = []
            with tqdm(total=total, unit="B", unit_scale=True, desc="tiny Shakespeare", leave=False) as bar:
                while chunk := response.read(1 << 16):
                    chunks.append(chunk)
                    bar.update(len(chunk))
    except (URLError, OSError, HTTPException) as err:  # no network, timeouts, refused or broken connections
        reason = getattr(err, "reason", None) or err
        reasons.append(f"downloading {TINY_SHAKESPEARE_URL} failed ({reason})")
        return None
    raw = b"".join(chunks)
    digest = hashlib.sha256(raw).hexdigest()
    if digest != TINY_SHAKESPEARE_SHA256:
        raise DataError(
            f"The file downloaded from {TINY_SHAKESPEARE_URL} has SHA-256 {digest}, not the published "
            f"{TINY_SHAKESPEARE_SHA256}, so it was not used or cached (a proxy page or a changed file?); "
            f"download it by hand and name it with load_text(path), {ENV_VAR} or --data.")
    return raw.decode("utf-8")


def _ways_out(cache_file: Path, reasons: list[str]) -> str:
    why = "; ".join(reasons) if reasons else "no source was available"
    return (
        f"tiny Shakespeare is not cached and could not be obtained ({why}). Three ways out: "
        f"(1) install the tfds extra (`pip install -e \".[tfds]\"` in the repository), "
        f"(2) connect to the internet once, so that it is downloaded and cached at {cache_file}, or "
        f"(3) name a local copy of the text: load_text(path), the {ENV_VAR} environment variable, "
        f"or `--data PATH` on the command line.")


# ----------------------------------------------------------------------------------------------------
# Split and batches


def train_eval_split(data, train_fraction: float = 0.9):
    """(train, eval): the first `train_fraction` of `data` and the rest, in order (the video's 90/10 split).

    Works on anything sliceable: a string, a list, a numpy or JAX array of token ids.
    """
    if not 0.0 < train_fraction < 1.0:
        raise ValueError(f"train_fraction must lie strictly between 0 and 1, got {train_fraction}.")
    n = int(train_fraction * len(data))
    return data[:n], data[n:]


def _positive_int(value, name: str):
    """value as an int; tracers pass through untouched so that JAX itself explains them (see get_batch)."""
    if isinstance(value, jax.core.Tracer):
        return value
    try:
        number = operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be a positive int, got {value!r} ({type(value).__name__}).") from None
    if number <= 0:
        raise ValueError(f"{name} must be a positive int, got {number}.")
    return number


def get_batch(key, data, batch_size: int, block_size: int):
    """A random batch of contexts and their targets: x, y int32, both (batch_size, block_size).

    Row b of x is data[i : i + block_size] for a random start i, and row b of y is the same window one
    token later, data[i + 1 : i + block_size + 1], so y[b, t] is the token that follows x[b, : t + 1].
    Under jax.jit, batch_size and block_size must be static, because they are the shapes of the output:
    jax.jit(get_batch, static_argnames=("batch_size", "block_size")).
    """
    batch_size = _positive_int(batch_size, "batch_size")
    block_size = _positive_int(block_size, "block_size")
    data = jnp.asarray(data)
    if data.ndim != 1:
        raise ValueError(f"get_batch takes a 1-D array of token ids, got shape {tuple(data.shape)}.")
    if not jnp.issubdtype(data.dtype, jnp.integer):
        raise TypeError(f"get_batch takes integer token ids, got dtype {data.dtype}; encode the text first.")
    n = data.shape[0]  # a shape, so known even under jit
    if not isinstance(block_size, jax.core.Tracer) and n < block_size + 1:
        raise ValueError(
            f"The data holds {n} tokens, too few for one block: a block of {block_size} tokens and its "
            f"shifted target need at least block_size + 1 = {block_size + 1}; use more text or a smaller "
            f"block_size.")
    # Starts in [0, n - block_size): the target window, one later, then ends at most at the last token.
    starts = jax.random.randint(key, (batch_size,), 0, n - block_size)  # (B,)

    def window(start, offset):
        # dynamic_slice, not data[start:start + block_size]: start is a traced value, the length is static.
        return jax.lax.dynamic_slice(data, (start + offset,), (block_size,))  # (T,)

    x = jax.vmap(window, in_axes=(0, None))(starts, 0)  # (B, T)
    y = jax.vmap(window, in_axes=(0, None))(starts, 1)  # (B, T)
    return x.astype(jnp.int32), y.astype(jnp.int32)
