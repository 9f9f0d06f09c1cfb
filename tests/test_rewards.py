"""Reward library: formulas, state handling, custom callables, errors."""

from __future__ import annotations

import numpy as np
import pytest

from envs.errors import ConfigError
from envs.rewards import REWARDS, RewardContext, make_reward


def _ctx(
    log_return, value=None, prev_value=None, peak=None, prev_peak=None, turnover=0.0, bench=0.0
):
    r = np.atleast_1d(np.asarray(log_return, dtype=np.float64))
    ones = np.ones_like(r)
    value = ones * (1.0 if value is None else value)
    prev_value = ones * (1.0 if prev_value is None else prev_value)
    return RewardContext(
        log_return=r,
        value=value,
        prev_value=prev_value,
        peak=ones * (max(value.max(), 1.0) if peak is None else peak),
        prev_peak=ones * (1.0 if prev_peak is None else prev_peak),
        turnover=ones * turnover,
        cost=ones * 0.0,
        benchmark_log_return=ones * bench,
        exposure=np.zeros((r.shape[0], 1)),
    )


def test_library_names() -> None:
    assert set(REWARDS) == {
        "log_return",
        "differential_sharpe",
        "sortino",
        "drawdown",
        "turnover",
        "excess_buy_and_hold",
    }


def test_differential_sharpe_matches_moody_saffell() -> None:
    eta = 0.1
    reward = make_reward("differential_sharpe", {"eta": eta})
    rets = np.random.default_rng(3).normal(0.001, 0.01, size=50)
    state = reward.init_state(1)
    a = b = 0.0
    for r in rets:
        got, state = reward(_ctx(r), state)
        var = b - a * a
        want = 0.0 if var <= 1e-12 else (b * (r - a) - 0.5 * a * (r * r - b)) / var**1.5
        assert got[0] == pytest.approx(want, rel=1e-12, abs=1e-15)
        a, b = a + eta * (r - a), b + eta * (r * r - b)
    assert state["A"][0] == pytest.approx(a) and state["B"][0] == pytest.approx(b)


def test_differential_sharpe_guard_and_row_reset() -> None:
    reward = make_reward("differential_sharpe")
    state = reward.init_state(2)
    out, state = reward(_ctx([0.01, -0.02]), state)
    assert np.all(out == 0.0)  # variance estimate is 0 on the first step
    state = reward.reset_rows(state, np.array([True, False]))
    assert state["A"][0] == 0.0 and state["A"][1] != 0.0


def test_penalty_rewards() -> None:
    r = np.array([0.02, -0.01])
    sortino, _ = make_reward("sortino", {"downside_coef": 2.0})(_ctx(r), {})
    np.testing.assert_allclose(sortino, [0.02, -0.03])
    turnover, _ = make_reward("turnover", {"turnover_coef": 0.01})(_ctx(r, turnover=2.0), {})
    np.testing.assert_allclose(turnover, r - 0.02)
    excess, _ = make_reward("excess_buy_and_hold")(_ctx(r, bench=0.005), {})
    np.testing.assert_allclose(excess, r - 0.005)
    # Drawdown deepens from 10% to 20%: penalty 0.1 * coef.
    ctx = _ctx(np.log(0.8 / 0.9), value=0.8, prev_value=0.9, peak=1.0, prev_peak=1.0)
    dd, _ = make_reward("drawdown", {"drawdown_coef": 3.0})(ctx, {})
    assert dd[0] == pytest.approx(np.log(0.8 / 0.9) - 0.3)
    # A recovery is not penalised.
    ctx = _ctx(np.log(0.9 / 0.8), value=0.9, prev_value=0.8, peak=1.0, prev_peak=1.0)
    dd, _ = make_reward("drawdown", {"drawdown_coef": 3.0})(ctx, {})
    assert dd[0] == pytest.approx(np.log(0.9 / 0.8))


def _half_return(ctx: RewardContext) -> np.ndarray:
    return 0.5 * ctx.log_return


def test_custom_callable() -> None:
    reward = make_reward(_half_return)
    out, _ = reward(_ctx([0.02, 0.04]), {})
    np.testing.assert_allclose(out, [0.01, 0.02])
    with pytest.raises(ConfigError, match="shape"):
        make_reward(lambda ctx: np.zeros(5))(_ctx([0.1, 0.2]), {})
    with pytest.raises(ConfigError, match="non-finite"):
        make_reward(lambda ctx: np.nan)(_ctx([0.1]), {})


def test_bad_reward_config() -> None:
    with pytest.raises(ConfigError, match="one of"):
        make_reward("sharpe_please")
    with pytest.raises(ConfigError, match="reward_kwargs"):
        make_reward("sortino", {"nope": 1})
    with pytest.raises(ConfigError, match="eta"):
        make_reward("differential_sharpe", {"eta": 0.0})
