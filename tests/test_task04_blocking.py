"""Task 4 builds on task 3: with a finished MultiHeadAttention and task 3's untouched stub, the verdict must
say "blocked: finish task 3 first", not "failed" or "not started".

Graded in a subprocess, as tests/test_catalogue.py does, so that the task suite runs as it does for a learner
and not inside this pytest session.
"""

import json
import shutil
import subprocess
import sys

from jaxgpt.grader import task_list

GRADE = """
import json, sys
from jaxgpt.grader.runner import run_suite
verdict = run_suite(4, sys.argv[1])
print(json.dumps({"status": verdict.status, "text": verdict.text(verbose=True),
                  "checks": [c.status for c in verdict.checks]}))
"""


def test_unfinished_task_3_blocks_task_4(tmp_path):
    shutil.copy(task_list.REFERENCE_DIR / "task04_multihead.py", tmp_path / "task04_multihead.py")
    shutil.copy(task_list.TASKS_DIR / "task03_head.py", tmp_path / "task03_head.py")
    done = subprocess.run([sys.executable, "-c", GRADE, str(tmp_path)], capture_output=True, text=True,
                          cwd=task_list.REPO_ROOT, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    verdict = json.loads(done.stdout.strip().splitlines()[-1])
    assert verdict["status"] == "blocked", verdict["text"]
    assert set(verdict["checks"]) == {"blocked"}, verdict["text"]
    assert "builds on task 3" in verdict["text"], verdict["text"]
