"""Running one task's suite against one implementation, in this process, and saying the verdict in words.

The notebook's check cells, the `jaxgpt check` command and the mistake-catalogue self-test all go through
`run_suite`, so what a learner sees is what the project tests.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import os
import sys
import time
from typing import Any, Mapping

from jaxgpt import catalog, implementation, outcomes

DEFAULT_TIMEOUT_S = 60.0
_SYMBOL = {outcomes.PASSED: "✓", outcomes.FAILED: "✗", outcomes.ERROR: "✗", outcomes.MISSING: "✗",
           outcomes.NOT_STARTED: "·", outcomes.BLOCKED: "↑", outcomes.SKIPPED: "-"}


@dataclasses.dataclass
class CheckResult:
    name: str  # what was checked, in words (the test's docstring)
    status: str
    message: str = ""


@dataclasses.dataclass
class Verdict:
    task: catalog.Task
    checks: list[CheckResult]
    seconds: float = 0.0

    @property
    def status(self) -> str:
        statuses = {c.status for c in self.checks if c.status != outcomes.SKIPPED}
        if not statuses:
            return outcomes.ERROR
        if statuses == {outcomes.PASSED}:
            return outcomes.PASSED
        if statuses == {outcomes.NOT_STARTED}:
            return outcomes.NOT_STARTED
        if outcomes.BLOCKED in statuses and statuses <= {outcomes.BLOCKED, outcomes.NOT_STARTED,
                                                          outcomes.PASSED}:
            return outcomes.BLOCKED
        if statuses <= {outcomes.NOT_STARTED, outcomes.PASSED}:
            return "in progress"
        return outcomes.FAILED

    @property
    def passed(self) -> bool:
        return self.status == outcomes.PASSED

    def text(self, verbose: bool = False) -> str:
        t = self.task
        n_pass = sum(c.status == outcomes.PASSED for c in self.checks)
        counted = [c for c in self.checks if c.status != outcomes.SKIPPED]
        head = f"Task {t.number} · {t.title}: "
        if self.status == outcomes.PASSED:
            head += f"all {len(counted)} checks pass. Well done!"
        elif self.status == outcomes.NOT_STARTED:
            head += "not started yet. Fill in the stub, then run the check again."
        elif self.status == outcomes.BLOCKED:
            blocked = next(c for c in self.checks if c.status == outcomes.BLOCKED)
            head += blocked.message[0].upper() + blocked.message[1:]
        else:
            head += f"{n_pass} of {len(counted)} checks pass."
        lines = [head]
        if self.status in (outcomes.NOT_STARTED, outcomes.BLOCKED) and not verbose:
            return lines[0]
        for check in self.checks:
            lines.append(f"  {_SYMBOL.get(check.status, '?')} {check.name}")
            if check.status not in (outcomes.PASSED, outcomes.NOT_STARTED) and check.message:
                lines.extend("      " + line for line in check.message.splitlines())
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.text()

    def _repr_pretty_(self, printer, cycle):  # IPython shows the words, not the dataclass
        printer.text(self.text())


class _Collector:
    """A pytest plugin object: hands the implementation to the suite and gathers each check's outcome."""

    jaxgpt_injects_implementation = True

    def __init__(self, impl: implementation.Implementation, task: catalog.Task):
        self.implementation = impl
        self.task = task
        self.results: list[CheckResult] = []
        self._by_id: dict[str, CheckResult] = {}

    def pytest_collectreport(self, report):
        if report.failed:
            self.results.append(CheckResult(
                "the task's checks load", outcomes.ERROR,
                f"the test file could not be loaded: {str(report.longrepr).strip().splitlines()[-1]}"))

    def pytest_runtest_logreport(self, report):
        status = getattr(report, "jaxgpt_status", None)
        if report.when == "call" or (report.when == "setup" and not report.passed) or (
                report.when == "teardown" and report.failed):
            if status is None:
                status = outcomes.PASSED if report.passed else (
                    outcomes.SKIPPED if report.skipped else outcomes.ERROR)
            result = self._by_id.get(report.nodeid)
            if result is None:
                result = CheckResult(_describe(report), status, getattr(report, "jaxgpt_message", ""))
                self._by_id[report.nodeid] = result
                self.results.append(result)
            elif result.status == outcomes.PASSED and status != outcomes.PASSED:
                result.status, result.message = status, getattr(report, "jaxgpt_message", "")


def _describe(report) -> str:
    doc = getattr(report, "jaxgpt_doc", None)
    if doc:
        return doc
    name = report.nodeid.split("::")[-1]
    return name.removeprefix("test_").replace("_", " ")


def run_suite(task: int | catalog.Task, impl: Any = "tasks", timeout_s: float = DEFAULT_TIMEOUT_S,
              keyword: str | None = None) -> Verdict:
    """Runs task `task`'s checks against `impl` (see `implementation.resolve`) and returns the verdict."""
    import pytest

    task = task if isinstance(task, catalog.Task) else catalog.get_task(task)
    impl = implementation.resolve(impl)
    collector = _Collector(impl, task)
    if not task.test_file.exists():
        raise FileNotFoundError(
            f"{task.test_file} is missing. The checks live in the repository's tests/ folder: install the "
            "challenge from a clone with `pip install -e .` so that they can be found.")
    # --tb=native: pytest's own long tracebacks of chained JAX errors cost seconds, and the learner never sees
    # them (outcomes.classify writes the sentence).
    args = [str(task.test_file), "-q", "--no-header", "-p", "no:cacheprovider", "-p", "no:faulthandler",
            "--capture=no", "--tb=native", "-o", f"timeout={timeout_s:g}", f"--rootdir={catalog.REPO_ROOT}",
            "-c", str(catalog.REPO_ROOT / "pyproject.toml"), "-W", "ignore::DeprecationWarning"]
    if keyword:
        args += ["-k", keyword]
    started = time.perf_counter()
    sink = io.StringIO()
    with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink), _fresh_test_module(task):
        pytest.main(args, plugins=[collector])
    verdict = Verdict(task, collector.results, time.perf_counter() - started)
    if not verdict.checks:
        verdict.checks.append(CheckResult("the task's checks run", outcomes.ERROR,
                                          "no check ran; pytest said:\n" + sink.getvalue()[-1500:]))
    return verdict


@contextlib.contextmanager
def _fresh_test_module(task: catalog.Task):
    # pytest caches imported test modules in sys.modules; a second run in the same process (the notebook,
    # the catalogue self-test) must see this run's implementation, so the module is imported afresh.
    for name in [m for m in sys.modules if m.endswith(f"test_{task.stem}") or m == "conftest"]:
        sys.modules.pop(name, None)
    yield


def check(task: int, namespace: Mapping[str, Any] | None = None, timeout_s: float = DEFAULT_TIMEOUT_S
          ) -> Verdict:
    """The notebook's check cell: grades the names defined in the notebook and prints the verdict."""
    if namespace is None:
        namespace = sys._getframe(1).f_globals
    verdict = run_suite(task, implementation.NamespaceImplementation(namespace), timeout_s)
    print(verdict.text())
    return _Quiet(verdict)


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
