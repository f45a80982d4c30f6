"""This machine's float32 matrix-multiply throughput (GFLOP/s) at the shapes of the models' layers: the
practical ceiling that model FLOPs utilisation (MFU, throughput.py) is measured against.

    python -m bench peak [--out bench/results/peak.json]

Each shape (M, K, N) runs as a chain x <- (x @ A) @ B inside one compiled jax.lax.fori_loop, so that nothing
can be hoisted or skipped and dispatch costs nothing; the median of 5 timed calls. M is the tokens of a
batch (B x T); K and N are a layer's widths. With PyTorch installed, the same shapes through torch.mm, for
comparison (its BLAS is not XLA's). `peak_gflops` is the best JAX figure over the shapes.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import machine  # noqa: E402  (bench/machine.py)

# (M, K, N): tiny's tokens per step (64 x 64) and the recipe's (16 x 64) through its 128-wide layers and the
# 4x MLP; the video's 64 x 256 tokens through 384; a square for the machine's best case.
SHAPES = [(4096, 128, 512), (4096, 128, 128), (1024, 128, 512), (1024, 128, 128), (4096, 384, 1536),
          (1024, 1024, 1024)]


def jax_gflops(m: int, k: int, n: int, reps: int = 10) -> float:
    import jax

    x = jax.random.normal(jax.random.key(0), (m, k))
    a = jax.random.normal(jax.random.key(1), (k, n)) / k ** 0.5
    b = jax.random.normal(jax.random.key(2), (n, k)) / n ** 0.5
    chain = jax.jit(lambda x, a, b: jax.lax.fori_loop(0, reps, lambda i, x: (x @ a) @ b, x))
    chain(x, a, b).block_until_ready()
    times = []
    for _ in range(5):
        started = time.perf_counter()
        chain(x, a, b).block_until_ready()
        times.append(time.perf_counter() - started)
    return 4 * m * k * n * reps / sorted(times)[2] / 1e9


def torch_gflops(m: int, k: int, n: int, reps: int = 10) -> float | None:
    try:
        import torch
    except ImportError:
        return None
    x, a, b = torch.randn(m, k), torch.randn(k, n) / k ** 0.5, torch.randn(n, k) / n ** 0.5
    times = []
    for _ in range(6):
        started = time.perf_counter()
        y = x
        for _ in range(reps):
            y = (y @ a) @ b
        times.append(time.perf_counter() - started)
    return 4 * m * k * n * reps / sorted(times[1:])[2] / 1e9


def measure() -> dict:
    rows = []
    for m, k, n in SHAPES:
        rows.append({"shape": [m, k, n], "jax_gflops": round(jax_gflops(m, k, n), 1),
                     "torch_gflops": None if (t := torch_gflops(m, k, n)) is None else round(t, 1)})
    return {"peak_gflops": max(r["jax_gflops"] for r in rows), "shapes": rows}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(HERE / "results" / "peak.json"))
    args = parser.parse_args(argv)
    described = machine.describe()
    result = measure()
    import jax

    described["device"] = str(jax.devices()[0])
    described["load_average_at_end"] = machine.load_average()
    result["machine"] = described
    print(f"float32 matmul on {described['cpu']} ({described['cpus']} cores), jax {described['jax']}:")
    print(f"{'M x K x N':>20}  {'JAX GFLOP/s':>12}  {'torch GFLOP/s':>14}")
    for r in result["shapes"]:
        t = "-" if r["torch_gflops"] is None else f"{r['torch_gflops']:.1f}"
        print(f"{' x '.join(map(str, r['shape'])):>20}  {r['jax_gflops']:>12.1f}  {t:>14}")
    print(f"peak (the best JAX shape): {result['peak_gflops']:.1f} GFLOP/s; load average "
          f"{described['load_average_at_start']} -> {described['load_average_at_end']}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
