"""ArbitrageVectorEnv: same trajectories as N single envs seeded seed+i, NEXT_STEP autoreset."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest

import envs  # noqa: F401
from envs.arbitrage_env import ArbitrageEnv
from envs.errors import ConfigError
from envs.vector_arbitrage import ArbitrageVectorEnv


def _obs_i(obs, i):
    if isinstance(obs, dict):
        return {k: v[i] for k, v in obs.items()}
    return obs[i]


def _eq(a, b):
    if isinstance(a, dict):
        return all(np.array_equal(a[k], b[k]) for k in a)
    return np.array_equal(a, b)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"mode": "cex_dex"},
        {"mode": "dex_dex", "flatten": True},
        {"mode": "cex_dex", "action_mode": "discrete"},
        {"mode": "cex_dex", "latency": 1},
    ],
)
def test_vector_matches_single_envs_across_autoreset(kwargs):
    n, length, seed = 3, 25, 100
    venv = ArbitrageVectorEnv(num_envs=n, episode_length=length, **kwargs)
    singles = [ArbitrageEnv(episode_length=length, **kwargs) for _ in range(n)]
    vobs, _ = venv.reset(seed=seed)
    sobs = [e.reset(seed=seed + i)[0] for i, e in enumerate(singles)]
    for i in range(n):
        assert _eq(_obs_i(vobs, i), sobs[i])
    rng = np.random.default_rng(0)
    pending_reset = [False] * n
    for _ in range(2 * length + 5):
        if venv.cfg.action_mode == "discrete":
            acts = rng.integers(0, venv.cfg.n_discrete_actions, n)
        else:
            acts = rng.uniform(-0.4, 0.4, (n, venv.cfg.n_slots + 1)).astype(np.float32)
            acts[:, -1] = np.abs(acts[:, -1])
        vobs, vrew, vterm, vtrunc, vinfo = venv.step(acts)
        for i, e in enumerate(singles):
            if pending_reset[i]:
                o, _ = e.reset()
                r, trunc = 0.0, False
                pending_reset[i] = False
            else:
                o, r, _, trunc, info = e.step(acts[i])
                assert vinfo["profit"][i] == info["profit"]
                assert vinfo["oracle_profit"][i] == info["oracle_profit"]
                if trunc:
                    assert vinfo["_episode"][i]
                    assert vinfo["episode"]["total_profit"][i] == info["episode"]["total_profit"]
                    pending_reset[i] = True
            assert _eq(_obs_i(vobs, i), o)
            assert vrew[i] == r
            assert vtrunc[i] == trunc
            assert not vterm[i]


def test_make_vec_uses_vector_entry_point():
    venv = gym.make_vec(
        "Arbitrage-v0", num_envs=4, vectorization_mode="vector_entry_point", episode_length=20
    )
    obs, _ = venv.reset(seed=0)
    assert venv.observation_space.contains(obs)
    obs, r, _term, trunc, info = venv.step(venv.action_space.sample())
    assert r.shape == (4,) and trunc.shape == (4,)
    assert info["inventory"].shape == (4, 4)


def test_vector_masks_and_errors():
    venv = ArbitrageVectorEnv(num_envs=2, action_mode="discrete", episode_length=10)
    venv.reset(seed=0)
    assert venv.action_masks().shape == (2, venv.cfg.n_discrete_actions)
    with pytest.raises(ConfigError):
        venv.step(np.array([0, 10_000]))
    with pytest.raises(ConfigError, match="num_envs"):
        ArbitrageVectorEnv(num_envs=0)
    with pytest.raises(ConfigError, match="seeds"):
        venv.reset(seed=[1, 2, 3])
