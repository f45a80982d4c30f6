"""The notebook is built from its sources and runs top to bottom in a real kernel.

- freshness: the committed challenge.ipynb is what `python -m jaxgpt.notebook` builds today;
- with the reference solutions in the stub cells, every check cell says "all N checks pass", the
  milestone trains, and the finale trains, plots and samples;
- with the stubs as a learner first sees them, nothing raises: every check says "not started" and the
  milestone and finale say which tasks to finish first;
- the set-up cell, run as Colab runs it (an IPython shell with google.colab imported), on a clone it makes
  from a local repository: a failed clone or install ends in one sentence and no traceback, `check` and
  `hint` repeat it, and running the cell again repairs a half-done clone or install.

The execution tests run with JAXGPT_SMOKE=1 (training cells take a handful of steps) on a small corpus
written here (JAXGPT_DATA), so they need neither the network nor tiny Shakespeare. The milestone cells are
switched on (RUN_MILESTONE = True, RUN_LADDER = True) in both runs, so that its code runs too. They take minutes, so they are
marked `slow` as well as `notebook`: the default `uv run pytest` leaves them out; `uv run pytest -m notebook`
runs them, and so does CI.
"""

from __future__ import annotations

import os
import random
import re
import string
import subprocess
import sys

import nbformat
import pytest

from jaxgpt.grader import task_list
from jaxgpt import milestone
from jaxgpt.notebook import build as notebook

CELL_TIMEOUT_S = 300
EXECUTION_TIMEOUT_S = 1800
_CHECK_CELL = re.compile(r"^check\((\d+)\)$")

SPEAKERS = ["First Citizen", "Second Citizen", "MENENIUS", "ROMEO", "JULIET", "KING RICHARD III",
            "LADY CAPULET", "QUEEN ELIZABETH", "DUKE VINCENTIO", "Nurse", "GLOUCESTER", "BUCKINGHAM"]
WORDS = ("the and of to my I you is that in not with me it be your his this but he have what so thou will "
         "shall good lord sir come now let love king thee our by are all no do as for her him more she "
         "well then there say speak night day hath would know here heart death sweet fair man may").split()
PUNCTUATION = [",", ".", ";", ":", "!", "?", "'s", ", my lord,", " -"]


def small_corpus(n_speeches: int = 220, seed: int = 0) -> str:
    """A few KB of Shakespeare-like text: speaker names, short lines, blank lines between speeches, and
    every one of tiny Shakespeare's 65 characters, so that any prompt the notebook uses can be encoded."""
    rng = random.Random(seed)
    speeches = ["First Citizen:\nBefore we proceed any further, hear me speak.",
                "THE QUICK BROWN FOX JUMPS OVER THE LAZY DOG;\nthe quick brown fox jumps over the lazy dog!",
                "ZOUNDS & WEXFORD:\nWhat, 3 $ for thy jewel? Ay - 'tis so."]
    for _ in range(n_speeches):
        lines = []
        for _ in range(rng.randint(1, 3)):
            words = rng.choices(WORDS, k=rng.randint(4, 9))
            words[0] = words[0].capitalize()
            lines.append(" ".join(words) + rng.choice(PUNCTUATION))
        speeches.append(f"{rng.choice(SPEAKERS)}:\n" + "\n".join(lines))
    text = "\n\n".join(speeches) + "\n"
    expected = set("\n !$&',-.3:;?") | set(string.ascii_letters)
    assert set(text) == expected, f"the corpus's characters differ from tiny Shakespeare's: {set(text) ^ expected}"
    return text


def test_committed_notebook_is_fresh():
    """challenge.ipynb is exactly what the sources build"""
    if not notebook.NOTEBOOK_PATH.is_file():
        pytest.fail("challenge.ipynb is missing: run `python -m jaxgpt.notebook`")
    committed = nbformat.read(notebook.NOTEBOOK_PATH, as_version=4)
    built = notebook.build()
    kinds_and_sources = [(c.cell_type, c.source) for c in built.cells]
    found = notebook.differences(built, committed)
    assert kinds_and_sources == [(c.cell_type, c.source) for c in committed.cells] and not found, (
        f"challenge.ipynb is stale: run `python -m jaxgpt.notebook` ({'; '.join(found[:3])})")
    assert notebook.NOTEBOOK_PATH.read_text(encoding="utf-8") == notebook.to_text(built), (
        "challenge.ipynb is stale: run `python -m jaxgpt.notebook` (its formatting differs)")


def test_build_is_deterministic_and_has_no_outputs():
    """Two builds are identical, every cell has an id, and no code cell carries an output"""
    first, second = notebook.to_text(notebook.build()), notebook.to_text(notebook.build())
    assert first == second
    nb = nbformat.reads(first, as_version=4)
    nbformat.validate(nb)
    ids = [c.id for c in nb.cells]
    assert len(ids) == len(set(ids)), "two cells share an id"
    assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code")
    assert nb.metadata.kernelspec.name == "python3" and nb.metadata.language_info.name == "python"


def test_every_task_has_its_cells_in_order():
    """Each task has a heading, its stub without docstring or relative imports, a check and a hint cell"""
    nb = notebook.build()
    sources = [c.source for c in nb.cells]
    by_id = {c.id: c for c in nb.cells}
    positions = []
    for task in task_list.TASKS:
        tag = f"task{task.number:02d}"
        heading = by_id[f"{tag}-heading"].source
        assert heading.startswith(f"## Task {task.number} · {task.title}")
        assert f"about {task.minutes} minutes" in heading and task.stars in heading
        assert all(f"`{name}`" in heading for name in task.names)
        code = by_id[f"{tag}-code"].source
        assert not code.startswith('"""'), f"task {task.number}'s stub cell still has its module docstring"
        assert not re.search(r"^from \.", code, re.MULTILINE), f"task {task.number}'s cell imports relatively"
        assert by_id[f"{tag}-check"].source == f"check({task.number})"
        assert by_id[f"{tag}-hint"].source == f"# hint({task.number})"
        positions.append(sources.index(f"check({task.number})"))
    assert positions == sorted(positions), "the tasks are not in the catalogue's order"


def test_pictures_become_attachments():
    """A picture a lesson shows travels inside the notebook as an attachment"""
    nb = notebook.build()
    referenced = [c for c in nb.cells if c.cell_type == "markdown" and "](attachment:" in c.source]
    assert referenced, "no lesson shows a picture"
    for cell in referenced:
        for name in re.findall(r"\]\(attachment:([^)]+)\)", cell.source):
            assert name in cell.attachments and cell.attachments[name]["image/png"]
    assert not any("](pictures/" in c.source or "](../pictures/" in c.source
                   for c in nb.cells if c.cell_type == "markdown")


def test_markdown_split_on_run_blocks():
    """Only ```python run blocks become code cells; other fences stay in the markdown"""
    text = "Intro\n\n```python\nshown = 1\n```\n\n```python run\nx = 1\nprint(x)\n```\nAfter\n"
    assert notebook.split_markdown(text) == [
        ("markdown", "Intro\n\n```python\nshown = 1\n```"), ("code", "x = 1\nprint(x)"), ("markdown", "After")]


def test_stub_cells_lose_docstring_and_relative_imports():
    """A task module becomes a cell without its docstring and its `from .taskNN import X` lines"""
    source = '"""Task 4.\n\nMore.\n"""\n\nimport jax\n\nfrom .task03_head import Head\n\n\nclass A:\n    """Kept."""\n'
    assert notebook.notebook_code(source) == 'import jax\n\n\nclass A:\n    """Kept."""'


def test_missing_sources_are_listed(monkeypatch, tmp_path):
    """A missing lesson file stops the build with a sentence naming it"""
    monkeypatch.setattr(notebook, "FINALE", tmp_path / "finale.md")
    with pytest.raises(notebook.BuildError, match="finale.md"):
        notebook.build()


def test_needs_tasks_turns_a_stub_into_a_sentence(capsys):
    """An unfinished task inside a notebook cell prints which tasks to finish, and other errors pass"""
    with milestone.needs_tasks(6, 7, 8):
        raise NotImplementedError("Task 7: write train_step")
    said = capsys.readouterr().out
    assert "finish tasks 6-8 first" in said.lower() and "Task 7: write train_step" in said
    with pytest.raises(ValueError):
        with milestone.needs_tasks(8):
            raise ValueError("the learner's own bug")


def test_check_command_reports_a_stale_notebook(monkeypatch, tmp_path, capsys):
    """`python -m jaxgpt.notebook --check` exits 1 with a sentence when the notebook is stale"""
    stale = tmp_path / "challenge.ipynb"
    nb = notebook.build()
    nb.cells[0].source += "\n\nAn edit by hand."
    stale.write_text(notebook.to_text(nb), encoding="utf-8")
    monkeypatch.setattr(notebook, "NOTEBOOK_PATH", stale)
    assert notebook.main(["--check"]) == 1
    assert "challenge.ipynb is stale: run `python -m jaxgpt.notebook`" in capsys.readouterr().out
    stale.write_text(notebook.to_text(notebook.build()), encoding="utf-8")
    assert notebook.main(["--check"]) == 0


# --------------------------------------------------------------------------------------------------------------
# The set-up cell, as Colab runs it

# Runs one cell in IPython's own shell, as a notebook kernel does (magics, and the `_render_traceback_` that
# replaces a traceback), with google.colab imported as in Colab; then `check(2)` and `hint(3)` as later cells.
_IPYTHON_HARNESS = """
import sys, types
from IPython.core.interactiveshell import InteractiveShell
if sys.argv[2] == "colab":
    sys.modules["google.colab"] = types.ModuleType("google.colab")
if sys.argv[3] == "no-jaxgpt":
    sys.modules["jaxgpt"] = None  # this Python cannot import the challenge
if sys.argv[4] != "-":
    sys.path.insert(0, sys.argv[4])
    import fakelib  # a package the session has loaded before the set-up cell (as Colab's kernel has numpy)
shell = InteractiveShell.instance()
shell.register_magic_function(lambda line: None, magic_name="matplotlib")  # no display to draw on here
result = shell.run_cell(open(sys.argv[1]).read())
print("@@ error:", type(result.error_in_exec).__name__ if result.error_in_exec else None)
shell.run_cell("check(2)")
shell.run_cell("hint(3)")
"""

# Stands in for `python -m pip install -q -e DIR`: logs each call; fails as pip does when FAKE_PIP_FAILS is set.
_FAKE_PIP = """
import os, sys
with open(os.environ["FAKE_PIP_LOG"], "a") as log:
    log.write("install " + sys.argv[-1] + "\\n")
if os.environ.get("FAKE_PIP_FAILS"):
    print("ERROR: Could not install packages due to an OSError: [Errno 28] No space left on device", file=sys.stderr)
    sys.exit(1)
if os.environ.get("FAKE_PIP_UPGRADES"):  # what a new jax does to numpy: installs a newer one over it
    site = os.environ["FAKE_PIP_UPGRADES"]
    os.rename(os.path.join(site, "fakelib-1.0.dist-info"), os.path.join(site, "fakelib-2.0.dist-info"))
    with open(os.path.join(site, "fakelib-2.0.dist-info", "METADATA"), "w") as metadata:
        metadata.write("Metadata-Version: 2.1\\nName: fakelib\\nVersion: 2.0\\n")
"""

# The challenge's package as the clone holds it, cut down to what the set-up cell uses.
_FAKE_PACKAGE = {
    "pyproject.toml": '[project]\nname = "jaxgpt-challenge"\nversion = "0.1.0"\n',
    "jaxgpt/__init__.py": "def check(task):\n    print(f'the clone graded task {task}')\n\n\n"
                          "def hint(task):\n    print(f'the clone hinted task {task}')\n",
    "jaxgpt/grader/__init__.py": "",
    "jaxgpt/grader/check_cell.py": "def warm_up():\n    print('the clone warmed up')\n",
}


def _origin_repository(tmp_path):
    origin = tmp_path / "origin"
    for relative, text in _FAKE_PACKAGE.items():
        (origin / relative).parent.mkdir(parents=True, exist_ok=True)
        (origin / relative).write_text(text)
    git = ["git", "-C", str(origin), "-c", "user.name=test", "-c", "user.email=test@example.com"]
    for command in (["init", "-q"], ["add", "."], ["commit", "-q", "-m", "the challenge"]):
        subprocess.run(git + command, check=True, capture_output=True)
    return origin


def _site_with_a_loaded_package(tmp_path):
    """A site-packages folder holding `fakelib` 1.0, which the harness imports before the set-up cell."""
    site = tmp_path / "site-packages"
    (site / "fakelib-1.0.dist-info").mkdir(parents=True)
    (site / "fakelib-1.0.dist-info" / "METADATA").write_text("Metadata-Version: 2.1\nName: fakelib\nVersion: 1.0\n")
    (site / "fakelib.py").write_text('__version__ = "1.0"\n')
    return site


def _run_setup_cell(tmp_path, repo_url, challenge_dir, *, colab=True, pip_fails=False, importable=True,
                    upgraded_site=None):
    """Runs the set-up cell with its address, folder and pip command swapped for local ones."""
    cell = notebook.setup_cell()
    fake_pip = tmp_path / "fake_pip.py"
    fake_pip.write_text(_FAKE_PIP)
    swaps = {
        f'REPO_URL = "{notebook.REPO_URL}"': f'REPO_URL = "{repo_url}"',
        f'CHALLENGE_DIR = "{notebook.COLAB_DIR}"': f'CHALLENGE_DIR = "{challenge_dir}"',
        '[sys.executable, "-m", "pip", "install", "-q", "-e", CHALLENGE_DIR]':
            f'[sys.executable, {str(fake_pip)!r}, CHALLENGE_DIR]',
    }
    for old, new in swaps.items():
        assert old in cell, f"the set-up cell no longer holds {old!r}"
        cell = cell.replace(old, new)
    cell_file = tmp_path / "setup_cell.py"
    cell_file.write_text(cell)
    env = {**os.environ, "IPYTHONDIR": str(tmp_path / "ipython"), "FAKE_PIP_LOG": str(tmp_path / "pip.log")}
    env.pop("FAKE_PIP_FAILS", None)
    env.pop("FAKE_PIP_UPGRADES", None)
    if pip_fails:
        env["FAKE_PIP_FAILS"] = "1"
    if upgraded_site:
        env["FAKE_PIP_UPGRADES"] = str(upgraded_site)
    done = subprocess.run([sys.executable, "-c", _IPYTHON_HARNESS, str(cell_file), "colab" if colab else "local",
                           "jaxgpt" if importable else "no-jaxgpt", str(upgraded_site or "-")],
                          capture_output=True, text=True, cwd=tmp_path, env=env, timeout=60)
    said = done.stdout + done.stderr
    assert done.returncode == 0 and "@@ error:" in said, said
    error = re.search(r"^@@ error: (\w+)$", said, re.MULTILINE).group(1)
    return (None if error == "None" else error), said


def _pip_calls(tmp_path) -> int:
    log = tmp_path / "pip.log"
    return len(log.read_text().splitlines()) if log.exists() else 0


def test_setup_cell_a_failed_clone_is_one_sentence_and_check_repeats_it(tmp_path):
    """A clone that fails ends the set-up cell in one sentence, no traceback; check and hint repeat it"""
    missing = f"file://{tmp_path / 'no-such-repository.git'}"
    error, said = _run_setup_cell(tmp_path, missing, tmp_path / "content" / "jaxgpt-challenge")
    assert error == "SetupFailed", said
    failed = [line for line in said.splitlines() if line.startswith("Set-up failed:")]
    assert len(failed) == 1, said
    assert f"git could not clone {missing}" in failed[0] and "REPO_URL" in failed[0], failed[0]
    assert failed[0].endswith("then run this cell again."), failed[0]
    assert "Traceback" not in said and "CalledProcessError" not in said and "NameError" not in said, said
    assert "check(2) cannot run: the set-up cell failed. Git could not clone" in said, said
    assert "hint(3) cannot run: the set-up cell failed. Git could not clone" in said, said
    assert _pip_calls(tmp_path) == 0


def test_setup_cell_run_again_repairs_a_half_done_clone_and_install(tmp_path):
    """A leftover folder is cloned again; a failed install is installed again, a finished one is not"""
    origin = f"file://{_origin_repository(tmp_path)}"
    challenge = tmp_path / "content" / "jaxgpt-challenge"
    challenge.mkdir(parents=True)
    (challenge / "README.md").write_text("an interrupted clone")

    error, said = _run_setup_cell(tmp_path, origin, challenge, pip_fails=True)
    assert error == "SetupFailed" and "Traceback" not in said, said
    assert "Set-up failed: pip could not install the challenge (ERROR: Could not install packages" in said, said
    assert "Run this cell again" in said and "check(2) cannot run" in said, said
    assert (challenge / "pyproject.toml").is_file(), "the leftover folder was not replaced by a clone"
    assert not (challenge / notebook.INSTALLED_MARKER).exists(), "a failed install was marked as done"

    error, said = _run_setup_cell(tmp_path, origin, challenge)
    assert error is None, said
    assert _pip_calls(tmp_path) == 2, "running the cell again did not install again"
    assert (challenge / notebook.INSTALLED_MARKER).is_file()
    assert "the clone warmed up" in said and "the clone graded task 2" in said, said

    error, said = _run_setup_cell(tmp_path, origin, challenge, pip_fails=True)
    assert error is None and _pip_calls(tmp_path) == 2, f"a finished install ran again:\n{said}"
    assert "the clone graded task 2" in said and "the clone hinted task 3" in said, said


def test_setup_cell_asks_for_a_restart_when_pip_upgraded_a_loaded_package(tmp_path):
    """An install that upgrades a package the session had loaded (jax 0.12 upgrades Colab's numpy) says to
    restart the session; run again after the restart, the cell does not install again"""
    origin = f"file://{_origin_repository(tmp_path)}"
    challenge = tmp_path / "content" / "jaxgpt-challenge"
    site = _site_with_a_loaded_package(tmp_path)
    error, said = _run_setup_cell(tmp_path, origin, challenge, upgraded_site=site)
    assert error == "SetupFailed" and "Traceback" not in said, said
    assert ("Set-up failed: pip upgraded fakelib, which this session had already loaded. Choose Runtime > "
            "Restart session, then run this cell again (it will not install again).") in said, said
    assert (challenge / notebook.INSTALLED_MARKER).is_file() and _pip_calls(tmp_path) == 1

    error, said = _run_setup_cell(tmp_path, origin, challenge)  # the restarted session
    assert error is None and _pip_calls(tmp_path) == 1, said
    assert "the clone graded task 2" in said, said


def test_setup_cell_outside_colab_says_which_python_lacks_the_challenge(tmp_path):
    """On one's own machine, a kernel whose Python lacks the challenge is told how to install it there"""
    error, said = _run_setup_cell(tmp_path, notebook.REPO_URL, notebook.COLAB_DIR, colab=False, importable=False)
    assert error == "SetupFailed" and "Traceback" not in said, said
    assert "Set-up failed: this kernel's Python cannot import the challenge" in said, said
    assert f"Install it for this Python ({sys.executable}) with `pip install -e .`" in said, said
    assert "check(2) cannot run: the set-up cell failed." in said and _pip_calls(tmp_path) == 0, said


def test_repository_address_is_one_constant():
    """The README's badge and clone command name the repository the set-up cell clones (REPO_URL)"""
    owner_and_name = re.fullmatch(r"https://github\.com/([\w.-]+/[\w.-]+)\.git", notebook.REPO_URL).group(1)
    readme = (task_list.REPO_ROOT / "README.md").read_text(encoding="utf-8")
    assert f"colab.research.google.com/github/{owner_and_name}/blob/main/challenge.ipynb" in readme
    assert f"git clone {notebook.REPO_URL}" in readme
    addresses = set(re.findall(r"github(?:\.com)?/([\w.-]+/[\w.-]+?)(?:\.git|/blob)", readme))
    assert addresses == {owner_and_name}, f"the README names other repositories: {addresses}"


# What Colab's image brings and pins itself: a `pip install -e .` that required any of these could replace it.
COLAB_JUPYTER_STACK = {"ipykernel", "ipython", "jupyter-client", "jupyter-core", "jupyter-server", "nbclient",
                       "nbformat", "nbconvert", "notebook", "traitlets", "tornado", "pyzmq", "ipywidgets",
                       "widgetsnbextension", "jupyterlab", "jupyterlab-widgets", "comm"}


def _requirement_names(requirements) -> set[str]:
    return {re.match(r"[A-Za-z0-9_.-]+", r).group(0).lower().replace("_", "-") for r in requirements}


def test_install_leaves_colabs_jupyter_stack_alone():
    """`pip install -e .` requires nothing of Colab's Jupyter stack; the maintainers' tools are the dev group,
    which `uv run` installs; what the grader needs at check time (pytest, its time limit plugin) stays"""
    import tomllib

    project = tomllib.loads((task_list.REPO_ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    runtime = _requirement_names(project["project"]["dependencies"])
    assert not runtime & COLAB_JUPYTER_STACK, f"the install would touch Colab's {runtime & COLAB_JUPYTER_STACK}"
    assert {"pytest", "pytest-timeout", "cloudpickle", "jax", "flax", "optax"} <= runtime
    dev = _requirement_names(project["dependency-groups"]["dev"])
    assert {"nbformat", "nbclient", "ipykernel"} <= dev


def test_builder_without_nbformat_is_a_sentence(monkeypatch, capsys):
    """`python -m jaxgpt.notebook` without nbformat (a maintainers' tool) says how to get it"""
    monkeypatch.setitem(sys.modules, "nbformat", None)
    assert notebook.main([]) == 2
    assert notebook.NEEDS_NBFORMAT in capsys.readouterr().err


# --------------------------------------------------------------------------------------------------------------
# Running the notebook in a kernel


def _execute(nb, tmp_path, monkeypatch):
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    corpus = tmp_path / "corpus.txt"
    corpus.write_text(small_corpus(), encoding="utf-8")
    monkeypatch.setenv("JAXGPT_SMOKE", "1")
    monkeypatch.setenv("JAXGPT_DATA", str(corpus))
    switched = []
    for cell in nb.cells:
        for switch in ("RUN_MILESTONE", "RUN_LADDER"):  # the optional milestones run too, in smoke mode
            if cell.cell_type == "code" and f"{switch} = False" in cell.source:
                cell.source = cell.source.replace(f"{switch} = False", f"{switch} = True", 1)
                switched.append(switch)
    assert sorted(switched) == ["RUN_LADDER", "RUN_MILESTONE"], f"switched on: {switched}"
    client = NotebookClient(nb, timeout=CELL_TIMEOUT_S, kernel_name="python3",
                            resources={"metadata": {"path": str(task_list.REPO_ROOT)}})
    try:
        client.execute()
    except CellExecutionError as err:
        failing = next((c for c in nb.cells if any(o.get("output_type") == "error" for o in c.get("outputs", []))),
                       None)
        where = f"cell {failing.id!r}" if failing is not None else "a cell"
        pytest.fail(f"{where} raised while the notebook ran:\n{str(err)[-3000:]}", pytrace=False)
    errors = [c.id for c in nb.cells for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors, f"cells raised: {errors}"
    return nb


def _text(cell) -> str:
    parts = []
    for output in cell.get("outputs", []):
        if output.get("output_type") == "stream":
            parts.append(output.get("text", ""))
        elif "data" in output and "text/plain" in output["data"]:
            parts.append(output["data"]["text/plain"])
    return "".join(parts)


def _has_image(cell) -> bool:
    return any("image/png" in o.get("data", {}) for o in cell.get("outputs", []))


def _check_cells(nb):
    return [(int(_CHECK_CELL.match(c.source).group(1)), c) for c in nb.cells
            if c.cell_type == "code" and _CHECK_CELL.match(c.source)]


def _finale(nb):
    return [c for c in nb.cells if c.cell_type == "code" and c.id.startswith("finale-")]


@pytest.mark.slow
@pytest.mark.notebook
@pytest.mark.timeout(EXECUTION_TIMEOUT_S)
def test_notebook_with_solutions_passes_every_check(tmp_path, monkeypatch):
    """With the reference solutions, every check passes and the milestone and finale train, plot and write"""
    path = tmp_path / "solutions.ipynb"
    notebook.write(path, solutions=True)
    nb = _execute(nbformat.read(path, as_version=4), tmp_path, monkeypatch)

    checks = _check_cells(nb)
    assert [n for n, _ in checks] == [t.number for t in task_list.TASKS]
    for number, cell in checks:
        said = _text(cell)
        assert re.search(rf"Task {number} · .*: all \d+ checks pass", said), (
            f"check({number}) with the reference solution said:\n{said}")

    milestone = next(c for c in nb.cells if c.id == "milestone")
    assert "Eval loss after" in _text(milestone) and _has_image(milestone), _text(milestone)

    finale = _finale(nb)
    printed = "".join(_text(c) for c in finale)
    assert "Not yet:" not in printed and "Train your model" not in printed, printed
    assert re.search(r"eval loss \d+\.\d+", printed), printed
    assert sum(_has_image(c) for c in finale) == 2, "the finale should show a loss curve and attention weights"
    assert "ROMEO:" in printed, "the finale's sample should start with its prompt"


@pytest.mark.slow
@pytest.mark.notebook
@pytest.mark.timeout(EXECUTION_TIMEOUT_S)
def test_notebook_with_stubs_runs_and_says_not_started(tmp_path, monkeypatch):
    """With the stubs, the notebook runs top to bottom; checks say "not started", the rest says what to finish"""
    path = tmp_path / "challenge.ipynb"
    notebook.write(path)
    nb = _execute(nbformat.read(path, as_version=4), tmp_path, monkeypatch)

    checks = _check_cells(nb)
    assert [n for n, _ in checks] == [t.number for t in task_list.TASKS]
    for number, cell in checks:
        said = _text(cell)
        assert "not started" in said, f"check({number}) on the stub said:\n{said}"

    milestone = next(c for c in nb.cells if c.id == "milestone")
    assert "cannot run yet" in _text(milestone) and "task 1" in _text(milestone), _text(milestone)

    printed = "".join(_text(c) for c in _finale(nb))
    assert "Finish tasks 6 and 7 first" in printed, printed
    assert not any(_has_image(c) for c in _finale(nb))
