MISTAKE = "sharded_init numbers the blocks column-major (the first axis varies fastest)"
DIAGNOSIS = 'numbered in another order'

"""Task 14: training over a device mesh: data parallel, fully sharded and tensor parallel."""

import jax
import optax
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P


def make_mesh(n_data, n_model=1, devices=None):
    """A 2-D mesh of n_data x n_model devices with axes named ("data", "model"), both AxisType.Auto.

    devices: the devices to lay out (default jax.devices()); the first n_data * n_model of them are used.
    mesh.shape is then {"data": n_data, "model": n_model}. Auto axes let jax.jit decide where the
    collectives go (jax.make_mesh's own default in this JAX is Explicit, which Flax's layers do not support).
    """
    devices = jax.devices() if devices is None else list(devices)
    return jax.make_mesh((n_data, n_model), ("data", "model"), axis_types=(AxisType.Auto, AxisType.Auto),
                         devices=devices[: n_data * n_model])


def shard_batch(batch, mesh):
    """batch, int (B, T), placed on mesh with its rows split over "data" and every row replicated over
    "model": device (i, j) holds rows i * B // n_data to (i + 1) * B // n_data. B must divide by n_data.
    Returns the jax.Array, sharding NamedSharding(mesh, P("data", None))."""
    return jax.device_put(batch, NamedSharding(mesh, P("data", None)))  # (B, T), (B / n_data, T) per device


# Megatron's split of a block, over the "model" axis: (module, submodule, parameter) -> its PartitionSpec.
# The first layer of a pair is split on its output axis (column-parallel: each device computes some heads, some
# hidden units), the second on its input axis (row-parallel: each device holds a partial sum of the output),
# so the activations between them never leave their device and one all-reduce per pair sums the partial outputs.
_MEGATRON = {
    ("attn", "query", "kernel"): P(None, "model", None),  # (C, H, D): heads split
    ("attn", "query", "bias"): P("model", None),  # (H, D)
    ("attn", "key", "kernel"): P(None, "model", None),
    ("attn", "key", "bias"): P("model", None),
    ("attn", "value", "kernel"): P(None, "model", None),
    ("attn", "value", "bias"): P("model", None),
    ("attn", "out", "kernel"): P("model", None, None),  # (H, D, C): heads split, partial sums of (B, T, C)
    ("ffwd", "fc", "kernel"): P(None, "model"),  # (C, 4C): hidden units split
    ("ffwd", "fc", "bias"): P("model"),  # (4C,)
    ("ffwd", "proj", "kernel"): P("model", None),  # (4C, C): hidden units split, partial sums of (B, T, C)
}


def tensor_parallel_shardings(params, mesh):
    """Megatron-style tensor parallelism for MiniGPT's parameters (task 1's tree), over the mesh's "model" axis.

    In every block: attn's query, key and value kernels (C, H, D) are split on H and their biases (H, D) on H;
    attn's out kernel (H, D, C) is split on H; ffwd's fc kernel (C, 4C) on 4C (its output axis) and its bias
    (4C,); ffwd's proj kernel (4C, C) on 4C (its input axis). Everything else (attn's out bias, proj's bias,
    the layer norms, the embeddings, lm_head) is replicated: P().
    Returns a tree like params whose leaves are NamedSharding(mesh, spec).
    """

    def sharding(path, leaf):
        names = tuple(str(getattr(part, "key", part)) for part in path)
        spec = _MEGATRON.get(names[-3:], P()) if names[0].startswith("blocks_") else P()
        return NamedSharding(mesh, spec)

    return jax.tree_util.tree_map_with_path(sharding, params)


def fsdp_shardings(params, mesh, shardings=None):
    """Fully sharded (ZeRO-3 style): every parameter also split over the mesh's "data" axis.

    shardings: a tree like params of NamedSharding to start from (tensor_parallel_shardings(params, mesh));
    None means every parameter replicated. Each parameter is split over "data" along its largest axis that
    n_data = mesh.shape["data"] divides and that is not split already (the first of equal ones); its other
    splits stay as they are. A parameter with no such axis keeps its sharding.
    Returns a tree like params whose leaves are NamedSharding(mesh, spec).
    """
    n_data = mesh.shape["data"]

    def add_data(leaf, base):
        spec = list(base.spec) if base is not None else []
        spec += [None] * (leaf.ndim - len(spec))  # one entry per axis
        free = [axis for axis in range(leaf.ndim) if spec[axis] is None and leaf.shape[axis] % n_data == 0]
        if free:
            spec[max(free, key=lambda axis: leaf.shape[axis])] = "data"  # max keeps the first of equal sizes
        return NamedSharding(mesh, P(*spec))

    if shardings is None:
        return jax.tree.map(lambda leaf: add_data(leaf, None), params)
    return jax.tree.map(add_data, params, shardings)


def state_shardings(state, param_shardings):
    """The shardings of a whole flax TrainState (task 7's, with an optax optimiser such as AdamW).

    params and every part of the optimiser state shaped like the parameters (AdamW's mu and nu) take
    param_shardings; everything else (state.step, the optimiser's step count) is replicated, P().
    Returns a tree with state's structure (state.replace(...)) whose leaves are NamedSharding: what
    jax.device_put(state, ...) and jax.jit's in_shardings / out_shardings take.
    """
    mesh = jax.tree.leaves(param_shardings)[0].mesh
    replicated = NamedSharding(mesh, P())
    opt_state = optax.tree_map_params(state.tx, lambda _, sharding: sharding, state.opt_state, param_shardings,
                                      transform_non_params=lambda _: replicated)  # mu, nu like params
    return state.replace(step=replicated, params=param_shardings, opt_state=opt_state)


def sharded_train_step(train_step, state_shardings, mesh):
    """train_step(state, x, y, dropout_key) -> (state, loss), compiled for the mesh.

    Returns a jitted function with train_step's arguments and results, for which the state is laid out as
    state_shardings (a tree from the function state_shardings) going in and coming out, x and y, int (B, T),
    are split over "data" as shard_batch places them, and the dropout key and the loss are replicated.
    It computes what train_step computes on one device; jax.jit places the collectives.
    """
    batch = NamedSharding(mesh, P("data", None))
    replicated = NamedSharding(mesh, P())
    return jax.jit(train_step, in_shardings=(state_shardings, batch, batch, replicated),
                   out_shardings=(state_shardings, replicated))


def sharded_init(init_fn, key, shape, sharding):
    """A random float32 array of shape, laid out as sharding, each shard drawn on its own device from its own key.

    sharding (a NamedSharding) cuts the array into blocks of shape sharding.shard_shape(shape), nb_d of them
    along axis d. The block at block coordinates (b_0, b_1, ...) is number ((b_0 * nb_1 + b_1) * nb_2 + b_2)...
    (row-major), and holds init_fn(jax.random.fold_in(key, number), shard_shape). Devices that hold the same
    block (it is replicated over an axis the spec does not name) hold the same numbers. init_fn(key, shape)
    is an initialiser whose values do not depend on the shape it is given, such as
    jax.nn.initializers.normal(0.02). The whole array is never built on any one device.
    """
    mesh, spec = sharding.mesh, sharding.spec
    shard_shape = sharding.shard_shape(shape)
    axes = list(spec) + [None] * (len(shape) - len(spec))  # the mesh axes each array axis is split over

    def draw(key):  # runs on every device, with that device's place in the mesh
        number = 0
        for d in reversed(range(len(axes))):
            names = axes[d]
            blocks = shape[d] // shard_shape[d]
            number = number * blocks + (jax.lax.axis_index(names) if names is not None else 0)
        return init_fn(jax.random.fold_in(key, number), shard_shape)  # this device's block only

    return jax.jit(jax.shard_map(draw, mesh=mesh, in_specs=P(), out_specs=spec))(key)
