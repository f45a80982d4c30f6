"""Training throughput side by side: the JAX reference against the PyTorch peer (eager and torch.compile), in one
run, for the `tiny` configuration, the `speedrun` configuration (nanoGPT's CPU recipe shape) and the video's.

    python -m bench throughput [--configs tiny,speedrun,video] [--peers eager,compile] [--out ...]

For each configuration and implementation, a process of its own (bench/jax_run.py, bench/torch_peer.py) trains
on random tokens: compile seconds, the median step time over timed calls, tokens per second, memory (XLA's
account of the compiled steps, the process's peak RSS), and model FLOPs utilisation: recipe.flops_per_token x
tokens per second over this machine's matmul peak (peak.py, measured first in the same run). The video's model
gets a few steps only on a CPU. Prints a table and writes bench/results/throughput.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

import machine  # noqa: E402
import recipe  # noqa: E402

# Timed calls x steps per call, per configuration: enough steps to be steady, few on the video's model.
TIMING = {"tiny": (5, 10), "speedrun": (5, 25), "video": (3, 1), "challenge": (5, 25), "micro": (5, 25)}


def config_dict(name: str, vocab_size: int = 65) -> dict:
    from jaxgpt.training import configs

    return configs.get_config(name).with_vocab_size(vocab_size).to_dict()


def run_child(argv: list[str], timeout: float) -> dict:
    """The last JSON line a child printed, with its wall seconds; {"failed": ...} when it did not finish."""
    started = time.perf_counter()
    try:
        done = subprocess.run([sys.executable, *argv], capture_output=True, text=True, timeout=timeout,
                              cwd=HERE.parent, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    except subprocess.TimeoutExpired:
        return {"failed": f"ran past {timeout:.0f} s"}
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode or not lines:
        return {"failed": (done.stdout + done.stderr)[-1500:]}
    result = json.loads(lines[-1])
    result["process_s"] = round(time.perf_counter() - started, 1)
    return result


def torch_available() -> bool:
    try:
        import importlib.util

        return importlib.util.find_spec("torch") is not None
    except (ImportError, ValueError):
        return False


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", default="tiny,speedrun,video")
    parser.add_argument("--peers", default="eager,compile", help="PyTorch modes to run beside JAX ('' for none)")
    parser.add_argument("--peak", default=None, help="a peak.json to use instead of measuring the peak again")
    parser.add_argument("--note", default="", help="a word on the conditions, kept with the results")
    parser.add_argument("--out", default=str(HERE / "results" / "throughput.json"))
    args = parser.parse_args(argv)
    peers = [p for p in args.peers.split(",") if p]
    if peers and not torch_available():
        print("PyTorch is not installed: the peer columns are left out (install the `bench` extra, README).")
        peers = []
    described = machine.describe()
    if args.peak:
        peak = json.loads(Path(args.peak).read_text())
    else:
        peak_out = Path(args.out).with_name("peak.json")
        subprocess.run([sys.executable, str(HERE / "peak.py"), "--out", str(peak_out)], check=True, cwd=HERE.parent)
        peak = json.loads(peak_out.read_text())
    peak_gflops = peak["peak_gflops"]
    results = {}
    for name in [c for c in args.configs.split(",") if c]:
        cfg = config_dict(name)
        calls, k = TIMING.get(name, (5, 10))
        fpt = recipe.flops_per_token(cfg["model"])
        row = {"flops_per_token": fpt, "batch_size": cfg["train"]["batch_size"],
               "block_size": cfg["model"]["block_size"]}
        arg = json.dumps(cfg)
        runs = {"jax": ["bench/jax_run.py", "throughput", "--config", arg, "--calls", str(calls),
                        "--steps-per-call", str(k)]}
        for mode in peers:
            runs[f"torch-{mode}"] = ["bench/torch_peer.py", "throughput", "--config", arg, "--mode", mode,
                                     "--calls", str(calls), "--steps-per-call", str(k)]
        for impl, child in runs.items():
            r = run_child(child, timeout=1800)
            if "tokens_per_second" in r:
                r["mfu"] = round(fpt * r["tokens_per_second"] / (peak_gflops * 1e9), 3)
            row[impl] = r
            print(f"{name:>9} {impl:>14}: {_cell(r)}", flush=True)
        jax_tps = row["jax"].get("tokens_per_second")
        for mode in peers:
            other = row[f"torch-{mode}"].get("tokens_per_second")
            if jax_tps and other:
                row[f"jax_over_torch_{mode}"] = round(jax_tps / other, 2)
        results[name] = row
    described["load_average_at_end"] = machine.load_average()
    out = {"peak_gflops": peak_gflops, "configs": results, "machine": described, "note": args.note}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1) + "\n")
    print(table(out))
    print(f"wrote {args.out}")
    return 0


def _cell(r: dict) -> str:
    if "failed" in r:
        return "FAILED: " + r["failed"].strip().splitlines()[-1][:200]
    first = r.get("compile_s", r.get("first_step_s"))
    return (f"{r['tokens_per_second']:>8,} tokens/s  MFU {r['mfu']:.0%}  first/compile {first:.1f} s  "
            f"peak RSS {r['peak_rss_mib']} MiB")


def table(out: dict) -> str:
    lines = [f"config     impl            tokens/s    MFU  compile/first s  peak RSS MiB   (peak "
             f"{out['peak_gflops']:.0f} GFLOP/s)"]
    for name, row in out["configs"].items():
        for impl in ("jax", "torch-eager", "torch-compile"):
            r = row.get(impl)
            if not r or "failed" in r:
                continue
            first = r.get("compile_s", r.get("first_step_s"))
            lines.append(f"{name:<10} {impl:<14} {r['tokens_per_second']:>9,}  {r['mfu']:>5.0%}  {first:>15.1f}"
                         f"  {r['peak_rss_mib']:>12}")
        ratios = [f"{k[len('jax_over_'):]} x{v}" for k, v in row.items() if k.startswith("jax_over_")]
        if ratios:
            lines.append(f"{'':<10} JAX over " + ", ".join(ratios))
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
