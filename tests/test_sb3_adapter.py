"""Stable-Baselines3 adapter: learning runs, callbacks, logging, pickle-free save/load, resume."""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium import spaces

from agents.checkpoint import CheckpointError
from agents.sb3_adapter import SB3Agent
from envs.errors import ConfigError, DataError

SMALL_NET = {"net_arch": [16], "activation_fn": "Tanh"}
PPO_KW = {"n_steps": 64, "batch_size": 32, "n_epochs": 2}
DQN_KW = {"learning_starts": 50, "buffer_size": 500, "batch_size": 16, "train_freq": 4}


class MaskedChainEnv(gym.Env):
    """Chain of 5 cells, actions left / right / forbidden; the forbidden one raises if taken."""

    def __init__(self) -> None:
        self.observation_space = spaces.Box(0.0, 1.0, (5,), np.float32)
        self.action_space = spaces.Discrete(3)
        self.pos, self.t = 0, 0

    def _obs(self) -> np.ndarray:
        obs = np.zeros(5, np.float32)
        obs[self.pos] = 1.0
        return obs

    def action_masks(self) -> np.ndarray:
        # Action 2 is always forbidden; at the left wall "left" is forbidden too.
        return np.array([self.pos > 0, True, False])

    def reset(self, *, seed: int | None = None, options: Any = None) -> tuple[np.ndarray, dict]:
        super().reset(seed=seed)
        self.pos, self.t = 0, 0
        return self._obs(), {}

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict]:
        if not self.action_masks()[int(action)]:
            raise AssertionError(f"masked action {action} taken at cell {self.pos}")
        self.t += 1
        self.pos = self.pos + 1 if int(action) == 1 else self.pos - 1
        terminated = self.pos == 4
        return self._obs(), float(terminated), terminated, self.t >= 20, {}


class DictEnv(gym.Env):
    """Two-block Dict observation; reward for matching the sign of the first feature."""

    def __init__(self) -> None:
        self.observation_space = spaces.Dict(
            OrderedDict(
                [
                    ("market", spaces.Box(-1.0, 1.0, (2, 3), np.float32)),
                    ("portfolio", spaces.Box(-1.0, 1.0, (2,), np.float32)),
                ]
            )
        )
        self.action_space = spaces.Discrete(2)
        self.t = 0

    def _obs(self) -> dict[str, np.ndarray]:
        return {
            "market": self.np_random.uniform(-1, 1, (2, 3)).astype(np.float32),
            "portfolio": self.np_random.uniform(-1, 1, (2,)).astype(np.float32),
        }

    def reset(self, *, seed: int | None = None, options: Any = None) -> tuple[dict, dict]:
        super().reset(seed=seed)
        self.t = 0
        self.obs = self._obs()
        return self.obs, {}

    def step(self, action: Any) -> tuple[dict, float, bool, bool, dict]:
        reward = float(int(action) == int(self.obs["market"][0, 0] > 0))
        self.t += 1
        self.obs = self._obs()
        return self.obs, reward, False, self.t >= 10, {}


class Recorder:
    def __init__(self) -> None:
        self.tags: dict[str, list[tuple[int, float]]] = {}

    def add_scalar(self, tag: str, scalar_value: float, global_step: int) -> None:
        self.tags.setdefault(tag, []).append((int(global_step), float(scalar_value)))


def cartpole_obs(n: int = 32) -> np.ndarray:
    return np.random.default_rng(0).normal(size=(n, 4)).astype(np.float32)


def params(agent: SB3Agent) -> list[torch.Tensor]:
    return [p.detach().clone() for p in agent.model.policy.parameters()]


def test_ppo_learns_logs_and_round_trips(tmp_path: Path) -> None:
    env = gym.make("CartPole-v1")
    agent = SB3Agent(
        "PPO", env=env, policy_kwargs=SMALL_NET, algo_kwargs=PPO_KW, tensorboard_dir=tmp_path / "tb"
    )
    assert agent.policy_name == "MlpPolicy"
    writer = Recorder()
    agent.learn(env, 128, writer=writer)
    assert agent.num_timesteps == 128
    assert {"rollout/ep_rew_mean", "rollout/ep_len_mean", "time/fps", "train/loss"} <= set(
        writer.tags
    )
    assert list((tmp_path / "tb").glob("events.out.tfevents.*"))
    agent.save(tmp_path / "ppo.pt")
    loaded = SB3Agent.load(tmp_path / "ppo.pt", device="cpu")
    assert loaded.algo == "PPO" and loaded.policy_kwargs == agent.policy_kwargs
    for a, b in zip(params(agent), params(loaded), strict=True):
        assert torch.equal(a, b)
    obs = cartpole_obs()
    np.testing.assert_array_equal(agent.act(obs), loaded.act(obs))
    single = loaded.act(obs[0])
    assert single.shape == () and int(single) == int(agent.act(obs[0]))
    # Continuing to an absolute target: one more rollout of 64 steps.
    agent.learn(env, 192)
    assert agent.num_timesteps == 192


def test_callback_receives_steps_and_stops_training() -> None:
    env = gym.make("CartPole-v1")
    agent = SB3Agent("PPO", env=env, policy_kwargs=SMALL_NET, algo_kwargs=PPO_KW)
    seen: list[int] = []

    def callback(step: int) -> bool:
        seen.append(step)
        return step < 50

    agent.learn(env, 1000, callback=callback)
    assert agent.num_timesteps == 50 and seen == list(range(1, 51))


def test_dqn_checkpoint_resume_is_exact(tmp_path: Path) -> None:
    def fresh_env() -> gym.Env:
        env = gym.make("CartPole-v1")
        env.reset(seed=5)  # SB3 resets an attached env without a seed: it continues this RNG
        return env

    def build() -> SB3Agent:
        return SB3Agent("DQN", env=fresh_env(), policy_kwargs=SMALL_NET, algo_kwargs=DQN_KW, seed=1)

    original = build()
    original.learn(fresh_env(), 200)
    original.save_checkpoint(tmp_path / "ckpt.pt", include_buffer=True)
    original.learn(fresh_env(), 400)

    resumed = SB3Agent("DQN", env=fresh_env(), policy_kwargs={"net_arch": [16]}, seed=7)
    resumed.load_checkpoint(tmp_path / "ckpt.pt")
    assert resumed.num_timesteps == 200
    assert resumed.algo_kwargs == original.algo_kwargs
    assert resumed.model.replay_buffer.pos == 200  # the buffer came back (capacity 500)
    resumed.learn(fresh_env(), 400)
    assert resumed.num_timesteps == 400
    assert resumed.model._n_updates == original.model._n_updates
    assert resumed.model.exploration_rate == pytest.approx(original.model.exploration_rate)
    for a, b in zip(params(original), params(resumed), strict=True):
        assert torch.equal(a, b)

    # Policy-only save/load of a DQN: same greedy actions.
    original.save(tmp_path / "dqn.pt")
    loaded = SB3Agent.load(tmp_path / "dqn.pt", device="cpu")
    np.testing.assert_array_equal(original.act(cartpole_obs()), loaded.act(cartpole_obs()))


def test_maskable_ppo_respects_masks(tmp_path: Path) -> None:
    env = MaskedChainEnv()
    agent = SB3Agent("MaskablePPO", env=env, policy_kwargs=SMALL_NET, algo_kwargs=PPO_KW)
    agent.learn(env, 128)  # MaskedChainEnv raises if a masked action is ever sampled
    assert agent.num_timesteps == 128
    obs = np.eye(5, dtype=np.float32)[[0, 0, 1, 2, 3] * 8]
    masks = np.array([[o.argmax() > 0, True, False] for o in obs])
    for deterministic in (True, False):
        actions = agent.act(obs, deterministic=deterministic, action_masks=masks)
        assert masks[np.arange(len(obs)), actions].all()
    agent.save(tmp_path / "mppo.pt")
    loaded = SB3Agent.load(tmp_path / "mppo.pt")
    np.testing.assert_array_equal(
        agent.act(obs, action_masks=masks), loaded.act(obs, action_masks=masks)
    )


def test_dict_observations_use_multi_input_policy(tmp_path: Path) -> None:
    env = DictEnv()
    agent = SB3Agent("PPO", env=env, policy_kwargs=SMALL_NET, algo_kwargs=PPO_KW)
    assert agent.policy_name == "MultiInputPolicy"
    agent.learn(env, 64)
    agent.save(tmp_path / "dict.pt")
    loaded = SB3Agent.load(tmp_path / "dict.pt")
    assert list(loaded.observation_space.spaces) == ["market", "portfolio"]
    rng = np.random.default_rng(1)
    batch = {
        "market": rng.uniform(-1, 1, (16, 2, 3)).astype(np.float32),
        "portfolio": rng.uniform(-1, 1, (16, 2)).astype(np.float32),
    }
    np.testing.assert_array_equal(agent.act(batch), loaded.act(batch))


def test_recurrent_ppo_keeps_state_between_calls(tmp_path: Path) -> None:
    env = gym.make("CartPole-v1")
    agent = SB3Agent(
        "RecurrentPPO",
        env=env,
        policy_kwargs={"net_arch": [8], "lstm_hidden_size": 8},
        algo_kwargs={"n_steps": 32, "batch_size": 32, "n_epochs": 1},
    )
    assert agent.policy_name == "MlpLstmPolicy" and agent.is_recurrent
    agent.learn(env, 32)
    agent.save(tmp_path / "rppo.pt")
    loaded = SB3Agent.load(tmp_path / "rppo.pt")
    obs = cartpole_obs(6)
    first = [int(agent.act(o)) for o in obs]
    assert agent._recurrent_state is not None
    # The LSTM state carries over between calls; after reset_state the same sequence recurs,
    # and a freshly loaded agent (zero state) produces it too.
    agent.reset_state()
    assert [int(agent.act(o)) for o in obs] == first
    assert [int(loaded.act(o)) for o in obs] == first
    # episode_start=True on the first observation is the same as reset_state().
    again = [int(agent.act(o, episode_start=(i == 0))) for i, o in enumerate(obs)]
    assert again == first


def test_sac_checkpoint_round_trip(tmp_path: Path) -> None:
    env = gym.make("Pendulum-v1")
    agent = SB3Agent(
        "SAC",
        env=env,
        policy_kwargs={"net_arch": [16]},
        algo_kwargs={"learning_starts": 32, "buffer_size": 200, "batch_size": 16},
    )
    agent.learn(env, 64)
    agent.save_checkpoint(tmp_path / "sac.pt", include_buffer=True)
    resumed = SB3Agent("SAC", env=env, policy_kwargs={"net_arch": [16]})
    resumed.load_checkpoint(tmp_path / "sac.pt")
    assert resumed.num_timesteps == 64
    assert torch.equal(resumed.model.log_ent_coef, agent.model.log_ent_coef)
    np.testing.assert_array_equal(
        resumed.model.replay_buffer.observations[:64], agent.model.replay_buffer.observations[:64]
    )
    obs = np.random.default_rng(0).normal(size=(8, 3)).astype(np.float32)
    np.testing.assert_array_equal(agent.act(obs), resumed.act(obs))
    resumed.learn(env, 80)
    assert resumed.num_timesteps == 80


def test_bad_configs_and_unsafe_files_are_refused(tmp_path: Path) -> None:
    env = gym.make("CartPole-v1")
    with pytest.raises(ConfigError, match="unknown algorithm"):
        SB3Agent("NotAnAlgo", env=env)
    with pytest.raises(ConfigError, match=r"policy_kwargs\.features_extractor_kwargs"):
        SB3Agent("PPO", env=env, policy_kwargs={"features_extractor_kwargs": {"f": object()}})
    with pytest.raises(ConfigError, match="no class"):
        SB3Agent("PPO", env=env, policy_kwargs={"activation_fn": "os.system"})
    with pytest.raises(ConfigError, match="does not support"):
        SB3Agent("DQN", env=gym.make("Pendulum-v1"))
    with pytest.raises(ConfigError, match="ignores masks"):
        SB3Agent("PPO", env=env).act(cartpole_obs(1), action_masks=[[True, True]])
    # The run's seed and device may arrive inside a config's params block.
    from_config = SB3Agent("PPO", env=env, algo_kwargs={**PPO_KW, "seed": 3, "device": "cpu"})
    assert from_config.seed == 3 and from_config.device == torch.device("cpu")
    assert from_config.algo_kwargs == PPO_KW
    # Classes from the allowed namespaces are stored by name.
    agent = SB3Agent("A2C", env=env, policy_kwargs={"activation_fn": torch.nn.ReLU})
    assert agent.policy_kwargs == {"activation_fn": "ReLU"}
    # SB3's own zip (cloudpickle inside) is refused, as is a file with a pickled object.
    agent.model.save(tmp_path / "sb3_model.zip")
    with pytest.raises(CheckpointError):
        SB3Agent.load(tmp_path / "sb3_model.zip")
    torch.save({"format": "marketrl.sb3", "payload": Recorder()}, tmp_path / "pickled.pt")
    with pytest.raises(CheckpointError, match="refused"):
        SB3Agent.load(tmp_path / "pickled.pt")
    torch.save({"format": "other"}, tmp_path / "other.pt")
    with pytest.raises(DataError, match="not an SB3Agent file"):
        SB3Agent.load(tmp_path / "other.pt")


# --- confidence (issue 8) ----------------------------------------------------------------------

OFF_POLICY_KW = {"buffer_size": 100, "learning_starts": 10}


def pendulum_obs(n: int = 8) -> np.ndarray:
    return np.random.default_rng(1).normal(size=(n, 3)).astype(np.float32)


def _erf_measure(mean: torch.Tensor, std: torch.Tensor) -> float:
    import math

    z = float((mean.abs() / std).mean())
    return math.erf(z / math.sqrt(2.0))


@pytest.mark.parametrize("algo", ["DQN", "QRDQN"])
def test_q_value_confidence_is_softmax_of_the_chosen_action(algo: str) -> None:
    agent = SB3Agent(
        algo, env=gym.make("CartPole-v1"), policy_kwargs={"net_arch": [8]}, algo_kwargs=DQN_KW
    )
    policy = agent.model.policy
    for obs in cartpole_obs(6):
        action, confidence = agent.act_with_confidence(obs)
        assert np.array_equal(action, agent.act(obs))
        with torch.no_grad():
            x = torch.as_tensor(obs[None])
            q = policy.quantile_net(x).mean(dim=1) if algo == "QRDQN" else policy.q_net(x)
        probs = torch.softmax(q[0].double(), dim=0)
        assert int(action) == int(torch.argmax(q[0]))  # greedy action = highest Q
        assert confidence == pytest.approx(float(probs[int(action)]), rel=1e-9)
        assert 0.5 <= confidence <= 1.0  # two actions: the greedy one has at least half
        _, hot_conf = agent.act_with_confidence(obs, temperature=1e-3)
        assert hot_conf >= confidence  # a colder softmax is surer of the same argmax
    with pytest.raises(ConfigError, match="temperature"):
        agent.act_with_confidence(cartpole_obs(1)[0], temperature=0.0)


@pytest.mark.parametrize(
    ("algo", "kwargs", "sigma"),
    [
        ("TD3", {}, 0.2),  # TD3's target_policy_noise
        ("DDPG", {"action_noise": {"type": "normal", "sigma": 0.3}}, 0.3),
        ("DDPG", {}, 0.1),  # no noise at all: the documented fallback
    ],
)
def test_deterministic_actor_confidence_uses_a_fixed_sigma(
    algo: str, kwargs: dict, sigma: float
) -> None:
    agent = SB3Agent(
        algo,
        env=gym.make("Pendulum-v1"),
        policy_kwargs={"net_arch": [8]},
        algo_kwargs={**OFF_POLICY_KW, **kwargs},
    )
    actor = agent.model.policy.actor
    confs = []
    for obs in pendulum_obs():
        action, confidence = agent.act_with_confidence(obs)
        assert np.array_equal(action, agent.act(obs))
        with torch.no_grad():
            unit = actor(torch.as_tensor(obs[None]))
        assert np.allclose(agent.model.policy.unscale_action(unit.numpy()), action[None])
        assert confidence == pytest.approx(_erf_measure(unit, torch.full_like(unit, sigma)))
        confs.append(confidence)
    assert all(0.0 <= c < 1.0 for c in confs) and len(set(confs)) > 1
    # Pushed towards a bound, the same actor is surer; at the centre it has no confidence.
    last = actor.mu[-2]
    with torch.no_grad():
        last.weight.zero_()
        last.bias.fill_(5.0)
    assert agent.act_with_confidence(pendulum_obs(1)[0])[1] > 0.99
    with torch.no_grad():
        last.bias.fill_(0.0)
    assert agent.act_with_confidence(pendulum_obs(1)[0])[1] == 0.0


@pytest.mark.parametrize("algo", ["SAC", "TQC"])
def test_sac_family_confidence_from_the_gaussian_std(algo: str) -> None:
    agent = SB3Agent(
        algo,
        env=gym.make("Pendulum-v1"),
        policy_kwargs={"net_arch": [8]},
        algo_kwargs=OFF_POLICY_KW,
    )
    actor = agent.model.policy.actor
    obs = pendulum_obs(1)[0]
    action, confidence = agent.act_with_confidence(obs)
    assert np.array_equal(action, agent.act(obs))
    with torch.no_grad():
        mean, log_std, _ = actor.get_action_dist_params(torch.as_tensor(obs[None]))
    assert confidence == pytest.approx(_erf_measure(mean, log_std.exp()))
    with torch.no_grad():
        actor.log_std.bias.fill_(1.5)  # wider policy, same mean
    _, wide = agent.act_with_confidence(obs)
    with torch.no_grad():
        actor.log_std.bias.fill_(-4.0)
    _, narrow = agent.act_with_confidence(obs)
    assert wide < narrow


def test_maskable_ppo_confidence_uses_the_masked_distribution() -> None:
    env = MaskedChainEnv()
    agent = SB3Agent("MaskablePPO", env=env, policy_kwargs={"net_arch": [8]}, algo_kwargs=PPO_KW)
    obs, _ = env.reset(seed=0)
    masks = env.action_masks()  # [False, True, False]: only "right" is allowed at the wall
    action, confidence = agent.act_with_confidence(obs, action_masks=masks)
    assert int(action) == 1 and confidence == pytest.approx(1.0)
    _, unmasked = agent.act_with_confidence(obs)
    assert unmasked < 1.0


def test_recurrent_ppo_confidence_carries_the_lstm_state() -> None:
    agent = SB3Agent(
        "RecurrentPPO",
        env=gym.make("CartPole-v1"),
        policy_kwargs={"net_arch": [8], "lstm_hidden_size": 8},
        algo_kwargs={"n_steps": 32, "batch_size": 32, "n_epochs": 1},
    )
    with torch.no_grad():  # a policy whose output depends visibly on the LSTM state
        for p in agent.model.policy.parameters():
            p.mul_(8.0)
    obs = cartpole_obs(6)
    policy = agent.model.policy
    expected_actions = [int(agent.act(o)) for o in obs]
    agent.reset_state()
    state, got = None, []
    for i, o in enumerate(obs):
        action, confidence = agent.act_with_confidence(o)
        assert int(action) == expected_actions[i]
        # The distribution at the state before this observation, advanced by hand.
        with torch.no_grad():
            shape = policy.lstm_hidden_state_shape
            h = torch.zeros(shape) if state is None else state[0]
            c = torch.zeros(shape) if state is None else state[1]
            dist, state = policy.get_distribution(
                torch.as_tensor(o[None]), (h, c), torch.tensor([float(i == 0)])
            )
        assert confidence == pytest.approx(float(dist.distribution.probs[0, int(action)]))
        got.append(confidence)
    # Same observation, different history: the confidence is not a function of obs alone.
    agent.reset_state()
    fresh = agent.act_with_confidence(obs[-1])[1]
    assert fresh != pytest.approx(got[-1])
    agent.reset_state()
    assert [agent.act_with_confidence(o)[1] for o in obs] == pytest.approx(got)
