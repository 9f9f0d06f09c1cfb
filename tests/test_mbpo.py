"""MBPO: learns a 1-D point-mass target-tracking task in a few hundred real steps; save/load
and checkpoints round-trip; configs are checked."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from gymnasium import spaces
from omegaconf import OmegaConf
from toy_envs import PointMass

from agents.checkpoint import CheckpointError
from agents.mbpo import MBPO, MBPOConfig, rollout_length_at
from envs.errors import ConfigError


def evaluate(agent: MBPO, episodes: int = 5) -> float:
    env, returns = PointMass(), []
    for i in range(episodes):
        obs, _ = env.reset(seed=100 + i)
        done, total = False, 0.0
        while not done:
            obs, reward, terminated, truncated, _ = env.step(agent.act(obs, True))
            total += reward
            done = terminated or truncated
        returns.append(total)
    return float(np.mean(returns))


class TagRecorder:
    """A ScalarWriter that remembers the tags it was given."""

    def __init__(self) -> None:
        self.tags: set[str] = set()

    def add_scalar(self, tag: str, scalar_value: float, global_step: int) -> None:
        assert np.isfinite(scalar_value)
        self.tags.add(tag)


def small_config(**overrides) -> MBPOConfig:
    values = {
        "sac": {"net_arch": [64, 64], "batch_size": 128, "learning_rate": 1e-3},
        "ensemble": {"ensemble_size": 5, "num_elites": 3, "hidden": [32, 32]},
        "model_training": {"max_epochs": 10},
        "learning_starts": 80,
        "model_train_freq": 80,
        "rollout_batch_size": 400,
        "rollout_schedule": [0, 1, 1, 3],
        "updates_per_step": 5,
        "seed": 0,
        "device": "cpu",
    }
    values.update(overrides)
    return MBPOConfig.from_dict(values)


@pytest.fixture(scope="module")
def trained() -> MBPO:
    torch.set_num_threads(1)
    env = PointMass()
    agent = MBPO(env.observation_space, env.action_space, small_config())
    agent.learn(env, 260)
    return agent


def test_mbpo_learns_point_mass(trained: MBPO) -> None:
    assert trained.num_timesteps == 260
    assert trained.model_fits == 3
    assert trained.model_buffer is not None and trained.model_buffer.size > 0
    score = evaluate(trained)
    assert score > -12.0, score  # random actions: about -40


def test_policy_save_load_acts_identically(trained: MBPO, tmp_path: Path) -> None:
    trained.save(tmp_path / "policy.pt")
    loaded = MBPO.load(tmp_path / "policy.pt", device="cpu")
    obs = np.linspace(-1.5, 1.5, 7, dtype=np.float32).reshape(7, 1)
    np.testing.assert_array_equal(loaded.act(obs), trained.act(obs))
    torch.testing.assert_close(
        loaded.dynamics.step(torch.from_numpy(obs), torch.zeros(7, 1), sample=False)[0],
        trained.dynamics.step(torch.from_numpy(obs), torch.zeros(7, 1), sample=False)[0],
    )


def test_checkpoint_resume_restores_state(trained: MBPO, tmp_path: Path) -> None:
    path = tmp_path / "ckpt.pt"
    trained.save_checkpoint(path, include_buffer=True)
    env = PointMass()
    fresh = MBPO(env.observation_space, env.action_space, small_config(log_interval=5))
    fresh.load_checkpoint(path)
    assert fresh.num_timesteps == trained.num_timesteps and fresh.model_fits == 3
    assert fresh.sac.replay is not None and fresh.sac.replay.size == trained.sac.replay.size
    assert fresh.model_buffer is not None
    assert fresh.model_buffer.size == trained.model_buffer.size
    obs = np.zeros((3, 1), np.float32)
    np.testing.assert_array_equal(fresh.act(obs), trained.act(obs))
    assert fresh.dynamics.ensemble.elite_indices.tolist() == (
        trained.dynamics.ensemble.elite_indices.tolist()
    )
    writer = TagRecorder()
    fresh.learn(env, 265, writer=writer)  # resumes and logs
    assert fresh.num_timesteps == 265
    assert {"rollout/ep_rew_mean", "train/critic_loss", "time/fps"} <= writer.tags
    with pytest.raises(CheckpointError):
        trained.load_checkpoint(tmp_path / "missing.pt")


def test_model_training_is_logged(trained: MBPO) -> None:
    writer = TagRecorder()
    trained._log(writer, 0.0, 0)
    expected = {
        "model/loss",
        "model/elite_holdout_mse",
        "rollout/length",
        "rollout/model_buffer_size",
    }
    assert expected <= writer.tags


def test_agent_config_file_builds() -> None:
    cfg = OmegaConf.load(Path(__file__).parents[1] / "configs" / "agent" / "mbpo.yaml")
    assert cfg.kind == "mbpo"
    params = OmegaConf.to_container(cfg.params, resolve=True)
    config = MBPOConfig.from_dict({**params, "seed": 3, "device": "cpu"})
    assert config.updates_per_step == 20 and config.real_ratio == 0.05


def test_rollout_schedule_and_config_errors() -> None:
    assert rollout_length_at(0, [10, 20, 1, 5]) == 1
    assert rollout_length_at(15, [10, 20, 1, 5]) == 3
    assert rollout_length_at(99, [10, 20, 1, 5]) == 5
    with pytest.raises(ConfigError, match="unknown fields"):
        MBPOConfig.from_dict({"rollout_len": 3})
    with pytest.raises(ConfigError, match="real_ratio"):
        MBPOConfig.from_dict({"real_ratio": 1.5})
    with pytest.raises(ConfigError, match="rollout_schedule"):
        MBPOConfig.from_dict({"rollout_schedule": [0, 10, 3, 1]})
    with pytest.raises(ConfigError, match=r"sac config: unknown fields"):
        MBPOConfig.from_dict({"sac": {"lr": 1e-3}})
    with pytest.raises(ConfigError, match=r"mbpo\.ensemble"):
        MBPOConfig.from_dict({"ensemble": {"num_elites": 9}})
    with pytest.raises(ConfigError, match="Box"):
        MBPO(spaces.Box(-1, 1, (1,)), spaces.Discrete(3), small_config())


# --- trading-aware MBPO on MarketTrading-v0 ---------------------------------------------------


def _market_env():
    from envs.data.dataset import MarketDataset
    from envs.market_env import MarketTradingEnv

    rng = np.random.default_rng(0)
    n = 240
    close = 100.0 * np.exp(np.cumsum(rng.normal(0.0, 0.01, (n, 1)), axis=0))
    open_ = np.vstack([close[:1], close[:-1]]) * np.exp(rng.normal(0, 0.002, (n, 1)))
    volume = rng.lognormal(8.0, 0.3, (n, 1))
    dataset = MarketDataset(
        timestamps=np.arange(n, dtype=np.int64) * 3600 * 10**9,
        symbols=("A",),
        ohlcv=np.stack(
            [open_, np.maximum(open_, close), np.minimum(open_, close), close, volume], -1
        ),
        source="<gbm mbpo test>",
    )
    return MarketTradingEnv(
        dataset=dataset,
        features=("logret_1", "rvol_8"),
        window=4,
        episode_length=50,
        action_mode="continuous",
        flatten=True,
    )


def test_trading_aware_mbpo_runs_on_market_trading(tmp_path: Path) -> None:
    from envs.market_accounting import accounting_spec

    env = _market_env()
    config = small_config(
        trading_aware=True,
        learning_starts=40,
        model_train_freq=40,
        rollout_batch_size=64,
        rollout_schedule=[0, 1, 2, 2],
        updates_per_step=1,
    )
    with pytest.raises(ConfigError, match="for_env"):
        MBPO(env.observation_space, env.action_space, config)
    agent = MBPO.for_env(env, config)
    spec = accounting_spec(env)
    assert agent.n_auxiliary == 3 and agent.dynamics.ensemble.out_dim == len(spec.exogenous) + 3
    agent.learn(env, 130)
    assert agent.model_fits == 3 and agent.model_buffer is not None
    # Auxiliary inputs were stored for every real transition (impact scale > 0 on this data).
    assert agent.auxiliary is not None and bool((agent.auxiliary[:130, 2] > 0).all())
    n = agent.model_buffer.size
    assert n > 0
    nxt = agent.model_buffer.next_observations[:n]
    port = nxt[:, spec.portfolio]
    # Imagined portfolios come from the accounting, not a network: exposure + cash / value = 1
    # and the last target is the action mapped exactly.
    torch.testing.assert_close(port[:, 0] + port[:, 1], torch.ones(n), rtol=0, atol=1e-5)
    actions = agent.model_buffer.actions[:n, 0]
    torch.testing.assert_close(port[:, 4], actions, rtol=0, atol=1e-6)
    obs = env.reset(seed=1)[0]
    assert agent.act(obs).shape == (1,)
    # The accounting parameters travel in the files: loading needs no env.
    agent.save(tmp_path / "policy.pt")
    agent.save_checkpoint(tmp_path / "ckpt.pt", include_buffer=True)
    for name in ("policy.pt", "ckpt.pt"):
        loaded = MBPO.load(tmp_path / name, device="cpu")
        assert loaded.config.trading_aware and loaded.n_auxiliary == 3
        np.testing.assert_array_equal(loaded.act(obs), agent.act(obs))
        assert loaded.dynamics.known_dynamics.spec == spec
    np.testing.assert_array_equal(loaded.auxiliary, agent.auxiliary)
