"""Turning what happened in one check into a sentence a learner can act on.

A check ends in one of these states; `classify` looks at the exception (if any) and decides which, and
finds the learner's own line when their code raised.
"""

from __future__ import annotations

import dataclasses
import re
import traceback
from pathlib import Path

from jaxgpt import catalog
from jaxgpt.implementation import LoadError, MissingName

PASSED, FAILED, ERROR, NOT_STARTED, BLOCKED, MISSING, SKIPPED = (
    "passed", "failed", "error", "not started", "blocked", "missing", "skipped")

_TASK_IN_MESSAGE = re.compile(r"\b[Tt]ask\s*0*(\d+)\b")
_TASK_IN_FILE = re.compile(r"task(\d\d)_\w+\.py$")
_HARNESS_DIR = str(Path(__file__).resolve().parent)
_TESTS_DIR = str(catalog.TESTS_DIR)


@dataclasses.dataclass
class Outcome:
    status: str
    message: str = ""


def classify(exc: BaseException | None, task: catalog.Task, timeout_s: float | None = None) -> Outcome:
    if exc is None:
        return Outcome(PASSED)
    if isinstance(exc, MissingName):
        return Outcome(MISSING, str(exc))
    if isinstance(exc, LoadError):
        return Outcome(ERROR, str(exc))
    if isinstance(exc, NotImplementedError):
        owner = _task_that_is_unfinished(exc)
        if owner is None or owner.number == task.number:
            return Outcome(NOT_STARTED, "not started yet (the stub still raises NotImplementedError)")
        names = ", ".join(f"`{n}`" for n in owner.names)
        return Outcome(BLOCKED, f"task {task.number} builds on task {owner.number} ({names}), which is not "
                                f"finished yet: finish task {owner.number} first.")
    if isinstance(exc, AssertionError):
        return Outcome(FAILED, _assertion_text(exc))
    text = str(exc)
    if type(exc).__name__ == "Failed" and "Timeout" in text:
        limit = f" {timeout_s:g} s" if timeout_s else ""
        return Outcome(FAILED, f"this check did not finish within its time limit{limit}: is there an endless "
                               "loop, or a Python loop where a vectorised or jitted one was asked for?")
    if type(exc).__name__ in ("Skipped", "XFailed"):
        return Outcome(SKIPPED, text)
    where = learner_frame(exc)
    first_line = text.strip().splitlines()[0] if text.strip() else ""
    if where is None and isinstance(exc, TypeError) and _looks_like_a_call_mismatch(first_line):
        return Outcome(ERROR, f"your code could not be called the way the lesson describes: {first_line[:400]}. "
                              "Compare its fields and its __call__ signature (names, defaults) with the lesson.")
    if where is None:
        return Outcome(ERROR, f"the check itself failed with {type(exc).__name__}: {first_line[:400]} "
                              "(this is a bug in the check: please report it)")
    return Outcome(ERROR, f"your code raised {type(exc).__name__}: {_trim(text)}\n    at {where}")


def _looks_like_a_call_mismatch(text: str) -> bool:
    return any(words in text for words in (
        "unexpected keyword argument", "required positional argument", "positional argument",
        "required keyword-only argument", "takes no arguments", "multiple values for argument"))


def _task_that_is_unfinished(exc: BaseException) -> catalog.Task | None:
    match = _TASK_IN_MESSAGE.search(str(exc))
    if match and int(match.group(1)) in catalog.BY_NUMBER:
        return catalog.BY_NUMBER[int(match.group(1))]
    for frame in reversed(traceback.extract_tb(exc.__traceback__)):
        found = _TASK_IN_FILE.search(frame.filename)
        if found and int(found.group(1)) in catalog.BY_NUMBER:
            return catalog.BY_NUMBER[int(found.group(1))]
    return None


def is_learner_file(filename: str) -> bool:
    if filename.startswith("<frozen") or "site-packages" in filename or "/lib/python3" in filename:
        return False
    if filename.startswith(_HARNESS_DIR) or filename.startswith(_TESTS_DIR) and "catalogue" not in filename:
        return False
    return True


def learner_frame(exc: BaseException) -> str | None:
    """`file:line in function: code` of the innermost frame that is the learner's own code."""
    for frame in reversed(traceback.extract_tb(exc.__traceback__)):
        if is_learner_file(frame.filename):
            filename = frame.filename
            try:
                filename = str(Path(filename).resolve().relative_to(catalog.REPO_ROOT))
            except ValueError:
                if "ipykernel" in filename or filename.startswith("<ipython"):
                    filename = "your notebook cell"
            code = f": {frame.line.strip()}" if frame.line else ""
            return f"{filename}, line {frame.lineno}, in {frame.name}{code}"
    return None


def _assertion_text(exc: AssertionError) -> str:
    text = str(exc)
    # pytest's assertion rewriting appends its own explanation after our message; the learner needs ours.
    kept = []
    for line in text.splitlines():
        if line.startswith("assert ") or line.startswith("+  where") or line.startswith(" +  where"):
            break
        kept.append(line)
    message = "\n".join(kept).strip()
    return message or "a check failed without a message (this is a bug in the check: please report it)"


def _trim(text: str, limit: int = 600) -> str:
    text = text.strip()
    # JAX appends long advice blocks; the first paragraph carries the meaning.
    text = text.split("\n\n")[0]
    return text if len(text) <= limit else text[:limit] + " ..."
