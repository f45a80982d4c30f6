"""Builds `challenge.ipynb` from its sources, so the notebook is never edited by hand.

    python -m jaxgpt.notebook                     # writes challenge.ipynb at the repository root
    python -m jaxgpt.notebook --check             # exits 1 with a sentence if challenge.ipynb is stale
    python -m jaxgpt.notebook --solutions PATH    # a copy with the reference solutions in the stub cells

The notebook, top to bottom: lessons/intro.md; a set-up cell; lessons/part0_warmup.md; then for every task
of jaxgpt.grader.task_list.TASKS a heading, its lesson, its stub (tasks/taskNN_<slug>.py without the module docstring
and without single-line relative imports: earlier tasks' names are notebook globals), a check cell and a
hint cell, then the part of its lesson after a line `<!-- after the check -->` if it has one (cells that run
the learner's finished code), with lessons/partN.md before the first task of each part and an optional milestone after task 1;
lessons/finale.md last. In the markdown files, a fenced block whose info string is exactly `python run`
becomes a code cell, and `![alt](pictures/x.png)` becomes a cell attachment, so pictures show in Colab
without the repository's files.

The build is deterministic (cell ids from positions and roles, no outputs, fixed metadata), so the
freshness check compares exactly.

The helpers that the notebook's cells call at run time are in jaxgpt/milestone.py.
"""

from __future__ import annotations

import argparse
import ast
import base64
import re
import sys
from pathlib import Path
from typing import Any

from jaxgpt.grader import task_list
from jaxgpt.notebook import figures

# The one place that says where the challenge lives: the Colab set-up cell clones it from here.
REPO_URL = "https://github.com/jax-gpt-challenge/jaxgpt-challenge.git"
COLAB_DIR = "/content/jaxgpt-challenge"
# Written into the clone once `pip install -e` has succeeded: without it, running the set-up cell again installs
# again, so an install that failed half-way is repaired rather than skipped.
INSTALLED_MARKER = ".jaxgpt/installed"

NOTEBOOK_PATH = task_list.REPO_ROOT / "challenge.ipynb"
INTRO = task_list.LESSONS_DIR / "intro.md"
WARMUP = task_list.LESSONS_DIR / "part0_warmup.md"
FINALE = task_list.LESSONS_DIR / "finale.md"
# The part introduction shown before the first task of each part.
PART_BEFORE_TASK = {1: "part1.md", 2: "part2.md", 7: "part3.md", 9: "part4.md", 12: "part5.md", 15: "part6.md"}
MILESTONE_AFTER_TASK = 1
# Optional lessons after a task's check: they use the learner's finished code but ask for no new names.
ASIDES_AFTER_TASK = {6: ("milestone_ladder.md", "aside_pure_functions.md")}

RUN_FENCE = "```python run"
AFTER_THE_CHECK = "<!-- after the check -->"
_FENCE = re.compile(r"^(`{3,}|~{3,})")
_IMAGE = re.compile(r"!\[([^\]]*)\]\((?:\.\./)?(pictures/[^)\s]+\.png)\)")
_RELATIVE_IMPORT = re.compile(r"^from \.\w+ import [\w, ]+\s*$")
_STALE = "challenge.ipynb is stale: run `python -m jaxgpt.notebook`"
NEEDS_NBFORMAT = ("The notebook builder needs nbformat, one of the maintainers' tools (pyproject.toml's dev group): "
                  "run it as `uv run python -m jaxgpt.notebook`, or `pip install nbformat` first.")

METADATA = {
    "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
    "language_info": {"name": "python"},
}


class BuildError(Exception):
    """The notebook cannot be built; the message lists what is missing or wrong."""


# --------------------------------------------------------------------------------------------------------------
# Reading the sources


def split_markdown(text: str) -> list[tuple[str, str]]:
    """[(kind, source)] with kind 'markdown' or 'code': each ```python run block becomes one code cell,
    every other fenced block stays inside the markdown around it."""
    cells: list[tuple[str, str]] = []
    markdown: list[str] = []
    code: list[str] | None = None
    other_fence: str | None = None  # the opening marker of an ordinary fence we are inside

    def flush_markdown():
        source = "\n".join(markdown).strip("\n")
        if source.strip():
            cells.append(("markdown", source))
        markdown.clear()

    for line in text.splitlines():
        if code is not None:
            if line.strip() == "```":
                cells.append(("code", "\n".join(code).strip("\n")))
                code = None
            else:
                code.append(line)
            continue
        if other_fence is not None:
            markdown.append(line)
            if line.strip() == other_fence:
                other_fence = None
            continue
        if line.rstrip() == RUN_FENCE:
            flush_markdown()
            code = []
            continue
        fence = _FENCE.match(line.strip())
        if fence:
            other_fence = fence.group(1)
        markdown.append(line)
    if code is not None:
        raise BuildError("a ```python run block is not closed with ```")
    flush_markdown()
    return cells


def notebook_code(source: str, path: Path | None = None) -> str:
    """A task module's source as a notebook cell: no module docstring, no single-line relative imports
    (the names they import are already globals of the notebook), no runs of blank lines."""
    try:
        tree = ast.parse(source)
    except SyntaxError as err:
        raise BuildError(f"{_display(path)} has a syntax error on line {err.lineno}: {err.msg}") from None
    lines = source.splitlines()
    if tree.body and isinstance(tree.body[0], ast.Expr) and isinstance(getattr(tree.body[0], "value", None),
                                                                       ast.Constant) \
            and isinstance(tree.body[0].value.value, str):
        doc = tree.body[0]
        lines[doc.lineno - 1:doc.end_lineno] = []
    lines = [line for line in lines if not _RELATIVE_IMPORT.match(line)]
    text = "\n".join(lines)
    text = re.sub(r"\n{3,}(?=(import|from) )", "\n\n", text)  # imports close up where one was removed
    text = re.sub(r"\n{4,}", "\n\n\n", text)
    return text.strip("\n")


def _display(path: Path | None) -> str:
    if path is None:
        return "the source"
    try:
        return str(path.relative_to(task_list.REPO_ROOT))
    except ValueError:
        return str(path)


# --------------------------------------------------------------------------------------------------------------
# Building


class _Builder:
    def __init__(self, allow_missing: bool):
        import nbformat

        self.nbformat = nbformat
        self.allow_missing = allow_missing
        self.cells: list[Any] = []
        self.missing: list[str] = []

    def read(self, path: Path) -> str | None:
        if not path.is_file():
            self.missing.append(_display(path))
            return None
        return path.read_text(encoding="utf-8")

    def markdown(self, cell_id: str, source: str) -> None:
        attachments = {}

        def attach(match: re.Match) -> str:
            alt, relative = match.group(1), match.group(2)
            picture = task_list.REPO_ROOT / relative
            if not picture.is_file():
                self.missing.append(relative)
                return match.group(0)
            name = picture.name
            attachments[name] = {"image/png": base64.b64encode(picture.read_bytes()).decode("ascii")}
            return f"![{alt}](attachment:{name})"

        source = _IMAGE.sub(attach, source)
        cell = self.nbformat.v4.new_markdown_cell(source, id=cell_id)
        if attachments:
            cell.attachments = attachments
        self.cells.append(cell)

    def code(self, cell_id: str, source: str) -> None:
        self.cells.append(self.nbformat.v4.new_code_cell(source, id=cell_id))

    def lesson(self, prefix: str, path: Path, text: str | None = None) -> None:
        text = self.read(path) if text is None else text
        if text is None:
            if self.allow_missing:
                self.markdown(f"{prefix}-missing", f"*({_display(path)} is not written yet.)*")
            return
        text = figures.MARKED.sub(lambda m: m["body"], text)  # the notebook shows a quoted figure, not its marker
        try:
            parts = split_markdown(text)
        except BuildError as err:
            raise BuildError(f"{_display(path)}: {err}") from None
        for i, (kind, source) in enumerate(parts, 1):
            if kind == "code":
                self.code(f"{prefix}-{i:02d}", source)
            else:
                self.markdown(f"{prefix}-{i:02d}", source)


def split_at_check(lesson: str) -> tuple[str, str]:
    """A lesson's text before its stub and check cells, and the text after them: what follows a line
    `<!-- after the check -->` (cells that run the learner's finished code, which must be defined first)."""
    before, marker, after = lesson.partition(AFTER_THE_CHECK)
    return before.rstrip() + "\n", after.strip() + "\n" if marker and after.strip() else ""


def build(solutions: bool = False, allow_missing: bool = False):
    """The challenge notebook as an nbformat NotebookNode; with solutions=True the stub cells hold the
    reference solutions. A missing source file raises BuildError listing every missing file, unless
    allow_missing (for drafts), which puts a placeholder in its place."""
    import nbformat

    b = _Builder(allow_missing)
    code_dir = task_list.REFERENCE_DIR if solutions else task_list.TASKS_DIR
    b.lesson("intro", INTRO)
    b.code("setup", setup_cell())
    b.lesson("part0", WARMUP)
    for task in task_list.TASKS:
        n = task.number
        tag = f"task{n:02d}"
        if n in PART_BEFORE_TASK:
            b.lesson(f"part-before-{tag}", task_list.LESSONS_DIR / PART_BEFORE_TASK[n])
        b.markdown(f"{tag}-heading", task_heading(task))
        lesson = b.read(task.lesson_file)
        before, after = split_at_check(lesson) if lesson is not None else (None, None)
        b.lesson(f"{tag}-lesson", task.lesson_file, before)
        code_path = code_dir / f"{task.stem}.py"
        code = b.read(code_path)
        if code is not None:
            b.code(f"{tag}-code", notebook_code(code, code_path))
        elif allow_missing:
            b.code(f"{tag}-code", f"# {_display(code_path)} is not written yet")
        b.code(f"{tag}-check", f"check({n})")
        b.markdown(f"{tag}-hint-note", "Stuck? Uncomment and run for the next hint.")
        b.code(f"{tag}-hint", f"# hint({n})")
        if after:
            b.lesson(f"{tag}-after", task.lesson_file, after)
        if n == MILESTONE_AFTER_TASK:
            b.markdown("milestone-note", milestone_note())
            b.code("milestone", milestone_cell())
        for aside in ASIDES_AFTER_TASK.get(n, ()):
            b.lesson(f"{tag}-{Path(aside).stem}", task_list.LESSONS_DIR / aside)
    b.lesson("finale", FINALE)

    if b.missing and not allow_missing:
        listed = "\n".join(f"  - {m}" for m in dict.fromkeys(b.missing))
        raise BuildError(f"The notebook cannot be built: {len(dict.fromkeys(b.missing))} source file(s) are "
                         f"missing:\n{listed}")
    nb = nbformat.v4.new_notebook()
    nb.nbformat, nb.nbformat_minor = 4, 5
    nb.metadata = nbformat.from_dict(METADATA)
    nb.cells = b.cells
    return nb


def task_heading(task: task_list.Task) -> str:
    names = ", ".join(f"`{name}`" for name in task.names)
    return (f"## Task {task.number} · {task.title}\n\n"
            f"*about {task.minutes} minutes · difficulty {task.stars}*\n\n"
            f"You define: {names}.")


def setup_cell() -> str:
    """The notebook's first code cell. In Colab it clones REPO_URL into COLAB_DIR (aside, then moved in whole,
    so a broken clone is never used) and installs it with pip, writing INSTALLED_MARKER only once the install
    succeeded, so running the cell again repairs a half-done install. Whatever fails (the clone, the install,
    the import) ends the cell with one sentence that says what to do, without a traceback, and leaves `check`
    and `hint` defined as stand-ins that repeat it, so that later cells do not fail with a NameError."""
    return f'''# @title Set-up: run this cell first (Colab shows its code under "Show code") {{ display-mode: "form" }}
# Set-up. In Colab this clones the challenge and installs it (a minute or two); if anything fails, it
# says what to do, and running the cell again repairs a half-done install. On your own machine, where you ran
# `pip install -e .` in the repository, it only imports.
import importlib.metadata
import os
import shutil
import subprocess
import sys

REPO_URL = "{REPO_URL}"  # working from a fork? put its address here
CHALLENGE_DIR = "{COLAB_DIR}"
IN_COLAB = "google.colab" in sys.modules


def _last_words(output):
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith(("ERROR", "error:", "fatal:"))]
    return (errors or lines or ["it said nothing"])[-1]


def _loaded_versions():
    """The installed packages this session has imported, with the versions it has in memory."""
    return {{name: module.__version__ for name, module in list(sys.modules.items())
            if "." not in name and isinstance(getattr(module, "__version__", None), str)
            and "-packages" in (getattr(module, "__file__", None) or "")}}


def _installed_version(name):
    try:
        importlib.invalidate_caches()
        return importlib.metadata.version(name)
    except Exception:  # no distribution of that name (the module's distribution is called otherwise)
        return None


def _install_in_colab():
    """None once the challenge is cloned and installed; otherwise what went wrong and what to do."""
    if not os.path.isfile(os.path.join(CHALLENGE_DIR, "pyproject.toml")):
        partial = CHALLENGE_DIR + ".partial"
        shutil.rmtree(partial, ignore_errors=True)
        shutil.rmtree(CHALLENGE_DIR, ignore_errors=True)
        cloned = subprocess.run(["git", "clone", "--depth", "1", REPO_URL, partial], capture_output=True, text=True)
        if cloned.returncode != 0:
            return (f"git could not clone {{REPO_URL}} ({{_last_words(cloned.stderr)}}). Check that address (REPO_URL "
                    "at the top of this cell) and that this runtime is online, then run this cell again.")
        os.replace(partial, CHALLENGE_DIR)
    marker = os.path.join(CHALLENGE_DIR, "{INSTALLED_MARKER}")
    if not os.path.isfile(marker):  # written only after an install that succeeded
        loaded = _loaded_versions()
        installed = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "-e", CHALLENGE_DIR],
                                   capture_output=True, text=True)
        if installed.returncode != 0:
            return (f"pip could not install the challenge ({{_last_words(installed.stderr + installed.stdout)}}). "
                    "Run this cell again; if it fails the same way, choose Runtime > Disconnect and delete "
                    "runtime, then run the notebook from the top.")
        os.makedirs(os.path.dirname(marker), exist_ok=True)
        with open(marker, "w") as written:
            written.write(sys.executable + "\\n")
        upgraded = sorted(name for name, version in loaded.items() if _installed_version(name) not in (None, version))
        if upgraded:  # the old versions stay loaded in this session: mixing them with the new ones breaks imports
            return (f"pip upgraded {{', '.join(upgraded)}}, which this session had already loaded. Choose Runtime > "
                    "Restart session, then run this cell again (it will not install again).")
    os.chdir(CHALLENGE_DIR)
    if CHALLENGE_DIR not in sys.path:
        sys.path.insert(0, CHALLENGE_DIR)  # an editable install is only seen after a restart; this makes it now
    return None


SETUP_PROBLEM = _install_in_colab() if IN_COLAB else None
if SETUP_PROBLEM is None:
    try:
        from jaxgpt import check, hint
        from jaxgpt.grader.check_cell import warm_up
    except Exception as err:  # not installed for this kernel's Python, or a broken install
        SETUP_PROBLEM = (f"this kernel's Python cannot import the challenge ({{type(err).__name__}}: {{err}}). " + (
            "Choose Runtime > Restart session, then run this cell again." if IN_COLAB else
            f"Install it for this Python ({{sys.executable}}) with `pip install -e .` in the repository, or "
            "choose the kernel of the environment where you installed it; then run this cell again."))
if SETUP_PROBLEM is not None:
    class SetupFailed(Exception):
        def _render_traceback_(self):  # what IPython shows instead of a traceback
            return [f"Set-up failed: {{self}}"]

    def check(task, *args, **kwargs):
        print(f"check({{task}}) cannot run: the set-up cell failed. {{SETUP_PROBLEM[:1].upper()}}{{SETUP_PROBLEM[1:]}}")

    def hint(task, *args, **kwargs):
        print(f"hint({{task}}) cannot run: the set-up cell failed. {{SETUP_PROBLEM[:1].upper()}}{{SETUP_PROBLEM[1:]}}")

    raise SetupFailed(SETUP_PROBLEM)

warm_up()  # checks run in a separate process, which starts loading JAX now, so the first check(N) is quick

%matplotlib inline'''


def milestone_note() -> str:
    found = figures.results()
    minutes, loss, cpus = (figures.figure(f"train_tiny.{name}", found, "the milestone note")
                           for name in ("minutes", "eval_loss", "cpus"))
    return f"""### Milestone: train your MiniGPT (optional)

Your task 1 model is complete: it can learn. The cell below trains it on tiny Shakespeare with the
harness's training loop (AdamW, a warmup and cosine learning-rate schedule, the `tiny` configuration:
4 layers, 128 wide, context 64) and plots the loss. The reference model took {minutes} minutes on a
{cpus}-core CPU (a GPU is far quicker), so it only runs when you set `RUN_MILESTONE = True`. The reference
ends near eval loss {loss} (the README shows its curve); the original challenge asked for below 1.9. From a
terminal, the same run is `jaxgpt train --config tiny --impl tasks`.

You will write that training loop yourself in task 7."""


def milestone_cell() -> str:
    return '''RUN_MILESTONE = False  # set to True to train your task 1 MiniGPT (minutes on a CPU: see above)

if RUN_MILESTONE:
    from jaxgpt.milestone import run_milestone

    milestone_history = run_milestone(globals(), task=1)
else:
    print("Milestone skipped: set RUN_MILESTONE = True above to train your MiniGPT here, or run "
          "`jaxgpt train --config tiny --impl tasks` in a terminal.")'''


# --------------------------------------------------------------------------------------------------------------
# Writing and comparing


def to_text(nb) -> str:
    import nbformat

    return nbformat.writes(nb) + "\n"


def differences(built, committed) -> list[str]:
    """Where two notebooks differ, in words (an empty list when they are the same)."""
    found = []
    if dict(built.metadata) != dict(committed.metadata):
        found.append("the notebook's metadata differs")
    a, b = built.cells, committed.cells
    if len(a) != len(b):
        found.append(f"the sources give {len(a)} cells, the committed notebook has {len(b)}")
    for i, (x, y) in enumerate(zip(a, b)):
        for what in ("cell_type", "id", "source"):
            if x.get(what) != y.get(what):
                found.append(f"cell {i} ({x.get('id')}): the {what.replace('_', ' ')} differs")
                break
        else:
            if dict(x.get("attachments", {})) != dict(y.get("attachments", {})):
                found.append(f"cell {i} ({x.get('id')}): its pictures differ")
            elif x.get("outputs") != y.get("outputs") or x.get("execution_count") != y.get("execution_count"):
                found.append(f"cell {i} ({x.get('id')}): it holds outputs; the committed notebook has none")
    return found


def check_fresh(path: Path | None = None) -> list[str]:
    """The reasons `path` (default challenge.ipynb) is stale; empty when it matches the sources."""
    import nbformat

    path = NOTEBOOK_PATH if path is None else path
    if not path.is_file():
        return [f"{_display(path)} does not exist"]
    committed = nbformat.read(path, as_version=4)
    built = build()
    found = differences(built, committed)
    if not found and path.read_text(encoding="utf-8") != to_text(built):
        found.append("its formatting differs")
    found += [f"{_display(source)} quotes a figure that bench/results/ no longer gives"
              for source in figures.stale_sources()]
    return found


def write(path: Path, solutions: bool = False) -> None:
    path.write_text(to_text(build(solutions=solutions)), encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jaxgpt.notebook", description=__doc__.split("\n\n")[0])
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--check", action="store_true", help="exit 1 if challenge.ipynb is stale")
    group.add_argument("--solutions", metavar="PATH", help="write a copy with the reference solutions to PATH")
    args = parser.parse_args(argv)
    try:
        if args.check:
            found = check_fresh()
            if found:
                print(f"{_STALE} ({'; '.join(found[:3])}).")
                return 1
            print("challenge.ipynb is up to date.")
            return 0
        if args.solutions:
            target = Path(args.solutions)
            write(target, solutions=True)
            print(f"wrote {target} (with the reference solutions: keep it out of the repository)")
            return 0
        for source in figures.refresh():
            print(f"updated the figures {_display(source)} quotes from bench/results/")
        write(NOTEBOOK_PATH)
        print(f"wrote {_display(NOTEBOOK_PATH)}")
        return 0
    except (BuildError, figures.FigureError) as err:
        print(err, file=sys.stderr)
        return 2
    except ModuleNotFoundError as err:
        if err.name != "nbformat":
            raise
        print(NEEDS_NBFORMAT, file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
