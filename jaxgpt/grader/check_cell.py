"""The notebook's check cell: `check(N)` grades the names the notebook defines, in the grading worker.

`warm_up()` is the set-up cell's: it starts the worker while the learner reads, so the first check does not
wait for JAX to load.
"""

from __future__ import annotations

import sys
from typing import Any, Mapping

from jaxgpt.grader import implementation, task_list, worker
from jaxgpt.grader.runner import DEFAULT_TIMEOUT_S, Verdict

WARM_AFTER_S = 3.0  # after a passed check, a learner reads the next lesson


def check(task: int, namespace: Mapping[str, Any] | None = None, timeout_s: float = DEFAULT_TIMEOUT_S
          ) -> "_Quiet":
    """The notebook's check cell: grades the names defined in the notebook and prints the verdict.

    The checks run in a separate worker process (started on the first check, then kept warm), so an endless
    loop is stopped after `timeout_s` seconds and the notebook's Stop button stops the check; the notebook's
    definitions are sent to it by value. Stopping a check prints "stopped" and stops the cell."""
    if namespace is None:
        namespace = sys._getframe(1).f_globals
    impl = implementation.NamespaceImplementation(namespace)
    verdict = worker.default_grader().grade(task, impl, timeout_s=timeout_s, progress=worker.Progress.notebook())
    print(verdict.text())
    if verdict.stopped:
        raise KeyboardInterrupt("the check was stopped")
    following = task_list.next_task(verdict.task)
    if verdict.passed and following:  # the learner moves on: the next task's first check will be quick
        worker.default_grader().warm(following, after_s=WARM_AFTER_S)
    return _Quiet(verdict)


def warm_up() -> None:
    """Starts the notebook's grading worker now, in the background, so that the first `check(N)` does not wait
    for it to load JAX (for the notebook's set-up cell)."""
    grader = worker.default_grader()
    grader.start()
    grader.warm(task_list.TASKS[0])


class _Quiet:
    """What `check` returns: the verdict, without printing it a second time as the cell's value."""

    def __init__(self, verdict: Verdict):
        self.verdict = verdict

    def __repr__(self) -> str:
        return ""

    def _repr_pretty_(self, printer, cycle):
        pass

    def __getattr__(self, name):
        return getattr(self.verdict, name)
