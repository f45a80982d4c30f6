"""The grading side of task 14's checks: starts tests/sharding_checks.py in a process whose JAX has 8 simulated
CPU devices, sends it the code to grade, and turns each check's answer back into the outcome the grader knows.

Why a process: a JAX process fixes its number of CPU devices when its backend starts
(`jax.config.update("jax_num_cpu_devices", 8)` or XLA_FLAGS=--xla_force_host_platform_device_count=8, either
before the first computation), and the process that grades (the grading worker, pytest) started long ago
with one. One process serves a whole suite: JAX loads once, and the checks' compiled programs are shared.

Where the code comes from: a directory laid out like reference/ (tasks/, reference/, a catalogue overlay) or
one .py file travels as its path; the notebook's definitions (or any other implementation) travel by value with
cloudpickle, as the worker received them, with the notebook cells' lines so that a verdict can quote them.

What comes back, one JSON line per check: the status and the sentence `outcomes.classify` gave in that process,
and what the learner's code printed. `raise_outcome` turns it into the exception that makes the grader here say
the same: a failure, "not started" (the stub's own NotImplementedError message), "builds on task N", a missing
name or a load error said once. A check that runs past its time limit is stopped by the grader's own limit on
the test that waits for it; the process is then ended with the suite.
"""

from __future__ import annotations

import json
import linecache
import os
import pickle
import queue
import re
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

from jaxgpt.grader import checks, implementation, task_list

CHILD = Path(__file__).with_name("sharding_checks.py")
START_LIMIT_S = 240.0  # importing JAX, Flax and Optax on a slow, busy machine


class ChecksProcess:
    """The checks' process for one implementation: `outcome(name)` waits for that check's answer."""

    def __init__(self, view: implementation.TaskView, names: list[str]):
        self.names = list(names)
        self.results: dict[str, dict] = {}
        self._messages: queue.Queue = queue.Queue()
        self._log = tempfile.TemporaryFile()
        self.problem: str | None = None
        try:
            request = {"impl": _implementation_spec(view), "checks": self.names, "sys_path": list(sys.path),
                       "cwd": os.getcwd(), "linecache": _cell_sources()}
            data = pickle.dumps(request, protocol=pickle.HIGHEST_PROTOCOL)
        except _NotSendable as err:
            self.process = None
            self.problem = str(err)
            return
        env = dict(os.environ)
        env["JAX_PLATFORMS"] = "cpu"
        # The process sets jax_num_cpu_devices itself; a device count in XLA_FLAGS would only be overridden.
        env["XLA_FLAGS"] = re.sub(r"--xla_force_host_platform_device_count=\d+", "", env.get("XLA_FLAGS", "")).strip()
        self.process = subprocess.Popen([sys.executable, str(CHILD)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        stderr=self._log, env=env, cwd=os.getcwd())
        threading.Thread(target=self._read, daemon=True, name="jaxgpt-sharding-checks").start()
        try:
            self.process.stdin.write(data)
            self.process.stdin.close()
        except OSError:
            pass  # it died at once: the reader says so

    def _read(self) -> None:
        try:
            for line in self.process.stdout:
                try:
                    self._messages.put(json.loads(line))
                except ValueError:
                    continue
        finally:
            self._messages.put(None)

    def outcome(self, name: str) -> dict:
        """The answer for check `name`, waiting for it as long as the check's own time limit lets the test wait."""
        if self.problem is not None:
            checks.fail(self.problem)
        while name not in self.results:
            try:
                message = self._messages.get(timeout=0.5)  # short waits: the grader's time limit can interrupt
            except queue.Empty:
                continue
            if message is None:
                self._messages.put(None)  # for the checks still waiting
                self.problem = self._ended()
                checks.fail(self.problem)
            if "name" in message:
                self.results[message["name"]] = message
        return self.results[name]

    def _ended(self) -> str:
        try:
            code = self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            code = None
        tail = ""
        try:
            self._log.seek(0, os.SEEK_END)
            size = self._log.tell()
            self._log.seek(max(0, size - 1500))
            tail = self._log.read().decode("utf-8", "replace").strip()
        except (OSError, ValueError):
            pass
        how = ("it stopped answering" if code is None else f"exit status {code}" if code >= 0 else
               f"killed by signal {-code}")
        return (f"the process that runs these checks on 8 simulated devices ended before this check ({how}): your "
                "code may have used more memory than the machine has, or crashed the interpreter."
                + (f" It said:\n{tail[-1200:]}" if tail else ""))

    def close(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
        for stream in (getattr(self.process, "stdout", None), self._log):
            try:
                if stream is not None:
                    stream.close()
            except OSError:
                pass


def raise_outcome(result: dict) -> None:
    """Makes this test end as the check ended in the checks' process, with the same sentence."""
    import pytest
    from jaxgpt.grader import outcomes

    if result.get("output"):
        sys.stdout.write(result["output"])  # the grader shows it under the check, as "your code printed"
    status = result["status"]
    message = result.get("message", "")
    if status == outcomes.PASSED:
        return
    if status in (outcomes.NOT_STARTED, outcomes.BLOCKED):
        raise NotImplementedError(result.get("raised") or "Task 14: not written yet")
    if status == outcomes.MISSING:
        raise implementation.MissingName(message)
    if result.get("load_error"):
        raise implementation.LoadError(message)
    if status == outcomes.SKIPPED:
        pytest.skip(message)
    checks.fail(message)


class _NotSendable(Exception):
    pass


def _task_names(task: task_list.Task) -> list[tuple[task_list.Task, str]]:
    out, todo, seen = [], [task], set()
    while todo:
        current = todo.pop()
        if current.number in seen:
            continue
        seen.add(current.number)
        out += [(current, name) for name in current.names]
        todo += [task_list.get_task(n) for n in current.builds_on]
    return out


def _implementation_spec(view: implementation.TaskView) -> tuple:
    impl = view.implementation
    if isinstance(impl, implementation.PackageImplementation):
        return ("path", str(impl.directory))
    if isinstance(impl, implementation.FileImplementation):
        return ("path", str(impl.path))
    values = {}
    for task, name in _task_names(view.task):
        try:
            values[name] = impl.get(task, name)
        except (implementation.MissingName, implementation.LoadError):
            continue
    label = getattr(impl, "label", "the notebook")
    try:
        return ("namespace", label, _dumps(values))
    except Exception:
        pass
    for name, value in values.items():
        try:
            _dumps(value)
        except Exception as err:
            raise _NotSendable(
                f"`{name}` could not be sent to the process that runs these checks on 8 simulated devices "
                f"({type(err).__name__}: {str(err)[:200]}): define it at the top level of its cell, with the "
                "values it uses defined there too.") from None
    raise _NotSendable("the definitions could not be sent to the process that runs these checks on 8 simulated "
                       "devices.")


def _dumps(value) -> bytes:
    """cloudpickle, keeping each function's file name (the verdict quotes the learner's line)."""
    try:
        from jaxgpt.grader.worker import dumps as worker_dumps  # the worker's own way, when it is there
        return worker_dumps(value)
    except ImportError:
        import cloudpickle
        return cloudpickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)


def _cell_sources() -> dict:
    """The notebook cells' lines, as Python's line cache holds them (in the worker: as the request brought them)."""
    cells = {}
    for filename, entry in list(linecache.cache.items()):
        if len(entry) == 4 and ("ipykernel" in filename or filename.startswith("<ipython")) and (
                not os.path.exists(filename)):
            size, _mtime, lines, fullname = entry
            cells[filename] = (size, None, list(lines), fullname)
    return cells
