"""Deep Q-learning agent: targets, n-step returns, masks, confidence, learning, persistence."""

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
from agents.qlearning import (
    NStepAccumulator,
    QLearningAgent,
    QLearningConfig,
    QNetwork,
    double_q_target,
)
from envs.errors import ConfigError, DataError


class ChainEnv(gym.Env):
    """A combination-lock chain of ``length`` cells; reward 1 on reaching the right end.

    In cell ``i`` one of the two actions (``lock[i]``, a fixed pattern mixing 0s and 1s) moves
    right, the other stays. So no constant policy (and no untrained network that prefers one
    action everywhere) solves it; the optimal policy finishes in ``length - 1`` steps, a random
    one in about twice that. Truncated after ``max_steps``. With ``masked=True`` a third action
    ("jackpot") is always masked and raises if it is ever taken.
    """

    def __init__(self, length: int = 8, max_steps: int = 30, masked: bool = False) -> None:
        self.length, self.max_steps, self.masked = length, max_steps, masked
        self.lock = [(i * 5 + i // 3) % 2 for i in range(length - 1)]  # 0,1,0,0,1,0,0
        self.observation_space = spaces.Box(0.0, 1.0, (length,), np.float32)
        self.action_space = spaces.Discrete(3 if masked else 2)
        self.pos, self.t = 0, 0

    def _obs(self) -> np.ndarray:
        obs = np.zeros(self.length, np.float32)
        obs[self.pos] = 1.0
        return obs

    def action_masks(self) -> np.ndarray:
        return np.array([True, True, False] if self.masked else [True, True])

    def reset(self, *, seed: int | None = None, options: Any = None) -> tuple[np.ndarray, dict]:
        super().reset(seed=seed)
        self.pos, self.t = 0, 0
        return self._obs(), {}

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict]:
        action = int(action)
        if self.masked and action == 2:
            raise AssertionError("a masked action was taken")
        self.t += 1
        if action == self.lock[self.pos]:
            self.pos += 1
        terminated = self.pos == self.length - 1
        truncated = not terminated and self.t >= self.max_steps
        return self._obs(), float(terminated), terminated, truncated, {}


class DictChainEnv(ChainEnv):
    """The chain with a Dict observation: position one-hot and a constant bias block."""

    def __init__(self) -> None:
        super().__init__(length=5, max_steps=20)
        self.observation_space = spaces.Dict(
            OrderedDict(
                [
                    ("position", spaces.Box(0.0, 1.0, (5,), np.float32)),
                    ("bias", spaces.Box(-1.0, 1.0, (1, 2), np.float32)),
                ]
            )
        )

    def _obs(self) -> dict[str, np.ndarray]:  # type: ignore[override]
        return {"position": super()._obs(), "bias": np.full((1, 2), 0.5, np.float32)}


class Recorder:
    """A ScalarWriter that keeps everything."""

    def __init__(self) -> None:
        self.scalars: list[tuple[str, float, int]] = []

    def add_scalar(self, tag: str, scalar_value: float, global_step: int) -> None:
        self.scalars.append((tag, float(scalar_value), int(global_step)))


def chain_config(**overrides: Any) -> QLearningConfig:
    values: dict[str, Any] = dict(
        learning_rate=3e-3,
        buffer_size=5000,
        learning_starts=200,
        batch_size=32,
        gamma=0.9,
        n_step=3,
        train_freq=1,
        gradient_steps=1,
        target_update_interval=100,
        exploration_fraction=0.5,
        exploration_final_eps=0.05,
        hidden_sizes=(32,),
        log_interval=100,
        seed=0,
        device="cpu",
    )
    values.update(overrides)
    return QLearningConfig(**values)


def greedy_episode(agent: QLearningAgent, env: ChainEnv) -> tuple[float, int]:
    obs, _ = env.reset()
    total, steps, done = 0.0, 0, False
    while not done:
        masks = env.action_masks() if env.masked else None
        obs, reward, terminated, truncated, _ = env.step(agent.act(obs, action_masks=masks))
        total, steps, done = total + reward, steps + 1, terminated or truncated
    return total, steps


def weights(agent: QLearningAgent) -> list[torch.Tensor]:
    return [p.detach().clone() for p in agent.q_network.parameters()]


# ------------------------------------------------------------------ targets and n-step returns


def test_double_q_target_hand_example() -> None:
    rewards = torch.tensor([1.0, 0.5, 2.0])
    discounts = torch.tensor([0.9, 0.0, 0.81])
    next_q_online = torch.tensor([[1.0, 3.0, 2.0], [5.0, 0.0, 0.0], [0.0, 1.0, 4.0]])
    next_q_target = torch.tensor([[10.0, 20.0, 30.0], [7.0, 8.0, 9.0], [-1.0, -2.0, -3.0]])
    # Double Q: online argmax = [1, 0, 2] evaluated by the target net = [20, 7, -3].
    expected = torch.tensor([1.0 + 0.9 * 20.0, 0.5, 2.0 + 0.81 * -3.0])
    got = double_q_target(rewards, discounts, next_q_online, next_q_target)
    torch.testing.assert_close(got, expected)
    # Plain DQN: max of the target net = [30, 9, -1].
    plain = double_q_target(rewards, discounts, next_q_online, next_q_target, double_q=False)
    torch.testing.assert_close(plain, torch.tensor([1.0 + 27.0, 0.5, 2.0 - 0.81]))
    # Masks: row 0 forbids action 1, so the online argmax becomes 2 -> 30; row 2 forbids
    # action 2 -> argmax 1 -> -2. A row with nothing allowed (terminal) stays finite.
    masks = torch.tensor([[True, False, True], [False, False, False], [True, True, False]])
    masked = double_q_target(rewards, discounts, next_q_online, next_q_target, masks)
    torch.testing.assert_close(masked, torch.tensor([1.0 + 27.0, 0.5, 2.0 - 1.62]))
    plain_masked = double_q_target(
        rewards, discounts, next_q_online, next_q_target, masks, double_q=False
    )
    torch.testing.assert_close(plain_masked, torch.tensor([28.0, 0.5, 2.0 - 0.81]))


def test_nstep_accumulator_termination_mid_window() -> None:
    acc = NStepAccumulator(n_step=3, gamma=0.5)
    out = []
    for t, r in enumerate([1.0, 2.0, 3.0, 4.0]):
        out += acc.push(f"s{t}", t, r, f"s{t + 1}", terminated=(t == 3), truncated=False)
    rows = [(tr.obs, tr.action, tr.reward, tr.next_obs, tr.discount) for tr in out]
    assert rows == [
        ("s0", 0, 1 + 0.5 * 2 + 0.25 * 3, "s3", 0.125),  # full window: gamma^3
        ("s1", 1, 2 + 0.5 * 3 + 0.25 * 4, "s4", 0.0),  # the window ends in termination
        ("s2", 2, 3 + 0.5 * 4, "s4", 0.0),
        ("s3", 3, 4.0, "s4", 0.0),
    ]
    assert len(acc) == 0


def test_nstep_accumulator_truncation_bootstraps() -> None:
    acc = NStepAccumulator(n_step=3, gamma=0.5)
    out = acc.push("a", 0, 1.0, "b", False, False)
    assert out == []
    out = acc.push("b", 1, 2.0, "c", terminated=False, truncated=True)
    rows = [(tr.obs, tr.reward, tr.next_obs, tr.discount) for tr in out]
    # Truncation: no termination, so each pending step bootstraps from the final observation
    # with gamma^k for the k rewards it folded in.
    assert rows == [("a", 1 + 0.5 * 2, "c", 0.25), ("b", 2.0, "c", 0.5)]
    assert len(acc) == 0
    # n = 1 is the ordinary one-step transition.
    one = NStepAccumulator(n_step=1, gamma=0.9)
    (tr,) = one.push("x", 1, 3.0, "y", False, False)
    assert (tr.reward, tr.discount, tr.next_obs) == (3.0, 0.9, "y")
    (tr,) = one.push("y", 0, 1.0, "z", True, False)
    assert tr.discount == 0.0


# --------------------------------------------------------------------------- network and config


def test_dueling_head_identity() -> None:
    torch.manual_seed(0)
    net = QNetwork(4, 3, (8, 8), "tanh", dueling=True)
    x = torch.randn(5, 4)
    features = net.body(x)
    value, advantage = net.value_head(features), net.advantage_head(features)
    torch.testing.assert_close(net(x), value + advantage - advantage.mean(1, keepdim=True))
    # Mean over actions of Q equals V: the advantage stream is centred.
    torch.testing.assert_close(net(x).mean(1, keepdim=True), value)


def test_bad_config_and_spaces_are_rejected() -> None:
    with pytest.raises(ConfigError, match="gamma"):
        QLearningConfig(gamma=1.5)
    with pytest.raises(ConfigError, match="n_step"):
        QLearningConfig(n_step=0)
    with pytest.raises(ConfigError, match="unknown field"):
        QLearningConfig.from_dict({"learning_rat": 1e-3})
    box = spaces.Box(-1, 1, (2,), np.float32)
    with pytest.raises(ConfigError, match="Discrete"):
        QLearningAgent(box, spaces.Box(-1, 1, (1,), np.float32))
    with pytest.raises(ConfigError):
        QLearningAgent(spaces.Discrete(3), spaces.Discrete(2))
    agent = QLearningAgent(box, spaces.Discrete(2), QLearningConfig(device="cpu"))
    with pytest.raises(DataError, match="action_masks"):
        agent.act(np.zeros(2, np.float32), action_masks=[False, False])


# --------------------------------------------------------------- acting: masks and confidence


def test_masked_action_never_chosen_in_acting_and_training() -> None:
    env = ChainEnv(length=5, max_steps=10, masked=True)
    agent = QLearningAgent(
        env.observation_space,
        env.action_space,
        chain_config(learning_starts=50, exploration_final_eps=1.0, exploration_initial_eps=1.0),
    )
    # Pure exploration for 400 steps: ChainEnv raises if the masked action is ever sent.
    agent.learn(env, 400)
    assert agent.num_timesteps == 400
    # Force Q(., 2) to be the largest so an unmasked argmax would pick it.
    with torch.no_grad():
        agent.q_network.q_net[-1].bias[2] = 1e6
    rng = np.random.default_rng(0)
    obs = rng.random((64, 5)).astype(np.float32)
    masks = np.tile([True, True, False], (64, 1))
    masks[::2, 0] = False  # some rows allow only action 1
    for deterministic in (True, False):
        agent.epsilon = 1.0
        actions = agent.act(obs, deterministic=deterministic, action_masks=masks)
        assert masks[np.arange(64), actions].all()
    assert int(agent.act(obs[0])) == 2  # without a mask, it is the argmax


def test_confidence_in_unit_interval_and_consistent_with_argmax() -> None:
    env = ChainEnv(length=6)
    agent = QLearningAgent(
        env.observation_space,
        env.action_space,
        chain_config(confidence_temperature=0.5, hidden_sizes=(16, 16)),
    )
    obs = np.random.default_rng(1).normal(size=(50, 6)).astype(np.float32)
    actions, confidence = agent.act_with_confidence(obs)
    assert actions.shape == confidence.shape == (50,)
    assert np.all((confidence >= 0) & (confidence <= 1))
    q = agent.q_network(torch.as_tensor(obs)).detach()
    probs = torch.softmax(q / 0.5, dim=1).numpy()
    np.testing.assert_array_equal(actions, q.argmax(1).numpy())
    np.testing.assert_allclose(confidence, probs.max(1), rtol=1e-6)
    assert np.all(confidence >= 0.5 - 1e-9)  # two actions: the argmax has at least half
    one_action, one_conf = agent.act_with_confidence(obs[0])
    assert one_action.shape == () and one_conf.shape == ()
    assert int(one_action) == int(agent.act(obs[0]))
    # Masked with a single allowed action: certainty.
    _, conf = agent.act_with_confidence(obs[:3], action_masks=[[False, True]] * 3)
    np.testing.assert_allclose(conf, 1.0)


# ---------------------------------------------------------------------------------- learning


def test_learns_chain_where_random_fails() -> None:
    env = ChainEnv(length=8, max_steps=30)
    agent = QLearningAgent(env.observation_space, env.action_space, chain_config())
    assert greedy_episode(agent, ChainEnv(length=8, max_steps=30)) == (0.0, 30)  # untrained
    writer = Recorder()
    agent.learn(env, 2000, writer=writer)
    total, steps = greedy_episode(agent, ChainEnv(length=8, max_steps=30))
    assert (total, steps) == (1.0, 7)  # the optimal path: seven moves right
    # A uniform random policy needs 7 right guesses in a row to match that (probability
    # 2**-7); over 200 episodes it takes about twice as many steps.
    rng = np.random.default_rng(0)
    random_env = ChainEnv(length=8, max_steps=30)
    lengths = []
    for _ in range(200):
        random_env.reset()
        done, n = False, 0
        while not done:
            _, _, terminated, truncated, _ = random_env.step(rng.integers(2))
            n, done = n + 1, terminated or truncated
        lengths.append(n)
    assert np.mean(lengths) > 12 and np.mean(np.array(lengths) == 7) < 0.05
    # Neither constant policy solves the lock.
    for constant in (0, 1):
        const_env = ChainEnv(length=8, max_steps=30)
        const_env.reset()
        done = False
        while not done:
            _, reward, terminated, truncated, _ = const_env.step(constant)
            done = terminated or truncated
        assert reward == 0.0
    tags = {tag for tag, _, _ in writer.scalars}
    assert {
        "rollout/ep_rew_mean",
        "rollout/ep_len_mean",
        "time/fps",
        "train/loss",
        "train/q_mean",
        "train/epsilon",
    } <= tags
    epsilons = [v for tag, v, _ in writer.scalars if tag == "train/epsilon"]
    assert epsilons[0] > epsilons[-1] == pytest.approx(0.05)


def test_dict_observations_flatten_in_key_order() -> None:
    env = DictChainEnv()
    cfg = chain_config(learning_starts=20, batch_size=8, hidden_sizes=(8,))
    agent = QLearningAgent(env.observation_space, env.action_space, cfg)
    obs, _ = env.reset()
    flat, batched = agent.flattener.flatten(obs)
    assert not batched
    np.testing.assert_array_equal(flat[0], spaces.flatten(env.observation_space, obs))
    agent.learn(env, 100)
    batch = {k: np.stack([v, v]) for k, v in obs.items()}
    actions = agent.act(batch)
    assert actions.shape == (2,) and actions[0] == actions[1] == agent.act(obs)


def test_same_seed_same_result_different_seed_differs() -> None:
    def run(seed: int) -> list[torch.Tensor]:
        env = ChainEnv(length=6)
        agent = QLearningAgent(env.observation_space, env.action_space, chain_config(seed=seed))
        agent.learn(env, 300)
        return weights(agent)

    first, second, other = run(3), run(3), run(4)
    for a, b in zip(first, second, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert any(not torch.equal(a, b) for a, b in zip(first, other, strict=True))


def test_callback_stops_training() -> None:
    env = ChainEnv()
    agent = QLearningAgent(env.observation_space, env.action_space, chain_config())
    seen: list[int] = []
    agent.learn(env, 1000, callback=lambda step: seen.append(step) or step < 123)
    assert agent.num_timesteps == 123 and seen == list(range(1, 124))


# ------------------------------------------------------------------------------- persistence


def test_save_load_round_trip(tmp_path: Path) -> None:
    env = DictChainEnv()
    cfg = chain_config(dueling=True, hidden_sizes=(16, 8), learning_starts=20, batch_size=8)
    agent = QLearningAgent(env.observation_space, env.action_space, cfg)
    agent.learn(env, 150)
    agent.save(tmp_path / "policy.pt")
    loaded = QLearningAgent.load(tmp_path / "policy.pt", device="cpu")
    assert loaded.config == agent.config
    assert list(loaded.observation_space.spaces) == ["position", "bias"]
    assert loaded.observation_space == agent.observation_space
    assert loaded.action_space == agent.action_space
    for a, b in zip(weights(agent), weights(loaded), strict=True):
        assert torch.equal(a, b)
    rng = np.random.default_rng(0)
    batch = {
        "position": rng.random((20, 5)).astype(np.float32),
        "bias": rng.random((20, 1, 2)).astype(np.float32),
    }
    np.testing.assert_array_equal(agent.act(batch), loaded.act(batch))
    np.testing.assert_array_equal(
        agent.act_with_confidence(batch)[1], loaded.act_with_confidence(batch)[1]
    )
    # A foreign or corrupt file is refused with a clear error.
    torch.save({"format": "something else", "version": 1}, tmp_path / "other.pt")
    with pytest.raises(DataError, match="not a QLearningAgent file"):
        QLearningAgent.load(tmp_path / "other.pt")
    (tmp_path / "garbage.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError):
        QLearningAgent.load(tmp_path / "garbage.pt")


def test_checkpoint_resume_continues_exactly(tmp_path: Path) -> None:
    # ChainEnv resets deterministically, so an agent resumed from a checkpoint with its buffer
    # must end bit-identical to the original agent continuing on a fresh env.
    cfg = chain_config(n_step=2, tau=0.5, target_update_interval=10)
    env = ChainEnv(length=6)
    original = QLearningAgent(env.observation_space, env.action_space, cfg)
    original.learn(env, 400)
    original.save_checkpoint(tmp_path / "ckpt.pt", include_buffer=True)
    original.learn(ChainEnv(length=6), 800)

    resumed = QLearningAgent(env.observation_space, env.action_space, chain_config(seed=99))
    resumed.load_checkpoint(tmp_path / "ckpt.pt")
    assert resumed.num_timesteps == 400 and resumed.config == cfg
    assert len(resumed.replay) > 0
    resumed.learn(ChainEnv(length=6), 800)
    assert resumed.num_timesteps == 800 and resumed.n_updates == original.n_updates
    for a, b in zip(weights(original), weights(resumed), strict=True):
        assert torch.equal(a, b)
    for a, b in zip(
        original.target_q_network.parameters(), resumed.target_q_network.parameters(), strict=True
    ):
        assert torch.equal(a, b)

    # Without the buffer the counters still continue; the buffer refills from scratch.
    original.save_checkpoint(tmp_path / "small.pt")
    # The agent adopts the checkpoint's config and networks, whatever it was built with.
    small = QLearningAgent(env.observation_space, env.action_space, chain_config(hidden_sizes=(4,)))
    small.learn(ChainEnv(length=6), 300)  # its own buffer is dropped by the load
    small.load_checkpoint(tmp_path / "small.pt")
    assert small.num_timesteps == 800 and small.replay is None and small.config == cfg
    for a, b in zip(weights(original), weights(small), strict=True):
        assert torch.equal(a, b)
    small.learn(ChainEnv(length=6), 900)
    assert small.num_timesteps == 900
