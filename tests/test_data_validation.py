"""Each validation failure raises DataError naming file, column and row (data row and line)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from envs.data import MarketDataset, load_csv, load_parquet, validate_dataset
from envs.errors import DataError

HEADER = "timestamp,open,high,low,close,volume"
GOOD = [
    "1700000000,100,101,99,100.5,10",
    "1700003600,100.5,102,100,101.5,12",
    "1700007200,101.5,101.8,100.2,100.8,9",
    "1700010800,100.8,103,100.8,102.9,20",
]


def _file(tmp_path: Path, rows: list[str], header: str = HEADER, name: str = "bad.csv") -> Path:
    path = tmp_path / name
    path.write_text("\n".join([header, *rows]) + "\n")
    return path


def _replace(row: int, field: int, value: str, rows: list[str] | None = None) -> list[str]:
    """Copy of ``rows`` (default GOOD) with data row ``row`` (1-based) field ``field`` replaced."""
    out = list(GOOD if rows is None else rows)
    parts = out[row - 1].split(",")
    parts[field] = value
    out[row - 1] = ",".join(parts)
    return out


def _raises(path: Path, pattern: str, **opts) -> str:
    with pytest.raises(DataError, match=pattern) as info:
        load_csv(path, **opts)
    message = str(info.value)
    assert message.startswith(str(path)), message  # the file is named first
    return message


def test_good_file_passes(tmp_path: Path) -> None:
    assert len(load_csv(_file(tmp_path, GOOD))) == 4


def test_missing_required_column(tmp_path: Path) -> None:
    path = _file(tmp_path, [r.rsplit(",", 1)[0] for r in GOOD], header=HEADER.rsplit(",", 1)[0])
    msg = _raises(path, r"missing required column\(s\) \['volume'\]")
    assert "found columns" in msg


def test_missing_timestamp_column(tmp_path: Path) -> None:
    rows = [r.split(",", 1)[1] for r in GOOD]
    _raises(_file(tmp_path, rows, header="open,high,low,close,volume"), r"\['timestamp'\]")


def test_non_numeric_value_names_column_row_and_line(tmp_path: Path) -> None:
    path = _file(tmp_path, _replace(3, 4, "1O0.8"))  # letter O typed for zero
    _raises(path, r"column 'close' row 3 \(line 4\): value '1O0.8' is not a number")


def test_empty_cell_is_reported_as_not_finite(tmp_path: Path) -> None:
    path = _file(tmp_path, _replace(2, 2, ""))
    _raises(path, r"column 'high' row 2 \(line 3\): value nan is not a finite number")


def test_infinity_is_rejected(tmp_path: Path) -> None:
    path = _file(tmp_path, _replace(4, 5, "inf"))
    _raises(path, r"column 'volume' row 4 \(line 5\): value inf is not a finite")


def test_non_positive_price(tmp_path: Path) -> None:
    rows = _replace(2, 3, "0", _replace(2, 1, "0.0"))
    _raises(_file(tmp_path, rows), r"column 'open' row 2 \(line 3\): price 0.0 is not positive")


def test_negative_volume(tmp_path: Path) -> None:
    _raises(_file(tmp_path, _replace(1, 5, "-1")), r"column 'volume' row 1 \(line 2\).*negative")


def test_high_below_low(tmp_path: Path) -> None:
    rows = _replace(3, 2, "99", _replace(3, 1, "99.5", _replace(3, 4, "99.5")))
    _raises(_file(tmp_path, rows), r"columns 'high'/'low' row 3 \(line 4\): high 99.0 < low 100.2")


def test_open_and_close_outside_range(tmp_path: Path) -> None:
    _raises(
        _file(tmp_path, _replace(2, 1, "102.5")),
        r"column 'open' row 2 \(line 3\): open 102.5 outside \[low, high\] = \[100.0, 102.0\]",
    )
    _raises(_file(tmp_path, _replace(4, 4, "100.1")), r"column 'close' row 4 \(line 5\)")


def test_duplicate_timestamp_names_both_rows(tmp_path: Path) -> None:
    rows = _replace(3, 0, "1700003600")
    _raises(_file(tmp_path, rows), r"column 'timestamp' row 3 \(line 4\): duplicate .* row 2")


def test_rows_count_in_file_order_for_newest_first_with_banner(tmp_path: Path) -> None:
    rows = _replace(2, 2, "50")[::-1]  # newest first: the bad bar is now data row 3
    path = tmp_path / "desc.csv"
    path.write_text("https://www.CryptoDataDownload.com\n" + HEADER + "\n" + "\n".join(rows))
    _raises(path, r"columns 'high'/'low' row 3 \(line 5\)")


def test_out_of_order_timestamp(tmp_path: Path) -> None:
    rows = [GOOD[0], GOOD[2], GOOD[1], GOOD[3]]
    msg = _raises(_file(tmp_path, rows), r"column 'timestamp' row 3 \(line 4\): timestamp")
    assert "sort=True" in msg


def test_duplicate_after_sort_is_a_duplicate(tmp_path: Path) -> None:
    rows = [GOOD[1], GOOD[0], GOOD[3], GOOD[1].replace(",12", ",13")]
    _raises(_file(tmp_path, rows), r"row 4 \(line 5\): duplicate timestamp", sort=True)


def test_gaps_allowed_by_default_and_policies(tmp_path: Path) -> None:
    rows = [*GOOD, "1700030000,102.9,103,102,102.5,5"]  # 5.3 bars after the previous one
    path = _file(tmp_path, rows)
    assert len(load_csv(path)) == 5
    assert len(load_csv(path, max_gap=6)) == 5
    _raises(path, r"column 'timestamp' row 5 \(line 6\): gap of 5.3 bars.*max_gap=2", max_gap=2)
    with pytest.warns(UserWarning, match="gap of 5.3 bars"):
        load_csv(path, max_gap=2, on_gap="warn")
    _raises(path, r"on_gap='ignore'", max_gap=2, on_gap="ignore")


def test_unparseable_and_missing_timestamps(tmp_path: Path) -> None:
    rows = [
        "2023-11-14 22:00,100,101,99,100.5,10",
        "yesterday,100.5,102,100,101.5,12",
        "2023-11-15 00:00,101.5,101.8,100.2,100.8,9",
    ]
    _raises(
        _file(tmp_path, rows, header=HEADER.replace("timestamp", "date")), r"row 2 .*'yesterday'"
    )
    _raises(_file(tmp_path, _replace(2, 0, "")), r"column 'timestamp' row 2 .*missing timestamp")


def test_ragged_csv_is_wrapped(tmp_path: Path) -> None:
    rows = [*GOOD[:2], GOOD[2] + ",7,8", GOOD[3]]
    with pytest.raises(DataError, match="cannot parse as CSV") as info:
        load_csv(_file(tmp_path, rows))
    assert re.search(r"line \d", str(info.value))  # pandas' own location is kept in the text
    assert info.value.__cause__ is None and info.value.__suppress_context__  # no pandas trace


def test_empty_and_missing_files(tmp_path: Path) -> None:
    _raises(_file(tmp_path, []), "no data rows")
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    _raises(empty, "no data")
    with pytest.raises(DataError, match="file not found"):
        load_csv(tmp_path / "nope.csv")
    not_parquet = tmp_path / "x.parquet"
    not_parquet.write_text("hello")
    with pytest.raises(DataError, match=r"x.parquet: cannot read as Parquet"):
        load_parquet(not_parquet)


def test_bad_extra_value_names_the_extra_column(tmp_path: Path) -> None:
    rows = [f"{r},{x}" for r, x in zip(GOOD, ["0.1", "0.2", "oops", "0.4"], strict=True)]
    _raises(_file(tmp_path, rows, header=HEADER + ",funding"), r"column 'funding' row 3 .*'oops'")
    rows = [f"{r},{x}" for r, x in zip(GOOD, ["0.1", "", "0.3", "0.4"], strict=True)]
    _raises(_file(tmp_path, rows, header=HEADER + ",funding"), r"column 'funding' row 2 .*finite")


def test_bad_options_are_named(tmp_path: Path) -> None:
    path = _file(tmp_path, GOOD)
    _raises(path, r"duplicates='drop'", duplicates="drop")
    _raises(path, r"time_unit='hours'", time_unit="hours")
    _raises(path, r"max_gap=0.5 bars", max_gap=0.5)


def test_validate_in_memory_dataset_uses_positions() -> None:
    ohlcv = np.array([[1.0, 2.0, 0.5, 1.5, 1.0], [1.5, 2.0, 1.0, 2.5, 1.0]])
    ds = MarketDataset(np.array([0, 10**9]), ("X",), ohlcv, source="mem")
    with pytest.raises(DataError, match=r"mem: symbol 'X' column 'close' row 2: close 2.5"):
        validate_dataset(ds)
    ok = MarketDataset(np.array([0, 10**9]), ("X",), ohlcv[:1].repeat(2, axis=0), source="mem")
    assert validate_dataset(ok) is ok
