"""Liquidity predictor: pool liquidity, volume and price impact, with a component-weighted loss.

For a constant-product pool (Uniswap v2) with reserves ``x, y`` the liquidity is ``L = sqrt(x y)``
and a trade paying ``dx`` of X moves the execution price to ``y / (x + dx)`` against the spot
``y / x`` (fee aside), a price impact of ``dx / (x + dx)`` (DOMAIN.md). An arbitrageur sizing a
trade wants all three ahead: how deep the pool will be, how much flow there will be, and what a
reference trade will cost. The loss weighs the components so the one that drives decisions (often
impact) can count more.
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

LIQUIDITY_TARGETS = ("log_liquidity", "log_volume", "impact_bps")


@dataclass
class LiquidityConfig(ForecasterConfig):
    """``ForecasterConfig`` plus liquidity features and component weights."""

    component_weights: tuple[float, ...] = (1.0, 1.0, 1.0)
    """Loss weights of liquidity, volume and impact (normalised to mean 1)."""
    reference_trade: float = 1.0
    """Size in X of the reference trade whose price impact is forecast."""
    feature_window: int = 12
    """Bars of the rolling means / volatilities in the features."""
    anchor_features: tuple[str, ...] = ("log_liquidity", "log_volume", "impact_bps")
    """Forecast changes from the current liquidity, volume and impact."""


def liquidity_features(
    reserve_x: np.ndarray,
    reserve_y: np.ndarray,
    volume: np.ndarray,
    reference_trade: float = 1.0,
    feature_window: int = 12,
) -> PreparedSeries:
    """Causal pool features and the three targets from reserve and volume series.

    Args:
        reserve_x, reserve_y: ``(T,)`` positive pool reserves at the end of each bar.
        volume: ``(T,)`` non-negative traded volume per bar (any unit).
        reference_trade: size in X of the trade whose impact is measured.
        feature_window: bars of the rolling statistics.

    Returns:
        Features ``log_liquidity, dlog_liquidity, log_volume, log_volume_mean, log_return,
        return_vol, impact_bps`` and targets ``log_liquidity, log_volume, impact_bps`` with
        ``log_volume = log(1 + volume)`` and ``impact_bps = 1e4 * dx / (x + dx)``.
    """
    x = np.asarray(reserve_x, dtype=np.float64)
    y = np.asarray(reserve_y, dtype=np.float64)
    v = np.asarray(volume, dtype=np.float64)
    for name, arr, positive in (
        ("reserve_x", x, True),
        ("reserve_y", y, True),
        ("volume", v, False),
    ):
        if arr.ndim != 1 or arr.shape != x.shape:
            raise DataError(f"{name}: expected a (T,) series of length {x.shape}, got {arr.shape}")
        bad = ~np.isfinite(arr) | ((arr <= 0) if positive else (arr < 0))
        if bad.any():
            row = int(np.argmax(bad))
            want = "> 0" if positive else ">= 0"
            raise DataError(f"{name}: expected finite values {want}, got {arr[row]} at row {row}")
    if reference_trade <= 0 or feature_window < 1:
        raise ConfigError("liquidity features: reference_trade must be > 0, feature_window >= 1")
    liquidity = np.sqrt(x * y)
    log_liq = np.log(liquidity)
    log_vol = np.log1p(v)
    ret = log_diff(y / x)
    impact = 1e4 * reference_trade / (x + reference_trade)
    feats = np.stack(
        [
            log_liq,
            log_diff(liquidity),
            log_vol,
            rolling_mean(log_vol, feature_window),
            ret,
            rolling_std(ret, feature_window),
            impact,
        ],
        axis=1,
    )
    names = [
        "log_liquidity",
        "dlog_liquidity",
        "log_volume",
        "log_volume_mean",
        "log_return",
        "return_vol",
        "impact_bps",
    ]
    return PreparedSeries(
        feats, np.stack([log_liq, log_vol, impact], axis=1), names, list(LIQUIDITY_TARGETS)
    )


@register_predictor("liquidity")
class LiquidityPredictor(GaussianForecaster):
    """Multi-output forecaster of liquidity, volume and price impact.

    Args:
        **config: ``LiquidityConfig`` fields.
    """

    config_class = LiquidityConfig
    version = 1

    def __init__(self, **config: Any) -> None:
        super().__init__(**config)
        w = self.config.component_weights
        if len(w) == 0 or any(float(v) < 0 for v in w) or sum(w) <= 0:
            raise ConfigError(
                f"predictor 'liquidity': config field 'component_weights' = {list(w)}, expected "
                "non-negative weights with a positive sum"
            )

    def prepare(
        self, reserve_x: np.ndarray, reserve_y: np.ndarray, volume: np.ndarray
    ) -> PreparedSeries:
        """Liquidity features and targets with this predictor's settings."""
        c = self.config
        return liquidity_features(reserve_x, reserve_y, volume, c.reference_trade, c.feature_window)

    def fit(
        self,
        train: SeriesData,
        val: SeriesData | None = None,
        *,
        feature_names: Sequence[str] | None = None,
        target_names: Sequence[str] | None = None,
    ) -> dict[str, float]:
        """``GaussianForecaster.fit``; three unnamed targets get the liquidity names."""
        targs = np.asarray(train[1])
        if target_names is None and targs.ndim == 2 and targs.shape[1] == len(LIQUIDITY_TARGETS):
            target_names = list(LIQUIDITY_TARGETS)
        return super().fit(train, val, feature_names=feature_names, target_names=target_names)

    def _check_names(self) -> None:
        if len(self.config.component_weights) != len(self.target_names):
            raise ConfigError(
                f"predictor 'liquidity': {len(self.config.component_weights)} component_weights "
                f"for {len(self.target_names)} targets {self.target_names}"
            )

    def _output_weights(self) -> np.ndarray:
        """Component weights repeated for every horizon (outputs are horizon-major)."""
        w = np.asarray(self.config.component_weights, dtype=np.float32)
        return np.tile(w, len(self.config.horizons))
