"""Turning what happened in one check into a sentence a learner can act on.

A check ends in one of the `Status` values; `classify` looks at the exception (if any) and decides which,
and finds the learner's own line when their code raised. An error is blamed on the check only when nothing
points at the learner's code, and even then in words that say what the check was doing with it.
"""

from __future__ import annotations

import dataclasses
import enum
import os
import re
import sys
import traceback
from pathlib import Path

from jaxgpt.grader import task_list
from jaxgpt.grader.implementation import LoadError, MissingName


class Status(enum.StrEnum):
    """How one check, or a whole task, ended. A `StrEnum`, so it prints and serialises as its words."""

    PASSED = "passed"
    FAILED = "failed"  # the learner's code ran and gave a wrong answer
    ERROR = "error"  # the learner's code raised
    TIMED_OUT = "timed out"  # the check ran past its time limit and was stopped
    NOT_STARTED = "not started"  # the stub still raises NotImplementedError
    BLOCKED = "blocked"  # an earlier task this one builds on is not finished
    MISSING = "missing"  # the implementation does not define a name the task asks for
    SKIPPED = "skipped"  # the check did not run (a load error, an earlier time-out, pytest's own skip)
    IN_PROGRESS = "in progress"  # (a task) some checks pass, the others are not started
    STOPPED = "stopped"  # stopped by Ctrl-C or the notebook's Stop: a task before every check ran, or the check running then


# The statuses as plain module names, as callers have always spelled them (outcomes.PASSED, ...).
(PASSED, FAILED, ERROR, TIMED_OUT, NOT_STARTED, BLOCKED, MISSING, SKIPPED, IN_PROGRESS, STOPPED) = (
    Status.PASSED, Status.FAILED, Status.ERROR, Status.TIMED_OUT, Status.NOT_STARTED, Status.BLOCKED,
    Status.MISSING, Status.SKIPPED, Status.IN_PROGRESS, Status.STOPPED)

_TASK_IN_MESSAGE = re.compile(r"\b[Tt]ask\s*0*(\d+)\b")
_TASK_IN_FILE = re.compile(r"task(\d\d)_\w+\.py$")
_HARNESS_DIR = str(Path(__file__).resolve().parents[1])  # all of jaxgpt/
_TESTS_DIR = str(task_list.TESTS_DIR)
_NAME_ERROR = re.compile(r"name '(\w+)' is not defined")
_RETURNED_A_SEQUENCE = re.compile(r"'(tuple|list|dict|NoneType)' object has no attribute")


@dataclasses.dataclass
class Outcome:
    status: Status
    message: str = ""
    load_error: bool = False  # the learner's code could not be loaded at all: the same for every check


def timeout_message(limit_s: float | None) -> str:
    limit = f" within {limit_s:g} s" if limit_s else " within its time limit"
    return (f"this check did not finish{limit}, so it was stopped. Is there an endless loop (a `while` whose "
            "condition never changes, or a `lax.while_loop` / `fori_loop` whose counter never moves), or a "
            "Python loop where a vectorised or jitted one was asked for?")


def is_load_error(exc: BaseException | None) -> bool:
    return isinstance(exc, (LoadError, MissingName))


def classify(exc: BaseException | None, task: task_list.Task, timeout_s: float | None = None) -> Outcome:
    if exc is None:
        return Outcome(PASSED)
    if isinstance(exc, MissingName):
        return Outcome(MISSING, str(exc), load_error=True)
    if isinstance(exc, LoadError):
        return Outcome(ERROR, str(exc), load_error=True)
    if isinstance(exc, NotImplementedError):
        owner = task_that_is_unfinished(exc)
        if owner is None or owner.number == task.number:
            return Outcome(NOT_STARTED, "not started yet (the stub still raises NotImplementedError)")
        names = ", ".join(f"`{n}`" for n in owner.names)
        return Outcome(BLOCKED, f"task {task.number} builds on task {owner.number} ({names}), which is not "
                                f"finished yet: finish task {owner.number} first.")
    if isinstance(exc, AssertionError):
        return Outcome(FAILED, _assertion_text(exc))
    text = str(exc)
    if type(exc).__name__ == "Failed" and "Timeout" in text:
        return Outcome(TIMED_OUT, timeout_message(timeout_s))
    if type(exc).__name__ in ("Skipped", "XFailed"):
        return Outcome(SKIPPED, text)
    first_line = text.strip().splitlines()[0] if text.strip() else ""
    where = learner_frame(exc)
    unknown = _unknown_task_name(exc)
    if unknown is not None:
        name, owner = unknown
        return Outcome(ERROR, f"your code uses `{name}`, which is not defined where it runs. `{name}` is task "
                              f"{owner.number}'s: in the notebook, run task {owner.number}'s cell that defines it "
                              f"first; in a task file, import it (`from .{owner.stem} import {name}`)."
                              + (f"\n    at {where}" if where else ""))
    flax_sentence = _flax_error(exc)
    if flax_sentence is not None:
        return Outcome(ERROR, flax_sentence + (f"\n    at {where}" if where else ""))
    if where is None and isinstance(exc, TypeError) and _looks_like_a_call_mismatch(first_line):
        return Outcome(ERROR, f"your code could not be called the way the lesson describes: {first_line[:400]}. "
                              "Compare its fields and its __call__ signature (names, defaults) with the lesson.")
    if where is not None:
        return Outcome(ERROR, f"your code raised {type(exc).__name__}: {_trim(text)}\n    at {where}")
    return Outcome(ERROR, _check_could_not_use(exc, first_line))


def _check_could_not_use(exc: BaseException, first_line: str) -> str:
    """The sentence for an error raised in the check's own code, after the learner's code had returned."""
    what = f"{type(exc).__name__}: {first_line[:300]}"
    sequence = _RETURNED_A_SEQUENCE.search(first_line)
    if sequence or "inhomogeneous shape" in first_line:
        kind = sequence.group(1) if sequence else "tuple or list"
        kind = "None" if kind == "NoneType" else f"a {kind}"
        return (f"your code returned {kind} where the check expected one array ({what}). Return the array "
                "alone, as the lesson does.")
    if isinstance(exc, KeyError):
        return (f"the check looked up {first_line[:80]} in what your code built (most likely its parameter "
                f"tree) and found nothing there ({what}). Compare your submodules' names with the lesson's; "
                "the parameter-tree check says what differs.")
    if "shape" in first_line.lower() or "dot_general" in first_line or "broadcast" in first_line.lower():
        return (f"the check could not combine what your code returned with its own arrays: the shapes do not fit "
                f"({what}). Compare your parameter and output shapes with the lesson's.")
    return (f"the check stopped with {what} while using what your code built or returned; a name, parameter "
            "tree or output that differs from the lesson's is the usual reason (the other checks may say "
            "which). If your code follows the lesson, please report it: it may be a bug in the check.")


def _flax_error(exc: BaseException) -> str | None:
    if not type(exc).__module__.startswith("flax"):
        return None
    name = type(exc).__name__
    message = re.sub(r"\s*\(https?://\S+\)\s*$", "", str(exc).strip().split("\n\n")[0]).strip()
    if name in ("ScopeParamNotFoundError", "ScopeVariableNotFoundError", "ScopeCollectionNotFound"):
        return ("your module's parameter tree differs from the lesson's: the check loads parameters laid out "
                f"as the lesson fixes them, and your module looks for one that is not there ({message}). "
                "Compare your submodules' names (`name=` or the attribute name) with the lesson's.")
    if name == "ScopeParamShapeError":
        return ("your module's parameter tree differs from the lesson's: a parameter has another shape than "
                f"the lesson's ({message}). Compare your layers' sizes with the lesson's.")
    return f"Flax stopped your module with {name}: {_trim(message, 400)}"


def _unknown_task_name(exc: BaseException) -> tuple[str, task_list.Task] | None:
    if not isinstance(exc, NameError):
        return None
    found = _NAME_ERROR.search(str(exc))
    if not found:
        return None
    for task in task_list.TASKS:
        if found.group(1) in task.names:
            return found.group(1), task
    return None


def _looks_like_a_call_mismatch(text: str) -> bool:
    return any(words in text for words in (
        "unexpected keyword argument", "required positional argument", "positional argument",
        "required keyword-only argument", "takes no arguments", "multiple values for argument"))


def task_that_is_unfinished(exc: BaseException) -> task_list.Task | None:
    """The task whose stub raised `exc` (a NotImplementedError): named in its message, or else its file's."""
    match = _TASK_IN_MESSAGE.search(str(exc))
    if match and int(match.group(1)) in task_list.BY_NUMBER:
        return task_list.BY_NUMBER[int(match.group(1))]
    for frame in reversed(traceback.extract_tb(exc.__traceback__)):
        found = _TASK_IN_FILE.search(frame.filename)
        if found and int(found.group(1)) in task_list.BY_NUMBER:
            return task_list.BY_NUMBER[int(found.group(1))]
    return None


def is_notebook_cell(filename: str) -> bool:
    """Whether `filename` names a notebook cell's code: ipykernel compiles each cell as a file of its own that
    is not on disk (/tmp/ipykernel_<pid>/<hash>.py), older IPython as <ipython-input-<n>-<hash>>. The grading
    worker gets the notebook's functions with these names kept (worker.dumps) and the cells' lines with them."""
    return "ipykernel" in filename or filename.startswith("<ipython")


# Implementation modules: implementation.py imports a directory's task files as `_jaxgpt_impl_<n>.<task>` and a
# single file as `_jaxgpt_file_<n>`.
_IMPLEMENTATION_MODULE = re.compile(r"^_jaxgpt_(impl|file)_\d+(\.|$)")


def is_learner_file(filename: str, module: str | None = None) -> bool:
    """Whether a frame in `filename` (of the module named `module`, when known) is the learner's code: a notebook
    cell, a file in tasks/, a file imported as an implementation (an --impl directory or file, the catalogue's
    entries), or the script the learner ran. Never code without a file of its own ("<string>": what dataclasses,
    Flax or an exec inside the grader generate), nor ours, nor a library's."""
    if is_notebook_cell(filename):
        return True
    if not filename or filename.startswith("<"):
        return False
    if filename.startswith(_HARNESS_DIR) or filename.startswith(_TESTS_DIR):
        return False
    if filename.startswith(os.path.join(task_list.TASKS_DIR, "")):
        return True
    if module is not None and _IMPLEMENTATION_MODULE.match(module):
        return True
    if module == "__main__":  # a script of the learner's that calls check(N) with its own names, not a program
        return not ("site-packages" in filename or "/lib/python3" in filename
                    or filename.startswith((sys.prefix, sys.base_prefix)))
    return False


def learner_frame(exc: BaseException) -> str | None:
    """`file:line in function: code` of the innermost frame that is the learner's own code (see
    `is_learner_file`), or None."""
    for frame, module in reversed(_frames(exc)):
        if is_learner_file(frame.filename, module):
            filename = frame.filename
            if is_notebook_cell(filename):
                filename = "your notebook cell"
            else:
                try:
                    filename = str(Path(filename).resolve().relative_to(task_list.REPO_ROOT))
                except ValueError:
                    pass
            code = f": {frame.line.strip()}" if frame.line else ""
            return f"{filename}, line {frame.lineno}, in {frame.name}{code}"
    return None


def _frames(exc: BaseException) -> list[tuple[traceback.FrameSummary, str | None]]:
    """The frames of `exc`'s traceback, and of the exceptions it was raised from (JAX re-raises errors from
    inside a trace with the learner's frames on the cause), each with the name of the module it ran in."""
    frames, seen = [], set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        tb, own = exc.__traceback__, []
        while tb is not None:
            module = tb.tb_frame.f_globals.get("__name__")
            own.append((traceback.FrameSummary(tb.tb_frame.f_code.co_filename, tb.tb_lineno,
                                               tb.tb_frame.f_code.co_name), module if isinstance(module, str) else None))
            tb = tb.tb_next
        frames = own + frames
        exc = exc.__cause__ or (None if exc.__suppress_context__ else exc.__context__)
    return frames


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
