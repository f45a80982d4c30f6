"""The project's proof that the task suites work: every catalogued mistake is rejected (with its
diagnosis where it names one) and every differently written correct solution is accepted.

Each task's catalogue is graded in one subprocess (the same `run_suite` a learner's check uses), so the
suites run as they do for a learner and not inside this pytest session.
"""

import functools
import json
import subprocess
import sys

import pytest

from jaxgpt import catalog, mistakes

ENTRIES = mistakes.entries()


@functools.lru_cache(maxsize=None)
def _graded(task_number: int) -> dict:
    done = subprocess.run([sys.executable, "-m", "jaxgpt.mistakes", str(task_number)], capture_output=True,
                          text=True, cwd=catalog.REPO_ROOT, timeout=1500)
    if done.returncode != 0:
        raise RuntimeError(f"grading task {task_number}'s catalogue failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.timeout(1800)
@pytest.mark.parametrize("entry", ENTRIES, ids=[e.id for e in ENTRIES])
def test_catalogue_entry(entry):
    result = _graded(entry.task.number)[entry.id]
    assert result["problem"] is None, f"{entry.id} ({entry.kind}: {entry.description}): {result['problem']}"


@pytest.mark.parametrize("task", catalog.TASKS, ids=[t.stem for t in catalog.TASKS])
def test_every_task_has_a_catalogue(task):
    found = mistakes.entries(task)
    n_wrong = sum(e.kind == "mistake" for e in found)
    n_right = sum(e.kind == "correct" for e in found)
    assert n_wrong >= 4, f"task {task.number} catalogues {n_wrong} mistakes; at least 4 are required"
    assert n_right >= 1, f"task {task.number} catalogues no correct alternative; at least 1 is required"
