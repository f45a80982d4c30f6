"""Task 6 builds on tasks 1 and 5: with a finished task 6 and the untouched stub of task 5 (or of task 1), the
verdict must say "blocked: finish task N first", not "failed" or "not started".

Graded in a subprocess, as tests/test_catalogue.py does, so that the task suite runs as it does for a learner
and not inside this pytest session: the process that tests/conftest.py starts as soon as collection ends, which
grades these cases and tests/test_task04_blocking.py's while the tests before them run.
"""

import json
import shutil
import subprocess
import sys

import pytest

from jaxgpt.grader import task_list

STEMS = {n: task_list.get_task(n).stem for n in (1, 5, 6)}
GRADED_EARLY = {f"task6_on_task{unfinished}_stub": (6, {STEMS[6]: "reference", STEMS[finished]: "reference",
                                                        STEMS[unfinished]: "tasks"})
                for unfinished, finished in ((5, 1), (1, 5))}


@pytest.mark.parametrize("unfinished", [5, 1], ids=["task5_stub", "task1_stub"])
def test_unfinished_earlier_task_blocks_task_6(graded_early, unfinished):
    verdict = graded_early(f"task6_on_task{unfinished}_stub")
    assert verdict["status"] == "blocked", verdict["text"]
    # The LayerNorm checks need neither earlier task and pass; every check of Block and MiniGPT is blocked.
    assert set(verdict["checks"]) == {"passed", "blocked"}, verdict["text"]
    assert f"builds on task {unfinished}" in verdict["text"], verdict["text"]
    assert f"task {unfinished}" in verdict["text"].splitlines()[0], verdict["text"]


GRADE_MANY = """
import json, sys
from jaxgpt.grader.runner import run_suite
for directory in sys.argv[1:]:
    verdict = run_suite(6, directory, keyword="block_same_as_reference or block_dropout")
    print(json.dumps({"status": verdict.status, "text": verdict.text(verbose=True)}))
"""


@pytest.mark.slow
def test_a_wrong_earlier_part_is_named_with_its_task(tmp_path):
    """Task 6 right, but the learner's task-1 FeedForward (GELU) or task-5 attention (no scale) wrong: the
    verdict of task 6's Block says which part is wrong and in which task, verified by running that part alone."""
    stems = {n: task_list.get_task(n).stem for n in (1, 5, 6)}
    cases = {1: ("FeedForward", task_list.TESTS_DIR / "catalogue" / stems[1] / "mistake_gelu.py"),
             5: ("EinsumMultiHeadAttention", task_list.TESTS_DIR / "catalogue" / stems[5] / "mistake_no_scale.py")}
    directories = []
    for task, (_, wrong) in cases.items():
        directory = tmp_path / f"wrong_task{task}"
        directory.mkdir()
        for n in (1, 5, 6):
            shutil.copy(task_list.REFERENCE_DIR / f"{stems[n]}.py", directory / f"{stems[n]}.py")
        shutil.copy(wrong, directory / f"{stems[task]}.py")
        directories.append(str(directory))
    done = subprocess.run([sys.executable, "-c", GRADE_MANY, *directories], capture_output=True, text=True,
                          cwd=task_list.REPO_ROOT, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    verdicts = [json.loads(line) for line in done.stdout.strip().splitlines()[-2:]]
    for (task, (part, _)), verdict in zip(cases.items(), verdicts):
        assert verdict["status"] == "failed", verdict["text"]
        assert f"is your {part} from task {task}" in verdict["text"], verdict["text"]
