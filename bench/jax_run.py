"""The JAX side of the benchmarks: jaxgpt's reference MiniGPT trained by jaxgpt's own training loop pieces
(jaxgpt/training/loop.py: make_optimizer, make_train_steps), the code behind `jaxgpt train`.

Run by the benchmarks as a child process (its wall time counts its own imports and compilation):

    python bench/jax_run.py throughput --config JSON [--calls N] [--steps-per-call K]
    python bench/jax_run.py race --config JSON --data input.txt --target 1.89 [--eval-every N]

Each prints JSON lines; the last one is the result. The race evaluates on recipe.py's fixed windows, as the
PyTorch peer does.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

import recipe  # noqa: E402  (bench/recipe.py)


def _emit(record: dict) -> None:
    print(json.dumps(record), flush=True)


def _setup(config_dict: dict, steps_per_call: int, donate: bool = False):
    import jax

    from jaxgpt.training import configs, loop

    config = configs.Config.from_dict(config_dict)
    model = loop.build_model(loop.model_class("reference", 1), config)
    tx = loop.make_optimizer(config.train)
    init_key, train_key, _ = jax.random.split(jax.random.PRNGKey(config.train.seed), 3)
    params = loop.init_params(model, config, init_key)
    return config, model, tx, params, tx.init(params), train_key, loop.make_train_steps(
        model, tx, config, steps_per_call, donate=donate)


def throughput(config_dict: dict, calls: int, steps_per_call: int, donate: bool = False) -> dict:
    """Compile seconds (lowering and compiling the call of `steps_per_call` steps), then `calls` timed calls on
    random tokens; the median. Memory: XLA's account of the compiled call and the process's peak RSS."""
    import jax
    import numpy as np

    config, model, tx, params, opt_state, key, train_steps = _setup(config_dict, steps_per_call, donate)
    B, T = config.train.batch_size, config.model.block_size
    data = jax.device_put(np.random.default_rng(0).integers(0, config.model.vocab_size, 200_000).astype(np.int32))
    started = time.perf_counter()
    compiled = train_steps.lower(params, opt_state, data, key, 0).compile()
    compile_s = time.perf_counter() - started
    memory = compiled.memory_analysis()
    params, opt_state, losses = compiled(params, opt_state, data, key, 0)  # the first run warms the caches
    losses.block_until_ready()
    times = []
    for c in range(calls):
        started = time.perf_counter()
        params, opt_state, losses = compiled(params, opt_state, data, key, (c + 1) * steps_per_call)
        losses.block_until_ready()
        times.append((time.perf_counter() - started) / steps_per_call)
    median = sorted(times)[len(times) // 2]
    from jaxgpt.training import loop

    return {"impl": "jax", "compile_s": round(compile_s, 2), "step_s": round(median, 5),
            "step_s_all": [round(t, 5) for t in times], "tokens_per_second": round(B * T / median),
            "steps_per_call": steps_per_call, "donate": donate, "n_params": loop.count_params(params),
            "xla_temp_mib": None if memory is None else round(memory.temp_size_in_bytes / 2**20, 1),
            "xla_argument_mib": None if memory is None else round(memory.argument_size_in_bytes / 2**20, 1),
            "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
            "jax": jax.__version__, "device": str(jax.devices()[0])}


def race(config_dict: dict, data: str, target: float, eval_every: int, steps_per_call: int) -> dict:
    """Train until the fixed evaluation reaches `target` or max_iters ends; every evaluation is a JSON line
    stamped with time.time(), which the parent compares with the moment it started this process.

    The three programs the race needs (initialisation, the training call, the evaluation) are compiled at once
    on threads: XLA compiles with the GIL released, and each compile uses one core, so on two cores the start
    costs about the longest of them instead of their sum. The training call is lowered from the parameters'
    shapes (jax.eval_shape), so it need not wait for the initialisation to run."""
    import concurrent.futures
    import functools

    import jax

    from jaxgpt.training import configs, loop

    train_ids, eval_ids, vocab = recipe.load_corpus(data)
    config_dict = {**config_dict, "model": {**config_dict["model"], "vocab_size": vocab}}
    k = max(d for d in range(1, min(steps_per_call, eval_every) + 1) if eval_every % d == 0)
    config = configs.Config.from_dict(config_dict)
    model = loop.build_model(loop.model_class("reference", 1), config)
    tx = loop.make_optimizer(config.train)
    init_key, key, _ = jax.random.split(jax.random.PRNGKey(config.train.seed), 3)
    B, T, max_iters = config.train.batch_size, config.model.block_size, config.train.max_iters
    ex, ey = (jax.device_put(a) for a in recipe.eval_windows(eval_ids, T))
    data = jax.device_put(train_ids)

    started = time.perf_counter()
    abstract = jax.eval_shape(functools.partial(loop.init_params, model, config), init_key)
    abstract_opt = jax.eval_shape(tx.init, abstract)
    train_steps = loop.make_train_steps(model, tx, config, k)
    evaluate = jax.jit(lambda p: loop.loss_fn(model, p, ex, ey))
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        compiled_steps = pool.submit(lambda: train_steps.lower(abstract, abstract_opt, data, key, 0).compile())
        compiled_eval = pool.submit(lambda: evaluate.lower(abstract).compile())
        params = loop.init_params(model, config, init_key)  # compiles and runs the initialisation meanwhile
        opt_state = jax.jit(tx.init)(params)
        train_steps, evaluate = compiled_steps.result(), compiled_eval.result()
    compile_seconds = time.perf_counter() - started

    reached, step, eval_loss, train_seconds = False, 0, float("nan"), 0.0
    while step < max_iters:
        started = time.perf_counter()
        for _ in range(eval_every // k):
            if step >= max_iters:
                break
            params, opt_state, losses = train_steps(params, opt_state, data, key, step)
            step += k
        losses.block_until_ready()
        train_seconds += time.perf_counter() - started
        eval_loss = float(evaluate(params))
        _emit({"step": step, "eval_loss": round(eval_loss, 4), "time": time.time(),
               "train_seconds": round(train_seconds, 2)})
        if eval_loss <= target:
            reached = True
            break
    return {"impl": "jax", "reached": reached, "step": step, "eval_loss": round(eval_loss, 4),
            "time": time.time(), "compile_seconds": round(compile_seconds, 2),
            "tokens_per_second": round(step * B * T / train_seconds),
            "n_params": loop.count_params(params), "jax": jax.__version__, "device": str(jax.devices()[0])}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=["throughput", "race"])
    parser.add_argument("--config", required=True, help="the jaxgpt Config as JSON (or @file)")
    parser.add_argument("--calls", type=int, default=5)
    parser.add_argument("--steps-per-call", type=int, default=10)
    parser.add_argument("--data", default=str(recipe.DEFAULT_CORPUS))
    parser.add_argument("--target", type=float, default=1.89)
    parser.add_argument("--eval-every", type=int, default=100)
    parser.add_argument("--donate", action="store_true", help="throughput: donate the state's buffers")
    args = parser.parse_args(argv)
    config = recipe.read_json_arg(args.config)
    if args.what == "throughput":
        _emit(throughput(config, args.calls, args.steps_per_call, args.donate))
    else:
        _emit(race(config, args.data, args.target, args.eval_every, args.steps_per_call))
    return 0


if __name__ == "__main__":
    sys.exit(main())
