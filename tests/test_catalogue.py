"""The project's proof that the task suites work: every catalogued mistake is rejected (with its
diagnosis where it names one) and every differently written correct solution is accepted.

Entries are graded in subprocesses (`python -m jaxgpt.grader.mistakes N`, the same `run_suite` a learner's check
uses), so the suites run as they do for a learner and not inside this pytest session.

The whole catalogue takes minutes per task, so it is marked `slow`: `uv run pytest -m slow` (and CI) grades
every entry, and the default `uv run pytest` grades a fixed sample of it (`sample` below). The sample is
graded in a background process that starts as soon as collection ends (`start_early`), so that on a 2-core
machine its minute of grading overlaps the rest of the run; its verdicts are checked by
tests/test_zz_catalogue_sample.py, which sorts last so as to be run last.
"""

import atexit
import functools
import json
import subprocess
import sys
import tempfile

import pytest

from jaxgpt.grader import task_list, mistakes

ENTRIES = mistakes.entries()
# What each entry's grading said, by entry id, from whichever test graded it first in this session.
_RESULTS: dict[str, dict] = {}


def _once(fn):
    """Caches a grading run's result or its failure: a broken run fails every test that needs it, once."""
    outcomes = {}

    @functools.wraps(fn)
    def wrapper(*args):
        if args not in outcomes:
            try:
                outcomes[args] = (True, fn(*args))
            except Exception as err:  # noqa: BLE001 - re-raised for every test that needs this run
                outcomes[args] = (False, err)
        ok, value = outcomes[args]
        if not ok:
            raise value
        return value
    return wrapper


def _run_json(command: list[str], what: str) -> dict:
    done = subprocess.run(command, capture_output=True, text=True, cwd=task_list.REPO_ROOT, timeout=1500)
    if done.returncode != 0:
        raise RuntimeError(f"grading {what} failed:\n{done.stderr[-3000:]}")
    results = json.loads(done.stdout.strip().splitlines()[-1])
    _RESULTS.update(results)
    return results


@_once
def _graded(task_number: int) -> dict:
    return _run_json([sys.executable, "-m", "jaxgpt.grader.mistakes", str(task_number)],
                     f"task {task_number}'s catalogue")


def check_entry(entry, result: dict) -> None:
    assert result["problem"] is None, f"{entry.id} ({entry.kind}: {entry.description}): {result['problem']}"


@pytest.mark.slow
@pytest.mark.timeout(1800)
@pytest.mark.parametrize("entry", ENTRIES, ids=[e.id for e in ENTRIES])
def test_catalogue_entry(entry):
    check_entry(entry, _graded(entry.task.number)[entry.id])


def sample() -> list[mistakes.Entry]:
    """One entry per task, the same ones on every run: for an odd task its first mistake (by file name) whose
    verdict must name a diagnosis, for an even task its first correct alternative: 8 entries, four of each
    kind, where the whole catalogue has some twenty per task.

    Why this is representative for a quick run: what breaks the catalogue as a whole (laying an entry over
    the reference, the subprocess, `run_suite`, judging a verdict) breaks every entry, so any entry shows
    it; every task's suite is exercised on code that is not the reference; and each kind of judgement is
    made: a suite grown too strict rejects a correct alternative (a tolerance, a test of form rather than
    behaviour), a suite grown too loose or vague lets a mistake pass or stops naming its cause. (The
    reference itself, the strictness check every task gets, is graded by tests/test_grading.py.) What a
    sample cannot see is a change that lets one particular other mistake through, or rejects one other
    alternative: the whole catalogue runs under `uv run pytest -m slow`, and CI runs it.
    """
    chosen = []
    for task in task_list.TASKS:
        found = mistakes.entries(task)
        if task.number % 2:
            picks = [e for e in found if e.kind == "mistake" and e.diagnosis] or [
                e for e in found if e.kind == "mistake"]
        else:
            picks = [e for e in found if e.kind == "correct"]
        chosen += picks[:1]
    return chosen


SAMPLE = sample()

# Grades the chosen entries in one process: `python -m jaxgpt.grader.mistakes N` grades a whole task, so the
# task's entry list is narrowed to the sample first, and the rest of `mistakes.run` is what the full run uses.
_SAMPLE_DRIVER = """
import json, sys
from jaxgpt.grader import task_list, mistakes
wanted = set(sys.argv[1:])
every = mistakes.entries
mistakes.entries = lambda task=None: [e for e in every(task) if e.id in wanted]
results = {}
for task in task_list.TASKS:
    if mistakes.entries(task):
        results.update(mistakes.run(task))
sys.stdout.write(json.dumps(results) + "\\n")
"""
SAMPLE_TIMEOUT_S = 900


class _SampleRun:
    """The sample's grading in a background process, started early and waited for by the sample's tests."""

    def __init__(self):
        self.proc = None
        self._out = self._err = None

    def start(self, entries=None) -> None:
        if self.proc is not None:
            return
        # The whole catalogue may have graded them already.
        missing = [e.id for e in (SAMPLE if entries is None else entries) if e.id not in _RESULTS]
        if not missing:
            return
        self._out, self._err = tempfile.TemporaryFile("w+"), tempfile.TemporaryFile("w+")
        self.proc = subprocess.Popen([sys.executable, "-c", _SAMPLE_DRIVER, *missing], cwd=task_list.REPO_ROOT,
                                     stdin=subprocess.DEVNULL, stdout=self._out, stderr=self._err, text=True)
        atexit.register(self.stop)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    @_once
    def results(self) -> dict:
        self.start()
        if self.proc is not None:
            try:
                code = self.proc.wait(timeout=SAMPLE_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.stop()
                raise RuntimeError(f"grading the catalogue's sample took over {SAMPLE_TIMEOUT_S} s") from None
            self._out.seek(0)
            self._err.seek(0)
            out, err = self._out.read(), self._err.read()
            if code != 0:
                raise RuntimeError(f"grading the catalogue's sample failed:\n{err[-3000:]}")
            _RESULTS.update(json.loads(out.strip().splitlines()[-1]))
        return _RESULTS


SAMPLE_RUN = _SampleRun()


def _start_the_sample(items) -> None:
    """Starts grading the sample when the sample's tests are selected and the whole catalogue is not (the sample
    then reuses the whole catalogue's verdicts)."""
    chosen = [item.callspec.params["entry"] for item in items
              if getattr(item, "originalname", "") == "test_catalogue_sample"]
    if chosen and not any(getattr(item, "originalname", "") == "test_catalogue_entry" for item in items):
        SAMPLE_RUN.start(chosen)


def start_early(session, items):
    """Called by tests/conftest.py once collection is done: the sample's grading starts then, not when this
    file's first test runs, so that it overlaps as much of the run as it can."""
    _start_the_sample(session.items)


@pytest.fixture(autouse=True, scope="module")
def _start_the_sample_early(request):
    """Starts grading the sample as soon as this file's tests run, if collection did not (see start_early)."""
    _start_the_sample(request.session.items)
    yield


def test_sample_covers_every_task_and_both_kinds():
    assert sorted(e.task.number for e in SAMPLE) == [t.number for t in task_list.TASKS]
    assert {e.kind for e in SAMPLE} == {"mistake", "correct"}


@pytest.mark.parametrize("task", task_list.TASKS, ids=[t.stem for t in task_list.TASKS])
def test_every_task_has_a_catalogue(task):
    found = mistakes.entries(task)
    n_wrong = sum(e.kind == "mistake" for e in found)
    n_right = sum(e.kind == "correct" for e in found)
    assert n_wrong >= 4, f"task {task.number} catalogues {n_wrong} mistakes; at least 4 are required"
    assert n_right >= 1, f"task {task.number} catalogues no correct alternative; at least 1 is required"
