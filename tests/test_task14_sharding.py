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

import dis

import pytest

import sharding_runner
from jaxgpt.grader import task_list

TASK = 14

ORDER = ["make_mesh", "shard_batch", "tensor_parallel_shardings", "fsdp_shardings", "state_shardings",
         "sharded_init", "data_parallel", "fully_sharded", "tensor_parallel", "fully_sharded_tensor_parallel"]


_STARTED_EARLY: dict = {}  # id(implementation) -> its checks' process, started when collection ended


@pytest.fixture(scope="module")
def _processes():
    running = dict(_STARTED_EARLY)
    _STARTED_EARLY.clear()
    yield running
    for process in running.values():
        process.close()


# The untouched stub of each function: its body is `raise NotImplementedError("...")` and nothing else.
_STUB_OPERATIONS = {"RESUME", "NOP", "CACHE", "PUSH_NULL", "LOAD_GLOBAL", "LOAD_CONST", "PRECALL", "CALL",
                    "RAISE_VARARGS"}


def _is_stub(fn) -> bool:
    code = getattr(fn, "__code__", None)
    return (code is not None and code.co_names == ("NotImplementedError",)
            and {i.opname for i in dis.get_instructions(code)} <= _STUB_OPERATIONS)


class _NotStarted:
    """Stands in for the checks' process while every function of the task is still its stub, which can only
    raise NotImplementedError: each check calls its stub, which says "not started" as it would have said there,
    and no process with 8 devices is started for it (seconds, for `jaxgpt check 14` before any work)."""

    def __init__(self, stubs):
        self.stubs = stubs

    def outcome(self, name):
        fn = self.stubs.get(name, self.stubs["sharded_train_step"])
        code = fn.__code__
        keywords = code.co_varnames[code.co_argcount:code.co_argcount + code.co_kwonlyargcount]
        fn(*[None] * code.co_argcount, **dict.fromkeys(keywords))
        raise AssertionError(f"the stub of {fn.__name__} returned")  # not reached: _is_stub said it raises

    def close(self):
        pass


def _untouched_stubs(impl):
    """Every function of task 14 by name when each is still the stub, else None (or when one cannot be read)."""
    try:
        stubs = {name: getattr(impl, name) for name in task_list.get_task(TASK).names}
    except Exception:  # a load error or a missing name: the checks' process says which, as for written code
        return None
    return stubs if all(_is_stub(fn) for fn in stubs.values()) else None


def _start(view, items):
    """The checks' process for `view`'s implementation, with the checks of `items`, in order."""
    stubs = _untouched_stubs(view)
    if stubs is not None:
        return _NotStarted(stubs)
    selected = {item.name.removeprefix("test_") for item in items}
    return sharding_runner.ChecksProcess(view, [n for n in ORDER if n in selected])


def start_early(session, items):
    """Called by tests/conftest.py once collection is done, with this file's selected tests: starts the checks'
    process at once, so that JAX loads and the checks run there while the tests before these run here (the
    checks take some ten seconds of a second core)."""
    from jaxgpt.grader import pytest_plugin

    view = pytest_plugin._configured_implementation(session.config).for_task(task_list.get_task(TASK))
    process = _STARTED_EARLY[id(view.implementation)] = _start(view, items)
    session.config.add_cleanup(process.close)  # also when these tests never run (-x, Ctrl-C)


@pytest.fixture
def sharded(impl, request, _processes):
    """The checks' process for the implementation under test, started when collection ended (start_early) or
    else by the first check that needs it, with the checks this run selected, in order."""
    key = id(impl.implementation)
    if key not in _processes:
        _processes[key] = _start(impl, [item for item in request.session.items if item.module is request.module])
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
