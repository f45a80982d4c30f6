"""Plots for the notebook and the terminal: a loss curve, attention weights, gradient norms through depth.

Headless-safe: outside a notebook and without a display, matplotlib draws with Agg, so a plot can always be
made and saved (`ax.figure.savefig(...)`) on a server or in CI.
"""

from __future__ import annotations

import os
import sys
from typing import Any, Mapping, Sequence

import numpy as np


def _pyplot():
    import matplotlib

    in_notebook = "ipykernel" in sys.modules
    no_display = sys.platform.startswith("linux") and not (
        os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))
    if not in_notebook and no_display and not os.environ.get("MPLBACKEND"):
        matplotlib.use("Agg")  # a terminal without a screen: draw into memory, never open a window
    import matplotlib.pyplot as plt

    return plt


def _new_axes(ax, figsize):
    if ax is not None:
        return ax
    plt = _pyplot()
    _, ax = plt.subplots(figsize=figsize, layout="constrained")
    return ax


def _numbers(values: Any, what: str) -> np.ndarray:
    try:
        array = np.asarray(values, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError):
        raise ValueError(f"{what} should be a sequence of numbers, but it is a {type(values).__name__}.") from None
    return array


def plot_losses(steps: Sequence[int], train_losses: Sequence[float],
                eval_losses: Sequence[float] | Mapping[int, float] | None = None, ax=None):
    """The training loss against the step, and the evaluation loss where it was measured.

    `eval_losses` is either one value per step (None or NaN where it was not measured) or a mapping
    {step: loss}. Returns the matplotlib axes.
    """
    steps_arr = _numbers(steps, "steps")
    train = _numbers(train_losses, "train_losses")
    if len(steps_arr) != len(train):
        raise ValueError(f"steps has {len(steps_arr)} values but train_losses has {len(train)}: "
                         "give one training loss per step.")
    ax = _new_axes(ax, (7, 4))
    ax.plot(steps_arr, train, label="train", color="tab:blue", linewidth=1.2, alpha=0.85)
    if eval_losses is not None:
        if isinstance(eval_losses, Mapping):
            eval_steps = _numbers(list(eval_losses.keys()), "the steps of eval_losses")
            evals = _numbers(list(eval_losses.values()), "eval_losses")
        else:
            evals = _numbers([np.nan if v is None else v for v in eval_losses], "eval_losses")
            if len(evals) != len(steps_arr):
                raise ValueError(f"steps has {len(steps_arr)} values but eval_losses has {len(evals)}: give one "
                                 "value per step (None where it was not measured) or a {step: loss} dict.")
            eval_steps = steps_arr
        measured = np.isfinite(evals)
        ax.plot(eval_steps[measured], evals[measured], "o-", label="eval", color="tab:orange", markersize=4)
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy loss (nats)")
    ax.set_title("Loss")
    ax.grid(alpha=0.3)
    ax.legend()
    return ax


def _token_label(token: Any) -> str:
    text = str(token)
    return {"\n": "⏎", " ": "␣", "\t": "⇥"}.get(text, text)


def plot_attention(weights: Any, tokens: Sequence[Any] | None = None, ax=None, title: str = "Attention weights"):
    """A (T, T) attention matrix as a heat map: row t is query position t, column s the position it reads.

    `tokens` (T labels, such as the characters of the context) label both axes. Returns the matplotlib axes.
    """
    wei = np.asarray(weights, dtype=np.float64)
    if wei.ndim != 2 or wei.shape[0] != wei.shape[1]:
        raise ValueError(f"weights should be one (T, T) matrix, but it has shape {wei.shape}: pick one batch "
                         "row and one head, e.g. weights[0, head].")
    T = wei.shape[0]
    ax = _new_axes(ax, (min(9.0, max(4.0, 0.2 * T + 2.5)), min(8.0, max(3.5, 0.2 * T + 1.8))))
    image = ax.imshow(wei, cmap="viridis", vmin=0.0, vmax=max(1e-9, float(np.nanmax(wei))))
    ax.figure.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    if tokens is not None:
        labels = [_token_label(t) for t in tokens]
        if len(labels) != T:
            raise ValueError(f"tokens has {len(labels)} labels but weights is {T} x {T}.")
        ax.set_xticks(range(T), labels, fontsize=8)
        ax.set_yticks(range(T), labels, fontsize=8)
    ax.set_xlabel("key position s (what is read)")
    ax.set_ylabel("query position t (who reads)")
    ax.set_title(title)
    return ax


def attention_weights(model, params: Mapping, idx: Any, layer: int = 0, head: int = 0) -> np.ndarray:
    """One head's causal attention weights (T, T) inside a trained MiniGPT, for the first sequence of `idx`.

    The block's attention input (the output of its `ln1`) is captured while the model runs; the weights are
    then computed from the block's 'attn' parameters as in task 3's Head, with the biases that Flax's
    attention layer (and task 5's) carry: softmax(mask(q k^T / sqrt(head_size))).
    """
    import jax
    import jax.numpy as jnp

    idx = jnp.asarray(idx)
    if idx.ndim == 1:
        idx = idx[None, :]
    variables = params if "params" in params else {"params": params}
    block = f"blocks_{layer}"
    if block not in variables["params"]:
        raise ValueError(f"the parameters have no '{block}': the model has layers "
                         + ", ".join(k for k in variables["params"] if k.startswith("blocks_")) + ".")
    _, state = model.apply(variables, idx, capture_intermediates=lambda module, method: module.name == "ln1")
    x = state["intermediates"][block]["ln1"]["__call__"][0][0]  # (T, C), first sequence of the batch
    attn = variables["params"][block]["attn"]
    n_head = attn["query"]["kernel"].shape[1]
    if not 0 <= head < n_head:
        raise ValueError(f"head should be between 0 and {n_head - 1}, but it is {head}.")

    def project(name):  # kernel (C, n_head, head_size), bias (n_head, head_size) -> (T, head_size)
        return x @ attn[name]["kernel"][:, head, :] + attn[name]["bias"][head]

    q, k = project("query"), project("key")
    T, head_size = q.shape
    wei = q @ k.T * head_size**-0.5  # (T, T)
    wei = jnp.where(jnp.tril(jnp.ones((T, T), dtype=bool)), wei, -jnp.inf)
    return np.asarray(jax.nn.softmax(wei, axis=-1))


def plot_attention_row(weights: Any, t: int, tokens: Sequence[Any] | None = None, ax=None,
                       title: str | None = None):
    """Row t of a (T, T) causal attention matrix as bars: how much query position t reads from each position s.

    Positions after t (the future, masked out) are drawn as empty outlines at zero. `tokens` (T labels) name
    the positions. Returns the matplotlib axes.
    """
    wei = np.asarray(weights, dtype=np.float64)
    if wei.ndim != 2 or wei.shape[0] != wei.shape[1]:
        raise ValueError(f"weights should be one (T, T) matrix, but it has shape {wei.shape}: pick one batch "
                         "row and one head, e.g. weights[0, head].")
    T = wei.shape[0]
    if not 0 <= t < T:
        raise ValueError(f"t should be a query position between 0 and {T - 1}, but it is {t}.")
    ax = _new_axes(ax, (max(4.0, 0.45 * T + 1.5), 3.0))
    positions = np.arange(T)
    readable = positions <= t
    ax.bar(positions[readable], wei[t, readable], color="tab:blue", label=f"read by position {t}")
    if (~readable).any():
        ax.bar(positions[~readable], np.full((~readable).sum(), 0.02), fill=False, edgecolor="tab:gray",
               hatch="//", label="the future (masked)")
    if tokens is not None:
        labels = [_token_label(token) for token in tokens]
        if len(labels) != T:
            raise ValueError(f"tokens has {len(labels)} labels but weights is {T} x {T}.")
        ax.set_xticks(positions, [f"{s}\n{label}" for s, label in zip(positions, labels)], fontsize=8)
    else:
        ax.set_xticks(positions)
    ax.set_ylim(0.0, max(0.05, float(np.nanmax(wei[t, readable])) * 1.15))
    ax.set_xlabel("key position s")
    ax.set_ylabel("weight")
    ax.set_title(title or f"What position {t} reads: row {t} of the weights (sums to 1)", fontsize=10)
    ax.legend(fontsize=8)
    return ax


def plot_gradient_norms(norms: Mapping[str, Sequence[float]], ax=None,
                        title: str = "How much gradient reaches each layer"):
    """One line per variant: the gradient norm at each layer (layer 0 = the first, nearest the input), on a
    log scale, so that a constant factor per layer shows as a straight line. Returns the matplotlib axes."""
    if not isinstance(norms, Mapping) or not norms:
        raise ValueError("norms should be a dict {label: one gradient norm per layer}, with at least one entry.")
    ax = _new_axes(ax, (6, 3.5))
    for label, values in norms.items():
        values_arr = _numbers(values, f"the norms of {label!r}")
        if not (np.isfinite(values_arr) & (values_arr > 0)).all():
            raise ValueError(f"the norms of {label!r} should be positive numbers (a log scale shows them).")
        ax.plot(np.arange(len(values_arr)), values_arr, "o-", markersize=3, label=str(label))
    ax.set_yscale("log")
    ax.set_xlabel("layer (0 = nearest the input)")
    ax.set_ylabel("gradient norm")
    ax.set_title(title)
    ax.grid(alpha=0.3, which="both")
    ax.legend()
    return ax
