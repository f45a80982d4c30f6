"""Every task suite takes the implementation under test from `--impl` (or from the notebook); see
jaxgpt/grader/pytest_plugin.py."""

pytest_plugins = ["jaxgpt.grader.pytest_plugin"]

import os

# `jaxgpt check` run by a test grades in a worker of its own: a background grader would outlive the test run.
# tests/test_grader_server.py turns it on where it tests it.
os.environ.setdefault("JAXGPT_BACKGROUND", "off")
