"""Named, parameterised, causal features of a :class:`MarketDataset`: ``compute_features``.

A feature name is a spec such as ``logret_4`` or ``macd_12_26_9``: a kind followed by integer
parameters, or ``extra:<column>`` to pass an extra dataset column through. Every feature is
scale-free (returns, ratios, bounded oscillators), so a policy trained at one price level
transfers to another. Values at bar ``t`` use bars ``<= t`` only. Before a feature is defined
(its warm-up), it holds the feature's neutral value, 0 for all kinds here (RSI is centred so that
50 maps to 0); ``FeatureSet.warmup`` tells consumers where episodes may start.

Conventions (one column per name, per asset):

=====================  ========================================================================
``logret_k``           ``log(close_t / close_{t-k})``; warm-up ``k``.
``rvol_w``             population std of the last ``w`` one-bar log returns (not annualised);
                       warm-up ``w``.
``rsi_n``              Wilder's RSI (Wilder 1978, TA-Lib seeding) centred: ``(RSI - 50) / 50``
                       in ``[-1, 1]``; a flat window counts as RSI 50; warm-up ``n``.
``macd_f_s[_p]``       MACD line as a percentage-price oscillator ``(EMA_f - EMA_s) / EMA_s`` of
                       close (Appel's MACD divided by the slow EMA, so it is scale-free); EMAs
                       seeded with the first close (pandas ``adjust=False``); warm-up ``s``
                       (``s + p`` when ``p`` is given, to match its signal/histogram siblings).
``macdsignal_f_s_p``   EMA over ``p`` bars of the MACD line; warm-up ``s + p``.
``macdhist_f_s_p``     MACD line minus its signal; warm-up ``s + p``.
``bb_pos_w``           Bollinger position ``(close - SMA_w) / (2 * std_w)``: -1 and 1 at the
                       lower and upper bands (2 population std); 0 on a flat window;
                       warm-up ``w - 1``.
``bb_width_w``         Bollinger band width ``4 * std_w / SMA_w``; warm-up ``w - 1``.
``atr_n``              Wilder's average true range divided by close; warm-up ``n``.
``volz_w``             volume z-score over the last ``w`` bars (0 when volume is flat);
                       warm-up ``w - 1``.
``hour_sin/cos``       time of day (UTC, fractional hours) on the unit circle; warm-up 0.
``dow_sin/cos``        day of week (UTC, Monday = 0) on the unit circle; warm-up 0.
``extra:<name>``       an extra dataset column; missing values (NaN) carried forward from the
                       last finite value (causal), 0 before the first; warm-up: leading rows
                       where some asset has no value yet.
=====================  ========================================================================
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from envs.data.dataset import MarketDataset
from envs.errors import ConfigError, DataError
from envs.features import transforms as tf

NS_PER_SECOND = 1_000_000_000
SECONDS_PER_DAY = 86_400
# 1970-01-01 was a Thursday: Monday = 0 means the epoch day has index 3.
_EPOCH_WEEKDAY = 3

DEFAULT_FEATURES: tuple[str, ...] = (
    "logret_1",
    "logret_4",
    "logret_24",
    "rvol_24",
    "rsi_14",
    "macd_12_26_9",
    "macdhist_12_26_9",
    "bb_pos_20",
    "bb_width_20",
    "atr_14",
    "volz_24",
    "hour_sin",
    "hour_cos",
    "dow_sin",
    "dow_cos",
)


class FeatureSet(NamedTuple):
    """Computed features for every bar and asset.

    Attributes:
        values: ``(T, N, F)`` float32, C-contiguous, finite everywhere (warm-up rows hold each
            feature's neutral value, 0).
        names: the ``F`` feature names, in column order.
        warmup: number of leading bars where some feature is not yet fully defined; start
            episodes at or after this bar.
    """

    values: np.ndarray
    names: tuple[str, ...]
    warmup: int


class _Computed(NamedTuple):
    values: np.ndarray  # (T, N) float64, NaN where undefined
    warmup: int


@dataclass(frozen=True)
class _Kind:
    pattern: str  # shown to users in errors
    regex: re.Pattern[str]
    columns: tuple[str, ...]  # dataset columns it reads (validated before use)
    build: Callable[[_Context, tuple[int, ...]], _Computed]


class _Context:
    """The dataset plus intermediate arrays shared by several features within one call.

    ``bb_pos_20`` and ``bb_width_20`` share their rolling moments, ``macd_*`` siblings their
    EMAs. Cached arrays are never written to (the pipeline copies into its own output).
    """

    def __init__(self, ds: MarketDataset) -> None:
        self.ds = ds
        self._memo: dict[tuple, object] = {}

    def _cached(self, key: tuple, compute: Callable[[], object]) -> Any:
        if key not in self._memo:
            self._memo[key] = compute()
        return self._memo[key]

    def close_moments(self, window: int) -> tuple[np.ndarray, np.ndarray]:
        return self._cached(
            ("close_moments", window), lambda: tf.rolling_mean_var(self.ds.close, window)
        )

    def close_ema(self, span: int) -> np.ndarray:
        return self._cached(("close_ema", span), lambda: tf.ema(self.ds.close, 2.0 / (span + 1)))

    def macd_line(self, fast: int, slow: int) -> np.ndarray:
        def line() -> np.ndarray:
            slow_ema = self.close_ema(slow)
            return (self.close_ema(fast) - slow_ema) / slow_ema

        return self._cached(("macd_line", fast, slow), line)

    def macd_signal(self, fast: int, slow: int, signal: int) -> np.ndarray:
        return self._cached(
            ("macd_signal", fast, slow, signal),
            lambda: tf.ema(self.macd_line(fast, slow), 2.0 / (signal + 1)),
        )

    def log_return_1(self) -> np.ndarray:
        return self._cached(("logret", 1), lambda: tf.lag_log_return(self.ds.close, 1))


def _logret(ctx: _Context, p: tuple[int, ...]) -> _Computed:
    (lag,) = p
    ret = ctx.log_return_1() if lag == 1 else tf.lag_log_return(ctx.ds.close, lag)
    return _Computed(ret, lag)


def _rvol(ctx: _Context, p: tuple[int, ...]) -> _Computed:
    (window,) = p
    ret = ctx.log_return_1()
    out = np.full(ret.shape, np.nan)
    if ret.shape[0] > 1:
        _, var = tf.rolling_mean_var(ret[1:], window)
        out[1:] = np.sqrt(var)
    return _Computed(out, window)


def _rsi(ctx: _Context, p: tuple[int, ...]) -> _Computed:
    (period,) = p
    close = ctx.ds.close
    diff = np.zeros_like(close)
    diff[1:] = close[1:] - close[:-1]
    avg_gain = tf.wilder(np.maximum(diff, 0.0), period, first=1)
    avg_loss = tf.wilder(np.maximum(-diff, 0.0), period, first=1)
    total = avg_gain + avg_loss
    # RSI = 100 - 100 / (1 + G/L) = 100 * G / (G + L); centred: (RSI - 50) / 50 = (G - L) / (G + L).
    with np.errstate(invalid="ignore", divide="ignore"):
        centred = np.where(total > 0, (avg_gain - avg_loss) / total, 0.0)
    centred[np.isnan(total)] = np.nan
    return _Computed(centred, period)


def _check_macd(p: tuple[int, ...]) -> None:
    if p[0] >= p[1]:
        raise ConfigError(f"macd: fast span {p[0]} must be shorter than slow span {p[1]}")


def _macd(ctx: _Context, p: tuple[int, ...]) -> _Computed:
    _check_macd(p)
    warm = p[1] + (p[2] if len(p) > 2 else 0)
    return _Computed(ctx.macd_line(p[0], p[1]), warm)


def _macd_signal(ctx: _Context, p: tuple[int, ...]) -> _Computed:
    _check_macd(p)
    return _Computed(ctx.macd_signal(*p), p[1] + p[2])


def _macd_hist(ctx: _Context, p: tuple[int, ...]) -> _Computed:
    _check_macd(p)
    return _Computed(ctx.macd_line(p[0], p[1]) - ctx.macd_signal(*p), p[1] + p[2])


def _safe_ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """``num / den`` with 0 where ``den`` is 0 (flat window) and NaN kept where undefined."""
    with np.errstate(invalid="ignore", divide="ignore"):
        out = np.where(den > 0, num / np.where(den > 0, den, 1.0), 0.0)
    out[np.isnan(den)] = np.nan
    return out


def _bb_pos(ctx: _Context, p: tuple[int, ...]) -> _Computed:
    (window,) = p
    close = ctx.ds.close
    mean, var = ctx.close_moments(window)
    return _Computed(_safe_ratio(close - mean, 2.0 * np.sqrt(var)), window - 1)


def _bb_width(ctx: _Context, p: tuple[int, ...]) -> _Computed:
    (window,) = p
    mean, var = ctx.close_moments(window)
    return _Computed(4.0 * np.sqrt(var) / mean, window - 1)


def _atr(ctx: _Context, p: tuple[int, ...]) -> _Computed:
    (period,) = p
    ds = ctx.ds
    tr = tf.true_range(ds.high, ds.low, ds.close)
    # Row 0 has no previous close; Wilder's ATR starts from the first full true range (row 1).
    return _Computed(tf.wilder(tr, period, first=1) / ds.close, period)


def _volz(ctx: _Context, p: tuple[int, ...]) -> _Computed:
    (window,) = p
    volume = ctx.ds.volume
    mean, var = tf.rolling_mean_var(volume, window)
    return _Computed(_safe_ratio(volume - mean, np.sqrt(var)), window - 1)


def _time_of_day(ds: MarketDataset) -> np.ndarray:
    seconds = np.mod(ds.timestamps, SECONDS_PER_DAY * NS_PER_SECOND) / NS_PER_SECOND
    return seconds / SECONDS_PER_DAY  # fraction of the UTC day in [0, 1)


def _day_of_week(ds: MarketDataset) -> np.ndarray:
    days = np.floor_divide(ds.timestamps, SECONDS_PER_DAY * NS_PER_SECOND)
    return np.mod(days + _EPOCH_WEEKDAY, 7).astype(np.float64)


def _per_asset(ds: MarketDataset, row: np.ndarray) -> np.ndarray:
    return np.repeat(row[:, None], ds.n_assets, axis=1)


def _cyclic(
    phase: Callable[[MarketDataset], np.ndarray], period: float, fn: Callable
) -> Callable[[_Context, tuple[int, ...]], _Computed]:
    def build(ctx: _Context, p: tuple[int, ...]) -> _Computed:
        ds = ctx.ds
        return _Computed(_per_asset(ds, fn(2.0 * np.pi * phase(ds) / period)), 0)

    return build


def _extra(ds: MarketDataset, name: str) -> _Computed:
    if name not in ds.extra_names:
        raise ConfigError(
            f"feature 'extra:{name}': {ds.source} has no extra column {name!r}; "
            f"extra columns are {list(ds.extra_names)}"
        )
    col = ds.extra[:, :, ds.extra_names.index(name)]
    bad = np.isinf(col)
    if bad.any():
        row, asset = np.argwhere(bad)[0]
        raise DataError(
            f"{ds.source}: extra column {name!r} is infinite at row {row} "
            f"(symbol {ds.symbols[asset]!r}); expected finite numbers or NaN for missing"
        )
    finite = np.isfinite(col)
    # Causal forward fill: index of the last finite row at or before t (0 fill before any).
    idx = np.where(finite, np.arange(col.shape[0])[:, None], -1)
    np.maximum.accumulate(idx, axis=0, out=idx)
    filled = np.where(idx >= 0, np.take_along_axis(col, np.maximum(idx, 0), axis=0), 0.0)
    all_seen = np.all(idx >= 0, axis=1)
    warm = int(np.argmax(all_seen)) if all_seen.any() else col.shape[0]
    return _Computed(filled, warm)


_INT = r"([1-9][0-9]*)"
_KINDS: tuple[_Kind, ...] = (
    _Kind("logret_<k>", re.compile(rf"logret_{_INT}"), ("close",), _logret),
    _Kind("rvol_<w>  (w >= 2)", re.compile(rf"rvol_{_INT}"), ("close",), _rvol),
    _Kind("rsi_<n>", re.compile(rf"rsi_{_INT}"), ("close",), _rsi),
    _Kind("macd_<fast>_<slow>", re.compile(rf"macd_{_INT}_{_INT}"), ("close",), _macd),
    _Kind(
        "macd_<fast>_<slow>_<signal>", re.compile(rf"macd_{_INT}_{_INT}_{_INT}"), ("close",), _macd
    ),
    _Kind(
        "macdsignal_<fast>_<slow>_<signal>",
        re.compile(rf"macdsignal_{_INT}_{_INT}_{_INT}"),
        ("close",),
        _macd_signal,
    ),
    _Kind(
        "macdhist_<fast>_<slow>_<signal>",
        re.compile(rf"macdhist_{_INT}_{_INT}_{_INT}"),
        ("close",),
        _macd_hist,
    ),
    _Kind("bb_pos_<w>  (w >= 2)", re.compile(rf"bb_pos_{_INT}"), ("close",), _bb_pos),
    _Kind("bb_width_<w>  (w >= 2)", re.compile(rf"bb_width_{_INT}"), ("close",), _bb_width),
    _Kind("atr_<n>", re.compile(rf"atr_{_INT}"), ("high", "low", "close"), _atr),
    _Kind("volz_<w>  (w >= 2)", re.compile(rf"volz_{_INT}"), ("volume",), _volz),
    _Kind("hour_sin", re.compile("hour_sin"), (), _cyclic(_time_of_day, 1.0, np.sin)),
    _Kind("hour_cos", re.compile("hour_cos"), (), _cyclic(_time_of_day, 1.0, np.cos)),
    _Kind("dow_sin", re.compile("dow_sin"), (), _cyclic(_day_of_week, 7.0, np.sin)),
    _Kind("dow_cos", re.compile("dow_cos"), (), _cyclic(_day_of_week, 7.0, np.cos)),
)
# Windows that need at least two observations to carry information.
_MIN_TWO = ("rvol_", "bb_pos_", "bb_width_", "volz_")

VALID_PATTERNS: tuple[str, ...] = (*(k.pattern for k in _KINDS), "extra:<column>")


def _unknown(name: object, why: str = "unknown feature") -> ConfigError:
    return ConfigError(f"{why} {name!r}; valid feature names match: " + ", ".join(VALID_PATTERNS))


def parse_feature(name: str) -> tuple[str, tuple[int, ...]]:
    """Check a feature name and return ``(pattern, params)``.

    Args:
        name: a feature spec such as ``"rsi_14"`` or ``"extra:funding_rate"``.

    Returns:
        The matching pattern (as listed in ``VALID_PATTERNS``) and its integer parameters.

    Raises:
        ConfigError: the name matches no pattern, or a parameter is out of range.
    """
    if not isinstance(name, str):
        raise _unknown(name, "feature names must be strings, got")
    if name.startswith("extra:"):
        if len(name) == len("extra:"):
            raise _unknown(name, "empty extra column in feature")
        return "extra:<column>", ()
    for kind in _KINDS:
        match = kind.regex.fullmatch(name)
        if match:
            params = tuple(int(g) for g in match.groups())
            if name.startswith(_MIN_TWO) and params[0] < 2:
                raise ConfigError(f"feature {name!r}: window must be >= 2, got {params[0]}")
            if kind.build in (_macd, _macd_signal, _macd_hist):
                _check_macd(params)
            return kind.pattern, params
    raise _unknown(name)


def _validate_columns(ds: MarketDataset, columns: set[str]) -> None:
    for column in ("open", "high", "low", "close", "volume"):
        if column not in columns:
            continue
        values = ds.column(column)
        bad = ~np.isfinite(values) | (values < 0 if column == "volume" else values <= 0)
        if bad.any():
            row, asset = np.argwhere(bad)[0]
            expected = "finite and >= 0" if column == "volume" else "finite and > 0"
            raise DataError(
                f"{ds.source}: column {column!r} is {values[row, asset]!r} at row {row} "
                f"(symbol {ds.symbols[asset]!r}); features need it {expected}"
            )


def compute_features(dataset: MarketDataset, names: Sequence[str] | None = None) -> FeatureSet:
    """Compute named causal features for every bar and asset of a dataset.

    Args:
        dataset: the market data.
        names: feature specs (see the module docstring and ``VALID_PATTERNS``);
            ``None`` means ``DEFAULT_FEATURES``.

    Returns:
        A :class:`FeatureSet` with ``(T, N, F)`` float32 values, finite everywhere.

    Raises:
        ConfigError: an unknown or malformed feature name, a duplicate, or an empty list.
        DataError: a column a feature needs is non-finite or non-positive (volume: negative).
    """
    if isinstance(names, str):
        raise ConfigError(
            f"compute_features: names must be a sequence of names, got the string {names!r}; "
            f"write [{names!r}]"
        )
    names = tuple(DEFAULT_FEATURES if names is None else names)
    if not names:
        raise ConfigError("compute_features: names is empty; give at least one feature name")
    seen: set[str] = set()
    parsed = []
    for name in names:
        if name in seen:
            raise ConfigError(f"compute_features: feature {name!r} listed twice")
        seen.add(name)
        parsed.append(parse_feature(name))
    kinds = {k.pattern: k for k in _KINDS}
    needed = {c for pattern, _ in parsed if pattern in kinds for c in kinds[pattern].columns}
    _validate_columns(dataset, needed)

    n_bars, n_assets = len(dataset), dataset.n_assets
    ctx = _Context(dataset)
    out = np.empty((n_bars, n_assets, len(names)), dtype=np.float32)
    warmup = 0
    for f, (name, (pattern, params)) in enumerate(zip(names, parsed, strict=True)):
        if pattern == "extra:<column>":
            computed = _extra(dataset, name[len("extra:") :])
        else:
            computed = kinds[pattern].build(ctx, params)
        warm = min(computed.warmup, n_bars)
        col = computed.values[warm:]
        if not np.isfinite(col).all():
            row, asset = np.argwhere(~np.isfinite(col))[0]
            raise DataError(
                f"{dataset.source}: feature {name!r} is not finite at row {warm + row} "
                f"(symbol {dataset.symbols[asset]!r}) after its warm-up of {warm} bars"
            )
        out[warm:, :, f] = col
        out[:warm, :, f] = 0.0  # the neutral value of every feature kind here
        warmup = max(warmup, warm)
    return FeatureSet(values=out, names=names, warmup=warmup)
