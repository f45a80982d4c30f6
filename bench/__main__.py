"""One entry point for the benchmarks: `python -m bench NAME [its options]`; `python -m bench` lists them.

Each benchmark is also a script of its own (bench/NAME.py): this runs it as one, with its own --help."""

from __future__ import annotations

import runpy
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent

BENCHMARKS = {
    "peak": ("peak.py", "this machine's float32 matmul GFLOP/s at the models' shapes"),
    "throughput": ("throughput.py", "tokens/s, MFU, compile and memory: JAX against PyTorch eager and compiled"),
    "time-to-loss": ("time_to_loss.py", "seconds from process start to eval loss 1.89, JAX against PyTorch"),
    "speedups": ("speedups.py", "what each change to the training loop buys, one at a time"),
    "train-tiny": ("train_tiny.py", "the `tiny` configuration's full run: the README's figures"),
    "finale": ("finale.py", "the notebook's finale with the reference, against the README's curve"),
    "check-latency": ("check_latency.py", "how long `jaxgpt check N` and check(N) take, cold and warm"),
    "ladder": ("ladder.py", "the video's loss ladder from the reference's modules"),
    "loops": ("loops.py", "what Part 4's scans buy: compile time against depth, steps per second"),
    "kv-cache": ("kv_cache.py", "what task 11's cache buys: tokens per second of generation"),
    "scale": ("scale.py", "Part 5's options: bfloat16, accumulation, meshes"),
    "lstm-vs-gpt": ("lstm_vs_gpt.py", "the LSTM against the GPT at the same parameters and wall clock"),
}
ALIASES = {"train": "throughput", "ttl": "time-to-loss"}


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help", "list"):
        print("usage: python -m bench NAME [options]   (NAME --help for its options)\n")
        for name, (script, what) in BENCHMARKS.items():
            print(f"  {name:<14} {what}  (bench/{script})")
        return 0
    name = ALIASES.get(argv[0], argv[0])
    if name not in BENCHMARKS:
        print(f"There is no benchmark {argv[0]!r}; the benchmarks are {', '.join(BENCHMARKS)}.")
        return 2
    script = HERE / BENCHMARKS[name][0]
    sys.path.insert(0, str(HERE))
    sys.argv = [str(script), *argv[1:]]
    try:
        runpy.run_path(str(script), run_name="__main__")
    except SystemExit as done:
        return int(done.code or 0) if not isinstance(done.code, str) else 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
