"""Windows: zero-copy read-only views with the right rows, documented left padding."""

from __future__ import annotations

import numpy as np
import pytest

from envs.errors import ConfigError, DataError
from envs.features import sliding_windows, window_at, windows_at


@pytest.fixture()
def values() -> np.ndarray:
    return np.arange(10 * 2 * 3, dtype=np.float32).reshape(10, 2, 3) + 1.0


def test_sliding_windows_are_read_only_views(values: np.ndarray) -> None:
    w = sliding_windows(values, 4)
    assert w.shape == (7, 4, 2, 3)
    assert np.shares_memory(w, values)
    assert not w.flags.writeable
    for i in range(7):
        np.testing.assert_array_equal(w[i], values[i : i + 4])
    with pytest.raises(ValueError, match="read-only"):
        w[0, 0, 0, 0] = 0.0
    full = sliding_windows(values, 10)
    assert full.shape == (1, 10, 2, 3)
    np.testing.assert_array_equal(sliding_windows(values[:, 0, 0], 1)[:, 0], values[:, 0, 0])


def test_window_at_inside_is_a_view(values: np.ndarray) -> None:
    w = window_at(values, 5, 3)
    np.testing.assert_array_equal(w, values[3:6])  # bars (t - window, t]
    assert np.shares_memory(w, values)
    assert not w.flags.writeable
    assert values.flags.writeable  # the source array stays writable
    np.testing.assert_array_equal(window_at(values, 2, 3), values[0:3])


def test_window_at_pads_left(values: np.ndarray) -> None:
    edge = window_at(values, 1, 4)
    np.testing.assert_array_equal(edge, values[[0, 0, 0, 1]])
    assert not np.shares_memory(edge, values)
    zeros = window_at(values, 1, 4, pad="zeros")
    np.testing.assert_array_equal(zeros[:2], 0.0)
    np.testing.assert_array_equal(zeros[2:], values[:2])
    assert zeros.dtype == values.dtype


def test_windows_at_batch_matches_window_at(values: np.ndarray) -> None:
    ts = np.array([0, 1, 4, 9, 3])
    for pad in ("edge", "zeros"):
        batch = windows_at(values, ts, 4, pad=pad)
        assert batch.shape == (5, 4, 2, 3)
        for i, t in enumerate(ts):
            np.testing.assert_array_equal(batch[i], window_at(values, int(t), 4, pad=pad))


def test_window_errors(values: np.ndarray) -> None:
    with pytest.raises(ConfigError, match="window"):
        sliding_windows(values, 0)
    with pytest.raises(DataError, match="fewer than window=11"):
        sliding_windows(values, 11)
    with pytest.raises(DataError, match="t=10 outside"):
        window_at(values, 10, 3)
    with pytest.raises(DataError, match="t=-1 outside"):
        window_at(values, -1, 3)
    with pytest.raises(ConfigError, match="pad"):
        window_at(values, 3, 3, pad="mirror")
    with pytest.raises(DataError, match=r"ts must lie in \[0, 10\)"):
        windows_at(values, np.array([2, 10]), 3)
    with pytest.raises(DataError, match="1-D integer"):
        windows_at(values, np.array([1.5]), 3)
