"""Gas base-fee predictor: level and volatility of the EIP-1559 base fee over chosen horizons.

Under EIP-1559 the next block's base fee follows deterministically from the current block's
fullness (``base_{n+1} = base_n * (1 + (gas_used - target) / (8 * target))``, DOMAIN.md), so the
uncertainty that matters is demand further out: congestion spikes and the daily cycle. The features
say where the fee stands against its recent means, whether it is spiking, how volatile it has been
and the time of day; the loss weighs samples by the fee level so expensive periods, when a wrong
forecast costs most, count more.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from envs.errors import ConfigError, DataError
from predictors.base import PreparedSeries, SeriesData, register_predictor
from predictors.forecaster import ForecasterConfig, GaussianForecaster
from predictors.rolling import log_diff, rolling_mean, rolling_std

SECONDS_PER_DAY = 86_400.0


@dataclass
class GasConfig(ForecasterConfig):
    """``ForecasterConfig`` plus the gas features and the price weighting."""

    mean_windows: tuple[int, ...] = (12, 96)
    """Bars of the recent means the log fee is compared with."""
    spike_threshold: float = 1.5
    """A bar is a spike when its fee exceeds this multiple of the first recent mean."""
    vol_window: int = 12
    """Bars of the realised-volatility feature and target (std of log fee changes)."""
    price_weight_power: float = 1.0
    """Sample weight ``(fee_t / geometric mean fee)^power``; 0 turns the weighting off."""
    max_price_weight: float = 10.0
    """Weights are clipped to ``[1 / max, max]`` so one extreme spike cannot dominate a batch."""
    price_feature: str = "log_base_fee"
    """Feature column holding the log fee, used for the weights."""
    anchor_features: tuple[str, ...] = ("log_base_fee", "realised_vol")
    """Forecast changes from the current log fee and volatility (the base fee is close to a
    random walk between congestion episodes, so persistence is the right starting point)."""


def gas_features(
    base_fee: np.ndarray,
    timestamps: np.ndarray | None = None,
    mean_windows: Sequence[int] = (12, 96),
    spike_threshold: float = 1.5,
    vol_window: int = 12,
) -> PreparedSeries:
    """Causal gas features and the level / volatility targets from a base-fee series.

    Args:
        base_fee: ``(T,)`` positive base fee per bar (gwei or wei; only ratios matter).
        timestamps: optional ``(T,)`` int64 ns since the epoch (UTC) for the time-of-day features.
        mean_windows: bars of the recent means (the first also defines spikes).
        spike_threshold: fee / recent mean above which a bar is a spike.
        vol_window: bars of the realised volatility.

    Returns:
        Features ``log_base_fee, dlog_base_fee, dev_mean_{m}..., spike, spike_share,
        realised_vol[, tod_sin, tod_cos]`` and targets ``log_base_fee, realised_vol``. The
        ``realised_vol`` target at row ``s`` is the std of the log changes over ``(s - v, s]``, so
        forecasting it ``h = v`` bars ahead is forecasting the volatility of the next ``v`` bars.
    """
    fee = np.asarray(base_fee, dtype=np.float64)
    if fee.ndim != 1:
        raise DataError(f"base_fee: expected a (T,) series, got shape {fee.shape}")
    bad = ~np.isfinite(fee) | (fee <= 0)
    if bad.any():
        row = int(np.argmax(bad))
        raise DataError(f"base_fee: expected finite values > 0, got {fee[row]} at row {row}")
    if not mean_windows or any(int(m) < 1 for m in mean_windows) or vol_window < 1:
        raise ConfigError("gas features: mean_windows and vol_window must be >= 1")
    log_fee = np.log(fee)
    dlog = log_diff(fee)
    cols = [log_fee, dlog]
    names = ["log_base_fee", "dlog_base_fee"]
    for m in mean_windows:
        cols.append(log_fee - np.log(rolling_mean(fee, int(m))))
        names.append(f"dev_mean_{int(m)}")
    spike = (fee > spike_threshold * rolling_mean(fee, int(mean_windows[0]))).astype(np.float64)
    cols += [spike, rolling_mean(spike, int(mean_windows[0]))]
    names += ["spike", "spike_share"]
    vol = rolling_std(dlog, vol_window)
    cols.append(vol)
    names.append("realised_vol")
    if timestamps is not None:
        ts = np.asarray(timestamps, dtype=np.int64)
        if ts.shape != fee.shape:
            raise DataError(f"timestamps: expected shape {fee.shape}, got {ts.shape}")
        phase = 2 * np.pi * ((ts / 1e9) % SECONDS_PER_DAY) / SECONDS_PER_DAY
        cols += [np.sin(phase), np.cos(phase)]
        names += ["tod_sin", "tod_cos"]
    return PreparedSeries(
        np.stack(cols, axis=1),
        np.stack([log_fee, vol], axis=1),
        names,
        ["log_base_fee", "realised_vol"],
    )


@register_predictor("gas")
class GasPricePredictor(GaussianForecaster):
    """Forecast log base fee and realised volatility with a price-weighted Gaussian NLL.

    Args:
        **config: ``GasConfig`` fields.

    Example:
        >>> gp = GasPricePredictor(window=48, horizons=[1, 12])  # doctest: +SKIP
        >>> series = gp.prepare(base_fee, timestamps)  # doctest: +SKIP
        >>> gp.fit(series.data, feature_names=series.feature_names)  # doctest: +SKIP
    """

    config_class = GasConfig
    version = 1

    def __init__(self, **config: Any) -> None:
        super().__init__(**config)
        c = self.config
        if c.max_price_weight < 1.0 or c.price_weight_power < 0 or c.spike_threshold <= 0:
            raise ConfigError(
                "predictor 'gas': expected max_price_weight >= 1, price_weight_power >= 0, "
                f"spike_threshold > 0; got {c.max_price_weight}, {c.price_weight_power}, "
                f"{c.spike_threshold}"
            )

    def prepare(self, base_fee: np.ndarray, timestamps: np.ndarray | None = None) -> PreparedSeries:
        """Gas features and targets with this predictor's feature settings."""
        c = self.config
        return gas_features(base_fee, timestamps, c.mean_windows, c.spike_threshold, c.vol_window)

    def fit(
        self,
        train: SeriesData,
        val: SeriesData | None = None,
        *,
        feature_names: Sequence[str] | None = None,
        target_names: Sequence[str] | None = None,
    ) -> dict[str, float]:
        """``GaussianForecaster.fit``; unnamed inputs shaped like ``prepare`` get its names."""
        if feature_names is None or target_names is None:
            feats = np.asarray(train[0])
            targs = np.asarray(train[1])
            width = 2 + len(self.config.mean_windows) + 3
            if feature_names is None and feats.ndim == 2 and feats.shape[1] in (width, width + 2):
                feature_names = gas_feature_names(self.config, with_time=feats.shape[1] > width)
            if target_names is None and targs.ndim == 2 and targs.shape[1] == 2:
                target_names = ["log_base_fee", "realised_vol"]
        return super().fit(train, val, feature_names=feature_names, target_names=target_names)

    def _check_names(self) -> None:
        if self.config.price_feature not in self.feature_names:
            raise DataError(
                f"predictor 'gas': price feature {self.config.price_feature!r} not among the "
                f"features {self.feature_names}"
            )

    def _sample_weights(self, last_scaled: np.ndarray) -> np.ndarray:
        """``(fee_t / geometric-mean fee)^power`` from the scaled log-fee feature, clipped."""
        c = self.config
        j = self.feature_names.index(c.price_feature)
        # scaled z = (log fee - mean log fee) / scale, so z * scale is log(fee / geometric mean).
        log_ratio = last_scaled[:, j].astype(np.float64) * self.feature_scaler.scale[j]
        w = np.exp(c.price_weight_power * log_ratio)
        return np.clip(w, 1.0 / c.max_price_weight, c.max_price_weight).astype(np.float32)


def gas_feature_names(config: GasConfig, with_time: bool) -> list[str]:
    """Feature names ``gas_features`` produces for ``config``."""
    names = ["log_base_fee", "dlog_base_fee"] + [f"dev_mean_{int(m)}" for m in config.mean_windows]
    names += ["spike", "spike_share", "realised_vol"]
    return names + (["tod_sin", "tod_cos"] if with_time else [])
