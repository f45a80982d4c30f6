"""Oracles the task suites compare against: small numpy computations a reader can verify by eye, and
the known-wrong variants that let a failure name its likely cause. Nothing here is the reference solution.
"""

from __future__ import annotations

import numpy as np


def softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    x = x - np.max(np.where(np.isfinite(x), x, -np.inf), axis=axis, keepdims=True)
    e = np.exp(x)
    return e / e.sum(axis=axis, keepdims=True)


def causal_attention(q, k, v, *, scale, mask="causal", softmax_axis=-1, swap_qk=False, mask_after=False,
                     mask_value=-np.inf):
    """Single-head attention in float64 with switches for the usual mistakes."""
    q, k, v = (np.asarray(a, np.float64) for a in (q, k, v))
    T = q.shape[-2]
    wei = (k @ np.swapaxes(q, -1, -2) if swap_qk else q @ np.swapaxes(k, -1, -2)) * scale
    tril = np.tril(np.ones((T, T), bool))
    if mask == "causal" and not mask_after:
        wei = np.where(tril, wei, mask_value)
    if mask == "upper":
        wei = np.where(tril.T, wei, -np.inf)
    wei = softmax(wei, axis=softmax_axis)
    if mask == "causal" and mask_after:
        wei = np.where(tril, wei, 0.0)
    return wei @ v


def running_mean(x: np.ndarray) -> np.ndarray:
    """Causal running mean along axis 1: out[:, t] = mean(x[:, :t+1])."""
    x = np.asarray(x, np.float64)
    return np.cumsum(x, axis=1) / np.arange(1, x.shape[1] + 1)[None, :, None]
