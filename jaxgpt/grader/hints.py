"""Hints, revealed one at a time: `hints/taskNN_<slug>.md` holds `## Hint 1`, `## Hint 2`, ... in order
from a nudge to nearly the answer. The command line remembers how many were shown in
`.jaxgpt/hints.json` (beside tasks/); the notebook remembers for the life of its kernel."""

from __future__ import annotations

import json
import re
from pathlib import Path

from jaxgpt.grader import task_list

STATE_FILE = task_list.REPO_ROOT / ".jaxgpt" / "hints.json"
_HEADING = re.compile(r"^## Hint \d+\s*$", re.MULTILINE)
_shown_in_kernel: dict[int, int] = {}


def ladder(task: task_list.Task) -> list[str]:
    if not task.hints_file.exists():
        return []
    parts = _HEADING.split(task.hints_file.read_text())
    return [p.strip() for p in parts[1:] if p.strip()]


def reveal(task: task_list.Task, shown: int) -> tuple[str, int]:
    """The text that reveals hint number `shown + 1` (or says there are no more) and the new count."""
    hints = ladder(task)
    if not hints:
        return f"Task {task.number} has no hints yet.", shown
    if shown >= len(hints):
        return (f"That was the last of task {task.number}'s {len(hints)} hints. The lesson's pseudocode and "
                f"the check's messages are your friends; reference/{task.stem}.py has a solution."), shown
    number = shown + 1
    return f"Hint {number} of {len(hints)} for task {task.number}:\n\n{hints[shown]}", number


def _load_state(path: Path) -> dict[str, int]:
    try:
        return {str(k): int(v) for k, v in json.loads(path.read_text()).items()}
    except (OSError, ValueError, AttributeError):
        return {}


def next_hint_cli(number: int, state_file: Path = STATE_FILE) -> str:
    task = task_list.get_task(number)
    state = _load_state(state_file)
    text, shown = reveal(task, state.get(str(task.number), 0))
    state[str(task.number)] = shown
    state_file.parent.mkdir(parents=True, exist_ok=True)
    state_file.write_text(json.dumps(state, indent=1))
    return text


def hint(number: int) -> None:
    """The notebook's hint cell: prints the next hint of task `number`."""
    task = task_list.get_task(number)
    text, _shown_in_kernel[task.number] = reveal(task, _shown_in_kernel.get(task.number, 0))
    print(text)
