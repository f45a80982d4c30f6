"""Benchmark: the notebook's finale as a learner runs it, with the reference solutions, against the README's curve.

    .venv/bin/python bench/finale.py [PATH_TO_INPUT_TXT] [--out PATH]

Runs the first two code cells of lessons/finale.md (the data and sizes, then the training loop: one jitted
`train_step` per Python step, an evaluation every `eval_interval` steps) in one namespace holding the
reference's tasks 6 and 7, exactly as the notebook runs them once those tasks are solved. The finale promises
the settings of the README's reference curve (bench/results/train_tiny.json, `jaxgpt train --config tiny`),
so its evaluations are compared with that curve's at every step both evaluate. The two runs draw their batches
and dropout masks from different key streams and estimate the eval loss from random batches, so they agree
within noise, not digit for digit.

Writes bench/results/finale.json: the finale's eval losses, the README curve's at the same steps and the
largest gap between them, the training cell's wall time (which the finale quotes) and the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from pathlib import Path

from machine import describe, load_average  # bench/machine.py, beside this script
from recipe import DEFAULT_CORPUS  # ../shared/data/tinyshakespeare/input.txt beside the repository

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
FINALE = REPO / "lessons" / "finale.md"
CURVE = HERE / "results" / "train_tiny.json"
FINALE_TASKS = (6, 7)  # what the finale's training cell needs (the notebook's own needs_tasks)
CELL = re.compile(r"```python run\n(.*?)```", re.S)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("corpus", nargs="?", default=str(DEFAULT_CORPUS),
                        help=f"tiny Shakespeare's input.txt (default {DEFAULT_CORPUS})")
    parser.add_argument("--out", default=str(HERE / "results" / "finale.json"), help="the result file")
    args = parser.parse_args(argv)
    corpus = Path(args.corpus)
    if not corpus.is_file():
        print(f"There is no file {corpus}: name tiny Shakespeare's input.txt.", file=sys.stderr)
        return 1
    if not CURVE.is_file():
        print(f"{CURVE.relative_to(REPO)} is missing: run `python -m bench train-tiny` first (the README's curve).",
              file=sys.stderr)
        return 1
    os.environ["JAXGPT_DATA"] = str(corpus)  # what the finale's load_text() reads
    sys.path.insert(0, str(REPO))
    machine = describe()

    from jaxgpt.grader import implementation, task_list

    reference = implementation.resolve("reference")
    namespace: dict = {"__name__": "__finale__"}
    for number in FINALE_TASKS:  # the tasks' public names, as the notebook's solved cells define them
        task = task_list.get_task(number)
        namespace.update({name: reference.get(task, name) for name in task.names})
    setup, training = CELL.findall(FINALE.read_text(encoding="utf-8"))[:2]
    began = time.perf_counter()
    exec(compile(setup, f"{FINALE.name}, cell 1", "exec"), namespace)
    setup_seconds = time.perf_counter() - began
    began = time.perf_counter()
    exec(compile(training, f"{FINALE.name}, cell 2", "exec"), namespace)
    training_seconds = time.perf_counter() - began
    if namespace.get("trained_state") is None:
        print("The finale's training cell did not train (a task it needs is not finished).", file=sys.stderr)
        return 1

    curve = json.loads(CURVE.read_text(encoding="utf-8"))
    finale = {int(step): loss for step, loss in namespace["eval_losses"].items()}
    rows = [{"step": step, "readme": readme, "finale": round(finale[step], 4),
             "gap": round(finale[step] - readme, 4)}
            for step, readme in zip(curve["steps"], curve["eval_losses"]) if step in finale]
    if not rows:  # a shortened run (JAXGPT_SMOKE=1) evaluates at no step of the curve
        print(f"The finale evaluated at steps {sorted(finale)}, none of the README curve's {curve['steps']}.",
              file=sys.stderr)
        return 1
    largest = max(rows, key=lambda row: abs(row["gap"]))
    result = {
        "what": "lessons/finale.md's data and training cells run with the reference's tasks 6 and 7, compared with "
                "bench/results/train_tiny.json (the README's curve) at every step both evaluate",
        "steps": namespace["max_steps"],
        "batch_size": namespace["batch_size"], "block_size": namespace["block_size"],
        "training_cell_seconds": round(training_seconds, 1),
        "setup_cell_seconds": round(setup_seconds, 1),
        "tokens_per_second": round(namespace["max_steps"] * namespace["batch_size"] * namespace["block_size"]
                                   / training_seconds),
        "final_eval_loss": rows[-1]["finale"],
        "compared": rows,
        "largest_gap": largest,
        "readme_curve_machine": curve.get("machine", {}).get("platform"),
        "machine": {**machine, "load_average_at_end": load_average()},
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print("\nstep    README  finale     gap")
    for row in rows:
        print(f"{row['step']:>5,}  {row['readme']:.4f}  {row['finale']:.4f}  {row['gap']:+.4f}")
    print(f"training cell: {training_seconds / 60:.1f} min ({result['tokens_per_second']:,} tokens/s); the largest "
          f"gap {largest['gap']:+.3f} at step {largest['step']:,}")
    print(f"written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
