"""How a training step is computed at scale (Part 5): mixed precision, gradient accumulation and a device mesh.
Each is a setting of TrainConfig (configs.py) and an option of `jaxgpt train`; loop.py builds the step from
these pieces, and with the defaults (float32, one pass, one device) uses none of them.

    precision    "bfloat16": the loss casts the float32 parameters to a bfloat16 copy and runs the model on it,
                 so the model's matmuls, activations and (in Flax's attention layer) its attention softmax
                 compute in bfloat16; the logits are cast back to float32 for the softmax and the loss. The
                 gradient, taken through the cast, arrives in float32 for the float32 parameters, and the
                 optimiser's moments stay float32: float32 "master" weights, as mixed precision does it.
                 Evaluation and `jaxgpt sample` run the float32 parameters in float32.
    accumulate   the step's batch of batch_size sequences is reshaped into accumulate micro-batches that a
                 jax.lax.scan runs one after the other, adding their float32 gradients; their mean is the
                 gradient of the whole batch's mean loss (the micro-batches are equal in size), so the step
                 is the one-pass step up to roundoff, with about 1/accumulate of its activation memory. The
                 library's way is optax.MultiSteps, which counts each micro-batch as an optimiser call;
                 here the micro-batches live inside one step, so the step count, the learning-rate
                 schedule, the batches drawn and the checkpoints are those of the one-pass run.
    mesh         a data_parallel x model_parallel grid of devices (jax.make_mesh, axes "data" and "model").
                 Each micro-batch is split along "data" (jax.NamedSharding with P("data", None)); the
                 parameters and the optimiser state are copied on every device, or split: along "model"
                 on the last axis of each weight that the model-parallel size divides, and with
                 fully_sharded (FSDP) also along "data" on their largest other axis that divides. The
                 compiler (GSPMD) adds the communication: the all-reduce of the gradients, the gathering of
                 split weights. A shape-based split, not Megatron's hand-placed one: it shows the mesh at
                 work, and is not tuned for speed.

On one CPU, JAX sees one device; `simulate_cpu_devices(n)` splits it into n before JAX starts (XLA's host
platform device count), as the course's mesh lessons do: n devices sharing the same cores, to try a mesh
on a laptop, not to go faster.
"""

from __future__ import annotations

import os
from typing import Any

from jaxgpt.training.configs import ConfigError, TrainConfig

AXES = ("data", "model")
_XLA_COUNT_FLAG = "--xla_force_host_platform_device_count"


# ----------------------------------------------------------------------------------------------------
# Simulated CPU devices


def simulate_cpu_devices(n: int) -> bool:
    """Splits the CPU into `n` JAX devices; True if done. Must run before JAX starts (before its first
    operation): afterwards JAX refuses, and this returns False (make_mesh then says what to do). Leaves alone
    a count that XLA_FLAGS already sets. The GPU's devices, where there is a GPU, are not affected."""
    if _XLA_COUNT_FLAG in os.environ.get("XLA_FLAGS", ""):
        return False
    import jax

    try:
        jax.config.update("jax_num_cpu_devices", int(n))
    except (RuntimeError, AttributeError):  # JAX has started in this process already
        return False
    return True


# ----------------------------------------------------------------------------------------------------
# The mesh and where arrays live on it


def mesh_size(train: TrainConfig) -> int:
    return train.data_parallel * train.model_parallel


def make_mesh(train: TrainConfig):
    """The data_parallel x model_parallel mesh of the first devices JAX sees, axes ("data", "model"); None
    for a mesh of one device (the plain path). Too few devices is a ConfigError with a sentence."""
    n = mesh_size(train)
    if n == 1:
        return None
    import jax
    from jax.sharding import AxisType

    devices = jax.devices()
    if n > len(devices):
        raise ConfigError(_too_few_devices(train, devices))
    # Auto axes: the compiler propagates the shardings we constrain (jax.make_mesh's default is Explicit in
    # newer JAX, where shardings become part of the types).
    return jax.make_mesh((train.data_parallel, train.model_parallel), AXES,
                         axis_types=(AxisType.Auto, AxisType.Auto), devices=devices[:n])


def _too_few_devices(train: TrainConfig, devices) -> str:
    n, have, platform = mesh_size(train), len(devices), devices[0].platform
    start = f"--mesh {train.mesh} needs {n} devices, but JAX sees {have} ({platform})"
    if platform != "cpu":
        return (f"{start}: use a mesh of at most {have}, or try the mesh on the CPU's simulated devices by "
                f"running with JAX_PLATFORMS=cpu.")
    if _XLA_COUNT_FLAG in os.environ.get("XLA_FLAGS", ""):
        return (f"{start}, as XLA_FLAGS sets {_XLA_COUNT_FLAG}: raise it to {n}, or leave it out and "
                f"`jaxgpt train` splits the CPU into {n} simulated devices itself.")
    return (f"{start}, and the CPU can only be split into simulated devices before JAX starts, which in this "
            f"process it already has: run `jaxgpt train` from a terminal (a new process), which splits it "
            f"itself, or set XLA_FLAGS={_XLA_COUNT_FLAG}={n} before JAX starts.")


def param_spec(shape: tuple[int, ...], train: TrainConfig):
    """Where an array of parameters (or of optimiser moments, which have the parameters' shapes) lives:
    copied (P()), split along "model" on its last axis that model_parallel divides, and with fully_sharded
    along "data" on its largest other axis that data_parallel divides. Scalars are copied."""
    from jax.sharding import PartitionSpec as P

    spec: list[str | None] = [None] * len(shape)
    M, D = train.model_parallel, train.data_parallel
    if M > 1:
        for axis in reversed(range(len(shape))):
            if shape[axis] % M == 0:
                spec[axis] = "model"
                break
    if train.fully_sharded and D > 1:
        free = [axis for axis in range(len(shape)) if spec[axis] is None and shape[axis] % D == 0]
        if free:
            spec[max(free, key=lambda axis: shape[axis])] = "data"
    return P(*spec)


def place(tree: Any, mesh, train: TrainConfig) -> Any:
    """`tree` (parameters or optimiser state) put on the mesh as param_spec says."""
    import jax
    from jax.sharding import NamedSharding

    return jax.tree_util.tree_map(
        lambda a: jax.device_put(a, NamedSharding(mesh, param_spec(a.shape, train))), tree)


def constrain(tree: Any, mesh, train: TrainConfig) -> Any:
    """Inside a jitted function: `tree` constrained to the shardings `place` gives, so that a step returns
    its parameters and optimiser state where it took them from."""
    import jax
    from jax.sharding import NamedSharding

    return jax.tree_util.tree_map(
        lambda a: jax.lax.with_sharding_constraint(a, NamedSharding(mesh, param_spec(a.shape, train))), tree)


def replicate(tree: Any, mesh) -> Any:
    """`tree` (token ids, keys) copied onto every device of the mesh."""
    import jax
    from jax.sharding import NamedSharding, PartitionSpec as P

    return jax.tree_util.tree_map(lambda a: jax.device_put(a, NamedSharding(mesh, P())), tree)


def shard_batch(arrays: Any, mesh, batch_axis: int = 0) -> Any:
    """Inside a jitted function: batches split along "data" on their batch axis."""
    import jax
    from jax.sharding import NamedSharding, PartitionSpec as P

    if mesh is None:
        return arrays

    def split(a):
        spec = [None] * a.ndim
        spec[batch_axis] = "data"
        return jax.lax.with_sharding_constraint(a, NamedSharding(mesh, P(*spec)))

    return jax.tree_util.tree_map(split, arrays)


# ----------------------------------------------------------------------------------------------------
# Precision


def compute_dtype(train: TrainConfig):
    """The dtype the model computes in: None for float32 (the parameters as they are), else jnp.bfloat16."""
    import jax.numpy as jnp

    return None if train.precision == "float32" else jnp.dtype(train.precision)


def cast_floats(tree: Any, dtype) -> Any:
    """The floating-point arrays of `tree` cast to `dtype`; integer arrays as they are."""
    import jax
    import jax.numpy as jnp

    return jax.tree_util.tree_map(
        lambda a: a.astype(dtype) if jnp.issubdtype(a.dtype, jnp.floating) else a, tree)


# ----------------------------------------------------------------------------------------------------
# In words


def describe(train: TrainConfig, block_size: int, mesh=None) -> str:
    """How each step is computed, for the start of a run: the batch and its tokens, the micro-batches, the
    precision, the devices."""
    import jax

    B, K = train.batch_size, train.accumulate
    passes = "in one pass" if K == 1 else f"in {K} micro-batches of {B // K} (gradient accumulation)"
    precision = ("float32" if train.precision == "float32" else
                 "bfloat16 compute on float32 parameters and optimiser state, float32 loss")
    if mesh is None:
        device = jax.devices()[0]
        where = f"one {device.platform} device"
    else:
        platform = mesh.devices.flat[0].platform
        split = []
        if train.model_parallel > 1:
            split.append(f"weights split {train.model_parallel} ways")
        if train.fully_sharded:
            split.append(f"parameters and optimiser state split over the {train.data_parallel} data devices")
        params = "; ".join(split) if split else "parameters copied on each"
        batch = "each micro-batch" if K > 1 else "the batch"
        where = (f"a {train.mesh} mesh of {mesh.devices.size} {platform} devices, {batch} split "
                 f"{train.data_parallel} ways ({params})")
    return (f"Each step: {B} sequences of {block_size} tokens = {B * block_size:,} tokens, {passes}; "
            f"{precision}; {where}.")
