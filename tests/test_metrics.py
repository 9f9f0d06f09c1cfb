"""Episode metrics against hand-computed values."""

import numpy as np

from envs.metrics import episode_metrics, max_drawdown


def test_max_drawdown_hand_example() -> None:
    assert max_drawdown(np.array([100.0, 120.0, 90.0, 130.0, 117.0])) == -0.25


def test_flat_equity_has_zero_ratios() -> None:
    m = episode_metrics(np.full(10, 5.0), bars_per_year=252)
    assert m["return"] == 0.0 and m["sharpe"] == 0.0 and m["max_drawdown"] == 0.0


def test_sharpe_and_sortino_annualised() -> None:
    equity = np.array([1.0, 1.01, 1.0, 1.02, 1.03])
    rets = np.diff(equity) / equity[:-1]
    m = episode_metrics(equity, bars_per_year=252, turnover=1.5)
    assert np.isclose(m["sharpe"], rets.mean() / rets.std(ddof=1) * np.sqrt(252))
    downside = np.sqrt(np.mean(np.minimum(rets, 0) ** 2))
    assert np.isclose(m["sortino"], rets.mean() / downside * np.sqrt(252))
    assert np.isclose(m["return"], 0.03)
    assert m["turnover"] == 1.5
    assert m["calmar"] > 0
