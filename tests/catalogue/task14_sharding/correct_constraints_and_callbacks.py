CORRECT = ("the mesh built with jax.sharding.Mesh; the batch and each init block made by jax.make_array_from_callback; "
           "Megatron's rule as path patterns; FSDP on the first axis that divides; the moments found by their path; "
           "the step pinned by with_sharding_constraint inside one jit")

"""Task 14: training over a device mesh: data parallel, fully sharded and tensor parallel."""

import re

import jax
import numpy as np
from flax import traverse_util
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P


def make_mesh(n_data, n_model=1, devices=None):
    chosen = np.asarray((jax.devices() if devices is None else list(devices))[: n_data * n_model])
    return Mesh(chosen.reshape(n_data, n_model), ("data", "model"), axis_types=(AxisType.Auto,) * 2)


def shard_batch(batch, mesh):
    batch = np.asarray(batch)
    return jax.make_array_from_callback(batch.shape, NamedSharding(mesh, P("data")), lambda index: batch[index])


_RULES = [
    (r"^blocks_\d+/attn/(query|key|value)/kernel$", P(None, "model", None)),
    (r"^blocks_\d+/attn/(query|key|value)/bias$", P("model", None)),
    (r"^blocks_\d+/attn/out/kernel$", P("model", None, None)),
    (r"^blocks_\d+/ffwd/fc/kernel$", P(None, "model")),
    (r"^blocks_\d+/ffwd/fc/bias$", P("model")),
    (r"^blocks_\d+/ffwd/proj/kernel$", P("model", None)),
]


def tensor_parallel_shardings(params, mesh):
    flat = traverse_util.flatten_dict(params, sep="/")
    chosen = {name: NamedSharding(mesh, next((spec for pattern, spec in _RULES if re.match(pattern, name)), P()))
              for name in flat}
    return traverse_util.unflatten_dict(chosen, sep="/")


def fsdp_shardings(params, mesh, shardings=None):
    n_data = mesh.shape["data"]
    if shardings is None:
        shardings = jax.tree.map(lambda _: NamedSharding(mesh, P()), params)

    def one(leaf, sharding):
        spec = list(sharding.spec) + [None] * (leaf.ndim - len(sharding.spec))
        for axis, size in enumerate(leaf.shape):  # the first free axis that divides, not the largest
            if spec[axis] is None and size % n_data == 0:
                spec[axis] = "data"
                break
        return NamedSharding(mesh, P(*spec))

    return jax.tree.map(one, params, shardings)


def state_shardings(state, param_shardings):
    mesh = jax.tree.leaves(param_shardings)[0].mesh
    replicated = NamedSharding(mesh, P())
    by_path = {tuple(part.key for part in path): sharding
               for path, sharding in jax.tree_util.tree_flatten_with_path(param_shardings)[0]}

    def pick(path, leaf):
        for i, part in enumerate(path):
            if getattr(part, "name", None) in ("mu", "nu"):  # ScaleByAdamState.mu['blocks_0']['attn']...
                return by_path[tuple(p.key for p in path[i + 1:])]
        return replicated

    opt_state = jax.tree_util.tree_map_with_path(pick, state.opt_state)
    return state.replace(step=replicated, params=param_shardings, opt_state=opt_state)


def sharded_train_step(train_step, state_shardings, mesh):
    batch = NamedSharding(mesh, P("data"))

    @jax.jit
    def step(state, x, y, dropout_key):
        state = jax.lax.with_sharding_constraint(state, state_shardings)
        x, y = jax.lax.with_sharding_constraint((x, y), (batch, batch))
        state, loss = train_step(state, x, y, dropout_key)
        return jax.lax.with_sharding_constraint(state, state_shardings), loss

    return step


def sharded_init(init_fn, key, shape, sharding):
    shard_shape = sharding.shard_shape(shape)
    blocks = [size // part for size, part in zip(shape, shard_shape)]

    def block(index):  # index: this device's slices of the array; copies get the same slices
        number = 0
        for d, piece in enumerate(index):
            number = number * blocks[d] + (piece.start or 0) // shard_shape[d]
        return init_fn(jax.random.fold_in(key, number), shard_shape)

    return jax.make_array_from_callback(shape, sharding, block)
