"""Baselines and the share-of-oracle evaluation on short held-out episodes."""

from __future__ import annotations

import numpy as np
import pytest

from envs.arbitrage_baselines import (
    NoopPolicy,
    OraclePolicy,
    RandomPolicy,
    ThresholdPolicy,
    evaluate_policy_share,
    make_baseline,
)
from envs.errors import ConfigError

KW = {"episode_length": 300}
SEEDS = range(10_000, 10_004)


@pytest.fixture(scope="module")
def results():
    return {
        name: evaluate_policy_share(make_baseline(name), seeds=SEEDS, env_kwargs=KW)
        for name in ("oracle", "threshold", "noop", "random")
    }


def test_oracle_replay_and_path_bound(results):
    oracle = results["oracle"]
    assert np.all(oracle["oracle_profits"] > 0)
    # The env's end-of-episode replay is the oracle policy itself (float32 actions through
    # the Gym API differ from the replay's float64 ones by rounding only).
    np.testing.assert_allclose(oracle["shares"], 1.0, rtol=1e-6)
    # Only rebalancing fees separate the oracle policy from the per-block bound on its path.
    assert 0.85 <= oracle["mean_path_share"] <= 1.0 + 1e-9
    # The replay does not depend on the evaluated policy: same seeds, same oracle profit.
    for name in ("threshold", "noop", "random"):
        np.testing.assert_allclose(results[name]["oracle_profits"], oracle["oracle_profits"])
        assert results[name]["mean_share"] < oracle["mean_share"]
        # The path bound is a strict bound on the policy's own trajectory.
        assert np.all(results[name]["path_shares"] <= 1.0 + 1e-9)
        assert np.all(results[name]["shares"] <= 1.0 + 1e-9)


def test_path_bound_recounts_open_gaps(results):
    # A passive policy leaves gaps open, and the per-block bound counts each again in every
    # block it stays open: its path bound exceeds the oracle's replayed profit.
    noop = results["noop"]
    assert np.all(noop["path_oracle_profits"] > noop["oracle_profits"])


def test_noop_and_random(results):
    assert results["noop"]["mean_share"] == 0.0
    assert np.all(results["noop"]["profits"] == 0.0)
    assert results["noop"]["competitor_took"].sum() > 0
    assert results["random"]["mean_share"] < 0  # random trading against an AMM loses money


def test_threshold_earns_something(results):
    assert results["threshold"]["profits"].sum() > 0
    assert results["threshold"]["mean_share"] > results["noop"]["mean_share"]


def test_flat_observations_and_agent_interface():
    class FlatAgent:
        """Anything with act(obs, deterministic) works, e.g. an agents.base.Agent."""

        def __init__(self):
            self.inner = ThresholdPolicy()
            self.env = None

        def act(self, obs, deterministic=True):
            assert obs.ndim == 2  # a batch of flat vectors
            return np.zeros((obs.shape[0], 2), np.float32)

    r = evaluate_policy_share(FlatAgent(), seeds=[1, 2], env_kwargs={**KW, "flatten": True})
    assert r["mean_share"] == 0.0 and len(r["shares"]) == 2
    r = evaluate_policy_share(ThresholdPolicy(), seeds=[1], env_kwargs={**KW, "flatten": True})
    assert np.isfinite(r["mean_share"])


def test_discrete_baselines_and_errors():
    kw = {**KW, "action_mode": "discrete"}
    r = evaluate_policy_share(ThresholdPolicy(0.0, 0.3), seeds=[5], env_kwargs=kw)
    assert np.isfinite(r["mean_share"])
    r = evaluate_policy_share(RandomPolicy(0), seeds=[5], env_kwargs=kw)
    assert np.isfinite(r["mean_share"])
    r = evaluate_policy_share(NoopPolicy(), seeds=[5], env_kwargs=kw)
    assert r["mean_share"] == 0.0
    with pytest.raises(ConfigError):
        evaluate_policy_share(OraclePolicy(), seeds=[5], env_kwargs=kw)
    with pytest.raises(ConfigError):
        make_baseline("greedy")
    with pytest.raises(ConfigError):
        ThresholdPolicy(bid=2.0)


def test_baselines_accept_single_wrapped_envs():
    import gymnasium as gym

    import envs  # noqa: F401

    for flatten in (False, True):
        env = gym.make("Arbitrage-v0", episode_length=40, flatten=flatten)
        obs, _ = env.reset(seed=0)
        for name in ("oracle", "threshold", "noop", "random", "bid_shading"):
            pol = make_baseline(name)
            a = pol(obs, env)
            assert env.action_space.contains(np.asarray(a, dtype=np.float32))
            obs, *_ = env.step(a)
