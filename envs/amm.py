"""Constant-product (Uniswap v2) pool maths: exact formulas on scalars or NumPy arrays.

Conventions: a pool holds ``x`` of the base token X (e.g. ETH) and ``y`` of the quote token Y
(e.g. USDC); prices are in Y per X; ``fee`` is the LP fee (0.0005, 0.003, 0.01) and ``g = 1 - fee``.
The fee is charged on the input amount and stays in the pool, so ``k = x * y`` never decreases
(Adams et al., "Uniswap v2 Core", 2020; DOMAIN.md: Constant product).

Every function broadcasts over its arguments, so a batch of pools (or envs) is one call. Trade sizes
are always non-negative amounts; the direction is part of the function name. A concentrated-
liquidity pool can later sit beside this module with the same function names.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike

__all__ = [
    "amount_in_for_out",
    "amount_out",
    "arb_buy_x_profit",
    "arb_sell_x_profit",
    "effective_price",
    "max_out_for_in",
    "optimal_buy_x",
    "optimal_sell_x",
    "optimal_two_pool",
    "price_impact",
    "spot_price",
    "swap_reserves",
    "two_pool_profit",
]


def _f(a: ArrayLike) -> np.ndarray:
    return np.asarray(a, dtype=np.float64)


def spot_price(x: ArrayLike, y: ArrayLike) -> np.ndarray:
    """Marginal price of X in Y without the fee: ``y / x``."""
    return _f(y) / _f(x)


def amount_out(
    amount_in: ArrayLike, reserve_in: ArrayLike, reserve_out: ArrayLike, fee: ArrayLike
) -> np.ndarray:
    """Output for an exact input: ``out = r_out * g * a / (r_in + g * a)`` with ``g = 1 - fee``."""
    a = _f(amount_in)
    g = 1.0 - _f(fee)
    return _f(reserve_out) * g * a / (_f(reserve_in) + g * a)


def amount_in_for_out(
    amount_out_: ArrayLike, reserve_in: ArrayLike, reserve_out: ArrayLike, fee: ArrayLike
) -> np.ndarray:
    """Input needed for an exact output: ``a = r_in * o / (g * (r_out - o))``.

    The inverse of :func:`amount_out`. Returns ``inf`` when ``o >= r_out`` (the pool cannot pay it).
    """
    o = _f(amount_out_)
    g = 1.0 - _f(fee)
    r_out = _f(reserve_out)
    with np.errstate(divide="ignore", invalid="ignore"):
        need = _f(reserve_in) * o / (g * (r_out - o))
    return np.where(o < r_out, need, np.inf)


def max_out_for_in(
    budget_in: ArrayLike, reserve_in: ArrayLike, reserve_out: ArrayLike, fee: ArrayLike
) -> np.ndarray:
    """Largest exact output affordable with ``budget_in`` of input (same as :func:`amount_out`)."""
    return amount_out(np.maximum(_f(budget_in), 0.0), reserve_in, reserve_out, fee)


def effective_price(
    amount_in: ArrayLike, reserve_in: ArrayLike, reserve_out: ArrayLike, fee: ArrayLike
) -> np.ndarray:
    """Average execution price in input per output unit: ``amount_in / amount_out``."""
    return _f(amount_in) / amount_out(amount_in, reserve_in, reserve_out, fee)


def price_impact(
    amount_in: ArrayLike, reserve_in: ArrayLike, reserve_out: ArrayLike, fee: ArrayLike
) -> np.ndarray:
    """Relative cost of a trade beyond the spot price, fee included: ``eff / spot - 1``.

    With spot ``r_in / r_out`` (input per output), this is exactly
    ``(r_in + g * a) / (g * r_in) - 1 = fee / g + a / r_in``: the fee plus the size-linear impact.
    """
    a = _f(amount_in)
    g = 1.0 - _f(fee)
    r_in = _f(reserve_in)
    return (r_in + g * a) / (g * r_in) - 1.0


def swap_reserves(
    amount_in: ArrayLike, reserve_in: ArrayLike, reserve_out: ArrayLike, fee: ArrayLike
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Execute an exact-input swap: ``(new_reserve_in, new_reserve_out, amount_out)``.

    The whole input (fee included) enters the pool, so ``k`` grows by the fee.
    """
    out = amount_out(amount_in, reserve_in, reserve_out, fee)
    return _f(reserve_in) + _f(amount_in), _f(reserve_out) - out, out


def arb_buy_x_profit(
    dx: ArrayLike, x: ArrayLike, y: ArrayLike, fee: ArrayLike, p_sell: ArrayLike
) -> np.ndarray:
    """Profit in Y of buying exactly ``dx`` X from the pool and selling it at ``p_sell``.

    ``p_sell`` is the net reference price received per X (CEX bid after taker fee).
    """
    return _f(p_sell) * _f(dx) - amount_in_for_out(dx, y, x, fee)


def arb_sell_x_profit(
    dx: ArrayLike, x: ArrayLike, y: ArrayLike, fee: ArrayLike, p_buy: ArrayLike
) -> np.ndarray:
    """Profit in Y of buying ``dx`` X at ``p_buy`` (CEX ask after fee), selling it to the pool."""
    return amount_out(dx, x, y, fee) - _f(p_buy) * _f(dx)


def optimal_buy_x(
    x: ArrayLike, y: ArrayLike, fee: ArrayLike, p_sell: ArrayLike
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Closed-form best trade buying X from the pool and selling it at ``p_sell``.

    Profit as a function of the Y paid in, ``P(dy) = p * x*g*dy/(y + g*dy) - dy``, is concave and
    maximised at ``dy* = (sqrt(p*x*g*y) - y) / g``, positive only when ``p*g*x > y``
    (DOMAIN.md: Optimal arbitrage against a reference price).

    Returns:
        ``(dy_in, dx_out, profit)``, all zero where there is no profitable trade.
    """
    x, y, p = _f(x), _f(y), _f(p_sell)
    g = 1.0 - _f(fee)
    dy = np.maximum((np.sqrt(p * x * g * y) - y) / g, 0.0)
    dx = amount_out(dy, y, x, fee)
    profit = p * dx - dy
    ok = profit > 0  # rounding dust at a zero gap is not an opportunity
    return np.where(ok, dy, 0.0), np.where(ok, dx, 0.0), np.where(ok, profit, 0.0)


def optimal_sell_x(
    x: ArrayLike, y: ArrayLike, fee: ArrayLike, p_buy: ArrayLike
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Closed-form best trade buying X at ``p_buy`` and selling it to the pool.

    ``P(dx) = y*g*dx/(x + g*dx) - p*dx`` has ``P'(dx) = x*y*g/(x + g*dx)^2 - p``, so
    ``dx* = (sqrt(x*y*g/p) - x) / g``, positive only when ``y*g > p*x``.

    Returns:
        ``(dx_in, dy_out, profit)``, all zero where there is no profitable trade.
    """
    x, y, p = _f(x), _f(y), _f(p_buy)
    g = 1.0 - _f(fee)
    dx = np.maximum((np.sqrt(x * y * g / p) - x) / g, 0.0)
    dy = amount_out(dx, x, y, fee)
    profit = dy - p * dx
    ok = profit > 0
    return np.where(ok, dx, 0.0), np.where(ok, dy, 0.0), np.where(ok, profit, 0.0)


def two_pool_profit(
    dx: ArrayLike,
    x_buy: ArrayLike,
    y_buy: ArrayLike,
    fee_buy: ArrayLike,
    x_sell: ArrayLike,
    y_sell: ArrayLike,
    fee_sell: ArrayLike,
) -> np.ndarray:
    """Profit in Y of buying exactly ``dx`` X from one pool and selling it into another."""
    return amount_out(dx, x_sell, y_sell, fee_sell) - amount_in_for_out(dx, y_buy, x_buy, fee_buy)


def optimal_two_pool(
    x_buy: ArrayLike,
    y_buy: ArrayLike,
    fee_buy: ArrayLike,
    x_sell: ArrayLike,
    y_sell: ArrayLike,
    fee_sell: ArrayLike,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Closed-form best DEX-DEX trade: pay Y into the buy pool, route the X into the sell pool.

    Two constant-product swaps compose into one (a Moebius map): Y -> X -> Y behaves like a single
    pool with input fee ``g_a`` and virtual reserves ``E_in = y_a*x_b / (x_b + g_b*x_a)``,
    ``E_out = g_b*x_a*y_b / (x_b + g_b*x_a)`` (the "virtual pool" of path routing, e.g.
    Angeris et al. 2020 / Zhou et al. 2021). The round trip then has the same closed form as
    :func:`optimal_buy_x` with price 1: ``dy* = (sqrt(E_in*E_out*g_a) - E_in) / g_a``.

    Returns:
        ``(dy_in, dx_routed, profit)``, all zero where there is no profitable route.
    """
    xa, ya, xb, yb = _f(x_buy), _f(y_buy), _f(x_sell), _f(y_sell)
    ga = 1.0 - _f(fee_buy)
    gb = 1.0 - _f(fee_sell)
    denom = xb + gb * xa
    e_in = ya * xb / denom
    e_out = gb * xa * yb / denom
    dy = np.maximum((np.sqrt(e_in * e_out * ga) - e_in) / ga, 0.0)
    dx = amount_out(dy, ya, xa, fee_buy)
    profit = amount_out(dx, xb, yb, fee_sell) - dy
    ok = profit > 0
    return np.where(ok, dy, 0.0), np.where(ok, dx, 0.0), np.where(ok, profit, 0.0)
