"""Loaders: every supported file layout, multi-asset loading and alignment, the shipped sample."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from envs.data import (
    MarketDataset,
    align_datasets,
    infer_time_unit,
    load_csv,
    load_dataset,
    load_parquet,
    load_sample,
)
from envs.data.samples import fix_swapped_volume
from envs.errors import DataError

HOUR_S = 3600
T0_S = 1_700_000_000  # 2023-11-14T22:13:20Z
BARS = [  # open, high, low, close, volume
    (100.0, 101.0, 99.0, 100.5, 10.0),
    (100.5, 102.0, 100.0, 101.5, 12.0),
    (101.5, 101.8, 100.2, 100.8, 9.0),
    (100.8, 103.0, 100.8, 102.9, 20.0),
]
EXPECTED = np.array(BARS)
EXPECTED_TS = (T0_S + HOUR_S * np.arange(len(BARS))) * 10**9


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def _rows(ts_values, newest_first: bool = False, fmt=str) -> list[str]:
    rows = [
        ",".join([fmt(t), *(repr(x) for x in bar)]) for t, bar in zip(ts_values, BARS, strict=True)
    ]
    return rows[::-1] if newest_first else rows


def _assert_bars(ds: MarketDataset) -> None:
    np.testing.assert_array_equal(ds.timestamps, EXPECTED_TS)
    np.testing.assert_array_equal(ds.ohlcv[:, 0, :], EXPECTED)
    assert ds.ohlcv.dtype == np.float64 and ds.ohlcv.flags.c_contiguous
    assert ds.timestamps.dtype == np.int64


def test_ccxt_milliseconds_without_header(tmp_path: Path) -> None:
    ms = [(T0_S + HOUR_S * i) * 1000 for i in range(len(BARS))]
    path = _write(tmp_path / "BTC_USDT-1h.csv", "\n".join(_rows(ms)) + "\n")
    ds = load_csv(path)
    _assert_bars(ds)
    assert ds.symbols == ("BTC_USDT-1h",) and ds.extra_names == ()


def test_ccxt_with_header_and_explicit_symbol(tmp_path: Path) -> None:
    ms = [(T0_S + HOUR_S * i) * 1000 for i in range(len(BARS))]
    text = "timestamp,open,high,low,close,volume\n" + "\n".join(_rows(ms)) + "\n"
    ds = load_csv(_write(tmp_path / "x.csv", text), symbol="ETH/USDT")
    _assert_bars(ds)
    assert ds.symbols == ("ETH/USDT",)


def test_unix_seconds_exchange_export(tmp_path: Path) -> None:
    secs = [T0_S + HOUR_S * i for i in range(len(BARS))]
    text = "unix,open,high,low,close,volume\n" + "\n".join(_rows(secs)) + "\n"
    _assert_bars(load_csv(_write(tmp_path / "a.csv", text)))


def test_iso_dates_with_zone_offsets(tmp_path: Path) -> None:
    iso = [
        pd.Timestamp((T0_S + HOUR_S * i) * 10**9, tz="UTC").tz_convert("Europe/Paris").isoformat()
        for i in range(len(BARS))
    ]
    text = "Datetime,Open,High,Low,Close,Volume\n" + "\n".join(_rows(iso)) + "\n"
    _assert_bars(load_csv(_write(tmp_path / "iso.csv", text)))


def test_naive_iso_text_is_utc(tmp_path: Path) -> None:
    iso = [str(np.datetime64((T0_S + HOUR_S * i), "s")).replace("T", " ") for i in range(len(BARS))]
    text = "time;open;high;low;close;volume\n" + "\n".join(r.replace(",", ";") for r in _rows(iso))
    _assert_bars(load_csv(_write(tmp_path / "semi.csv", text)))


def test_newest_first_file_is_reversed(tmp_path: Path) -> None:
    secs = [T0_S + HOUR_S * i for i in range(len(BARS))]
    text = "unix,open,high,low,close,volume\n" + "\n".join(_rows(secs, newest_first=True))
    _assert_bars(load_csv(_write(tmp_path / "desc.csv", text)))


def test_yfinance_classic_layout_keeps_adj_close(tmp_path: Path) -> None:
    frame = pd.DataFrame(
        EXPECTED,
        columns=["Open", "High", "Low", "Close", "Volume"],
        index=pd.DatetimeIndex(EXPECTED_TS, name="Date"),
    )
    frame.insert(4, "Adj Close", frame["Close"] * 0.98)
    path = tmp_path / "AAPL.csv"
    frame.to_csv(path)
    ds = load_csv(path)
    _assert_bars(ds)
    assert ds.symbols == ("AAPL",) and ds.extra_names == ("adj_close",)
    np.testing.assert_allclose(ds.column("adj_close")[:, 0], EXPECTED[:, 3] * 0.98)


def test_yfinance_multiline_header_names_symbol(tmp_path: Path) -> None:
    days = pd.date_range("2024-01-02", periods=len(BARS), freq="D")
    lines = ["Price,Close,High,Low,Open,Volume", "Ticker,MSFT,MSFT,MSFT,MSFT,MSFT", "Date,,,,,"]
    for day, (o, h, lo, c, v) in zip(days, BARS, strict=True):
        lines.append(f"{day.date()},{c},{h},{lo},{o},{v}")
    ds = load_csv(_write(tmp_path / "yf.csv", "\n".join(lines) + "\n"))
    assert ds.symbols == ("MSFT",)
    np.testing.assert_array_equal(ds.ohlcv[:, 0, :], EXPECTED)
    assert ds.bar_seconds == 86_400.0


def test_cryptodatadownload_banner_symbol_and_volume_pair(tmp_path: Path) -> None:
    secs = [T0_S + HOUR_S * i for i in range(len(BARS))]
    lines = [
        "https://www.CryptoDataDownload.com",
        "unix,date,symbol,open,high,low,close,Volume BTC,Volume USDT,tradecount",
    ]
    for t, (o, h, lo, c, v) in reversed(list(zip(secs, BARS, strict=True))):
        date = str(np.datetime64(t, "s")).replace("T", " ")
        lines.append(f"{t},{date},BTC/USDT,{o},{h},{lo},{c},{v},{v * c},{int(v * 7)}")
    ds = load_csv(_write(tmp_path / "Binance_BTCUSDT_1h.csv", "\n".join(lines) + "\n"))
    _assert_bars(ds)
    assert ds.symbols == ("BTC/USDT",)
    assert ds.extra_names == ("volume_usdt", "tradecount")  # text 'date' dropped


def test_hash_comment_banner_and_gzip(tmp_path: Path) -> None:
    secs = [T0_S + HOUR_S * i for i in range(len(BARS))]
    text = "# exported by some tool\ntimestamp,open,high,low,close,volume\n" + "\n".join(
        _rows(secs)
    )
    path = tmp_path / "data.csv.gz"
    with gzip.open(path, "wt") as fh:
        fh.write(text)
    ds = load_csv(path)
    _assert_bars(ds)
    assert ds.symbols == ("data",)


def test_extra_numeric_columns_are_kept_and_text_dropped(tmp_path: Path) -> None:
    secs = [T0_S + HOUR_S * i for i in range(len(BARS))]
    lines = ["timestamp,open,high,low,close,volume,funding_rate,exchange,Open Interest"]
    for i, row in enumerate(_rows(secs)):
        lines.append(f"{row},{0.0001 * i},binance,{1000 + i}")
    ds = load_csv(_write(tmp_path / "perp.csv", "\n".join(lines)))
    _assert_bars(ds)
    assert ds.extra_names == ("funding_rate", "open_interest")
    np.testing.assert_allclose(ds.column("open_interest")[:, 0], 1000 + np.arange(4))
    only = load_csv(tmp_path / "perp.csv", extra_columns=["funding_rate"])
    assert only.extra_names == ("funding_rate",)
    assert load_csv(tmp_path / "perp.csv", extra_columns=False).extra_names == ()


def test_headerless_extra_columns_are_named(tmp_path: Path) -> None:
    ms = [(T0_S + HOUR_S * i) * 1000 for i in range(len(BARS))]
    rows = [f"{r},{i}.5" for i, r in enumerate(_rows(ms))]
    ds = load_csv(_write(tmp_path / "x.csv", "\n".join(rows)))
    assert ds.extra_names == ("col7",)


def test_explicit_column_mapping(tmp_path: Path) -> None:
    secs = [T0_S + HOUR_S * i for i in range(len(BARS))]
    text = "When,First,Max,Min,Last,Qty\n" + "\n".join(_rows(secs))
    path = _write(tmp_path / "odd.csv", text)
    with pytest.raises(DataError, match=r"missing required column"):
        load_csv(path)
    mapping = {"open": "First", "high": "Max", "low": "Min", "close": "Last", "volume": "Qty"}
    _assert_bars(load_csv(path, columns=mapping, timestamp_column="When"))


def test_parquet_with_datetime_index_and_column(tmp_path: Path) -> None:
    frame = pd.DataFrame(EXPECTED, columns=["open", "high", "low", "close", "volume"])
    frame["funding"] = 0.01
    indexed = frame.set_index(pd.DatetimeIndex(EXPECTED_TS, tz="UTC", name="time"))
    indexed.to_parquet(tmp_path / "a.parquet")
    ds = load_parquet(tmp_path / "a.parquet", symbol="A")
    _assert_bars(ds)
    assert ds.extra_names == ("funding",)
    frame.insert(0, "timestamp", EXPECTED_TS // 10**6)  # ms integers
    frame.iloc[::-1].to_parquet(tmp_path / "b.parquet", index=False)
    _assert_bars(load_parquet(tmp_path / "b.parquet"))


def test_sort_option_and_duplicate_policies(tmp_path: Path) -> None:
    secs = [T0_S + HOUR_S * i for i in range(len(BARS))]
    rows = _rows(secs)
    shuffled = [rows[0], rows[2], rows[1], rows[3]]
    path = _write(tmp_path / "s.csv", "unix,open,high,low,close,volume\n" + "\n".join(shuffled))
    with pytest.raises(DataError, match=r"column 'unix' row 3 \(line 4\).*earlier"):
        load_csv(path)
    _assert_bars(load_csv(path, sort=True))
    dup = [*rows[:2], rows[1].replace("12.0", "99.0"), *rows[2:]]
    path = _write(tmp_path / "d.csv", "unix,open,high,low,close,volume\n" + "\n".join(dup))
    with pytest.raises(DataError, match=r"row 3 \(line 4\): duplicate timestamp"):
        load_csv(path)
    assert load_csv(path, duplicates="first").volume[1, 0] == 12.0
    assert load_csv(path, duplicates="last").volume[1, 0] == 99.0


def test_time_unit_rule() -> None:
    assert infer_time_unit(np.array([1.7e9])) == "s"
    assert infer_time_unit(np.array([1.7e12])) == "ms"
    assert infer_time_unit(np.array([1.7e15])) == "us"
    assert infer_time_unit(np.array([1.7e18])) == "ns"


@pytest.mark.parametrize("unit,scale", [("s", 1), ("ms", 10**3), ("us", 10**6), ("ns", 10**9)])
def test_integer_units_load_to_same_ns(tmp_path: Path, unit: str, scale: int) -> None:
    values = [(T0_S + HOUR_S * i) * scale for i in range(len(BARS))]
    text = "timestamp,open,high,low,close,volume\n" + "\n".join(_rows(values))
    _assert_bars(load_csv(_write(tmp_path / f"{unit}.csv", text)))


def test_long_format_file_is_split_and_aligned(tmp_path: Path) -> None:
    secs = [T0_S + HOUR_S * i for i in range(len(BARS))]
    lines = ["timestamp,symbol,open,high,low,close,volume"]
    for sym in ("AAA", "BBB"):
        for t, row in zip(secs, _rows(secs), strict=True):
            lines.append(f"{t},{sym},{row.split(',', 1)[1]}")
    path = _write(tmp_path / "long.csv", "\n".join(lines[:-1]))  # BBB lacks its last bar
    ds = load_csv(path)
    assert ds.symbols == ("AAA", "BBB") and len(ds) == 3
    one = load_csv(path, symbol="AAA")
    assert one.symbols == ("AAA",) and len(one) == 4
    with pytest.raises(DataError, match="symbol 'CCC' not in column 'symbol'"):
        load_csv(path, symbol="CCC")


def _ds(sym: str, hours: list[int], price: float = 100.0) -> MarketDataset:
    n = len(hours)
    close = price + np.arange(n, dtype=float)
    ohlcv = np.stack([close, close + 1, close - 1, close, np.full(n, 5.0)], axis=1)
    ts = (T0_S + HOUR_S * np.array(hours)) * 10**9
    return MarketDataset(ts, (sym,), ohlcv, np.arange(n, dtype=float)[:, None], ("f",), source=sym)


def test_align_inner_keeps_common_bars_only() -> None:
    out = align_datasets([_ds("A", [0, 1, 2, 3, 4]), _ds("B", [1, 2, 4, 5])], how="inner")
    np.testing.assert_array_equal(out.timestamps, (T0_S + HOUR_S * np.array([1, 2, 4])) * 10**9)
    assert out.symbols == ("A", "B") and out.extra_names == ("f",)
    np.testing.assert_array_equal(out.close[:, 0], [101.0, 102.0, 104.0])
    np.testing.assert_array_equal(out.close[:, 1], [100.0, 101.0, 102.0])


def test_align_ffill_fills_close_with_zero_volume_and_limits_runs() -> None:
    a, b = _ds("A", [0, 1, 2, 3, 4, 5]), _ds("B", [1, 2, 5, 6])
    out = align_datasets([a, b], how="ffill", max_fill=2)
    np.testing.assert_array_equal(out.timestamps, (T0_S + HOUR_S * np.arange(1, 6)) * 10**9)
    # B is missing hours 3 and 4: OHLC = previous close (101), volume 0, extra carried.
    np.testing.assert_array_equal(out.ohlcv[2, 1], [101.0, 101.0, 101.0, 101.0, 0.0])
    np.testing.assert_array_equal(out.ohlcv[3, 1], [101.0, 101.0, 101.0, 101.0, 0.0])
    assert out.column("f")[3, 1] == 1.0
    np.testing.assert_array_equal(out.ohlcv[:, 0], a.ohlcv[1:6, 0])  # A untouched
    with pytest.raises(DataError, match=r"2 consecutive missing bars .* exceed max_fill=1"):
        align_datasets([a, b], how="ffill", max_fill=1)


def test_align_errors_are_named() -> None:
    with pytest.raises(DataError, match="share no timestamp"):
        align_datasets([_ds("A", [0, 1]), _ds("B", [2, 3])])
    with pytest.raises(DataError, match=r"symbol\(s\) \['A'\] appear in more than one"):
        align_datasets([_ds("A", [0, 1]), _ds("A", [0, 1])])
    with pytest.raises(DataError, match="how='outer'"):
        align_datasets([_ds("A", [0, 1]), _ds("B", [0, 1])], how="outer")


def test_load_dataset_dict_list_and_directory(tmp_path: Path) -> None:
    secs = [T0_S + HOUR_S * i for i in range(len(BARS))]
    header = "timestamp,open,high,low,close,volume\n"
    _write(tmp_path / "AAA.csv", header + "\n".join(_rows(secs)))
    _write(tmp_path / "BBB.csv", header + "\n".join(_rows(secs)[1:]))
    frame = pd.DataFrame(EXPECTED, columns=["open", "high", "low", "close", "volume"])
    frame.insert(0, "timestamp", np.array(secs))
    frame.to_parquet(tmp_path / "CCC.parquet", index=False)
    by_dict = load_dataset({"X": tmp_path / "AAA.csv", "Y": tmp_path / "BBB.csv"})
    assert by_dict.symbols == ("X", "Y") and len(by_dict) == 3
    by_list = load_dataset([tmp_path / "AAA.csv", tmp_path / "CCC.parquet"])
    assert by_list.symbols == ("AAA", "CCC") and len(by_list) == 4
    by_dir = load_dataset(tmp_path, how="ffill", max_fill=0)
    assert by_dir.symbols == ("AAA", "BBB", "CCC") and len(by_dir) == 3
    single = load_dataset(tmp_path / "AAA.csv")
    assert single.symbols == ("AAA",)


def test_sample_loads_and_is_clean() -> None:
    ds = load_sample("btc_usd_hourly")
    assert ds.symbols == ("BTC/USD",) and ds.n_assets == 1
    assert 17_000 <= len(ds) <= 18_000
    assert np.all(np.diff(ds.timestamps) == HOUR_S * 10**9)  # ascending, no gaps
    o, h, lo, c, v = (ds.ohlcv[:, 0, j] for j in range(5))
    assert np.all(np.isfinite(ds.ohlcv)) and np.all(ds.ohlcv[:, 0, :4] > 0)
    assert np.all((h >= np.maximum(o, c)) & (lo <= np.minimum(o, c)))
    # Base (BTC) volume everywhere: a swapped row would hold USD volume, ~1e3-1e5 times larger.
    # BTC traded 2020-2022 at 4k-70k USD, so a bar's base volume is far below 1e5 BTC.
    assert np.all(v >= 0) and v.max() < 1e5
    notional = v * c
    assert np.median(notional) > 1e5  # quote volume of a normal hour is ~$1M
    with pytest.raises(DataError, match="unknown sample"):
        load_sample("nope")


def test_fix_swapped_volume_detects_rows() -> None:
    close = np.array([100.0, 200.0, 50.0, 80.0])
    base = np.array([2.0, 3.0, 4.0, 0.0])
    quote = base * close * np.array([1.01, 0.99, 1.0, 1.0])
    swapped_in = np.array([False, True, True, False])
    raw_base = np.where(swapped_in, quote, base)
    raw_quote = np.where(swapped_in, base, quote)
    fixed_base, fixed_quote, swapped = fix_swapped_volume(raw_base, raw_quote, close)
    np.testing.assert_array_equal(swapped, swapped_in)
    np.testing.assert_array_equal(fixed_base, base)
    np.testing.assert_array_equal(fixed_quote, quote)


def test_unnamed_index_column_is_the_time(tmp_path: Path) -> None:
    frame = pd.DataFrame(
        EXPECTED,
        columns=["open", "high", "low", "close", "volume"],
        index=pd.DatetimeIndex(EXPECTED_TS, tz="UTC"),
    )
    frame.to_csv(tmp_path / "noname.csv")
    _assert_bars(load_csv(tmp_path / "noname.csv"))


def test_corrupt_gzip_is_a_data_error(tmp_path: Path) -> None:
    path = tmp_path / "broken.csv.gz"
    path.write_bytes(gzip.compress(b"timestamp,open,high,low,close,volume\n" * 50)[:40])
    with pytest.raises(DataError, match=r"broken.csv.gz: cannot read"):
        load_csv(path)
