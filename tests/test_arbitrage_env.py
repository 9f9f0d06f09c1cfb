"""Arbitrage-v0: API conformance, seeding, pickling, no look-ahead, accounting invariants."""

from __future__ import annotations

import copy
import pickle

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

import envs  # noqa: F401  (registers the ids)
from envs import arbitrage_core as core
from envs.arbitrage_baselines import ThresholdPolicy
from envs.arbitrage_env import ArbitrageEnv
from envs.data.defi import DefiScenario, generate_scenario
from envs.errors import ConfigError, DataError
from envs.vector_arbitrage import ArbitrageVectorEnv

SHORT = {"episode_length": 60}


def _batch(obs):
    if isinstance(obs, dict):
        return {k: v[None] for k, v in obs.items()}
    return obs[None]


def _run(env, actions_fn, steps, seed):
    obs, _ = env.reset(seed=seed)
    out = [obs]
    rewards, infos = [], []
    for _ in range(steps):
        obs, r, term, trunc, info = env.step(actions_fn(obs))
        out.append(obs)
        rewards.append(r)
        infos.append(info)
        if term or trunc:
            break
    return out, rewards, infos


def _equal_obs(a, b):
    if isinstance(a, dict):
        return all(np.array_equal(a[k], b[k]) for k in a)
    return np.array_equal(a, b)


@pytest.mark.parametrize("mode", ["cex_dex", "dex_dex"])
@pytest.mark.parametrize("action_mode", ["continuous", "discrete"])
@pytest.mark.parametrize("flatten", [False, True])
def test_check_env(mode, action_mode, flatten):
    env = ArbitrageEnv(mode=mode, action_mode=action_mode, flatten=flatten, **SHORT)
    check_env(env, skip_render_check=True)


def test_gym_make_default_and_render():
    env = gym.make("Arbitrage-v0", render_mode="ansi")
    obs, info = env.reset(seed=0)
    assert env.observation_space.contains(obs)
    assert env.action_space.shape == (2,)
    obs, _r, _term, _trunc, info = env.step(env.action_space.sample())
    assert isinstance(env.render(), str)
    for key in (
        "profit",
        "gas_spent",
        "fees_paid",
        "reverted",
        "competitor_took",
        "oracle_profit",
        "inventory",
        "cum_profit",
        "cum_oracle_profit",
    ):
        assert key in info
    assert env.unwrapped.episode_length == 1000


def test_flat_names_match_layout():
    env = ArbitrageEnv(flatten=True, **SHORT)
    obs, _ = env.reset(seed=0)
    names = env.flat_feature_names
    assert len(names) == obs.shape[0]
    assert "opportunity[pool0_buy_gross_per_gas]" in names


@pytest.mark.parametrize("mode", ["cex_dex", "dex_dex"])
def test_seeding_reproduces_trajectories(mode):
    def actions(seed):
        rng = np.random.default_rng(seed)
        return lambda obs: rng.uniform([-0.5, 0.0], [0.5, 1.0]).astype(np.float32)

    env = ArbitrageEnv(mode=mode, **SHORT)
    o1, r1, _ = _run(env, actions(1), 60, seed=7)
    o2, r2, _ = _run(env, actions(1), 60, seed=7)
    o3, _r3, _ = _run(env, actions(1), 60, seed=8)
    assert all(_equal_obs(a, b) for a, b in zip(o1, o2, strict=True))
    assert r1 == r2
    assert not all(_equal_obs(a, b) for a, b in zip(o1, o3, strict=True))


def test_pickle_mid_episode_continues_identically():
    env = ArbitrageEnv(**SHORT)
    env.reset(seed=3)
    pol = ThresholdPolicy(margin=0.0, bid=0.4)
    obs = None
    for _ in range(20):
        obs, *_ = env.step(np.array([0.2, 0.3], np.float32))
    clone = pickle.loads(pickle.dumps(env))
    for _ in range(30):
        a = pol(_batch(obs), env)[0]
        o1, r1, _, t1, _i1 = env.step(a)
        o2, r2, _, t2, _i2 = clone.step(a)
        assert _equal_obs(o1, o2) and r1 == r2 and t1 == t2
        obs = o1


@pytest.mark.parametrize("latency", [0, 2])
def test_no_look_ahead(latency):
    env = ArbitrageEnv(latency=latency, **SHORT)
    rows = env.scenario_rows
    base = generate_scenario(np.random.default_rng(11), rows, 1)
    t0 = 25
    cut = env.cfg.gas_window + t0  # scenario row of the observation at step t0
    rng = np.random.default_rng(99)
    changed = {}
    for name, arr in base.__dict__.items():
        a = arr.copy()
        if name in ("ref_price", "base_fee", "native_price"):
            a[cut + 1 :] *= rng.uniform(0.5, 1.5, a[cut + 1 :].shape)
        elif name == "comp_u":
            a[cut + 1 :] = rng.random(a[cut + 1 :].shape)
        elif name in ("spread", "utilization"):
            a[cut + 1 :] = rng.uniform(0, 0.01 if name == "spread" else 1, a[cut + 1 :].shape)
        else:
            a[cut + 1 :] = rng.uniform(-0.05, 0.05, a[cut + 1 :].shape)
        changed[name] = a
    other = DefiScenario(**changed)
    pol = ThresholdPolicy(margin=0.0, bid=0.4)

    def run(scen):
        e = ArbitrageEnv(scenario=scen, latency=latency, **SHORT)
        obs, _ = e.reset(seed=0)
        seq = [obs]
        for _ in range(t0):
            obs, *_ = e.step(pol(_batch(obs), e)[0])
            seq.append(obs)
        return seq

    a, b = run(base), run(other)
    assert len(a) == t0 + 1
    for x, y in zip(a, b, strict=True):
        assert _equal_obs(x, y)
    # Sanity: the perturbation is visible one step later.
    e1 = ArbitrageEnv(scenario=base, latency=latency, **SHORT)
    e2 = ArbitrageEnv(scenario=other, latency=latency, **SHORT)
    e1.reset(seed=0)
    e2.reset(seed=0)
    for _ in range(t0 + 1):
        o1, *_ = e1.step(np.zeros(2, np.float32))
        o2, *_ = e2.step(np.zeros(2, np.float32))
    assert not _equal_obs(o1, o2)


@pytest.mark.parametrize("mode", ["cex_dex", "dex_dex"])
def test_inventory_never_negative_under_random_trading(mode):
    env = ArbitrageEnv(
        mode=mode,
        episode_length=250,
        initial_balances=(3.0, 5_000.0, 2.0, 4_000.0),
        rebalance_delay=5,
    )
    env.reset(seed=5)
    rng = np.random.default_rng(0)
    for _ in range(250):
        a = np.array([rng.uniform(-1, 1), rng.uniform(0, 1)], np.float32)
        _, _, _, trunc, info = env.step(a)
        assert np.all(info["inventory"] >= -1e-9), info["inventory"]
        assert np.all(info["in_transit"] >= -1e-9)
        assert np.all(env.state.x > 0) and np.all(env.state.y > 0)
        if trunc:
            break


def test_reverts_cost_gas_and_move_nothing():
    # Competitors show up for every opportunity and the agent bids nothing: it loses the
    # auction, its transaction hits the slippage limit after the competitor's trade, and reverts.
    env = ArbitrageEnv(competitor_scale=1e-9, episode_length=400)
    obs, _ = env.reset(seed=2)
    pol = ThresholdPolicy(margin=0.0, bid=0.0)
    seen = 0
    for _ in range(400):
        a = pol(_batch(obs), env)[0]
        shadow = copy.deepcopy(env) if a[0] != 0 else None
        obs, r, _, trunc, info = env.step(a)
        if shadow is not None:
            shadow.step(np.zeros(2, np.float32))
        if info["reverted"] > 0:
            seen += 1
            s, t = env.state, shadow.state
            np.testing.assert_array_equal(s.x, t.x)
            np.testing.assert_array_equal(s.y, t.y)
            assert info["gas_spent"] > 0
            diff = t.bal[0] - s.bal[0]
            np.testing.assert_allclose(diff[:3], 0.0, atol=1e-9)
            assert diff[3] == pytest.approx(info["gas_spent"], abs=1e-8)
            assert r == pytest.approx(-info["gas_spent"], rel=1e-12)
        if trunc or seen >= 5:
            break
    assert seen >= 3


def test_step_profit_never_exceeds_oracle():
    for action_mode, pol in (
        ("continuous", ThresholdPolicy(0.0, 0.5)),
        ("discrete", ThresholdPolicy(0.0, 0.3)),
    ):
        env = ArbitrageEnv(action_mode=action_mode, episode_length=200)
        obs, _ = env.reset(seed=4)
        rng = np.random.default_rng(1)
        for i in range(200):
            a = pol(_batch(obs), env)[0] if i % 2 else env.action_space.sample()
            if action_mode == "continuous" and i % 2 == 0:
                a = np.array([rng.uniform(-0.3, 0.3), rng.uniform(0, 1)], np.float32)
            obs, _, _, trunc, info = env.step(a)
            assert info["profit"] <= info["oracle_profit"] + 1e-6
            if trunc:
                break


def test_episode_summary_and_share():
    env = ArbitrageEnv(episode_length=80)
    env.reset(seed=0)
    info = {}
    for _ in range(80):
        _, _, _, trunc, info = env.step(env.oracle_action())
    assert trunc
    ep = info["episode"]
    assert ep["total_profit"] == pytest.approx(info["cum_profit"])
    if ep["oracle_profit"] > 0:
        assert ep["share_of_oracle"] == pytest.approx(ep["total_profit"] / ep["oracle_profit"])
    assert ep["path_oracle_profit"] == pytest.approx(info["cum_oracle_profit"])
    with pytest.raises(gym.error.ResetNeeded):
        env.step(np.zeros(2, np.float32))


def test_oracle_policy_attains_oracle_profit_dex_dex():
    env = ArbitrageEnv(mode="dex_dex", episode_length=300)
    env.reset(seed=1)
    for _ in range(300):
        _, _, _, _trunc, info = env.step(env.oracle_action())
    ep = info["episode"]
    assert ep["oracle_profit"] > 0
    assert ep["share_of_oracle"] == pytest.approx(1.0, abs=1e-6)
    assert ep["share_of_path_oracle"] == pytest.approx(1.0, abs=1e-3)


def test_episode_oracle_off_and_vector_equals_single():
    env = ArbitrageEnv(episode_length=60, episode_oracle=False)
    env.reset(seed=3)
    for _ in range(60):
        _, _, _, _, info = env.step(np.zeros(2, np.float32))
    assert np.isnan(info["episode"]["oracle_profit"])
    assert np.isnan(info["episode"]["share_of_oracle"])
    singles = []
    for seed in (3, 4):
        env = ArbitrageEnv(episode_length=60)
        env.reset(seed=seed)
        for _ in range(60):
            _, _, _, _, info = env.step(np.zeros(2, np.float32))
        singles.append(info["episode"]["oracle_profit"])
    venv = ArbitrageVectorEnv(num_envs=2, episode_length=60)
    venv.reset(seed=[3, 4])
    for _ in range(60):
        _, _, _, _, infos = venv.step(np.zeros((2, 2), np.float32))
    np.testing.assert_array_equal(infos["episode"]["oracle_profit"], singles)


def test_action_masks_block_unfunded_directions():
    env = ArbitrageEnv(action_mode="discrete", initial_balances=(0.0, 1e5, 0.0, 1e5), **SHORT)
    env.reset(seed=0)
    mask = env.action_masks()
    assert mask.shape == (env.cfg.n_discrete_actions,) and mask[0]
    per = len(env.cfg.size_levels) * len(env.cfg.bid_levels)
    # Direction 0 sells base on the CEX and direction 1 sells base into the pool: no base held.
    assert not mask[1:].any()
    assert per * 2 + 1 == mask.size
    with pytest.raises(ConfigError):
        ArbitrageEnv(**SHORT).action_masks()


def test_latency_delays_inclusion():
    env = ArbitrageEnv(latency=2, competitor_scale=1e9, episode_length=50)
    env.reset(seed=0)
    traded_at = []
    for t in range(6):
        a = np.array([0.2 if t == 0 else 0.0, 0.0], np.float32)
        _, _, _, _, info = env.step(a)
        if info["traded"] or info["reverted"]:
            traded_at.append(t)
    assert traded_at == [2]


def test_predictor_blocks_are_aligned():
    env0 = ArbitrageEnv(**SHORT)
    rows = env0.scenario_rows + 40
    scen = generate_scenario(np.random.default_rng(0), rows, 1)
    pred = np.arange(rows, dtype=np.float32)[:, None] * np.ones((1, 2), np.float32)
    env = ArbitrageEnv(scenario=scen, predictor_blocks={"gas_forecast": pred}, **SHORT)
    obs, _ = env.reset(seed=0)
    start = int(obs["gas_forecast"][0]) - env.cfg.gas_window
    for t in range(1, 5):
        obs, *_ = env.step(np.zeros(2, np.float32))
        assert obs["gas_forecast"][0] == start + env.cfg.gas_window + t
    with pytest.raises(DataError, match="gas_forecast"):
        ArbitrageEnv(scenario=scen, predictor_blocks={"gas_forecast": pred[:-1]}, **SHORT)
    with pytest.raises(ConfigError, match="scenario"):
        ArbitrageEnv(predictor_blocks={"gas_forecast": pred}, **SHORT)


def test_config_errors_are_clear():
    with pytest.raises(ConfigError, match="mode"):
        ArbitrageEnv(mode="cex_cex")
    with pytest.raises(ConfigError, match="dex_dex"):
        ArbitrageEnv(mode="dex_dex", pool_fees=(0.003,), pool_tvl=(1e6,))
    with pytest.raises(ConfigError, match="unknown"):
        ArbitrageEnv(max_trade=3)
    with pytest.raises(ConfigError, match="pool_fees"):
        ArbitrageEnv(pool_fees=(1.5,))
    with pytest.raises(ConfigError, match="initial_balances"):
        ArbitrageEnv(initial_balances=(1.0, -1.0, 0.0, 0.0))
    env = ArbitrageEnv(**SHORT)
    env.reset(seed=0)
    with pytest.raises(ConfigError, match="action"):
        env.step(np.array([0.1, 0.2, 0.3], np.float32))


def test_rebalancing_moves_inventory_with_fee_and_delay():
    env = ArbitrageEnv(
        rebalance_delay=3,
        rebalance_fee_bps=10.0,
        rebalance_fee_fixed=5.0,
        competitor_scale=1e9,
        **SHORT,
    )
    env.reset(seed=0)
    s = env.state
    # Drain the CEX of base: the venue's share falls under the threshold.
    s.bal[0] = np.array([5.0, 250_000.0, 195.0, 250_000.0])
    _, r, _, _, info = env.step(np.zeros(2, np.float32))
    price = env.scenario_batch.ref_price[0, s.row0[0]]
    moved = 95.0  # back to the initial 50/50 split of 200 base
    assert info["in_transit"][0] == pytest.approx(moved)
    assert info["inventory"][2] == pytest.approx(100.0)
    fee = 10e-4 * moved * price + 5.0
    assert info["rebalance_fee"] == pytest.approx(fee, rel=1e-9)
    assert r == pytest.approx(-fee, rel=1e-9)
    for _ in range(2):
        _, _, _, _, info = env.step(np.zeros(2, np.float32))
    assert info["in_transit"][0] == pytest.approx(moved)
    _, _, _, _, info = env.step(np.zeros(2, np.float32))
    assert info["in_transit"][0] == 0.0
    assert info["inventory"][0] == pytest.approx(100.0)


def test_inventory_penalty_reduces_reward_not_profit():
    kw = {"rebalance": False, "episode_length": 200}
    a = ArbitrageEnv(**kw)
    b = ArbitrageEnv(inventory_penalty=1.0, **kw)
    oa, _ = a.reset(seed=3)
    b.reset(seed=3)
    pol = ThresholdPolicy()
    gap = 0.0
    for _ in range(200):
        act = pol(_batch(oa), a)[0]
        oa, ra, _, _, ia = a.step(act)
        _, rb, _, _, ib = b.step(act)
        assert ia["profit"] == ib["profit"]
        assert rb <= ra + 1e-12
        gap += ra - rb
    assert gap > 0  # trading moved base between venues, which the penalty charges


def test_reference_price_from_dataset():
    from envs.data.dataset import MarketDataset

    n = 400
    close = 30_000 * np.exp(np.cumsum(np.random.default_rng(0).normal(0, 2e-3, n)))
    ohlcv = np.stack([close, close, close, close, np.ones(n)], axis=1)
    ds = MarketDataset(
        timestamps=np.arange(n) * 3_600_000_000_000, symbols=("BTC/USD",), ohlcv=ohlcv
    )
    env = ArbitrageEnv(
        dataset=ds,
        max_trade_size=3.0,
        initial_balances=(10.0, 300_000.0, 10.0, 300_000.0),
        episode_length=100,
    )
    env.reset(seed=0)
    row0 = env.cfg.gas_window
    ref = env.scenario_batch.ref_price[0]
    start = int(np.flatnonzero(np.isclose(close, ref[0]))[0])
    np.testing.assert_allclose(ref, close[start : start + env.scenario_rows])
    assert env.state.y[0, 0] / env.state.x[0, 0] == pytest.approx(ref[row0])
    for _ in range(100):
        env.step(env.oracle_action())
    with pytest.raises(ConfigError, match="bars"):
        ArbitrageEnv(dataset=ds, episode_length=1000)


def test_several_pools_cex_dex_keep_balances_non_negative():
    env = ArbitrageEnv(
        pool_fees=(0.0005, 0.003, 0.01),
        pool_tvl=(5e6, 2e6, 5e5),
        initial_balances=(2.0, 3_000.0, 2.0, 60.0),
        episode_length=200,
    )
    assert env.action_space.shape == (4,)
    env.reset(seed=0)
    rng = np.random.default_rng(0)
    for _ in range(200):
        a = np.concatenate([rng.uniform(-1, 1, 3), rng.uniform(0, 1, 1)]).astype(np.float32)
        _, _, _, _, info = env.step(a)
        assert np.all(info["inventory"] >= -1e-9), info["inventory"]
        assert info["profit"] <= info["oracle_profit"] + 1e-6


def test_continuous_size_optimal_scales_the_closed_form_optimum():
    env = ArbitrageEnv(episode_length=200, continuous_size="optimal")
    env.reset(seed=5)
    checked = 0
    for _ in range(200):
        opp = env.unwrapped._opportunities()
        state, scen = env.state, env.scenario_batch
        row = int(state.row0[0] + state.t[0])
        bid, ask = core._cex_prices(env.cfg, scen.ref_price[:, row], scen.spread[:, row])
        free, _ = core._unconstrained(env.cfg, state.x, state.y, bid, ask)
        for a0, d in ((1.0, 0), (-1.0, 1), (0.5, 0)):
            size, _ = core.decode_actions(env.cfg, np.array([[a0, 0.0]]), state, scen)
            want = abs(a0) * min(free[0, d], env.cfg.max_trade_size)
            cap = opp["cap"][0, d]
            floor = env.cfg.dead_zone * env.cfg.max_trade_size
            expected = min(want, cap) if min(want, cap) >= floor else 0.0
            assert abs(size[0, 0]) == pytest.approx(expected, rel=1e-12, abs=1e-12)
            if expected > 0:
                assert np.sign(size[0, 0]) == np.sign(a0)
                checked += 1
        env.step(np.zeros(2, np.float32))
    assert checked > 0
    with pytest.raises(ConfigError, match="continuous_size"):
        ArbitrageEnv(continuous_size="half")


def test_continuous_bid_surplus_hands_a_share_of_the_expected_surplus():
    env = ArbitrageEnv(episode_length=200, continuous_size="optimal", continuous_bid="surplus")
    env.reset(seed=7)
    cfg, checked = env.cfg, 0
    for _ in range(200):
        state, scen = env.state, env.scenario_batch
        n, row = np.array([0]), state.row0 + state.t
        bid, ask = core._cex_prices(cfg, scen.ref_price[n, row], scen.spread[n, row])
        free, _ = core._unconstrained(cfg, state.x, state.y, bid, ask)
        for a0, d in ((1.0, 0), (-1.0, 1)):
            _, tip = core.decode_actions(cfg, np.array([[a0, 0.5]]), state, scen)
            gas_per_gwei = cfg.gas_units * core.GWEI * scen.native_price[0, row[0]]
            want = min(free[0, d], cfg.max_trade_size)
            dx = np.zeros((1, 2))
            dx[0, d] = want
            g = core._gross(cfg, dx, state.x, state.y, bid, ask)[0, d] if want > 0 else 0.0
            surplus = max(g - scen.base_fee[0, row[0]] * gas_per_gwei, 0.0)
            expected = min(0.5 * surplus / gas_per_gwei, cfg.max_priority_fee_gwei)
            assert tip[0] == pytest.approx(expected, rel=1e-12, abs=1e-12)
            checked += expected > 0
        env.step(np.zeros(2, np.float32))
    assert checked > 0
    with pytest.raises(ConfigError, match="continuous_bid"):
        ArbitrageEnv(continuous_bid="all")


def test_oracle_action_round_trips_through_every_action_unit():
    from envs.arbitrage_baselines import evaluate_policy_share, make_baseline

    profits = [
        evaluate_policy_share(
            make_baseline("oracle"),
            seeds=[10_000, 10_001],
            env_kwargs={"episode_length": 150, "continuous_size": cs, "continuous_bid": cb},
        )["profits"]
        for cs, cb in (("max", "max"), ("optimal", "max"), ("optimal", "surplus"))
    ]
    # Equal up to the float32 rounding of actions through the Gym API.
    np.testing.assert_allclose(profits[1], profits[0], rtol=1e-6)
    np.testing.assert_allclose(profits[2], profits[0], rtol=1e-6)


def test_discrete_bid_reference_surplus_matches_the_continuous_unit():
    kw = {"episode_length": 100, "size_reference": "optimal"}
    disc = ArbitrageEnv(action_mode="discrete", bid_reference="surplus", **kw)
    cont = ArbitrageEnv(continuous_size="optimal", continuous_bid="surplus", **kw)
    disc.reset(seed=4)
    cont.reset(seed=4)
    cfg = disc.cfg
    n_size, n_bid = len(cfg.size_levels), len(cfg.bid_levels)
    checked = 0
    for _ in range(100):
        for d, sign in ((0, 1.0), (1, -1.0)):
            for b, level in enumerate(cfg.bid_levels):
                code = 1 + (d * n_size + (n_size - 1)) * n_bid + b  # full optimal size
                _, tip_d = core.decode_actions(
                    cfg, np.array([code]), disc.state, disc.scenario_batch
                )
                act = np.array([[sign * cfg.size_levels[-1], level]])
                _, tip_c = core.decode_actions(cont.cfg, act, cont.state, cont.scenario_batch)
                assert tip_d[0] == pytest.approx(tip_c[0], rel=1e-12, abs=1e-12)
                checked += tip_d[0] > 0
        disc.step(0)
        cont.step(np.zeros(2, np.float32))
    assert checked > 0
    with pytest.raises(ConfigError, match="bid_reference"):
        ArbitrageEnv(action_mode="discrete", bid_reference="x")
