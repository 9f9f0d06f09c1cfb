"""Look-back windows over time-first arrays (features ``(T, N, F)``, prices ``(T, N)`` ...).

The window ending at bar ``t`` holds bars ``t - window + 1 .. t`` (that is ``(t - window, t]``),
oldest first, so its last row is the newest bar, as in :class:`envs.observation.BlockSpec`
names (``t-0`` is the last row). Windows are read-only so no consumer can corrupt the shared
feature array through them.

Padding, when ``t < window - 1`` and the window would start before bar 0:

- ``"edge"`` (default): repeat bar 0, as if the series had been flat before it began.
- ``"zeros"``: fill the missing rows with 0, the neutral value of every feature in
  :mod:`envs.features.pipeline` (it matches their warm-up fill).
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from envs.errors import ConfigError, DataError

Pad = Literal["edge", "zeros"]
_PADS = ("edge", "zeros")


def _check_window(window: int, pad: str | None = None) -> None:
    if isinstance(window, bool) or not isinstance(window, int | np.integer) or window < 1:
        raise ConfigError(f"window must be an integer >= 1, got {window!r}")
    if pad is not None and pad not in _PADS:
        raise ConfigError(f"pad must be one of {_PADS}, got {pad!r}")


def _check_values(values: np.ndarray, where: str) -> np.ndarray:
    arr = np.asarray(values)
    if arr.ndim < 1 or arr.shape[0] == 0:
        raise DataError(f"{where}: values must have a non-empty time axis first, got {arr.shape}")
    return arr


def sliding_windows(values: np.ndarray, window: int) -> np.ndarray:
    """Every complete window as a read-only view (no copy).

    Args:
        values: ``(T, ...)`` array, time first.
        window: window length, ``1 <= window <= T``.

    Returns:
        ``(T - window + 1, window, ...)`` view; row ``i`` is the window ending at bar
        ``i + window - 1``.

    Raises:
        ConfigError: ``window`` is not a positive integer.
        DataError: ``values`` has fewer than ``window`` bars.
    """
    _check_window(window)
    arr = _check_values(values, "sliding_windows")
    if arr.shape[0] < window:
        raise DataError(f"sliding_windows: {arr.shape[0]} bars is fewer than window={window}")
    view = sliding_window_view(arr, window, axis=0)  # (T - w + 1, ..., w), read-only
    return np.moveaxis(view, -1, 1)


def window_at(values: np.ndarray, t: int, window: int, pad: Pad = "edge") -> np.ndarray:
    """The window of ``window`` bars ending at bar ``t`` (inclusive).

    Args:
        values: ``(T, ...)`` array, time first.
        t: index of the newest bar, ``0 <= t < T``.
        window: window length ``>= 1``.
        pad: how to fill rows before bar 0 (see the module docstring).

    Returns:
        ``(window, ...)`` read-only array: a view of ``values`` when ``t >= window - 1``,
        a new padded array otherwise.

    Raises:
        ConfigError: bad ``window`` or ``pad``.
        DataError: ``t`` outside ``[0, T)``.
    """
    _check_window(window, pad)
    arr = _check_values(values, "window_at")
    n_bars = arr.shape[0]
    if isinstance(t, bool) or not isinstance(t, int | np.integer) or not 0 <= t < n_bars:
        raise DataError(f"window_at: t={t!r} outside the {n_bars} bars [0, {n_bars})")
    t = int(t)
    start = t - window + 1
    if start >= 0:
        out = arr[start : t + 1].view()
    else:
        out = np.empty((window, *arr.shape[1:]), dtype=arr.dtype)
        out[-start:] = arr[: t + 1]
        out[:-start] = arr[0] if pad == "edge" else 0
    out.flags.writeable = False
    return out


def windows_at(values: np.ndarray, ts: np.ndarray, window: int, pad: Pad = "edge") -> np.ndarray:
    """A batch of windows ending at bars ``ts`` (for vectorised envs), padded like ``window_at``.

    Args:
        values: ``(T, ...)`` array, time first.
        ts: ``(B,)`` integer bar indices in ``[0, T)``.
        window: window length ``>= 1``.
        pad: how to fill rows before bar 0.

    Returns:
        A new ``(B, window, ...)`` array; ``out[i]`` equals ``window_at(values, ts[i], ...)``.
    """
    _check_window(window, pad)
    arr = _check_values(values, "windows_at")
    idx = np.asarray(ts)
    if idx.ndim != 1 or not np.issubdtype(idx.dtype, np.integer):
        raise DataError(f"windows_at: ts must be a 1-D integer array, got {idx.dtype} {idx.shape}")
    if idx.size and (idx.min() < 0 or idx.max() >= arr.shape[0]):
        raise DataError(
            f"windows_at: ts must lie in [0, {arr.shape[0]}), got {idx.min()}..{idx.max()}"
        )
    rows = idx[:, None] + np.arange(1 - window, 1)[None, :]  # (B, window)
    # Edge padding is exactly index clipping at 0; zero padding masks those rows afterwards.
    out = arr[np.maximum(rows, 0)]
    if pad == "zeros":
        out[rows < 0] = 0
    return out
