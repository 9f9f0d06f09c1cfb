"""Checks that turn bad market data into one clear :class:`~envs.errors.DataError`.

Every message names the source (file path), the column and the row, and says what was expected.

Row convention: ``row R`` is the **1-based data row in the user's file**, counting only data rows
(the header and any banner/comment lines before it are not counted), in the file's own order (a
newest-first file's first data row is row 1 even though it ends up last after sorting). When the
line offset is known, messages add ``(line L)``, the 1-based physical line number an editor shows.
For arrays that did not come from a file, rows are 1-based positions in the arrays.

The checks, in the order they run (the first failure raises):

1. required columns present (:func:`require_columns`);
2. values numeric (done by the loaders while parsing, reported through :class:`RowLocator`);
3. no NaN or infinity in any column;
4. prices (open, high, low, close) strictly positive, volume non-negative;
5. ``high >= low`` and open/close inside ``[low, high]``;
6. timestamps strictly increasing: equal neighbours are duplicates (both rows named);
7. gaps: with ``max_gap`` set, a step longer than ``max_gap`` median bar spacings raises (or warns,
   with ``on_gap="warn"``). The default (``max_gap=None``) allows gaps: real exchange data has
   outages, and whether they matter is the user's call.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from envs.data.dataset import OHLCV, MarketDataset
from envs.errors import DataError

PRICE_COLUMNS = ("open", "high", "low", "close")
GAP_POLICIES = ("error", "warn")


@dataclass(frozen=True)
class RowLocator:
    """Maps an array position to the row (and line) of the user's file, for messages.

    Attributes:
        source: file path or description, first word of every message.
        rows: ``(T,)`` 1-based data-row numbers in the file, per array position (after any sort),
            or ``None`` when positions are the rows (1-based position).
        line_offset: physical lines before the first data row (banner + header); ``None`` when
            unknown, then messages give only the row.
    """

    source: str = "<memory>"
    rows: np.ndarray | None = None
    line_offset: int | None = None

    def row(self, position: int) -> int:
        """1-based data row of the array ``position``."""
        if self.rows is None:
            return int(position) + 1
        return int(self.rows[position])

    def where(self, position: int) -> str:
        """Human-readable location such as ``"row 12 (line 14)"``."""
        row = self.row(position)
        if self.line_offset is None:
            return f"row {row}"
        return f"row {row} (line {row + self.line_offset})"

    def take(self, index: np.ndarray | slice) -> RowLocator:
        """Locator for a reordered/filtered view of the arrays."""
        base = self.rows
        if base is None:
            return RowLocator(self.source, None, self.line_offset)
        return RowLocator(self.source, base[index], self.line_offset)


def require_columns(
    available: Sequence[str], required: Sequence[str], source: str, hint: str = ""
) -> None:
    """Raise if any ``required`` column is missing from ``available``.

    Args:
        available: column names found (after normalisation).
        required: column names needed.
        source: file path or description for the message.
        hint: optional extra advice appended to the message.

    Raises:
        DataError: naming the missing columns and the columns that were found.
    """
    missing = [c for c in required if c not in available]
    if missing:
        msg = (
            f"{source}: missing required column(s) {missing}; found columns {list(available)}; "
            f"expected {list(required)}"
        )
        raise DataError(msg + (f". {hint}" if hint else ""))


def check_finite(
    values: np.ndarray, names: Sequence[str], loc: RowLocator, symbol: str | None = None
) -> None:
    """Raise on the first NaN or infinite value of a ``(T, C)`` array, naming column and row."""
    bad = ~np.isfinite(values)
    if bad.any():
        pos, col = _first_true(bad)
        raise DataError(
            f"{loc.source}: {_sym(symbol)}column {names[col]!r} {loc.where(pos)}: value "
            f"{float(values[pos, col])!r} is not a finite number; expected a finite float "
            "(fill or drop missing bars before loading)"
        )


def check_ohlcv_values(ohlcv: np.ndarray, loc: RowLocator, symbol: str | None = None) -> None:
    """Check a single asset's ``(T, 5)`` OHLCV block: finite, positive prices, consistent range.

    Raises:
        DataError: the first violation, naming column, row and the expected relation.
    """
    check_finite(ohlcv, OHLCV, loc, symbol)
    o, h, lo, c, v = (ohlcv[:, i] for i in range(5))
    for j, name in enumerate(PRICE_COLUMNS):
        bad = ohlcv[:, j] <= 0
        if bad.any():
            pos = int(np.argmax(bad))
            raise DataError(
                f"{loc.source}: {_sym(symbol)}column {name!r} {loc.where(pos)}: price "
                f"{float(ohlcv[pos, j])!r} is not positive; expected > 0"
            )
    bad = v < 0
    if bad.any():
        pos = int(np.argmax(bad))
        raise DataError(
            f"{loc.source}: {_sym(symbol)}column 'volume' {loc.where(pos)}: volume "
            f"{float(v[pos])!r} is negative; expected >= 0"
        )
    bad = h < lo
    if bad.any():
        pos = int(np.argmax(bad))
        raise DataError(
            f"{loc.source}: {_sym(symbol)}columns 'high'/'low' {loc.where(pos)}: high "
            f"{float(h[pos])!r} < low {float(lo[pos])!r}; expected high >= low"
        )
    for name, col in (("open", o), ("close", c)):
        bad = (col < lo) | (col > h)
        if bad.any():
            pos = int(np.argmax(bad))
            raise DataError(
                f"{loc.source}: {_sym(symbol)}column {name!r} {loc.where(pos)}: {name} "
                f"{float(col[pos])!r} outside [low, high] = "
                f"[{float(lo[pos])!r}, {float(h[pos])!r}]; expected low <= open, close <= high"
            )


def check_timestamps(
    timestamps: np.ndarray,
    loc: RowLocator,
    *,
    column: str = "timestamp",
    max_gap: float | None = None,
    on_gap: str = "error",
) -> None:
    """Check int64-ns timestamps are strictly increasing and, optionally, gap-free.

    Args:
        timestamps: ``(T,)`` int64 nanoseconds, already in the intended (ascending) order.
        loc: where the rows came from, for messages.
        column: the timestamp column's name in the user's file.
        max_gap: largest allowed step, in multiples of the median bar spacing; ``None`` allows
            any gap.
        on_gap: ``"error"`` raises on a longer gap, ``"warn"`` emits a ``UserWarning``.

    Raises:
        DataError: duplicate timestamps (both rows named), a step backwards, or a gap too long.
    """
    ts = np.asarray(timestamps, dtype=np.int64)
    if ts.shape[0] < 2:
        return
    step = np.diff(ts)
    dup = step == 0
    if dup.any():
        pos = int(np.argmax(dup))
        raise DataError(
            f"{loc.source}: column {column!r} {loc.where(pos + 1)}: duplicate timestamp "
            f"{_fmt_ts(ts[pos])} (same as {loc.where(pos)}); expected one bar per timestamp"
        )
    back = step < 0
    if back.any():
        pos = int(np.argmax(back))
        raise DataError(
            f"{loc.source}: column {column!r} {loc.where(pos + 1)}: timestamp "
            f"{_fmt_ts(ts[pos + 1])} is earlier than {_fmt_ts(ts[pos])} at {loc.where(pos)}; "
            "expected timestamps in one order (ascending or newest-first), or pass sort=True"
        )
    if max_gap is None:
        return
    if on_gap not in GAP_POLICIES:
        raise DataError(f"{loc.source}: on_gap={on_gap!r}; expected one of {list(GAP_POLICIES)}")
    if not max_gap >= 1:
        raise DataError(f"{loc.source}: max_gap={max_gap!r} bars; expected a number >= 1")
    median = float(np.median(step))
    bars = step / median
    too_long = bars > max_gap
    if too_long.any():
        pos = int(np.argmax(too_long))
        msg = (
            f"{loc.source}: column {column!r} {loc.where(pos + 1)}: gap of {bars[pos]:.1f} bars "
            f"after {_fmt_ts(ts[pos])} (bar spacing {median / 1e9:g} s); expected at most "
            f"max_gap={max_gap:g} bars ({int(too_long.sum())} such gap(s) in total)"
        )
        if on_gap == "error":
            raise DataError(msg)
        warnings.warn(msg, UserWarning, stacklevel=2)


def validate_dataset(
    ds: MarketDataset, *, max_gap: float | None = None, on_gap: str = "error"
) -> MarketDataset:
    """Run every value and time check on an in-memory dataset (rows = 1-based positions).

    Args:
        ds: the dataset to check.
        max_gap: see :func:`check_timestamps`.
        on_gap: see :func:`check_timestamps`.

    Returns:
        ``ds`` unchanged, so the call can be chained.

    Raises:
        DataError: the first violation found.
    """
    loc = RowLocator(ds.source)
    check_timestamps(ds.timestamps, loc, max_gap=max_gap, on_gap=on_gap)
    for i, sym in enumerate(ds.symbols):
        check_ohlcv_values(ds.ohlcv[:, i, :], loc, sym)
        if ds.extra_names:
            check_finite(ds.extra[:, i, :], ds.extra_names, loc, sym)
    return ds


def _first_true(mask: np.ndarray) -> tuple[int, int]:
    flat = int(np.argmax(mask))
    pos, col = np.unravel_index(flat, mask.shape)
    return int(pos), int(col)


def _sym(symbol: str | None) -> str:
    return f"symbol {symbol!r} " if symbol else ""


def _fmt_ts(ns: int | np.integer) -> str:
    return str(np.datetime64(int(ns), "ns").astype("datetime64[s]")) + "Z"
