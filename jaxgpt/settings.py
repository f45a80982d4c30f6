"""Switches read from the environment, so that CI can run the notebook and commands in seconds.

JAXGPT_SMOKE=1   the notebook is being tested: training cells run a handful of steps.
JAXGPT_DATA=PATH a local copy of tiny Shakespeare (or any text) to read instead of downloading.
"""

from __future__ import annotations

import os


def smoke() -> bool:
    return os.environ.get("JAXGPT_SMOKE", "").strip() not in ("", "0", "false", "no")


def steps(full: int, smoke_steps: int = 5) -> int:
    """`full` steps normally, `smoke_steps` when the notebook runs under test."""
    return smoke_steps if smoke() else full
