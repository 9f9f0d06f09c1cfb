"""Predictor blocks carry their column names into the envs' flat observation names."""

from __future__ import annotations

import numpy as np
import pytest

from envs.arbitrage_env import ArbitrageEnv
from envs.data.defi import generate_scenario
from envs.data.synthetic import gbm
from envs.errors import ConfigError
from envs.market_env import MarketTradingEnv
from envs.vector_arbitrage import ArbitrageVectorEnv

COLS = ["pred_x_mean_h1", "pred_x_std_h1", "pred_x_valid"]


def test_market_env_names_predictor_columns() -> None:
    ds = gbm(n_bars=400, seed=0)
    block = np.zeros((len(ds), 3), np.float32)
    env = MarketTradingEnv(
        dataset=ds,
        episode_length=50,
        flatten=True,
        predictor_blocks={"pred_x": block},
        predictor_columns={"pred_x": COLS},
    )
    names = env.unwrapped.setup.builder.flat_feature_names()
    assert [n for n in names if n.startswith("pred_x[")] == [f"pred_x[{c}]" for c in COLS]
    with pytest.raises(ConfigError, match="width 3"):
        MarketTradingEnv(
            dataset=ds, predictor_blocks={"pred_x": block}, predictor_columns={"pred_x": COLS[:2]}
        )
    with pytest.raises(ConfigError, match="unknown blocks"):
        MarketTradingEnv(
            dataset=ds, predictor_blocks={"pred_x": block}, predictor_columns={"pred_y": COLS}
        )


def test_arbitrage_envs_name_predictor_columns() -> None:
    scen = generate_scenario(np.random.default_rng(0), 300, 1)
    block = np.zeros((len(scen), 3), np.float32)
    kw = {
        "scenario": scen,
        "episode_length": 50,
        "flatten": True,
        "predictor_blocks": {"pred_x": block},
        "predictor_columns": {"pred_x": COLS},
    }
    expected = [f"pred_x[{c}]" for c in COLS]
    for env in (ArbitrageEnv(**kw), ArbitrageVectorEnv(num_envs=2, **kw)):
        names = env.builder.flat_feature_names()
        assert [n for n in names if n.startswith("pred_x[")] == expected
    with pytest.raises(ConfigError, match="width 3"):
        ArbitrageEnv(**{**kw, "predictor_columns": {"pred_x": COLS[:1]}})
