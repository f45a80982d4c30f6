"""Self-tests of jaxgpt.sampling.sample, with toy models whose right answer can be read off by eye."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax.training import train_state

import oracles_gpt
from jaxgpt.sampling import sample

SURE = 100.0  # a logit gap that leaves e^-100 for every other token: a certain prediction


class PlusOne(nn.Module):
    """Puts all mass on "previous token + 1": from [5] it can only say 6, 7, 8, ..."""

    vocab_size: int = 16

    @nn.compact
    def __call__(self, idx, deterministic=True):
        return SURE * jax.nn.one_hot((idx + 1) % self.vocab_size, self.vocab_size)  # (B, T, V)


class CountsContext(nn.Module):
    """Predicts "my position + 1": its output shows how long the context it was given is."""

    vocab_size: int = 16
    block_size: int | None = None

    @nn.compact
    def __call__(self, idx, deterministic=True):
        positions = jnp.broadcast_to(jnp.arange(idx.shape[1]), idx.shape)  # (B, T)
        return SURE * jax.nn.one_hot(positions + 1, self.vocab_size)


class Fixed(nn.Module):
    """Ignores its input: the same next-token probabilities everywhere."""

    probs: tuple[float, ...] = (0.6, 0.25, 0.1, 0.05)

    @nn.compact
    def __call__(self, idx, deterministic=True):
        logits = jnp.log(jnp.array(self.probs))
        return jnp.broadcast_to(logits, idx.shape + (len(self.probs),))


TRACES = []


class Traced(nn.Module):
    """PlusOne that records each time JAX traces it, to count compilations."""

    @nn.compact
    def __call__(self, idx, deterministic=True):
        TRACES.append(idx.shape)
        return SURE * jax.nn.one_hot((idx + 1) % 16, 16)


NO_PARAMS = {"params": {}}


def frequencies(tokens, n):
    return np.bincount(np.asarray(tokens), minlength=n) / len(tokens)


def test_plus_one_gives_the_exact_sequence():
    """From [5], a model sure of "previous + 1" gives exactly [5, 6, 7, 8], at any temperature."""
    for temperature in (1.0, 0.5, 2.0, 0.0):
        out = sample(PlusOne(), NO_PARAMS, [5], jax.random.key(0), 3, temperature=temperature)
        assert out.tolist() == [5, 6, 7, 8], temperature


def test_returns_prompt_and_new_tokens_as_numpy():
    """The result is a 1-D numpy int array: the prompt unchanged, then max_new_tokens new tokens."""
    out = sample(PlusOne(), NO_PARAMS, np.array([3, 9]), jax.random.key(0), 2)
    assert isinstance(out, np.ndarray) and out.ndim == 1 and np.issubdtype(out.dtype, np.integer)
    assert out.tolist() == [3, 9, 10, 11]
    assert sample(PlusOne(), NO_PARAMS, jnp.array([[7]]), jax.random.key(0), 0).tolist() == [7]


def test_context_is_cropped_to_block_size():
    """With block_size 4 the model never sees more than 4 tokens: positions 0..3, so it predicts at most 4."""
    key = jax.random.key(0)
    uncropped = sample(CountsContext(), NO_PARAMS, [0], key, 7)
    assert uncropped.tolist() == [0, 1, 2, 3, 4, 5, 6, 7]
    from_model = sample(CountsContext(block_size=4), NO_PARAMS, [0], key, 7)
    assert from_model.tolist() == [0, 1, 2, 3, 4, 4, 4, 4], "block_size should default to model.block_size"
    long_prompt = sample(CountsContext(block_size=4), NO_PARAMS, [9, 9, 9, 9, 9, 9], key, 2)
    assert long_prompt.tolist() == [9, 9, 9, 9, 9, 9, 4, 4], "a prompt longer than block_size is cropped"
    overridden = sample(CountsContext(block_size=8), NO_PARAMS, [0], key, 7, block_size=4)
    assert overridden.tolist() == [0, 1, 2, 3, 4, 4, 4, 4], "the block_size argument wins over the model's"


def test_same_tokens_as_a_plain_loop_on_a_real_gpt():
    """Greedy sampling from a small GPT equals the plain loop: crop to block_size, run, take the argmax."""
    model = oracles_gpt.OracleGPT(vocab_size=11, block_size=2, n_embd=8, n_head=2, n_layer=1)
    # Random parameters of the right shapes (eval_shape only traces: no initialiser gets compiled), biases
    # zero so that the argmax follows the context instead of lm_head's bias.
    shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 2), jnp.int32))
    rng = np.random.default_rng(4)
    params = jax.tree_util.tree_map_with_path(
        lambda path, s: jnp.asarray(rng.normal(size=s.shape) * (path[-1].key != "bias"), s.dtype), shapes)
    apply = jax.jit(model.apply)
    idx = [1]
    for _ in range(8):
        logits = apply(params, jnp.array([idx[-2:]]))  # (1, T, vocab_size), T = min(len(idx), block_size)
        idx.append(int(jnp.argmax(logits[0, -1])))
    assert len(set(idx)) > 3, f"the toy GPT should not repeat one token: {idx}"
    out = sample(model, params, [1], jax.random.key(0), 8, temperature=0.0)
    assert out.tolist() == idx
    out = sample(model, params["params"], [1], jax.random.key(0), 8, temperature=0.0)
    assert out.tolist() == idx, "the bare parameter tree (state.params) should work too"
    state = train_state.TrainState.create(apply_fn=model.apply, params=params["params"], tx=optax.sgd(0.1))
    out = sample(model, state, [1], jax.random.key(0), 8, temperature=0.0)
    assert out.tolist() == idx, "a TrainState should work too"


N = 2000  # samples per distribution check; one buffer length for all of them, so one compilation per top_k


def test_temperature_reshapes_the_distribution():
    """Sampled frequencies follow softmax(logits / T): T=1 the model's own, T=0.5 sharper, T=0 always the top."""
    probs = np.array(Fixed().probs)
    at_one = sample(Fixed(), NO_PARAMS, [0], jax.random.key(1), N, block_size=1)[1:]
    np.testing.assert_allclose(frequencies(at_one, 4), probs, atol=0.04)
    sharp = probs ** 2 / (probs ** 2).sum()  # softmax(log p / 0.5) = p^2, normalised
    at_half = sample(Fixed(), NO_PARAMS, [0], jax.random.key(2), N, temperature=0.5, block_size=1)[1:]
    np.testing.assert_allclose(frequencies(at_half, 4), sharp, atol=0.04)
    greedy = sample(Fixed(), NO_PARAMS, [0], jax.random.key(3), N, temperature=0.0, block_size=1)[1:]
    assert set(greedy.tolist()) == {0}


def test_top_k_keeps_only_the_k_likeliest():
    """top_k=2 never samples the two unlikely tokens, in the ratio 0.6 : 0.25; top_k=1 is greedy."""
    top2 = sample(Fixed(), NO_PARAMS, [0], jax.random.key(4), N, top_k=2, block_size=1)[1:]
    freq = frequencies(top2, 4)
    assert freq[2] == 0 and freq[3] == 0
    np.testing.assert_allclose(freq[:2], [0.6 / 0.85, 0.25 / 0.85], atol=0.04)
    top1 = sample(Fixed(), NO_PARAMS, [0], jax.random.key(5), N, temperature=5.0, top_k=1, block_size=1)
    assert set(top1[1:].tolist()) == {0}
    big_k = sample(Fixed(), NO_PARAMS, [0], jax.random.key(4), N, top_k=100, block_size=1)
    plain = sample(Fixed(), NO_PARAMS, [0], jax.random.key(4), N, block_size=1)
    assert big_k.tolist() == plain.tolist(), "top_k above vocab_size should change nothing"


def test_reproducible_for_a_key():
    """The same key gives the same tokens; another key other tokens."""
    a = sample(Fixed(), NO_PARAMS, [0], jax.random.key(7), N, block_size=1)
    b = sample(Fixed(), NO_PARAMS, [0], jax.random.key(7), N, block_size=1)
    c = sample(Fixed(), NO_PARAMS, [0], jax.random.key(8), N, block_size=1)
    assert a.tolist() == b.tolist()
    assert a.tolist() != c.tolist()


def test_compiles_once_per_shape():
    """A second call with the same shapes (another key, temperature, prompt values) traces the model no more."""
    TRACES.clear()
    sample(Traced(), NO_PARAMS, [1, 2], jax.random.key(0), 5, block_size=3)
    first = len(TRACES)
    assert first >= 1
    sample(Traced(), NO_PARAMS, [4, 0], jax.random.key(1), 5, temperature=0.7, block_size=3)
    assert len(TRACES) == first, f"the model was traced again: {TRACES}"


@pytest.mark.parametrize("kwargs, error, text", [
    (dict(prompt_ids=[]), ValueError, "The prompt is empty"),
    (dict(prompt_ids=[[1, 2], [3, 4]]), ValueError, "1-D sequence"),
    (dict(prompt_ids=[0.5]), TypeError, "integer token ids"),
    (dict(prompt_ids="hello"), TypeError, "encode the prompt first"),
    (dict(key=0), TypeError, r"jax.random.key\(0\)"),
    (dict(temperature=-1.0), ValueError, "temperature must be 0 or more"),
    (dict(top_k=0), ValueError, "top_k must be a positive int"),
    (dict(max_new_tokens=-3), ValueError, "max_new_tokens must be 0 or more"),
    (dict(block_size=0), ValueError, "block_size must be a positive int"),
])
def test_bad_arguments_get_a_sentence(kwargs, error, text):
    """Bad prompts, temperatures, top_k, lengths and block sizes are refused before anything compiles."""
    args = dict(prompt_ids=[1], key=jax.random.key(0), max_new_tokens=3) | kwargs
    with pytest.raises(error, match=text):
        sample(PlusOne(), NO_PARAMS, args.pop("prompt_ids"), args.pop("key"), args.pop("max_new_tokens"), **args)


def test_wrong_logits_shape_is_explained():
    """A model returning something other than (1, T, vocab_size) gets a sentence with the shape."""

    class Flat(nn.Module):
        @nn.compact
        def __call__(self, idx, deterministic=True):
            return jnp.zeros((idx.shape[1], 8))

    with pytest.raises(ValueError, match=r"logits of shape \(3, 8\)"):
        sample(Flat(), NO_PARAMS, [1], jax.random.key(0), 2)
