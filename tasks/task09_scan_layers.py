"""Task 9: the stack of blocks as one scanned layer.

Write `stack_layers` and `unstack_layers`, which move parameters between the unrolled MiniGPT's tree and the
scanned one's, and `ScannedMiniGPT`, MiniGPT with its blocks run by one `nn.scan`. The Block is task 1's (in
the notebook, the last `Block` you defined: task 6's, which has the same fields, call and tree). Check them
with `jaxgpt check 9` (or the notebook's check cell).
"""

import jax
import jax.numpy as jnp
import flax.linen as nn

from .task01_minigpt import Block


def stack_layers(params):
    """The unrolled MiniGPT's parameter tree turned into ScannedMiniGPT's.

    params: the inner tree of an unrolled MiniGPT (task 1 or 6: model.init(...)['params'], what
    state.params holds), with entries 'blocks_0' .. 'blocks_{L-1}'.
    Returns the same tree with those L entries replaced by one entry 'blocks': Block's tree in which every
    leaf is the L layers' leaves stacked along a new first axis, in layer order, so that
    stacked['blocks'][...][i] is params['blocks_i'][...]. Every other entry is kept as it is.
    """
    # n_layer = how many names start with "blocks_"
    # layers = [params[f"blocks_{i}"] for i in range(n_layer)]          # by number, not by sorted name
    # a new dict: every entry but the blocks, and "blocks": jax.tree_util.tree_map(
    #     lambda *leaves: jnp.stack(leaves), *layers)                    # each leaf (L, ...)
    raise NotImplementedError("Task 9: write stack_layers")


def unstack_layers(params):
    """The inverse of stack_layers: ScannedMiniGPT's tree turned back into the unrolled MiniGPT's.

    'blocks' (every leaf with a first axis of length L) becomes 'blocks_0' .. 'blocks_{L-1}', layer i being
    every leaf's slice [i]; every other entry is kept as it is.
    """
    # n_layer = the first axis of any leaf of params["blocks"]
    # blocks_i = jax.tree_util.tree_map(lambda leaf: leaf[i], params["blocks"])
    raise NotImplementedError("Task 9: write unstack_layers")


class ScannedMiniGPT(nn.Module):
    """MiniGPT whose n_layer blocks run as one nn.scan over stacked parameters.

    Fields: MiniGPT's (vocab_size, block_size, n_embd, n_head, n_layer, dropout_rate) and remat (bool,
    default False): when True each block is wrapped in nn.remat, so that the backward pass recomputes a
    block's activations instead of keeping them.
    Call: model(idx, deterministic=True), as MiniGPT: idx int (B, T) -> logits (B, T, vocab_size).
    Parameters: MiniGPT's tree with 'blocks_0' .. 'blocks_{n_layer-1}' replaced by 'blocks', task 1's Block
    tree with a leading axis n_layer on every leaf (what stack_layers gives). Each layer is initialised
    with its own key and draws its own dropout masks.
    """

    vocab_size: int
    block_size: int
    n_embd: int
    n_head: int
    n_layer: int
    dropout_rate: float = 0.0
    remat: bool = False

    @nn.compact
    def __call__(self, idx, deterministic=True):
        B, T = idx.shape
        # 1. token + position embeddings and Dropout, as in MiniGPT                   # (B, T, C)
        # 2. def layer(block, x, _): return block(x, deterministic), None             # one scan step
        #    if self.remat: layer = nn.remat(layer)
        #    stack = nn.scan(layer, variable_axes={"params": 0},
        #                    split_rngs={"params": True, "dropout": True}, length=self.n_layer)
        #    x, _ = stack(Block(..., name="blocks"), x, None)                          # (B, T, C)
        # 3. nn.LayerNorm(name="ln_f"), nn.Dense(self.vocab_size, name="lm_head")     # (B, T, vocab_size)
        raise NotImplementedError("Task 9: write ScannedMiniGPT.__call__")
