"""Chronological train/validation/test splits and walk-forward folds, with an optional embargo.

Market data is a time series: shuffled splits leak the future into training. Every split here is
contiguous and ordered (train before validation before test), and an optional ``gap`` of bars
between parts is dropped so that features with a look-back window or labels with a horizon cannot
straddle the boundary (the "embargo" of López de Prado, *Advances in Financial Machine Learning*,
2018, ch. 7).
"""

from __future__ import annotations

from collections.abc import Iterator

from envs.data.dataset import MarketDataset
from envs.errors import ConfigError, DataError


def split_indices(
    n: int, train: float = 0.7, val: float = 0.15, gap: int = 0, min_bars: int = 1
) -> tuple[slice, slice, slice]:
    """Index ranges of a chronological train/validation/test split of ``n`` bars.

    The ``n - 2 * gap`` usable bars are apportioned: ``floor(usable * train)`` to training,
    ``floor(usable * val)`` to validation, the rest (fraction ``1 - train - val``) to test;
    ``gap`` bars are dropped between train and validation and between validation and test.

    Args:
        n: number of bars.
        train: fraction for training, in (0, 1).
        val: fraction for validation, in (0, 1); ``train + val < 1`` so test is not empty.
        gap: embargo in bars between consecutive parts (>= 0).
        min_bars: smallest allowed size of each part.

    Returns:
        ``(train, val, test)`` slices with ``train.stop + gap == val.start`` and
        ``val.stop + gap == test.start == test.stop - n_test``; ``test.stop == n``.

    Raises:
        ConfigError: fractions or gap out of range.
        DataError: ``n`` too small for the parts and gaps.
    """
    if not (0 < train < 1 and 0 < val < 1 and train + val < 1):
        raise ConfigError(
            f"split fractions train={train}, val={val}; expected each in (0, 1) with "
            "train + val < 1 (test gets the rest)"
        )
    if gap < 0 or int(gap) != gap:
        raise ConfigError(f"gap={gap}; expected a non-negative integer number of bars")
    gap = int(gap)
    usable = n - 2 * gap
    n_train = int(usable * train)
    n_val = int(usable * val)
    n_test = usable - n_train - n_val
    if min(n_train, n_val, n_test) < max(1, min_bars):
        raise DataError(
            f"split of {n} bars with train={train}, val={val}, gap={gap}: parts of "
            f"{n_train}/{n_val}/{n_test} bars; expected each >= {max(1, min_bars)}"
        )
    train_sl = slice(0, n_train)
    val_sl = slice(n_train + gap, n_train + gap + n_val)
    test_sl = slice(val_sl.stop + gap, n)
    return train_sl, val_sl, test_sl


def chronological_split(
    ds: MarketDataset, train: float = 0.7, val: float = 0.15, gap: int = 0, min_bars: int = 1
) -> tuple[MarketDataset, MarketDataset, MarketDataset]:
    """Split a dataset into consecutive train, validation and test datasets.

    Args:
        ds: the dataset.
        train: fraction for training.
        val: fraction for validation (test gets ``1 - train - val``).
        gap: embargo in bars dropped between consecutive parts.
        min_bars: smallest allowed size of each part.

    Returns:
        ``(train, val, test)`` datasets; no bar appears in two of them.

    Raises:
        ConfigError: fractions or gap out of range.
        DataError: the dataset is too short (message names ``ds.source``).
    """
    try:
        parts = split_indices(len(ds), train, val, gap, min_bars)
    except DataError as exc:
        raise DataError(f"{ds.source}: {exc}") from None
    return tuple(ds.slice(p.start, p.stop) for p in parts)  # type: ignore[return-value]


def walk_forward_folds(
    n_bars: int,
    train_size: int,
    test_size: int,
    step: int | None = None,
    gap: int = 0,
    expanding: bool = False,
) -> Iterator[tuple[slice, slice]]:
    """Walk-forward (rolling or expanding window) folds over ``n_bars`` bars.

    Fold ``k`` tests on ``[s + train_size + gap, s + train_size + gap + test_size)`` with
    ``s = k * step`` and trains on ``[s, s + train_size)`` (rolling) or ``[0, s + train_size)``
    (expanding). Training always ends ``gap`` bars before its test window starts, so no fold
    trains on bars at or after the ones it tests. Folds stop when the next test window would pass
    ``n_bars``. Sizes are checked eagerly (before the first fold is taken).

    Args:
        n_bars: number of bars.
        train_size: bars in each (rolling) training window.
        test_size: bars in each test window.
        step: bars between fold starts; default ``test_size`` (test windows tile without overlap).
        gap: embargo bars between training and test.
        expanding: grow the training window from bar 0 instead of rolling it.

    Returns:
        An iterator of ``(train_slice, test_slice)``.

    Raises:
        ConfigError: a size that is not a positive integer (``gap`` may be 0).
        DataError: ``train_size + gap + test_size > n_bars`` (not even one fold fits).
    """
    step = test_size if step is None else step
    for name, value, low in (
        ("train_size", train_size, 1),
        ("test_size", test_size, 1),
        ("step", step, 1),
        ("gap", gap, 0),
    ):
        if int(value) != value or value < low:
            raise ConfigError(f"walk_forward_folds: {name}={value}; expected an integer >= {low}")
    need = train_size + gap + test_size
    if need > n_bars:
        raise DataError(
            f"walk_forward_folds: train_size={train_size} + gap={gap} + test_size={test_size} "
            f"= {need} bars; only {n_bars} available"
        )
    return _folds(int(n_bars), int(train_size), int(test_size), int(step), int(gap), expanding)


def _folds(
    n_bars: int, train_size: int, test_size: int, step: int, gap: int, expanding: bool
) -> Iterator[tuple[slice, slice]]:
    start = 0
    while start + train_size + gap + test_size <= n_bars:
        train_stop = start + train_size
        test_start = train_stop + gap
        train_start = 0 if expanding else start
        yield slice(train_start, train_stop), slice(test_start, test_start + test_size)
        start += step


def walk_forward_datasets(
    ds: MarketDataset,
    train_size: int,
    test_size: int,
    step: int | None = None,
    gap: int = 0,
    expanding: bool = False,
) -> Iterator[tuple[MarketDataset, MarketDataset]]:
    """:func:`walk_forward_folds` applied to a dataset: ``(train, test)`` dataset pairs."""
    try:
        folds = walk_forward_folds(len(ds), train_size, test_size, step, gap, expanding)
    except DataError as exc:
        raise DataError(f"{ds.source}: {exc}") from None
    return ((ds.slice(tr.start, tr.stop), ds.slice(te.start, te.stop)) for tr, te in folds)
