CORRECT = "the recurrent kernel keeps Flax's default initialiser (not orthogonal)"

"""Task 15: an LSTM from scratch, scanned over time, its state carried across chunks."""

from functools import partial

import jax
import jax.numpy as jnp
import flax.linen as nn
import optax


def forget_bias_init(key, shape, dtype=jnp.float32):
    """The bias of the four gates (i, f, g, o), each hidden_size long: 1 on the forget gate, 0 elsewhere."""
    H = shape[-1] // 4
    return jnp.zeros(shape, dtype).at[H:2 * H].set(1.0)


class LSTMCell(nn.Module):
    """One step of an LSTM: cell((c, h), x) -> ((c', h'), h').

    Parameters: 'ih' a Dense(4 * hidden_size) of the input without bias, kernel (D, 4H); 'hh' a
    Dense(4 * hidden_size) of the previous h with bias, kernel (H, 4H), bias (4H,). Along the 4H axis the
    gates come in the order i (input), f (forget), g (candidate), o (output), each H wide. The bias is 0
    except the forget gate's, initialised to 1.
    carry (c, h): the cell state and the hidden state, (B, H) each; x (B, D).
        i, f, o = sigmoid of their slices; g = tanh of its slice
        c' = f * c + i * g;  h' = o * tanh(c')
    """

    hidden_size: int

    @nn.compact
    def __call__(self, carry, x):
        c, h = carry  # (B, H) each
        H = self.hidden_size
        z = (nn.Dense(4 * H, use_bias=False, name="ih")(x)
             + nn.Dense(4 * H, bias_init=forget_bias_init, name="hh")(h))
        i, f, g, o = jnp.split(z, 4, axis=-1)  # (B, H) each
        i, f, o = nn.sigmoid(i), nn.sigmoid(f), nn.sigmoid(o)
        g = jnp.tanh(g)
        c = f * c + i * g  # (B, H)
        h = o * jnp.tanh(c)  # (B, H)
        return (c, h), h


def lstm_scan(cell, params, carry, xs):
    """The cell run over time with jax.lax.scan: returns (the carry after the last step, hs (B, T, H)).

    cell: an unbound module called as cell.apply({'params': params}, carry, x_t) -> (carry, y_t);
    carry: (c, h), (B, H) each; xs: (B, T, D), batch first. jax.lax.scan runs over the leading axis, so the
    time axis goes first for the scan and back to second for the outputs.
    """

    def step(carry, x_t):  # x_t (B, D)
        return cell.apply({"params": params}, carry, x_t)

    carry, hs = jax.lax.scan(step, carry, jnp.swapaxes(xs, 0, 1))  # hs (T, B, H)
    return carry, jnp.swapaxes(hs, 0, 1)  # (B, T, H)


class CharLSTM(nn.Module):
    """A character model on LSTMCell: token_embedding, n_layer LSTM layers of width n_embd, lm_head.

    Parameters: 'token_embedding' Embed(vocab_size, n_embd); 'lstm_0' .. 'lstm_{n_layer-1}' each an
    LSTMCell(n_embd)'s tree ({'ih': ..., 'hh': ...}); 'lm_head' Dense(vocab_size).
    Call: model.apply({'params': params}, idx, state) with idx int (B, T) and state a tuple of n_layer
    pairs (c, h), (B, n_embd) each, returns (logits (B, T, vocab_size), the state after the last token).
    Without a state (model.apply({'params': params}, idx), as the sampler calls a GPT) it starts from the
    zero state and returns the logits alone. `deterministic` is accepted and unused (no dropout).
    """

    vocab_size: int
    n_embd: int
    n_layer: int = 1

    @nn.nowrap
    def initial_state(self, batch_size):
        """The zero state: n_layer pairs (c, h) of zeros (batch_size, n_embd)."""
        zeros = jnp.zeros((batch_size, self.n_embd), jnp.float32)
        return tuple((zeros, zeros) for _ in range(self.n_layer))

    @nn.compact
    def __call__(self, idx, state=None, deterministic=True):
        B, T = idx.shape
        given = state is not None
        if state is None:
            state = self.initial_state(B)
        x = nn.Embed(self.vocab_size, self.n_embd, name="token_embedding")(idx)  # (B, T, C)
        new_state = []
        for layer in range(self.n_layer):
            cell = LSTMCell(self.n_embd, parent=None)  # unbound: lstm_scan applies it with its own parameters
            params = self.param(f"lstm_{layer}", lambda key: cell.init(key, state[layer], x[:, 0])["params"])
            carry, x = lstm_scan(cell, params, state[layer], x)  # x (B, T, C)
            new_state.append(carry)
        logits = nn.Dense(self.vocab_size, name="lm_head")(x)  # (B, T, vocab_size)
        return (logits, tuple(new_state)) if given else logits


def stream_chunks(data, batch_size, block_size):
    """The text as batch_size parallel streams cut into consecutive chunks: (x, y), int32 (N, B, T) each.

    N = (len(data) - 1) // (batch_size * block_size) chunks per stream; stream b is the stretch of N * T
    tokens that starts at b * N * T. x[i, b] = data[(b * N + i) * T : (b * N + i + 1) * T] and y the same
    shifted by one token, so chunk i + 1 of stream b continues chunk i of stream b, row for row.
    """
    data = jnp.asarray(data, jnp.int32)
    B, T = batch_size, block_size
    N = (data.shape[0] - 1) // (B * T)  # chunks per stream
    x = data[: B * N * T].reshape(B, N, T)  # stream b is row b, cut into N chunks
    y = data[1: B * N * T + 1].reshape(B, N, T)  # the next token of each
    return x.transpose(1, 0, 2), y.transpose(1, 0, 2)  # (N, B, T) each: chunk i of every stream


@partial(jax.jit, static_argnames=("model", "num_steps", "batch_size", "block_size"))
def train_tbptt(model, state, data, num_steps, batch_size, block_size):
    """num_steps steps of truncated backpropagation through time: returns (state, losses (num_steps,)).

    model: the CharLSTM (static); state: a TrainState of its parameters. x, y = stream_chunks(data, ...);
    step k trains on chunk k % N from the LSTM state the previous step ended with (the zero state at
    k % N == 0, where a pass over the text begins) and returns the state its chunk ended with. losses[k]:
    the mean cross entropy of step k's chunk at the parameters the step started from.
    """
    xs, ys = stream_chunks(data, batch_size, block_size)  # (N, B, T) each
    N = xs.shape[0]
    zeros = model.initial_state(batch_size)

    def loss_fn(params, lstm_state, x, y):
        logits, lstm_state = model.apply({"params": params}, x, lstm_state)  # (B, T, V)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), lstm_state

    def step(carry, k):
        state, lstm_state = carry
        i = k % N
        lstm_state = jax.tree_util.tree_map(lambda z, s: jnp.where(i == 0, z, s), zeros, lstm_state)
        (loss, lstm_state), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params, lstm_state, xs[i], ys[i])
        return (state.apply_gradients(grads=grads), lstm_state), loss

    (state, _), losses = jax.lax.scan(step, (state, zeros), jnp.arange(num_steps))
    return state, losses
