"""envs.market_accounting: the column split, parameters and auxiliary inputs of MarketTrading-v0."""

from __future__ import annotations

import numpy as np
import pytest
from test_market_vector import FEATURES, gbm_dataset  # tests/ is on sys.path

from envs.errors import ConfigError
from envs.market_accounting import (
    AUXILIARY_COLUMNS,
    PORTFOLIO_COLUMNS,
    accounting_spec,
    auxiliary_inputs,
)
from envs.market_env import MarketTradingEnv


def make(**kwargs) -> MarketTradingEnv:
    base = dict(
        dataset=gbm_dataset(n_bars=200),
        features=FEATURES,
        window=4,
        episode_length=30,
        action_mode="continuous",
        flatten=True,
        predictor_blocks={"pred": np.linspace(-1, 1, 400).reshape(200, 2)},
    )
    base.update(kwargs)
    return MarketTradingEnv(**base)


def test_spec_splits_columns_and_reads_parameters() -> None:
    env = make(taker_fee=0.002, half_spread=0.001, borrow_rate=0.1, max_leverage=2.0)
    spec = accounting_spec(env)
    slices = env.setup.builder.flat_slices
    assert spec.obs_dim == env.observation_space.shape[0] == 4 * 3 + 2 + 5
    assert spec.exogenous_blocks == ("market", "pred")
    assert spec.exogenous == tuple(range(0, 14))
    assert spec.portfolio == slices["portfolio"] == slice(14, 19)
    names = env.observation_builder.flat_feature_names()
    assert [n.split("[")[-1].rstrip("]") for n in names[spec.portfolio]] == list(PORTFOLIO_COLUMNS)
    assert (spec.taker_fee, spec.half_spread, spec.borrow_rate) == (0.002, 0.001, 0.1)
    assert spec.max_leverage == 2.0 and spec.action_low == -1.0 and spec.window == 4
    assert spec.bars_per_year == pytest.approx(365.25 * 24, rel=1e-3)
    assert spec.reward == "log_return" and spec.n_auxiliary == len(AUXILIARY_COLUMNS) == 3
    assert accounting_spec(make(allow_short=False)).action_low == 0.0
    turnover = accounting_spec(make(reward="turnover", reward_kwargs={"turnover_coef": 0.3}))
    assert (turnover.reward, turnover.reward_coef) == ("turnover", 0.3)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(action_mode="discrete"), "action_mode"),
        (dict(flatten=False), "flatten"),
        (dict(latency=2), "latency"),
        (dict(lot_size=0.1), "lot_size"),
        (dict(min_notional=5.0), "min_notional"),
        (dict(max_drawdown=0.5), "max_drawdown"),
        (dict(reward="differential_sharpe"), "differential_sharpe"),
        (dict(dataset=gbm_dataset(n_bars=200, n_assets=2)), "2 assets"),
    ],
)
def test_unsupported_settings_are_config_errors(kwargs: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        accounting_spec(make(**kwargs))


def test_not_a_market_env_and_not_reset() -> None:
    with pytest.raises(ConfigError, match="MarketTradingEnv"):
        accounting_spec(object())
    with pytest.raises(ConfigError, match="reset"):
        auxiliary_inputs(make())


def test_auxiliary_inputs_are_the_next_bar_of_the_data() -> None:
    env = make(impact_k=0.7)
    env.reset(seed=3)
    arrays = env.setup.arrays
    for _ in range(3):
        t = int(env.state.t[0])
        value = float(env.state.value[0])
        aux = auxiliary_inputs(env)
        assert aux[0] == pytest.approx(np.log(arrays.open[t + 1, 0] / arrays.close[t, 0]))
        assert aux[1] == pytest.approx(np.log(arrays.close[t + 1, 0] / arrays.close[t, 0]))
        scale = (
            0.7 * arrays.sigma[t, 0] * np.sqrt(value / (arrays.close[t, 0] * arrays.volume[t, 0]))
        )
        assert aux[2] == pytest.approx(scale)
        env.step(np.array([0.5], dtype=np.float32))
