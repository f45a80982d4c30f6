"""Running one task's suite against one implementation and saying the verdict in words.

`run_suite` runs the suite in this process: the mistake catalogue, the self-tests and the grading worker
(jaxgpt/grader/worker.py) call it. What a learner runs (`jaxgpt check`, `jaxgpt progress`, `jaxgpt watch` and the
notebook's `check(N)`) goes through `jaxgpt.grader.worker.Grader`, which runs the same `run_suite` in a spawned
worker process that can be stopped, so what a learner sees is what the project tests.

Around every check `run_suite` also:
  - puts JAX's global configuration back as it was (and says so when the learner's code changed it);
  - keeps what the learner's code printed (print, jax.debug.print), trimmed, under the check;
  - stops at the first check that runs past its time limit: the checks after it are "not run";
  - reports an implementation that cannot be loaded once, at the top, rather than once per check.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import re
import sys
import time
from typing import Any, Callable, Mapping

import pluggy

from jaxgpt.grader import task_list, implementation, outcomes, hints
from jaxgpt.grader.outcomes import Status

_hookwrapper = pluggy.HookimplMarker("pytest")(hookwrapper=True)  # pytest.hookimpl, without importing pytest

DEFAULT_TIMEOUT_S = 60.0
_SYMBOL = {Status.PASSED: "✓", Status.FAILED: "✗", Status.ERROR: "✗", Status.MISSING: "✗",
           Status.TIMED_OUT: "✗", Status.NOT_STARTED: "·", Status.BLOCKED: "↑", Status.SKIPPED: "-",
           Status.STOPPED: "-"}
_OUTPUT_LINES, _OUTPUT_LINE_CHARS = 8, 240
NOT_RUN_AFTER_TIMEOUT = "not run: an earlier check did not finish in time"
NOT_RUN_AFTER_STOP = "not run: the check was stopped"
NOT_RUN_AFTER_CRASH = "not run: the grading process ended"


@dataclasses.dataclass
class CheckResult:
    name: str  # what was checked, in words (the test's docstring)
    status: Status
    message: str = ""
    output: str = ""  # what the learner's code printed during the check, trimmed
    notes: list[str] = dataclasses.field(default_factory=list)  # said under the check whatever its status
    nodeid: str = ""
    load_error: bool = False  # it failed only because the implementation could not be loaded


@dataclasses.dataclass
class Verdict:
    task: task_list.Task
    checks: list[CheckResult]
    seconds: float = 0.0
    load_error: str | None = None  # said once, at the top; the checks it kept from running are skipped
    stopped: bool = False  # Ctrl-C / the notebook's Stop before every check ran: never a pass
    notes: list[str] = dataclasses.field(default_factory=list)  # said under the first line

    @property
    def status(self) -> Status:
        if self.stopped:
            return Status.STOPPED
        statuses = {c.status for c in self.checks if c.status != Status.SKIPPED}
        if self.load_error is not None:
            return Status.FAILED
        if not statuses:
            return Status.ERROR
        if statuses == {Status.PASSED} and not self.not_run:
            return Status.PASSED
        if statuses == {Status.NOT_STARTED}:
            return Status.NOT_STARTED
        if Status.BLOCKED in statuses and statuses <= {Status.BLOCKED, Status.NOT_STARTED, Status.PASSED}:
            return Status.BLOCKED
        if statuses <= {Status.NOT_STARTED, Status.PASSED}:
            return Status.IN_PROGRESS
        return Status.FAILED

    @property
    def passed(self) -> bool:
        return self.status == Status.PASSED

    @property
    def not_run(self) -> list[CheckResult]:
        """Checks that did not run because an earlier one timed out or the run was stopped."""
        return [c for c in self.checks if c.status == Status.SKIPPED
                and c.message in (NOT_RUN_AFTER_TIMEOUT, NOT_RUN_AFTER_STOP, NOT_RUN_AFTER_CRASH)]

    def text(self, verbose: bool = False) -> str:
        t = self.task
        status = self.status
        counted = [c for c in self.checks if c.status != Status.SKIPPED]
        n_pass = sum(c.status == Status.PASSED for c in self.checks)
        head = f"Task {t.number} · {t.title}: "
        if status == Status.STOPPED:
            ran = [c for c in counted if c.status != Status.STOPPED]
            head += (f"stopped after {len(ran)} of {len(self.checks)} checks (Ctrl-C or the notebook's Stop). "
                     "A stopped check is not graded: run it again to finish it.")
        elif self.load_error is not None and status == Status.FAILED:
            head += _capitalised(self.load_error)
        elif status == Status.PASSED:
            head += f"all {len(counted)} checks pass. Well done!"
        elif status == Status.NOT_STARTED:
            head += "not started yet. Fill in the stub, then run the check again."
        elif status == Status.BLOCKED:
            blocked = next(c for c in self.checks if c.status == Status.BLOCKED)
            head += _capitalised(blocked.message)
        else:
            head += f"{n_pass} of {len(counted)} checks pass."
            if self.not_run:
                reason = self.not_run[0].message.removeprefix("not run: ")
                head += f" {len(self.not_run)} more did not run: {reason}."
        lines = [head] + [f"  ({note})" for note in self.notes]
        quiet = status in (Status.NOT_STARTED, Status.BLOCKED) and not verbose
        skipped_for_load = [c for c in self.checks if c.load_error and c.status == Status.SKIPPED]
        shown_output = False
        said: dict[str, CheckResult] = {}  # a message shared by several checks is written out once
        previous = None  # the last message, written or referred to
        pointed: set[int] = set()  # the hint rungs already pointed to
        for check in self.checks:
            if quiet and not (check.output or check.notes):
                continue
            if check in skipped_for_load and not verbose:
                continue
            if check in self.not_run or check.status == Status.STOPPED:
                why = "stopped while it ran" if check.status == Status.STOPPED else "not run"
                lines.append(f"  - {check.name} ({why})")
                continue
            lines.append(f"  {_SYMBOL.get(check.status, '?')} {check.name}")
            if check.status not in (Status.PASSED, Status.NOT_STARTED) and check.message and not (
                    check.load_error and check.status == Status.SKIPPED):
                if check.message in said and not verbose:
                    first = said[check.message]
                    lines.append("      (the same as above)" if check.message == previous else
                                 f"      (the same as for “{_shortened(first.name, 60)}”)")
                else:
                    said[check.message] = check
                    lines.extend("      " + line for line in check.message.splitlines())
                previous = check.message
            rung = _rung_for(check, t)
            if rung is not None and rung not in pointed:  # each rung is pointed to once, under its first check
                pointed.add(rung)
                lines.append("      " + hints.pointer(t, rung))
            if check.output:
                # What the learner printed: under the first check that printed and under every failing one
                # (where it helps); the other checks only count their lines.
                if verbose or not shown_output or check.status != Status.PASSED:
                    shown_output = True
                    lines.append("      your code printed:")
                    lines.extend("        | " + line for line in check.output.splitlines())
                else:
                    n = _printed_lines(check.output)
                    lines.append(f"      (your code printed {n} line{'s' if n != 1 else ''} here too)")
            lines.extend("      note: " + note for note in check.notes)
        if skipped_for_load and not verbose:
            n = len(skipped_for_load)
            lines.append(f"  ({n} check{'s' if n != 1 else ''} could not run because of this.)")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.text()

    def _repr_pretty_(self, printer, cycle):  # IPython shows the words, not the dataclass
        printer.text(self.text())


def _rung_for(check: CheckResult, task: task_list.Task) -> int | None:
    """The hint rung about this check's failure (see jaxgpt/grader/hints.py), for a check that failed on
    the learner's own code; None for one that passed, did not run or could not load."""
    if check.status not in (Status.FAILED, Status.ERROR) or check.load_error:
        return None
    try:
        return hints.rung_for(task, check.name, check.message)
    except (OSError, UnicodeError):  # a hints file that cannot be read never costs the verdict
        return None


def _shortened(text: str, width: int) -> str:
    return text if len(text) <= width else text[:width - 1].rstrip() + "…"


def _printed_lines(output: str) -> int:
    lines = output.splitlines()
    more = re.fullmatch(r"\.\.\. \((\d+) more lines\)", lines[-1]) if lines else None
    return len(lines) - 1 + int(more.group(1)) if more else len(lines)


def _capitalised(text: str) -> str:
    return text[:1].upper() + text[1:] if text else text


def stopped_verdict(task: task_list.Task, checks: list[CheckResult], seconds: float = 0.0) -> Verdict:
    """A verdict for a run stopped by Ctrl-C / Stop: the checks that finished, and the rest not run."""
    return Verdict(task, list(checks), seconds, stopped=True)


# ----------------------------------------------------------------------------------------------------
# The in-process runner


Listener = Callable[[str, Any], None]  # ("collected", [(nodeid, name)]) / ("start", (nodeid, name)) /
#                                       ("result", CheckResult)


class _Collector:
    """A pytest plugin object: hands the implementation to the suite, gathers each check's outcome, keeps JAX's
    configuration from leaking between checks, and stops at the first time-out."""

    jaxgpt_injects_implementation = True

    def __init__(self, impl: implementation.Implementation, task: task_list.Task, listener: Listener | None):
        self.implementation = impl
        self.task = task
        self.listener = listener
        self.results: list[CheckResult] = []
        self.collected: list[tuple[str, str]] = []
        self.session = None
        self.stopped_after_timeout = False
        self.interrupted_by_user = False
        self.current: tuple[str, str] | None = None  # the check running now
        self._by_id: dict[str, CheckResult] = {}
        self._output: dict[str, str] = {}

    def _tell(self, kind: str, payload: Any) -> None:
        if self.listener is not None:
            self.listener(kind, payload)

    def pytest_sessionstart(self, session):
        self.session = session

    def pytest_keyboard_interrupt(self, excinfo):
        # pytest also ends a session it stops itself (collection errors, shouldstop) with a KeyboardInterrupt
        # subclass, `Session.Interrupted`; only a real Ctrl-C (or the notebook's Stop) is a stop.
        if type(excinfo.value).__name__ != "Interrupted":
            self.interrupted_by_user = True

    def pytest_collection_finish(self, session):
        self.collected = [(item.nodeid, _describe_item(item)) for item in session.items]
        self._tell("collected", list(self.collected))

    def pytest_collectreport(self, report):
        if report.failed:
            self.results.append(CheckResult(
                "the task's checks load", Status.ERROR,
                f"the test file could not be loaded: {str(report.longrepr).strip().splitlines()[-1]}"))

    @_hookwrapper
    def pytest_runtest_protocol(self, item, nextitem):
        self._tell("start", (item.nodeid, _describe_item(item)))
        self.current = (item.nodeid, _describe_item(item))
        before = _jax_configuration()
        outcome = yield
        changed = _restore_jax_configuration(before)
        if outcome.excinfo is not None:  # interrupted (Ctrl-C): the check did not finish, and is `current`
            return
        self.current = None
        result = self._by_id.get(item.nodeid)
        if result is None:
            return
        if changed:
            settings = ", ".join(f"{name} from {old!r} to {new!r}" for name, (old, new) in changed.items())
            result.notes.append(f"your code changed JAX's global configuration ({settings}); it was put back "
                                "after this check, so that the other checks run with the usual settings.")
        result.output = trim_output(self._output.pop(item.nodeid, ""))
        if result.status == Status.TIMED_OUT and self.session is not None:
            self.stopped_after_timeout = True
            self.session.shouldstop = "a check ran past its time limit"
        self._tell("result", result)

    @_hookwrapper
    def pytest_runtest_makereport(self, item, call):
        outcome = yield
        report = outcome.get_result()
        exc = call.excinfo.value if call.excinfo is not None else None
        report.jaxgpt_load_error = outcomes.is_load_error(exc)

    def pytest_runtest_logreport(self, report):
        # Each phase's report carries the output of the phases before it too: the latest one holds all of it.
        self._output[report.nodeid] = getattr(report, "capstdout", "") + getattr(report, "capstderr", "")
        status = getattr(report, "jaxgpt_status", None)
        if report.when == "call" or (report.when == "setup" and not report.passed) or (
                report.when == "teardown" and report.failed):
            if status is None:
                status = Status.PASSED if report.passed else (
                    Status.SKIPPED if report.skipped else Status.ERROR)
            status = Status(status)
            load_error = bool(getattr(report, "jaxgpt_load_error", False))
            result = self._by_id.get(report.nodeid)
            if result is None:
                result = CheckResult(_describe(report), status, getattr(report, "jaxgpt_message", ""),
                                     nodeid=report.nodeid, load_error=load_error)
                self._by_id[report.nodeid] = result
                self.results.append(result)
            elif result.status == Status.PASSED and status != Status.PASSED:
                result.status, result.message = status, getattr(report, "jaxgpt_message", "")
                result.load_error = load_error


def _describe(report) -> str:
    doc = getattr(report, "jaxgpt_doc", None)
    if doc:
        return doc
    name = report.nodeid.split("::")[-1]
    return name.removeprefix("test_").replace("_", " ")


def _describe_item(item) -> str:
    function = getattr(item, "function", None)
    doc = (getattr(function, "__doc__", None) or "").strip()
    if doc:
        return doc.splitlines()[0].rstrip(".")
    return item.nodeid.split("::")[-1].removeprefix("test_").replace("_", " ")


def trim_output(text: str, max_lines: int = _OUTPUT_LINES, max_chars: int = _OUTPUT_LINE_CHARS) -> str:
    """What the learner's code printed, at most `max_lines` lines of at most `max_chars` characters."""
    lines = text.rstrip().splitlines()
    if not lines:
        return ""
    kept = [line if len(line) <= max_chars else line[:max_chars] + " ..." for line in lines[:max_lines]]
    if len(lines) > max_lines:
        kept.append(f"... ({len(lines) - max_lines} more lines)")
    return "\n".join(kept)


# JAX's configuration, as the learner's code may change it: every value jax.config knows, compared and restored
# one by one. Only read when JAX is loaded (a suite that never imported it cannot have changed it).
def _jax_configuration() -> dict[str, Any]:
    jax = sys.modules.get("jax")
    values = getattr(getattr(jax, "config", None), "values", None)
    return dict(values) if isinstance(values, Mapping) else {}


def _restore_jax_configuration(before: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    if not before:
        return {}
    changed = {}
    jax = sys.modules["jax"]
    for name, value in _jax_configuration().items():
        if name in before and before[name] != value:
            try:
                jax.config.update(name, before[name])
            except Exception:  # a setting fixed once JAX has started (jax_platforms): nothing to put back
                continue
            changed[name] = (before[name], value)
    return changed


def run_suite(task: int | task_list.Task, impl: Any = "tasks", timeout_s: float = DEFAULT_TIMEOUT_S,
              keyword: str | None = None, listener: Listener | None = None) -> Verdict:
    """Runs task `task`'s checks against `impl` (see `implementation.resolve`) in this process and returns the
    verdict. `listener(kind, payload)`, if given, hears of each check as it starts and ends."""
    import pytest

    task = task if isinstance(task, task_list.Task) else task_list.get_task(task)
    impl = implementation.resolve(impl)
    collector = _Collector(impl, task, listener)
    if not task.test_file.exists():
        raise FileNotFoundError(
            f"{task.test_file} is missing. The checks live in the repository's tests/ folder: install the "
            "challenge from a clone with `pip install -e .` so that they can be found.")
    # --tb=native: pytest's own long tracebacks of chained JAX errors cost seconds, and the learner never sees
    # them (outcomes.classify writes the sentence). --capture=sys keeps each check's printed output apart.
    # --assert=plain: pytest would otherwise parse and recompile the test module and conftest.py at every check
    # (the module is imported afresh each time, see _fresh_test_module), a third of a quick check's time, for
    # an explanation of failed asserts that outcomes._assertion_text cuts off anyway.
    args = [str(task.test_file), "-q", "--no-header", "-p", "no:cacheprovider", "-p", "no:faulthandler",
            "--assert=plain",
            "--capture=sys", "--tb=native", "-o", f"timeout={timeout_s:g}", f"--rootdir={task_list.REPO_ROOT}",
            "-c", str(task_list.REPO_ROOT / "pyproject.toml"), "-W", "ignore::DeprecationWarning",
            "-m", ""]  # every check of the task, whatever the project's own default selection (addopts' -m)
    if keyword:
        args += ["-k", keyword]
    started = time.perf_counter()
    sink = io.StringIO()
    with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink), _fresh_test_module(task):
        exit_code = pytest.main(args, plugins=[collector])
    stopped = exit_code == pytest.ExitCode.INTERRUPTED and collector.interrupted_by_user
    if stopped and collector.current is not None and collector.current[0] not in collector._by_id:
        collector.results.append(CheckResult(collector.current[1], Status.STOPPED, nodeid=collector.current[0]))
    verdict = finish_verdict(task, collector.collected, collector.results, time.perf_counter() - started,
                             stopped=stopped)
    if not verdict.checks:
        verdict.checks.append(CheckResult("the task's checks run", Status.ERROR,
                                          "no check ran; pytest said:\n" + sink.getvalue()[-1500:]))
    return verdict


def finish_verdict(task: task_list.Task, collected: list[tuple[str, str]], results: list[CheckResult],
                   seconds: float, stopped: bool = False, not_run_reason: str | None = None) -> Verdict:
    """The verdict from the checks that ran: the collected ones that did not are "not run" (for
    `not_run_reason`), and a load error shared by the checks is said once."""
    by_id = {r.nodeid: r for r in results if r.nodeid}
    ordered = [r for r in results if not r.nodeid]  # a test file that did not load, or a crash between checks
    if not_run_reason is None:
        timed_out = any(r.status == Status.TIMED_OUT for r in results)
        not_run_reason = NOT_RUN_AFTER_TIMEOUT if timed_out and not stopped else NOT_RUN_AFTER_STOP
    for nodeid, name in collected:
        if nodeid in by_id:
            ordered.append(by_id.pop(nodeid))
        elif nodeid:
            ordered.append(CheckResult(name, Status.SKIPPED, not_run_reason, nodeid=nodeid))
    ordered.extend(by_id.values())
    load_error = None
    for result in ordered:
        if result.load_error and result.status in (Status.ERROR, Status.MISSING):
            load_error = load_error or result.message
            if result.message == load_error:
                result.status = Status.SKIPPED
    return Verdict(task, ordered, seconds, load_error=load_error, stopped=stopped)


@contextlib.contextmanager
def _fresh_test_module(task: task_list.Task):
    # pytest caches imported test modules in sys.modules; a second run in the same process (the notebook,
    # the catalogue self-test, the worker) must see this run's implementation, so the module is imported afresh.
    for name in [m for m in sys.modules if m.endswith(f"test_{task.stem}") or m == "conftest"]:
        sys.modules.pop(name, None)
    yield
