"""Task 14: training over a device mesh: data parallel, fully sharded and tensor parallel.

Write the seven functions below: a mesh, the layouts of a batch, of the parameters (Megatron's tensor
parallelism, FSDP) and of a whole TrainState, the training step compiled for the mesh, and an initialisation
drawn shard by shard. Check them with `jaxgpt check 14` (or the notebook's check cell): the checks run on 8
simulated CPU devices whatever your machine has.
"""

import jax
import optax
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P


def make_mesh(n_data, n_model=1, devices=None):
    """A 2-D mesh of n_data x n_model devices with axes named ("data", "model"), both AxisType.Auto.

    devices: the devices to lay out (default jax.devices()); the first n_data * n_model of them are used.
    mesh.shape is then {"data": n_data, "model": n_model}. Auto axes let jax.jit decide where the
    collectives go (jax.make_mesh's own default in this JAX is Explicit, which Flax's layers do not support).
    """
    # devices = jax.devices() if devices is None else list(devices)
    # jax.make_mesh((..., ...), ("data", "model"), axis_types=(AxisType.Auto, AxisType.Auto), devices=...)
    raise NotImplementedError("Task 14: write make_mesh")


def shard_batch(batch, mesh):
    """batch, int (B, T), placed on mesh with its rows split over "data" and every row replicated over
    "model": device (i, j) holds rows i * B // n_data to (i + 1) * B // n_data. B must divide by n_data.
    Returns the jax.Array, sharding NamedSharding(mesh, P("data", None))."""
    # jax.device_put(batch, NamedSharding(mesh, P(...)))   # which axis is the batch's?
    raise NotImplementedError("Task 14: write shard_batch")


def tensor_parallel_shardings(params, mesh):
    """Megatron-style tensor parallelism for MiniGPT's parameters (task 1's tree), over the mesh's "model" axis.

    In every block: attn's query, key and value kernels (C, H, D) are split on H and their biases (H, D) on H;
    attn's out kernel (H, D, C) is split on H; ffwd's fc kernel (C, 4C) on 4C (its output axis) and its bias
    (4C,); ffwd's proj kernel (4C, C) on 4C (its input axis). Everything else (attn's out bias, proj's bias,
    the layer norms, the embeddings, lm_head) is replicated: P().
    Returns a tree like params whose leaves are NamedSharding(mesh, spec).
    """
    # def sharding(path, leaf):                   # path: the keys from the root, e.g. blocks_0, attn, query, kernel
    #     names = tuple(str(part.key) for part in path)
    #     spec = ... P(...) with "model" on the split axis, or P() ...
    #     return NamedSharding(mesh, spec)
    # return jax.tree_util.tree_map_with_path(sharding, params)
    raise NotImplementedError("Task 14: write tensor_parallel_shardings")


def fsdp_shardings(params, mesh, shardings=None):
    """Fully sharded (ZeRO-3 style): every parameter also split over the mesh's "data" axis.

    shardings: a tree like params of NamedSharding to start from (tensor_parallel_shardings(params, mesh));
    None means every parameter replicated. Each parameter is split over "data" along its largest axis that
    n_data = mesh.shape["data"] divides and that is not split already (the first of equal ones); its other
    splits stay as they are. A parameter with no such axis keeps its sharding.
    Returns a tree like params whose leaves are NamedSharding(mesh, spec).
    """
    # n_data = mesh.shape["data"]
    # for each parameter (jax.tree.map over params, and shardings when given): start from its spec, one entry per
    # axis (list(sharding.spec) padded with None), put "data" on the largest free axis n_data divides, and
    # return NamedSharding(mesh, P(*spec)).
    raise NotImplementedError("Task 14: write fsdp_shardings")


def state_shardings(state, param_shardings):
    """The shardings of a whole flax TrainState (task 7's, with an optax optimiser such as AdamW).

    params and every part of the optimiser state shaped like the parameters (AdamW's mu and nu) take
    param_shardings; everything else (state.step, the optimiser's step count) is replicated, P().
    Returns a tree with state's structure (state.replace(...)) whose leaves are NamedSharding: what
    jax.device_put(state, ...) and jax.jit's in_shardings / out_shardings take.
    """
    # mesh = jax.tree.leaves(param_shardings)[0].mesh
    # replicated = NamedSharding(mesh, P())
    # opt_state = optax.tree_map_params(state.tx, lambda p, s: ..., state.opt_state, param_shardings,
    #                                   transform_non_params=lambda _: ...)
    # return state.replace(step=..., params=..., opt_state=...)
    raise NotImplementedError("Task 14: write state_shardings")


def sharded_train_step(train_step, state_shardings, mesh):
    """train_step(state, x, y, dropout_key) -> (state, loss), compiled for the mesh.

    Returns a jitted function with train_step's arguments and results, for which the state is laid out as
    state_shardings (a tree from the function state_shardings) going in and coming out, x and y, int (B, T),
    are split over "data" as shard_batch places them, and the dropout key and the loss are replicated.
    It computes what train_step computes on one device; jax.jit places the collectives.
    """
    # return jax.jit(train_step, in_shardings=(...), out_shardings=(...))
    raise NotImplementedError("Task 14: write sharded_train_step")


def sharded_init(init_fn, key, shape, sharding):
    """A random float32 array of shape, laid out as sharding, each shard drawn on its own device from its own key.

    sharding (a NamedSharding) cuts the array into blocks of shape sharding.shard_shape(shape), nb_d of them
    along axis d. The block at block coordinates (b_0, b_1, ...) is number ((b_0 * nb_1 + b_1) * nb_2 + b_2)...
    (row-major), and holds init_fn(jax.random.fold_in(key, number), shard_shape). Devices that hold the same
    block (it is replicated over an axis the spec does not name) hold the same numbers. init_fn(key, shape)
    is an initialiser whose values do not depend on the shape it is given, such as
    jax.nn.initializers.normal(0.02). The whole array is never built on any one device.
    """
    # shard_shape = sharding.shard_shape(shape)
    # def draw(key):                             # runs once per device, inside jax.shard_map
    #     number = ... from jax.lax.axis_index(...) of the mesh axes each array axis is split over ...
    #     return init_fn(jax.random.fold_in(key, number), shard_shape)
    # return jax.jit(jax.shard_map(draw, mesh=sharding.mesh, in_specs=P(), out_specs=sharding.spec))(key)
    raise NotImplementedError("Task 14: write sharded_init")
