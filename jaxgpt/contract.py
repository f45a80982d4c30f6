"""The model contract the lessons fix: MiniGPT's fields and the shapes of its parameter tree.

Task 1's MiniGPT (Flax's layers), task 6's (the learner's own parts), the checkpoints, the plots and the
oracles all share this tree, which is why weights move between them. Everything that needs the names or
the shapes reads them here.
"""

from __future__ import annotations

from typing import Any

MODEL_FIELDS = ("vocab_size", "block_size", "n_embd", "n_head", "n_layer", "dropout_rate")


def layer_norm_shapes(n_embd: int) -> dict[str, tuple[int, ...]]:
    return {"scale": (n_embd,), "bias": (n_embd,)}


def attention_shapes(n_embd: int, n_head: int) -> dict[str, Any]:
    """nn.MultiHeadDotProductAttention's tree (task 5's too): query, key, value (C, H, hs), out (H, hs, C)."""
    hs = n_embd // n_head  # head size

    def projection():
        return {"kernel": (n_embd, n_head, hs), "bias": (n_head, hs)}

    return {"query": projection(), "key": projection(), "value": projection(),
            "out": {"kernel": (n_head, hs, n_embd), "bias": (n_embd,)}}


def feed_forward_shapes(n_embd: int) -> dict[str, Any]:
    return {"fc": {"kernel": (n_embd, 4 * n_embd), "bias": (4 * n_embd,)},
            "proj": {"kernel": (4 * n_embd, n_embd), "bias": (n_embd,)}}


def block_shapes(n_embd: int, n_head: int) -> dict[str, Any]:
    return {"ln1": layer_norm_shapes(n_embd), "attn": attention_shapes(n_embd, n_head),
            "ln2": layer_norm_shapes(n_embd), "ffwd": feed_forward_shapes(n_embd)}


def model_shapes(vocab_size: int, block_size: int, n_embd: int, n_head: int, n_layer: int, **_: Any
                 ) -> dict[str, Any]:
    """MiniGPT's parameter tree (the inside of {'params': ...}) as nested dicts of shapes."""
    tree: dict[str, Any] = {"token_embedding": {"embedding": (vocab_size, n_embd)},
                            "position_embedding": {"embedding": (block_size, n_embd)}}
    for i in range(n_layer):
        tree[f"blocks_{i}"] = block_shapes(n_embd, n_head)
    tree["ln_f"] = layer_norm_shapes(n_embd)
    tree["lm_head"] = {"kernel": (n_embd, vocab_size), "bias": (vocab_size,)}
    return tree
