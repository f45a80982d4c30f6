"""Self-tests of jaxgpt.data: where the text comes from, the split, and get_batch.

None of these touch the network or need the real corpus: every test builds a small corpus in tmp_path,
and the downloader (`jaxgpt.data.urlopen`) is replaced by a fake.
"""

from __future__ import annotations

import hashlib
import io
import sys
import types
from urllib.error import URLError

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxgpt import data
from jaxgpt.data import DataError, DataUnavailable, get_batch, load_text, train_eval_split

CORPUS = "First Citizen:\nBefore we proceed any further, hear me speak.\n"


class FakeResponse(io.BytesIO):
    def __init__(self, payload: bytes, with_length: bool = True):
        super().__init__(payload)
        self.headers = {"Content-Length": str(len(payload))} if with_length else {}


class FakeNetwork:
    """Stands in for urlopen: serves `payload`, or raises `error`, and counts the requests."""

    def __init__(self, payload: bytes | None = None, error: Exception | None = None):
        self.payload, self.error, self.requests = payload, error, []

    def __call__(self, url, timeout=None):
        self.requests.append((url, timeout))
        if self.error is not None:
            raise self.error
        return FakeResponse(self.payload)


@pytest.fixture(autouse=True)
def isolated(monkeypatch, tmp_path):
    """No JAXGPT_DATA, no tensorflow-datasets, no network, the published hash being CORPUS's."""
    monkeypatch.delenv("JAXGPT_DATA", raising=False)
    monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)  # makes `import tensorflow_datasets` fail
    monkeypatch.setattr(data, "urlopen", FakeNetwork(error=URLError("network disabled in tests")))
    monkeypatch.setattr(data, "TINY_SHAKESPEARE_SHA256", hashlib.sha256(CORPUS.encode()).hexdigest())
    monkeypatch.setattr(data, "DEFAULT_CACHE_DIR", tmp_path / "default-cache")


def write(path, content: str | bytes):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content.encode("utf-8") if isinstance(content, str) else content)
    return path


# ----------------------------------------------------------------------------------------------------
# Where the text comes from


def test_explicit_path_is_read_exactly(tmp_path):
    """load_text(path) returns the file's text unchanged, non-ASCII characters and CRLF included."""
    text = "Ça va ? — oui.\r\nZweite Zeile ✓\n"
    assert load_text(write(tmp_path / "mine.txt", text)) == text
    assert load_text(str(tmp_path / "mine.txt")) == text


def test_env_var_names_the_file_and_path_wins(tmp_path, monkeypatch):
    """JAXGPT_DATA is read when no path is given; an explicit path wins over it."""
    monkeypatch.setenv("JAXGPT_DATA", str(write(tmp_path / "env.txt", "from the environment")))
    assert load_text() == "from the environment"
    assert load_text(write(tmp_path / "arg.txt", "from the argument")) == "from the argument"


def test_cache_is_used_when_its_hash_matches(tmp_path):
    """A cached copy with the published SHA-256 is returned without any download."""
    write(tmp_path / "cache" / "input.txt", CORPUS)
    assert load_text(cache_dir=tmp_path / "cache") == CORPUS
    assert data.urlopen.requests == []


def test_default_cache_location(tmp_path):
    """Without cache_dir the cache is DEFAULT_CACHE_DIR/input.txt."""
    write(data.DEFAULT_CACHE_DIR / "input.txt", CORPUS)
    assert load_text() == CORPUS


def test_download_is_verified_cached_and_not_repeated(tmp_path, monkeypatch):
    """Uncached, the file is downloaded once (with a timeout), checked, cached, and read from cache after."""
    network = FakeNetwork(payload=CORPUS.encode())
    monkeypatch.setattr(data, "urlopen", network)
    cache = tmp_path / "cache"
    assert load_text(cache_dir=cache) == CORPUS
    assert (cache / "input.txt").read_bytes() == CORPUS.encode()
    assert len(network.requests) == 1
    url, timeout = network.requests[0]
    assert url == data.TINY_SHAKESPEARE_URL and timeout is not None and timeout > 0
    assert load_text(cache_dir=cache) == CORPUS
    assert len(network.requests) == 1, "the second call should have read the cache"
    assert not list(cache.glob("*.partial")), "no partial file should be left behind"


def test_download_without_content_length(tmp_path, monkeypatch):
    """A response without Content-Length still downloads (the progress bar just has no total)."""
    monkeypatch.setattr(data, "urlopen", lambda url, timeout=None: FakeResponse(CORPUS.encode(), False))
    assert load_text(cache_dir=tmp_path / "cache") == CORPUS


def test_damaged_cache_is_replaced(tmp_path, monkeypatch):
    """A cached copy whose hash does not match is ignored, downloaded again and overwritten."""
    write(tmp_path / "cache" / "input.txt", CORPUS[:-10])
    monkeypatch.setattr(data, "urlopen", FakeNetwork(payload=CORPUS.encode()))
    assert load_text(cache_dir=tmp_path / "cache") == CORPUS
    assert (tmp_path / "cache" / "input.txt").read_text() == CORPUS


def test_download_with_wrong_hash_is_rejected_and_not_cached(tmp_path, monkeypatch):
    """A downloaded file with another SHA-256 raises one sentence naming both hashes, and is not cached."""
    payload = b"<html>Please log in to the hotel wifi</html>"
    monkeypatch.setattr(data, "urlopen", FakeNetwork(payload=payload))
    with pytest.raises(DataError) as caught:
        load_text(cache_dir=tmp_path / "cache")
    message = str(caught.value)
    assert hashlib.sha256(payload).hexdigest() in message and data.TINY_SHAKESPEARE_SHA256 in message
    assert "SHA-256" in message
    assert not (tmp_path / "cache" / "input.txt").exists()


@pytest.mark.parametrize("error", [URLError("Name or service not known"), TimeoutError("timed out"),
                                   ConnectionRefusedError("refused")])
def test_offline_and_uncached_names_the_three_ways_out(tmp_path, monkeypatch, error):
    """Offline and uncached, load_text raises DataUnavailable naming tfds, connecting once, and a local file."""
    monkeypatch.setattr(data, "urlopen", FakeNetwork(error=error))
    with pytest.raises(DataUnavailable) as caught:
        load_text(cache_dir=tmp_path / "cache")
    message = str(caught.value)
    for way_out in ("tfds", "connect to the internet once", "load_text(path)", "JAXGPT_DATA", "--data"):
        assert way_out in message, f"{way_out!r} missing from: {message}"
    assert str(tmp_path / "cache" / "input.txt") in message, "the message should say where the cache goes"
    assert "tensorflow-datasets is not installed" in message
    assert isinstance(caught.value, DataError)


def test_download_false_never_touches_the_network(tmp_path):
    """download=False with no cache raises DataUnavailable without a request."""
    with pytest.raises(DataUnavailable, match="download=False was given"):
        load_text(cache_dir=tmp_path / "cache", download=False)
    assert data.urlopen.requests == []


def fake_tfds(texts_by_split: dict[str, str], calls: list) -> types.ModuleType:
    """A stand-in for tensorflow_datasets: each split is one example with a 'text' feature (bytes)."""
    module = types.ModuleType("tensorflow_datasets")

    def load(name, split):
        calls.append((name, tuple(split)))
        return [[{"text": texts_by_split[s].encode()}] for s in split]

    module.load = load
    module.as_numpy = lambda dataset: iter(dataset)
    return module


def test_tfds_splits_are_joined_train_validation_test(tmp_path, monkeypatch):
    """With tensorflow-datasets importable, train + validation + test are joined in that order and cached."""
    calls = []
    a, b, c = CORPUS[:40], CORPUS[40:50], CORPUS[50:]
    # Dict order differs from the wanted order on purpose.
    monkeypatch.setitem(sys.modules, "tensorflow_datasets", fake_tfds({"test": c, "validation": b, "train": a},
                                                                      calls))
    assert load_text(cache_dir=tmp_path / "cache") == CORPUS
    assert calls == [("tiny_shakespeare", ("train", "validation", "test"))]
    assert (tmp_path / "cache" / "input.txt").read_text() == CORPUS
    assert data.urlopen.requests == [], "tfds succeeded, so nothing should be downloaded"


def test_tfds_text_with_wrong_hash_is_not_used(tmp_path, monkeypatch):
    """A tfds text that does not match the published SHA-256 is not returned: the download is tried instead."""
    monkeypatch.setitem(sys.modules, "tensorflow_datasets",
                        fake_tfds({"train": "tampered", "validation": "", "test": ""}, []))
    with pytest.raises(DataUnavailable, match="does not match the published SHA-256"):
        load_text(cache_dir=tmp_path / "cache")
    monkeypatch.setattr(data, "urlopen", FakeNetwork(payload=CORPUS.encode()))
    assert load_text(cache_dir=tmp_path / "cache") == CORPUS


def test_tfds_failure_falls_back_to_download(tmp_path, monkeypatch):
    """When tensorflow-datasets fails (offline, no TensorFlow), the direct download is tried."""
    broken = types.ModuleType("tensorflow_datasets")

    def load(name, split):
        raise RuntimeError("TensorFlow is not installed")

    broken.load = load
    monkeypatch.setitem(sys.modules, "tensorflow_datasets", broken)
    monkeypatch.setattr(data, "urlopen", FakeNetwork(payload=CORPUS.encode()))
    assert load_text(cache_dir=tmp_path / "cache") == CORPUS


def test_tfds_failure_and_offline_reports_both(tmp_path, monkeypatch):
    """Offline with a failing tensorflow-datasets, the error says what tfds said and what the download said."""
    broken = types.ModuleType("tensorflow_datasets")
    broken.load = lambda name, split: (_ for _ in ()).throw(RuntimeError("no TensorFlow here"))
    monkeypatch.setitem(sys.modules, "tensorflow_datasets", broken)
    with pytest.raises(DataUnavailable, match="no TensorFlow here") as caught:
        load_text(cache_dir=tmp_path / "cache")
    assert "network disabled in tests" in str(caught.value)


@pytest.mark.parametrize("case, content, expected", [
    ("missing", None, "There is no file at"),
    ("empty", b"", "is empty"),
    ("not UTF-8", b"caf\xe9 au lait", "is not UTF-8 text: byte 0xe9 at offset 3"),
])
def test_bad_local_files_get_one_sentence(tmp_path, case, content, expected):
    """A missing, empty or non-UTF-8 file raises DataError with one sentence that names the file."""
    path = tmp_path / "text.txt"
    if content is not None:
        write(path, content)
    with pytest.raises(DataError) as caught:
        load_text(path)
    message = str(caught.value)
    assert expected in message and str(path) in message


def test_folder_instead_of_file(tmp_path, monkeypatch):
    """JAXGPT_DATA naming a folder says so, and names the variable."""
    monkeypatch.setenv("JAXGPT_DATA", str(tmp_path))
    with pytest.raises(DataError, match="is a folder") as caught:
        load_text()
    assert "JAXGPT_DATA" in str(caught.value)


# ----------------------------------------------------------------------------------------------------
# The split


def test_split_is_first_ninety_last_ten_percent():
    """train_eval_split keeps order: the first 90% for training, the last 10% for evaluation."""
    ids = np.arange(1000)
    train, evaluation = train_eval_split(ids)
    np.testing.assert_array_equal(train, np.arange(900))
    np.testing.assert_array_equal(evaluation, np.arange(900, 1000))
    train, evaluation = train_eval_split("abcdefghij", 0.8)
    assert (train, evaluation) == ("abcdefgh", "ij")
    train, evaluation = train_eval_split(jnp.arange(1_115_394))
    assert len(train) == 1_003_854 and len(evaluation) == 111_540  # the video's numbers


@pytest.mark.parametrize("fraction", [0.0, 1.0, 1.5, -0.1])
def test_split_fraction_must_be_inside_zero_one(fraction):
    """A train_fraction outside (0, 1) is refused with a sentence."""
    with pytest.raises(ValueError, match="between 0 and 1"):
        train_eval_split(np.arange(10), fraction)


# ----------------------------------------------------------------------------------------------------
# get_batch

DATA = jnp.arange(100, 200, dtype=jnp.int32)  # token i sits at index i - 100: easy to read back
# Most checks run compiled, and with few shapes, since each new shape is a new compilation.
get_batch_jit = jax.jit(get_batch, static_argnames=("batch_size", "block_size"))


def test_get_batch_shapes_dtype_and_shift():
    """x and y are int32 (B, T); each x row is a contiguous window of data and y is x one token later."""
    x, y = get_batch_jit(jax.random.key(0), DATA, batch_size=4, block_size=8)
    assert x.shape == y.shape == (4, 8) and x.dtype == y.dtype == jnp.int32
    x, y = np.asarray(x), np.asarray(y)
    np.testing.assert_array_equal(np.diff(x, axis=1), 1)  # contiguous windows of arange
    np.testing.assert_array_equal(y, x + 1)  # the next token at every position
    assert x.min() >= 100 and y.max() <= 199


def test_get_batch_covers_every_start_and_no_other():
    """Starts are drawn from 0 .. len(data) - block_size - 1: the last target is the last token, never past."""
    small = jnp.arange(10, dtype=jnp.int32)
    x, y = get_batch_jit(jax.random.key(1), small, batch_size=64, block_size=7)
    assert set(np.asarray(x[:, 0]).tolist()) == {0, 1, 2}
    assert int(y.max()) == 9
    x, y = get_batch_jit(jax.random.key(2), small, batch_size=4, block_size=9)  # one possible window
    np.testing.assert_array_equal(x, np.tile(np.arange(9), (4, 1)))
    np.testing.assert_array_equal(y, np.tile(np.arange(1, 10), (4, 1)))


def test_get_batch_is_deterministic_for_a_key():
    """The same key gives the same batch; another key another batch."""
    a = get_batch_jit(jax.random.key(7), DATA, batch_size=4, block_size=8)
    b = get_batch_jit(jax.random.key(7), DATA, batch_size=4, block_size=8)
    c = get_batch_jit(jax.random.key(8), DATA, batch_size=4, block_size=8)
    np.testing.assert_array_equal(a[0], b[0])
    assert not np.array_equal(a[0], c[0])


def test_get_batch_eager_equals_jitted():
    """Called without jit, get_batch gives the compiled result, with new-style and old-style (uint32) keys."""
    for key in (jax.random.key(3), jax.random.PRNGKey(3)):
        eager = get_batch(key, DATA, 4, 8)
        compiled = get_batch_jit(key, DATA, 4, 8)  # static arguments may be passed by position too
        np.testing.assert_array_equal(eager[0], compiled[0])
        np.testing.assert_array_equal(eager[1], compiled[1])


def test_get_batch_jit_without_static_sizes_explains_shapes():
    """Under jit without static sizes, JAX itself says the shape needs a concrete batch_size."""
    with pytest.raises(TypeError) as caught:
        jax.jit(get_batch)(jax.random.key(0), DATA, 4, 8)
    message = str(caught.value)
    assert "concrete" in message and "batch_size" in message and "static_arg" in message


def test_get_batch_too_short_data():
    """Data shorter than block_size + 1 is refused with a sentence giving both numbers."""
    with pytest.raises(ValueError, match=r"holds 8 tokens.*block_size \+ 1 = 9"):
        get_batch(jax.random.key(0), jnp.arange(8), 2, 8)
    with pytest.raises(ValueError, match="holds 8 tokens"):
        get_batch_jit(jax.random.key(0), jnp.arange(8), batch_size=2, block_size=8)


@pytest.mark.parametrize("batch_size, block_size, error, text", [
    (0, 8, ValueError, "batch_size must be a positive int, got 0"),
    (4, -1, ValueError, "block_size must be a positive int, got -1"),
    (4, 8.0, TypeError, "block_size must be a positive int, got 8.0"),
])
def test_get_batch_bad_sizes(batch_size, block_size, error, text):
    """Sizes that are not positive ints get a sentence naming the argument."""
    with pytest.raises(error, match=text):
        get_batch(jax.random.key(0), DATA, batch_size, block_size)


def test_get_batch_bad_data():
    """Text instead of ids, or a 2-D array, gets a sentence."""
    with pytest.raises(TypeError, match="encode the text first"):
        get_batch(jax.random.key(0), jnp.linspace(0, 1, 50), 2, 4)
    with pytest.raises(ValueError, match="1-D"):
        get_batch(jax.random.key(0), jnp.zeros((5, 20), jnp.int32), 2, 4)
