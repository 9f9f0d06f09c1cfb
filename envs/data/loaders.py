"""Read OHLCV files (CSV, Parquet) in the layouts users actually have, into a MarketDataset.

pandas is used only here, at the edge: files are parsed into a DataFrame, columns are recognised,
converted and checked, and the result is contiguous float64/int64 NumPy arrays.

Layouts recognised without options:

- **ccxt** ``fetch_ohlcv`` dumps: ``timestamp(ms), open, high, low, close, volume``, with or without
  a header (a first line whose fields are all numbers is data; six unnamed columns are read as
  timestamp + OHLCV, further unnamed columns become extras ``col7``, ``col8``, ...);
- exchange exports with unix seconds/ms or ISO-8601 dates in a column named ``timestamp``, ``unix``,
  ``time``, ``open_time``, ``datetime``, ``date``, ``ts`` (numeric columns win over text ones, so a
  CryptoDataDownload file with ``unix`` and ``date`` uses ``unix``);
- **newest-first** files (timestamps descending from top to bottom): reversed to ascending;
- **yfinance** CSVs: capitalised ``Date, Open, High, Low, Close, Adj Close, Volume`` (``Adj Close``
  is kept as the extra ``adj_close``), including the three-line header written by yfinance >= 0.2.51
  (``Price,...`` / ``Ticker,AAPL,...`` / ``Date,,,``), whose ticker becomes the symbol;
- **CryptoDataDownload**: a banner first line (a URL or ``#`` comment) before the header; a
  ``Volume <BASE>`` / ``Volume <QUOTE>`` pair where there is no plain ``volume`` column (the base
  one is used, the other is kept as an extra).

Column names are normalised (lower case, runs of non-alphanumerics become ``_``: ``Adj Close`` ->
``adj_close``). Extra numeric columns are kept as named ``extra`` features; text columns are
dropped, except a ``symbol``/``ticker`` column, which names the asset (several symbols in one file
are split and aligned with :func:`align_datasets`).

Integer timestamp units are inferred from the magnitude of the median absolute value ``m``
(override with ``time_unit=``): ``m < 1e11`` seconds, ``m < 1e14`` milliseconds, ``m < 1e17``
microseconds, otherwise nanoseconds. Each unit then covers dates from 1973-03 to the year 5138, so
the rule is unambiguous for market data; it misreads only millisecond data from before March 1973.
Text dates without a zone are taken as UTC; dates with an offset are converted to UTC.
"""

from __future__ import annotations

import gzip
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from envs.data.dataset import OHLCV, MarketDataset
from envs.data.validation import (
    RowLocator,
    check_finite,
    check_ohlcv_values,
    check_timestamps,
    require_columns,
)
from envs.errors import DataError

PathLike = str | Path

# Timestamp column names in priority order (a numeric candidate beats a text one).
TIME_COLUMNS = ("unix", "timestamp", "open_time", "ts", "time", "datetime", "date", "date_time")
# Columns that describe time or bookkeeping, never used as features.
NON_FEATURE_COLUMNS = {*TIME_COLUMNS, "close_time", "ignore", "index", "unix_timestamp"}
SYMBOL_COLUMNS = ("symbol", "ticker", "pair", "instrument")
ALIASES: dict[str, tuple[str, ...]] = {
    "open": ("open", "o", "open_price"),
    "high": ("high", "h", "high_price"),
    "low": ("low", "l", "low_price"),
    "close": ("close", "c", "close_price"),
    "volume": ("volume", "vol", "v", "base_volume", "volume_base"),
}
QUOTE_CURRENCIES = {"usd", "usdt", "usdc", "busd", "eur", "gbp", "jpy", "quote", "tusd", "dai"}
CCXT_COLUMNS = ("timestamp", *OHLCV)
TIME_UNITS = {"s": 10**9, "ms": 10**6, "us": 10**3, "ns": 1}
DUPLICATE_POLICIES = ("error", "first", "last")
ALIGN_POLICIES = ("inner", "ffill")


def infer_time_unit(values: np.ndarray) -> str:
    """Infer the unit of integer/float epoch timestamps from their magnitude.

    Rule on the median absolute value ``m``: ``m < 1e11`` -> ``"s"``, ``m < 1e14`` -> ``"ms"``,
    ``m < 1e17`` -> ``"us"``, else ``"ns"``. (1e11 s is the year 5138; 1e11 ms is March 1973.)

    Args:
        values: the numeric timestamps.

    Returns:
        One of ``"s"``, ``"ms"``, ``"us"``, ``"ns"``.
    """
    finite = np.abs(np.asarray(values, dtype=np.float64))
    finite = finite[np.isfinite(finite)]
    m = float(np.median(finite)) if finite.size else 0.0
    if m < 1e11:
        return "s"
    if m < 1e14:
        return "ms"
    if m < 1e17:
        return "us"
    return "ns"


# --------------------------------------------------------------------------------------------
# public loaders
# --------------------------------------------------------------------------------------------
def load_csv(
    path: PathLike,
    symbol: str | None = None,
    *,
    columns: Mapping[str, str] | None = None,
    timestamp_column: str | None = None,
    time_unit: str | None = None,
    extra_columns: Sequence[str] | bool = True,
    sort: bool = False,
    duplicates: str = "error",
    max_gap: float | None = None,
    on_gap: str = "error",
    delimiter: str | None = None,
    align: str = "inner",
) -> MarketDataset:
    """Load an OHLCV CSV file (optionally gzipped) in any layout listed in the module docstring.

    Args:
        path: the file (``.csv``, ``.csv.gz``, ``.txt``).
        symbol: asset name; default: the file's single ``symbol``/``ticker`` value, else the file
            name without extensions.
        columns: explicit mapping ``{"open": "<file column>", ..., "timestamp": ...}`` for names
            the recogniser does not know (file column names as written in the file).
        timestamp_column: the file column holding time, if not one of the recognised names.
        time_unit: ``"s"``, ``"ms"``, ``"us"`` or ``"ns"`` for numeric timestamps; default inferred
            by magnitude (see :func:`infer_time_unit`).
        extra_columns: ``True`` keeps every other numeric column as an extra feature, ``False``
            keeps none, a list keeps those (normalised names, e.g. ``"adj_close"``).
        sort: ``False`` accepts ascending or newest-first files and rejects any other order,
            naming the row; ``True`` sorts by time (stable), after which equal neighbours are
            duplicates.
        duplicates: ``"error"`` (default) rejects repeated timestamps; ``"first"``/``"last"`` keep
            the first/last occurrence in file order.
        max_gap: largest allowed step in median bar spacings; ``None`` (default) allows gaps.
        on_gap: ``"error"`` or ``"warn"`` when ``max_gap`` is exceeded.
        delimiter: field separator; default sniffed from ``,``, ``;``, tab.
        align: how to align a file holding several symbols (``"inner"`` or ``"ffill"``).

    Returns:
        A validated :class:`MarketDataset` with ``source`` set to the path.

    Raises:
        DataError: unreadable file, unrecognised layout, or any validation failure (message names
            file, column and row; rows are 1-based data rows in file order, see
            :mod:`envs.data.validation`).
    """
    path = Path(path)
    source = str(path)
    if not path.is_file():
        raise DataError(f"{source}: file not found")
    frame, line_offset, header_symbol = _read_csv_frame(path, delimiter)
    return _frame_to_dataset(
        frame,
        source=source,
        symbol=symbol or header_symbol,
        default_symbol=_stem(path),
        line_offset=line_offset,
        columns=columns,
        timestamp_column=timestamp_column,
        time_unit=time_unit,
        extra_columns=extra_columns,
        sort=sort,
        duplicates=duplicates,
        max_gap=max_gap,
        on_gap=on_gap,
        align=align,
    )


def load_parquet(
    path: PathLike,
    symbol: str | None = None,
    *,
    columns: Mapping[str, str] | None = None,
    timestamp_column: str | None = None,
    time_unit: str | None = None,
    extra_columns: Sequence[str] | bool = True,
    sort: bool = False,
    duplicates: str = "error",
    max_gap: float | None = None,
    on_gap: str = "error",
    align: str = "inner",
) -> MarketDataset:
    """Load an OHLCV Parquet file; the column conventions and options are those of :func:`load_csv`.

    A ``DatetimeIndex`` (as written by ``DataFrame.to_parquet`` on a time-indexed frame) is used
    as the timestamp column. Rows in messages are 1-based rows of the table.

    Returns:
        A validated :class:`MarketDataset`.

    Raises:
        DataError: unreadable file or any validation failure.
    """
    import pandas as pd

    path = Path(path)
    source = str(path)
    if not path.is_file():
        raise DataError(f"{source}: file not found")
    try:
        frame = pd.read_parquet(path)
    except Exception as exc:  # pyarrow raises many types; the user gets one clear message
        raise DataError(f"{source}: cannot read as Parquet: {type(exc).__name__}: {exc}") from None
    if isinstance(frame.index, pd.DatetimeIndex) or frame.index.name is not None:
        name = frame.index.name or "timestamp"
        frame = frame.reset_index(names=name)
    frame.columns = [str(c) for c in frame.columns]
    return _frame_to_dataset(
        frame,
        source=source,
        symbol=symbol,
        default_symbol=_stem(path),
        line_offset=None,
        columns=columns,
        timestamp_column=timestamp_column,
        time_unit=time_unit,
        extra_columns=extra_columns,
        sort=sort,
        duplicates=duplicates,
        max_gap=max_gap,
        on_gap=on_gap,
        align=align,
    )


def load_file(path: PathLike, symbol: str | None = None, **opts: Any) -> MarketDataset:
    """Load one file, choosing :func:`load_parquet` for ``.parquet``/``.pq`` and CSV otherwise."""
    suffix = Path(path).suffix.lower()
    if suffix in (".parquet", ".pq"):
        opts.pop("delimiter", None)
        return load_parquet(path, symbol, **opts)
    return load_csv(path, symbol, **opts)


def load_dataset(
    path_or_paths: PathLike | Sequence[PathLike] | Mapping[str, PathLike],
    *,
    how: str = "inner",
    max_fill: int | None = 10,
    **opts: Any,
) -> MarketDataset:
    """Load one or several files into one dataset, aligned on one time index.

    Args:
        path_or_paths: a file; a directory (every ``.csv``, ``.csv.gz``, ``.parquet`` in it, in
            name order); a list of files (symbols from each file, see :func:`load_csv`); or a
            dict ``{symbol: path}``.
        how: alignment of several assets, ``"inner"`` or ``"ffill"`` (see :func:`align_datasets`).
        max_fill: longest run of forward-filled bars allowed with ``how="ffill"``.
        **opts: passed to :func:`load_csv` / :func:`load_parquet`.

    Returns:
        A validated single- or multi-asset :class:`MarketDataset`.

    Raises:
        DataError: no files, unreadable files, duplicate symbols or failed alignment.
    """
    if isinstance(path_or_paths, Mapping):
        datasets = [load_file(p, str(sym), **opts) for sym, p in path_or_paths.items()]
    else:
        if isinstance(path_or_paths, (str, Path)):
            root = Path(path_or_paths)
            if root.is_dir():
                files = sorted(
                    p
                    for p in root.iterdir()
                    if p.is_file() and re.search(r"\.(csv|csv\.gz|txt|parquet|pq)$", p.name, re.I)
                )
                if not files:
                    raise DataError(f"{root}: directory holds no .csv/.csv.gz/.parquet files")
            else:
                files = [root]
        else:
            files = [Path(p) for p in path_or_paths]
            if not files:
                raise DataError("load_dataset: empty list of paths")
        datasets = [load_file(p, **opts) for p in files]
    if len(datasets) == 1:
        return datasets[0]
    return align_datasets(datasets, how=how, max_fill=max_fill)


# --------------------------------------------------------------------------------------------
# multi-asset alignment
# --------------------------------------------------------------------------------------------
def align_datasets(
    datasets: Sequence[MarketDataset], how: str = "inner", max_fill: int | None = 10
) -> MarketDataset:
    """Put several datasets on one time index, with an explicit policy for missing bars.

    Policies:

    - ``"inner"``: keep only timestamps present in every dataset (intersection). No value is
      invented; bars one asset lacks are dropped for all.
    - ``"ffill"``: the index is the union of timestamps inside the common span (from the latest
      first bar to the earliest last bar, so every asset starts and ends with a real bar). A bar
      missing for an asset is filled with its previous close as open, high, low and close, and
      zero volume (no trading happened); extra columns carry their last value. A run of more than
      ``max_fill`` consecutive filled bars for one asset raises ``DataError`` (``None``: no limit).

    Extra columns are kept when every dataset has them (common names, in the first dataset's
    order); others are dropped. Regime labels are dropped (they describe one generator's path).

    Args:
        datasets: one or more datasets with distinct symbols.
        how: ``"inner"`` or ``"ffill"``.
        max_fill: longest forward-filled run allowed with ``"ffill"``.

    Returns:
        A multi-asset dataset with symbols in input order.

    Raises:
        DataError: unknown policy, duplicate symbols, empty intersection or a fill run too long.
    """
    if how not in ALIGN_POLICIES:
        raise DataError(f"align_datasets: how={how!r}; expected one of {list(ALIGN_POLICIES)}")
    if not datasets:
        raise DataError("align_datasets: no datasets given")
    if len(datasets) == 1:
        return datasets[0]
    symbols = [s for ds in datasets for s in ds.symbols]
    dupes = sorted({s for s in symbols if symbols.count(s) > 1})
    if dupes:
        raise DataError(
            f"align_datasets: symbol(s) {dupes} appear in more than one dataset "
            f"({[ds.source for ds in datasets]}); pass distinct symbols (e.g. a dict of paths)"
        )
    source = " + ".join(ds.source for ds in datasets)
    extra_names = [n for n in datasets[0].extra_names if all(n in d.extra_names for d in datasets)]

    if how == "inner":
        index = datasets[0].timestamps
        for ds in datasets[1:]:
            index = np.intersect1d(index, ds.timestamps, assume_unique=True)
        if index.size == 0:
            raise DataError(f"{source}: the datasets share no timestamp; try how='ffill'")
    else:
        start = max(int(ds.timestamps[0]) for ds in datasets)
        stop = min(int(ds.timestamps[-1]) for ds in datasets)
        if start > stop:
            raise DataError(f"{source}: the datasets' time spans do not overlap")
        index = np.unique(np.concatenate([ds.timestamps for ds in datasets]))
        index = index[(index >= start) & (index <= stop)]

    ohlcv_parts, extra_parts = [], []
    for ds in datasets:
        extra_idx = [ds.extra_names.index(n) for n in extra_names]
        pos = np.searchsorted(ds.timestamps, index)
        pos_clipped = np.minimum(pos, len(ds) - 1)
        present = ds.timestamps[pos_clipped] == index
        if how == "inner":
            ohlcv_parts.append(ds.ohlcv[pos])
            extra_parts.append(ds.extra[pos][:, :, extra_idx])
            continue
        # Last real bar at or before each index time (index starts at a real bar of every asset).
        last = np.where(present, pos_clipped, pos - 1)
        filled = ~present
        if max_fill is not None and filled.any():
            run = _longest_run(filled)
            if run[0] > max_fill:
                raise DataError(
                    f"{ds.source}: symbol(s) {list(ds.symbols)}: {run[0]} consecutive missing bars "
                    f"from {_ts(index[run[1]])} exceed max_fill={max_fill}; raise max_fill, use "
                    "how='inner', or fix the data"
                )
        block = ds.ohlcv[last].copy()
        prev_close = block[filled, :, 3]
        for j in range(4):
            block[filled, :, j] = prev_close
        block[filled, :, 4] = 0.0
        ohlcv_parts.append(block)
        extra_parts.append(ds.extra[last][:, :, extra_idx])
    return MarketDataset(
        timestamps=index,
        symbols=tuple(symbols),
        ohlcv=np.concatenate(ohlcv_parts, axis=1),
        extra=np.concatenate(extra_parts, axis=1),
        extra_names=tuple(extra_names),
        source=source,
    )


# --------------------------------------------------------------------------------------------
# internals: CSV sniffing
# --------------------------------------------------------------------------------------------
def _read_csv_frame(path: Path, delimiter: str | None):
    """Return ``(frame, line_offset, symbol_from_header)`` for a CSV file."""
    import pandas as pd

    source = str(path)
    head = _head_lines(path, 64)
    skip = 0
    while skip < len(head) and _is_banner(head[skip]):
        skip += 1
    if skip >= len(head):
        raise DataError(f"{source}: no data (only {len(head)} banner/comment/empty line(s))")
    first = head[skip]
    sep = delimiter or max((",", ";", "\t"), key=first.count)
    fields = [f.strip().strip('"') for f in first.split(sep)]
    header_symbol = None
    skiprows: list[int] | int = skip
    names = None
    if all(_is_number(f) for f in fields if f) and any(fields):
        header = None  # ccxt dump without header: timestamp, open, high, low, close, volume, ...
        if len(fields) < 6:
            raise DataError(
                f"{source}: line {skip + 1} has {len(fields)} numeric fields and no header; a "
                f"headerless file must be ccxt-style {list(CCXT_COLUMNS)}"
            )
        names = list(CCXT_COLUMNS) + [f"col{i + 1}" for i in range(6, len(fields))]
        line_offset = skip
    else:
        header = 0
        line_offset = skip + 1
        nxt = head[skip + 1].split(sep) if skip + 1 < len(head) else []
        if nxt and nxt[0].strip().lower() == "ticker":
            # yfinance >= 0.2.51: "Price,Close,..." / "Ticker,AAPL,..." / "Date,,,..."
            tickers = {t.strip() for t in nxt[1:] if t.strip()}
            header_symbol = tickers.pop() if len(tickers) == 1 else None
            extra_lines = 1
            if skip + 2 < len(head) and head[skip + 2].split(sep)[0].strip().lower() in (
                "date",
                "datetime",
            ):
                extra_lines = 2
            names = ["Date", *fields[1:]]
            header = None
            skiprows = skip + 1 + extra_lines
            line_offset = skip + 1 + extra_lines
    try:
        frame = pd.read_csv(
            path,
            sep=sep,
            skiprows=skiprows,
            header=header,
            names=names,
            skipinitialspace=True,
            skip_blank_lines=False,
            low_memory=False,
        )
    except Exception as exc:  # ParserError, UnicodeDecodeError, EmptyDataError, ...
        raise DataError(f"{source}: cannot parse as CSV: {type(exc).__name__}: {exc}") from None
    frame.columns = [str(c) for c in frame.columns]
    # Trailing blank lines are common; blank lines inside the data are reported by the checks.
    while len(frame) and frame.iloc[-1].isna().all():
        frame = frame.iloc[:-1]
    if len(frame) == 0:
        raise DataError(f"{source}: header found but no data rows")
    return frame, line_offset, header_symbol


def _head_lines(path: Path, n: int) -> list[str]:
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    try:
        with opener(path, "rt", encoding="utf-8-sig", errors="replace") as fh:
            lines = []
            for _ in range(n):
                line = fh.readline()
                if not line:
                    break
                lines.append(line.rstrip("\r\n"))
    except (OSError, EOFError) as exc:  # includes gzip.BadGzipFile and truncated archives
        raise DataError(f"{path}: cannot read: {type(exc).__name__}: {exc}") from None
    return lines


def _is_banner(line: str) -> bool:
    s = line.strip().lower()
    return (
        not s
        or s.startswith(("#", "//", "http://", "https://", "www."))
        or not any(d in s for d in (",", ";", "\t"))
    )


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _stem(path: Path) -> str:
    name = path.name
    for suffix in (".gz", ".csv", ".txt", ".parquet", ".pq"):
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
    return name


def _normalise(name: str) -> str:
    return re.sub(r"[^0-9a-z]+", "_", name.strip().lower()).strip("_")


# --------------------------------------------------------------------------------------------
# internals: frame -> dataset
# --------------------------------------------------------------------------------------------
def _frame_to_dataset(
    frame,
    *,
    source: str,
    symbol: str | None,
    default_symbol: str,
    line_offset: int | None,
    columns: Mapping[str, str] | None,
    timestamp_column: str | None,
    time_unit: str | None,
    extra_columns: Sequence[str] | bool,
    sort: bool,
    duplicates: str,
    max_gap: float | None,
    on_gap: str,
    align: str,
    rows: np.ndarray | None = None,
) -> MarketDataset:
    import pandas as pd

    if duplicates not in DUPLICATE_POLICIES:
        raise DataError(
            f"{source}: duplicates={duplicates!r}; expected one of {list(DUPLICATE_POLICIES)}"
        )
    if time_unit is not None and time_unit not in TIME_UNITS:
        raise DataError(f"{source}: time_unit={time_unit!r}; expected one of {list(TIME_UNITS)}")
    original = {}  # normalised name -> name as written in the file, for messages
    for col in frame.columns:
        norm = _normalise(col) or col
        if norm in original:
            raise DataError(
                f"{source}: columns {original[norm]!r} and {col!r} both mean {norm!r}; rename one"
            )
        original[norm] = col
    frame = frame.rename(columns={v: k for k, v in original.items()})
    by_file_name = {v: k for k, v in original.items()}

    mapping: dict[str, str] = {}  # our name -> normalised frame column
    for ours, theirs in (columns or {}).items():
        if ours not in (*OHLCV, "timestamp"):
            raise DataError(
                f"{source}: columns= key {ours!r}; expected one of {[*OHLCV, 'timestamp']}"
            )
        col = by_file_name.get(theirs, _normalise(theirs))
        require_columns(list(frame.columns), [col], source, f"columns={{{ours!r}: {theirs!r}}}")
        mapping[ours] = col
    if timestamp_column is not None:
        col = by_file_name.get(timestamp_column, _normalise(timestamp_column))
        require_columns(list(frame.columns), [col], source, "from timestamp_column")
        mapping["timestamp"] = col

    for ours, aliases in ALIASES.items():
        if ours not in mapping:
            found = next((a for a in aliases if a in frame.columns), None)
            if found is not None:
                mapping[ours] = found

    # Symbol column: names the asset; several values mean a long-format multi-asset file.
    sym_col = next((c for c in SYMBOL_COLUMNS if c in frame.columns), None)
    if sym_col is not None and not pd.api.types.is_numeric_dtype(frame[sym_col]):
        values = frame[sym_col].dropna().astype(str).unique()
        if len(values) > 1 and symbol is None:
            return _split_long_format(
                frame,
                sym_col,
                source=source,
                line_offset=line_offset,
                rows=rows,
                opts=dict(
                    columns=columns,
                    timestamp_column=timestamp_column,
                    time_unit=time_unit,
                    extra_columns=extra_columns,
                    sort=sort,
                    duplicates=duplicates,
                    max_gap=max_gap,
                    on_gap=on_gap,
                    align=align,
                ),
            )
        if len(values) > 1:  # symbol given: keep that asset's rows of a long-format file
            if symbol not in set(values):
                raise DataError(
                    f"{source}: symbol {symbol!r} not in column {original[sym_col]!r}; the file "
                    f"holds {sorted(values)[:20]}"
                )
            keep = (frame[sym_col].astype(str) == symbol).to_numpy()
            rows = (np.arange(1, len(frame) + 1) if rows is None else rows)[keep]
            frame = frame[keep].reset_index(drop=True)
        if len(values) == 1 and symbol is None:
            symbol = str(values[0])
    symbol = symbol or default_symbol

    if "volume" not in mapping:
        mapping.update(_pick_volume(frame.columns, symbol))
    if "timestamp" not in mapping:
        candidates = [c for c in TIME_COLUMNS if c in frame.columns]
        numeric = [c for c in candidates if pd.api.types.is_numeric_dtype(frame[c])]
        if numeric or candidates:
            mapping["timestamp"] = (numeric or candidates)[0]
        elif frame.columns[0].startswith("unnamed"):
            # ``DataFrame.to_csv`` of a time-indexed frame whose index had no name: ",open,..."
            mapping["timestamp"] = frame.columns[0]
    require_columns(
        [k for k in mapping if k in (*OHLCV, "timestamp")],
        ["timestamp", *OHLCV],
        source,
        f"file columns: {list(original.values())}. Recognised time names: {list(TIME_COLUMNS)}; "
        "pass columns={'close': 'Price', ...} or timestamp_column= for other names",
    )

    n = len(frame)
    rows = np.arange(1, n + 1, dtype=np.int64) if rows is None else rows
    loc = RowLocator(source, rows, line_offset)
    ts_name = original[mapping["timestamp"]]
    timestamps = _parse_timestamps(frame[mapping["timestamp"]], ts_name, loc, time_unit)
    ohlcv = np.empty((n, 5), dtype=np.float64)
    for j, name in enumerate(OHLCV):
        col = mapping[name]
        ohlcv[:, j] = _to_float(frame[col], original[col], loc, required=True)

    used = set(mapping.values()) | ({sym_col} if sym_col else set())
    extra_names: list[str] = []
    extra_cols: list[np.ndarray] = []
    if extra_columns is not False:
        wanted = None if extra_columns is True else [_normalise(c) for c in extra_columns]
        if wanted is not None:
            require_columns(list(frame.columns), wanted, source, "from extra_columns")
        for col in frame.columns:
            if col in used or (wanted is not None and col not in wanted):
                continue
            if wanted is None and (col in NON_FEATURE_COLUMNS or col.startswith("unnamed")):
                continue
            values = _to_float(frame[col], original[col], loc, required=wanted is not None)
            if values is not None:
                extra_names.append(col)
                extra_cols.append(values)

    order = _time_order(timestamps, sort)
    if order is not None:
        timestamps = timestamps[order]
        ohlcv = ohlcv[order]
        extra_cols = [c[order] for c in extra_cols]
        loc = loc.take(order)
    if duplicates != "error" and n > 1:
        keep = _dedupe_mask(timestamps, loc, duplicates)
        if not keep.all():
            timestamps, ohlcv = timestamps[keep], ohlcv[keep]
            extra_cols = [c[keep] for c in extra_cols]
            loc = loc.take(keep)
    check_timestamps(timestamps, loc, column=ts_name, max_gap=max_gap, on_gap=on_gap)
    check_ohlcv_values(ohlcv, loc)
    extra = (
        np.stack(extra_cols, axis=1) if extra_cols else np.zeros((len(timestamps), 0), np.float64)
    )
    if extra_names:
        check_finite(extra, [original[c] for c in extra_names], loc)
    return MarketDataset(
        timestamps=timestamps,
        symbols=(str(symbol),),
        ohlcv=ohlcv[:, None, :],
        extra=extra[:, None, :],
        extra_names=tuple(extra_names),
        source=source,
    )


def _split_long_format(frame, sym_col, *, source, line_offset, rows, opts) -> MarketDataset:
    """One file with a symbol column holding several assets: one dataset per symbol, aligned."""
    align = opts.pop("align")
    file_rows = np.arange(1, len(frame) + 1, dtype=np.int64) if rows is None else rows
    parts = []
    for sym, group in frame.groupby(sym_col, sort=False):
        parts.append(
            _frame_to_dataset(
                group.drop(columns=[sym_col]).reset_index(drop=True),
                source=source,
                symbol=str(sym),
                default_symbol=str(sym),
                line_offset=line_offset,
                rows=file_rows[group.index.to_numpy()],
                align=align,
                **opts,
            )
        )
    return align_datasets(parts, how=align)


def _pick_volume(frame_columns, symbol: str) -> dict[str, str]:
    """Choose the base-asset volume among ``volume_<asset>`` columns (CryptoDataDownload style)."""
    cands = [c for c in frame_columns if c.startswith("volume_")]
    base = re.split(r"[/_\-:]", symbol.lower())[0] if symbol else ""
    for c in cands:
        if c == f"volume_{base}":
            return {"volume": c}
    for c in cands:
        if c.removeprefix("volume_") not in QUOTE_CURRENCIES:
            return {"volume": c}
    return {}


def _parse_timestamps(series, name: str, loc: RowLocator, unit: str | None) -> np.ndarray:
    """Convert a timestamp column to int64 ns UTC, naming the first bad row."""
    import pandas as pd

    missing = series.isna().to_numpy()
    if missing.any():
        pos = int(np.argmax(missing))
        raise DataError(
            f"{loc.source}: column {name!r} {loc.where(pos)}: missing timestamp; expected a date "
            "or epoch number in every row"
        )
    if pd.api.types.is_datetime64_any_dtype(series):
        return _datetimes_to_ns(series)
    if not pd.api.types.is_numeric_dtype(series):
        as_num = pd.to_numeric(series, errors="coerce")
        if as_num.notna().mean() > 0.5:
            series = pd.Series(_to_float(series, name, loc, required=True))
    if pd.api.types.is_numeric_dtype(series):
        values = series.to_numpy()
        unit = unit or infer_time_unit(values)
        factor = TIME_UNITS[unit]
        if np.issubdtype(values.dtype, np.integer):
            limit = np.iinfo(np.int64).max // factor
            if np.any(np.abs(values) > limit):
                pos = int(np.argmax(np.abs(values) > limit))
                raise DataError(
                    f"{loc.source}: column {name!r} {loc.where(pos)}: {values[pos]} {unit} is out "
                    "of range; expected an epoch timestamp before 2262"
                )
            return values.astype(np.int64) * factor
        values = values.astype(np.float64)
        bad = ~np.isfinite(values) | (np.abs(values * factor) > 9.2e18)
        if bad.any():
            pos = int(np.argmax(bad))
            raise DataError(
                f"{loc.source}: column {name!r} {loc.where(pos)}: {float(values[pos])!r} is not a "
                f"valid epoch timestamp in {unit}"
            )
        return np.round(values * factor).astype(np.int64)
    text = series.astype(str).str.strip()
    parsed = pd.to_datetime(text, utc=True, format="ISO8601", errors="coerce")
    if parsed.isna().any():
        parsed = pd.to_datetime(text, utc=True, format="mixed", errors="coerce")
    bad = parsed.isna().to_numpy()
    if bad.any():
        pos = int(np.argmax(bad))
        raise DataError(
            f"{loc.source}: column {name!r} {loc.where(pos)}: cannot parse {text.iloc[pos]!r} as "
            "a date; expected ISO-8601 text (e.g. 2024-01-31 13:00:00) or an epoch number"
        )
    return _datetimes_to_ns(parsed)


def _datetimes_to_ns(series) -> np.ndarray:
    """datetime64 Series (naive = UTC, or zoned) -> int64 ns since the epoch, UTC."""
    if series.dt.tz is not None:
        series = series.dt.tz_convert("UTC").dt.tz_localize(None)
    return series.dt.as_unit("ns").to_numpy(dtype="datetime64[ns]").view(np.int64)


def _to_float(series, name: str, loc: RowLocator, *, required: bool) -> np.ndarray | None:
    """Column to float64. Text columns return ``None`` unless required; bad cells raise."""
    import pandas as pd

    if pd.api.types.is_bool_dtype(series) or pd.api.types.is_numeric_dtype(series):
        return series.to_numpy(dtype=np.float64, na_value=np.nan)
    coerced = pd.to_numeric(series, errors="coerce")
    text = series.astype(str).str.strip()
    blank = series.isna() | (text == "")
    bad = (coerced.isna() & ~blank).to_numpy()
    if not required and bad.sum() > 0.5 * max(1, int((~blank).sum())):
        return None  # a text column (names, dates as text...): not a feature
    if bad.any():
        pos = int(np.argmax(bad))
        raise DataError(
            f"{loc.source}: column {name!r} {loc.where(pos)}: value {text.iloc[pos]!r} is not a "
            "number; expected a numeric value"
        )
    return coerced.to_numpy(dtype=np.float64, na_value=np.nan)


def _time_order(timestamps: np.ndarray, sort: bool) -> np.ndarray | None:
    """Permutation putting rows in ascending time, or ``None`` when already ascending."""
    if len(timestamps) < 2:
        return None
    step = np.diff(timestamps)
    if sort:
        if np.all(step > 0):
            return None
        return np.argsort(timestamps, kind="stable")
    if np.all(step <= 0) and np.any(step < 0):
        # Newest-first file: reverse (not sort) so equal neighbours stay reported as duplicates.
        return np.arange(len(timestamps) - 1, -1, -1)
    return None


def _dedupe_mask(timestamps: np.ndarray, loc: RowLocator, keep: str) -> np.ndarray:
    """Boolean mask keeping the first/last occurrence (in file order) of each repeated time."""
    n = len(timestamps)
    rows = loc.rows if loc.rows is not None else np.arange(1, n + 1)
    starts = np.flatnonzero(np.concatenate([[True], timestamps[1:] != timestamps[:-1]]))
    ends = np.append(starts[1:], n)
    mask = np.ones(n, dtype=bool)
    repeated = ends - starts > 1
    for start, end in zip(starts[repeated], ends[repeated], strict=True):
        # Within a run, positions may be in reverse file order (newest-first files): use rows.
        run_rows = rows[start:end]
        pick = start + int(np.argmin(run_rows) if keep == "first" else np.argmax(run_rows))
        mask[start:end] = False
        mask[pick] = True
    return mask


def _longest_run(mask: np.ndarray) -> tuple[int, int]:
    """Length and start index of the longest run of ``True`` in a 1-D boolean array."""
    padded = np.concatenate([[False], mask, [False]]).astype(np.int8)
    edges = np.diff(padded)
    starts = np.flatnonzero(edges == 1)
    ends = np.flatnonzero(edges == -1)
    if starts.size == 0:
        return 0, 0
    lengths = ends - starts
    k = int(np.argmax(lengths))
    return int(lengths[k]), int(starts[k])


def _ts(ns: int | np.integer) -> str:
    return str(np.datetime64(int(ns), "ns").astype("datetime64[s]")) + "Z"
