"""The list of tasks: the one place that says which number, file stem and public names belong together.

Every other part (the check runner, the command line, the notebook builder, the self-tests) reads it, so
`tasks/taskNN_<slug>.py`, `reference/taskNN_<slug>.py`, `tests/test_taskNN_<slug>.py`,
`lessons/taskNN_<slug>.md`, `hints/taskNN_<slug>.md` and `tests/catalogue/taskNN_<slug>/` line up by number.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
TASKS_DIR = REPO_ROOT / "tasks"
REFERENCE_DIR = REPO_ROOT / "reference"
TESTS_DIR = REPO_ROOT / "tests"
CATALOGUE_DIR = TESTS_DIR / "catalogue"
LESSONS_DIR = REPO_ROOT / "lessons"
HINTS_DIR = REPO_ROOT / "hints"
PICTURES_DIR = REPO_ROOT / "pictures"


@dataclasses.dataclass(frozen=True)
class Task:
    number: int
    slug: str
    title: str
    names: tuple[str, ...]  # the public names the learner defines; the tests may use nothing else
    minutes: int  # a time estimate for a learner who watched the video
    difficulty: int  # 1 (gentle) .. 3 (hard)
    builds_on: tuple[int, ...] = ()  # earlier tasks whose names this task's code uses

    @property
    def stem(self) -> str:
        return f"task{self.number:02d}_{self.slug}"

    @property
    def stars(self) -> str:
        return "★" * self.difficulty + "☆" * (3 - self.difficulty)

    @property
    def test_file(self) -> Path:
        return TESTS_DIR / f"test_{self.stem}.py"

    @property
    def lesson_file(self) -> Path:
        return LESSONS_DIR / f"{self.stem}.md"

    @property
    def hints_file(self) -> Path:
        return HINTS_DIR / f"{self.stem}.md"

    @property
    def catalogue_dir(self) -> Path:
        return CATALOGUE_DIR / self.stem


TASKS: tuple[Task, ...] = (
    Task(1, "minigpt", "MiniGPT from Flax's own layers", ("FeedForward", "Block", "MiniGPT"), 45, 2),
    Task(2, "averaging", "The averaging trick, three ways",
         ("causal_mean_loop", "causal_mean_matmul", "causal_mean_softmax"), 20, 1),
    Task(3, "head", "One head of causal self-attention", ("Head",), 30, 2),
    Task(4, "multihead", "Multi-head attention from heads", ("MultiHeadAttention",), 20, 1, builds_on=(3,)),
    Task(5, "einsum_attention", "All heads at once with einsum", ("EinsumMultiHeadAttention",), 40, 3),
    Task(6, "own_parts", "LayerNorm, Block and MiniGPT from your own parts", ("LayerNorm", "Block", "MiniGPT"),
         40, 2, builds_on=(1, 5)),
    Task(7, "training", "The loss, a jitted training step and evaluation",
         ("cross_entropy", "create_train_state", "train_step", "evaluate", "train"), 45, 2),
    Task(8, "generate", "Sampling: temperature, top-k and a jittable loop", ("generate", "generate_jit"), 45, 3),
    Task(9, "scan_layers", "The stack of blocks as one scanned layer",
         ("stack_layers", "unstack_layers", "ScannedMiniGPT"), 40, 3, builds_on=(1,)),
    Task(10, "scan_training", "The training loop as one scan, and a learning-rate sweep with vmap",
         ("train_scan", "sweep_learning_rates"), 45, 3, builds_on=(7,)),
    Task(11, "kv_cache", "Generation with a cache of past keys and values", ("CachedMiniGPT", "generate_cached"),
         50, 3, builds_on=(1,)),
    Task(12, "adamw_by_hand", "AdamW, clipping and a schedule by hand",
         ("warmup_cosine_schedule", "clip_by_global_norm", "decay_mask", "adamw_init", "adamw_update"), 45, 2),
    Task(13, "mixed_precision", "Mixed precision and gradient accumulation",
         ("MixedPrecisionMiniGPT", "mixed_precision_loss", "accumulated_grads"), 45, 3),
    Task(14, "sharding", "Training over a device mesh: data, fully sharded and tensor parallel",
         ("make_mesh", "shard_batch", "tensor_parallel_shardings", "fsdp_shardings", "state_shardings",
          "sharded_train_step", "sharded_init"), 75, 3),
    Task(15, "lstm", "An LSTM from scratch, scanned over time, its state carried across chunks",
         ("LSTMCell", "lstm_scan", "CharLSTM", "stream_chunks", "train_tbptt"), 70, 3),
)

BY_NUMBER = {t.number: t for t in TASKS}


def get_task(number: int | str) -> Task:
    try:
        return BY_NUMBER[int(number)]
    except (KeyError, ValueError):
        known = ", ".join(str(t.number) for t in TASKS)
        raise LookupError(f"There is no task {number!r}; the tasks are {known}.") from None


def task_of_module(module_name: str) -> Task | None:
    """The task a module file name such as `task04_multihead` belongs to."""
    stem = module_name.rsplit(".", 1)[-1]
    for task in TASKS:
        if stem == task.stem:
            return task
    return None


def next_task(task: Task) -> Task | None:
    """The task after `task` in the list (where a learner goes next), or None after the last."""
    later = [t for t in TASKS if t.number > task.number]
    return later[0] if later else None
