"""The notebook's plots draw what they are given, headless, and say in a sentence what is wrong with bad input."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from jaxgpt import plots  # noqa: E402


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def causal_weights(T: int, seed: int = 0) -> np.ndarray:
    """A (T, T) matrix whose row t is a probability distribution over positions 0..t."""
    rng = np.random.default_rng(seed)
    scores = np.where(np.tril(np.ones((T, T), dtype=bool)), rng.normal(size=(T, T)), -np.inf)
    weights = np.exp(scores - scores.max(axis=1, keepdims=True))
    return weights / weights.sum(axis=1, keepdims=True)


def test_attention_row_draws_the_row_and_marks_the_future():
    """Row t's bars are its weights at s <= t; the positions after t are outlines, not weights"""
    weights = causal_weights(6)
    ax = plots.plot_attention_row(weights, 3, tokens=list("abc de"))
    filled = [p for p in ax.patches if p.get_fill()]
    outlines = [p for p in ax.patches if not p.get_fill()]
    assert [round(p.get_x() + p.get_width() / 2) for p in filled] == [0, 1, 2, 3]
    np.testing.assert_allclose([p.get_height() for p in filled], weights[3, :4])
    assert [round(p.get_x() + p.get_width() / 2) for p in outlines] == [4, 5]
    assert [label.get_text() for label in ax.get_xticklabels()][3] == "3\n␣"


def test_attention_row_last_position_has_no_future():
    weights = causal_weights(4)
    ax = plots.plot_attention_row(weights, 3)
    assert all(p.get_fill() for p in ax.patches) and len(ax.patches) == 4


@pytest.mark.parametrize("weights, t, tokens, words", [
    (np.ones((2, 3, 3)), 0, None, r"one \(T, T\) matrix"),
    (np.ones((3, 3)), 3, None, "between 0 and 2"),
    (np.ones((3, 3)), -1, None, "between 0 and 2"),
    (np.ones((3, 3)), 1, ["a", "b"], "tokens has 2 labels"),
])
def test_attention_row_bad_input_is_a_sentence(weights, t, tokens, words):
    with pytest.raises(ValueError, match=words):
        plots.plot_attention_row(weights, t, tokens=tokens)


def test_gradient_norms_one_line_per_variant_on_a_log_scale():
    norms = {"without": [1e-3, 1e-2, 1e-1], "with": [2.0, 1.5, 1.0]}
    ax = plots.plot_gradient_norms(norms)
    assert ax.get_yscale() == "log"
    lines = ax.get_lines()
    assert [line.get_label() for line in lines] == ["without", "with"]
    for line, values in zip(lines, norms.values()):
        np.testing.assert_array_equal(line.get_xdata(), [0, 1, 2])
        np.testing.assert_allclose(line.get_ydata(), values)


@pytest.mark.parametrize("norms, words", [
    ({}, "at least one entry"),
    ([1.0, 2.0], "a dict"),
    ({"without": [1.0, 0.0]}, "positive numbers"),
    ({"without": [1.0, float("nan")]}, "positive numbers"),
    ({"without": "large"}, "sequence of numbers"),
])
def test_gradient_norms_bad_input_is_a_sentence(norms, words):
    with pytest.raises(ValueError, match=words):
        plots.plot_gradient_norms(norms)


def test_attention_matrix_and_losses_still_draw():
    """The older plots: the attention matrix as an image, the loss curve with its eval points"""
    ax = plots.plot_attention(causal_weights(5), tokens=list("hello"))
    np.testing.assert_allclose(ax.get_images()[0].get_array(), causal_weights(5))
    ax = plots.plot_losses([1, 2, 3], [3.0, 2.5, 2.0], {3: 2.2})
    assert [line.get_label() for line in ax.get_lines()] == ["train", "eval"]
