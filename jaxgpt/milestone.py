"""Helpers that the notebook's cells call: `needs_tasks`, which turns an unfinished task's NotImplementedError
into a sentence, and `run_milestone`, which trains the learner's task 1 MiniGPT with the harness's loop."""

from __future__ import annotations

import contextlib
from typing import Any, Iterator, Mapping


def _task_span(numbers: tuple[int, ...]) -> str:
    numbers = tuple(sorted(set(numbers)))
    if len(numbers) == 1:
        return f"task {numbers[0]}"
    if numbers == tuple(range(numbers[0], numbers[-1] + 1)) and len(numbers) > 2:
        return f"tasks {numbers[0]}-{numbers[-1]}"
    return "tasks " + ", ".join(str(n) for n in numbers[:-1]) + f" and {numbers[-1]}"


@contextlib.contextmanager
def needs_tasks(*numbers: int) -> Iterator[None]:
    """`with needs_tasks(6, 7): ...` runs a cell's body; if an unfinished stub raises NotImplementedError
    inside it, the cell prints one sentence instead of a traceback. Any other error is the learner's code
    speaking and goes through unchanged."""
    try:
        yield
    except NotImplementedError as err:
        said = f' ("{err}")' if str(err) else ""
        span = _task_span(numbers)
        print(f"Not yet: this cell uses your code from {span}, and a stub still raises NotImplementedError"
              f"{said}. Finish {span} first, then run this cell again.")


def run_milestone(namespace: Mapping[str, Any], task: int = 1, config_name: str = "tiny",
                  max_iters: int | None = None):
    """Trains the notebook's MiniGPT (task `task`'s names in `namespace`) with the harness's training loop
    and plots its loss; returns the History, or None (with a sentence) when the model cannot train yet."""
    from jaxgpt.training import configs, loop
    from jaxgpt import plots, settings
    from jaxgpt.data import DataError

    if settings.smoke():
        config_name = "micro"  # the notebook's own tests: seconds, not minutes
    config = configs.get_config(config_name)
    full = config.train.max_iters if max_iters is None else max_iters
    steps = settings.steps(full, 5)
    config = config.with_overrides(max_iters=steps, eval_interval=min(config.train.eval_interval, steps))
    try:
        history = loop.train(config, impl=namespace, task=task)
    except (loop.TrainingError, configs.ConfigError, DataError) as err:
        print(f"The milestone cannot run yet: {err}")
        return None
    ax = plots.plot_losses(history.steps, history.train_losses, history.eval_losses)
    ax.set_title(f"Your task {task} MiniGPT, `{config_name}` configuration")
    final = history.final_eval_loss
    if steps == full and final is not None:
        verdict = "below 1.9: your model learns as it should." if final < 1.9 else (
            "above 1.9: the reference gets near 1.56 here; run check(1) again and compare your model with "
            "the lesson.")
        print(f"Eval loss after {steps} steps: {final:.3f}, {verdict}")
    elif final is not None:
        print(f"Eval loss after {steps} steps: {final:.3f} (a short run; the full one has {full} steps).")
    return history
