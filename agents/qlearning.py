"""Deep Q-learning for Discrete action spaces, readable top to bottom (CleanRL style).

What is in it, and where it comes from:

- **DQN** (Mnih et al. 2015): an online Q-network trained on replayed transitions against a
  target network, epsilon-greedy exploration with a linear schedule, ``train_freq`` /
  ``gradient_steps`` / ``learning_starts`` as in Stable-Baselines3's ``DQN``.
- **Double Q** (Van Hasselt, Guez & Silver 2016): the online network picks the next action, the
  target network evaluates it, which removes most of the max-operator's over-estimation.
- **Dueling heads** (Wang et al. 2016): ``Q(s, a) = V(s) + A(s, a) - mean_a A(s, a)``.
- **n-step returns** (Sutton 1988; used by Rainbow, Hessel et al. 2018): ``NStepAccumulator``
  folds ``n`` rewards into one transition with discount ``gamma**k * (1 - terminated)``.
- **Huber loss** and **gradient-norm clipping** (Mnih et al. 2015; SB3 uses ``smooth_l1_loss``
  and ``max_grad_norm=10``).
- **Target network**: every ``target_update_interval`` env steps, a hard copy (``tau=1``) or a
  Polyak step ``target <- tau*online + (1-tau)*target`` (``tau < 1``; interval 1 for per-step).

Action masks: when the env has ``action_masks()`` (the sb3-contrib convention, a bool vector with
True = allowed), masked actions are never chosen, neither greedily nor when exploring, and they
are excluded from the max (or argmax) in the bootstrap target. The next state's mask is recorded
when the transition is stored: ``MaskedReplayBuffer`` keeps it in an array parallel to the
shared ``ReplayBuffer`` storage (it cannot be recomputed later, since the env has moved on).

Confidence: ``act_with_confidence(obs)`` returns the action and ``softmax(Q / T)`` of the chosen
action over the allowed actions (``T = confidence_temperature``); with one allowed action it is 1.

Observations: Box, or a Dict of Boxes flattened in the Dict space's key order exactly as
``gymnasium.spaces.flatten`` does.
"""

from __future__ import annotations

import copy
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, NamedTuple

import gymnasium as gym
import numpy as np
import torch
import torch.nn.functional as F
from gymnasium import spaces
from torch import nn

from agents.base import Learner, ScalarWriter, StepCallback, get_device
from agents.checkpoint import atomic_torch_save, safe_torch_load
from agents.networks import mlp
from agents.replay import ReplayBatch, ReplayBuffer
from agents.spaces import ObservationFlattener, space_from_dict, space_to_dict
from envs.errors import ConfigError, DataError, check_known_fields

_FORMAT = "marketrl.qlearning"
_FORMAT_VERSION = 1


# ----------------------------------------------------------------------------------------------
# Configuration
# ----------------------------------------------------------------------------------------------


@dataclass
class QLearningConfig:
    """Hyperparameters of ``QLearningAgent`` (defaults follow SB3's ``DQN`` where it has one)."""

    learning_rate: float = 1e-4  # Adam step size.
    buffer_size: int = 1_000_000  # replay capacity in transitions (n-step transitions count as one)
    learning_starts: int = 100  # env steps collected before the first gradient step
    batch_size: int = 32  # transitions per gradient step
    gamma: float = 0.99  # per-step discount
    n_step: int = 1  # steps folded into one return (1 = plain one-step TD target)
    train_freq: int = 4  # env steps between training rounds
    gradient_steps: int = 1  # gradient steps per training round
    target_update_interval: int = 10_000  # env steps between target updates
    tau: float = 1.0  # target update weight: 1 = hard copy, < 1 = Polyak averaging
    double_q: bool = True  # online net picks the next action, target net evaluates it
    dueling: bool = False  # V(s) + A(s,a) - mean A heads instead of one linear Q head
    hidden_sizes: tuple[int, ...] = (64, 64)  # widths of the shared MLP layers
    activation: str = "relu"  # hidden activation: relu, tanh, elu, gelu or silu
    huber_delta: float = 1.0  # Huber (smooth L1) threshold between quadratic and linear loss
    max_grad_norm: float = 10.0  # clip the global gradient norm to this (<= 0 disables)
    exploration_fraction: float = 0.1  # share of total_timesteps over which epsilon decays
    exploration_initial_eps: float = 1.0  # epsilon at step 0
    exploration_final_eps: float = 0.05  # epsilon after the decay
    confidence_temperature: float = 1.0  # softmax temperature of act_with_confidence
    log_interval: int = 1000  # env steps between train/* and time/fps scalars
    seed: int = 0  # seeds network init, exploration and replay sampling
    device: str = "auto"  # "auto", "cpu", "cuda", ...

    def __post_init__(self) -> None:
        self.hidden_sizes = tuple(int(h) for h in self.hidden_sizes)
        checks = [
            ("learning_rate", self.learning_rate > 0, "> 0"),
            ("buffer_size", self.buffer_size >= 1, ">= 1"),
            ("learning_starts", self.learning_starts >= 0, ">= 0"),
            ("batch_size", self.batch_size >= 1, ">= 1"),
            ("gamma", 0.0 <= self.gamma <= 1.0, "in [0, 1]"),
            ("n_step", self.n_step >= 1, ">= 1"),
            ("train_freq", self.train_freq >= 1, ">= 1"),
            ("gradient_steps", self.gradient_steps >= 0, ">= 0"),
            ("target_update_interval", self.target_update_interval >= 1, ">= 1"),
            ("tau", 0.0 < self.tau <= 1.0, "in (0, 1]"),
            ("hidden_sizes", all(h >= 1 for h in self.hidden_sizes), "positive widths"),
            ("activation", self.activation in _ACTIVATIONS, f"one of {sorted(_ACTIVATIONS)}"),
            ("huber_delta", self.huber_delta > 0, "> 0"),
            ("exploration_fraction", 0.0 <= self.exploration_fraction <= 1.0, "in [0, 1]"),
            ("exploration_initial_eps", 0.0 <= self.exploration_initial_eps <= 1.0, "in [0, 1]"),
            ("exploration_final_eps", 0.0 <= self.exploration_final_eps <= 1.0, "in [0, 1]"),
            ("confidence_temperature", self.confidence_temperature > 0, "> 0"),
            ("log_interval", self.log_interval >= 1, ">= 1"),
        ]
        for name, ok, expected in checks:
            if not ok:
                raise ConfigError(
                    f"QLearningConfig.{name} = {getattr(self, name)!r}: expected {expected}"
                )

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> QLearningConfig:
        """Build a config from a plain mapping (Hydra node, checkpoint), rejecting unknown keys."""
        check_known_fields(cls, values, "QLearningConfig")
        return cls(**dict(values))


_ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "tanh": nn.Tanh,
    "elu": nn.ELU,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
}


# ----------------------------------------------------------------------------------------------
# Q-network
# ----------------------------------------------------------------------------------------------


class QNetwork(nn.Module):
    """MLP from a flat observation to one Q-value per action, optionally with dueling heads.

    Dueling (Wang et al. 2016, eq. 9): ``Q = V + A - mean_a A``; subtracting the mean makes V and
    A identifiable and is the variant the paper found most stable. Both heads share the hidden
    layers.
    """

    def __init__(
        self,
        obs_dim: int,
        n_actions: int,
        hidden_sizes: tuple[int, ...],
        activation: str,
        dueling: bool,
    ) -> None:
        super().__init__()
        act = _ACTIVATIONS[activation]
        self.dueling = dueling
        if not dueling:
            self.q_net = mlp(obs_dim, hidden_sizes, n_actions, act)
            return
        if hidden_sizes:
            # mlp() ends on a linear layer; the shared body needs its activation too.
            self.body: nn.Module = nn.Sequential(
                mlp(obs_dim, hidden_sizes[:-1], hidden_sizes[-1], act), act()
            )
            width = hidden_sizes[-1]
        else:
            self.body, width = nn.Identity(), obs_dim
        self.value_head = nn.Linear(width, 1)
        self.advantage_head = nn.Linear(width, n_actions)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        """Q-values, shape ``(batch, n_actions)``."""
        if not self.dueling:
            return self.q_net(obs)
        features = self.body(obs)
        advantage = self.advantage_head(features)
        return self.value_head(features) + advantage - advantage.mean(dim=1, keepdim=True)


# ----------------------------------------------------------------------------------------------
# n-step returns
# ----------------------------------------------------------------------------------------------


class NStepTransition(NamedTuple):
    """One n-step transition as stored in the replay buffer."""

    obs: Any  # observation at t
    action: int  # action taken at t
    reward: float  # sum_{i<k} gamma^i r_{t+i}
    next_obs: Any  # observation at t+k (the final observation if the episode ended)
    discount: float  # gamma^k * (1 - terminated): the weight of the bootstrap value
    next_mask: np.ndarray | None  # allowed actions at t+k (None when the env has no masks)


class NStepAccumulator:
    """Fold one env's last ``n`` steps into n-step transitions.

    Every step is pushed with the reward and what came after it. Once ``n`` steps are pending,
    the oldest is emitted with ``R = sum_{i<n} gamma^i r_{t+i}`` and discount ``gamma^n``.
    At episode end every pending step is flushed with the rewards that remain (``k <= n``
    of them): after termination its discount is 0 (no bootstrap from a terminal state); after
    truncation it is ``gamma^k`` so the target bootstraps from the final observation
    (Pardo et al. 2018, "Time limits in reinforcement learning").

    Args:
        n_step: number of rewards folded into one transition.
        gamma: per-step discount.
    """

    def __init__(self, n_step: int, gamma: float) -> None:
        self.n_step = int(n_step)
        self.gamma = float(gamma)
        self._pending: deque[tuple[Any, int, float]] = deque()

    def __len__(self) -> int:
        return len(self._pending)

    def reset(self) -> None:
        """Drop pending steps (an episode ended without ``push`` seeing its end, e.g. a resume)."""
        self._pending.clear()

    def _emit(
        self, next_obs: Any, terminated: bool, next_mask: np.ndarray | None
    ) -> NStepTransition:
        obs, action, _ = self._pending[0]
        ret = 0.0
        for i, (_, _, r) in enumerate(self._pending):
            ret += self.gamma**i * r
        k = len(self._pending)
        discount = 0.0 if terminated else self.gamma**k
        self._pending.popleft()
        return NStepTransition(obs, action, ret, next_obs, discount, next_mask)

    def push(
        self,
        obs: Any,
        action: int,
        reward: float,
        next_obs: Any,
        terminated: bool,
        truncated: bool,
        next_mask: np.ndarray | None = None,
    ) -> list[NStepTransition]:
        """Record one step; return the transitions that are now complete (oldest first)."""
        self._pending.append((obs, int(action), float(reward)))
        out: list[NStepTransition] = []
        if len(self._pending) == self.n_step:
            out.append(self._emit(next_obs, bool(terminated), next_mask))
        if terminated or truncated:
            while self._pending:
                out.append(self._emit(next_obs, bool(terminated), next_mask))
        return out


# ----------------------------------------------------------------------------------------------
# Replay with the next state's action mask
# ----------------------------------------------------------------------------------------------


class MaskedReplayBuffer(ReplayBuffer):
    """The shared ``ReplayBuffer`` plus a parallel array of next-state action masks.

    The mask at ``t+k`` must be stored with the transition: it is a property of the env state
    the agent has since left, so it cannot be recomputed at sampling time. Without masks every
    row is all-True and the target is the plain max.

    Args:
        observation_space: Box or Dict of Boxes.
        action_space: Discrete.
        capacity: transitions kept.
        device: where the storage lives.
    """

    def __init__(
        self,
        observation_space: spaces.Space,
        action_space: spaces.Discrete,
        capacity: int,
        device: str | torch.device = "cpu",
    ) -> None:
        super().__init__(observation_space, action_space, capacity, device)
        self.n_actions = int(action_space.n)
        self.next_masks = torch.ones(
            (self.capacity, self.n_actions), dtype=torch.bool, device=self.device
        )

    def add_with_mask(
        self,
        obs: Any,
        action: int,
        reward: float,
        next_obs: Any,
        discount: float,
        next_mask: np.ndarray | None,
    ) -> None:
        """Store one transition and the allowed actions in its next state (None = all)."""
        index = self.pos
        self.add(obs, action, reward, next_obs, discount)
        if next_mask is None:
            self.next_masks[index] = True
        else:
            self.next_masks[index] = torch.as_tensor(next_mask, device=self.device)

    def sample_with_mask(
        self, batch_size: int, generator: torch.Generator | None = None
    ) -> tuple[ReplayBatch, torch.Tensor]:
        """Sample like ``ReplayBuffer.sample`` and return the matching next-state masks."""
        if self.size == 0:
            raise DataError("replay sample: the buffer is empty; add transitions first")
        gen_device = generator.device if generator is not None else self.device
        idx = torch.randint(self.size, (batch_size,), generator=generator, device=gen_device)
        idx = idx.to(self.device)
        batch = ReplayBatch(
            self.observations.index_select(0, idx),
            self.actions.index_select(0, idx),
            self.rewards.index_select(0, idx),
            self.next_observations.index_select(0, idx),
            self.discounts.index_select(0, idx),
        )
        return batch, self.next_masks.index_select(0, idx)

    def state_dict(self) -> dict[str, Any]:
        """The base buffer's state plus the filled part of the mask array."""
        state = super().state_dict()
        state["next_masks"] = self.next_masks[: self.size].detach().cpu().clone()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""
        super().load_state_dict(state)
        masks = state.get("next_masks")
        if masks is None or tuple(masks.shape) != (self.size, self.n_actions):
            raise DataError(
                f"replay state field 'next_masks': expected shape {(self.size, self.n_actions)}"
            )
        self.next_masks[: self.size].copy_(masks.to(self.device))


# ----------------------------------------------------------------------------------------------
# The agent
# ----------------------------------------------------------------------------------------------


def _env_action_mask(env: gym.Env, n_actions: int) -> np.ndarray | None:
    """The env's ``action_masks()`` as a bool vector, or None when it has none."""
    try:
        method = env.get_wrapper_attr("action_masks")
    except AttributeError:
        return None
    mask = np.asarray(method(), dtype=bool).reshape(-1)
    if mask.shape != (n_actions,):
        raise DataError(
            f"env.action_masks(): expected {n_actions} booleans, got shape {mask.shape}"
        )
    if not mask.any():
        raise DataError("env.action_masks(): every action is masked; at least one must be allowed")
    return mask


def _masked(q_values: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Q-values with disallowed actions at -inf (rows with no allowed action are left alone)."""
    if mask is None:
        return q_values
    # A row with nothing allowed only happens for a terminal next state whose discount is 0;
    # leaving it unmasked keeps the target finite (0 * -inf would be NaN).
    mask = mask | ~mask.any(dim=1, keepdim=True)
    return q_values.masked_fill(~mask, float("-inf"))


def double_q_target(
    rewards: torch.Tensor,
    discounts: torch.Tensor,
    next_q_online: torch.Tensor,
    next_q_target: torch.Tensor,
    next_masks: torch.Tensor | None = None,
    double_q: bool = True,
) -> torch.Tensor:
    """TD target ``r + discount * Q_target(s', a*)`` over a batch.

    With ``double_q`` (Van Hasselt et al. 2016, eq. 4) ``a* = argmax_a Q_online(s', a)``;
    otherwise ``a* = argmax_a Q_target(s', a)`` (plain DQN). Masked actions are never ``a*``.

    Args:
        rewards: ``(batch,)`` n-step returns.
        discounts: ``(batch,)`` ``gamma^k * (1 - terminated)``.
        next_q_online: ``(batch, n_actions)`` online-network Q-values at the next state.
        next_q_target: ``(batch, n_actions)`` target-network Q-values at the next state.
        next_masks: ``(batch, n_actions)`` bool, True = allowed at the next state.
        double_q: use the online network to choose the next action.
    """
    chooser = next_q_online if double_q else next_q_target
    next_actions = _masked(chooser, next_masks).argmax(dim=1, keepdim=True)
    next_values = next_q_target.gather(1, next_actions).squeeze(1)
    return rewards + discounts * next_values


class QLearningAgent(Learner):
    """Deep Q-learning agent (double / dueling / n-step DQN) for a Discrete action space.

    Args:
        observation_space: Box, or Dict of Boxes.
        action_space: Discrete (any ``start``; actions returned are in the env's numbering).
        config: hyperparameters; defaults follow SB3's DQN.

    Persisted by ``save``: config, both spaces, the online Q-network weights.
    Persisted by ``save_checkpoint``: the same plus target network, optimiser, step / update /
    episode counters, recent episode statistics, NumPy and torch RNG states, and the replay
    buffer when ``include_buffer=True``. Not persisted: the env's own state and a partial n-step
    window; after a resume, ``learn`` resets the env and starts a fresh episode.
    """

    def __init__(
        self,
        observation_space: spaces.Space,
        action_space: spaces.Space,
        config: QLearningConfig | None = None,
    ) -> None:
        if not isinstance(action_space, spaces.Discrete):
            raise ConfigError(f"QLearningAgent action_space: expected Discrete, got {action_space}")
        self.flattener = ObservationFlattener(observation_space)  # ConfigError for other spaces
        self.config = config if config is not None else QLearningConfig()
        self.observation_space = observation_space
        self.action_space = action_space
        self.n_actions = int(action_space.n)
        self.obs_dim = self.flattener.dim
        self.device = get_device(self.config.device)
        cfg = self.config

        # Build networks under a forked RNG so the seed fixes the init without touching the
        # caller's global torch state.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)
            self.q_network = QNetwork(
                self.obs_dim, self.n_actions, cfg.hidden_sizes, cfg.activation, cfg.dueling
            ).to(self.device)
        self.target_q_network = copy.deepcopy(self.q_network)
        self.target_q_network.requires_grad_(False)
        self.optimizer = torch.optim.Adam(self.q_network.parameters(), lr=cfg.learning_rate)

        self.rng = np.random.default_rng(cfg.seed)  # exploration
        self.sample_generator = torch.Generator().manual_seed(cfg.seed)  # replay sampling
        self.replay: MaskedReplayBuffer | None = None
        self.num_timesteps = 0
        self.n_updates = 0
        self.epsilon = cfg.exploration_initial_eps
        self._episode_returns: deque[float] = deque(maxlen=100)
        self._episode_lengths: deque[int] = deque(maxlen=100)
        self._env_seeded = False

    # --- acting ------------------------------------------------------------------------------

    def _q_values(self, flat_obs: np.ndarray) -> torch.Tensor:
        with torch.no_grad():
            return self.q_network(torch.as_tensor(flat_obs, device=self.device))

    def _mask_tensor(self, action_masks: Any, batch: int) -> torch.Tensor | None:
        if action_masks is None:
            return None
        mask = np.asarray(action_masks, dtype=bool).reshape(batch, -1)
        if mask.shape[1] != self.n_actions:
            raise DataError(
                f"action_masks: expected {self.n_actions} booleans per row, got {mask.shape[1]}"
            )
        if not mask.any(axis=1).all():
            raise DataError("action_masks: a row has every action masked")
        return torch.as_tensor(mask, device=self.device)

    def _explore(self, greedy: np.ndarray, mask: torch.Tensor | None, epsilon: float) -> np.ndarray:
        """Epsilon-greedy: replace each greedy action by a uniform allowed one with prob epsilon."""
        actions = greedy.copy()
        allowed = None if mask is None else mask.cpu().numpy()
        for i in range(len(actions)):
            if self.rng.random() < epsilon:
                if allowed is None:
                    actions[i] = self.rng.integers(self.n_actions)
                else:
                    actions[i] = self.rng.choice(np.flatnonzero(allowed[i]))
        return actions

    def act(self, obs: Any, deterministic: bool = True, action_masks: Any = None) -> np.ndarray:
        """Greedy action (or epsilon-greedy with the current epsilon when not deterministic).

        Args:
            obs: one observation, or a batch with a leading dimension.
            deterministic: False explores with the current epsilon (as SB3's DQN ``predict``).
            action_masks: bool ``(n_actions,)`` or ``(batch, n_actions)``; True = allowed.

        Returns:
            int64 action(s) in the env's numbering: a 0-d array for one observation.
        """
        actions, _ = self._act(obs, deterministic, action_masks)
        return actions

    def act_with_confidence(
        self, obs: Any, action_masks: Any = None, deterministic: bool = True
    ) -> tuple[np.ndarray, np.ndarray]:
        """Action and its confidence: ``softmax(Q / confidence_temperature)`` of that action.

        The softmax runs over the allowed actions only, so the confidence is in ``[0, 1]`` and
        the greedy action always has the largest one.

        Returns:
            ``(action, confidence)``, 0-d arrays for one observation, ``(batch,)`` for a batch.
        """
        return self._act(obs, deterministic, action_masks)

    def _act(
        self, obs: Any, deterministic: bool, action_masks: Any
    ) -> tuple[np.ndarray, np.ndarray]:
        flat, batched = self.flattener.flatten(obs)
        q_values = self._q_values(flat)
        mask = self._mask_tensor(action_masks, flat.shape[0])
        masked_q = _masked(q_values, mask)
        greedy = masked_q.argmax(dim=1).cpu().numpy()
        actions = greedy if deterministic else self._explore(greedy, mask, self.epsilon)
        probs = torch.softmax(masked_q / self.config.confidence_temperature, dim=1)
        index = torch.as_tensor(actions, device=self.device).unsqueeze(1)
        confidence = probs.gather(1, index).squeeze(1).cpu().numpy().astype(np.float64)
        actions = actions.astype(np.int64) + int(self.action_space.start)
        if batched:
            return actions, confidence
        return actions[0], confidence[0]

    # --- learning ----------------------------------------------------------------------------

    def _epsilon_at(self, step: int, total_timesteps: int) -> float:
        """Linear decay from initial to final over ``exploration_fraction * total_timesteps``."""
        cfg = self.config
        span = cfg.exploration_fraction * total_timesteps
        progress = 1.0 if span <= 0 else min(1.0, step / span)
        return cfg.exploration_initial_eps + progress * (
            cfg.exploration_final_eps - cfg.exploration_initial_eps
        )

    def _ensure_replay(self) -> MaskedReplayBuffer:
        if self.replay is None:
            self.replay = MaskedReplayBuffer(
                self.observation_space, self.action_space, self.config.buffer_size, self.device
            )
        return self.replay

    def train_step(self, batch: ReplayBatch, next_masks: torch.Tensor) -> tuple[float, float]:
        """One gradient step on a replay batch; returns ``(loss, mean Q of taken actions)``."""
        with torch.no_grad():
            next_q_target = self.target_q_network(batch.next_observations)
            next_q_online = (
                self.q_network(batch.next_observations) if self.config.double_q else next_q_target
            )
            target = double_q_target(
                batch.rewards,
                batch.discounts,
                next_q_online,
                next_q_target,
                next_masks,
                self.config.double_q,
            )
        actions = batch.actions.reshape(-1, 1)
        q_taken = self.q_network(batch.observations).gather(1, actions).squeeze(1)
        loss = F.huber_loss(q_taken, target, delta=self.config.huber_delta)
        self.optimizer.zero_grad()
        loss.backward()
        if self.config.max_grad_norm > 0:
            nn.utils.clip_grad_norm_(self.q_network.parameters(), self.config.max_grad_norm)
        self.optimizer.step()
        self.n_updates += 1
        return float(loss.item()), float(q_taken.mean().item())

    def _update_target(self) -> None:
        """Hard copy (tau = 1) or Polyak average ``target <- tau*online + (1-tau)*target``."""
        with torch.no_grad():
            for online, target in zip(
                self.q_network.parameters(), self.target_q_network.parameters(), strict=True
            ):
                target.lerp_(online, self.config.tau)

    def learn(
        self,
        env: gym.Env,
        total_timesteps: int,
        callback: StepCallback | None = None,
        writer: ScalarWriter | None = None,
    ) -> None:
        """Train on ``env`` until ``num_timesteps`` reaches ``total_timesteps``.

        The env is reset at the start of every ``learn`` call (seeded with ``config.seed`` the
        first time). Episodes ending in ``terminated`` get no bootstrap; ``truncated`` ones
        bootstrap from the final observation. Scalars: ``rollout/ep_rew_mean`` and
        ``rollout/ep_len_mean`` (last 100 episodes, at each episode end), ``time/fps``,
        ``train/loss``, ``train/q_mean`` and ``train/epsilon`` every ``log_interval`` steps.

        Args:
            env: a Gymnasium env with a matching observation space and Discrete action space.
            total_timesteps: absolute step count to reach (a resumed agent continues from its own).
            callback: called after every env step with ``num_timesteps``; False stops training.
            writer: TensorBoard-like scalar sink.
        """
        cfg = self.config
        if env.action_space != self.action_space:
            raise ConfigError(
                f"env action_space {env.action_space} != agent action_space {self.action_space}"
            )
        env_flattener = ObservationFlattener(env.observation_space)
        if (env_flattener.dim, env_flattener.block_names) != (
            self.obs_dim,
            self.flattener.block_names,
        ):
            raise ConfigError(
                f"env observation_space {env.observation_space} does not match the agent's "
                f"{self.observation_space} (flat size or block names differ)"
            )
        replay = self._ensure_replay()
        accumulator = NStepAccumulator(cfg.n_step, cfg.gamma)
        start = self.action_space.start
        if not self._env_seeded:
            obs, _ = env.reset(seed=cfg.seed)
            self._env_seeded = True
        else:
            obs, _ = env.reset()
        mask = _env_action_mask(env, self.n_actions)
        episode_return, episode_length = 0.0, 0
        losses: list[float] = []
        q_means: list[float] = []
        t_start, steps_at_start = time.perf_counter(), self.num_timesteps

        while self.num_timesteps < total_timesteps:
            self.epsilon = self._epsilon_at(self.num_timesteps, total_timesteps)
            mask_t = None if mask is None else torch.as_tensor(mask[None], device=self.device)
            if self.num_timesteps < cfg.learning_starts:
                # Uniform over allowed actions before learning starts, as SB3's DQN does.
                action = int(self._explore(np.zeros(1, np.int64), mask_t, 1.0)[0])
            else:
                flat_obs = self.flattener.flatten(obs)[0]
                greedy = _masked(self._q_values(flat_obs), mask_t).argmax(dim=1).cpu().numpy()
                action = int(self._explore(greedy, mask_t, self.epsilon)[0])

            next_obs, reward, terminated, truncated, _ = env.step(action + start)
            self.num_timesteps += 1
            episode_return += float(reward)
            episode_length += 1
            next_mask = _env_action_mask(env, self.n_actions)
            for tr in accumulator.push(
                obs, action, float(reward), next_obs, terminated, truncated, next_mask
            ):
                replay.add_with_mask(
                    tr.obs, tr.action, tr.reward, tr.next_obs, tr.discount, tr.next_mask
                )

            if terminated or truncated:
                self._episode_returns.append(episode_return)
                self._episode_lengths.append(episode_length)
                if writer is not None:
                    writer.add_scalar(
                        "rollout/ep_rew_mean",
                        float(np.mean(self._episode_returns)),
                        self.num_timesteps,
                    )
                    writer.add_scalar(
                        "rollout/ep_len_mean",
                        float(np.mean(self._episode_lengths)),
                        self.num_timesteps,
                    )
                episode_return, episode_length = 0.0, 0
                obs, _ = env.reset()
                mask = _env_action_mask(env, self.n_actions)
            else:
                obs, mask = next_obs, next_mask

            if (
                self.num_timesteps > cfg.learning_starts
                and self.num_timesteps % cfg.train_freq == 0
                and len(replay) >= cfg.batch_size
            ):
                for _ in range(cfg.gradient_steps):
                    batch, next_masks = replay.sample_with_mask(
                        cfg.batch_size, self.sample_generator
                    )
                    loss, q_mean = self.train_step(batch, next_masks)
                    losses.append(loss)
                    q_means.append(q_mean)
            if self.num_timesteps % cfg.target_update_interval == 0:
                self._update_target()

            if writer is not None and self.num_timesteps % cfg.log_interval == 0:
                elapsed = max(time.perf_counter() - t_start, 1e-9)
                step = self.num_timesteps
                writer.add_scalar("time/fps", (step - steps_at_start) / elapsed, step)
                writer.add_scalar("train/epsilon", self.epsilon, step)
                if losses:
                    writer.add_scalar("train/loss", float(np.mean(losses)), step)
                    writer.add_scalar("train/q_mean", float(np.mean(q_means)), step)
                losses.clear()
                q_means.clear()
            if callback is not None and not callback(self.num_timesteps):
                break

    # --- persistence -------------------------------------------------------------------------

    def _policy_state(self) -> dict[str, Any]:
        config = asdict(self.config)
        config["hidden_sizes"] = list(self.config.hidden_sizes)
        return {
            "format": _FORMAT,
            "version": _FORMAT_VERSION,
            "config": config,
            "observation_space": space_to_dict(self.observation_space),
            "action_space": space_to_dict(self.action_space),
            "q_network": self.q_network.state_dict(),
        }

    def save(self, path: str | Path) -> None:
        """Write config, spaces and online Q-network weights (what acting needs) atomically."""
        atomic_torch_save(self._policy_state(), path)

    @classmethod
    def _from_state(cls, state: Mapping[str, Any], path: str | Path, device: str) -> QLearningAgent:
        if state.get("format") != _FORMAT or state.get("version") != _FORMAT_VERSION:
            raise DataError(
                f"{path}: not a QLearningAgent file (format={state.get('format')!r}, "
                f"version={state.get('version')!r}; expected {_FORMAT!r} v{_FORMAT_VERSION})"
            )
        config = QLearningConfig.from_dict({**state["config"], "device": device})
        agent = cls(
            space_from_dict(state["observation_space"]),
            space_from_dict(state["action_space"]),
            config,
        )
        agent.q_network.load_state_dict(state["q_network"])
        agent.target_q_network.load_state_dict(state["q_network"])
        return agent

    @classmethod
    def load(cls, path: str | Path, device: str = "auto") -> QLearningAgent:
        """Rebuild an agent written by ``save`` (weights-only load: no code runs from the file)."""
        return cls._from_state(safe_torch_load(path, device="cpu"), path, device)

    def save_checkpoint(self, path: str | Path, include_buffer: bool = False) -> None:
        """Write everything ``load_checkpoint`` needs to resume training, atomically."""
        state = self._policy_state()
        state.update(
            {
                "target_q_network": self.target_q_network.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "num_timesteps": self.num_timesteps,
                "n_updates": self.n_updates,
                "epsilon": float(self.epsilon),
                "env_seeded": self._env_seeded,
                "episode_returns": list(self._episode_returns),
                "episode_lengths": list(self._episode_lengths),
                "numpy_rng": _rng_state_to_plain(self.rng),
                "torch_sample_rng": self.sample_generator.get_state(),
                "replay": (
                    self.replay.state_dict() if include_buffer and self.replay is not None else None
                ),
            }
        )
        atomic_torch_save(state, path)

    def load_checkpoint(self, path: str | Path) -> None:
        """Restore a checkpoint written by ``save_checkpoint`` into this agent."""
        state = safe_torch_load(path, device="cpu")
        loaded = self._from_state(state, path, self.config.device)
        if loaded.obs_dim != self.obs_dim or loaded.n_actions != self.n_actions:
            raise DataError(
                f"{path}: checkpoint is for obs_dim={loaded.obs_dim}, n_actions="
                f"{loaded.n_actions}; this agent has {self.obs_dim}, {self.n_actions}"
            )
        # Adopt the checkpoint's config and networks (its hyperparameters define the run).
        self.config, self.device = loaded.config, loaded.device
        self.q_network, self.target_q_network = loaded.q_network, loaded.target_q_network
        self.optimizer = loaded.optimizer
        self.target_q_network.load_state_dict(state["target_q_network"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.num_timesteps = int(state["num_timesteps"])
        self.n_updates = int(state["n_updates"])
        self.epsilon = float(state["epsilon"])
        self._env_seeded = bool(state["env_seeded"])
        self._episode_returns = deque(state["episode_returns"], maxlen=100)
        self._episode_lengths = deque(state["episode_lengths"], maxlen=100)
        self.rng = np.random.default_rng()
        self.rng.bit_generator.state = _rng_state_from_plain(state["numpy_rng"])
        self.sample_generator = torch.Generator()
        self.sample_generator.set_state(state["torch_sample_rng"])
        self.replay = None
        if state.get("replay") is not None:
            self._ensure_replay().load_state_dict(state["replay"])


def _rng_state_to_plain(rng: np.random.Generator) -> dict[str, Any]:
    """NumPy's bit-generator state with its big integers as strings (weights-only safe)."""
    return _stringify_ints(rng.bit_generator.state)


def _rng_state_from_plain(state: Mapping[str, Any]) -> dict[str, Any]:
    return _intify(state)


def _stringify_ints(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _stringify_ints(v) for k, v in value.items()}
    if isinstance(value, int) and not isinstance(value, bool):
        return {"__int__": str(value)}
    return value


def _intify(value: Any) -> Any:
    if isinstance(value, Mapping):
        if set(value) == {"__int__"}:
            return int(value["__int__"])
        return {k: _intify(v) for k, v in value.items()}
    return value
