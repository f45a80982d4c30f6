"""Task 14: training over a device mesh: data parallel, fully sharded (FSDP) and tensor parallel (Megatron).

The checks need several devices, and a JAX process fixes its device count when it starts: they run in one
process per suite whose JAX has 8 simulated CPU devices (tests/sharding_runner.py starts it and carries the
code under test there, tests/sharding_checks.py holds the checks, their oracles and their tolerances). Each
test here waits for its check's answer and ends as that check ended, with its sentence.

What is checked, against the lesson's contract:
  - each function on its own, on the checks' own meshes and inputs: the mesh's shape, names and axis types; the
    batch's layout; Megatron's split parameter by parameter; FSDP's split by its properties (every parameter
    split over 'data' where an axis divides, the 'model' splits kept); the TrainState's layout, AdamW's
    moments included; sharded initialisation block by block against init_fn(fold_in(key, number));
  - each training mode end to end with the learner's shardings and step: three steps on 8 devices give the
    single-device steps' losses, parameters and moments; the state keeps its layout; the bytes each device
    holds; and the compiled program: the collectives by kind (data and tensor parallelism move data only by
    all-reduce, FSDP gathers its parameters) and the floating-point work per device.
"""

import pytest

import sharding_runner

TASK = 14

ORDER = ["make_mesh", "shard_batch", "tensor_parallel_shardings", "fsdp_shardings", "state_shardings",
         "sharded_init", "data_parallel", "fully_sharded", "tensor_parallel", "fully_sharded_tensor_parallel"]


@pytest.fixture(scope="module")
def _processes():
    running = {}
    yield running
    for process in running.values():
        process.close()


@pytest.fixture
def sharded(impl, request, _processes):
    """The checks' process for the implementation under test, started by the first check that needs it, with
    the checks this run selected, in order."""
    key = id(impl.implementation)
    if key not in _processes:
        selected = {item.name.removeprefix("test_") for item in request.session.items
                    if item.module is request.module}
        _processes[key] = sharding_runner.ChecksProcess(impl, [n for n in ORDER if n in selected])
    return _processes[key]


def _check(sharded, name):
    sharding_runner.raise_outcome(sharded.outcome(name))


def test_make_mesh(sharded):
    """make_mesh lays out n_data x n_model devices on the axes "data" and "model", both AxisType.Auto"""
    _check(sharded, "make_mesh")


def test_shard_batch(sharded):
    """shard_batch splits the batch's rows over "data" and copies them over "model\""""
    _check(sharded, "shard_batch")


def test_tensor_parallel_shardings(sharded):
    """tensor_parallel_shardings splits attention by heads and the MLP by hidden units (Megatron), the rest replicated"""
    _check(sharded, "tensor_parallel_shardings")


def test_fsdp_shardings(sharded):
    """fsdp_shardings splits every parameter over "data" where an axis divides, keeping the "model" splits"""
    _check(sharded, "fsdp_shardings")


def test_state_shardings(sharded):
    """state_shardings lays AdamW's moments out like the parameters and replicates the step counts"""
    _check(sharded, "state_shardings")


def test_sharded_init(sharded):
    """sharded_init draws each block on its own devices from fold_in(key, its number), copies alike"""
    _check(sharded, "sharded_init")


def test_data_parallel(sharded):
    """Data parallel on 8 x 1 devices: three steps equal one device's, the gradients summed by all-reduce"""
    _check(sharded, "data_parallel")


def test_fully_sharded(sharded):
    """Fully sharded (FSDP) on 8 x 1: three steps equal one device's, parameters and moments split over "data\""""
    _check(sharded, "fully_sharded")


def test_tensor_parallel(sharded):
    """Tensor parallel on 4 x 2: three steps equal one device's, with only all-reduces between devices"""
    _check(sharded, "tensor_parallel")


def test_fully_sharded_tensor_parallel(sharded):
    """FSDP with tensor parallelism on 4 x 2: three steps equal one device's, each device holding its slice"""
    _check(sharded, "fully_sharded_tensor_parallel")
