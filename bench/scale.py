"""Benchmark for Part 5's options of `jaxgpt train`: tokens per second and peak memory of the `tiny` step
computed in float32 or bfloat16, in 1 or 4 micro-batches, on a mesh of 1, 2 or 4 devices.

    .venv/bin/python bench/scale.py [PATH_TO_INPUT_TXT] [--calls 5] [--steps-per-call 5] [--variants ...]

Each variant runs in a process of its own (a peak is a process's, and a mesh needs its device count set
before JAX starts; on a CPU the mesh's devices are simulated, one CPU split as `jaxgpt train --mesh` splits
it). There the reference MiniGPT's training step (jaxgpt.training.loop, as `jaxgpt train` builds it) is
compiled ahead, called once to warm up, then timed over --calls calls of --steps-per-call steps each; a
variant's tokens per second is the median over its calls (batch_size x block_size tokens per step). Memory:
the process's peak resident set (getrusage's ru_maxrss) once JAX's runtime has started, and at the end, whose
difference is what compiling and running the step added (on a CPU mostly the compiler: the tiny model's
parameters and Adam's moments take 10 MB); XLA's own account of the compiled step on each device
(memory_analysis(): its arguments, outputs and temporaries, the activations the backward pass keeps among
them), which is where micro-batches and sharding show; on a GPU, the device's own peak
(memory_stats()["peak_bytes_in_use"]) as well. Every variant sees the same batches, so the losses of the
last call agree to roundoff (bfloat16: to a few hundredths).

Prints a table and writes bench/results/scale.json with the machine (CPU model, cores, load average at the
start and the end, versions, devices). A benchmark, not a timed test: read the figures with the load average.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

from machine import cpu_model  # bench/machine.py, beside this script

HERE = Path(__file__).resolve().parent
CORPUS = Path("/work/shared/data/tinyshakespeare/input.txt")

# name: the keywords of Config.with_overrides (the command line's --precision, --accumulate, --mesh, --fsdp).
VARIANTS: dict[str, dict] = {
    "float32": {},
    "bfloat16": {"precision": "bfloat16"},
    "accumulate 4": {"accumulate": 4},
    "mesh 2": {"mesh": "2"},
    "mesh 4": {"mesh": "4"},
    "mesh 4 fsdp": {"mesh": "4", "fully_sharded": True},
    "mesh 2x2": {"mesh": "2x2"},
}


def child(request: dict) -> dict:
    """One variant, in this process: returns what was measured."""
    import resource

    from jaxgpt.training import configs, scaling

    config = configs.get_config(request["config"]).with_overrides(**request["overrides"])
    devices = scaling.mesh_size(config.train)
    if devices > 1:
        scaling.simulate_cpu_devices(devices)

    import jax
    import numpy as np

    from jaxgpt.data import load_text
    from jaxgpt.training import loop

    text = load_text(request["corpus"])
    jax.devices()  # JAX's runtime started: the baseline holds it
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: kilobytes
    try:
        run = loop.prepare(config, impl="reference", text=text, steps_per_call=request["steps_per_call"])
    except configs.ConfigError as err:  # a mesh larger than the devices (one GPU)
        return {"skipped": str(err)}
    started = time.perf_counter()
    step = run.train_steps.lower(run.params, run.opt_state, run.train_data, run.train_key, 0).compile()
    compile_s = time.perf_counter() - started
    try:  # XLA's own account of the compiled step, per device: its inputs, outputs and scratch
        stats = step.memory_analysis()
        step_bytes = {"arguments": stats.argument_size_in_bytes, "outputs": stats.output_size_in_bytes,
                      "aliased": stats.alias_size_in_bytes, "temporaries": stats.temp_size_in_bytes}
    except Exception:  # not every backend or version says
        step_bytes = None
    params, opt_state, k = run.params, run.opt_state, run.steps_per_call
    tokens_per_call = k * config.train.batch_size * config.model.block_size
    seconds, losses = [], None
    for call in range(request["calls"] + 1):  # the first call warms up and is not counted
        started = time.perf_counter()
        params, opt_state, losses = step(params, opt_state, run.train_data, run.train_key, call * k)
        losses = np.asarray(losses)  # waits for the call
        if call:
            seconds.append(time.perf_counter() - started)
    result = {
        "tokens_per_second": tokens_per_call / statistics.median(seconds),
        "tokens_per_second_calls": [round(tokens_per_call / s) for s in seconds],
        "compile_seconds": compile_s,
        "steps_timed": k * request["calls"],
        "last_losses": [float(v) for v in losses],
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "rss_before_model_bytes": rss_before,
        "step_bytes_per_device": step_bytes,
        "devices": [str(d) for d in (run.mesh.devices.flat if run.mesh is not None else jax.devices()[:1])],
        "step": scaling.describe(config.train, config.model.block_size, run.mesh),
    }
    stats = [getattr(d, "memory_stats", lambda: None)() for d in
             (run.mesh.devices.flat if run.mesh is not None else jax.devices()[:1])]
    peaks = [s.get("peak_bytes_in_use") for s in stats if s]
    if peaks and all(p is not None for p in peaks):
        result["device_peak_bytes"] = peaks
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("corpus", nargs="?", default=str(CORPUS), help=f"tiny Shakespeare (default {CORPUS})")
    parser.add_argument("--config", default="tiny")
    parser.add_argument("--calls", type=int, default=5, help="timed calls per variant (default %(default)s)")
    parser.add_argument("--steps-per-call", type=int, default=5, help="steps per call (default %(default)s)")
    parser.add_argument("--variants", default=",".join(VARIANTS),
                        help=f"a comma-separated subset of: {', '.join(VARIANTS)}")
    parser.add_argument("--out", default=str(HERE / "results" / "scale.json"))
    parser.add_argument("--note", default="", help="a word on the conditions, kept with the results")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child is not None:
        print("RESULT " + json.dumps(child(json.loads(args.child))), flush=True)
        return 0

    names = [name.strip() for name in args.variants.split(",") if name.strip()]
    unknown = [name for name in names if name not in VARIANTS]
    if unknown:
        parser.error(f"unknown variants {unknown}; the variants are {', '.join(VARIANTS)}")
    load_start = os.getloadavg()[0]
    results = {}
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    for name in names:
        request = {"config": args.config, "overrides": VARIANTS[name], "corpus": args.corpus,
                   "calls": args.calls, "steps_per_call": args.steps_per_call}
        started = time.perf_counter()
        process = subprocess.run([sys.executable, __file__, "--child", json.dumps(request)], capture_output=True,
                                 text=True, env=env, cwd=HERE.parent)
        lines = [line for line in process.stdout.splitlines() if line.startswith("RESULT ")]
        if process.returncode or not lines:
            results[name] = {"failed": (process.stdout + process.stderr)[-2000:]}
        else:
            results[name] = json.loads(lines[-1][len("RESULT "):])
        results[name]["process_seconds"] = round(time.perf_counter() - started, 1)
        print(f"{name}: {_row(results[name])}", flush=True)

    import jax
    import flax

    machine = {"cpu": cpu_model(), "cores": os.cpu_count(), "load_average_at_start": load_start,
               "load_average_at_end": os.getloadavg()[0], "platform": platform.platform(),
               "python": platform.python_version(), "jax": jax.__version__, "flax": flax.__version__,
               "default_device": str(jax.devices()[0])}
    out = {"config": args.config, "calls": args.calls, "steps_per_call": args.steps_per_call,
           "measured": "median tokens per second over the timed calls; peak resident set of the variant's "
                       "process (and the device's peak on a GPU)",
           "variants": results, "machine": machine, "note": args.note}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1) + "\n")
    print()
    print(_table(results))
    print(f"\nmachine: {machine['cpu']}, {machine['cores']} cores, load average {load_start:.1f} at the start and "
          f"{machine['load_average_at_end']:.1f} at the end; jax {machine['jax']}. Written to {args.out}")
    return 0


def _row(r: dict) -> str:
    if "skipped" in r:
        return "skipped: " + r["skipped"]
    if "failed" in r:
        return "FAILED:\n" + r["failed"]
    device = f", device peak {max(r['device_peak_bytes']) / 2**20:,.0f} MiB" if "device_peak_bytes" in r else ""
    return (f"{r['tokens_per_second']:,.0f} tokens/s, peak RSS {r['peak_rss_bytes'] / 2**20:,.0f} MiB "
            f"(+{(r['peak_rss_bytes'] - r['rss_before_model_bytes']) / 2**20:,.0f} MiB compiling and running), "
            f"step {_step_mib(r)} MiB per device{device}, compile {r['compile_seconds']:.1f} s, "
            f"last loss {r['last_losses'][-1]:.4f}")


def _step_mib(r: dict) -> str:
    b = r.get("step_bytes_per_device")
    if not b:
        return "-"
    return f"{(b['arguments'] + b['outputs'] - b['aliased'] + b['temporaries']) / 2**20:,.1f}"


def _table(results: dict) -> str:
    lines = [f"{'variant':<14} {'tokens/s':>9} {'peak RSS MiB':>13} {'+run MiB':>9} {'step MiB/dev':>13} "
             f"{'GPU peak MiB':>13} {'compile s':>10} {'last loss':>10}"]
    for name, r in results.items():
        if "tokens_per_second" not in r:
            lines.append(f"{name:<14} {'skipped' if 'skipped' in r else 'FAILED'}")
            continue
        device = f"{max(r['device_peak_bytes']) / 2**20:,.0f}" if "device_peak_bytes" in r else "-"
        lines.append(f"{name:<14} {r['tokens_per_second']:>9,.0f} {r['peak_rss_bytes'] / 2**20:>13,.0f} "
                     f"{(r['peak_rss_bytes'] - r['rss_before_model_bytes']) / 2**20:>9,.0f} {_step_mib(r):>13} "
                     f"{device:>13} {r['compile_seconds']:>10.1f} {r['last_losses'][-1]:>10.4f}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
