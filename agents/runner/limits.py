"""Live risk limits applied after the env's execution module has sized an order.

The env's own limits (leverage, shorts, lot size, minimum notional, rebalance band) stay in
:mod:`envs.execution`; these are the extra guards a live bot wants. Defaults switch every guard
off, so a runner with default limits trades exactly as the env (tested against it).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from envs.errors import ConfigError, check_known_fields

__all__ = ["BarGuards", "RiskLimits"]


def _check_optional_positive(name: str, value: float | None) -> None:
    if value is not None and (not math.isfinite(value) or value <= 0):
        raise ConfigError(f"limits.{name}: expected null or a finite number > 0, got {value!r}")


@dataclass(frozen=True)
class RiskLimits:
    """Position, order and loss limits (None = off).

    Attributes:
        max_position: largest absolute position per asset, in units.
        max_notional: largest absolute position notional per asset, in cash units.
        max_order_units: largest order per asset, in units.
        max_order_notional: largest order notional per asset, in cash units.
        min_trade_notional: orders below this notional are dropped (no dust), except orders
            that close a position completely.
        vol_target: annualised volatility target; the target exposure is scaled by
            ``min(1, vol_target / realised_vol)`` (Moreira & Muir 2017, volatility-managed
            portfolios), realised vol over ``vol_lookback`` one-bar returns.
        vol_lookback: returns in the realised-volatility estimate for vol targeting.
        confidence_threshold: below this confidence the runner holds its position.
        max_daily_loss: fraction of the value at the start of the UTC day; beyond it the
            kill switch closes every position and holds until the next day.
        max_drawdown: fraction below the peak value; beyond it the kill switch closes every
            position and holds until ``reset_kill_switch()``.
        anomaly_threshold: anomaly score (VAE) or predictor uncertainty where size scaling
            starts; size falls linearly to 0 at ``anomaly_cutoff``.
        anomaly_cutoff: score at which the size reaches 0 (must exceed the threshold).
        min_expected_profit: arbitrage only: hold when the legs' expected profit net of fees
            and gas (quote) is below this; None = off (the env sends what the policy asks).
    """

    max_position: float | None = None
    max_notional: float | None = None
    max_order_units: float | None = None
    max_order_notional: float | None = None
    min_trade_notional: float = 0.0
    vol_target: float | None = None
    vol_lookback: int = 24
    confidence_threshold: float = 0.0
    max_daily_loss: float | None = None
    max_drawdown: float | None = None
    anomaly_threshold: float | None = None
    anomaly_cutoff: float | None = None
    min_expected_profit: float | None = None

    def __post_init__(self) -> None:
        for name in (
            "max_position",
            "max_notional",
            "max_order_units",
            "max_order_notional",
            "vol_target",
            "anomaly_threshold",
            "anomaly_cutoff",
        ):
            _check_optional_positive(name, getattr(self, name))
        if self.min_expected_profit is not None and not math.isfinite(self.min_expected_profit):
            raise ConfigError(
                f"limits.min_expected_profit: expected null or a finite number, got "
                f"{self.min_expected_profit!r}"
            )
        if not math.isfinite(self.min_trade_notional) or self.min_trade_notional < 0:
            raise ConfigError(
                "limits.min_trade_notional: expected a number >= 0, got "
                f"{self.min_trade_notional!r}"
            )
        if int(self.vol_lookback) != self.vol_lookback or self.vol_lookback < 2:
            raise ConfigError(
                f"limits.vol_lookback: expected an integer >= 2, got {self.vol_lookback!r}"
            )
        if not 0.0 <= self.confidence_threshold <= 1.0:
            raise ConfigError(
                f"limits.confidence_threshold: expected a number in [0, 1], got "
                f"{self.confidence_threshold!r}"
            )
        for name in ("max_daily_loss", "max_drawdown"):
            value = getattr(self, name)
            if value is not None and not 0.0 < value < 1.0:
                raise ConfigError(
                    f"limits.{name}: expected null or a fraction in (0, 1), got {value!r}"
                )
        if (self.anomaly_threshold is None) != (self.anomaly_cutoff is None):
            raise ConfigError(
                "limits.anomaly_threshold and limits.anomaly_cutoff: set both or neither"
            )
        if self.anomaly_threshold is not None and self.anomaly_cutoff <= self.anomaly_threshold:
            raise ConfigError(
                f"limits.anomaly_cutoff ({self.anomaly_cutoff}) must exceed anomaly_threshold "
                f"({self.anomaly_threshold})"
            )

    @classmethod
    def from_dict(cls, values: Mapping[str, Any] | None) -> RiskLimits:
        """Build from a config mapping; unknown keys raise a ``ConfigError`` naming them."""
        values = dict(values or {})
        check_known_fields(cls, values, "limits")
        return cls(**values)

    def anomaly_scale(self, score: float | None) -> float:
        """Size multiplier in ``[0, 1]`` for an anomaly/uncertainty score (1 when off or None)."""
        if self.anomaly_threshold is None or score is None or not math.isfinite(score):
            return 1.0
        span = self.anomaly_cutoff - self.anomaly_threshold
        return float(min(1.0, max(0.0, 1.0 - (score - self.anomaly_threshold) / span)))

    def clip_orders(self, q: np.ndarray, units: np.ndarray, price: np.ndarray) -> np.ndarray:
        """Clip orders ``q`` (units, per asset) so orders and resulting positions obey the limits.

        Orders that only reduce a position are always allowed up to closing it; orders that
        increase it are cut to the position and order limits; what is left under
        ``min_trade_notional`` is dropped unless it closes the position.
        """
        q = np.array(q, dtype=np.float64)
        for j in range(q.shape[0]):
            qj, uj, pj = float(q[j]), float(units[j]), float(price[j])
            if qj == 0.0:
                continue
            cap_order = math.inf
            if self.max_order_units is not None:
                cap_order = min(cap_order, self.max_order_units)
            if self.max_order_notional is not None:
                cap_order = min(cap_order, self.max_order_notional / pj)
            cap_pos = math.inf
            if self.max_position is not None:
                cap_pos = min(cap_pos, self.max_position)
            if self.max_notional is not None:
                cap_pos = min(cap_pos, self.max_notional / pj)
            new = uj + qj
            if abs(new) > cap_pos:
                # Move only as far as the cap: if the book is already beyond it (the price
                # moved), this turns the order into a reduction towards the cap.
                qj = min(max(new, -cap_pos), cap_pos) - uj
            if abs(qj) > cap_order:
                qj = math.copysign(cap_order, qj)
            closing = uj != 0.0 and qj == -uj
            if not closing and abs(qj) * pj < self.min_trade_notional:
                qj = 0.0
            q[j] = qj
        return q


@dataclass(frozen=True)
class BarGuards:
    """Checks on incoming bars (what live feeds get wrong).

    Attributes:
        max_abs_log_return: a close this far (in log terms) from the last accepted close is
            held as an outlier; the next bar confirming the new level is accepted.
        gap_bars: a time gap of more than this many bar intervals gives a HOLD for that bar
            (features span the gap); None = off.
        stale_seconds: a bar older than this (against the ``now`` given to ``on_bar``) gives
            a HOLD; None = off.
        bar_seconds: expected spacing of bars; None = the median of the first bars seen.
    """

    max_abs_log_return: float = 0.5
    gap_bars: float | None = 3.0
    stale_seconds: float | None = None
    bar_seconds: float | None = None

    def __post_init__(self) -> None:
        _check_optional_positive("max_abs_log_return", self.max_abs_log_return)
        _check_optional_positive("gap_bars", self.gap_bars)
        _check_optional_positive("stale_seconds", self.stale_seconds)
        _check_optional_positive("bar_seconds", self.bar_seconds)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any] | None) -> BarGuards:
        """Build from a config mapping; unknown keys raise a ``ConfigError`` naming them."""
        values = dict(values or {})
        check_known_fields(cls, values, "guards")
        return cls(**values)
