"""Task 4 builds on task 3: with a finished MultiHeadAttention and task 3's untouched stub, the verdict must
say "blocked: finish task 3 first", not "failed" or "not started".

Graded in a subprocess, as tests/test_catalogue.py does, so that the task suite runs as it does for a learner
and not inside this pytest session: the process that tests/conftest.py starts as soon as collection ends, which
grades this case and tests/test_task06_blocking.py's while the tests before them run.
"""

GRADED_EARLY = {"task4_on_task3_stub": (4, {"task04_multihead": "reference", "task03_head": "tasks"})}


def test_unfinished_task_3_blocks_task_4(graded_early):
    verdict = graded_early("task4_on_task3_stub")
    assert verdict["status"] == "blocked", verdict["text"]
    assert set(verdict["checks"]) == {"blocked"}, verdict["text"]
    assert "builds on task 3" in verdict["text"], verdict["text"]
