"""The grading worker: checks run in a spawned process that imports JAX once, stays warm, and can be stopped.

Why a separate process: a learner's compiled endless loop (a `lax.while_loop` whose counter never moves)
never returns to Python, so no in-process time limit or Ctrl-C can stop it; a process can always be killed.
Why spawned and not forked: `os.fork()` after JAX has started deadlocks the child's next compilation (JAX is
multithreaded), so the worker is a fresh `python -m jaxgpt.grader.worker`.

The parent side (`Grader`) never imports JAX, so `jaxgpt check` starts in the time the worker takes to load
it. It sends one request per task (the task, where the code is, the time limit); the worker runs
`runner.run_suite` there and answers with one message per check as it starts and ends, then the verdict.
The parent shows a line for the running check, so a long wait is never silent, and:
  - kills the worker when a check runs past its limit (plus a few seconds' grace: the worker's own pytest
    time limit stops Python loops without a kill); that check says it did not finish, the ones after it are
    "not run", and a fresh worker is started for the next task;
  - on Ctrl-C (the terminal, or the notebook's Stop button) kills the worker and returns a "stopped"
    verdict, which is never a pass. The worker runs in its own session and ignores SIGINT, so a Ctrl-C
    reaches only the parent, which decides.

The worker runs JAX on the CPU (JAX_PLATFORMS=cpu): the notebook's own JAX holds any accelerator, and the
suites are proved on the CPU. `run_suite` puts JAX's global configuration back after every check, so a
learner's `jax.config.update` cannot reach the next check or the next task graded by the same worker.

The notebook's definitions travel by value with cloudpickle (a Flax module class defined in `__main__`
arrives intact): only the names of the task and of the tasks it builds on. If one cannot be pickled, the
task is graded in the notebook's own process, and the verdict says so.

Protocol: each message is an 8-byte little-endian length and a pickle; requests on the worker's stdin,
answers on its stdout (the worker moves its own fd 1 to its stderr, a log file the parent reads when the
worker dies, so nothing the learner's code prints can break the stream).
"""

from __future__ import annotations

import atexit
import io
import linecache
import os
import pickle
import queue
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any, BinaryIO

from jaxgpt.grader import task_list, runner, implementation, outcomes
from jaxgpt.grader.outcomes import Status

KILL_GRACE_S = 5.0  # past a check's own limit before the parent kills the worker (compiled loops)
STARTUP_LIMIT_S = 300.0  # importing JAX on a slow, busy machine
PHASE_LIMIT_S = 180.0  # collecting a suite, or finishing one, outside any check
GRADES_PER_WORKER = 50  # then a fresh worker: each grade imports the learner's code anew, and JAX keeps caches
_HEADER = struct.Struct("<Q")


# ----------------------------------------------------------------------------------------------------
# The wire


def send(stream: BinaryIO, message: Any) -> None:
    data = message if isinstance(message, bytes) else pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    stream.write(_HEADER.pack(len(data)) + data)
    stream.flush()


def receive(stream: BinaryIO) -> Any:
    """The next message, or None at the end of the stream."""
    header = _read_exactly(stream, _HEADER.size)
    if header is None:
        return None
    data = _read_exactly(stream, _HEADER.unpack(header)[0])
    if data is None:
        return None
    return pickle.loads(data)


def _read_exactly(stream: BinaryIO, n: int) -> bytes | None:
    chunks, left = [], n
    while left:
        chunk = stream.read(left)
        if not chunk:
            return None
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


# ----------------------------------------------------------------------------------------------------
# What the parent shows while a check runs


class Progress:
    """The line for the running check: rewritten in place in a terminal or a notebook, and in a log (no
    terminal) one line for a check that is still running after a few seconds."""

    SLOW_S = 3.0

    def __init__(self, mode: str = "quiet", stream=None, prefix: str = ""):
        self.mode = mode  # "tty", "notebook", "plain" or "quiet"
        self.stream = stream
        self.prefix = prefix
        self._shown = False
        self._name = ""
        self._told_slow = False
        self._last_tick = -1

    @classmethod
    def terminal(cls, prefix: str = "") -> "Progress":
        stream = sys.stderr
        return cls("tty" if getattr(stream, "isatty", lambda: False)() else "plain", stream, prefix)

    @classmethod
    def notebook(cls) -> "Progress":
        return cls("notebook", sys.stdout)

    @classmethod
    def quiet(cls) -> "Progress":
        return cls("quiet")

    def _write(self, text: str) -> None:
        if self.mode == "quiet" or self.stream is None:
            return
        if self.mode == "plain":
            self.stream.write(text + "\n")
        else:
            if self.mode == "tty":  # one screen line, or the clearing below would leave the wrapped part
                import shutil

                text = _short(text, max(20, shutil.get_terminal_size((80, 24)).columns - 1))
            self.clear()
            self.stream.write(text)
            self._shown = True
        self.stream.flush()

    def clear(self) -> None:
        if self._shown and self.stream is not None:
            self.stream.write("\r\x1b[K" if self.mode == "tty" else "\r")
            self.stream.flush()
            self._shown = False

    def starting(self) -> None:
        if self.mode in ("tty", "notebook"):
            self._write(f"{self.prefix}  … starting the grader (loading JAX)")

    def started(self, name: str) -> None:
        self._name, self._told_slow, self._last_tick = name, False, -1
        if self.mode in ("tty", "notebook"):
            self._write(f"{self.prefix}  … {_short(name)}")

    def tick(self, elapsed: float, limit: float) -> None:
        if not self._name or elapsed < self.SLOW_S:
            return
        if self.mode == "plain":
            if not self._told_slow:
                self._told_slow = True
                self._write(f"{self.prefix}  … still running after {self.SLOW_S:g} s: {self._name} "
                            f"(stopped at {limit:g} s)")
        elif self.mode in ("tty", "notebook") and int(elapsed) != self._last_tick:
            self._last_tick = int(elapsed)
            when = f"{int(elapsed)} s of {limit:g}" if elapsed < limit else f"{int(elapsed)} s: stopping it"
            self._write(f"{self.prefix}  … [{when}] {_short(self._name)}")

    def finished(self) -> None:
        self._name = ""
        self.clear()


def _short(text: str, width: int = 90) -> str:
    return text if len(text) <= width else text[:width - 1] + "…"


# ----------------------------------------------------------------------------------------------------
# The parent's side


class WorkerUnavailable(Exception):
    """The worker could not be started or could not take the request; the task is graded in-process."""


class Grader:
    """Grades tasks in a warm worker process. Use one per session: `with Grader() as g: g.grade(3, "tasks")`.

    `keep_warm`: after the worker is killed (a time-out or a stop), start the next one at once, so that the
    next check does not wait for JAX to load (the notebook and `jaxgpt watch` want this; `jaxgpt check`,
    which exits, does not)."""

    def __init__(self, keep_warm: bool = False, python: str | None = None):
        self.keep_warm = keep_warm
        self.python = python or sys.executable
        self._process: subprocess.Popen | None = None
        self._messages: queue.Queue | None = None
        self._log = None
        self._ready = False
        self._grades = 0  # by the running worker
        self._lock = threading.Lock()

    # -- the process

    def start(self) -> None:
        """Starts a worker if none is running (it loads JAX meanwhile); returns at once."""
        if self._process is not None and self._process.poll() is None:
            return
        self._close_quietly()
        env = dict(os.environ)
        # The checks run on the CPU: the notebook's own JAX holds the accelerator (a TPU serves one process;
        # a GPU's memory is mostly taken by the first process), and the suites are proved on the CPU.
        env["JAX_PLATFORMS"] = "cpu"
        env["JAXGPT_WORKER"] = "1"
        self._log = tempfile.TemporaryFile(prefix="jaxgpt-worker-")
        options: dict[str, Any] = {}
        if os.name == "posix":
            options["start_new_session"] = True  # Ctrl-C and the notebook's Stop reach the parent only
        else:
            options["creationflags"] = getattr(subprocess, "CREATE_NEW_PROCESS_GROUP", 0)
        try:
            self._process = subprocess.Popen(
                [self.python, "-m", "jaxgpt.grader.worker"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                stderr=self._log, env=env, cwd=os.getcwd(), **options)
        except OSError as err:
            self._process = None
            raise WorkerUnavailable(f"the grading process could not be started ({err})") from None
        self._ready = False
        self._grades = 0
        self._messages = queue.Queue()
        threading.Thread(target=_read_into, args=(self._process.stdout, self._messages), daemon=True,
                         name="jaxgpt-grader-reader").start()

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None and self._process.poll() is None else None

    def kill(self) -> None:
        """Ends the worker now, whatever it is doing."""
        process, self._process = self._process, None
        self._ready = False
        if process is not None:
            try:
                process.kill()
                process.wait(timeout=10)
            except (OSError, subprocess.TimeoutExpired):
                pass
            for pipe in (process.stdin, process.stdout):
                try:
                    pipe.close()
                except OSError:
                    pass

    def close(self) -> None:
        """Ends the worker (asked politely, then killed)."""
        process = self._process
        if process is not None and process.poll() is None:
            try:
                process.stdin.close()  # the worker exits at the end of its input
                process.wait(timeout=2)
            except (OSError, subprocess.TimeoutExpired):
                pass
        self.kill()
        self._close_quietly()

    def _close_quietly(self) -> None:
        if self._log is not None:
            try:
                self._log.close()
            except OSError:
                pass
            self._log = None

    def __enter__(self) -> "Grader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _log_tail(self, limit: int = 1500) -> str:
        if self._log is None:
            return ""
        try:
            self._log.seek(0, os.SEEK_END)
            size = self._log.tell()
            self._log.seek(max(0, size - limit))
            return self._log.read().decode("utf-8", "replace").strip()
        except (OSError, ValueError):
            return ""

    def _next(self, timeout: float) -> Any:
        try:
            return self._messages.get(timeout=timeout)
        except queue.Empty:
            return _NOTHING

    def _wait_ready(self, progress: Progress) -> None:
        if self._ready:
            return
        started = time.monotonic()
        told = False
        while True:
            message = self._next(0.2)
            if message is _NOTHING:
                if not told and time.monotonic() - started > 1.0:
                    progress.starting()
                    told = True
                if time.monotonic() - started > STARTUP_LIMIT_S:
                    self.kill()
                    raise WorkerUnavailable(f"the grading process did not start within {STARTUP_LIMIT_S:g} s")
                continue
            if message is None:
                tail = self._log_tail()
                self.kill()
                raise WorkerUnavailable("the grading process ended while starting"
                                        + (f":\n{tail}" if tail else ""))
            if message[0] == "ready":
                self._ready = True
                progress.clear()
                return

    def warm(self, task: int | task_list.Task, after_s: float = 0.0) -> None:
        """Has the worker grade the reference on `task` once, unseen, if no check starts in the next `after_s`
        seconds: the learner's first check of that task then finds the suite's imports, the reference's
        compiled programs and JAX's per-shape caches ready. A check asked for meanwhile waits for it."""
        task = task if isinstance(task, task_list.Task) else task_list.get_task(task)
        if not task.test_file.exists():
            return

        def send_when_idle() -> None:
            time.sleep(after_s)
            if not self._lock.acquire(blocking=False):
                return  # a check is running: it warms what it needs itself
            try:
                if self._process is not None and self._process.poll() is None:
                    send(self._process.stdin, {"op": "warm", "task": task.number, "sys_path": list(sys.path),
                                               "cwd": os.getcwd()})
            except (OSError, ValueError):
                pass
            finally:
                self._lock.release()

        threading.Thread(target=send_when_idle, daemon=True, name="jaxgpt-grader-warm").start()

    # -- grading

    def grade(self, task: int | task_list.Task, impl: Any = "tasks", timeout_s: float = runner.DEFAULT_TIMEOUT_S,
              keyword: str | None = None, progress: Progress | None = None) -> runner.Verdict:
        """Task `task`'s verdict for `impl`, graded in the worker. Never raises for the learner's code; a Ctrl-C
        while it runs gives a verdict with `stopped` set (its status is "stopped", never "passed")."""
        task = task if isinstance(task, task_list.Task) else task_list.get_task(task)
        impl = implementation.resolve(impl)
        progress = progress or Progress.quiet()
        with self._lock:
            try:
                request, note = _request(task, impl, timeout_s, keyword)
            except _NotPicklable as err:
                return _in_process(task, impl, timeout_s, keyword, str(err))
            try:
                verdict = self._grade(task, request, timeout_s, progress, note)
                self._grades += 1
                if self._grades >= GRADES_PER_WORKER and self.keep_warm:
                    self.close()
                    self._restart_quietly()
                return verdict
            except WorkerUnavailable as err:
                progress.finished()
                return _in_process(task, impl, timeout_s, keyword,
                                   f"{err}; graded in this process instead, where an endless loop cannot be "
                                   "stopped")

    def _grade(self, task: task_list.Task, request: dict, timeout_s: float, progress: Progress,
               note: str | None) -> runner.Verdict:
        started = time.monotonic()
        collected: list[tuple[str, str]] = []
        results: list[runner.CheckResult] = []
        current: tuple[str, str] | None = None
        try:
            self.start()
            self._wait_ready(progress)
            try:
                send(self._process.stdin, request)
            except (OSError, ValueError) as err:
                self.kill()
                raise WorkerUnavailable(f"the grading process did not take the request ({err})") from None
            phase_started = time.monotonic()
            while True:
                message = self._next(0.2)
                now = time.monotonic()
                if message is _NOTHING:
                    if current is not None:
                        elapsed = now - phase_started
                        progress.tick(elapsed, timeout_s)
                        if elapsed > timeout_s + KILL_GRACE_S:
                            return self._after_kill(task, collected, results, current, started, Status.TIMED_OUT,
                                                    outcomes.timeout_message(timeout_s), progress)
                    elif now - phase_started > max(PHASE_LIMIT_S, timeout_s):
                        return self._after_kill(
                            task, collected, results, ("", "the task's checks run"), started, Status.ERROR,
                            f"the grading process did not answer within {max(PHASE_LIMIT_S, timeout_s):g} s "
                            "outside any check, so it was stopped.", progress)
                    continue
                if message is None:  # the worker died
                    try:
                        code = self._process.wait(timeout=3) if self._process is not None else None
                    except subprocess.TimeoutExpired:  # it closed its answers but lives on: killed below
                        code = None
                    tail = self._log_tail(600)
                    return self._after_kill(
                        task, collected, results, current or ("", "the task's checks run"), started, Status.ERROR,
                        f"the grading process ended while this check ran ({_exit_words(code)}): your code may "
                        "have used more memory than the machine has, or crashed the interpreter."
                        + (f" It said:\n{tail}" if tail else ""), progress)
                kind, payload = message
                if kind == "collected":
                    collected = payload
                elif kind == "start":
                    current, phase_started = payload, now
                    progress.started(payload[1])
                elif kind == "result":
                    results.append(payload)
                    current, phase_started = None, now
                    progress.finished()
                elif kind == "verdict":
                    progress.finished()
                    verdict: runner.Verdict = payload
                    if note:
                        verdict.notes.append(note)
                    return verdict
                elif kind == "unusable":  # the request could not be unpacked there
                    progress.finished()
                    raise WorkerUnavailable(payload)
        except KeyboardInterrupt:
            progress.finished()
            self.kill()
            if self.keep_warm:
                self._restart_quietly()
            if current is not None:
                results.append(runner.CheckResult(current[1], Status.STOPPED, nodeid=current[0]))
            return runner.finish_verdict(task, collected, results, time.monotonic() - started, stopped=True)

    def _after_kill(self, task, collected, results, current, started, status, message, progress):
        progress.finished()
        self.kill()
        nodeid, name = current
        results = results + [runner.CheckResult(name, status, message, nodeid=nodeid)]
        verdict = runner.finish_verdict(task, collected, results, time.monotonic() - started,
                                         not_run_reason=runner.NOT_RUN_AFTER_TIMEOUT
                                         if status == Status.TIMED_OUT else runner.NOT_RUN_AFTER_CRASH)
        if self.keep_warm:
            self._restart_quietly()
        return verdict

    def _restart_quietly(self) -> None:
        try:
            self.start()
        except WorkerUnavailable:
            pass


_NOTHING = object()


def _read_into(stream: BinaryIO, messages: queue.Queue) -> None:
    try:
        while True:
            message = receive(stream)
            messages.put(message)
            if message is None:
                return
    except Exception:  # a broken pipe, or a message this side cannot unpickle: the worker is of no more use
        messages.put(None)


def _exit_words(code: int | None) -> str:
    if code is None:
        return "it stopped answering"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit status {code}"


class _NotPicklable(Exception):
    pass


def _names_to_send(task: task_list.Task) -> list[str]:
    """The task's names and those of every task it builds on, directly or not."""
    names, todo, seen = [], [task], set()
    while todo:
        current = todo.pop()
        if current.number in seen:
            continue
        seen.add(current.number)
        names += [n for n in current.names if n not in names]
        todo += [task_list.get_task(n) for n in current.builds_on]
    return names


def _request(task: task_list.Task, impl: implementation.Implementation, timeout_s: float,
             keyword: str | None) -> tuple[dict, str | None]:
    request = {"op": "grade", "task": task.number, "timeout_s": timeout_s, "keyword": keyword,
               "sys_path": list(sys.path), "cwd": os.getcwd()}
    if isinstance(impl, implementation.PackageImplementation):
        request["impl"] = ("path", str(impl.directory))
    elif isinstance(impl, implementation.FileImplementation):
        request["impl"] = ("path", str(impl.path))
    elif isinstance(impl, implementation.NamespaceImplementation):
        request["impl"] = ("namespace", impl.label, _pickle_namespace(impl.namespace, task))
        request["linecache"] = _cell_sources()
    else:
        try:
            request["impl"] = ("object", dumps(impl))
        except Exception as err:
            raise _NotPicklable(f"graded in this process: the implementation could not be sent to the grading "
                                f"process ({type(err).__name__}: {err}), so an endless loop cannot be stopped")
    return request, None


def dumps(value: Any) -> bytes:
    """cloudpickle's bytes of `value`, keeping each function's file name (so that a verdict can find the learner's
    frames in a notebook cell's code)."""
    import copyreg
    import types
    from collections import ChainMap

    import cloudpickle

    def code_reduce(code: types.CodeType):
        constructor, args = cloudpickle.cloudpickle._code_reduce(code)
        return constructor, tuple(code.co_filename if arg == "<dynamic-code>" else arg for arg in args)

    class Pickler(cloudpickle.Pickler):
        dispatch_table = ChainMap({types.CodeType: code_reduce}, cloudpickle.Pickler.dispatch_table,
                                  copyreg.dispatch_table)

    buffer = io.BytesIO()
    Pickler(buffer, protocol=pickle.HIGHEST_PROTOCOL).dump(value)
    return buffer.getvalue()


def _pickle_namespace(namespace, task: task_list.Task) -> bytes:
    chosen = {name: namespace[name] for name in _names_to_send(task) if name in namespace}
    try:
        return dumps(chosen)
    except Exception:
        pass
    for name, value in chosen.items():  # which one
        try:
            dumps(value)
        except Exception as err:
            raise _NotPicklable(
                f"graded in this process: `{name}` could not be sent to the grading process "
                f"({type(err).__name__}: {str(err)[:200]}), so an endless loop here cannot be stopped") from None
    raise _NotPicklable("graded in this process: the notebook's definitions could not be sent to the grading "
                        "process, so an endless loop here cannot be stopped")


def _cell_sources() -> dict[str, tuple]:
    """The notebook cells' source lines as Python's line cache holds them, so that the worker can quote the
    learner's line (`at your notebook cell, line 4: wei = q @ k`)."""
    cells = {}
    for filename, entry in list(linecache.cache.items()):
        if len(entry) == 4 and ("ipykernel" in filename or filename.startswith("<ipython")) and (
                not os.path.exists(filename)):
            size, _mtime, lines, fullname = entry
            cells[filename] = (size, None, list(lines), fullname)
    return cells


def _in_process(task: task_list.Task, impl: implementation.Implementation, timeout_s: float, keyword: str | None,
                note: str) -> runner.Verdict:
    verdict = runner.run_suite(task, impl, timeout_s, keyword)
    verdict.notes.append(note)
    return verdict


_DEFAULT: Grader | None = None


def default_grader() -> Grader:
    """The process's own grader (the notebook's): started on the first check, kept warm, ended at exit."""
    global _DEFAULT
    if _DEFAULT is None:
        _DEFAULT = Grader(keep_warm=True)
        atexit.register(_DEFAULT.close)
    return _DEFAULT


# ----------------------------------------------------------------------------------------------------
# The worker's side


def serve() -> int:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides what a Ctrl-C means
    answers = os.fdopen(os.dup(1), "wb")
    requests = os.fdopen(os.dup(0), "rb")
    os.dup2(2, 1)  # whatever anything prints at the C level goes to the log, not into the answers
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)  # input() in the learner's code reads nothing rather than the requests
    os.close(null)
    sys.stdin = open(os.devnull)
    _watch_parent()

    started = time.perf_counter()
    # Loaded once, for every check this worker will run. (optax is left to the suites that use it: tasks 7 and
    # 8's, which import it themselves; the others start sooner without it.)
    import jax
    import flax.linen  # noqa: F401
    import numpy  # noqa: F401
    import pytest  # noqa: F401

    import jaxgpt.grader.pytest_plugin  # noqa: F401
    jax.devices()  # start the backend now, so that its start-up messages are not a check's output
    send(answers, ("ready", {"pid": os.getpid(), "seconds": time.perf_counter() - started}))

    while True:
        try:
            request = receive(requests)
        except Exception as err:
            send(answers, ("unusable", f"the grading process could not read the request ({err})"))
            continue
        if request is None or request.get("op") == "exit":
            return 0
        if request.get("op") == "grade":
            _serve_one(request, answers)
        elif request.get("op") == "warm":
            _warm_one(request)
            send(answers, ("warmed", request["task"]))


def _enter(request: dict) -> None:
    """Imports and relative paths resolve as in the process that sent the request."""
    for entry in request.get("sys_path", []):
        if entry not in sys.path:
            sys.path.append(entry)
    if request.get("cwd") and os.path.isdir(request["cwd"]):
        os.chdir(request["cwd"])


def _serve_one(request: dict, answers: BinaryIO) -> None:
    _enter(request)
    linecache.cache.update(request.get("linecache") or {})
    try:
        impl = _implementation(request["impl"])
    except Exception as err:
        send(answers, ("unusable", f"the grading process could not unpack the code to grade "
                                   f"({type(err).__name__}: {str(err)[:300]})"))
        return

    def listener(kind: str, payload: Any) -> None:
        send(answers, (kind, payload))

    try:
        verdict = runner.run_suite(request["task"], impl, request["timeout_s"], request.get("keyword"),
                                    listener=listener)
    except Exception as err:  # the runner itself failed: say so as the verdict's one check
        task = task_list.get_task(request["task"])
        verdict = runner.Verdict(task, [runner.CheckResult(
            "the task's checks run", Status.ERROR,
            f"the checks could not run: {type(err).__name__}: {str(err)[:500]}")])
    send(answers, ("verdict", verdict))


def _warm_one(request: dict) -> None:
    _enter(request)
    try:
        runner.run_suite(request["task"], "reference", runner.DEFAULT_TIMEOUT_S)
    except Exception:  # a warm-up is a courtesy: the learner's own check reports whatever is wrong
        pass


def _implementation(spec: tuple) -> implementation.Implementation:
    kind = spec[0]
    if kind == "path":
        return implementation.resolve(spec[1])
    if kind == "namespace":
        return implementation.NamespaceImplementation(pickle.loads(spec[2]), label=spec[1])
    if kind == "object":
        return pickle.loads(spec[1])
    raise ValueError(f"unknown implementation kind {kind!r}")


def _watch_parent() -> None:
    """Ends the worker when its parent is gone (a killed terminal, a restarted kernel), even mid-check."""
    if not hasattr(os, "getppid"):
        return
    parent = os.getppid()

    def watch():
        while True:
            time.sleep(1.0)
            if os.getppid() != parent:
                os._exit(0)

    threading.Thread(target=watch, daemon=True, name="jaxgpt-worker-parent-watch").start()


if __name__ == "__main__":
    raise SystemExit(serve())
