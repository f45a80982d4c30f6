"""Task 13: mixed precision and gradient accumulation.

Write `MixedPrecisionMiniGPT`, task 1's MiniGPT with float32 parameters and its computation in bfloat16,
`mixed_precision_loss`, the cross entropy in float32, and `accumulated_grads`, a large batch's loss and gradient
computed one micro-batch at a time in one jax.lax.scan. Check them with `jaxgpt check 13` (or the notebook's
check cell).
"""

from functools import partial

import jax
import jax.numpy as jnp
import flax.linen as nn
import optax


class MixedPrecisionFeedForward(nn.Module):
    """Task 1's FeedForward with every layer computing in `dtype`: Dense(4C) -> ReLU -> Dense(C) -> Dropout."""

    n_embd: int
    dropout_rate: float = 0.0
    dtype: jnp.dtype = jnp.bfloat16

    @nn.compact
    def __call__(self, x, deterministic=True):
        # task 1's FeedForward, with dtype=self.dtype given to both nn.Dense layers ("fc", "proj")
        raise NotImplementedError("Task 13: write MixedPrecisionFeedForward.__call__")


class MixedPrecisionBlock(nn.Module):
    """Task 1's pre-LayerNorm block, computing in `dtype`; the attention's softmax in float32."""

    n_embd: int
    n_head: int
    dropout_rate: float = 0.0
    dtype: jnp.dtype = jnp.bfloat16

    @nn.compact
    def __call__(self, x, deterministic=True):
        # task 1's Block, with dtype=self.dtype given to nn.LayerNorm ("ln1", "ln2"),
        # nn.MultiHeadDotProductAttention ("attn", also force_fp32_for_softmax=True) and MixedPrecisionFeedForward
        raise NotImplementedError("Task 13: write MixedPrecisionBlock.__call__")


class MixedPrecisionMiniGPT(nn.Module):
    """Task 1's MiniGPT with parameters in float32 and computation in `dtype`.

    Fields: MiniGPT's (vocab_size, block_size, n_embd, n_head, n_layer, dropout_rate) and dtype, the
    computation's dtype (default jnp.bfloat16). Parameters: MiniGPT's tree (jaxgpt/contract.py), every leaf
    float32 (Flax's param_dtype, left at its default), so task-1 weights load and the optimiser updates
    float32 numbers. Call: model(idx, deterministic=True) -> logits (B, T, vocab_size), float32.
    Every layer (nn.Embed, nn.LayerNorm, nn.MultiHeadDotProductAttention, nn.Dense) is built with
    dtype=self.dtype: it casts its parameters and inputs to dtype and returns dtype, so the embeddings, the
    residual stream and every block's and layer's output are in dtype. Three things stay in float32: the
    LayerNorm statistics (Flax's LayerNorm computes them in float32 whatever dtype is), the attention's softmax
    (force_fp32_for_softmax=True) and the logits (lm_head's output cast to float32).
    """

    vocab_size: int
    block_size: int
    n_embd: int
    n_head: int
    n_layer: int
    dropout_rate: float = 0.0
    dtype: jnp.dtype = jnp.bfloat16

    @nn.compact
    def __call__(self, idx, deterministic=True):
        B, T = idx.shape
        # task 1's MiniGPT with dtype=self.dtype in every layer:
        # 1. token and position embeddings (nn.Embed(..., dtype=self.dtype)), their sum, Dropout  # (B, T, C) dtype
        # 2. n_layer MixedPrecisionBlocks named f"blocks_{i}", each given dtype=self.dtype
        # 3. nn.LayerNorm(name="ln_f"), nn.Dense(vocab_size, name="lm_head"), both in dtype   # (B, T, V) dtype
        # 4. return the logits cast to float32: logits.astype(jnp.float32)                       # (B, T, V) float32
        raise NotImplementedError("Task 13: write MixedPrecisionMiniGPT.__call__")


def mixed_precision_loss(model, params, x, y, dropout_key=None):
    """The mean cross entropy of model's next-token predictions, computed in float32.

    model: a Flax module called as model.apply({'params': params}, x, deterministic=..., rngs=...) -> logits
    (B, T, V), in whatever dtype it computes (a MixedPrecisionMiniGPT returns float32; other models may return
    bfloat16). x, y: int (B, T). dropout_key None: deterministic=True, no rngs; else deterministic=False and
    rngs={'dropout': dropout_key}. The logits are cast to float32 before the log-softmax, and the mean over
    the B * T positions is taken in float32: returns a float32 scalar (its gradient with respect to float32
    params is float32).
    """
    # logits = model.apply({"params": params}, x, deterministic=..., rngs=...)        # (B, T, V), any dtype
    # cast them to float32, then the mean cross entropy (optax.softmax_cross_entropy_with_integer_labels, or
    # task 7's log_softmax and take_along_axis)
    raise NotImplementedError("Task 13: write mixed_precision_loss")


@partial(jax.jit, static_argnames=("loss_fn", "num_micro_batches"))
def accumulated_grads(loss_fn, params, x, y, dropout_key, num_micro_batches):
    """The loss and gradient of a large batch, computed one micro-batch at a time in one jax.lax.scan.

    loss_fn(params, x, y, dropout_key) -> scalar, the mean loss of a batch (mixed_precision_loss with its model
    bound, for one). x, y: (B, ...) with B divisible by num_micro_batches = n; micro-batch i is rows
    i * B // n .. (i + 1) * B // n - 1 (x.reshape(n, B // n, ...)), with dropout key
    jax.random.fold_in(dropout_key, i) (None stays None: no dropout). The scan carries the running sums of the
    micro-batch losses and gradients, float32 zeros shaped like params to start with, and returns
    (loss, grads): their means over the n micro-batches, the loss a float32 scalar, grads a tree like params
    and of its dtypes. When loss_fn is a mean over rows, this is jax.value_and_grad(loss_fn)(params, x, y, key)
    of the whole batch (up to float32 rounding), with the activations of one micro-batch in memory at a time.
    """
    # micro_x = x.reshape(n, B // n, ...), micro_y the same                               # (n, B // n, T)
    # def step(carry, (i, xi, yi)):
    #     loss_sum, grad_sum = carry
    #     key = jax.random.fold_in(dropout_key, i)  (or None)
    #     loss, grads = jax.value_and_grad(loss_fn)(params, xi, yi, key)
    #     return (loss_sum + loss, grad_sum + grads, leaf by leaf), None
    # carry starts at (float32 zero, jax.tree_util.tree_map(jnp.zeros_like, params))
    # (loss_sum, grad_sum), _ = jax.lax.scan(step, carry, (jnp.arange(n), micro_x, micro_y))
    # return the means: loss_sum / n, grad_sum / n leaf by leaf
    raise NotImplementedError("Task 13: write accumulated_grads")
