"""compute_features: no look-ahead for every feature name, known values, shapes, errors."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from envs.data.dataset import MarketDataset
from envs.errors import ConfigError, DataError
from envs.features import DEFAULT_FEATURES, VALID_PATTERNS, compute_features, parse_feature

HOUR_NS = 3600 * 10**9
# 2024-01-01 was a Monday.
MONDAY_NS = int(pd.Timestamp("2024-01-01", tz="UTC").value)

# Every kind, several parameterisations, including the smallest legal windows.
ALL_NAMES: tuple[str, ...] = (
    *DEFAULT_FEATURES,
    "logret_2",
    "rvol_2",
    "rsi_2",
    "macd_3_5",
    "macd_12_26",
    "macdsignal_12_26_9",
    "macdsignal_3_5_2",
    "macdhist_3_5_2",
    "bb_pos_2",
    "bb_width_2",
    "atr_1",
    "volz_2",
    "extra:funding",
    "extra:sentiment",
)


def make_dataset(n_bars: int = 300, n_assets: int = 2, seed: int = 0) -> MarketDataset:
    """A random-walk OHLCV dataset at different price levels, with two extra columns."""
    rng = np.random.default_rng(seed)
    levels = 10.0 ** np.arange(n_assets) * 50.0
    close = levels * np.exp(np.cumsum(rng.normal(0, 0.01, (n_bars, n_assets)), axis=0))
    open_ = np.vstack([close[:1], close[:-1]])
    high = np.maximum(open_, close) * (1 + np.abs(rng.normal(0, 0.003, close.shape)))
    low = np.minimum(open_, close) * (1 - np.abs(rng.normal(0, 0.003, close.shape)))
    volume = rng.lognormal(3, 1, close.shape)
    volume[5:9, 0] = 0.0  # a few empty bars
    ohlcv = np.stack([open_, high, low, close, volume], axis=-1)
    funding = rng.normal(0, 1e-4, close.shape)
    funding[:7, 0] = np.nan  # leading missing values on one asset
    funding[50:53, -1] = np.nan  # a gap later on
    sentiment = rng.uniform(-1, 1, close.shape)
    timestamps = MONDAY_NS + np.arange(n_bars, dtype=np.int64) * HOUR_NS
    return MarketDataset(
        timestamps=timestamps,
        symbols=tuple(f"A{i}" for i in range(n_assets)),
        ohlcv=ohlcv,
        extra=np.stack([funding, sentiment], axis=-1),
        extra_names=("funding", "sentiment"),
        source="synthetic-test",
    )


def perturb_after(ds: MarketDataset, t: int, seed: int) -> MarketDataset:
    """Change every input after bar t: prices rescaled and jittered, volumes, extras, times."""
    rng = np.random.default_rng(seed)
    ohlcv = ds.ohlcv.copy()
    tail = ohlcv[t + 1 :]
    factor = 1.7 * np.exp(rng.normal(0, 0.05, tail.shape[:2]))
    tail[..., :4] *= factor[..., None]
    tail[..., 1] *= 1.01  # keep high above the others
    tail[..., 4] = tail[..., 4] * 3.0 + rng.uniform(0, 50, tail.shape[:2])
    extra = ds.extra.copy()
    extra[t + 1 :] = rng.normal(5, 1, extra[t + 1 :].shape)
    timestamps = ds.timestamps.copy()
    timestamps[t + 1 :] += 31 * HOUR_NS + 123_456_789  # another day, odd time of day
    return MarketDataset(
        timestamps=timestamps,
        symbols=ds.symbols,
        ohlcv=ohlcv,
        extra=extra,
        extra_names=ds.extra_names,
        source="perturbed",
    )


@pytest.fixture(scope="module")
def dataset() -> MarketDataset:
    return make_dataset()


@pytest.fixture(scope="module")
def features(dataset: MarketDataset):
    return compute_features(dataset, ALL_NAMES)


CUTS = (0, 1, 2, 13, 26, 40, 150, 298)


@pytest.mark.parametrize("name", ALL_NAMES)
def test_no_look_ahead_every_feature(dataset: MarketDataset, name: str) -> None:
    base = compute_features(dataset, [name]).values
    later_rows_moved = False
    for i, t in enumerate(CUTS):
        changed = compute_features(perturb_after(dataset, t, seed=i), [name]).values
        # Bit-identical, not merely close: the bytes of rows <= t must not move.
        assert base[: t + 1].tobytes() == changed[: t + 1].tobytes(), (name, t)
        later_rows_moved |= not np.array_equal(base[t + 1 :], changed[t + 1 :])
    # The perturbation is real: it does reach the feature after the cut.
    assert later_rows_moved, name


@pytest.fixture(scope="module")
def long_dataset() -> MarketDataset:
    return make_dataset(6000, 1, seed=5)


# Cuts on both sides of the internal block boundaries. Rolling moments: every 1024 bars.
# EMA closed-form blocks: int(200 / -log(1 - alpha)) bars: 896 for span 9, 1197 for span 12,
# 2598 for span 26; Wilder 14 (2698 bars) starts after its seed at bar 14, so at 2713.
LONG_CUTS = (895, 896, 1023, 1024, 1030, 1196, 1197, 2597, 2598, 2712, 2713, 5200)


@pytest.mark.parametrize("name", ALL_NAMES)
def test_no_look_ahead_across_internal_blocks(long_dataset: MarketDataset, name: str) -> None:
    base = compute_features(long_dataset, [name]).values
    for i, t in enumerate(LONG_CUTS):
        changed = compute_features(perturb_after(long_dataset, t, seed=100 + i), [name]).values
        assert base[: t + 1].tobytes() == changed[: t + 1].tobytes(), (name, t)
        prefix = compute_features(long_dataset.slice(0, t + 1), [name]).values
        assert prefix.tobytes() == base[: t + 1].tobytes(), (name, t)


@pytest.mark.parametrize("name", ALL_NAMES)
def test_prefix_gives_same_values(dataset: MarketDataset, name: str) -> None:
    """Computing on bars [0, t] (a live bot's history) equals the full computation up to t."""
    full = compute_features(dataset, [name]).values
    for t in (0, 30, 177):
        prefix = compute_features(dataset.slice(0, t + 1), [name]).values
        assert prefix.tobytes() == full[: t + 1].tobytes(), (name, t)


def test_output_layout_and_finiteness(dataset: MarketDataset, features) -> None:
    values = features.values
    assert values.shape == (len(dataset), dataset.n_assets, len(ALL_NAMES))
    assert values.dtype == np.float32
    assert values.flags.c_contiguous
    assert np.isfinite(values).all()
    assert features.names == ALL_NAMES
    # Largest warm-up among the names: macd signal/hist 12_26_9 -> 35 bars.
    assert features.warmup == 35


def test_default_features_and_multi_asset_columns_independent(dataset: MarketDataset) -> None:
    both = compute_features(dataset)
    assert both.names == DEFAULT_FEATURES
    for i, sym in enumerate(dataset.symbols):
        alone = compute_features(dataset.select([sym]))
        np.testing.assert_array_equal(alone.values[:, 0], both.values[:, i])


def test_scale_free_across_price_levels(dataset: MarketDataset) -> None:
    names = [n for n in ALL_NAMES if not n.startswith("extra:")]
    ohlcv = dataset.ohlcv.copy()
    ohlcv[..., :4] *= 12345.678
    scaled = MarketDataset(dataset.timestamps, dataset.symbols, ohlcv)
    a = compute_features(dataset, names).values
    b = compute_features(scaled, names).values
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_warmup_rows_hold_neutral_zero(dataset: MarketDataset) -> None:
    expected_warmup = {
        "logret_24": 24,
        "rvol_24": 24,
        "rsi_14": 14,
        "macd_12_26": 26,
        "macd_12_26_9": 35,
        "macdhist_12_26_9": 35,
        "bb_pos_20": 19,
        "atr_14": 14,
        "volz_24": 23,
        "hour_sin": 0,
        "extra:sentiment": 0,
        "extra:funding": 7,  # asset A0 has no funding value before bar 7
    }
    for name, warm in expected_warmup.items():
        fs = compute_features(dataset, [name])
        assert fs.warmup == warm, name
        assert (fs.values[:warm] == 0).all(), name
        assert (fs.values[warm:] != 0).any(), name


# --- known values on hand-computed tiny examples ------------------------------------------------
def tiny(close, volume=None, high=None, low=None, start_ns: int = MONDAY_NS) -> MarketDataset:
    close = np.asarray(close, dtype=np.float64)
    n = close.shape[0]
    volume = np.ones(n) if volume is None else np.asarray(volume, dtype=np.float64)
    high = close if high is None else np.asarray(high, dtype=np.float64)
    low = close if low is None else np.asarray(low, dtype=np.float64)
    ohlcv = np.stack([close, high, low, close, volume], axis=-1)
    timestamps = start_ns + np.arange(n, dtype=np.int64) * HOUR_NS
    return MarketDataset(timestamps, ("X",), ohlcv, source="tiny")


def one(ds: MarketDataset, name: str) -> np.ndarray:
    return compute_features(ds, [name]).values[:, 0, 0]


def test_log_returns_exact() -> None:
    close = [100.0, 110.0, 99.0, 99.0, 120.0]
    got = one(tiny(close), "logret_1")
    want = np.array([0.0, np.log(110 / 100), np.log(99 / 110), 0.0, np.log(120 / 99)], np.float32)
    np.testing.assert_array_equal(got, want)
    got2 = one(tiny(close), "logret_2")
    want2 = np.array([0.0, 0.0, np.log(99 / 100), np.log(99 / 110), np.log(120 / 99)], np.float32)
    np.testing.assert_array_equal(got2, want2)


def test_rsi_rising_falling_flat_and_hand_value() -> None:
    rising = one(tiny(np.arange(1.0, 41.0)), "rsi_14")
    assert (rising[:14] == 0).all() and (rising[14:] == 1.0).all()  # RSI 100 -> +1
    falling = one(tiny(np.arange(40.0, 0.0, -1.0)), "rsi_14")
    assert (falling[14:] == -1.0).all()  # RSI 0 -> -1
    flat = one(tiny(np.full(30, 7.0)), "rsi_14")
    assert (flat == 0).all()  # RSI 50 -> 0
    # closes 1, 2, 1, 3: changes +1, -1, +2. Wilder n=2 seeds at bar 2 with G = L = 0.5
    # (RSI 50 -> 0); bar 3: G = 0.5 + (2 - 0.5)/2 = 1.25, L = 0.5 + (0 - 0.5)/2 = 0.25,
    # centred RSI = (G - L)/(G + L) = 2/3 (RSI 83.3).
    got = one(tiny([1.0, 2.0, 1.0, 3.0]), "rsi_2")
    np.testing.assert_allclose(got, [0.0, 0.0, 0.0, 2.0 / 3.0], rtol=1e-6)


def test_bollinger_constant_and_hand_value() -> None:
    flat = tiny(np.full(25, 42.0))
    assert (one(flat, "bb_pos_20") == 0).all()
    assert (one(flat, "bb_width_20") == 0).all()
    # window 2 over closes 1, 3: mean 2, population std 1 -> position (3 - 2)/(2*1) = 0.5,
    # width 4*1/2 = 2.
    ds = tiny([1.0, 3.0, 3.0])
    np.testing.assert_allclose(one(ds, "bb_pos_2"), [0.0, 0.5, 0.0])
    np.testing.assert_allclose(one(ds, "bb_width_2"), [0.0, 2.0, 0.0])


def test_atr_volz_rvol_hand_values() -> None:
    close = [10.0, 11.0, 10.0, 10.0]
    high = [10.5, 11.5, 10.2, 10.0]
    low = [9.5, 10.8, 9.0, 10.0]
    # ATR_1 = true range / close: bar 1 max(0.7, |11.5-10|, |10.8-10|) = 1.5 -> 1.5/11;
    # bar 2 max(1.2, |10.2-11|, |9-11|) = 2 -> 2/10; bar 3 max(0, 0, 0) = 0.
    np.testing.assert_allclose(
        one(tiny(close, high=high, low=low), "atr_1"), [0.0, 1.5 / 11, 0.2, 0.0], rtol=1e-6
    )
    # volume 1, 3, 3, 0: window 2 -> z = (3 - 2)/1 = 1, flat window -> 0, (0 - 1.5)/1.5 = -1.
    np.testing.assert_allclose(one(tiny(close, volume=[1, 3, 3, 0]), "volz_2"), [0, 1, 0, -1])
    # rvol_2 at bar 2: returns log(1.1), log(10/11) -> population std = |log 1.1 - log(10/11)|/2.
    r = np.log([1.1, 10 / 11, 1.0])
    want = [0, 0, abs(r[0] - r[1]) / 2, abs(r[1] - r[2]) / 2]
    np.testing.assert_allclose(one(tiny(close), "rvol_2"), want, rtol=1e-6)


def test_macd_matches_pandas_ewm_reference() -> None:
    close = make_dataset(200, 1, seed=3).close[:, 0]
    s = pd.Series(close)
    fast = s.ewm(span=12, adjust=False).mean()
    slow = s.ewm(span=26, adjust=False).mean()
    line = (fast - slow) / slow
    signal = line.ewm(span=9, adjust=False).mean()
    fs = compute_features(tiny(close), ["macd_12_26_9", "macdsignal_12_26_9", "macdhist_12_26_9"])
    warm = fs.warmup
    ref = np.stack([line, signal, line - signal], axis=-1)
    np.testing.assert_allclose(fs.values[warm:, 0], ref[warm:], rtol=1e-5, atol=1e-7)


def test_calendar_features() -> None:
    # Monday 06:00 UTC: a quarter of the day -> hour_sin 1, hour_cos 0; Monday -> dow 0.
    ds = tiny([1.0, 1.0], start_ns=MONDAY_NS + 6 * HOUR_NS)
    fs = compute_features(ds, ["hour_sin", "hour_cos", "dow_sin", "dow_cos"])
    np.testing.assert_allclose(fs.values[0, 0], [1.0, 0.0, 0.0, 1.0], atol=1e-7)
    # Sunday 2024-01-07 18:00: dow 6 -> angle 2*pi*6/7; hour 18 -> angle 3*pi/2.
    sunday = tiny([1.0], start_ns=MONDAY_NS + (6 * 24 + 18) * HOUR_NS)
    fs = compute_features(sunday, ["hour_sin", "hour_cos", "dow_sin", "dow_cos"])
    angle = 2 * np.pi * 6 / 7
    np.testing.assert_allclose(
        fs.values[0, 0], [-1.0, 0.0, np.sin(angle), np.cos(angle)], atol=1e-7
    )


def test_extra_forward_fills_missing(dataset: MarketDataset) -> None:
    got = compute_features(dataset, ["extra:funding"]).values[:, :, 0]
    raw = dataset.extra[:, :, 0]
    assert (got[:7, 0] == 0).all()
    np.testing.assert_array_equal(got[7:, 0], raw[7:, 0].astype(np.float32))
    np.testing.assert_array_equal(got[50:53, 1], np.float32(raw[49, 1]))


# --- errors ---------------------------------------------------------------------------------------
def test_unknown_name_lists_valid_patterns(dataset: MarketDataset) -> None:
    with pytest.raises(ConfigError) as info:
        compute_features(dataset, ["logret_1", "momentum_5"])
    message = str(info.value)
    assert "momentum_5" in message
    for pattern in VALID_PATTERNS:
        assert pattern in message


@pytest.mark.parametrize(
    ("names", "fragment"),
    [
        (["rsi_0"], "rsi_0"),
        (["logret_x"], "logret_x"),
        (["rvol_1"], "window must be >= 2"),
        (["macd_26_12"], "shorter"),
        (["macd_12_26_9_1"], "macd_12_26_9_1"),
        (["logret_1", "logret_1"], "twice"),
        ([], "empty"),
        (["extra:"], "extra"),
        (["extra:nope"], "no extra column 'nope'"),
        ("rsi_14", "sequence of names"),
        ([3], "strings"),
    ],
)
def test_bad_names_raise_config_error(dataset: MarketDataset, names, fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment):
        compute_features(dataset, names)


def test_parse_feature_returns_params() -> None:
    assert parse_feature("macdhist_12_26_9") == ("macdhist_<fast>_<slow>_<signal>", (12, 26, 9))
    assert parse_feature("extra:funding") == ("extra:<column>", ())


def test_bad_prices_raise_data_error_naming_row_and_symbol(dataset: MarketDataset) -> None:
    ohlcv = dataset.ohlcv.copy()
    ohlcv[17, 1, 3] = 0.0
    bad = MarketDataset(dataset.timestamps, dataset.symbols, ohlcv, source="bad.csv")
    with pytest.raises(DataError, match=r"bad\.csv.*'close'.*row 17.*'A1'"):
        compute_features(bad, ["logret_1"])
    # Features that do not read close are unaffected.
    assert compute_features(bad, ["hour_sin"]).values.shape[0] == len(dataset)
    ohlcv = dataset.ohlcv.copy()
    ohlcv[3, 0, 4] = np.nan
    bad_volume = MarketDataset(dataset.timestamps, dataset.symbols, ohlcv, source="v.csv")
    with pytest.raises(DataError, match=r"'volume'.*row 3"):
        compute_features(bad_volume, ["volz_24"])


def test_infinite_extra_raises(dataset: MarketDataset) -> None:
    extra = dataset.extra.copy()
    extra[9, 0, 1] = np.inf
    bad = MarketDataset(
        dataset.timestamps, dataset.symbols, dataset.ohlcv, extra, dataset.extra_names
    )
    with pytest.raises(DataError, match=r"'sentiment'.*row 9"):
        compute_features(bad, ["extra:sentiment"])


def test_shorter_than_warmup_is_all_neutral() -> None:
    fs = compute_features(tiny([1.0, 2.0, 3.0]), ["rsi_14", "macd_12_26_9", "bb_pos_20"])
    assert fs.values.shape == (3, 1, 3)
    assert (fs.values == 0).all()
    assert fs.warmup == 3  # capped at the number of bars
