"""Where the code under test comes from: a package directory, one module file, or a namespace.

A task suite never imports learner code by name. It asks an `Implementation` for a task's public names, and
the same suite grades `tasks/`, `reference/`, any directory laid out like them, a single file, or the
globals of the notebook.
"""

from __future__ import annotations

import importlib
import importlib.util
import itertools
import sys
import types
from pathlib import Path
from typing import Any, Mapping

from jaxgpt.grader import task_list

_counter = itertools.count()


class MissingName(Exception):
    """The implementation does not define a name the task asks for."""


class LoadError(Exception):
    """The learner's module could not be imported; the message says why, in a sentence."""


class Implementation:
    """Resolves `(task, name)` to an object. Subclasses say where objects come from."""

    label: str = "implementation"

    def module_for(self, task: task_list.Task) -> Any:
        raise NotImplementedError

    def where(self, task: task_list.Task) -> str:
        return self.label

    def get(self, task: task_list.Task, name: str) -> Any:
        module = self.module_for(task)
        try:
            return getattr(module, name) if not isinstance(module, Mapping) else module[name]
        except (AttributeError, KeyError):
            raise MissingName(
                f"{self.where(task)} does not define `{name}`. Task {task.number} asks for "
                + ", ".join(f"`{n}`" for n in task.names) + "."
            ) from None

    def for_task(self, task: task_list.Task) -> "TaskView":
        return TaskView(self, task)


class TaskView:
    """`impl.Head` reads the name `Head` of one task, so test code reads like the lesson."""

    def __init__(self, implementation: Implementation, task: task_list.Task):
        self._implementation = implementation
        self._task = task

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        return self._implementation.get(self._task, name)

    def other(self, number: int) -> "TaskView":
        """The names of another task from the same implementation (task 6 reuses task 1's `FeedForward`)."""
        return TaskView(self._implementation, task_list.get_task(number))

    @property
    def task(self) -> task_list.Task:
        return self._task

    @property
    def implementation(self) -> Implementation:
        return self._implementation


class PackageImplementation(Implementation):
    """A directory holding `taskNN_<slug>.py` files, imported as a package so that task files may import
    earlier tasks relatively (`from .task03_head import Head`)."""

    def __init__(self, directory: str | Path):
        self.directory = Path(directory).resolve()
        if not self.directory.is_dir():
            raise LoadError(f"{directory} is not a directory.")
        self.label = _display(self.directory)
        self.package_name = f"_jaxgpt_impl_{next(_counter)}"
        package = types.ModuleType(self.package_name)
        package.__path__ = [str(self.directory)]
        package.__file__ = None
        sys.modules[self.package_name] = package
        self._modules: dict[int, Any] = {}

    def path_of(self, task: task_list.Task) -> Path:
        return self.directory / f"{task.stem}.py"

    def where(self, task: task_list.Task) -> str:
        return _display(self.path_of(task))

    def module_for(self, task: task_list.Task) -> Any:
        if task.number in self._modules:
            return self._modules[task.number]
        path = self.path_of(task)
        if not path.exists():
            raise LoadError(f"{self.where(task)} does not exist: task {task.number}'s code goes in that file.")
        module_name = f"{self.package_name}.{task.stem}"
        try:
            module = importlib.import_module(module_name)
        except SyntaxError as err:
            sys.modules.pop(module_name, None)
            raise LoadError(
                f"{_display(Path(err.filename or path))}, line {err.lineno}, has a syntax error: {_sentence(err.msg)}"
            ) from None
        except Exception as err:  # the learner's module raised while being imported
            sys.modules.pop(module_name, None)
            raise LoadError(
                f"Importing {self.where(task)} raised {type(err).__name__}: {err}{_line_in(err, path)}."
            ) from err
        self._modules[task.number] = module
        return module


class FileImplementation(Implementation):
    """One module file defining the names of every task it is asked about."""

    def __init__(self, path: str | Path):
        self.path = Path(path).resolve()
        self.label = _display(self.path)
        self._module = None

    def module_for(self, task: task_list.Task) -> Any:
        if self._module is None:
            name = f"_jaxgpt_file_{next(_counter)}"
            spec = importlib.util.spec_from_file_location(name, self.path)
            if spec is None or spec.loader is None:
                raise LoadError(f"{self.label} is not a Python file.")
            module = importlib.util.module_from_spec(spec)
            try:
                spec.loader.exec_module(module)
            except SyntaxError as err:
                raise LoadError(f"{self.label}, line {err.lineno}, has a syntax error: {_sentence(err.msg)}") from None
            except Exception as err:
                raise LoadError(
                    f"Importing {self.label} raised {type(err).__name__}: {err}{_line_in(err, self.path)}."
                ) from err
            self._module = module
        return self._module


class NamespaceImplementation(Implementation):
    """The names defined in a namespace: the notebook's globals."""

    def __init__(self, namespace: Mapping[str, Any], label: str = "the notebook"):
        self.namespace = namespace
        self.label = label

    def module_for(self, task: task_list.Task) -> Any:
        return self.namespace

    def get(self, task: task_list.Task, name: str) -> Any:
        try:
            return self.namespace[name]
        except KeyError:
            raise MissingName(
                f"{self.label} does not define `{name}` yet: run task {task.number}'s stub cell (the code cell "
                f"that defines `{name}`) first, then this check again."
            ) from None


def _line_in(err: BaseException, path: Path) -> str:
    """` (line N: code)` for the innermost line of `path` in err's traceback, or nothing."""
    import traceback

    for frame in reversed(traceback.extract_tb(err.__traceback__)):
        if Path(frame.filename).resolve() == path.resolve():
            return f" (line {frame.lineno}: {frame.line.strip()})" if frame.line else f" (line {frame.lineno})"
    return ""


def _display(path: Path) -> str:
    try:
        return str(path.relative_to(task_list.REPO_ROOT))
    except ValueError:
        return str(path)


def resolve(spec: str | Path | Mapping[str, Any] | Implementation) -> Implementation:
    """`tasks`, `reference`, a directory, a `.py` file, a namespace or an `Implementation`."""
    if isinstance(spec, Implementation):
        return spec
    if isinstance(spec, Mapping):
        return NamespaceImplementation(spec)
    text = str(spec)
    if text == "tasks":
        return PackageImplementation(task_list.TASKS_DIR)
    if text == "reference":
        return PackageImplementation(task_list.REFERENCE_DIR)
    path = Path(text).expanduser()
    if path.is_dir():
        return PackageImplementation(path)
    if path.is_file() and path.suffix == ".py":
        return FileImplementation(path)
    raise LoadError(
        f"--impl={text!r} is neither `tasks`, `reference`, a directory laid out like reference/ nor a .py file."
    )


def _sentence(message: str) -> str:
    """Python's own words, ended once: "Perhaps you forgot a comma?" keeps its question mark."""
    message = message.strip()
    return message if message.endswith((".", "?", "!")) else message + "."
