"""Alignment of supervised samples: windows of past bars and targets ``h`` bars ahead (NumPy).

The one rule every predictor follows: the sample built at bar ``t`` uses input rows
``(t - W, t]`` (the ``W`` bars ending at ``t``, inclusive) and its target is ``y[t + h]`` for each
horizon ``h``. With several horizons the whole target vector is known at ``t + max(h)``, so an
online learner may use sample ``t`` from bar ``t + max(h)`` on, never earlier.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from envs.errors import DataError


def as_matrix(x: np.ndarray, what: str) -> np.ndarray:
    """Return ``x`` as a float64 ``(T, C)`` matrix (a ``(T,)`` vector becomes one column)."""
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim == 1:
        arr = arr[:, None]
    if arr.ndim != 2:
        raise DataError(f"{what}: expected a (T,) or (T, C) array, got shape {arr.shape}")
    return arr


def check_finite(x: np.ndarray, what: str, names: Sequence[str] | None = None) -> None:
    """Raise a DataError naming the first row and column holding NaN or inf."""
    bad = ~np.isfinite(x)
    if bad.any():
        row, col = (int(v) for v in np.argwhere(bad)[0])
        col_name = names[col] if names is not None and col < len(names) else str(col)
        raise DataError(f"{what}: non-finite value {x[row, col]} at row {row}, column {col_name!r}")


def window_view(features: np.ndarray, window: int) -> np.ndarray:
    """Read-only ``(T - W + 1, W, F)`` view; entry ``i`` is the window ending at bar ``i+W-1``."""
    if features.shape[0] < window:
        raise DataError(f"features: {features.shape[0]} bars, fewer than the window of {window}")
    view = np.lib.stride_tricks.sliding_window_view(features, window, axis=0)
    # sliding_window_view puts the window axis last: (T-W+1, F, W) -> (T-W+1, W, F).
    return view.transpose(0, 2, 1)


def sample_rows(
    n_bars: int, window: int, target_delay: int, start: int = 0, stop: int | None = None
) -> np.ndarray:
    """Bars ``t`` in ``[start, stop)`` with a full window and a target known by ``stop - 1``.

    Args:
        n_bars: number of bars in the series.
        window: input window ``W``; ``t >= W - 1``.
        target_delay: bars until the sample's targets are all known (``max(horizons)``).
        start: first bar allowed.
        stop: bars from ``stop`` on are not used, neither as inputs nor as targets.

    Returns:
        int64 array of sample bars ``t``.
    """
    stop = n_bars if stop is None else min(stop, n_bars)
    first = max(start, window - 1)
    last = stop - 1 - target_delay  # inclusive
    if last < first:
        return np.zeros(0, dtype=np.int64)
    return np.arange(first, last + 1, dtype=np.int64)


def horizon_targets(targets: np.ndarray, rows: np.ndarray, horizons: Sequence[int]) -> np.ndarray:
    """Targets of samples ``rows``: ``[y[t + h, k] for h in horizons for k in columns]``.

    Returns:
        ``(len(rows), len(horizons) * K)`` float64, horizon-major (all columns of ``h_1`` first).
    """
    return np.concatenate([targets[rows + h] for h in horizons], axis=1)


def output_names(target_names: Sequence[str], horizons: Sequence[int]) -> list[str]:
    """Names of the outputs in ``horizon_targets`` order: ``{target}_h{h}``."""
    return [f"{name}_h{h}" for h in horizons for name in target_names]
