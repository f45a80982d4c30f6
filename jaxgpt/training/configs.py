"""Named training configurations: small files of plain values, as in nanoGPT's `config/`.

A `Config` is a `ModelConfig` (the MiniGPT's fields) and a `TrainConfig` (the optimisation). The model's
`vocab_size` is left as None here: it comes from the tokenizer of the text being trained on (65 for tiny
Shakespeare) and is filled in by `with_vocab_size` before the model is built.

    tiny       a small model that reaches eval loss <= 1.75 on tiny Shakespeare in under 10 minutes on a
               2-core laptop CPU
    challenge  the original challenge: eval loss < 1.9 after 4,000 steps
    video      the model at the end of Karpathy's video, 10.8M parameters, for a GPU
    micro      a toy for tests and smoke runs: compiles and trains in seconds, learns little
"""

from __future__ import annotations

import dataclasses
from typing import Any


class ConfigError(ValueError):
    """A configuration name or a saved configuration that is not one of ours; the message says why."""


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    vocab_size: int | None = None  # from the data: the tokenizer's vocab_size
    block_size: int = 64  # the longest context, in tokens
    n_embd: int = 128
    n_head: int = 4
    n_layer: int = 4
    dropout_rate: float = 0.0


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    batch_size: int = 64
    learning_rate: float = 2e-3  # the peak rate when a schedule is used
    max_iters: int = 2000
    eval_interval: int = 250
    eval_iters: int = 20  # batches averaged for each split's loss at an evaluation
    weight_decay: float = 0.1  # AdamW's decoupled decay, on the weight matrices and embeddings only
    schedule: str = "cosine"  # "cosine": linear warmup, then cosine decay to min_lr; "constant": no schedule
    warmup_iters: int = 100
    min_lr: float = 2e-4
    beta2: float = 0.99  # nanoGPT's choice for small models trained on few tokens per step
    grad_clip: float = 1.0  # global-norm clipping; 0 switches it off
    seed: int = 1337


@dataclasses.dataclass(frozen=True)
class Config:
    name: str
    model: ModelConfig
    train: TrainConfig
    description: str = ""

    def with_vocab_size(self, vocab_size: int) -> "Config":
        return dataclasses.replace(self, model=dataclasses.replace(self.model, vocab_size=int(vocab_size)))

    def with_overrides(self, max_iters: int | None = None, eval_interval: int | None = None) -> "Config":
        """The same configuration with a different length or evaluation interval (the command line's
        --max-iters and --eval-interval). The cosine schedule follows max_iters; warmup shrinks to fit."""
        train = self.train
        if max_iters is not None:
            if max_iters < 1:
                raise ConfigError(f"max_iters must be at least 1, got {max_iters}.")
            train = dataclasses.replace(train, max_iters=max_iters,
                                        warmup_iters=min(train.warmup_iters, max_iters // 10))
        if eval_interval is not None:
            if eval_interval < 1:
                raise ConfigError(f"eval_interval must be at least 1, got {eval_interval}.")
            train = dataclasses.replace(train, eval_interval=eval_interval)
        return dataclasses.replace(self, train=train)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Any) -> "Config":
        """The configuration `to_dict` wrote; a dict with unknown or missing fields raises ConfigError."""
        try:
            return cls(name=str(d["name"]), model=_build(ModelConfig, d["model"]),
                       train=_build(TrainConfig, d["train"]), description=str(d.get("description", "")))
        except (KeyError, TypeError, AttributeError) as err:
            raise ConfigError(f"this is not a saved configuration ({type(err).__name__}: {err}).") from None


def _build(cls, values: dict[str, Any]):
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise TypeError(f"{cls.__name__} has no field {unknown[0]!r}")
    return cls(**values)


CONFIGS: dict[str, Config] = {
    "tiny": Config(
        "tiny",
        # 818,241 parameters with 65 characters. On a quiet 2-core CPU it trains about 4.4 steps (18,000
        # tokens) a second: 2,000 steps of 64 x 64 tokens take 8.4 minutes in all and end at eval loss 1.56
        # (1.73 at step 750; see bench/). Dropout would slow the early descent that this budget lives on.
        ModelConfig(block_size=64, n_embd=128, n_head=4, n_layer=4, dropout_rate=0.0),
        TrainConfig(batch_size=64, learning_rate=2e-3, max_iters=2000, eval_interval=250, eval_iters=20,
                    weight_decay=0.1, schedule="cosine", warmup_iters=100, min_lr=2e-4),
        "a small model for a laptop CPU: about 8.5 minutes, eval loss near 1.56 on tiny Shakespeare",
    ),
    "challenge": Config(
        "challenge",
        # The original challenge's settings, kept as they were: a constant learning rate, no dropout.
        ModelConfig(block_size=32, n_embd=128, n_head=4, n_layer=4, dropout_rate=0.0),
        TrainConfig(batch_size=16, learning_rate=1e-3, max_iters=4000, eval_interval=500, eval_iters=50,
                    weight_decay=1e-4, schedule="constant", warmup_iters=0, min_lr=1e-3, beta2=0.999,
                    grad_clip=0.0),
        "the original challenge: 4 layers, 128 wide, batch 16, block 32; target eval loss < 1.9",
    ),
    "video": Config(
        "video",
        # The video's final model. With Flax's nn.MultiHeadDotProductAttention it has 10,795,841 parameters
        # with 65 characters: 6,912 more than the video's 10,788,929, because Flax's query, key and value
        # projections carry biases (3 x 6 layers x 384) that the video's bias-free nn.Linear layers do not.
        ModelConfig(block_size=256, n_embd=384, n_head=6, n_layer=6, dropout_rate=0.2),
        # The video trains with PyTorch's AdamW defaults at a constant rate: weight decay 0.01, beta2 0.999.
        TrainConfig(batch_size=64, learning_rate=3e-4, max_iters=5000, eval_interval=500, eval_iters=200,
                    weight_decay=0.01, schedule="constant", warmup_iters=0, min_lr=3e-4, beta2=0.999,
                    grad_clip=0.0),
        "the video's 10.8M-parameter model, for a GPU (the video reaches eval loss 1.48)",
    ),
    "micro": Config(
        "micro",
        ModelConfig(block_size=16, n_embd=32, n_head=2, n_layer=2, dropout_rate=0.0),
        TrainConfig(batch_size=8, learning_rate=3e-3, max_iters=40, eval_interval=20, eval_iters=2,
                    weight_decay=0.1, schedule="constant", warmup_iters=0, min_lr=3e-3),
        "a toy for tests and smoke runs: compiles and trains in seconds, learns little",
    ),
}


def get_config(name: str) -> Config:
    try:
        return CONFIGS[name]
    except KeyError:
        known = ", ".join(CONFIGS)
        raise ConfigError(f"There is no configuration {name!r}; the configurations are {known}.") from None
