"""Hints, revealed one rung at a time. `hints/taskNN_<slug>.md` holds a ladder of `## Hint 1`, `## Hint 2`,
... (optionally `## Hint 2 · what it gives`), from a nudge to nearly the answer: a question without code,
then the idea and the API with shapes, then a skeleton with blanks, then the key lines.

A rung may say which failures it is about with a line `<!-- for: words, more words -->` (not shown to the
learner): a failing check whose message or name contains one of those phrases (case does not matter) is
pointed to that rung in its verdict (`pointer`); `rung_for` says which phrase wins when several match.

The command line remembers how many rungs were shown in `.jaxgpt/hints.json` (beside tasks/); the notebook
remembers for the life of its kernel. `hint(3)` shows the next rung, `hint(3, 2)` rung 2 itself."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

from jaxgpt.grader import task_list

STATE_FILE = task_list.REPO_ROOT / ".jaxgpt" / "hints.json"
_HEADING = re.compile(r"^## Hint (\d+)[ \t]*(?:[·:—-][ \t]*(.*?))?[ \t]*$", re.MULTILINE)
_FOR = re.compile(r"^[ \t]*<!--[ \t]*for:(.*?)-->[ \t]*\n?", re.MULTILINE)
_shown_in_kernel: dict[int, int] = {}


@dataclasses.dataclass(frozen=True)
class Rung:
    number: int
    title: str  # what the rung gives ("a question", "a skeleton"); may be empty
    text: str  # as shown, without the `for:` lines
    about: tuple[str, ...]  # lower-case phrases of the failures it is about


def rungs(task: task_list.Task) -> list[Rung]:
    if not task.hints_file.exists():
        return []
    source = task.hints_file.read_text(encoding="utf-8")
    headings = list(_HEADING.finditer(source))
    found = []
    for i, heading in enumerate(headings):
        end = headings[i + 1].start() if i + 1 < len(headings) else len(source)
        body = source[heading.end():end]
        about = tuple(phrase.strip().lower() for line in _FOR.findall(body) for phrase in line.split(",")
                      if phrase.strip())
        text = _FOR.sub("", body).strip()
        if text:
            found.append(Rung(len(found) + 1, (heading.group(2) or "").strip(), text, about))
    return found


def ladder(task: task_list.Task) -> list[str]:
    """The rungs' texts, in order, as the learner sees them."""
    return [rung.text for rung in rungs(task)]


def rung_for(task: task_list.Task, check_name: str, message: str = "") -> int | None:
    """The number of the rung whose `for:` phrases match this failing check, or None.

    The most specific words are read first: the message's "Likely cause" lines, then the whole message, then
    the check's name. Within one of them the phrase that comes first wins (a message names its subject
    early: "with deterministic=False ..., the dropouts differ"), and on a tie the lower rung. A check "not
    checked" because another failed points nowhere: the other check's pointer is the one that helps."""
    if message.lstrip().lower().startswith("not checked"):  # it failed because of another check's failure
        return None
    ladder_ = [rung for rung in rungs(task) if rung.about]
    likely = "\n".join(line for line in message.splitlines() if "likely cause" in line.lower())
    for text in (likely, message, check_name):
        text = text.lower()
        found = [(position, rung.number) for rung in ladder_ for phrase in rung.about
                 for position in [text.find(phrase)] if position >= 0]
        if found:
            return min(found)[1]
    return None


def pointer(task: task_list.Task, rung: int) -> str:
    """The line a verdict adds under a failing check that rung `rung` is about."""
    return (f"→ Hint {rung} of task {task.number} is about this: hint({task.number}, {rung}) in the notebook, "
            f"`jaxgpt hint {task.number} {rung}` in a terminal.")


def reveal(task: task_list.Task, shown: int, rung: int | None = None) -> tuple[str, int]:
    """The text that reveals rung `rung` (by default the one after the `shown` already seen), or says there
    are no more, and the new count of rungs seen."""
    ladder_ = rungs(task)
    if not ladder_:
        return f"Task {task.number} has no hints yet.", shown
    if rung is not None and not 1 <= rung <= len(ladder_):
        return (f"Task {task.number} has hints 1 to {len(ladder_)}; there is no hint {rung}."), shown
    if rung is None and shown >= len(ladder_):
        return (f"That was the last of task {task.number}'s {len(ladder_)} hints. The lesson's pseudocode and "
                f"the check's messages are your friends; reference/{task.stem}.py has a solution."), shown
    chosen = ladder_[(rung or shown + 1) - 1]
    title = f" ({chosen.title})" if chosen.title else ""
    return (f"Hint {chosen.number} of {len(ladder_)} for task {task.number}{title}:\n\n{chosen.text}",
            max(shown, chosen.number))


def _load_state(path: Path) -> dict[str, int]:
    try:
        return {str(k): int(v) for k, v in json.loads(path.read_text()).items()}
    except (OSError, ValueError, AttributeError):
        return {}


def next_hint_cli(number: int, state_file: Path = STATE_FILE, rung: int | None = None) -> str:
    task = task_list.get_task(number)
    state = _load_state(state_file)
    text, shown = reveal(task, state.get(str(task.number), 0), rung)
    state[str(task.number)] = shown
    state_file.parent.mkdir(parents=True, exist_ok=True)
    state_file.write_text(json.dumps(state, indent=1))
    return text


def hint(number: int, rung: int | None = None) -> None:
    """The notebook's hint cell: prints the next hint of task `number`, or hint `rung` itself."""
    task = task_list.get_task(number)
    text, _shown_in_kernel[task.number] = reveal(task, _shown_in_kernel.get(task.number, 0), rung)
    print(text)
