"""The background grader: one warm grading worker shared by every `jaxgpt check` in a terminal session.

Why: a `jaxgpt check` that starts its own worker waits for Python to load JAX, pytest and the suite every
time (several seconds before the first check runs). The first `jaxgpt check` therefore starts this server
in the background; it keeps a `worker.Grader` warm and answers later checks over a Unix socket, so a check
costs the suite's own time. The command itself still never imports JAX.

The server is keyed by everything that could change a verdict other than the learner's code: the Python
interpreter, the repository, the harness's and the suites' source files (their sizes and modification times)
and the JAXGPT_/JAX_/XLA_ environment. Change any of them and the next check starts a fresh server; the old
one notices and exits. A server also exits after 20 minutes without a check (JAXGPT_BACKGROUND_IDLE_S), and `jaxgpt check
--no-background` (or JAXGPT_BACKGROUND=off) grades in a worker of the command's own.

Ctrl-C in the terminal: the command half-closes its connection; the server sees the end of the request
stream, stops the check (the worker is killed and a fresh one started) and answers with the "stopped"
verdict, which the command prints. Time limits are the worker's, as everywhere.

Protocol: the worker's (8-byte length, pickle), over the socket. The command sends one grade request (the
one `worker._request` builds); the server answers with ("progress", method, args) messages for the command's
progress line and one ("verdict", Verdict).
"""

from __future__ import annotations

import _thread
import contextlib
import hashlib
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from jaxgpt import settings
from jaxgpt.grader import implementation, runner, task_list, worker

STARTUP_WAIT_S = 30.0  # until the server listens (it listens before it loads JAX)
STOP_ANSWER_S = 10.0  # after a Ctrl-C, how long the command waits for the "stopped" verdict
STOP_WAIT_S = 5.0  # how long --stop-background waits for the servers it ended to stop listening
ENDING_WAIT_S = 10.0  # how long a new server waits for an ending one to let go of their place
FINGERPRINT_EVERY_S = 15.0
WARM_AFTER_S = 3.0  # idle after a check before the next task is warmed (a learner reads the verdict)


class Unavailable(Exception):
    """No background grader could be reached or started; the command grades with a worker of its own."""


# ----------------------------------------------------------------------------------------------------
# Where a server listens


def fingerprint() -> str:
    """What a server's verdicts depend on besides the learner's code, as a short hash."""
    digest = hashlib.sha256()
    digest.update(sys.executable.encode())
    digest.update(str(task_list.REPO_ROOT).encode())
    package = Path(__file__).resolve().parents[1]
    sources = sorted(package.rglob("*.py")) + sorted(task_list.TESTS_DIR.glob("*.py")) + sorted(
        task_list.REFERENCE_DIR.glob("*.py"))
    for path in sources:
        try:
            info = path.stat()
        except OSError:
            continue
        digest.update(f"{path}:{info.st_size}:{info.st_mtime_ns}".encode())
    for key in sorted(os.environ):
        if key.startswith(("JAXGPT_", "JAX_", "XLA_")):
            digest.update(f"{key}={os.environ[key]}".encode())
    return digest.hexdigest()[:16]


def socket_path(print_: str | None = None) -> Path:
    # Unix socket paths are limited to about 100 bytes: a short name in a short directory.
    return settings.background_dir() / f"grader-{print_ or fingerprint()}.sock"


# ----------------------------------------------------------------------------------------------------
# The command's side


class BackgroundGrader:
    """`grade()` as `worker.Grader.grade`, answered by the background server (started when none runs)."""

    def __init__(self):
        self.path = socket_path()

    def __enter__(self) -> "BackgroundGrader":
        return self

    def __exit__(self, *exc) -> None:
        pass

    def start(self) -> None:
        """Makes sure a server runs (it starts loading JAX at once); returns when it listens."""
        self._connect().close()

    def grade(self, task: int | task_list.Task, impl: Any = "tasks", timeout_s: float = runner.DEFAULT_TIMEOUT_S,
              keyword: str | None = None, progress: worker.Progress | None = None) -> runner.Verdict:
        task = task if isinstance(task, task_list.Task) else task_list.get_task(task)
        impl = implementation.resolve(impl)
        if not isinstance(impl, (implementation.PackageImplementation, implementation.FileImplementation)):
            raise Unavailable("the background grader takes files only")
        progress = progress or worker.Progress.quiet()
        request, _ = worker._request(task, impl, timeout_s, keyword)
        connection = self._connect(progress)
        stream = connection.makefile("rwb")
        try:
            try:
                worker.send(stream, request)
            except OSError as err:
                raise Unavailable(f"the background grader did not take the request ({err})") from None
            try:
                return self._answers(stream, task, progress)
            except KeyboardInterrupt:
                return self._stopped(connection, stream, task, progress)
            except OSError as err:  # a server that was ending when this connected resets the connection
                raise Unavailable(f"the background grader ended while it checked ({err})") from None
        finally:
            progress.finished()
            with contextlib.suppress(OSError):
                stream.close()
            with contextlib.suppress(OSError):
                connection.close()

    def _answers(self, stream, task: task_list.Task, progress: worker.Progress) -> runner.Verdict:
        while True:
            message = worker.receive(stream)
            if message is None:
                raise Unavailable("the background grader ended while it checked")
            kind = message[0]
            if kind == "progress":
                _, method, args = message
                getattr(progress, method)(*args)
            elif kind == "verdict":
                return message[1]

    def _stopped(self, connection: socket.socket, stream, task: task_list.Task, progress: worker.Progress
                 ) -> runner.Verdict:
        """A Ctrl-C: tell the server (the end of the request stream) and show the checks it reports."""
        progress.finished()
        with contextlib.suppress(OSError):
            connection.shutdown(socket.SHUT_WR)
        connection.settimeout(STOP_ANSWER_S)
        try:
            while True:
                message = worker.receive(stream)
                if message is None:
                    break
                if message[0] == "verdict" and message[1].stopped:
                    return message[1]
        except (OSError, KeyboardInterrupt, Exception):
            pass
        return runner.finish_verdict(task, [], [], 0.0, stopped=True)

    def _connect(self, progress: worker.Progress | None = None) -> socket.socket:
        with contextlib.suppress(OSError):
            return _connected(self.path)
        _launch(self.path)
        deadline = time.monotonic() + STARTUP_WAIT_S
        while time.monotonic() < deadline:
            time.sleep(0.05)
            with contextlib.suppress(OSError):
                return _connected(self.path)
        raise Unavailable(f"the background grader did not start within {STARTUP_WAIT_S:g} s")


def _connected(path: Path) -> socket.socket:
    connection = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        connection.connect(str(path))
    except OSError:
        connection.close()
        raise
    return connection


def _launch(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    log = open(path.with_suffix(".log"), "ab")
    try:
        subprocess.Popen([sys.executable, "-m", "jaxgpt.grader.server", str(path)], stdin=subprocess.DEVNULL,
                         stdout=log, stderr=log, start_new_session=True, cwd=os.getcwd())
    except OSError as err:
        raise Unavailable(f"the background grader could not be started ({err})") from None
    finally:
        log.close()


def stop_all() -> int:
    """Ends every background grader of this user (`jaxgpt check --stop-background`); returns how many, once
    none of them takes connections any more."""
    stopped = []
    for path in settings.background_dir().glob("grader-*.sock"):
        try:
            connection = _connected(path)
        except OSError:
            with contextlib.suppress(OSError):
                path.unlink()
            continue
        with connection, connection.makefile("rwb") as stream:
            with contextlib.suppress(OSError):
                worker.send(stream, {"op": "exit"})
                worker.receive(stream)
        stopped.append(path)
    deadline = time.monotonic() + STOP_WAIT_S  # a server removes its socket first thing as it ends
    while any(path.exists() for path in stopped) and time.monotonic() < deadline:
        time.sleep(0.02)
    return len(stopped)


def usable() -> bool:
    return hasattr(socket, "AF_UNIX") and settings.background() and os.name == "posix"


# ----------------------------------------------------------------------------------------------------
# The server's side


class _RemoteProgress(worker.Progress):
    """The command's progress line, drawn by the command: each call is sent to it."""

    def __init__(self, send):
        super().__init__("quiet")
        self._send = send

    def starting(self) -> None:
        self._send(("progress", "starting", ()))

    def started(self, name: str) -> None:
        self._send(("progress", "started", (name,)))

    def tick(self, elapsed: float, limit: float) -> None:
        self._send(("progress", "tick", (elapsed, limit)))

    def finished(self) -> None:
        self._send(("progress", "finished", ()))

    def clear(self) -> None:
        self._send(("progress", "clear", ()))


def serve(path: Path) -> int:
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True)
    lock = open(path.with_suffix(".lock"), "w")
    deadline = time.monotonic() + ENDING_WAIT_S
    while True:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except OSError:
            # Another server holds this place. One that listens answers the command; one whose socket is
            # gone is ending (its worker closing), and this one takes over when it has.
            if path.exists() or time.monotonic() > deadline:
                return 0
            time.sleep(0.05)
    with contextlib.suppress(FileNotFoundError):
        path.unlink()  # left by a server that was killed
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen(8)
    listener.settimeout(FINGERPRINT_EVERY_S)
    own_print = path.stem.removeprefix("grader-")
    grader = worker.Grader(keep_warm=True)
    grader.start()  # JAX loads while the first request travels
    last = time.monotonic()
    to_warm: task_list.Task | None = None
    try:
        while time.monotonic() - last < settings.background_idle_s():
            listener.settimeout(WARM_AFTER_S if to_warm else FINGERPRINT_EVERY_S)
            try:
                connection, _ = listener.accept()
            except socket.timeout:
                if to_warm is not None:
                    grader.warm(to_warm)  # the next task's first check finds the worker ready for it
                    to_warm = None
                elif fingerprint() != own_print:
                    return 0  # the harness or the suites changed: a fresh server answers from now on
                continue
            except KeyboardInterrupt:  # a stop that came after its check had ended
                continue
            try:
                answered = _answer(connection, grader)
                if answered is False:
                    return 0
                to_warm = task_list.next_task(answered) if answered else None
            except KeyboardInterrupt:
                pass
            finally:
                with contextlib.suppress(OSError):
                    connection.close()
            last = time.monotonic()
    finally:
        # No connection is taken from here on: a check that comes while the worker closes finds no socket and
        # starts a fresh server (which waits for this one's place) instead of a connection that is reset.
        with contextlib.suppress(OSError):
            path.unlink()
        listener.close()
        grader.close()
    return 0


def _answer(connection: socket.socket, grader: worker.Grader) -> task_list.Task | bool | None:
    """Answers one request: the task it checked, None for none, False when it asked the server to exit."""
    stream = connection.makefile("rwb")
    connection.settimeout(10.0)
    try:
        request = worker.receive(stream)
    except (OSError, Exception):
        return None
    connection.settimeout(None)
    if request is None:
        return None
    if request.get("op") == "exit":
        with contextlib.suppress(OSError):
            worker.send(stream, ("bye", None))
        return False
    grading = threading.Event()
    grading.set()
    lost = threading.Event()

    def send(message) -> None:
        if lost.is_set():
            return
        try:
            worker.send(stream, message)
        except OSError:
            lost.set()

    def watch_for_a_stop() -> None:
        # The command half-closes on Ctrl-C (or dies): the request stream ends while the check runs.
        with contextlib.suppress(OSError):
            while connection.recv(1):
                pass
        if grading.is_set():
            _thread.interrupt_main()

    threading.Thread(target=watch_for_a_stop, daemon=True, name="jaxgpt-background-stop").start()
    task = task_list.get_task(request["task"])
    impl = implementation.resolve(request["impl"][1])
    os.chdir(request.get("cwd") or os.getcwd())
    try:
        verdict = grader.grade(task, impl, timeout_s=request["timeout_s"], keyword=request.get("keyword"),
                               progress=_RemoteProgress(send))
    finally:
        grading.clear()
    send(("verdict", verdict))
    with contextlib.suppress(OSError):
        stream.close()
    return task


if __name__ == "__main__":
    raise SystemExit(serve(Path(sys.argv[1])))
