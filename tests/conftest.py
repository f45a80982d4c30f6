"""Every task suite takes the implementation under test from `--impl` (or from the notebook); see
jaxgpt/grader/pytest_plugin.py."""

pytest_plugins = ["jaxgpt.grader.pytest_plugin"]

import os

# `jaxgpt check` run by a test grades in a worker of its own: a background grader would outlive the test run.
# tests/test_grader_server.py turns it on where it tests it.
os.environ.setdefault("JAXGPT_BACKGROUND", "off")


def pytest_configure(config):
    """A session the grader runs (jaxgpt/grader/runner.py's run_suite: a learner's check, or a test that grades)
    skips pytest's closing garbage collection. pytest collects all garbage twice as each session ends, to report
    exceptions raised in `__del__`; a grading session throws its output away, so that report is never read, and
    in a process that has run many checks (the grading worker, the project's own test run) each collection walks
    every object JAX and Flax keep alive: about a second each, late in `uv run pytest`, where some thirty sessions
    are graded. The project's own run keeps its collection."""
    if not any(getattr(plugin, "jaxgpt_injects_implementation", False)
               for plugin in config.invocation_params.plugins or ()):
        return
    try:
        from _pytest.unraisableexception import gc_collect_iterations_key
    except ImportError:  # a pytest before 8.4 collects once, at the end of the whole run only
        return
    config.stash[gc_collect_iterations_key] = 0


def pytest_collection_finish(session):
    """A test module may define `start_early(session, items)`: called here, once collection is done, with the
    module's selected tests, to start a process that its tests will wait for (tests/test_task14_sharding.py starts
    its checks' process on 8 simulated devices), so that the process works while the tests before them run. If it
    cannot start, the module's tests start it themselves and say what went wrong."""
    if session.config.option.collectonly:
        return
    selected: dict = {}
    for item in session.items:
        module = getattr(item, "module", None)
        if module is not None and callable(getattr(module, "start_early", None)):
            selected.setdefault(module, []).append(item)
    for module, items in selected.items():
        try:
            module.start_early(session, items)
        except Exception:  # noqa: BLE001 - the tests start it again, and report the failure as a check's
            pass
