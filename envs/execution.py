"""Action -> target exposure -> orders -> costs: the one sizing and execution module.

Everything here is a pure NumPy function of what is passed in (no env state), batched over a
leading dimension ``B`` (number of envs or 1) and ``N`` assets, so the env, the batched env and a
live policy runner share exactly the same sizing and cost arithmetic.

Conventions:
    * An *exposure* is signed notional of an asset divided by portfolio value (``1.0`` = fully
      long, ``-1.0`` = short the whole portfolio value, ``2.0`` = 2x leveraged long).
    * Orders are signed quantities in asset units (``+`` buy, ``-`` sell).
    * Orders are market (taker) orders filled at a reference price (the open of the execution bar
      in the env). Their cash cost is ``q * price`` plus three non-negative costs:

      - fee:    ``taker_fee * |q| * price``
      - spread: ``half_spread * |q| * price`` (crossing half the bid-ask spread)
      - impact: ``impact_k * sigma * sqrt(|q| / V) * |q| * price``, the square-root law of
        Almgren et al. (2005) and Tóth et al. (2011), with ``sigma`` the recent per-bar
        volatility of log returns and ``V`` the bar volume in asset units.

    * Holding costs per bar, charged on the marked-to-market book:
      ``(borrow_rate * short_notional + margin_rate * borrowed_cash) / bars_per_year``.

These NumPy functions are the reference. The single env's fast path (:mod:`envs.market_fast`)
restates the action mapping, sizing and costs on Python floats, operation for operation;
``tests/test_market_fast.py`` pins it to this module bit for bit, so change both together.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from envs.errors import ConfigError, DataError

__all__ = [
    "ActionError",
    "ExecutionConfig",
    "OrderCosts",
    "continuous_to_target",
    "discrete_action_masks",
    "discrete_to_target",
    "holding_cost",
    "order_costs",
    "size_orders",
    "validate_positions",
    "weights_to_target",
]


class ActionError(DataError):
    """An action the env cannot interpret (NaN, wrong shape or dtype, index out of range)."""


@dataclass(frozen=True)
class ExecutionConfig:
    """Limits and cost parameters of the execution model (all fractions, not basis points).

    Attributes:
        taker_fee: fee per unit of traded notional (0.001 = 10 bp, a common spot taker fee).
        half_spread: half the relative bid-ask spread paid on every fill (0.0002 = 2 bp).
        impact_k: coefficient of the square-root impact law (of order 1 per Tóth et al. 2011).
        borrow_rate: annual rate paid on the notional of short positions.
        margin_rate: annual rate paid on borrowed cash (negative cash balance, i.e. leverage).
        max_leverage: largest gross exposure ``sum_i |exposure_i|`` a target may have.
        allow_short: whether negative exposures are allowed.
        lot_size: orders are rounded toward zero to a multiple of this many units (0 = none).
        min_notional: orders smaller than this notional are dropped, except orders that close a
            position completely (0 = none).
        rebalance_band: orders are dropped when the target exposure of an asset is within this
            distance of its current exposure and the target is not exactly flat (a no-trade band
            that stops constant-exposure targets from paying fees on every small price move;
            default 0.05, i.e. drift of under 5 percentage points is not traded back).
        latency: bars between a decision (made at a bar's close) and its fill (at a later bar's
            open); 1 = next bar's open. Must be >= 1: filling at the bar that was just observed
            is look-ahead.
    """

    taker_fee: float = 0.001
    half_spread: float = 0.0002
    impact_k: float = 1.0
    borrow_rate: float = 0.05
    margin_rate: float = 0.05
    max_leverage: float = 1.0
    allow_short: bool = True
    lot_size: float = 0.0
    min_notional: float = 0.0
    rebalance_band: float = 0.05
    latency: int = 1

    def __post_init__(self) -> None:
        nonneg = (
            "taker_fee",
            "half_spread",
            "impact_k",
            "borrow_rate",
            "margin_rate",
            "lot_size",
            "min_notional",
            "rebalance_band",
        )
        for name in nonneg:
            value = getattr(self, name)
            if not np.isfinite(value) or value < 0:
                raise ConfigError(f"execution.{name} must be a finite number >= 0, got {value!r}")
        if not np.isfinite(self.max_leverage) or self.max_leverage <= 0:
            raise ConfigError(f"execution.max_leverage must be > 0, got {self.max_leverage!r}")
        if int(self.latency) != self.latency or self.latency < 1:
            raise ConfigError(
                f"execution.latency must be an integer >= 1 (bars until the fill), "
                f"got {self.latency!r}"
            )


class OrderCosts(NamedTuple):
    """Per-row costs of a batch of orders, each ``(B,)`` in cash units (all >= 0)."""

    fee: np.ndarray
    spread: np.ndarray
    impact: np.ndarray
    notional: np.ndarray


# --- action -> target exposure ---------------------------------------------------------------


def discrete_to_target(
    action: np.ndarray, positions: np.ndarray, config: ExecutionConfig
) -> np.ndarray:
    """Map discrete action indices to single-asset target exposures.

    Masked actions (shorts when ``allow_short`` is False) taken anyway are clipped to flat, the
    nearest allowed exposure, rather than raising: random exploration then stays safe.

    Args:
        action: ``(B,)`` integer indices into ``positions``.
        positions: ``(K,)`` target exposures, one per action.
        config: execution limits.

    Returns:
        ``(B, 1)`` float64 target exposures.

    Raises:
        ActionError: a non-integer index or one outside ``[0, K)``.
    """
    action = np.asarray(action)
    if action.dtype.kind not in "iu":
        if (
            action.dtype.kind not in "fb"
            or not np.all(np.isfinite(action))
            or np.any(action != np.round(action))
        ):
            raise ActionError(f"discrete action must be an integer index, got {action!r}")
        action = action.astype(np.int64)
    if np.any(action < 0) or np.any(action >= positions.shape[0]):
        raise ActionError(
            f"discrete action must be in [0, {positions.shape[0]}), got {action.tolist()}"
        )
    target = positions[action]
    if not config.allow_short:
        target = np.maximum(target, 0.0)
    return target.reshape(-1, 1)


def discrete_action_masks(positions: np.ndarray, config: ExecutionConfig) -> np.ndarray:
    """Boolean mask over discrete actions (True = allowed), as sb3-contrib MaskablePPO wants."""
    mask = np.abs(positions) <= config.max_leverage + 1e-12
    if not config.allow_short:
        mask &= positions >= 0
    return mask


def _cap_gross(target: np.ndarray, max_leverage: float) -> np.ndarray:
    gross = np.abs(target).sum(axis=-1, keepdims=True)
    scale = np.where(gross > max_leverage, max_leverage / np.maximum(gross, 1e-300), 1.0)
    return target * scale


def continuous_to_target(action: np.ndarray, config: ExecutionConfig) -> np.ndarray:
    """Map normalised continuous actions to target exposures (documented clip, never an error).

    The action space is normalised (``[-1, 1]``, or ``[0, 1]`` without shorts, as SB3
    recommends); each entry is clipped to it and multiplied by ``max_leverage``. If the gross
    exposure then exceeds ``max_leverage`` (several assets), all exposures are scaled down by the
    same factor so the book stays within the leverage limit.

    Args:
        action: ``(B, N)`` finite actions.
        config: execution limits.

    Returns:
        ``(B, N)`` float64 target exposures in ``[-max_leverage, max_leverage]``.
    """
    low = -1.0 if config.allow_short else 0.0
    target = np.clip(np.asarray(action, dtype=np.float64), low, 1.0) * config.max_leverage
    return _cap_gross(target, config.max_leverage)


def weights_to_target(action: np.ndarray, config: ExecutionConfig) -> np.ndarray:
    """Project portfolio weights over ``N`` assets plus cash onto target exposures.

    Projection (L1 normalisation): the action ``a`` of length ``N + 1`` (last entry = cash) is
    clipped to ``[-1, 1]`` for assets (``[0, 1]`` without shorts) and ``[0, 1]`` for cash, then
    ``w = a / sum(|a|)``; an all-zero action means all cash. Asset exposures are
    ``w[:N] * max_leverage``, so the gross exposure never exceeds ``max_leverage`` and the cash
    weight is what is left unlevered.

    Args:
        action: ``(B, N + 1)`` raw weights.
        config: execution limits.

    Returns:
        ``(B, N)`` float64 target exposures.
    """
    a = np.asarray(action, dtype=np.float64)
    low = -1.0 if config.allow_short else 0.0
    assets = np.clip(a[:, :-1], low, 1.0)
    cash = np.clip(a[:, -1:], 0.0, 1.0)
    total = np.abs(assets).sum(axis=1, keepdims=True) + cash
    safe = np.where(total > 0, total, 1.0)
    return assets / safe * config.max_leverage


# --- target exposure -> orders ---------------------------------------------------------------


def size_orders(
    target: np.ndarray,
    units: np.ndarray,
    cash: np.ndarray,
    price: np.ndarray,
    config: ExecutionConfig,
) -> np.ndarray:
    """Orders (signed units) that move the book to the target exposures at ``price``.

    ``target_units = target * value / price`` with ``value = cash + sum(units * price)``. Orders
    are then rounded toward zero to ``lot_size`` (so they never overshoot the target), dropped
    inside the ``rebalance_band`` or under ``min_notional``; an order to a target of exactly 0
    always closes the whole position. Rows with NaN targets (no decision pending) or a
    non-positive value (ruined book) get no orders.

    Args:
        target: ``(B, N)`` target exposures (NaN = no order).
        units: ``(B, N)`` current holdings in asset units.
        cash: ``(B,)`` current cash.
        price: ``(B, N)`` fill reference prices (> 0).
        config: execution limits.

    Returns:
        ``(B, N)`` float64 signed order quantities.
    """
    value = cash + (units * price).sum(axis=1)
    tradable = np.isfinite(target) & (value > 0)[:, None]
    safe_target = np.where(tradable, target, 0.0)
    value_col = np.maximum(value, 0.0)[:, None]
    target_units = safe_target * value_col / price
    q = target_units - units
    if config.lot_size > 0:
        q = np.trunc(q / config.lot_size) * config.lot_size
    keep = tradable.copy()
    if config.rebalance_band > 0:
        current = units * price / np.where(value_col > 0, value_col, 1.0)
        keep &= np.abs(safe_target - current) >= config.rebalance_band
    if config.min_notional > 0:
        keep &= np.abs(q) * price >= config.min_notional
    closing = tradable & (safe_target == 0.0)
    q = np.where(closing, -units, np.where(keep, q, 0.0))
    return q


def order_costs(
    q: np.ndarray,
    price: np.ndarray,
    sigma: np.ndarray,
    volume: np.ndarray,
    config: ExecutionConfig,
) -> OrderCosts:
    """Fee, half-spread and square-root impact of a batch of market orders.

    Args:
        q: ``(B, N)`` signed order quantities (units).
        price: ``(B, N)`` fill reference prices.
        sigma: ``(B, N)`` per-bar volatility of log returns known before the fill.
        volume: ``(B, N)`` bar volume in units known before the fill (> 0).
        config: cost parameters.

    Returns:
        Per-row fee, spread, impact and traded notional, each ``(B,)``.
    """
    size = np.abs(q)
    notional = size * price
    # Square-root impact (Almgren et al. 2005; Tóth et al. 2011): cost per unit notional is
    # k * sigma * sqrt(|q| / V), so the cash cost grows as |q|^1.5.
    impact = config.impact_k * sigma * np.sqrt(size / volume) * notional
    return OrderCosts(
        fee=config.taker_fee * notional.sum(axis=1),
        spread=config.half_spread * notional.sum(axis=1),
        impact=impact.sum(axis=1),
        notional=notional.sum(axis=1),
    )


def holding_cost(
    units: np.ndarray,
    cash: np.ndarray,
    price: np.ndarray,
    bars_per_year: float,
    config: ExecutionConfig,
) -> np.ndarray:
    """Borrow cost of shorts plus margin interest on borrowed cash for one bar, ``(B,)``."""
    short_notional = np.maximum(-units, 0.0) * price
    borrowed = np.maximum(-cash, 0.0)
    per_bar = 1.0 / bars_per_year
    return (config.borrow_rate * short_notional.sum(axis=1) + config.margin_rate * borrowed) * (
        per_bar
    )


def validate_positions(positions: Sequence[float], config: ExecutionConfig) -> np.ndarray:
    """Check a list of discrete target exposures against the limits and return it as an array."""
    arr = np.asarray(positions, dtype=np.float64).reshape(-1)
    if arr.size < 2:
        raise ConfigError(f"positions needs at least two target exposures, got {list(positions)}")
    if not np.all(np.isfinite(arr)):
        raise ConfigError(f"positions must be finite, got {list(positions)}")
    if np.any(np.abs(arr) > config.max_leverage + 1e-12):
        raise ConfigError(
            f"positions {arr.tolist()} exceed max_leverage={config.max_leverage}; raise "
            "max_leverage or use smaller exposures"
        )
    return arr
