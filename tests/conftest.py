"""Every task suite takes the implementation under test from `--impl` (or from the notebook); see
jaxgpt/grader/pytest_plugin.py."""

pytest_plugins = ["jaxgpt.grader.pytest_plugin"]
