"""What the policy runner hands a bot (``TradeSignal``) and what the bot reports back (``Fill``).

Plain frozen dataclasses with ``to_dict`` for journals and JSON; no torch, no env state.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = ["BUY", "HOLD", "SELL", "SIDES", "Fill", "SignalLeg", "TradeSignal"]

BUY = "BUY"
SELL = "SELL"
HOLD = "HOLD"
SIDES = (BUY, SELL, HOLD)


@dataclass(frozen=True)
class SignalLeg:
    """One asset's (or venue's) order within a signal.

    Arbitrage legs name the venue (``cex``, ``pool0``, ...): the pool leg and the CEX (or second
    pool) leg of one slot have the same size and opposite sides.

    Attributes:
        symbol: asset (or venue) name.
        side: ``BUY``, ``SELL`` or ``HOLD`` (no order for this asset).
        size: order size in asset units (>= 0; the side gives the direction).
        notional: ``size * reference_price`` in cash units.
        reference_price: the price the order was sized at (the last close; arbitrage: the
            expected average execution price net of fees, quote per base).
        target_units: position in units after the order fills (arbitrage: the venue's base
            balance).
        target_exposure: that position's notional over the portfolio value.
    """

    symbol: str
    side: str
    size: float
    notional: float
    reference_price: float
    target_units: float
    target_exposure: float


@dataclass(frozen=True)
class TradeSignal:
    """A sized decision for one bar (or snapshot).

    ``side`` is ``BUY``/``SELL`` for a single order, ``HOLD`` when nothing should be traded
    (``reason`` then says why: warm-up, bad data, low confidence, a limit, no change needed), or
    ``BUY``/``SELL`` of the first leg with the others in ``legs`` for several assets.

    Attributes:
        timestamp: bar time, int nanoseconds since the epoch (UTC); -1 when the bar had none.
        symbol: the first (or only) asset.
        side: ``BUY``, ``SELL`` or ``HOLD``.
        size: units to trade of ``symbol`` (>= 0).
        notional: cash value of all legs' orders at their reference prices.
        target_position: units of ``symbol`` held after the fill.
        target_exposure: per-asset target exposures (position notional / value) the order
            moves to, or None when the signal carries no decision (data HOLDs); a bot that
            trades on exposure (as the env and the backtest do) re-sizes at its fill price.
        confidence: in ``[0, 1]``: the policy's own confidence (action probability or how
            far the mean action is from zero in standard deviations) times the predictors'
            certainty.
        reason: why this signal (always set; for HOLD it names the cause).
        legs: one :class:`SignalLeg` per asset.
        action: the raw policy action (list), None when the policy was not asked.
        scale: size multiplier applied by vol targeting and the anomaly guard (1 = none).
        expected_profit: arbitrage only: expected profit of the legs in quote, net of pool,
            CEX and gas fees, at the snapshot's prices (None for market signals).
        gas_cost: arbitrage only: gas of the transactions at base fee + priority fee, quote.
        priority_fee_gwei: arbitrage only: the priority-fee bid of the transactions.
    """

    timestamp: int
    symbol: str
    side: str
    size: float
    notional: float
    target_position: float
    target_exposure: tuple[float, ...] | None
    confidence: float
    reason: str
    legs: tuple[SignalLeg, ...] = ()
    action: tuple[float, ...] | None = None
    scale: float = 1.0
    expected_profit: float | None = None
    gas_cost: float | None = None
    priority_fee_gwei: float | None = None

    @property
    def is_hold(self) -> bool:
        """True when no leg trades."""
        return self.side == HOLD

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict (legs as dicts)."""
        return asdict(self)


@dataclass(frozen=True)
class Fill:
    """A fill the bot reports back to the runner (``runner.on_fill``).

    Attributes:
        symbol: the asset.
        units: signed filled quantity (+ bought, - sold).
        price: average fill price.
        cost: fees, spread and impact paid in cash units (>= 0).
        timestamp: fill time in int nanoseconds (informational).
    """

    symbol: str
    units: float
    price: float
    cost: float = 0.0
    timestamp: int = -1
    meta: dict[str, Any] = field(default_factory=dict)
