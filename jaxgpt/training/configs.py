"""Named training configurations: small files of plain values, as in nanoGPT's `config/`.

A `Config` is a `ModelConfig` (the MiniGPT's fields) and a `TrainConfig` (the optimisation). The model's
`vocab_size` is left as None here: it comes from the tokenizer of the text being trained on (65 for tiny
Shakespeare) and is filled in by `with_vocab_size` before the model is built.

    tiny       a small model for a CPU: eval loss 1.73 on tiny Shakespeare after 750 of its 2,000 steps, 1.56
               at the end (bench/results/train_tiny.json: about a quarter of an hour on 2 cores)
    speedrun   the same model, its batch, rate and schedule chosen to reach eval loss 1.89 soonest on a CPU
    challenge  the original challenge: eval loss < 1.9 after 4,000 steps
    video      the model at the end of Karpathy's video, 10.8M parameters, for a GPU
    micro      a toy for tests and smoke runs: compiles and trains in seconds, learns little

Three settings of `TrainConfig` say how a step is computed rather than what it computes (Part 5; the
command line's --precision, --accumulate, --mesh and --fsdp; see scaling.py). batch_size is always the
sequences of one optimiser step, whatever they are split into:

    precision       "float32", or "bfloat16": bfloat16 compute on float32 parameters and optimiser state
    accumulate      the step's batch in this many micro-batches, their gradients averaged: the step is the
                    one-pass step (up to roundoff) with about 1/accumulate of the activation memory
    data_parallel   each micro-batch split over this many devices, the parameters copied on each;
    model_parallel  a data_parallel x model_parallel mesh, each weight split model_parallel ways
    fully_sharded   the parameters and optimiser state also split over the data_parallel devices (FSDP)
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
    tokenizer: str = "char"  # "char": one token per distinct character; "byte": UTF-8 bytes, any text (256)
    # How a step is computed (see the module docstring and scaling.py); the defaults are one float32 pass
    # on one device. Checked when made: a batch that does not split evenly is a ConfigError.
    precision: str = "float32"  # or "bfloat16": bfloat16 compute, float32 parameters, moments and loss
    accumulate: int = 1  # micro-batches per step, of batch_size // accumulate sequences each
    data_parallel: int = 1  # devices each micro-batch is split over
    model_parallel: int = 1  # ways each weight is split (a data_parallel x model_parallel mesh)
    fully_sharded: bool = False  # parameters and optimiser state split over the data_parallel devices too

    def __post_init__(self) -> None:
        if self.tokenizer not in TOKENIZERS:
            raise ConfigError(f"--tokenizer must be char or byte, got {self.tokenizer!r}.")
        problem = scaling_problem(self)
        if problem:
            raise ConfigError(problem)

    @property
    def mesh(self) -> str:
        """The device mesh as the command line writes it: "1", "4", "4x2"."""
        return f"{self.data_parallel}x{self.model_parallel}" if self.model_parallel > 1 else str(self.data_parallel)

    @property
    def micro_batch_size(self) -> int:
        return self.batch_size // self.accumulate


PRECISIONS = ("float32", "bfloat16")
TOKENIZERS = ("char", "byte")


def parse_mesh(text: Any) -> tuple[int, int]:
    """(data_parallel, model_parallel) from the command line's --mesh: "4" is (4, 1), "4x2" is (4, 2)."""
    if isinstance(text, (tuple, list)) and len(text) == 2:
        parts = [str(v) for v in text]
    else:
        parts = str(text).strip().lower().replace("×", "x").split("x")
    if len(parts) in (1, 2) and all(p.strip().isdigit() and int(p) >= 1 for p in parts):
        sizes = [int(p) for p in parts]
        return sizes[0], sizes[1] if len(sizes) == 2 else 1
    raise ConfigError(f"--mesh takes D or DxM, whole numbers of at least 1 (4: data parallelism over 4 "
                      f"devices; 4x2: 4-way data times 2-way model parallelism over 8), got {str(text)!r}.")


def scaling_problem(train: "TrainConfig") -> str | None:
    """Why the batch, precision, micro-batches and mesh of `train` do not fit together, in a sentence; or None."""
    if train.precision not in PRECISIONS:
        return f"--precision must be float32 or bfloat16, got {train.precision!r}."
    for flag, value in (("--batch-size", train.batch_size), ("--accumulate", train.accumulate)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            return f"{flag} must be a whole number of at least 1, got {value!r}."
    for value in (train.data_parallel, train.model_parallel):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            return (f"--mesh sizes must be whole numbers of at least 1, got "
                    f"{train.data_parallel!r}x{train.model_parallel!r}.")
    B, K, D = train.batch_size, train.accumulate, train.data_parallel
    if B % K:
        return (f"A step's batch of {B} sequences cannot be split into {K} equal micro-batches (--accumulate "
                f"{K}): choose a number of micro-batches that divides {B}, or another --batch-size.")
    if (B // K) % D:
        what = f"Each micro-batch of {B // K} sequences" if K > 1 else f"A step's batch of {B} sequences"
        return (f"{what} cannot be split evenly over the mesh's {D} data-parallel devices (--mesh "
                f"{train.mesh}): the batch size must be a multiple of accumulate x data-parallel devices "
                f"= {K * D}; change --batch-size, --accumulate or --mesh.")
    if train.fully_sharded and D == 1:
        return ("--fsdp splits the parameters over the mesh's data-parallel devices, and this mesh has one: "
                "give a --mesh of at least 2 devices with it.")
    return None


@dataclasses.dataclass(frozen=True)
class Config:
    name: str
    model: ModelConfig
    train: TrainConfig
    description: str = ""

    def with_vocab_size(self, vocab_size: int) -> "Config":
        return dataclasses.replace(self, model=dataclasses.replace(self.model, vocab_size=int(vocab_size)))

    def with_overrides(self, max_iters: int | None = None, eval_interval: int | None = None, *,
                       batch_size: int | None = None, precision: str | None = None,
                       accumulate: int | None = None, mesh: Any = None,
                       fully_sharded: bool | None = None, tokenizer: str | None = None) -> "Config":
        """The same configuration with a different length or evaluation interval (the command line's
        --max-iters and --eval-interval). The cosine schedule follows max_iters; warmup shrinks to fit.
        The keywords set how a step is computed (--batch-size, --precision, --accumulate, --mesh "D" or
        "DxM", --fsdp); a combination that does not fit is a ConfigError with a sentence. tokenizer: "char" or
        "byte" (--tokenizer)."""
        train = self.train
        scaled = {name: value for name, value in (("batch_size", batch_size), ("precision", precision),
                                                  ("accumulate", accumulate), ("fully_sharded", fully_sharded),
                                                  ("tokenizer", tokenizer))
                  if value is not None}
        if mesh is not None:
            scaled["data_parallel"], scaled["model_parallel"] = parse_mesh(mesh)
        if scaled:
            train = dataclasses.replace(train, **scaled)
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
        # 818,241 parameters with 65 characters; its measured time and losses are bench/results/train_tiny.json's
        # (the README quotes them). Dropout would slow the early descent that this budget lives on.
        ModelConfig(block_size=64, n_embd=128, n_head=4, n_layer=4, dropout_rate=0.0),
        TrainConfig(batch_size=64, learning_rate=2e-3, max_iters=2000, eval_interval=250, eval_iters=20,
                    weight_decay=0.1, schedule="cosine", warmup_iters=100, min_lr=2e-4),
        "a small model for a laptop CPU: minutes (the README's reference figures say how many and what loss)",
    ),
    "speedrun": Config(
        "speedrun",
        # nanoGPT's CPU recipe's model (4 layers, 4 heads, 128 wide, block 64), with the batch, rate, schedule and
        # length chosen to reach eval loss 1.89 soonest on a 2-core CPU (bench/time_to_loss.py races it against
        # the PyTorch peer; bench/results/time_to_loss.json holds what it measured).
        ModelConfig(block_size=64, n_embd=128, n_head=4, n_layer=4, dropout_rate=0.0),
        # Chosen by eval loss at equal tokens (steps x batch): batch 8 at a peak of 2e-3 decaying to 0 over 2,000
        # steps passed 1.89 at step 1,600 (820,000 tokens); batch 12 (1,400 steps) needed 920,000, batch 16 at 2e-3
        # or 3e-3 more than 1,000,000, and higher peaks did worse. Small batches also suit a compiled loop, whose
        # steps cost no Python. Shorter schedules do worse at the same step: this one is at 1.968 by step 1,200,
        # one that ends at 1,200 reaches 2.016 (2e-3) or 2.011 (3e-3), one of 1,000 steps 2.068 (3e-3); 3,000
        # steps pass at 1,800, a constant rate stays above 1.98 by 1,600; no weight decay, beta2 0.95, a peak of
        # 2.5e-3 with 20 warmup steps, or batch 4 did not pass sooner; no clipping passes at the same step.
        TrainConfig(batch_size=8, learning_rate=2e-3, max_iters=2000, eval_interval=100, eval_iters=10,
                    weight_decay=0.1, schedule="cosine", warmup_iters=50, min_lr=0.0),
        "the `tiny` model trained for time to eval loss 1.89 on a CPU (bench/results/time_to_loss.json)",
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
