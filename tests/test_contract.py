"""The model contract (jaxgpt/contract.py) is the one statement of MiniGPT's fields and parameter tree: the
reference models, the suites' oracle GPT and the checkpoints all build exactly that tree."""

import jax
import jax.numpy as jnp
import pytest

import oracles_gpt as og
from jaxgpt import contract
from jaxgpt.grader import implementation, task_list
from jaxgpt.training import checkpoint

# all different, so a swapped dimension shows
DIMS = dict(vocab_size=11, block_size=7, n_embd=12, n_head=3, n_layer=2, dropout_rate=0.0)


def _shapes(module):
    tree = jax.eval_shape(module.init, jax.random.key(0), jnp.zeros((1, DIMS["block_size"]), jnp.int32))
    return jax.tree_util.tree_map(lambda leaf: tuple(leaf.shape), tree["params"])


@pytest.mark.parametrize("task", [1, 6])
def test_reference_minigpt_builds_the_contract_tree(task):
    model_cls = implementation.resolve("reference").get(task_list.get_task(task), "MiniGPT")
    assert tuple(f for f in contract.MODEL_FIELDS) == tuple(model_cls.__dataclass_fields__)[:len(contract.MODEL_FIELDS)]
    assert _shapes(model_cls(**DIMS)) == contract.model_shapes(**DIMS)


def test_the_suites_oracle_builds_the_contract_tree():
    assert _shapes(og.OracleGPT(**DIMS)) == contract.model_shapes(**DIMS)


def test_checkpoints_expect_the_contract_tree():
    from jaxgpt.training.configs import ModelConfig

    model = ModelConfig(**{k: v for k, v in DIMS.items() if k in ModelConfig.__dataclass_fields__})
    assert checkpoint.expected_param_shapes(model) == contract.model_shapes(**DIMS)
