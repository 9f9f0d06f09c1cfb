"""MarketTrading-v0 (single env): checker, determinism, accounting, no look-ahead, bad input."""

from __future__ import annotations

import pickle
import warnings

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

import envs  # noqa: F401  (registers the ids)
from envs.data.dataset import MarketDataset
from envs.errors import ConfigError, DataError
from envs.execution import ActionError
from envs.market_env import MarketTradingEnv

HOUR_NS = 3600 * 10**9


def _warnings_as_errors() -> None:
    """Every warning is an error (check_env rebuilds the env, so features are recomputed too)."""
    warnings.simplefilter("error")


BARS_PER_YEAR = 365.25 * 24
FEATURES = ("logret_1", "logret_4", "rvol_8", "rsi_14")
NO_COSTS = dict(taker_fee=0.0, half_spread=0.0, impact_k=0.0, borrow_rate=0.0, margin_rate=0.0)


def gbm_dataset(n_bars: int = 300, n_assets: int = 1, seed: int = 0) -> MarketDataset:
    """Small hourly GBM OHLCV dataset, built inline so tests need no data files."""
    rng = np.random.default_rng(seed)
    rets = rng.normal(0.0, 0.01, size=(n_bars, n_assets))
    close = 100.0 * np.exp(np.cumsum(rets, axis=0))
    open_ = np.vstack([close[:1], close[:-1]]) * np.exp(rng.normal(0, 0.002, (n_bars, n_assets)))
    high = np.maximum(open_, close) * (1 + rng.uniform(0, 0.003, (n_bars, n_assets)))
    low = np.minimum(open_, close) * (1 - rng.uniform(0, 0.003, (n_bars, n_assets)))
    volume = rng.lognormal(8.0, 0.3, (n_bars, n_assets))
    return MarketDataset(
        timestamps=np.arange(n_bars, dtype=np.int64) * HOUR_NS,
        symbols=tuple(f"A{i}" for i in range(n_assets)),
        ohlcv=np.stack([open_, high, low, close, volume], axis=-1),
        source="<gbm test>",
    )


def make(**kwargs) -> MarketTradingEnv:
    base = dict(dataset=gbm_dataset(), features=FEATURES, window=8, episode_length=40)
    base.update(kwargs)
    return MarketTradingEnv(**base)


MODES = [
    dict(action_mode="discrete"),
    dict(action_mode="discrete", allow_short=False, positions=(-1.0, -0.5, 0.0, 0.5, 1.0)),
    dict(action_mode="continuous", max_leverage=2.0),
    dict(action_mode="continuous", dataset=gbm_dataset(n_assets=3)),
    dict(action_mode="weights", dataset=gbm_dataset(n_assets=3)),
    dict(action_mode="weights", dataset=gbm_dataset(n_assets=2), allow_short=False),
]


@pytest.mark.parametrize("flatten", [False, True])
@pytest.mark.parametrize(
    "mode", MODES, ids=lambda m: "-".join(f"{k}={v}" for k, v in m.items() if k != "dataset")
)
def test_check_env_every_mode(mode: dict, flatten: bool) -> None:
    kwargs = dict(dataset=gbm_dataset(), features=FEATURES, window=8, episode_length=40)
    kwargs.update(mode)
    env = gym.make("MarketTrading-v0", flatten=flatten, **kwargs)
    with warnings.catch_warnings():
        _warnings_as_errors()
        check_env(env.unwrapped)
    env.close()


def test_check_env_default_dataset_and_render_modes() -> None:
    env = gym.make("MarketTrading-v0", episode_length=64, render_mode="ansi")
    with warnings.catch_warnings():
        _warnings_as_errors()
        check_env(env.unwrapped)
        assert env.unwrapped.setup.symbols == ("BTC/USD",)
    env = make(render_mode="rgb_array")
    env.reset(seed=0)
    for _ in range(10):
        env.step(2)
    frame = env.render()
    assert frame.dtype == np.uint8 and frame.ndim == 3 and frame.shape[2] == 3
    ansi = make(render_mode="ansi")
    ansi.reset(seed=0)
    assert "value=" in ansi.render()


def _rollout(env: MarketTradingEnv, seed: int, steps: int = 30):
    obs, _ = env.reset(seed=seed)
    rng = np.random.default_rng(seed)
    out = [obs]
    for _ in range(steps):
        obs, reward, term, trunc, info = env.step(rng.uniform(-1, 1, env.action_space.shape))
        out.append((obs, reward, info["portfolio_value"]))
        if term or trunc:
            obs, _ = env.reset()
            out.append(obs)
    return out


def _same(a, b) -> bool:
    try:
        np.testing.assert_equal(a, b)
    except AssertionError:
        return False
    return True


def test_same_seed_same_trajectory_different_seed_differs() -> None:
    kwargs = dict(action_mode="continuous", episode_length=20)
    assert _same(_rollout(make(**kwargs), 5), _rollout(make(**kwargs), 5))
    assert not _same(_rollout(make(**kwargs), 5), _rollout(make(**kwargs), 6))


def test_pickle_round_trip_continues_identically() -> None:
    env = make(action_mode="continuous", episode_length=30)
    env.reset(seed=1)
    for _ in range(5):
        env.step(np.array([0.7], np.float32))
    clone = pickle.loads(pickle.dumps(env))
    for a in (-0.4, 1.0, 0.0, 0.3):
        np.testing.assert_equal(env.step(np.array([a])), clone.step(np.array([a])))


def test_flat_agent_pays_nothing_and_value_is_marked_to_market() -> None:
    env = make(random_start=False)  # costs on by default
    env.reset(seed=0)
    for _ in range(40):
        _, reward, term, trunc, info = env.step(1)  # flat
        assert reward == 0.0 and info["step_cost"] == 0.0
    assert info["portfolio_value"] == 10_000.0
    assert info["fees"] == info["impact"] == info["funding"] == info["spread"] == 0.0
    assert trunc and not term and info["episode"]["turnover"] == 0.0
    # With random trades, value = cash + units * close at every step.
    env = make(action_mode="continuous", max_leverage=2.0, dataset=gbm_dataset(n_assets=2))
    env.reset(seed=3)
    rng = np.random.default_rng(0)
    for _ in range(30):
        _, _, term, trunc, info = env.step(rng.uniform(-2, 2, 2))
        s = env.state
        close = env.setup.arrays.close[s.t[0]]
        assert info["portfolio_value"] == pytest.approx(s.cash[0] + (s.units[0] * close).sum())
        np.testing.assert_allclose(info["position"], s.units[0] * close / s.value[0])
        if term or trunc:
            break


def _sigma(close: np.ndarray, t: int, lookback: int = 24) -> float:
    rets = np.diff(np.log(close[: t + 1]))[-lookback:]
    return float(np.std(rets))


def test_single_trade_costs_as_documented() -> None:
    ds = gbm_dataset()
    fee, spread, k = 0.001, 0.0003, 0.7
    env = make(
        dataset=ds,
        random_start=False,
        taker_fee=fee,
        half_spread=spread,
        impact_k=k,
        margin_rate=0.08,
        borrow_rate=0.0,
    )
    env.reset(seed=0)
    t = int(env.state.t[0])
    _, reward, _, _, info = env.step(2)  # long, fills at the next bar's open
    price = ds.open[t + 1, 0]
    q = 10_000.0 / price
    notional = q * price
    want_fee = fee * notional
    want_spread = spread * notional
    want_impact = k * _sigma(ds.close[:, 0], t) * np.sqrt(q / ds.volume[t, 0]) * notional
    cash = 10_000.0 - notional - want_fee - want_spread - want_impact
    funding = 0.08 * max(-cash, 0.0) / BARS_PER_YEAR
    value = cash - funding + q * ds.close[t + 1, 0]
    assert info["fees"] == pytest.approx(want_fee, rel=1e-12)
    assert info["spread"] == pytest.approx(want_spread, rel=1e-12)
    assert info["impact"] == pytest.approx(want_impact, rel=1e-9)
    assert info["funding"] == pytest.approx(funding, rel=1e-9)
    assert info["portfolio_value"] == pytest.approx(value, rel=1e-12)
    assert reward == pytest.approx(np.log(value / 10_000.0), rel=1e-9)
    assert info["step_cost"] == pytest.approx(want_fee + want_spread + want_impact + funding)
    assert info["trades"] == 1


def test_shorts_pay_borrow() -> None:
    ds = gbm_dataset()
    env = make(dataset=ds, random_start=False, **{**NO_COSTS, "borrow_rate": 0.1})
    env.reset(seed=0)
    t = int(env.state.t[0])
    _, _, _, _, info = env.step(0)  # short
    q = -10_000.0 / ds.open[t + 1, 0]
    funding = 0.1 * abs(q) * ds.close[t + 1, 0] / BARS_PER_YEAR
    assert info["funding"] == pytest.approx(funding, rel=1e-12)
    assert info["portfolio_value"] == pytest.approx(20_000.0 + q * ds.close[t + 1, 0] - funding)
    s = env.state
    _, _, _, _, info2 = env.step(0)  # hold the short (inside the band): borrow on the new close
    t2 = int(env.state.t[0])
    assert info2["trades"] == 1  # no rebalancing trade
    cash = float(s.cash[0]) - 0.1 * abs(q) * ds.close[t2, 0] / BARS_PER_YEAR
    assert info2["funding"] == pytest.approx(
        funding + 0.1 * abs(q) * ds.close[t2, 0] / BARS_PER_YEAR
    )
    assert info2["portfolio_value"] == pytest.approx(cash + q * ds.close[t2, 0])


def test_latency_delays_the_fill() -> None:
    ds = gbm_dataset()
    env = make(dataset=ds, random_start=False, latency=2, **NO_COSTS)
    env.reset(seed=0)
    t = int(env.state.t[0])
    _, reward, _, _, info = env.step(2)
    assert info["trades"] == 0 and reward == 0.0
    _, _, _, _, info = env.step(1)  # the earlier "long" fills now, at open[t + 2]
    q = 10_000.0 / ds.open[t + 2, 0]
    assert info["trades"] == 1
    assert info["portfolio_value"] == pytest.approx(
        10_000.0 + q * (ds.close[t + 2, 0] - ds.open[t + 2, 0])
    )


def test_no_look_ahead() -> None:
    ds = gbm_dataset(n_bars=200, seed=4)
    base = make(dataset=ds, random_start=False, episode_length=None)
    cut = base.setup.arrays.first_decision + 25  # decisions up to this bar must not change
    ohlcv = ds.ohlcv.copy()
    ohlcv[cut + 1 :] *= np.random.default_rng(9).uniform(0.5, 1.5, ohlcv[cut + 1 :].shape)
    perturbed = MarketDataset(ds.timestamps, ds.symbols, ohlcv, source="<perturbed>")
    other = make(dataset=perturbed, random_start=False, episode_length=None, scaler=base.scaler)
    actions = np.random.default_rng(2).integers(0, 3, size=200)
    obs_a, _ = base.reset(seed=0)
    obs_b, _ = other.reset(seed=0)
    step = 0
    while True:
        np.testing.assert_array_equal(obs_a["market"], obs_b["market"])
        np.testing.assert_array_equal(obs_a["portfolio"], obs_b["portfolio"])
        if int(base.state.t[0]) == cut:
            break
        obs_a, *_ = base.step(actions[step])
        obs_b, *_ = other.step(actions[step])
        step += 1
    # Sanity: the perturbation does change what comes after.
    obs_a, *_ = base.step(2)
    obs_b, *_ = other.step(2)
    assert not np.array_equal(obs_a["market"], obs_b["market"])


def test_bad_actions_raise_clear_errors_or_clip() -> None:
    env = make()
    env.reset(seed=0)
    for bad in (3, -1, 1.5, np.nan, np.array([0, 1])):
        with pytest.raises(ActionError):
            env.step(bad)
    cont = make(action_mode="continuous")
    cont.reset(seed=0)
    for bad in (np.array([np.nan]), np.array([0.1, 0.2]), "long"):
        with pytest.raises(ActionError):
            cont.step(bad)
    _, _, _, _, info = cont.step(np.array([7.0]))  # documented clip to max_leverage=1
    assert info["position"][0] == pytest.approx(1.0, abs=0.05)
    weights = make(action_mode="weights", dataset=gbm_dataset(n_assets=2), allow_short=False)
    weights.reset(seed=0)
    with pytest.raises(ActionError):
        weights.step(np.array([0.5, 0.5]))  # missing the cash weight
    _, _, _, _, info = weights.step(np.array([-1.0, 1.0, 1.0]))  # short clipped to 0
    assert info["position"][0] == 0.0 and info["position"][1] == pytest.approx(0.5, abs=0.05)


def test_action_masks_and_masked_action_goes_flat() -> None:
    env = make(allow_short=False)
    env.reset(seed=0)
    assert env.action_masks().tolist() == [False, True, True]
    _, _, _, _, info = env.step(0)
    assert info["position"][0] == 0.0 and info["trades"] == 0
    with pytest.raises(ConfigError):
        make(action_mode="continuous").action_masks()


def test_episode_end_and_metrics() -> None:
    env = make(episode_length=15)
    env.reset(seed=0)
    for i in range(15):
        _, _, term, trunc, info = env.step(2)
        assert trunc == (i == 14) and not term
    assert set(info["episode"]) == {
        "return",
        "sharpe",
        "sortino",
        "max_drawdown",
        "calmar",
        "turnover",
    }
    assert info["episode"]["return"] == pytest.approx(info["portfolio_value"] / 10_000 - 1)
    with pytest.raises(RuntimeError, match="reset"):
        env.step(1)


def test_max_drawdown_and_ruin_terminate() -> None:
    ds = gbm_dataset()
    ohlcv = ds.ohlcv.copy()
    ohlcv[60:, :, :4] *= 0.5  # a 50% crash at bar 60
    crash = MarketDataset(ds.timestamps, ds.symbols, ohlcv, source="<crash>")
    env = make(dataset=crash, random_start=False, episode_length=None, max_drawdown=0.2)
    env.reset(seed=0)
    while True:
        _, _, term, trunc, info = env.step(2)
        if term or trunc:
            break
    assert term and int(env.state.t[0]) == 60 and "episode" in info
    ohlcv = ds.ohlcv.copy()
    ohlcv[60:, :, :4] *= 3.0  # short the whole book into a tripling: ruin
    squeeze = MarketDataset(ds.timestamps, ds.symbols, ohlcv, source="<squeeze>")
    env = make(dataset=squeeze, random_start=False, episode_length=None)
    env.reset(seed=0)
    while True:
        _, reward, term, trunc, info = env.step(0)
        if term or trunc:
            break
    assert term and info["portfolio_value"] <= 0 and np.isfinite(reward)


def test_observation_layout_names_and_predictor_blocks() -> None:
    ds = gbm_dataset(n_assets=2)
    forecast = np.arange(len(ds) * 3, dtype=np.float32).reshape(len(ds), 3)
    env = make(dataset=ds, action_mode="weights", predictor_blocks={"forecast": forecast})
    assert env.block_names == ("market", "forecast", "portfolio")
    obs, _ = env.reset(seed=0)
    t = int(env.state.t[0])
    np.testing.assert_array_equal(obs["forecast"], forecast[t])
    assert obs["market"].shape == (8, 2 * len(FEATURES))
    names = env.observation_builder.flat_feature_names()
    assert names[0] == "market[t-7,A0:logret_1]"
    assert "portfolio[position:A1]" in names and "portfolio[cash]" in names
    flat = make(
        dataset=ds, action_mode="weights", predictor_blocks={"forecast": forecast}, flatten=True
    )
    flat_obs, _ = flat.reset(seed=0)
    assert flat_obs.shape == (len(names),)
    np.testing.assert_array_equal(
        flat.observation_builder.from_flat(flat_obs)["forecast"], forecast[t]
    )
    with pytest.raises(DataError, match="forecast"):
        make(predictor_blocks={"forecast": forecast[:-1]})
    with pytest.raises(ConfigError, match="reserved"):
        make(predictor_blocks={"market": forecast})


def test_scaler_is_exposed_and_reused() -> None:
    train = make()
    other = make(dataset=gbm_dataset(seed=11), scaler=train.scaler)
    assert other.scaler is train.scaler


def test_bad_configuration() -> None:
    with pytest.raises(ConfigError, match="single-asset"):
        make(dataset=gbm_dataset(n_assets=2))
    with pytest.raises(ConfigError, match="action_mode"):
        make(action_mode="limit")
    with pytest.raises(DataError, match="episode"):
        make(episode_length=10_000)
    with pytest.raises(ConfigError, match="render_mode"):
        make(render_mode="human")
    with pytest.raises(ConfigError, match="max_drawdown"):
        make(max_drawdown=1.5)
