"""Task 15: an LSTM from scratch, scanned over time, its state carried across chunks.

Write `LSTMCell` (one step, with Flax's parameter layout fused into two Dense layers), `lstm_scan` (the cell
over time with `jax.lax.scan`), `CharLSTM` (a character model on it that takes and returns its state),
`stream_chunks` (the text as parallel streams of consecutive chunks) and `train_tbptt` (truncated
backpropagation through time: the state carried from chunk to chunk). Check them with `jaxgpt check 15` (or
the notebook's check cell).
"""

from functools import partial

import jax
import jax.numpy as jnp
import flax.linen as nn
import optax


def forget_bias_init(key, shape, dtype=jnp.float32):
    """The bias of the four gates (i, f, g, o), each hidden_size long: 1 on the forget gate, 0 elsewhere.
    An initialiser, called as forget_bias_init(key, (4 * H,), dtype), as nn.Dense calls its bias_init."""
    # zeros of `shape`, with the slice H .. 2H (the forget gate's) set to 1
    raise NotImplementedError("Task 15: write forget_bias_init")


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
        # c, h = carry                                                          # (B, H) each
        # z = nn.Dense(4H, use_bias=False, name="ih")(x) + nn.Dense(4H, bias_init=forget_bias_init, name="hh")(h)
        # i, f, g, o = the four H-wide slices of z, in that order               # (B, H) each
        # the gates through a sigmoid, the candidate through a tanh; then the new c and h
        # return (c, h), h
        raise NotImplementedError("Task 15: write LSTMCell")


def lstm_scan(cell, params, carry, xs):
    """The cell run over time with jax.lax.scan: returns (the carry after the last step, hs (B, T, H)).

    cell: an unbound module called as cell.apply({'params': params}, carry, x_t) -> (carry, y_t);
    carry: (c, h), (B, H) each; xs: (B, T, D), batch first. jax.lax.scan runs over the leading axis, so the
    time axis goes first for the scan and back to second for the outputs.
    """
    # def step(carry, x_t):                      # x_t (B, D): one time step of every sequence
    #     return cell.apply({"params": params}, carry, x_t)
    # carry, hs = jax.lax.scan(step, carry, xs with time first)                 # hs (T, B, H)
    # return carry, hs with batch first                                         # (B, T, H)
    raise NotImplementedError("Task 15: write lstm_scan")


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
        """The zero state: n_layer pairs (c, h) of zeros (batch_size, n_embd). (Given: nothing to write.)"""
        zeros = jnp.zeros((batch_size, self.n_embd), jnp.float32)
        return tuple((zeros, zeros) for _ in range(self.n_layer))

    @nn.compact
    def __call__(self, idx, state=None, deterministic=True):
        # x = nn.Embed(vocab_size, n_embd, name="token_embedding")(idx)          # (B, T, C)
        # for each layer l, from state[l] (the zero state when none was given):
        #     cell = LSTMCell(self.n_embd, parent=None)       # unbound, so lstm_scan can apply it
        #     params = self.param(f"lstm_{l}", lambda key: cell.init(key, state[l], x[:, 0])["params"])
        #     carry, x = lstm_scan(cell, params, state[l], x)                     # x (B, T, C)
        # logits = nn.Dense(vocab_size, name="lm_head")(x)                        # (B, T, vocab_size)
        # return (logits, tuple of the layers' carries) if a state was given, else logits
        raise NotImplementedError("Task 15: write CharLSTM")


def stream_chunks(data, batch_size, block_size):
    """The text as batch_size parallel streams cut into consecutive chunks: (x, y), int32 (N, B, T) each.

    N = (len(data) - 1) // (batch_size * block_size) chunks per stream; stream b is the stretch of N * T
    tokens that starts at b * N * T. x[i, b] = data[(b * N + i) * T : (b * N + i + 1) * T] and y the same
    shifted by one token, so chunk i + 1 of stream b continues chunk i of stream b, row for row.
    """
    # N = ...; x = data[:B * N * T] laid out (B, N, T), then chunks first: (N, B, T); y from data[1:]
    raise NotImplementedError("Task 15: write stream_chunks")


@partial(jax.jit, static_argnames=("model", "num_steps", "batch_size", "block_size"))
def train_tbptt(model, state, data, num_steps, batch_size, block_size):
    """num_steps steps of truncated backpropagation through time: returns (state, losses (num_steps,)).

    model: the CharLSTM (static); state: a TrainState of its parameters. x, y = stream_chunks(data, ...);
    step k trains on chunk k % N from the LSTM state the previous step ended with (the zero state at
    k % N == 0, where a pass over the text begins) and returns the state its chunk ended with. losses[k]:
    the mean cross entropy of step k's chunk at the parameters the step started from.
    """
    # def loss_fn(params, lstm_state, x, y):     # (loss, the state the chunk ends with): has_aux=True
    # def step(carry, k):
    #     state, lstm_state = carry
    #     the zero state where k % N == 0 (jnp.where on every leaf), else lstm_state as it is
    #     (loss, lstm_state), grads = jax.value_and_grad(loss_fn, has_aux=True)(...)
    #     return (state.apply_gradients(grads=grads), lstm_state), loss
    # (state, _), losses = jax.lax.scan(step, (state, model.initial_state(batch_size)), jnp.arange(num_steps))
    raise NotImplementedError("Task 15: write train_tbptt")
