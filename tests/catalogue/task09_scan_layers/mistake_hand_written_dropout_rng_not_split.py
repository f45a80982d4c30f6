"""Task 9: the stack of blocks as one scanned layer."""

MISTAKE = "dropout written by hand in the scanned Block, with the 'dropout' RNG not split across the scan (split_rngs dropout False): every layer takes the same keys"
DIAGNOSIS = "every layer drops exactly the same units"

import jax
import jax.numpy as jnp
import flax.linen as nn



class FeedForward(nn.Module):
    n_embd: int
    dropout_rate: float = 0.0

    @nn.compact
    def __call__(self, x, deterministic=True):
        x = nn.Dense(self.n_embd, name="proj")(nn.relu(nn.Dense(4 * self.n_embd, name="fc")(x)))
        if deterministic or self.dropout_rate == 0.0:
            return x
        keep = jax.random.bernoulli(self.make_rng("dropout"), 1.0 - self.dropout_rate, x.shape)
        return jnp.where(keep, x / (1.0 - self.dropout_rate), 0.0)


class Block(nn.Module):
    """Task 1's Block with its attention-output and feed-forward dropouts written by hand."""

    n_embd: int
    n_head: int
    dropout_rate: float = 0.0

    @nn.compact
    def __call__(self, x, deterministic=True):
        T = x.shape[1]
        mask = nn.make_causal_mask(jnp.ones((1, T)))
        h = nn.MultiHeadDotProductAttention(num_heads=self.n_head, dropout_rate=self.dropout_rate, name="attn")(
            nn.LayerNorm(name="ln1")(x), mask=mask, deterministic=deterministic)
        if not deterministic and self.dropout_rate > 0.0:
            keep = jax.random.bernoulli(self.make_rng("dropout"), 1.0 - self.dropout_rate, h.shape)
            h = jnp.where(keep, h / (1.0 - self.dropout_rate), 0.0)
        x = x + h
        return x + FeedForward(self.n_embd, self.dropout_rate, name="ffwd")(nn.LayerNorm(name="ln2")(x), deterministic)


def stack_layers(params):
    """The unrolled MiniGPT's parameter tree turned into ScannedMiniGPT's.

    params: the inner tree of an unrolled MiniGPT (task 1 or 6: model.init(...)['params'], what
    state.params holds), with entries 'blocks_0' .. 'blocks_{L-1}'.
    Returns the same tree with those L entries replaced by one entry 'blocks': Block's tree in which every
    leaf is the L layers' leaves stacked along a new first axis, in layer order, so that
    stacked['blocks'][...][i] is params['blocks_i'][...]. Every other entry is kept as it is.
    """
    n_layer = sum(name.startswith("blocks_") for name in params)
    layers = [params[f"blocks_{i}"] for i in range(n_layer)]  # by number: 'blocks_10' comes after 'blocks_9'
    stacked = {name: value for name, value in params.items() if not name.startswith("blocks_")}
    stacked["blocks"] = jax.tree_util.tree_map(lambda *leaves: jnp.stack(leaves), *layers)  # each leaf (L, ...)
    return stacked


def unstack_layers(params):
    """The inverse of stack_layers: ScannedMiniGPT's tree turned back into the unrolled MiniGPT's.

    'blocks' (every leaf with a first axis of length L) becomes 'blocks_0' .. 'blocks_{L-1}', layer i being
    every leaf's slice [i]; every other entry is kept as it is.
    """
    n_layer = jax.tree_util.tree_leaves(params["blocks"])[0].shape[0]
    unrolled = {name: value for name, value in params.items() if name != "blocks"}
    for i in range(n_layer):
        unrolled[f"blocks_{i}"] = jax.tree_util.tree_map(lambda leaf: leaf[i], params["blocks"])
    return unrolled


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
        tok = nn.Embed(self.vocab_size, self.n_embd, name="token_embedding")(idx)  # (B, T, C)
        pos = nn.Embed(self.block_size, self.n_embd, name="position_embedding")(jnp.arange(T))  # (T, C)
        x = tok + pos
        if not deterministic and self.dropout_rate > 0.0:
            keep = jax.random.bernoulli(self.make_rng("dropout"), 1.0 - self.dropout_rate, x.shape)
            x = jnp.where(keep, x / (1.0 - self.dropout_rate), 0.0)

        def layer(block, x, _):  # one step of the scan: the carry is the residual stream (B, T, C)
            return block(x, deterministic), None

        if self.remat:
            layer = nn.remat(layer)
        stack = nn.scan(layer, variable_axes={"params": 0},  # parameters: one slice per layer
                        split_rngs={"params": True, "dropout": False},  # each layer its own init and masks
                        length=self.n_layer)
        x, _ = stack(Block(self.n_embd, self.n_head, self.dropout_rate, name="blocks"), x, None)  # (B, T, C)
        x = nn.LayerNorm(name="ln_f")(x)
        return nn.Dense(self.vocab_size, name="lm_head")(x)  # (B, T, vocab_size)
