CORRECT = "nn.remat applied to the Block class (deterministic as a static argument); layers found by parsing their numbers; unstacking with jnp.split; the scan's step a method-free lambda"

import re

import jax
import jax.numpy as jnp
import flax.linen as nn

from .task01_minigpt import Block


def stack_layers(params):
    numbered = {int(m.group(1)): value for name, value in params.items() if (m := re.fullmatch(r"blocks_(\d+)", name))}
    layers = [numbered[i] for i in sorted(numbered)]
    out = {name: value for name, value in params.items() if not re.fullmatch(r"blocks_\d+", name)}
    out["blocks"] = jax.tree_util.tree_map(lambda *leaves: jnp.concatenate([leaf[None] for leaf in leaves]), *layers)
    return out


def unstack_layers(params):
    out = {name: value for name, value in params.items() if name != "blocks"}
    leaves, treedef = jax.tree_util.tree_flatten(params["blocks"])
    pieces = [jnp.split(leaf, leaf.shape[0]) for leaf in leaves]  # per leaf: L arrays of shape (1, ...)
    for i in range(len(pieces[0])):
        out[f"blocks_{i}"] = jax.tree_util.tree_unflatten(treedef, [p[i][0] for p in pieces])
    return out


class ScannedMiniGPT(nn.Module):
    vocab_size: int
    block_size: int
    n_embd: int
    n_head: int
    n_layer: int
    dropout_rate: float = 0.0
    remat: bool = False

    @nn.compact
    def __call__(self, idx, deterministic=True):
        T = idx.shape[1]
        x = nn.Embed(self.vocab_size, self.n_embd, name="token_embedding")(idx) + \
            nn.Embed(self.block_size, self.n_embd, name="position_embedding")(jnp.arange(T))
        x = nn.Dropout(rate=self.dropout_rate, deterministic=deterministic)(x)
        block_class = nn.remat(Block, static_argnums=(2,)) if self.remat else Block
        block = block_class(self.n_embd, self.n_head, self.dropout_rate, name="blocks")
        x, _ = nn.scan(lambda mdl, carry, _: (mdl(carry, deterministic), None),
                       variable_axes={"params": 0}, split_rngs={"params": True, "dropout": True},
                       length=self.n_layer)(block, x, None)
        return nn.Dense(self.vocab_size, name="lm_head")(nn.LayerNorm(name="ln_f")(x))
