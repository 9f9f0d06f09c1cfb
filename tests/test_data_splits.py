"""Chronological splits and walk-forward folds never overlap and respect the embargo."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from envs.data import (
    chronological_split,
    gbm,
    split_indices,
    walk_forward_datasets,
    walk_forward_folds,
)
from envs.errors import ConfigError, DataError


def _idx(sl: slice) -> set[int]:
    return set(range(sl.start, sl.stop))


def test_split_sizes_order_and_gap() -> None:
    tr, va, te = split_indices(1000, train=0.7, val=0.15, gap=10)
    assert (tr.start, tr.stop) == (0, 686)  # 980 usable bars: 686 / 147 / 147
    assert (va.start, va.stop) == (696, 843)
    assert (te.start, te.stop) == (853, 1000)


@given(
    n=st.integers(10, 5000),
    train=st.floats(0.05, 0.9),
    val=st.floats(0.05, 0.5),
    gap=st.integers(0, 50),
)
def test_split_parts_are_disjoint_ordered_and_embargoed(
    n: int, train: float, val: float, gap: int
) -> None:
    if train + val >= 1:
        with pytest.raises(ConfigError):
            split_indices(n, train, val, gap)
        return
    try:
        tr, va, te = split_indices(n, train, val, gap)
    except DataError:
        return  # too few bars for three non-empty parts: refused, never silently empty
    assert 0 == tr.start < tr.stop <= va.start < va.stop <= te.start < te.stop == n
    assert va.start - tr.stop == gap and te.start - va.stop == gap
    assert not (_idx(tr) & _idx(va)) and not (_idx(va) & _idx(te))


def test_chronological_split_datasets() -> None:
    ds = gbm(1000, seed=0)
    train, val, test = chronological_split(ds, 0.6, 0.2, gap=5)
    assert len(train) + len(val) + len(test) == 990
    assert train.timestamps[-1] < val.timestamps[0] and val.timestamps[-1] < test.timestamps[0]
    assert not np.intersect1d(train.timestamps, test.timestamps).size
    np.testing.assert_array_equal(test.ohlcv, ds.ohlcv[-len(test) :])


def test_split_errors() -> None:
    with pytest.raises(ConfigError, match=r"train=0\.9, val=0\.2"):
        split_indices(100, 0.9, 0.2)
    with pytest.raises(ConfigError, match="gap=-1"):
        split_indices(100, gap=-1)
    with pytest.raises(DataError, match="expected each >= 1"):
        split_indices(5, 0.7, 0.15)
    with pytest.raises(DataError, match=r"gbm\(n_bars=10.*parts of"):
        chronological_split(gbm(10, seed=0), gap=4)


def test_walk_forward_rolling_folds() -> None:
    folds = list(walk_forward_folds(100, train_size=40, test_size=20, gap=5))
    assert [(f[0].start, f[0].stop, f[1].start, f[1].stop) for f in folds] == [
        (0, 40, 45, 65),
        (20, 60, 65, 85),
    ]


@given(
    n=st.integers(2, 600),
    train=st.integers(1, 200),
    test=st.integers(1, 100),
    step=st.integers(1, 100),
    gap=st.integers(0, 20),
    expanding=st.booleans(),
)
def test_walk_forward_never_leaks(
    n: int, train: int, test: int, step: int, gap: int, expanding: bool
) -> None:
    if train + gap + test > n:
        with pytest.raises(DataError, match=f"only {n} available"):
            walk_forward_folds(n, train, test, step, gap, expanding)
        return
    folds = list(walk_forward_folds(n, train, test, step, gap, expanding))
    assert folds, "at least one fold fits"
    for k, (tr, te) in enumerate(folds):
        assert tr.stop + gap == te.start and te.stop <= n  # train strictly before test
        assert te.stop - te.start == test
        assert tr.stop - tr.start == (k * step + train if expanding else train)
        assert not (_idx(tr) & _idx(te))
    # No further fold would have fitted.
    last_start = (len(folds)) * step
    assert last_start + train + gap + test > n


def test_walk_forward_default_step_tiles_test_windows() -> None:
    folds = list(walk_forward_folds(1000, 300, 100))
    tests = [_idx(te) for _, te in folds]
    assert len(folds) == 7
    assert all(not (a & b) for i, a in enumerate(tests) for b in tests[i + 1 :])


def test_walk_forward_datasets_and_errors() -> None:
    ds = gbm(200, seed=1)
    pairs = list(walk_forward_datasets(ds, 100, 50, gap=2))
    assert len(pairs) == 1
    train, test = pairs[0]
    assert train.timestamps[-1] < test.timestamps[0] and len(test) == 50
    with pytest.raises(ConfigError, match="step=0"):
        walk_forward_folds(100, 10, 10, step=0)
    with pytest.raises(DataError, match=r"gbm\(n_bars=200.*only 200 available"):
        walk_forward_datasets(ds, 150, 60)
