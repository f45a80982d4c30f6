CORRECT = "the scan runs over the micro-batch index and cuts each micro-batch with jax.lax.dynamic_slice_in_dim"

"""Task 13: mixed precision and gradient accumulation."""

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
        x = nn.Dense(4 * self.n_embd, dtype=self.dtype, name="fc")(x)  # (B, T, 4C) in dtype
        x = nn.relu(x)
        x = nn.Dense(self.n_embd, dtype=self.dtype, name="proj")(x)  # (B, T, C) in dtype
        return nn.Dropout(self.dropout_rate)(x, deterministic=deterministic)


class MixedPrecisionBlock(nn.Module):
    """Task 1's pre-LayerNorm block, computing in `dtype`; the attention's softmax in float32."""

    n_embd: int
    n_head: int
    dropout_rate: float = 0.0
    dtype: jnp.dtype = jnp.bfloat16

    @nn.compact
    def __call__(self, x, deterministic=True):
        T = x.shape[1]
        mask = nn.make_causal_mask(jnp.ones((1, T)))  # (1, 1, T, T)
        h = nn.LayerNorm(dtype=self.dtype, name="ln1")(x)  # statistics in float32, output in dtype
        h = nn.MultiHeadDotProductAttention(num_heads=self.n_head, dropout_rate=self.dropout_rate, dtype=self.dtype,
                                            force_fp32_for_softmax=True, name="attn")(
            h, mask=mask, deterministic=deterministic)  # (B, T, C) in dtype
        x = x + nn.Dropout(self.dropout_rate)(h, deterministic=deterministic)
        h = nn.LayerNorm(dtype=self.dtype, name="ln2")(x)
        return x + MixedPrecisionFeedForward(self.n_embd, self.dropout_rate, self.dtype, name="ffwd")(
            h, deterministic=deterministic)


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
        tok = nn.Embed(self.vocab_size, self.n_embd, dtype=self.dtype, name="token_embedding")(idx)  # (B, T, C)
        pos = nn.Embed(self.block_size, self.n_embd, dtype=self.dtype, name="position_embedding")(
            jnp.arange(T))  # (T, C)
        x = nn.Dropout(self.dropout_rate)(tok + pos, deterministic=deterministic)  # the residual stream, in dtype
        for i in range(self.n_layer):
            x = MixedPrecisionBlock(self.n_embd, self.n_head, self.dropout_rate, self.dtype,
                                    name=f"blocks_{i}")(x, deterministic)
        x = nn.LayerNorm(dtype=self.dtype, name="ln_f")(x)
        logits = nn.Dense(self.vocab_size, dtype=self.dtype, name="lm_head")(x)  # (B, T, vocab_size) in dtype
        return logits.astype(jnp.float32)


def mixed_precision_loss(model, params, x, y, dropout_key=None):
    """The mean cross entropy of model's next-token predictions, computed in float32.

    model: a Flax module called as model.apply({'params': params}, x, deterministic=..., rngs=...) -> logits
    (B, T, V), in whatever dtype it computes (a MixedPrecisionMiniGPT returns float32; other models may return
    bfloat16). x, y: int (B, T). dropout_key None: deterministic=True, no rngs; else deterministic=False and
    rngs={'dropout': dropout_key}. The logits are cast to float32 before the log-softmax, and the mean over
    the B * T positions is taken in float32: returns a float32 scalar (its gradient with respect to float32
    params is float32).
    """
    if dropout_key is None:
        logits = model.apply({"params": params}, x, deterministic=True)
    else:
        logits = model.apply({"params": params}, x, deterministic=False, rngs={"dropout": dropout_key})
    logits = logits.astype(jnp.float32)  # (B, T, V): the log-softmax of bfloat16 numbers loses small losses
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()


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
    n = num_micro_batches
    B = x.shape[0]
    micro_x = x.reshape(n, B // n, *x.shape[1:])  # (n, B // n, T)
    micro_y = y.reshape(n, B // n, *y.shape[1:])

    m = B // n

    def step(carry, i):
        loss_sum, grad_sum = carry
        xi = jax.lax.dynamic_slice_in_dim(x, i * m, m, axis=0)
        yi = jax.lax.dynamic_slice_in_dim(y, i * m, m, axis=0)
        key = None if dropout_key is None else jax.random.fold_in(dropout_key, i)
        loss, grads = jax.value_and_grad(loss_fn)(params, xi, yi, key)
        grad_sum = jax.tree_util.tree_map(jnp.add, grad_sum, grads)
        return (loss_sum + loss, grad_sum), None

    zeros = jax.tree_util.tree_map(jnp.zeros_like, params)  # float32, like the parameters
    (loss_sum, grad_sum), _ = jax.lax.scan(step, (jnp.zeros((), jnp.float32), zeros), jnp.arange(n))
    return loss_sum / n, jax.tree_util.tree_map(lambda g: g / n, grad_sum)
