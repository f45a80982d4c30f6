"""The checker itself: learner code is untrusted input, so every way it can go wrong must come back as a
verdict in words, never as a crash of the checker or a pass it did not verify."""

import shutil
import textwrap
import traceback

import pytest

from jaxgpt.grader import task_list, runner, implementation, outcomes

HEAD = task_list.get_task(3)


def _grade_head(tmp_path, body: str, timeout_s: float = 60):
    """Grades a task-3 file whose `Head.__call__` body is `body` (other tasks: the reference)."""
    directory = tmp_path / "impl"
    directory.mkdir()
    for source in task_list.REFERENCE_DIR.glob("task*.py"):
        shutil.copy(source, directory / source.name)
    (directory / "task03_head.py").write_text(textwrap.dedent('''\
        import jax, jax.numpy as jnp
        import flax.linen as nn

        class Head(nn.Module):
            head_size: int
            dropout_rate: float = 0.0

            @nn.compact
            def __call__(self, x, deterministic=True):
                k = nn.Dense(self.head_size, use_bias=False, name="key")(x)
                q = nn.Dense(self.head_size, use_bias=False, name="query")(x)
                v = nn.Dense(self.head_size, use_bias=False, name="value")(x)
        ''') + textwrap.indent(textwrap.dedent(body), " " * 8))
    return runner.run_suite(HEAD, directory, timeout_s=timeout_s)


def test_reference_passes_and_stub_is_not_started():
    assert runner.run_suite(HEAD, "reference").status == outcomes.PASSED
    verdict = runner.run_suite(HEAD, "tasks")
    assert verdict.status == outcomes.NOT_STARTED
    assert "not started" in verdict.text()


def test_exception_in_learner_code_names_the_learner_line(tmp_path):
    verdict = _grade_head(tmp_path, "wei = q @ k  # forgot the transpose\nreturn wei @ v\n")
    text = verdict.text()
    assert verdict.status == outcomes.FAILED
    assert "your code raised TypeError" in text
    assert "task03_head.py, line 13" in text and "wei = q @ k" in text


def test_wrong_shape_is_a_sentence(tmp_path):
    verdict = _grade_head(tmp_path, "return v[:, :, :1]\n")
    assert "should have shape (2, 6, 4), but it has shape (2, 6, 1)" in verdict.text()


def test_nan_is_a_sentence(tmp_path):
    verdict = _grade_head(tmp_path, "return v * jnp.nan\n")
    assert "NaN or infinite" in verdict.text()


def test_returning_none_is_a_sentence(tmp_path):
    verdict = _grade_head(tmp_path, "pass\n")
    assert verdict.status == outcomes.FAILED
    assert "should be an array" in verdict.text() or "NoneType" in verdict.text()


def test_hang_is_stopped_by_the_time_limit(tmp_path):
    verdict = _grade_head(tmp_path, "while True:\n    pass\n", timeout_s=1)
    assert verdict.status == outcomes.FAILED
    assert verdict.checks[0].status == outcomes.TIMED_OUT
    assert "did not finish within 1 s" in verdict.text()
    # the first time-out stops the run: the checks after it are not run, rather than each waiting its limit
    assert all(c.status == outcomes.SKIPPED for c in verdict.checks[1:]) and "did not run" in verdict.text()


def test_ctrl_c_in_process_reads_stopped_never_passed(tmp_path):
    """A KeyboardInterrupt while a check runs (Ctrl-C, the notebook's Stop) ends the run as "stopped"; pytest
    itself would report the checks so far and carry on as if they were all."""
    verdict = _grade_head(tmp_path, "import os, signal\nos.kill(os.getpid(), signal.SIGINT)\nreturn v\n")
    import signal
    said = (f"{verdict.text()}\nstatuses: {[c.status for c in verdict.checks]}, {verdict.seconds:.2f} s; "
            f"SIGINT's handler now: {signal.getsignal(signal.SIGINT)!r}")  # SIG_IGN: see tests/conftest.py
    assert verdict.stopped and verdict.status == outcomes.STOPPED and not verdict.passed, said
    assert verdict.checks[0].status == outcomes.STOPPED, said
    assert "stopped after 0 of" in verdict.text() and "Well done" not in verdict.text()


def test_syntax_error_names_the_line(tmp_path):
    verdict = _grade_head(tmp_path, "return (q @ v\n")
    assert verdict.status == outcomes.FAILED
    assert "syntax error" in verdict.text()


def test_missing_name_in_a_namespace():
    verdict = runner.run_suite(HEAD, {"Hed": object()})
    assert verdict.status == outcomes.FAILED
    assert "does not define `Head`" in verdict.text()


def test_missing_task_file(tmp_path):
    verdict = runner.run_suite(HEAD, tmp_path)
    assert "task03_head.py does not exist" in verdict.text()


def test_import_time_error_is_a_sentence(tmp_path):
    (tmp_path / "task03_head.py").write_text("import jax\nraise ValueError('oops at import')\n")
    verdict = runner.run_suite(HEAD, tmp_path)
    assert verdict.status == outcomes.FAILED
    assert "Importing" in verdict.text() and "oops at import" in verdict.text()


def test_notebook_namespace_is_graded():
    namespace = {}
    exec((task_list.REFERENCE_DIR / "task03_head.py").read_text(), namespace)
    assert runner.run_suite(HEAD, namespace).status == outcomes.PASSED


def test_single_file_implementation(tmp_path):
    path = tmp_path / "solution.py"
    shutil.copy(task_list.REFERENCE_DIR / "task03_head.py", path)
    assert runner.run_suite(HEAD, path).status == outcomes.PASSED


def test_bad_impl_spec_is_a_sentence(tmp_path):
    with pytest.raises(implementation.LoadError, match="neither"):
        implementation.resolve(tmp_path / "nope")


@pytest.mark.parametrize("task", task_list.TASKS, ids=[t.stem for t in task_list.TASKS])
def test_stubs_read_not_started(task):
    """Copying reference files of tasks 1..k into tasks/ turns exactly tasks 1..k green: a task's verdict
    depends only on its own file and on the files of the earlier tasks it builds on, so it is enough that
    every stub reads "not started" and every reference passes (blocking is tested per task)."""
    assert all(b < task.number for b in task.builds_on)
    stub = runner.run_suite(task, "tasks")
    assert stub.status == outcomes.NOT_STARTED, stub.text(verbose=True)


@pytest.mark.slow
@pytest.mark.parametrize("task", task_list.TASKS, ids=[t.stem for t in task_list.TASKS])
def test_reference_passes_through_the_grader(task):
    """The grader's verdict on the reference is a pass. (The default run already runs every suite against the
    reference under plain pytest; this is the same through run_suite, as a learner's check goes.)"""
    reference = runner.run_suite(task, "reference")
    assert reference.status == outcomes.PASSED, reference.text(verbose=True)


def test_every_task_has_its_files():
    for task in task_list.TASKS:
        for path in (task_list.TASKS_DIR / f"{task.stem}.py", task_list.REFERENCE_DIR / f"{task.stem}.py",
                     task.test_file, task.lesson_file, task.hints_file):
            assert path.exists(), f"task {task.number} is missing {path.relative_to(task_list.REPO_ROOT)}"


def test_public_names_agree():
    """tasks/, reference/ and the catalog name the same public objects."""
    stubs, reference = implementation.resolve("tasks"), implementation.resolve("reference")
    for task in task_list.TASKS:
        for name in task.names:
            stub_obj, ref_obj = stubs.get(task, name), reference.get(task, name)
            assert type(stub_obj) is type(ref_obj), f"task {task.number}: `{name}` differs in kind"
            if isinstance(ref_obj, type):
                import dataclasses
                if dataclasses.is_dataclass(ref_obj):
                    ref_fields = [f.name for f in dataclasses.fields(ref_obj)]
                    stub_fields = [f.name for f in dataclasses.fields(stub_obj)]
                    assert ref_fields == stub_fields, f"task {task.number}: `{name}` fields differ"
            else:
                import inspect
                assert inspect.signature(stub_obj) == inspect.signature(ref_obj), (
                    f"task {task.number}: `{name}` signatures differ")


def test_every_stub_says_its_task_number():
    """The checker tells "not started" from "builds on task N" by the stub's message."""
    for task in task_list.TASKS:
        source = (task_list.TASKS_DIR / f"{task.stem}.py").read_text()
        assert f'NotImplementedError("Task {task.number}:' in source, task.stem


def test_call_signature_mismatch_is_not_blamed_on_the_check(tmp_path):
    (tmp_path / "task03_head.py").write_text(textwrap.dedent('''\
        import flax.linen as nn

        class Head(nn.Module):
            head_size: int
            dropout_rate: float = 0.0

            @nn.compact
            def __call__(self, x, deterministic):  # no default, unlike the lesson
                return nn.Dense(self.head_size, use_bias=False, name="value")(x)
        '''))
    text = runner.run_suite(HEAD, tmp_path).text()
    assert "bug in the check" not in text
    assert "could not be called the way the lesson describes" in text or "your code raised" in text


def _raised(call):
    try:
        call()
    except Exception as err:  # noqa: BLE001 - the exception is what is looked at
        return err
    raise AssertionError("it did not raise")


def test_learner_frames_are_only_the_learners_files(tmp_path):
    """outcomes.learner_frame names the learner's own line: a file of the implementation being graded (an --impl
    directory or file, tasks/) or a notebook cell; never code that has no file of its own ("<string>": what
    dataclasses and Flax generate, an exec inside the grader), nor a module that is no implementation's."""
    (tmp_path / "impl").mkdir()
    (tmp_path / "impl" / "task03_head.py").write_text(textwrap.dedent('''\
        import dataclasses

        @dataclasses.dataclass
        class Sizes:
            width: int = dataclasses.field(default_factory=int.from_bytes)  # raises inside the generated __init__

        def make():
            return Sizes()
        '''))
    module = implementation.resolve(tmp_path / "impl").module_for(HEAD)
    err = _raised(module.make)
    assert "<string>" in [frame.filename for frame in traceback.extract_tb(err.__traceback__)]  # generated __init__
    where = outcomes.learner_frame(err)
    assert where is not None and "task03_head.py, line 8, in make: return Sizes()" in where, where

    single = tmp_path / "solution.py"
    single.write_text("def make():\n    raise ValueError('in a single-file implementation')\n")
    assert "solution.py, line 2, in make" in outcomes.learner_frame(
        _raised(implementation.resolve(single).module_for(HEAD).make))

    generated = {}
    exec(compile("def make():\n    raise ValueError('generated')\n", "<string>", "exec"), generated)
    assert outcomes.learner_frame(_raised(generated["make"])) is None

    import importlib.util
    spec = importlib.util.spec_from_file_location("not_an_implementation", single)
    plain = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(plain)
    assert outcomes.learner_frame(_raised(plain.make)) is None  # a module no implementation loaded


@pytest.mark.parametrize("cell", ["/tmp/ipykernel_4242/2718281828.py", "<ipython-input-3-0123456789ab>"])
def test_a_notebook_cell_is_the_learners(cell):
    """ipykernel names each cell's code after a file that is not on disk, older IPython <ipython-input-...>:
    the worker keeps these names (worker.dumps), and a verdict says "your notebook cell"."""
    cell_globals = {"__name__": "__main__"}
    exec(compile("x = 1\ndef make():\n    raise ValueError('in a cell')\n", cell, "exec"), cell_globals)
    assert outcomes.learner_frame(_raised(cell_globals["make"])).startswith("your notebook cell, line 3, in make")
    assert outcomes.is_learner_file(cell) and not outcomes.is_learner_file("<string>", "__main__")
