"""Benchmark for Part 4 (tasks 9 and 10): what scanning a loop buys, measured on this machine.

    .venv/bin/python bench/loops.py [--depths 2,4,8,12] [--steps 50] [--impl reference] [--out PATH]

Prints and writes bench/results/loops.json:
  - compile seconds against depth: the training gradient of the unrolled MiniGPT (task 1) and of the
    ScannedMiniGPT (task 9, with and without remat), for n_layer in --depths, at the `tiny` configuration's
    width (n_embd 128, 4 heads, context 64, batch 64). Only XLA's compilation is timed (jit(...).lower(...)
    .compile() on abstract shapes); nothing runs;
  - steps per second of task 7's Python training loop (`train`) against task 10's scanned one (`train_scan`)
    on the `tiny` model (4 layers), each timed over --steps steps after a first, compiling call;
  - the machine: CPU model, cores, load average, jax, jaxlib and flax versions.
A benchmark, not a timed test: the figures depend on the machine and on what else runs on it (read them with
the load average).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

from machine import cpu_model  # bench/machine.py, beside this script

HERE = Path(__file__).resolve().parent
CORPUS = Path("/work/shared/data/tinyshakespeare/input.txt")


def compile_seconds(model, batch_size: int, block_size: int) -> float:
    """Seconds XLA takes to compile the gradient of the training loss (the program a training step runs)."""
    import jax
    import jax.numpy as jnp

    idx = jnp.zeros((batch_size, block_size), jnp.int32)
    params = jax.eval_shape(lambda: model.init(jax.random.key(0), idx))

    def loss(p):
        return model.apply(p, idx, deterministic=False, rngs={"dropout": jax.random.key(1)}).mean()

    started = time.perf_counter()
    jax.jit(jax.grad(loss)).lower(params).compile()
    return time.perf_counter() - started


def steps_per_second(loop, state, data, steps: int, batch_size: int, block_size: int) -> tuple[float, float]:
    """(steps per second over `steps` steps, seconds of the first call, which compiles)."""
    import jax

    started = time.perf_counter()
    jax.block_until_ready(loop(state, data, jax.random.key(1), steps, batch_size, block_size))
    first = time.perf_counter() - started
    started = time.perf_counter()
    jax.block_until_ready(loop(state, data, jax.random.key(2), steps, batch_size, block_size))
    return steps / (time.perf_counter() - started), first


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--depths", default="2,4,8,12", help="n_layer values for the compile-time figures")
    parser.add_argument("--steps", type=int, default=50, help="training steps timed per loop")
    parser.add_argument("--impl", default="reference", help="whose tasks 1, 7, 9 and 10 (default: the reference)")
    parser.add_argument("--out", default=str(HERE / "results" / "loops.json"))
    args = parser.parse_args(argv)

    import flax
    import jax
    import jax.numpy as jnp
    import jaxlib
    import numpy as np

    from jaxgpt.grader import implementation, task_list
    from jaxgpt.training import configs

    impl = implementation.resolve(args.impl)
    names = {n: impl.for_task(task_list.get_task(n)) for n in (1, 7, 9, 10)}
    load_start = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    tiny = configs.get_config("tiny")
    sizes = dict(vocab_size=65, block_size=tiny.model.block_size, n_embd=tiny.model.n_embd,
                 n_head=tiny.model.n_head, dropout_rate=0.1)
    batch_size, block_size = tiny.train.batch_size, tiny.model.block_size

    depths = [int(d) for d in args.depths.split(",")]
    compile_rows = []
    for n_layer in depths:
        row = {"n_layer": n_layer,
               "unrolled_s": compile_seconds(names[1].MiniGPT(**sizes, n_layer=n_layer), batch_size, block_size),
               "scanned_s": compile_seconds(names[9].ScannedMiniGPT(**sizes, n_layer=n_layer), batch_size,
                                            block_size),
               "scanned_remat_s": compile_seconds(names[9].ScannedMiniGPT(**sizes, n_layer=n_layer, remat=True),
                                                  batch_size, block_size)}
        row = {k: round(v, 2) if isinstance(v, float) else v for k, v in row.items()}
        compile_rows.append(row)
        print(f"n_layer={n_layer:2d}: compile unrolled {row['unrolled_s']:.2f} s, scanned {row['scanned_s']:.2f} s, "
              f"scanned with remat {row['scanned_remat_s']:.2f} s", flush=True)

    if CORPUS.is_file():
        text = CORPUS.read_text(encoding="utf-8")
        chars = sorted(set(text))
        data = jnp.asarray([chars.index(c) for c in text[:200_000]], jnp.int32)
        corpus = f"the first 200,000 characters of {CORPUS}"
    else:
        data = jnp.asarray(np.random.default_rng(0).integers(0, 65, 200_000), jnp.int32)
        corpus = "200,000 random tokens (tiny Shakespeare was not found; the speed does not depend on the text)"
    model = names[1].MiniGPT(**{**sizes, "dropout_rate": tiny.model.dropout_rate}, n_layer=tiny.model.n_layer)
    state = names[7].create_train_state(model, jax.random.key(0), data[None, :block_size], learning_rate=1e-3)
    python_rate, python_first = steps_per_second(names[7].train, state, data, args.steps, batch_size, block_size)
    print(f"Python loop (task 7's train): {python_rate:.2f} steps/s (first call {python_first:.1f} s)", flush=True)
    scan_rate, scan_first = steps_per_second(names[10].train_scan, state, data, args.steps, batch_size, block_size)
    print(f"scanned loop (task 10's train_scan): {scan_rate:.2f} steps/s (first call {scan_first:.1f} s)", flush=True)

    result = {
        "compile_seconds_against_depth": {
            "what": "jit(grad(training loss)).lower(abstract params).compile(), tiny width (n_embd 128, 4 heads, "
                    "context 64, batch 64), dropout 0.1",
            "rows": compile_rows,
        },
        "training_steps_per_second": {
            "what": f"the tiny configuration's model (4 layers, 128 wide, context 64, batch 64, AdamW), {args.steps} "
                    f"steps after a first compiling call, on {corpus}",
            "python_loop": round(python_rate, 2), "python_loop_first_call_s": round(python_first, 1),
            "scanned_loop": round(scan_rate, 2), "scanned_loop_first_call_s": round(scan_first, 1),
            "speed_up": round(scan_rate / python_rate, 3),
        },
        "impl": args.impl,
        "machine": {"cpu": cpu_model(), "cores": os.cpu_count(), "load_average_at_start": load_start,
                    "load_average_at_end": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
                    "platform": platform.platform(), "python": platform.python_version(), "jax": jax.__version__,
                    "jaxlib": jaxlib.__version__, "flax": flax.__version__, "device": str(jax.devices()[0])},
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
