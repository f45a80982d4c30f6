"""Every task suite takes the implementation under test from `--impl` (or from the notebook); see
jaxgpt/grader/pytest_plugin.py."""

pytest_plugins = ["jaxgpt.grader.pytest_plugin"]

import atexit
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile

import pytest

# `jaxgpt check` run by a test grades in a worker of its own: a background grader would outlive the test run.
# tests/test_grader_server.py turns it on where it tests it.
os.environ.setdefault("JAXGPT_BACKGROUND", "off")

# Several tests press Ctrl-C: in this process (os.kill), and to a `jaxgpt check` or `watch` process group. A run
# started as a background job of a shell without job control (`.ci/run &` in a script) inherits SIGINT ignored,
# and so would every process it starts: those tests would fail for a reason that is not the grader's. Python's
# own handler, as in a terminal; the processes started from here then start with the default disposition.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


def pytest_configure(config):
    """A session the grader runs (jaxgpt/grader/runner.py's run_suite: a learner's check, or a test that grades)
    skips pytest's closing garbage collection. pytest collects all garbage twice as each session ends, to report
    exceptions raised in `__del__`; a grading session throws its output away, so that report is never read, and
    in a process that has run many checks (the grading worker, the project's own test run) each collection walks
    every object JAX and Flax keep alive: about a second each, late in `uv run pytest`, where some thirty sessions
    are graded. The project's own run keeps its collection."""
    if not any(getattr(plugin, "jaxgpt_injects_implementation", False)
               for plugin in config.invocation_params.plugins or ()):
        return
    try:
        from _pytest.unraisableexception import gc_collect_iterations_key
    except ImportError:  # a pytest before 8.4 collects once, at the end of the whole run only
        return
    config.stash[gc_collect_iterations_key] = 0


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):
    """A check of a task whose every function and module is still the untouched stub says "not started" at once,
    before its fixtures compute oracles or compile the reference (seconds for some tasks, for each check of a task
    not begun; `jaxgpt progress` grades every stub): it raises the stub's own NotImplementedError, which is what
    the check would have raised on reaching the learner's code (jaxgpt/grader/checks.py's untouched_task). Only
    for the checks that grade the implementation under test (they take the `impl` fixture)."""
    number = getattr(getattr(item, "module", None), "TASK", None)
    if number is None or "impl" not in getattr(item, "fixturenames", ()):
        return
    from jaxgpt.grader import checks, pytest_plugin, task_list

    try:
        task = task_list.get_task(number)
        view = pytest_plugin._configured_implementation(item.config).for_task(task)
        stub = checks.untouched_task([getattr(view, name) for name in task.names])
    except Exception:  # noqa: BLE001 - a load error or a missing name: the check itself says which
        return
    if stub is not None:
        checks.not_started_yet(stub)


def pytest_collection_finish(session):
    """A test module may define `start_early(session, items)`: called here, once collection is done, with the
    module's selected tests, to start a process that its tests will wait for (tests/test_task14_sharding.py starts
    its checks' process on 8 simulated devices), so that the process works while the tests before them run. If it
    cannot start, the module's tests start it themselves and say what went wrong."""
    if session.config.option.collectonly:
        return
    selected: dict = {}
    for item in session.items:
        module = getattr(item, "module", None)
        if module is not None and callable(getattr(module, "start_early", None)):
            selected.setdefault(module, []).append(item)
    for module, items in selected.items():
        try:
            module.start_early(session, items)
        except Exception:  # noqa: BLE001 - the tests start it again, and report the failure as a check's
            pass
    modules = {item.module for item in session.items if getattr(item, "module", None) is not None}
    cases = {case: spec for module in modules for case, spec in getattr(module, "GRADED_EARLY", {}).items()}
    if cases:
        _EARLY_GRADING.start(cases)


# ---- verdicts graded in one process, started as soon as collection ends ---------------------------------------

_GRADE = """
import json, sys
from jaxgpt.grader.runner import run_suite
for case in json.loads(sys.argv[1]):
    verdict = run_suite(case["task"], case["directory"])
    print(json.dumps({"id": case["id"], "status": verdict.status, "text": verdict.text(verbose=True),
                      "checks": [c.status for c in verdict.checks]}), flush=True)
"""
EARLY_GRADING_TIMEOUT_S = 300


class _EarlyGrading:
    """Verdicts of `run_suite` on implementations laid out for the purpose, graded in a process of their own (so
    that each suite runs as it does for a learner's check, not inside this pytest session), one process for all:
    JAX loads once. A test module declares its cases as `GRADED_EARLY = {case: (task number, {task file stem:
    "reference" or "tasks"})}`; the process starts when collection ends and grades while the tests before them
    run, and the `graded_early` fixture waits for a case's verdict: {"status", "text", "checks"}."""

    def __init__(self):
        self.process = None
        self.cases: dict = {}
        self.results: dict = {}
        self.problem = None
        self._directories: list[str] = []

    def start(self, cases: dict) -> None:
        from jaxgpt.grader import task_list

        self.wait()  # a process already running finishes first (only when a test asks for a case it lacks)
        if not self._directories:
            atexit.register(self.close)  # also when the tests that wait never run (-x, Ctrl-C)
        directory = tempfile.mkdtemp(prefix="jaxgpt-graded-early-")
        self._directories.append(directory)
        requests = []
        for case, (task, files) in cases.items():
            where = os.path.join(directory, case)
            os.mkdir(where)
            for stem, source in files.items():
                origin = {"reference": task_list.REFERENCE_DIR, "tasks": task_list.TASKS_DIR}[source]
                shutil.copy(origin / f"{stem}.py", os.path.join(where, f"{stem}.py"))
            requests.append({"id": case, "task": task, "directory": where})
        self.cases.update(cases)
        self._out, self._err = tempfile.TemporaryFile("w+"), tempfile.TemporaryFile("w+")
        self.problem = None
        self.process = subprocess.Popen([sys.executable, "-c", _GRADE, json.dumps(requests)],
                                        cwd=task_list.REPO_ROOT, stdin=subprocess.DEVNULL, stdout=self._out,
                                        stderr=self._err, text=True)

    def wait(self) -> None:
        if self.process is None:
            return
        process, self.process = self.process, None
        try:
            code = process.wait(timeout=EARLY_GRADING_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            self.problem = f"the grading process took over {EARLY_GRADING_TIMEOUT_S} s"
            return
        self._out.seek(0)
        self._err.seek(0)
        for line in self._out.read().splitlines():
            if line.startswith('{"id": '):
                result = json.loads(line)
                self.results[result.pop("id")] = result
        if code != 0:
            self.problem = f"the grading process failed:\n{self._err.read()[-3000:]}"

    def close(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self.process = None
        for directory in self._directories:
            shutil.rmtree(directory, ignore_errors=True)

    def verdict(self, case: str, module) -> dict:
        if case not in self.cases:  # collection did not start it (a plugin of its own collecting, say)
            self.start(getattr(module, "GRADED_EARLY"))
        if case not in self.results:
            self.wait()
        assert case in self.results, f"{case} was not graded: {self.problem}"
        return self.results[case]


_EARLY_GRADING = _EarlyGrading()


@pytest.fixture
def graded_early(request):
    """`graded_early(case)`: the verdict of a case in the test module's GRADED_EARLY (see _EarlyGrading)."""
    return lambda case: _EARLY_GRADING.verdict(case, request.module)
