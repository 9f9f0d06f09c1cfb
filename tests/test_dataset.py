"""MarketDataset shape checks, views and slicing."""

import numpy as np
import pytest

from envs.data.dataset import MarketDataset
from envs.errors import DataError


def _ds(n: int = 10) -> MarketDataset:
    ts = np.arange(n, dtype=np.int64) * 3_600 * 10**9
    ohlcv = np.ones((n, 2, 5)) * np.arange(1, 6)
    return MarketDataset(ts, ("A", "B"), ohlcv, np.zeros((n, 2, 1)), ("funding",))


def test_views_and_frequency() -> None:
    ds = _ds()
    assert ds.close.shape == (10, 2) and np.all(ds.close == 4.0)
    assert np.shares_memory(ds.close, ds.ohlcv)
    assert ds.bar_seconds == 3600.0
    assert np.isclose(ds.bars_per_year, 8766.0)
    assert ds.column("funding").shape == (10, 2)


def test_slice_and_select() -> None:
    ds = _ds()
    part = ds.slice(2, 5)
    assert len(part) == 3 and part.timestamps[0] == ds.timestamps[2]
    assert ds.select(["B"]).symbols == ("B",)
    with pytest.raises(DataError, match="unknown symbols"):
        ds.select(["C"])


def test_bad_shapes_and_order_are_named() -> None:
    with pytest.raises(DataError, match="timestamps not strictly increasing at row 2"):
        MarketDataset(np.array([0, 2, 1]), ("A",), np.ones((3, 5)))
    with pytest.raises(DataError, match="symbols"):
        MarketDataset(np.arange(3), ("A", "B"), np.ones((3, 5)))
