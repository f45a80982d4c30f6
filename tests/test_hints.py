"""Hint ladders that climb, revealed one rung at a time, and verdicts that point to the rung about a failure.

- Every ladder of tasks 1-8 climbs: a question without code, then the idea and the API with shapes, then a
  skeleton with blanks (`___`), then the key lines; the `for:` lines that say which failures a rung is about
  are never shown, and every check of those tasks, failing, is pointed to a rung.
- `hint(N)` and `jaxgpt hint N` show the next rung, `hint(N, R)` rung R itself.
- A failing check's verdict ends with the pointer to its rung, once per rung; a check that passed, did not
  start, could not load, or was "not checked" because another failed, points nowhere. One real grading run
  (a catalogue mistake of task 3) shows the pointer in the verdict a learner reads.
"""

from __future__ import annotations

import ast
import json
import re

import pytest

from jaxgpt import settings
from jaxgpt.grader import hints, mistakes, runner, task_list
from jaxgpt.grader.outcomes import Status

LADDER_TASKS = [task for task in task_list.TASKS if task.number <= 8]
_FENCED = re.compile(r"```python\n(.*?)```", re.DOTALL)
_SHAPE = re.compile(r"`\((?:[^`()]*,[^`()]*|[^`(),]+,)\)`")  # a shape in code: `(B, T, C)`, `(C,)`


def _check_names(task: task_list.Task) -> list[str]:
    """The first line of every check's docstring: the names a verdict shows."""
    names = []
    for node in ast.parse(task.test_file.read_text()).body:
        if isinstance(node, ast.FunctionDef) and node.name.startswith("test_"):
            doc = ast.get_docstring(node)
            if doc:
                names.append(doc.splitlines()[0].rstrip("."))
    return names


@pytest.mark.parametrize("task", LADDER_TASKS, ids=lambda t: f"task{t.number}")
def test_every_ladder_climbs_from_a_question_to_the_key_lines(task):
    """Rung 1 a question without code, rung 2 the idea and the API with shapes, rung 3 a skeleton with
    blanks, the last rung the key lines"""
    ladder = hints.rungs(task)
    assert len(ladder) >= 4, f"task {task.number} has {len(ladder)} rungs"
    first, idea, skeleton, last = ladder[0], ladder[1], ladder[2], ladder[-1]
    assert "`" not in first.text and "?" in first.text, f"task {task.number}'s first rung:\n{first.text}"
    assert _SHAPE.search(idea.text), f"task {task.number}'s second rung names no shape:\n{idea.text}"
    blocks = _FENCED.findall(skeleton.text)
    assert blocks and any("___" in block for block in blocks), f"task {task.number}'s third rung has no blanks"
    key_lines = _FENCED.findall(last.text)
    assert key_lines and not any("___" in block for block in key_lines)
    for block in blocks + key_lines:  # each is Python (with a name in every blank)
        ast.parse(block.replace("___", "blank"))
    assert [r.title for r in (first, idea, skeleton, last)] == [
        "a question", "the idea and the API", "a skeleton", "the key lines"]
    assert not any("<!--" in text or "for:" in text for text in hints.ladder(task)), "a for: line is shown"


@pytest.mark.parametrize("task", LADDER_TASKS, ids=lambda t: f"task{t.number}")
def test_every_check_points_to_a_rung(task):
    """Each check of tasks 1-8, failing, points to the rung about it (from its name alone, if the message says
    nothing more)"""
    names = _check_names(task)
    assert names
    unpointed = [name for name in names if hints.rung_for(task, name, "") is None]
    assert not unpointed, f"task {task.number}: no rung is about {unpointed}"


def test_the_message_names_the_rung_before_the_check_does():
    """The "Likely cause" wins over the rest of the message, the message over the check's name, and within one
    text the phrase that comes first"""
    task = task_list.get_task(3)
    dropout_check = "Dropout acts on the attention weights, at the Head's dropout_rate, only in training"
    assert hints.rung_for(task, dropout_check, "") == 3
    assert hints.rung_for(task, "Same steps as the reference Head on its parameters",
                          "with deterministic=False and dropout_rate=0.37, Head's dropouts differ: the dropout "
                          "that should act on the attention weights (wei, after the softmax) acts on x") == 3
    assert hints.rung_for(task, dropout_check, "Head's output is not what was expected: ... dropout ...\n"
                          "  Likely cause: the scores are scaled by C ** -0.5; scale by head_size ** -0.5.") == 2
    assert hints.rung_for(task, dropout_check, "not checked: Head's parameter tree is not the lesson's") is None


def test_hints_are_revealed_one_rung_at_a_time_or_by_number(tmp_path, capsys, monkeypatch):
    """hint(N) shows the next rung, hint(N, R) rung R itself; the count never goes back; the command line
    remembers it"""
    task = task_list.get_task(3)
    ladder = hints.rungs(task)
    monkeypatch.setattr(hints, "_shown_in_kernel", {})
    hints.hint(3)
    said = capsys.readouterr().out
    assert said.startswith(f"Hint 1 of {len(ladder)} for task 3 (a question):") and ladder[0].text in said
    hints.hint(3, 3)
    said = capsys.readouterr().out
    assert said.startswith(f"Hint 3 of {len(ladder)} for task 3 (a skeleton):") and ladder[2].text in said
    hints.hint(3, 2)  # looking back does not lower the count
    assert ladder[1].text in capsys.readouterr().out
    hints.hint(3)
    assert ladder[3].text in capsys.readouterr().out
    hints.hint(3, 99)
    assert f"Task 3 has hints 1 to {len(ladder)}; there is no hint 99." in capsys.readouterr().out

    state = tmp_path / "hints.json"
    assert hints.next_hint_cli(3, state).startswith("Hint 1 of")
    assert hints.next_hint_cli(3, state, rung=len(ladder)).startswith(f"Hint {len(ladder)} of")
    assert json.loads(state.read_text()) == {"3": len(ladder)}
    assert hints.next_hint_cli(3, state).startswith("That was the last of task 3's")


def _verdict(*checks: runner.CheckResult) -> runner.Verdict:
    return runner.Verdict(task_list.get_task(3), list(checks))


def test_verdict_points_each_failing_check_to_its_rung_once():
    """A failing check's verdict ends with the pointer to its rung; a second check about the same rung adds
    none; passed, not started, load errors and "not checked" add none"""
    scale = "Head's output is not what was expected.\n  Likely cause: the scores are scaled by C ** -0.5."
    dropout = "with deterministic=False and dropout_rate=0.37, Head's dropouts differ from the lesson's"
    text = _verdict(
        runner.CheckResult("The parameters are key, query and value kernels", Status.PASSED),
        runner.CheckResult("Same numbers as Flax's nn.dot_product_attention with a causal mask", Status.FAILED,
                           scale),
        runner.CheckResult("Same numbers as attention computed by hand in float64", Status.FAILED, scale),
        runner.CheckResult("Dropout acts on the attention weights", Status.FAILED, dropout),
    ).text()
    pointer2, pointer3 = hints.pointer(task_list.get_task(3), 2), hints.pointer(task_list.get_task(3), 3)
    assert pointer2 == ("→ Hint 2 of task 3 is about this: hint(3, 2) in the notebook, `jaxgpt hint 3 2` in "
                        "a terminal.")
    lines = text.splitlines()
    assert lines.count("      " + pointer2) == 1 and lines.count("      " + pointer3) == 1, text
    likely_cause = lines.index("        Likely cause: the scores are scaled by C ** -0.5.")
    assert lines.index("      " + pointer2) == likely_cause + 1, text
    assert lines[-1] == "      " + pointer3, text

    quiet = _verdict(
        runner.CheckResult("The output has shape (B, T, head_size) and dtype float32", Status.NOT_STARTED,
                           "Task 3: write Head.__call__"),
        runner.CheckResult("Position t does not depend on tokens after t", Status.SKIPPED, "not run"),
    ).text(verbose=True)
    loading = _verdict(runner.CheckResult("The output has shape (B, T, head_size)", Status.ERROR,
                                          "name 'jnp' is not defined", load_error=True)).text(verbose=True)
    knock_on = _verdict(runner.CheckResult("Dropout acts on the attention weights", Status.FAILED,
                                           "not checked: in training mode Head does not compute ...")).text()
    for said in (quiet, loading, knock_on):
        assert "is about this" not in said, said


def test_a_graded_mistake_points_to_the_rung_about_it(tmp_path, monkeypatch):
    """Task 3 graded on catalogue mistakes, as a learner's code is (one check each, for time): the scale by C
    points to rung 2 (the scale), dropout on the scores to rung 3 (where dropout goes)"""
    task = task_list.get_task(3)
    for stem, rung, check in (("mistake_scale_by_n_embd", 2, "test_matches_flax_dot_product_attention"),
                              ("mistake_dropout_on_scores", 3, "test_dropout")):
        entry = next(e for e in mistakes.entries(task) if e.path.stem == stem)
        monkeypatch.setenv(settings.CATALOGUE_EXCLUDE, str(entry.path))
        verdict = runner.run_suite(task, mistakes.overlay(entry, tmp_path), timeout_s=120, keyword=check)
        text = verdict.text()
        assert not verdict.passed and hints.pointer(task, rung) in text, text
