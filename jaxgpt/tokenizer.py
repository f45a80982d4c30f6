"""Tokenizers: characters (the video's) and UTF-8 bytes (for any text of your own).

Both share one small interface: `vocab_size`, `encode(str) -> list[int]`, `decode(ids) -> str`,
`to_dict()` for a checkpoint, and `tokenizer_from_dict(d)` to get the right one back.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def _as_id_list(ids) -> list[int]:
    """A list of Python ints from a list, tuple, numpy or JAX array (1-D, or 0-D for a single id)."""
    array = np.asarray(ids)
    if array.ndim == 0:
        array = array.reshape(1)
    if array.ndim != 1:
        raise ValueError(f"decode takes one sequence of token ids (1-D), got shape {array.shape}; "
                         f"decode each row separately.")
    if array.size == 0:
        return []
    if not np.issubdtype(array.dtype, np.integer):
        raise TypeError(f"decode takes integer token ids, got dtype {array.dtype}.")
    return [int(i) for i in array]


class CharTokenizer:
    """One token per distinct character of the text it was built from, ids in sorted character order.

    tok = CharTokenizer.from_text(text); tok.encode("hii there") -> [46, 47, 47, 1, ...];
    tok.decode(tok.encode(s)) == s for any s made of the vocabulary's characters.
    """

    def __init__(self, chars):
        chars = tuple(chars)
        if not chars:
            raise ValueError("A CharTokenizer needs at least one character; build it from non-empty text.")
        if any(not isinstance(c, str) or len(c) != 1 for c in chars):
            raise ValueError("A CharTokenizer's vocabulary must be single characters.")
        if len(set(chars)) != len(chars):
            raise ValueError("A CharTokenizer's vocabulary has a character twice.")
        self.chars: tuple[str, ...] = chars
        self.stoi: dict[str, int] = {ch: i for i, ch in enumerate(chars)}  # string to integer
        self.itos: dict[int, str] = dict(enumerate(chars))  # integer to string

    @classmethod
    def from_text(cls, text: str) -> "CharTokenizer":
        if not text:
            raise ValueError("CharTokenizer.from_text got empty text; it needs text to take characters from.")
        return cls(sorted(set(text)))

    @property
    def vocab_size(self) -> int:
        return len(self.chars)

    def encode(self, text: str) -> list[int]:
        try:
            return [self.stoi[ch] for ch in text]
        except KeyError as err:
            ch = err.args[0]
            raise ValueError(
                f"The character {ch!r} (at position {text.index(ch)}) is not in this tokenizer's vocabulary "
                f"of {self.vocab_size} characters; use only characters of the training text, or a "
                f"ByteTokenizer, which encodes any UTF-8 text.") from None

    def decode(self, ids) -> str:
        out = []
        for i in _as_id_list(ids):
            if i not in self.itos:
                raise ValueError(f"Token id {i} is outside this tokenizer's vocabulary (ids 0 to "
                                 f"{self.vocab_size - 1}).")
            out.append(self.itos[i])
        return "".join(out)

    def to_dict(self) -> dict[str, Any]:
        return {"type": "char", "chars": "".join(self.chars)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "CharTokenizer":
        if d.get("type", "char") != "char" or "chars" not in d:
            raise ValueError(f"This is not a saved CharTokenizer (expected type 'char' and 'chars'): {d!r:.80}")
        return cls(d["chars"])

    def __repr__(self) -> str:
        return f"CharTokenizer(vocab_size={self.vocab_size})"

    def __eq__(self, other) -> bool:
        return isinstance(other, CharTokenizer) and other.chars == self.chars

    def __hash__(self) -> int:
        return hash(self.chars)


class ByteTokenizer:
    """One token per UTF-8 byte: a vocabulary of 256 that can encode any text.

    A character outside ASCII takes several tokens ("é" is [195, 169]). A model can sample byte
    sequences that are not valid UTF-8; decode shows those as the replacement character "\ufffd".
    """

    vocab_size = 256

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids) -> str:
        ids = _as_id_list(ids)
        bad = [i for i in ids if not 0 <= i < 256]
        if bad:
            raise ValueError(f"Token id {bad[0]} is not a byte (ids are 0 to 255).")
        return bytes(ids).decode("utf-8", errors="replace")

    def to_dict(self) -> dict[str, Any]:
        return {"type": "byte"}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ByteTokenizer":
        if d.get("type") != "byte":
            raise ValueError(f"This is not a saved ByteTokenizer (expected type 'byte'): {d!r:.80}")
        return cls()

    def __repr__(self) -> str:
        return "ByteTokenizer(vocab_size=256)"

    def __eq__(self, other) -> bool:
        return isinstance(other, ByteTokenizer)

    def __hash__(self) -> int:
        return hash(ByteTokenizer)


def tokenizer_from_dict(d: dict[str, Any]) -> CharTokenizer | ByteTokenizer:
    """The tokenizer a checkpoint saved with `to_dict()`."""
    kinds = {"char": CharTokenizer, "byte": ByteTokenizer}
    kind = d.get("type") if isinstance(d, dict) else None
    if kind not in kinds:
        raise ValueError(f"Unknown saved tokenizer {d!r:.80}; expected a dict with type 'char' or 'byte'.")
    return kinds[kind].from_dict(d)
