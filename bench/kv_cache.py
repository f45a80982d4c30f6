"""Tokens per second of task 8's `generate_jit` (the whole window through the model at every step) against
task 11's `generate_cached` (one token per step while the sequence fits in block_size, a recompute past it),
on a freshly initialised MiniGPT of the `tiny` configuration (vocabulary 65), a prompt of one token, batch 1.

    .venv/bin/python bench/kv_cache.py                          # 64, 256 and 1,024 new tokens
    .venv/bin/python bench/kv_cache.py --new-tokens 64 256 --repeats 3 --out /tmp/kv.json

Each figure is the median of `--repeats` timed calls after one call that compiles (compile time is reported
apart). Both samplers must give the same tokens (checked on every configuration). The `tiny` configuration
has block_size 64, so past 63 new tokens the cached sampler recomputes its cache at every step, as the lesson
explains (exact agreement with task 8 needs it): the figures show what the cache buys and where it stops. A
second set of rows (`long_context`) runs the same widths with a block_size of 320 at 64 and 256 new tokens, so
that the generation stays inside the context: the speed-up the cache gives when it never has to recompute.

It prints a table and writes bench/results/kv_cache.json with the machine (CPU, cores, load average, jax).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import sys
import time
from pathlib import Path

from machine import describe  # bench/machine.py, beside this script

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))


def measure(sample, model, params, new_tokens, repeats):
    """(compile seconds, median seconds of a call, the tokens) for one sampler at one length."""
    import jax
    import jax.numpy as jnp

    prompt = jnp.zeros((1, 1), jnp.int32)
    start = time.perf_counter()
    tokens = sample(model, params, prompt, jax.random.key(0), new_tokens).block_until_ready()
    first = time.perf_counter() - start
    times = []
    for repeat in range(repeats):
        start = time.perf_counter()
        sample(model, params, prompt, jax.random.key(0), new_tokens).block_until_ready()
        times.append(time.perf_counter() - start)
    seconds = statistics.median(times)
    return max(first - seconds, 0.0), seconds, tokens


def run(fields, new_tokens, repeats, reference):
    import jax
    import jax.numpy as jnp

    task1, task8, task11 = (reference.for_task(reference_task(n)) for n in (1, 8, 11))
    plain, cached = task1.MiniGPT(**fields), task11.CachedMiniGPT(**fields)
    params = plain.init(jax.random.key(0), jnp.zeros((1, fields["block_size"]), jnp.int32))["params"]
    rows = []
    for n in new_tokens:
        compile_plain, seconds_plain, tokens_plain = measure(task8.generate_jit, plain, params, n, repeats)
        compile_cached, seconds_cached, tokens_cached = measure(task11.generate_cached, cached, params, n, repeats)
        same = bool((tokens_plain == tokens_cached).all())
        rows.append({"new_tokens": n, "generate_jit_tokens_per_s": round(n / seconds_plain, 1),
                     "generate_cached_tokens_per_s": round(n / seconds_cached, 1),
                     "speedup": round(seconds_plain / seconds_cached, 2),
                     "generate_jit_compile_s": round(compile_plain, 2),
                     "generate_cached_compile_s": round(compile_cached, 2),
                     "cached_steps": min(n - 1, fields["block_size"] - 1), "same_tokens": same})
        row = rows[-1]
        print(f"  {n:5d} new tokens: generate_jit {row['generate_jit_tokens_per_s']:9.1f} tok/s, generate_cached "
              f"{row['generate_cached_tokens_per_s']:9.1f} tok/s, {row['speedup']:5.2f}x "
              f"(compile {row['generate_jit_compile_s']:.1f} s / {row['generate_cached_compile_s']:.1f} s; "
              f"{row['cached_steps']} cached steps; same tokens: {same})", flush=True)
    return rows


def reference_task(number):
    from jaxgpt.grader import task_list

    return task_list.get_task(number)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--new-tokens", type=int, nargs="+", default=[64, 256, 1024])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip-long-context", action="store_true")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "bench" / "results" / "kv_cache.json")
    args = parser.parse_args(argv)

    import jax  # noqa: F401  (imported before describe(), which then records the device)

    from jaxgpt.grader import implementation
    from jaxgpt.training import configs

    reference = implementation.resolve("reference")
    fields = dataclasses.asdict(configs.get_config("tiny").with_vocab_size(65).model)
    result = {"machine": describe(), "config": "tiny", "fields": fields, "prompt_tokens": 1, "batch": 1,
              "repeats": args.repeats}
    print(f"tiny (block_size {fields['block_size']}) on {result['machine']['cpu']}, "
          f"{result['machine']['cpus']} cores, jax {result['machine']['jax']}, "
          f"load {result['machine']['load_average_at_start']}")
    result["tiny"] = run(fields, args.new_tokens, args.repeats, reference)
    if not args.skip_long_context:
        lengths = [n for n in args.new_tokens if n <= 256] or args.new_tokens[:1]
        long_fields = dict(fields, block_size=max(lengths) + 64)
        print(f"tiny's widths with block_size {long_fields['block_size']} (every length inside the context)")
        result["long_context"] = {"block_size": long_fields["block_size"],
                                  "rows": run(long_fields, lengths, args.repeats, reference)}
    result["machine"]["load_average_at_end"] = [round(v, 2) for v in os.getloadavg()]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    print(f"wrote {args.out.relative_to(REPO_ROOT) if args.out.is_relative_to(REPO_ROOT) else args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
