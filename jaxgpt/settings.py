"""Every `JAXGPT_*` environment variable, read here and nowhere else.

JAXGPT_SMOKE=1            the notebook is being tested: training cells run a handful of steps.
JAXGPT_DATA=PATH          a local copy of tiny Shakespeare (or any text) to read instead of downloading.
JAXGPT_IMPL=SPEC          what plain pytest grades when --impl is not given (default: reference).
JAXGPT_XLA_CACHE=DIR|off  the persistent compilation cache of the checks (default ~/.cache/jaxgpt/xla).
JAXGPT_CATALOGUE_EXCLUDE  set by the catalogue runner: the entry being graded, which may not diagnose itself.
JAXGPT_BACKGROUND=off     `jaxgpt check` grades in a worker of its own instead of the background grader.
JAXGPT_BACKGROUND_DIR     where background graders keep their sockets (default ~/.cache/jaxgpt/background).
JAXGPT_BACKGROUND_IDLE_S  how long a background grader waits for the next check before it exits (default 1200).
"""

from __future__ import annotations

import os
from pathlib import Path

DATA = "JAXGPT_DATA"
CATALOGUE_EXCLUDE = "JAXGPT_CATALOGUE_EXCLUDE"


def smoke() -> bool:
    return os.environ.get("JAXGPT_SMOKE", "").strip() not in ("", "0", "false", "no")


def steps(full: int, smoke_steps: int = 5) -> int:
    """`full` steps normally, `smoke_steps` when the notebook runs under test."""
    return smoke_steps if smoke() else full


def data_path() -> str:
    """The text named by JAXGPT_DATA, or "" when it is not set."""
    return os.environ.get(DATA, "").strip()


def impl_spec() -> str | None:
    return os.environ.get("JAXGPT_IMPL") or None


def xla_cache_dir() -> str | None:
    """Where checks keep compiled programs between processes; None when switched off."""
    value = os.environ.get("JAXGPT_XLA_CACHE", str(Path.home() / ".cache" / "jaxgpt" / "xla"))
    return None if value in ("", "off") else value


def catalogue_exclude() -> str:
    return os.environ.get(CATALOGUE_EXCLUDE, "")


def background() -> bool:
    """Whether `jaxgpt check` may use (and start) the background grader."""
    return os.environ.get("JAXGPT_BACKGROUND", "").strip().lower() not in ("off", "0", "false", "no")


def background_dir() -> Path:
    value = os.environ.get("JAXGPT_BACKGROUND_DIR", "").strip()
    return Path(value) if value else Path.home() / ".cache" / "jaxgpt" / "background"


def background_idle_s() -> float:
    try:
        return float(os.environ.get("JAXGPT_BACKGROUND_IDLE_S", "") or 1200.0)
    except ValueError:
        return 1200.0
