"""MarketTradingVectorEnv: equals N single envs (seeds seed + i), NEXT_STEP autoreset, API."""

from __future__ import annotations

import pickle

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.vector import AutoresetMode

import envs  # noqa: F401  (registers the ids)
from envs.data.dataset import MarketDataset
from envs.errors import ConfigError, DataError
from envs.execution import ActionError
from envs.market_core import (
    PORTFOLIO_CLIP,
    observe,
    portfolio_block,
    portfolio_block_and_exposure,
)
from envs.market_env import MarketTradingEnv
from envs.metrics import episode_metrics
from envs.observation import BlockSpec, ObservationBuilder
from envs.vector_market import MarketTradingVectorEnv, batch_episode_metrics

HOUR_NS = 3600 * 10**9
FEATURES = ("logret_1", "logret_4", "rvol_8")


def gbm_dataset(
    n_bars: int = 250, n_assets: int = 1, seed: int = 0, vol: float = 0.01
) -> MarketDataset:
    """Small hourly GBM OHLCV dataset, built inline so tests need no data files."""
    rng = np.random.default_rng(seed)
    close = 100.0 * np.exp(np.cumsum(rng.normal(0.0, vol, (n_bars, n_assets)), axis=0))
    open_ = np.vstack([close[:1], close[:-1]]) * np.exp(rng.normal(0, vol / 5, close.shape))
    high = np.maximum(open_, close) * 1.001
    low = np.minimum(open_, close) * 0.999
    volume = rng.lognormal(8.0, 0.3, (n_bars, n_assets))
    return MarketDataset(
        timestamps=np.arange(n_bars, dtype=np.int64) * HOUR_NS,
        symbols=tuple(f"A{i}" for i in range(n_assets)),
        ohlcv=np.stack([open_, high, low, close, volume], axis=-1),
        source="<gbm test>",
    )


CASES = [
    dict(action_mode="discrete", reward="differential_sharpe"),
    dict(action_mode="continuous", max_leverage=2.0, latency=2, max_drawdown=0.03),
    dict(action_mode="weights", dataset=gbm_dataset(n_assets=3), flatten=True, reward="drawdown"),
]


def _sample(space: gym.Space, rng: np.random.Generator, n: int) -> np.ndarray:
    if isinstance(space, gym.spaces.Discrete):
        return rng.integers(0, space.n, size=n)
    return rng.uniform(-1.2, 1.2, size=(n, *space.shape))


@pytest.mark.parametrize("case", CASES, ids=lambda c: c["action_mode"])
def test_vector_equals_single_envs(case: dict) -> None:
    kwargs = dict(dataset=gbm_dataset(), features=FEATURES, window=6, episode_length=12)
    kwargs.update(case)
    n = 4
    venv = MarketTradingVectorEnv(n, **kwargs)
    singles = [MarketTradingEnv(**kwargs) for _ in range(n)]
    vobs, _ = venv.reset(seed=100)
    sobs = [env.reset(seed=100 + i)[0] for i, env in enumerate(singles)]
    for i in range(n):  # reset observations agree too
        got = vobs[i] if kwargs.get("flatten") else {k: v[i] for k, v in vobs.items()}
        np.testing.assert_equal(got, sobs[i])
    need_reset = [False] * n
    rng = np.random.default_rng(0)
    episodes = 0
    for _ in range(60):
        actions = _sample(venv.single_action_space, rng, n)
        vobs, vrew, vterm, vtrunc, vinfo = venv.step(actions)
        for i, env in enumerate(singles):
            if need_reset[i]:
                obs, _ = env.reset()
                rew, term, trunc, info = 0.0, False, False, None
                need_reset[i] = False
            else:
                obs, rew, term, trunc, info = env.step(actions[i])
                need_reset[i] = term or trunc
            got = (
                venv.observation_builder.from_flat(vobs[i])
                if kwargs.get("flatten")
                else {k: v[i] for k, v in vobs.items()}
            )
            want = venv.observation_builder.from_flat(obs) if kwargs.get("flatten") else obs
            for key in want:
                np.testing.assert_array_equal(got[key], want[key])
            assert vrew[i] == rew and vterm[i] == term and vtrunc[i] == trunc
            if info is not None:
                assert vinfo["portfolio_value"][i] == info["portfolio_value"]
                assert vinfo["fees"][i] == info["fees"] and vinfo["trades"][i] == info["trades"]
                np.testing.assert_array_equal(vinfo["position"][i], info["position"])
            if term or trunc:
                episodes += 1
                assert vinfo["_episode"][i]
                for k, v in info["episode"].items():
                    assert vinfo["episode"][k][i] == v
    assert episodes >= n  # the comparison crossed episode boundaries


def test_autoreset_next_step_and_metadata() -> None:
    venv = MarketTradingVectorEnv(
        3, dataset=gbm_dataset(), features=FEATURES, window=6, episode_length=5, random_start=False
    )
    assert venv.metadata["autoreset_mode"] == AutoresetMode.NEXT_STEP
    first, _ = venv.reset(seed=0)
    for _ in range(5):
        _, _, term, trunc, info = venv.step(np.array([2, 0, 1]))
    assert trunc.all() and not term.any() and info["_episode"].all()
    obs, rew, term, trunc, info = venv.step(np.array([2, 2, 2]))  # actions ignored: reset
    assert np.all(rew == 0.0) and not term.any() and not trunc.any()
    np.testing.assert_array_equal(obs["market"], first["market"])
    np.testing.assert_array_equal(obs["portfolio"], first["portfolio"])
    assert np.all(info["portfolio_value"] == 10_000.0) and "episode" not in info


def test_make_vec_spaces_masks_errors_and_pickle() -> None:
    venv = gym.make_vec(
        "MarketTrading-v0",
        num_envs=3,
        vectorization_mode="vector_entry_point",
        dataset=gbm_dataset(),
        features=FEATURES,
        window=6,
        episode_length=10,
        allow_short=False,
    )
    assert isinstance(venv, MarketTradingVectorEnv)
    obs, _ = venv.reset(seed=1)
    assert obs in venv.observation_space
    assert venv.action_masks().shape == (3, 3) and not venv.action_masks()[:, 0].any()
    with pytest.raises(ActionError):
        venv.step(np.array([0, 1]))  # wrong batch size
    with pytest.raises(ActionError):
        venv.step(np.array([0, 1, 7]))
    clone = pickle.loads(pickle.dumps(venv))
    a = np.array([2, 1, 2])
    np.testing.assert_equal(venv.step(a), clone.step(a))
    with pytest.raises(ConfigError):
        MarketTradingVectorEnv(0, dataset=gbm_dataset(), features=FEATURES, window=6)


@pytest.mark.parametrize("flatten", [True, False])
def test_batch_assembler_equals_build_batch_of_observe(flatten: bool) -> None:
    """The span gather and the chunked fallback (several chunks) equal the reference path."""
    data = gbm_dataset(n_assets=2)
    blocks = {"forecast": np.random.default_rng(3).normal(size=(len(data), 2, 3))}
    venv = MarketTradingVectorEnv(
        7,
        dataset=data,
        features=FEATURES,
        window=6,
        episode_length=12,
        action_mode="weights",
        predictor_blocks=blocks,
        flatten=flatten,
    )
    venv.reset(seed=4)
    rng = np.random.default_rng(5)
    for _ in range(3):
        venv.step(_sample(venv.single_action_space, rng, 7))
    setup, state = venv.setup, venv.state
    assemble = setup.builder.batch_assembler(
        "market", setup.arrays.features, setup.arrays.blocks, "portfolio"
    )
    block = portfolio_block(state, setup.arrays, setup.params.window)
    got = assemble(state.t, block)
    want = setup.builder.build_batch(observe(state, setup.arrays, setup.params.window))
    np.testing.assert_equal(got, want)
    assert (assemble.spans is not None) == flatten  # the market block comes first
    assemble.spans = None  # the chunked fallback (other layouts)
    assemble.chunk_rows = 3  # 7 rows -> chunks of 3, 3, 1
    np.testing.assert_equal(assemble(state.t, block), want)
    # Fresh arrays: writing into one observation changes neither the data nor the next one.
    features_before = setup.arrays.features.copy()
    first = got if flatten else got["market"]
    first[...] = 123.0
    np.testing.assert_array_equal(setup.arrays.features, features_before)
    np.testing.assert_equal(assemble(state.t, block), want)
    # The pickled assembler rebuilds its views and gives the same observations.
    np.testing.assert_equal(pickle.loads(pickle.dumps(assemble))(state.t, block), want)
    with pytest.raises(DataError, match="bars must lie in"):
        assemble(np.array([setup.params.window - 2] * 7), block)  # would wrap around
    with pytest.raises(DataError, match="portfolio"):
        assemble(state.t, block[:, :-1])


@pytest.mark.parametrize("window_first", [True, False])
@pytest.mark.parametrize("flatten", [True, False])
def test_batch_assembler_clips_like_build_batch(flatten: bool, window_first: bool) -> None:
    """With ``clip=True`` the assembler (sources clipped once) equals clipping every batch."""
    rng = np.random.default_rng(8)
    n_bars, window = 40, 5
    source = rng.normal(0.0, 2.0, (n_bars, 3)).astype(np.float32)
    source[7, 1] = np.nan  # NaN stays NaN either way
    extra = rng.normal(0.0, 3.0, (n_bars, 2)).astype(np.float32)
    specs = [
        BlockSpec("market", (window, 3), low=-1.5, high=1.5),
        BlockSpec("extra", (2,), low=-1.0, high=2.0),
        BlockSpec("state", (4,), low=-4.0, high=4.0),
    ]
    if not window_first:
        specs = specs[::-1]
    builder = ObservationBuilder(specs, flatten=flatten, clip=True)
    assemble = builder.batch_assembler("market", source, {"extra": extra}, "state")
    assert (assemble.spans is not None) == (flatten and window_first)
    t = np.array([window - 1, 11, 12, n_bars - 1, 8, 20])
    given = rng.normal(0.0, 6.0, (t.size, 4))
    given[2, 0] = 50.0
    values = {
        "market": np.stack([source[i - window + 1 : i + 1] for i in t]),
        "extra": extra[t],
        "state": given,
    }
    want = builder.build_batch(values)
    np.testing.assert_equal(assemble(t, given), want)
    flat = want if flatten else builder.to_flat(want)
    assert np.nanmax(np.abs(flat)) == 4.0  # the clip bit
    assemble.chunk_rows = 4
    np.testing.assert_equal(pickle.loads(pickle.dumps(assemble))(t, given), want)


@pytest.mark.parametrize("allow_short", [True, False])
def test_discrete_fast_path_equals_map_actions(allow_short: bool) -> None:
    """int64 index arrays map by one take; other dtypes and bad indices use map_actions."""
    venv = MarketTradingVectorEnv(
        6,
        dataset=gbm_dataset(),
        features=FEATURES,
        window=6,
        positions=(-1.0, -0.5, 0.0, 0.5, 1.0),
        allow_short=allow_short,
    )
    actions = np.array([0, 1, 2, 3, 4, 0])
    want = venv.setup.map_actions(actions, 6)
    for given in (actions, actions.astype(np.int32), actions.tolist(), actions.astype(float)):
        got = venv._targets(given)
        assert got.dtype == want.dtype and got.shape == want.shape
        np.testing.assert_array_equal(got, want)
    for bad in (np.array([0, 1, 2, 3, 4, 5]), np.array([0, 1, 2, 3, 4, -1]), actions[:5]):
        with pytest.raises(ActionError):
            venv._targets(bad)


def test_portfolio_block_and_exposure_match_reference() -> None:
    """The block written in place equals concatenate + clip; exposures equal info['position']."""
    venv = MarketTradingVectorEnv(
        5, dataset=gbm_dataset(n_assets=3), features=FEATURES, window=6, action_mode="weights"
    )
    venv.reset(seed=0)
    rng = np.random.default_rng(1)
    for _ in range(4):
        _, _, _, _, info = venv.step(_sample(venv.single_action_space, rng, 5))
    state, arrays = venv.state, venv.setup.arrays
    block, exposure = portfolio_block_and_exposure(state, arrays, 6)
    close = arrays.close[state.t]
    value = np.where(np.abs(state.value) > 1e-12, state.value, 1e-12)
    want_exposure = state.units * close / value[:, None]
    upnl = (state.units * (close - state.entry_price)).sum(axis=1) / value
    tit = state.time_in_trade / (state.time_in_trade + 6)
    want = np.concatenate(
        [
            want_exposure,
            (state.cash / value)[:, None],
            upnl[:, None],
            tit[:, None],
            state.last_target,
        ],
        axis=1,
    )
    np.testing.assert_array_equal(block, np.clip(want, -PORTFOLIO_CLIP, PORTFOLIO_CLIP))
    np.testing.assert_array_equal(exposure, want_exposure)
    np.testing.assert_array_equal(info["position"], want_exposure)
    np.testing.assert_array_equal(portfolio_block(state, arrays, 6), block)


def test_batch_episode_metrics_equal_episode_metrics_bit_for_bit() -> None:
    """The array restatement equals envs.metrics.episode_metrics on every curve, every key."""
    rng = np.random.default_rng(7)
    for length in (1, 2, 3, 9, 130, 1500):
        for sigma in (0.0, 1e-4, 0.02):
            k = 12
            steps = rng.normal(0.0, sigma, (k, length))
            equity = 10_000.0 * np.exp(np.cumsum(steps, axis=1))
            equity[:, 0] = 10_000.0
            if length > 3:
                equity[0, 2:] = 0.0  # ruined: a non-finite return goes through the per-curve code
                equity[1, -1] = -50.0  # negative final value: no Calmar
                equity[2, 1] = np.nan
            equity[3, 0] = 0.0  # non-positive start: all zeros
            turnover = rng.random(k)
            got = batch_episode_metrics(equity, 8760.0, turnover)
            for i in range(k):
                with np.errstate(all="ignore"):
                    want = episode_metrics(equity[i], 8760.0, turnover=float(turnover[i]))
                for key, value in want.items():
                    assert np.array_equal(got[key][i], value, equal_nan=True), (length, i, key)
                    assert np.signbit(got[key][i]) == np.signbit(value)
