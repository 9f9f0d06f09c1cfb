"""Causal rolling statistics (value at bar t uses bars <= t; expanding over the first bars)."""

from __future__ import annotations

import numpy as np


def rolling_mean(x: np.ndarray, window: int) -> np.ndarray:
    """Mean of the last ``window`` values (fewer at the start) along axis 0."""
    x = np.asarray(x, dtype=np.float64)
    csum = np.cumsum(x, axis=0)
    out = np.empty_like(csum)
    n = min(window, len(x))
    counts = np.arange(1, n + 1, dtype=np.float64).reshape((-1,) + (1,) * (x.ndim - 1))
    out[:n] = csum[:n] / counts
    out[n:] = (csum[n:] - csum[:-n]) / window if len(x) > n else out[n:]
    return out


def rolling_std(x: np.ndarray, window: int) -> np.ndarray:
    """Population standard deviation of the last ``window`` values (fewer at the start)."""
    mean = rolling_mean(x, window)
    mean_sq = rolling_mean(np.asarray(x, dtype=np.float64) ** 2, window)
    return np.sqrt(np.maximum(mean_sq - mean**2, 0.0))


def log_diff(x: np.ndarray) -> np.ndarray:
    """``log x_t - log x_{t-1}`` with 0 at the first bar."""
    lx = np.log(x)
    out = np.zeros_like(lx)
    out[1:] = lx[1:] - lx[:-1]
    return out
