"""The pytest side of grading: the `--impl` option, the `impl` fixture, and a verdict on every check.

Loaded by `tests/conftest.py`, so plain `pytest`, the command line and the notebook share it.
"""

from __future__ import annotations

import pytest

from jaxgpt.grader import task_list, implementation, outcomes
from jaxgpt import settings



def pytest_addoption(parser):
    group = parser.getgroup("jaxgpt")
    group.addoption(
        "--impl", default=None,
        help="the implementation to grade: `reference` (the default, so that the project's own test run "
             "proves the suites), `tasks` (your work), a directory laid out like reference/, or one .py file")


def _configured_implementation(config) -> implementation.Implementation:
    for plugin in config.pluginmanager.get_plugins():
        if getattr(plugin, "jaxgpt_injects_implementation", False):
            return plugin.implementation
    cached = getattr(config, "_jaxgpt_implementation", None)
    if cached is None:
        spec = config.getoption("--impl") or settings.impl_spec() or "reference"
        cached = implementation.resolve(spec)
        config._jaxgpt_implementation = cached
    return cached


def task_of(node) -> task_list.Task | None:
    number = getattr(node.module, "TASK", None) if getattr(node, "module", None) else None
    return task_list.get_task(number) if number is not None else None


@pytest.fixture
def impl(request) -> implementation.TaskView:
    """The names of this test file's task, from the implementation under test."""
    task = task_of(request.node)
    if task is None:
        raise RuntimeError(f"{request.node.nodeid}: a task test module must set TASK = <number>")
    return _configured_implementation(request.config).for_task(task)


_REFERENCE: list = []


@pytest.fixture
def reference(request) -> implementation.TaskView:
    """The same task's names from reference/: the other side of the reference-differential checks
    (jaxgpt/grader/differential.py). Imported once per process."""
    task = task_of(request.node)
    if not _REFERENCE:
        _REFERENCE.append(implementation.resolve("reference"))
    return _REFERENCE[0].for_task(task)


@pytest.fixture(autouse=True)
def _highest_matmul_precision():
    # GPUs default to TF32 and TPUs to bfloat16 passes for float32 matmuls; checks compare in full float32.
    import jax
    with jax.default_matmul_precision("highest"):
        yield


def pytest_configure(config):
    import jax

    # Checks run tiny programs once: XLA's optimisation passes cost more than they save there (a cold
    # task check takes about 40% less time without them). Restored afterwards, so the notebook's own training
    # later in the same kernel compiles as usual.
    if "jax_disable_most_optimizations" in jax.config.values:
        config._jaxgpt_saved_optimizations = jax.config.values["jax_disable_most_optimizations"]
        jax.config.update("jax_disable_most_optimizations", True)
    cache_dir = settings.xla_cache_dir()
    if cache_dir:
        try:
            jax.config.update("jax_compilation_cache_dir", cache_dir)
            jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
            jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)
        except Exception:  # an older or newer jax without these flags simply compiles again
            pass


def pytest_unconfigure(config):
    saved = getattr(config, "_jaxgpt_saved_optimizations", None)
    if saved is not None:
        import jax
        jax.config.update("jax_disable_most_optimizations", saved)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    doc = (getattr(item, "function", None).__doc__ or "").strip() if hasattr(item, "function") else ""
    if doc:
        report.jaxgpt_doc = doc.splitlines()[0].rstrip(".")
    task = task_of(item)
    if task is None or report.when == "teardown" and report.passed:
        return
    if report.when == "setup" and report.passed:
        return
    exc = call.excinfo.value if call.excinfo is not None else None
    verdict = outcomes.classify(exc, task, _timeout_of(item))
    report.jaxgpt_status = verdict.status
    report.jaxgpt_message = verdict.message
    if verdict.status in (outcomes.FAILED, outcomes.ERROR, outcomes.NOT_STARTED, outcomes.BLOCKED,
                          outcomes.MISSING, outcomes.TIMED_OUT) and report.longrepr is not None:
        # Plain pytest shows our sentence first, then its own traceback for those who want it (a report's
        # sections would come after the traceback).
        report.longrepr = f"[{verdict.status}] {verdict.message}\n\n{report.longrepr}"


def _timeout_of(item) -> float | None:
    marker = item.get_closest_marker("timeout")
    for value in (marker.args[0] if marker and marker.args else None,
                  item.config.getoption("timeout", None), _ini(item.config, "timeout")):
        try:
            if value not in (None, ""):
                return float(value)
        except (TypeError, ValueError):
            continue
    return None


def _ini(config, name):
    try:
        return config.getini(name)
    except ValueError:
        return None
