"""The mistake catalogue: realistic wrong solutions each suite must reject, and differently written right
ones it must accept.

`tests/catalogue/taskNN_<slug>/` holds one file per entry, laid out like `reference/taskNN_<slug>.py`:
  - a mistake sets `MISTAKE = "what the learner did"` and `DIAGNOSIS = "words the verdict must contain"`
    (or `DIAGNOSIS = None` where the suite can only say that the numbers are wrong);
  - a correct alternative sets `CORRECT = "how it differs from the reference"`.
Each entry is graded as the task's file of an otherwise reference implementation, through the same
`run_suite` that grades a learner.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

from jaxgpt.grader import task_list, runner, outcomes
from jaxgpt import settings


@dataclasses.dataclass
class Entry:
    task: task_list.Task
    path: Path
    kind: str  # "mistake" or "correct"
    description: str
    diagnosis: str | None

    @property
    def id(self) -> str:
        return f"{self.task.stem}/{self.path.stem}"


def entries(task: task_list.Task | None = None) -> list[Entry]:
    found = []
    for t in [task] if task else task_list.TASKS:
        for path in sorted(t.catalogue_dir.glob("*.py")) if t.catalogue_dir.is_dir() else []:
            found.append(_read_entry(t, path))
    return found


def _read_entry(task: task_list.Task, path: Path) -> Entry:
    values = {}
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            if node.targets[0].id in ("MISTAKE", "DIAGNOSIS", "CORRECT"):
                values[node.targets[0].id] = ast.literal_eval(node.value)
    if "CORRECT" in values:
        return Entry(task, path, "correct", values["CORRECT"], None)
    if "MISTAKE" not in values or "DIAGNOSIS" not in values:
        raise ValueError(f"{path}: a catalogue entry sets CORRECT, or both MISTAKE and DIAGNOSIS")
    return Entry(task, path, "mistake", values["MISTAKE"], values["DIAGNOSIS"])


def overlay(entry: Entry, workdir: Path) -> Path:
    """A directory laid out like reference/, with the entry in place of its task's file."""
    target = workdir / entry.path.stem
    target.mkdir(parents=True)
    for source in task_list.REFERENCE_DIR.glob("task*.py"):
        shutil.copy(source, target / source.name)
    shutil.copy(entry.path, target / f"{entry.task.stem}.py")
    return target


def judge(entry: Entry, verdict: runner.Verdict) -> str | None:
    """None when the suite treated the entry as the catalogue demands, else what went wrong."""
    text = verdict.text(verbose=True)
    if entry.kind == "correct":
        return None if verdict.passed else f"a correct alternative was rejected:\n{text}"
    if verdict.passed:
        return f"the mistake passed every check:\n{text}"
    if verdict.status in (outcomes.NOT_STARTED, outcomes.BLOCKED):
        return f"the mistake was read as {verdict.status!r} rather than rejected:\n{text}"
    if entry.diagnosis and entry.diagnosis.lower() not in text.lower():
        return f"rejected, but without the diagnosis {entry.diagnosis!r}:\n{text}"
    return None


def run(task: task_list.Task) -> dict[str, dict]:
    results = {}
    with tempfile.TemporaryDirectory(prefix="jaxgpt-catalogue-") as tmp:
        for entry in entries(task):
            # An entry may not diagnose itself through the catalogue table (jaxgpt/grader/differential.py).
            os.environ[settings.CATALOGUE_EXCLUDE] = str(entry.path)
            verdict = runner.run_suite(task, overlay(entry, Path(tmp)), timeout_s=120)
            results[entry.id] = {"problem": judge(entry, verdict), "status": verdict.status,
                                 "seconds": round(verdict.seconds, 2)}
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Grade a task's mistake catalogue; print JSON results.")
    parser.add_argument("task", type=int)
    args = parser.parse_args(argv)
    results = run(task_list.get_task(args.task))
    sys.stdout.write(json.dumps(results) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
