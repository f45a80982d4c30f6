"""Benchmark: the reference loss ladder (jaxgpt/ladder.py) on tiny Shakespeare, as the lessons and README show it.

    .venv/bin/python bench/ladder.py [--data PATH] [--steps 5000] [--gpu] [--out PATH] [--picture PATH]

Trains every rung of the video (bigram, one head, multi-head, + feed-forward, + residual, + LayerNorm, and a
CPU-sized "dropout and scale") from the reference modules with the same steps and seed, prints the table, and
writes bench/results/ladder.json (the machine, the budget, and per rung: parameters, eval and train loss, wall
seconds, the curve, the video's figure) and pictures/loss_ladder.png. The GPU rung (the video's 10.8M-parameter
model) runs only with --gpu or on a GPU. Wall seconds count building, compiling, training and evaluating a rung;
they depend on the machine and on what else runs on it (read them with the load averages recorded beside them).
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata
import json
import os
import platform
import sys
import time
from pathlib import Path

from machine import cpu_model  # bench/machine.py, beside this script

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))
CORPUS = REPO_ROOT.parent / "shared" / "data" / "tinyshakespeare" / "input.txt"


def machine() -> dict:
    import jax

    return {"cpu": cpu_model(), "cpus": os.cpu_count(),
            "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
            "load_average_at_start": [round(v, 2) for v in os.getloadavg()], "platform": platform.platform(),
            "python": platform.python_version(), "jax": jax.__version__,
            "jaxlib": importlib.metadata.version("jaxlib"), "flax": importlib.metadata.version("flax"),
            "device": str(jax.devices()[0]), "date": time.strftime("%Y-%m-%d %H:%M %Z")}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(CORPUS), help=f"tiny Shakespeare's input.txt (default {CORPUS})")
    parser.add_argument("--steps", type=int, default=None, help="steps per rung (default: the video's 5,000)")
    parser.add_argument("--eval-iters", type=int, default=None, help="batches per eval loss (default 200)")
    parser.add_argument("--gpu", action="store_true", help="also run the GPU-sized rung")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "bench" / "results" / "ladder.json")
    parser.add_argument("--picture", type=Path, default=REPO_ROOT / "pictures" / "loss_ladder.png")
    args = parser.parse_args(argv)

    from jaxgpt import ladder
    from jaxgpt.data import DataError, load_text

    try:
        text = load_text(args.data, named_by="--data")
    except DataError as err:
        print(err, file=sys.stderr)
        return 1
    result = {"what": "the reference loss ladder: jaxgpt/ladder.py's rungs trained from reference/ with the same "
                      "steps and seed (bench/ladder.py)",
              "machine": machine(),
              "corpus": {"characters": len(text), "sha256": hashlib.sha256(text.encode("utf-8")).hexdigest()}}
    m = result["machine"]
    print(f"The loss ladder on {m['cpu']} ({m['cpus']} cores, {m['device']}), jax {m['jax']}, "
          f"load average {m['load_average_at_start']}", flush=True)
    started = time.perf_counter()
    run = ladder.train_ladder(
        "reference", text=text, steps=args.steps or ladder.DEFAULT_STEPS,
        eval_iters=args.eval_iters or ladder.DEFAULT_EVAL_ITERS, gpu=True if args.gpu else None,
        say=lambda line: print(line, flush=True))
    m["load_average_at_end"] = [round(v, 2) for v in os.getloadavg()]
    result.update(run.to_dict())
    result["total_wall_seconds"] = round(time.perf_counter() - started, 1)
    print()
    print(run.table())

    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    axes = ladder.plot_ladder(result)
    args.picture.parent.mkdir(parents=True, exist_ok=True)
    axes[0].figure.savefig(args.picture, dpi=110)
    for path in (args.out, args.picture):
        print(f"wrote {path.relative_to(REPO_ROOT) if path.is_relative_to(REPO_ROOT) else path}")
    print(f"total {result['total_wall_seconds'] / 60:.1f} min; load average {m['load_average_at_start']} at the "
          f"start, {m['load_average_at_end']} at the end")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
