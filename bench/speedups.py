"""What each change to the reference training loop buys: the `speedrun` configuration's training tokens per
second under one change at a time, each in a process of its own, in turns, median of --repeats rounds.

    python -m bench speedups [--config speedrun] [--repeats 3]

The variants: one step per compiled call (a Python loop around a jitted step) against 5, 25 and 100 steps per
call (jax.lax.scan inside the call); the state's buffers donated to the call or copied; and XLA CPU flags
(the old runtime, fast math, a single thread per operation). Prints a table and writes
bench/results/speedups.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

import machine  # noqa: E402
from throughput import config_dict  # noqa: E402

# name: (steps per call, donate, XLA_FLAGS)
VARIANTS = {
    "1 step per call": (1, False, ""),
    "5 steps per call": (5, False, ""),
    "25 steps per call": (25, False, ""),
    "100 steps per call": (100, False, ""),
    "25 per call, donated": (25, True, ""),
    "25 per call, old CPU runtime": (25, False, "--xla_cpu_use_thunk_runtime=false"),
    "25 per call, fast math": (25, False, "--xla_cpu_enable_fast_math=true"),
    "25 per call, one thread per op": (25, False, "--xla_cpu_multi_thread_eigen=false"),
}


def run(config: dict, steps_per_call: int, donate: bool, flags: str, seconds: float) -> float | None:
    calls = max(3, int(seconds / (0.06 * steps_per_call)))  # about `seconds` of timed calls at 60 ms a step
    argv = [sys.executable, "bench/jax_run.py", "throughput", "--config", json.dumps(config), "--calls",
            str(calls), "--steps-per-call", str(steps_per_call)] + (["--donate"] if donate else [])
    env = {**os.environ, "XLA_FLAGS": (os.environ.get("XLA_FLAGS", "") + " " + flags).strip()}
    done = subprocess.run(argv, capture_output=True, text=True, cwd=HERE.parent, env=env, timeout=900)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode or not lines:
        print((done.stdout + done.stderr)[-800:])
        return None
    return json.loads(lines[-1])["tokens_per_second"]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="speedrun")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=8.0, help="timed seconds per run, about")
    parser.add_argument("--note", default="")
    parser.add_argument("--out", default=str(HERE / "results" / "speedups.json"))
    args = parser.parse_args(argv)
    config = config_dict(args.config)
    described = machine.describe()
    figures = {name: [] for name in VARIANTS}
    for round_ in range(args.repeats):
        for name, (k, donate, flags) in VARIANTS.items():
            figures[name].append(run(config, k, donate, flags, args.seconds))
            print(f"round {round_ + 1}: {name:<32} {figures[name][-1]} tokens/s", flush=True)
    base = statistics.median(t for t in figures["1 step per call"] if t)
    table = {name: {"median_tokens_per_second": round(statistics.median(v for v in runs if v)),
                    "runs": runs, "over_one_step_per_call": round(statistics.median(v for v in runs if v) / base, 2)}
             for name, runs in figures.items() if any(runs)}
    described["load_average_at_end"] = machine.load_average()
    out = {"config": args.config, "variants": table, "repeats": args.repeats, "machine": described,
           "note": args.note}
    Path(args.out).write_text(json.dumps(out, indent=1) + "\n")
    for name, row in table.items():
        print(f"{name:<32} {row['median_tokens_per_second']:>8,} tokens/s  x{row['over_one_step_per_call']:.2f}")
    print(f"load average {described['load_average_at_start']} -> {described['load_average_at_end']}; wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
