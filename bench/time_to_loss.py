"""Time to loss: wall seconds from process start (imports and compilation included) until the fixed evaluation of
recipe.py reaches a target eval loss on tiny Shakespeare, the JAX reference against the PyTorch peer on the same
configuration and the PyTorch peer on nanoGPT's own CPU recipe (the baseline a learner would otherwise run), in
turns within one run, median of several rounds.

    python -m bench time-to-loss --data path/to/input.txt [--config speedrun] [--target 1.89] [--repeats 3]
                                 [--peers eager,compile] [--baseline eager]

Each run is a fresh process (bench/jax_run.py race, bench/torch_peer.py race); the clock starts just before the
process is started and stops at the evaluation line that first shows eval loss <= target (evaluations every
--eval-every steps, their cost included). Prints the runs and their medians, writes
bench/results/time_to_loss.json and the loss curves against wall time, pictures/time_to_loss.png.
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
REPO_ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(REPO_ROOT))

import machine  # noqa: E402
import recipe  # noqa: E402


def race_once(impl: str, config: dict, data: str, target: float, eval_every: int, timeout: float) -> dict:
    if impl == "jax":
        child = ["bench/jax_run.py", "race"]
    else:
        child = ["bench/torch_peer.py", "race", "--mode", impl.split("-", 1)[1]]
    child += ["--config", json.dumps(config), "--data", data, "--target", str(target),
              "--eval-every", str(eval_every)]
    started = time.time()
    process = subprocess.Popen([sys.executable, *child], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, cwd=REPO_ROOT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    curve, result = [], None
    try:
        for line in process.stdout:
            if not line.startswith("{"):
                continue
            record = json.loads(line)
            if "reached" in record:
                result = record
                continue
            curve.append([round(record["time"] - started, 2), record["step"], record["eval_loss"]])
            print(f"  {impl:>14} step {record['step']:>5}  eval {record['eval_loss']:.4f}  "
                  f"{curve[-1][0]:6.1f} s", flush=True)
            if time.time() - started > timeout:
                process.kill()
                break
        process.wait(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    if result is None:
        return {"impl": impl, "failed": process.stderr.read()[-1500:], "curve": curve}
    crossing = next((point for point in curve if point[2] <= target), None)
    return {"impl": impl, "reached": result["reached"], "seconds_to_target": None if crossing is None
            else crossing[0], "step_at_target": None if crossing is None else crossing[1],
            "final_eval_loss": result["eval_loss"], "tokens_per_second": result["tokens_per_second"],
            "process_seconds": round(result["time"] - started, 2), "curve": curve}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(recipe.DEFAULT_CORPUS), help="tiny Shakespeare's input.txt")
    parser.add_argument("--config", default="speedrun")
    parser.add_argument("--target", type=float, default=1.89)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--peers", default="eager", help="PyTorch modes raced beside JAX: eager, compile, or ''")
    parser.add_argument("--baseline", default="eager",
                        help="PyTorch modes raced on nanoGPT's CPU recipe (recipe.NANOGPT_CPU_TRAIN), or ''")
    parser.add_argument("--eval-every", type=int, default=100)
    parser.add_argument("--timeout", type=float, default=900, help="seconds before a run is stopped")
    parser.add_argument("--note", default="")
    parser.add_argument("--out", default=str(HERE / "results" / "time_to_loss.json"))
    parser.add_argument("--picture", default=str(REPO_ROOT / "pictures" / "time_to_loss.png"))
    args = parser.parse_args(argv)
    if not Path(args.data).is_file():
        print(f"There is no corpus at {args.data}: give tiny Shakespeare's input.txt with --data.")
        return 1

    from jaxgpt.training import configs

    _, _, vocab = recipe.load_corpus(args.data)
    config = configs.get_config(args.config).with_vocab_size(vocab).to_dict()
    # (label, implementation, configuration): the same configuration for every implementation, then the baseline.
    entries = [("jax", "jax", config)] + [(f"torch-{p}", f"torch-{p}", config) for p in args.peers.split(",") if p]
    entries += [(f"torch-{p}-nanogpt", f"torch-{p}", recipe.nanogpt_cpu(config))
                for p in args.baseline.split(",") if p]
    described = machine.describe()
    runs = {label: [] for label, _, _ in entries}
    for round_ in range(args.repeats):
        for label, impl, race_config in entries:  # in turns, so that a change in the load touches every one
            print(f"round {round_ + 1}/{args.repeats}: {label}", flush=True)
            runs[label].append(race_once(impl, race_config, args.data, args.target, args.eval_every, args.timeout))
    summary = {}
    for label, impl, race_config in entries:
        rs = runs[label]
        times = [r["seconds_to_target"] for r in rs if r.get("seconds_to_target") is not None]
        summary[label] = {
            "recipe": race_config["name"],
            "median_seconds_to_target": round(statistics.median(times), 1) if len(times) == len(rs) else None,
            "seconds_to_target_all": [r.get("seconds_to_target") for r in rs],
            "median_tokens_per_second": round(statistics.median(r["tokens_per_second"] for r in rs
                                                                if "tokens_per_second" in r)) if any(
                "tokens_per_second" in r for r in rs) else None,
            "eval_loss_at_target": [next((p[2] for p in r["curve"] if p[2] <= args.target), None) for r in rs]}
    jax_time = summary["jax"]["median_seconds_to_target"]
    for label, _, _ in entries[1:]:
        other = summary[label]["median_seconds_to_target"]
        if jax_time and other:
            summary[label]["jax_time_fraction"] = round(jax_time / other, 2)
    described["load_average_at_end"] = machine.load_average()
    out = {"config": args.config, "recipe": config, "baseline_recipe": recipe.nanogpt_cpu(config)["train"], "target": args.target, "eval_every": args.eval_every,
           "eval_windows": recipe.EVAL_WINDOWS, "repeats": args.repeats, "summary": summary, "runs": runs,
           "machine": described, "note": args.note}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1) + "\n")
    print(f"\ntime to eval loss <= {args.target} ({args.config}, median of {args.repeats}, from process start):")
    for impl, s in summary.items():
        t = s["median_seconds_to_target"]
        extra = f"  (JAX takes {s['jax_time_fraction']:.2f} of it)" if "jax_time_fraction" in s else ""
        print(f"  {impl:>20} ({s['recipe']}): {'not reached' if t is None else f'{t:.1f} s'}  runs {s['seconds_to_target_all']}"
              f"  {s['median_tokens_per_second']} tokens/s{extra}")
    print(f"load average {described['load_average_at_start']} -> {described['load_average_at_end']}")
    draw(out, args.picture)
    print(f"wrote {args.out} and {args.picture}")
    return 0


def draw(out: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colours = {"jax": "tab:blue", "torch-eager": "tab:orange", "torch-compile": "tab:green",
               "torch-eager-nanogpt": "tab:red", "torch-compile-nanogpt": "tab:purple"}
    fig, ax = plt.subplots(figsize=(7, 4))
    for impl, rs in out["runs"].items():
        for i, r in enumerate(rs):
            if r["curve"]:
                t, _, loss = zip(*r["curve"])
                name = f"{impl} ({out['summary'][impl]['recipe']})"
                ax.plot(t, loss, color=colours.get(impl), alpha=0.8, label=name if i == 0 else None)
    ax.axhline(out["target"], color="grey", linestyle="--", linewidth=1, label=f"target {out['target']}")
    ax.set_xlabel("seconds from process start (imports and compiling included)")
    ax.set_ylabel("eval loss (fixed 256 x 64 characters)")
    ax.set_ylim(top=2.6)
    ax.set_title(f"time to eval loss {out['target']} on tiny Shakespeare")
    ax.legend()
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
