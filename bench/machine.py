"""What every benchmark says about the machine it ran on: the CPU, the cores, the load, the versions."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


def cpu_model() -> str:
    """The CPU's model name (Linux's /proc/cpuinfo), else what the platform module knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def load_average() -> list[float] | None:
    return [round(v, 2) for v in os.getloadavg()] if hasattr(os, "getloadavg") else None


def versions(*packages: str) -> dict[str, str | None]:
    found = {}
    for package in packages:
        try:
            found[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            found[package] = None
    return found


def describe() -> dict:
    """The machine as a result file records it. The device is JAX's first, when JAX is already imported
    (this module never imports it: a PyTorch-only process must not pay for it)."""
    device = None
    if "jax" in sys.modules:
        import jax

        device = str(jax.devices()[0])
    commit = None
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                cwd=REPO_ROOT, timeout=10).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        pass
    return {"cpu": cpu_model(), "cpus": os.cpu_count(),
            "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
            "load_average_at_start": load_average(), "platform": platform.platform(),
            "python": platform.python_version(), **versions("jax", "jaxlib", "flax", "optax", "torch"),
            "device": device, "xla_flags": os.environ.get("XLA_FLAGS", ""), "commit": commit,
            "date": time.strftime("%Y-%m-%d %H:%M %Z")}
