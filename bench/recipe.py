"""What the JAX reference and the PyTorch peer share in a race, so that they run the same recipe and are judged
the same way: the corpus and its split, the evaluation windows, the learning-rate schedule, the model's FLOPs.

Nothing here imports JAX or PyTorch: each side's process pays only for its own library.

The evaluation is fixed, not sampled: EVAL_WINDOWS windows of block_size + 1 characters at positions drawn once
from numpy's generator seeded 0 in the last 10% of the text (the split jaxgpt.data uses). Both sides score the
same 256 x 64 characters, so a loss reported by one is comparable with the other's to the last digit of the
model, and the target (eval loss <= 1.89) is crossed on the same yardstick.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

DEFAULT_CORPUS = Path(__file__).resolve().parents[2] / "shared" / "data" / "tinyshakespeare" / "input.txt"
EVAL_WINDOWS = 256
EVAL_SEED = 0


def load_corpus(path: str | Path) -> tuple[np.ndarray, np.ndarray, int]:
    """(train ids, eval ids, vocabulary size): characters numbered in sorted order (jaxgpt's CharTokenizer),
    the first 90% for training and the last 10% for evaluation."""
    text = Path(path).read_text(encoding="utf-8")
    chars = sorted(set(text))
    index = {c: i for i, c in enumerate(chars)}
    ids = np.fromiter((index[c] for c in text), dtype=np.int32, count=len(text))
    n = int(0.9 * len(ids))
    return ids[:n], ids[n:], len(chars)


def eval_windows(eval_ids: np.ndarray, block_size: int) -> tuple[np.ndarray, np.ndarray]:
    """(x, y), each (EVAL_WINDOWS, block_size) int32: the fixed evaluation set, targets shifted by one."""
    starts = np.random.default_rng(EVAL_SEED).integers(0, len(eval_ids) - block_size - 1, EVAL_WINDOWS)
    x = np.stack([eval_ids[s:s + block_size] for s in starts])
    y = np.stack([eval_ids[s + 1:s + block_size + 1] for s in starts])
    return x.astype(np.int32), y.astype(np.int32)


def learning_rate(step: int, train: dict) -> float:
    """The rate at optimiser step `step` (0-based), as optax.warmup_cosine_decay_schedule gives it to jaxgpt's
    loop (linear warmup from 0, then cosine to min_lr at max_iters), or the constant."""
    peak = train["learning_rate"]
    if train["schedule"] == "constant":
        return peak
    total = max(train["max_iters"], 1)
    warmup = min(train["warmup_iters"], max(total - 1, 0))
    if step < warmup:
        return peak * step / warmup
    decay_steps = max(total, warmup + 1) - warmup
    progress = min(max(step - warmup, 0), decay_steps) / decay_steps
    return train["min_lr"] + (peak - train["min_lr"]) * 0.5 * (1 + math.cos(math.pi * progress))


def flops_per_token(model: dict) -> int:
    """Training FLOPs per token (forward and backward), as nanoGPT and PaLM's appendix count them: 6 per weight
    of every matrix multiply (the blocks' 12 C^2 per layer and the head's C x vocab; embeddings are lookups)
    plus the attention scores and their weighted sum, 12 L C T, computed over the whole T x T square."""
    C, L, T, V = model["n_embd"], model["n_layer"], model["block_size"], model["vocab_size"]
    return 6 * (12 * L * C * C + C * V) + 12 * L * C * T


# nanoGPT's own CPU recipe for tiny Shakespeare (its README's "I only have a macbook" command line on top of
# config/train_shakespeare_char.py): the `speedrun` model shape, batch 12, 2,000 iterations, 1e-3 warming up over
# 100 steps then cosine to 1e-4, AdamW betas (0.9, 0.99), weight decay 0.1, clipping at 1, no dropout. The issue's
# baseline: what a learner who reaches for PyTorch would run. bench/time_to_loss.py races the PyTorch peer on it.
NANOGPT_CPU_TRAIN = {"batch_size": 12, "learning_rate": 1e-3, "max_iters": 2000, "warmup_iters": 100,
                     "schedule": "cosine", "min_lr": 1e-4, "beta2": 0.99, "weight_decay": 0.1, "grad_clip": 1.0}


def nanogpt_cpu(config: dict) -> dict:
    """`config` (a Config.to_dict() of the speedrun shape) with nanoGPT's CPU recipe's training settings."""
    return {**config, "name": "nanogpt-cpu", "train": {**config["train"], **NANOGPT_CPU_TRAIN},
            "description": "nanoGPT's CPU recipe for tiny Shakespeare"}


def read_json_arg(text: str) -> dict:
    return json.loads(Path(text[1:]).read_text()) if text.startswith("@") else json.loads(text)
