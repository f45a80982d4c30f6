"""Self-tests of jaxgpt.tokenizer: the character tokenizer of the video and the byte tokenizer."""

from __future__ import annotations

import json

import jax.numpy as jnp
import numpy as np
import pytest

from jaxgpt.tokenizer import ByteTokenizer, CharTokenizer, tokenizer_from_dict

TEXT = "First Citizen:\nBefore we proceed any further, hear me speak.\n"


def test_vocabulary_is_the_sorted_distinct_characters():
    """from_text takes the distinct characters in sorted order; ids are positions in that order."""
    tok = CharTokenizer.from_text("hello world")
    assert tok.chars == (" ", "d", "e", "h", "l", "o", "r", "w")
    assert tok.vocab_size == 8
    assert tok.encode("hello") == [3, 2, 4, 4, 5]
    assert tok.decode([7, 5, 6, 4, 1]) == "world"


def test_round_trip():
    """decode(encode(s)) == s, newlines and punctuation included, and encode of '' is []."""
    tok = CharTokenizer.from_text(TEXT)
    assert tok.decode(tok.encode(TEXT)) == TEXT
    assert tok.encode("") == [] and tok.decode([]) == ""


def test_decode_accepts_lists_numpy_and_jax_arrays():
    """decode takes a list, a numpy array, a JAX array (any int dtype) or a single id."""
    tok = CharTokenizer.from_text(TEXT)
    ids = tok.encode("hear me")
    assert tok.decode(np.array(ids, np.int64)) == "hear me"
    assert tok.decode(jnp.array(ids, jnp.int32)) == "hear me"
    assert tok.decode(tuple(ids)) == "hear me"
    assert tok.decode(ids[0]) == "h" and tok.decode(np.int32(ids[0])) == "h"


def test_unknown_character_is_named():
    """Encoding a character outside the vocabulary raises one sentence naming it and its position."""
    tok = CharTokenizer.from_text(TEXT)
    with pytest.raises(ValueError) as caught:
        tok.encode("hear é")
    message = str(caught.value)
    assert "'é'" in message and "position 5" in message and "ByteTokenizer" in message


def test_decode_errors():
    """An id outside the vocabulary, a 2-D array or float ids get a sentence."""
    tok = CharTokenizer.from_text("abc")
    with pytest.raises(ValueError, match=r"Token id 3 is outside .* 0 to 2"):
        tok.decode([0, 3])
    with pytest.raises(ValueError, match="decode each row"):
        tok.decode(np.zeros((2, 3), np.int32))
    with pytest.raises(TypeError, match="integer token ids"):
        tok.decode(np.array([0.0, 1.0]))


def test_save_and_restore():
    """to_dict survives JSON, and from_dict / tokenizer_from_dict give back an equal tokenizer."""
    tok = CharTokenizer.from_text(TEXT)
    saved = json.loads(json.dumps(tok.to_dict()))
    for restored in (CharTokenizer.from_dict(saved), tokenizer_from_dict(saved)):
        assert restored == tok and restored.encode(TEXT) == tok.encode(TEXT)
    byte_saved = json.loads(json.dumps(ByteTokenizer().to_dict()))
    assert tokenizer_from_dict(byte_saved) == ByteTokenizer()
    with pytest.raises(ValueError, match="type 'char' or 'byte'"):
        tokenizer_from_dict({"type": "bpe"})
    with pytest.raises(ValueError, match="not a saved ByteTokenizer"):
        ByteTokenizer.from_dict(tok.to_dict())


def test_empty_or_odd_vocabularies_are_refused():
    """Empty text, repeated characters and multi-character entries are refused with a sentence."""
    with pytest.raises(ValueError, match="got empty text"):
        CharTokenizer.from_text("")
    with pytest.raises(ValueError, match="twice"):
        CharTokenizer("aba")
    with pytest.raises(ValueError, match="single characters"):
        CharTokenizer(["ab", "c"])


def test_byte_tokenizer_round_trips_any_text():
    """ByteTokenizer has 256 ids, encodes UTF-8 bytes and round-trips any text."""
    tok = ByteTokenizer()
    text = "héllo, мир ✓ 🙂\n"
    ids = tok.encode(text)
    assert tok.vocab_size == 256 and ids == list(text.encode("utf-8"))
    assert tok.encode("é") == [195, 169]
    assert tok.decode(ids) == text
    assert tok.decode(jnp.array(ids)) == text


def test_byte_tokenizer_invalid_utf8_is_replaced():
    """Bytes that are not valid UTF-8 (a model's sample may contain them) decode to U+FFFD, not an error."""
    tok = ByteTokenizer()
    assert tok.decode([104, 195, 105]) == "h\ufffdi"  # 195 opens a two-byte character that never comes
    with pytest.raises(ValueError, match="Token id 256 is not a byte"):
        tok.decode([256])
