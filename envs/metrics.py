"""Episode performance metrics shared by the envs, the trainer and the backtest.

Sharpe and Sortino are annualised by ``sqrt(bars_per_year)`` of the data's frequency; max drawdown
is measured on the equity curve; Calmar is annualised return over ``|max drawdown|``
(see ``DOMAIN.md``: Episode metrics).
"""

from __future__ import annotations

import numpy as np


def max_drawdown(equity: np.ndarray) -> float:
    """Largest peak-to-trough fall of an equity curve, as a non-positive fraction (e.g. -0.25)."""
    equity = np.asarray(equity, dtype=np.float64)
    if equity.size == 0:
        return 0.0
    peaks = np.maximum.accumulate(equity)
    with np.errstate(divide="ignore", invalid="ignore"):
        dd = np.where(peaks > 0, equity / peaks - 1.0, 0.0)
    return float(min(dd.min(), 0.0))


def episode_metrics(
    equity: np.ndarray, bars_per_year: float, turnover: float = 0.0
) -> dict[str, float]:
    """Return, Sharpe, Sortino, max drawdown, Calmar and turnover of one equity curve.

    Args:
        equity: portfolio values, starting with the initial value (length steps + 1).
        bars_per_year: bars per year of the data, for annualisation.
        turnover: total traded notional divided by the initial value, passed through.

    Returns:
        A dict with keys ``return``, ``sharpe``, ``sortino``, ``max_drawdown``, ``calmar``,
        ``turnover``. Ratios are 0 when undefined (flat equity, fewer than two points).
    """
    equity = np.asarray(equity, dtype=np.float64)
    out = {
        "return": 0.0,
        "sharpe": 0.0,
        "sortino": 0.0,
        "max_drawdown": 0.0,
        "calmar": 0.0,
        "turnover": float(turnover),
    }
    if equity.size < 2 or equity[0] <= 0:
        return out
    total = float(equity[-1] / equity[0] - 1.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        rets = np.diff(equity) / equity[:-1]
    rets = rets[np.isfinite(rets)]
    out["return"] = total
    out["max_drawdown"] = max_drawdown(equity)
    if rets.size >= 2:
        ann = np.sqrt(bars_per_year)
        std = rets.std(ddof=1)
        if std > 1e-12:
            out["sharpe"] = float(rets.mean() / std * ann)
        downside = np.sqrt(np.mean(np.minimum(rets, 0.0) ** 2))
        if downside > 1e-12:
            out["sortino"] = float(rets.mean() / downside * ann)
    years = (equity.size - 1) / bars_per_year
    if years > 0 and equity[-1] > 0:
        ann_ret = float((equity[-1] / equity[0]) ** (1.0 / years) - 1.0)
        if out["max_drawdown"] < -1e-12:
            out["calmar"] = ann_ret / abs(out["max_drawdown"])
    return out
