"""Benchmark: train the `tiny` configuration on tiny Shakespeare and record what it reached and how fast.

    .venv/bin/python bench/train_tiny.py [PATH_TO_INPUT_TXT] [--max-iters N] [--impl reference|tasks|PATH]
                                         [--checkpoint DIR]

Prints the run's evaluation lines and a summary, and writes bench/results/train_tiny.json: the final eval
and train losses, wall time, training tokens per second, parameter count, the loss curve, the machine
and a 300-character sample. With --checkpoint the trained model is also saved there, as `jaxgpt train` saves
it (for `jaxgpt sample` and `jaxgpt play`). The `tiny` configuration promises eval loss <= 1.75 within 10 minutes on a
2-core CPU: the script records when the run's evaluation first reached it (from process start) and says
whether this run kept that promise.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path

from machine import describe, load_average  # bench/machine.py, beside this script
from recipe import DEFAULT_CORPUS  # ../shared/data/tinyshakespeare/input.txt beside the repository

HERE = Path(__file__).resolve().parent
TARGET_EVAL_LOSS = 1.75
TARGET_MINUTES = 10.0
PROCESS_START = time.perf_counter()  # imports and compiling count
EVAL_LINE = re.compile(r"step (?P<step>[\d,]+): train [\d.]+, eval (?P<eval>[\d.]+)")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("corpus", nargs="?", default=str(DEFAULT_CORPUS),
                        help=f"tiny Shakespeare's input.txt (default {DEFAULT_CORPUS})")
    parser.add_argument("--max-iters", type=int, default=None, help="a shorter run, for tuning")
    parser.add_argument("--impl", default="reference", help="whose MiniGPT (default: the reference's)")
    parser.add_argument("--out", default=str(HERE / "results" / "train_tiny.json"), help="the result file")
    parser.add_argument("--checkpoint", default=None, metavar="DIR",
                        help="also save the trained model there (a directory `jaxgpt sample` and `jaxgpt play` read)")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)

    import jax

    from jaxgpt.training import configs, loop
    from jaxgpt import sampling
    from jaxgpt.data import DataError, load_text

    try:
        text = load_text(args.corpus)
    except DataError as err:
        print(err, file=sys.stderr)
        return 1
    config = configs.get_config("tiny")
    if args.max_iters is not None:
        config = config.with_overrides(max_iters=args.max_iters,
                                       eval_interval=min(config.train.eval_interval, args.max_iters))
    machine = describe()
    started = time.perf_counter()
    reached = []  # (seconds from process start, step) of the evaluations at or below the target

    def log(line: str) -> None:
        print(line, flush=True)
        found = EVAL_LINE.match(line)
        if found and float(found["eval"]) <= TARGET_EVAL_LOSS:
            reached.append((time.perf_counter() - PROCESS_START, int(found["step"].replace(",", ""))))

    history = loop.train(config, impl=args.impl, text=text, out_dir=args.checkpoint,
                         progress=not args.no_progress, log=log)
    wall = time.perf_counter() - started

    # A sample from the trained model, as `jaxgpt sample` would print it.
    tokenizer = history.tokenizer
    model = loop.build_model(loop.model_class(args.impl, 1), 
                                 config.with_vocab_size(tokenizer.vocab_size))
    ids = sampling.sample(model, history.params, tokenizer.encode("\n"), jax.random.PRNGKey(0), 300)
    sample_text = tokenizer.decode(ids[1:])

    result = {
        "config": "tiny" if args.max_iters is None else f"tiny, max_iters={args.max_iters}",
        "final_eval_loss": round(history.final_eval_loss, 4),
        "final_train_loss": round(history.final_train_loss, 4),
        "wall_seconds": round(wall, 1),
        "compile_seconds": round(history.compile_seconds, 1),
        "tokens_per_second": round(history.tokens_per_second),
        "n_params": history.n_params,
        "steps": history.steps,
        "eval_losses": [round(v, 4) for v in history.eval_losses],
        "train_losses": [round(v, 4) for v in history.train_losses],
        "target": f"eval loss <= {TARGET_EVAL_LOSS} within {TARGET_MINUTES:g} minutes",
        "seconds_to_target": round(reached[0][0], 1) if reached else None,  # from process start
        "step_at_target": reached[0][1] if reached else None,
        "met_target": bool(reached and reached[0][0] <= TARGET_MINUTES * 60),
        "machine": {**machine, "device": str(jax.devices()[0]), "load_average_at_end": load_average()},
        "sample": sample_text,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1, ensure_ascii=False) + "\n")
    if reached:
        print(f"eval loss <= {TARGET_EVAL_LOSS} first at step {reached[0][1]:,}, "
              f"{reached[0][0] / 60:.1f} min after the process started")
    print(f"\ntiny: eval loss {result['final_eval_loss']} (train {result['final_train_loss']}) after "
          f"{history.steps[-1]:,} steps, {wall / 60:.1f} min wall, {result['tokens_per_second']:,} tokens/s, "
          f"{history.n_params:,} parameters; target {result['target']}: "
          f"{'met' if result['met_target'] else 'NOT met'}.")
    print(f"sample:\n{sample_text}\n\nwritten to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
