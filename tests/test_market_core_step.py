"""step_core (fused for speed, issue 3) equals the execution module's reference functions.

``envs.market_core.step_core`` restates ``size_orders``, ``order_costs`` and ``holding_cost``
(envs/execution.py) with shared intermediates and without length-1 reductions. The reference
below is the plain composition of those functions (the step as it was first written); the two
are compared bit for bit (``-0.0`` and ``+0.0`` told apart) on random states with the edge
values that exercise every branch: flat, ``-0.0`` and NaN holdings, zero and negative cash,
ruined books, NaN targets (nothing pending), exact-zero targets.
"""

from __future__ import annotations

import numpy as np
import pytest
from test_market_fast import FEATURES, REWARDS, volatile_dataset  # tests/ is on sys.path

from envs.execution import holding_cost, order_costs, size_orders
from envs.market_core import (
    CoreState,
    StepOutput,
    initial_state,
    portfolio_block_and_exposure,
    step_and_portfolio,
    step_core,
    step_tables,
)
from envs.market_env import build_market_setup
from envs.rewards import RewardContext


def reference_step(arrays, params, reward, state, target):
    """The step as a plain composition of the execution module's functions."""
    cfg = params.execution
    s = np.minimum(state.t + 1, arrays.n_bars - 1)
    before = s - 1
    if cfg.latency > 1:
        executed = state.pending[:, 0]
        pending = np.concatenate([state.pending[:, 1:], target[:, None, :]], axis=1)
    else:
        executed, pending = target, state.pending
    price = arrays.open[s]
    q = size_orders(executed, state.units, state.cash, price, cfg)
    costs = order_costs(q, price, arrays.sigma[before], arrays.volume[before], cfg)
    trade_cost = costs.fee + costs.spread + costs.impact
    cash = state.cash - (q * price).sum(axis=1) - trade_cost
    units = state.units + q
    old_sign, new_sign = np.sign(state.units), np.sign(units)
    same_sign = new_sign == old_sign
    flat = new_sign == 0.0
    adding = (np.abs(units) > np.abs(state.units)) & same_sign
    averaged = (state.units * state.entry_price + q * price) / np.where(flat, 1.0, units)
    entry = np.where(adding, averaged, state.entry_price)
    entry = np.where(~same_sign, price, entry)
    entry[flat] = 0.0
    close = arrays.close[s]
    funding = holding_cost(units, cash, close, arrays.bars_per_year, cfg)
    cash = cash - funding
    value = cash + (units * close).sum(axis=1)
    peak = np.maximum(state.peak, value)
    log_return = np.log(np.maximum(value / state.value, 1e-8))
    safe = np.where(np.abs(value) > 1e-12, value, 1e-12)
    ctx = RewardContext(
        log_return=log_return,
        value=value,
        prev_value=state.value,
        peak=peak,
        prev_peak=state.peak,
        turnover=costs.notional / state.value,
        cost=trade_cost + funding,
        benchmark_log_return=arrays.benchmark_log_return[s],
        exposure=units * close / safe[:, None],
    )
    rew, reward_state = reward(ctx, state.reward_state)
    in_trade = ~flat.all(axis=1)
    time_in_trade = np.where(same_sign.all(axis=1), state.time_in_trade + 1, 1) * in_trade
    n_trades = (q != 0.0).sum(axis=1)
    terminated = value <= 0.0
    if params.max_drawdown is not None:
        terminated |= value < peak * (1.0 - params.max_drawdown)
    truncated = (s >= state.end) & ~terminated
    new = CoreState(
        s,
        state.end,
        state.steps + 1,
        cash,
        units,
        entry,
        value,
        peak,
        time_in_trade,
        target,
        pending,
        state.fees + costs.fee,
        state.spread + costs.spread,
        state.impact + costs.impact,
        state.funding + funding,
        state.trades + n_trades,
        state.traded_notional + costs.notional,
        reward_state,
    )
    return new, StepOutput(rew, terminated, truncated, trade_cost + funding, n_trades)


def assert_bits_equal(got: np.ndarray, want: np.ndarray, what: str) -> None:
    """Equal values with the same dtype, shape and sign of zero (NaN equals NaN)."""
    got, want = np.asarray(got), np.asarray(want)
    assert got.dtype == want.dtype and got.shape == want.shape, what
    np.testing.assert_array_equal(got, want, err_msg=what)
    if got.dtype.kind == "f":
        zero = want == 0.0
        np.testing.assert_array_equal(np.signbit(got[zero]), np.signbit(want[zero]), what)


def random_state(rng: np.random.Generator, base: CoreState, arrays, n: int) -> CoreState:
    """A state with every edge value the step branches on, at random valid bars."""
    batch = base.t.shape[0]
    pick = lambda choices, shape: rng.choice(np.array(choices), size=shape)  # noqa: E731
    units = rng.normal(0.0, 20.0, (batch, n))
    units = np.where(rng.random((batch, n)) < 0.3, pick([0.0, -0.0, np.nan], (batch, n)), units)
    cash = rng.normal(1000.0, 3000.0, batch)
    cash = np.where(rng.random(batch) < 0.3, pick([0.0, -0.0, -500.0, 1e5], batch), cash)
    t = rng.integers(arrays.first_decision, arrays.n_bars, batch)
    value = cash + (units * arrays.close[t]).sum(axis=1)
    value = np.where(rng.random(batch) < 0.1, pick([0.0, -10.0, 1e-13], batch), value)
    return base._replace(
        t=t,
        end=t + rng.integers(0, 3, batch),
        cash=cash,
        units=units,
        entry_price=np.where(units == 0.0, 0.0, arrays.close[t] * rng.uniform(0.8, 1.2)),
        value=value,
        peak=np.maximum(value, rng.uniform(0.0, 1.5e4, batch)),
        time_in_trade=rng.integers(0, 9, batch),
    )


def random_target(rng: np.random.Generator, batch: int, n: int, lev: float) -> np.ndarray:
    target = rng.uniform(-lev, lev, (batch, n)) / n
    edge = rng.choice(np.array([0.0, -0.0, np.nan, lev]), size=(batch, n))
    return np.where(rng.random((batch, n)) < 0.3, edge, target)


@pytest.mark.parametrize("n_assets", [1, 2, 3])
def test_step_core_equals_reference_bit_for_bit(n_assets: int) -> None:
    rng = np.random.default_rng(40 + n_assets)
    dataset = volatile_dataset(n_assets=n_assets, seed=n_assets)
    batch = 64
    for k in range(12):
        kwargs = dict(
            dataset=dataset,
            features=FEATURES,
            window=8,
            episode_length=20,
            action_mode="continuous",
            reward=REWARDS[k % len(REWARDS)],
            max_leverage=float(rng.choice([1.0, 2.5])),
            latency=int(rng.choice([1, 2])),
            lot_size=float(rng.choice([0.0, 0.7])),
            min_notional=float(rng.choice([0.0, 400.0])),
            rebalance_band=float(rng.choice([0.0, 0.05])),
            impact_k=float(rng.choice([0.0, 1.5])),
            borrow_rate=float(rng.choice([0.0, 0.3])),
            margin_rate=float(rng.choice([0.0, 0.2])),
            max_drawdown=[None, 0.2][k % 2],
        )
        setup = build_market_setup(**kwargs)
        arrays, params, reward = setup.arrays, setup.params, setup.reward
        tables = step_tables(arrays, params)
        starts = np.full(batch, arrays.first_decision)
        base = initial_state(arrays, params, reward, starts, starts + 20)
        state = random_state(rng, base, arrays, n_assets)
        lev = params.execution.max_leverage
        for _ in range(4):  # a few chained steps: pending orders and reward state move on
            target = random_target(rng, batch, n_assets, lev)
            with np.errstate(all="ignore"):
                want, want_out = reference_step(arrays, params, reward, state, target)
                got, got_out = step_core(arrays, params, reward, state, target)
                fast, fast_out, block, exposure = step_and_portfolio(
                    arrays, params, reward, state, target, tables
                )
                want_block, want_exposure = portfolio_block_and_exposure(
                    want, arrays, params.window
                )
            for result, out in ((got, got_out), (fast, fast_out)):
                for name in CoreState._fields[:-1]:
                    assert_bits_equal(getattr(result, name), getattr(want, name), name)
                for key, arr in want.reward_state.items():
                    assert_bits_equal(result.reward_state[key], arr, key)
                for name in StepOutput._fields:
                    assert_bits_equal(getattr(out, name), getattr(want_out, name), name)
            assert_bits_equal(block, want_block, "portfolio block")
            assert_bits_equal(exposure, want_exposure, "exposure")
            state = want._replace(t=np.minimum(want.t, arrays.n_bars - 2))


def test_single_asset_sums_equal_numpy_sums() -> None:
    """The reduction-free sums keep NumPy's bits: a sum starts from +0.0 (-0.0 -> +0.0)."""
    from envs.market_core import _row_all, _row_sum, _row_sum_nonneg

    col = np.array([[-0.0], [0.0], [np.nan], [-np.inf], [np.inf], [-3.5], [5e-324]])
    assert_bits_equal(_row_sum(col), col.sum(axis=1), "sum of one asset")
    nonneg = np.abs(col)
    assert_bits_equal(_row_sum_nonneg(nonneg), nonneg.sum(axis=1), "sum of |x|")
    wide = np.random.default_rng(0).normal(size=(5, 3))
    assert_bits_equal(_row_sum(wide), wide.sum(axis=1), "sum of three assets")
    flags = np.array([[True], [False]])
    assert_bits_equal(_row_all(flags), flags.all(axis=1), "all of one asset")
