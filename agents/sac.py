"""Soft Actor-Critic, readable top to bottom (Haarnoja et al. 2018, "Soft Actor-Critic
Algorithms and Applications"; SB3's ``sac.py`` and CleanRL's ``sac_continuous_action.py`` as
references).

Pieces, in the order they appear:

1. ``SACConfig``: every hyper-parameter with a one-line comment; defaults are SB3's.
2. ``SquashedGaussianActor``: ``a = tanh(u)``, ``u ~ N(mu, sigma)``; the log-probability gets the
   change-of-variables correction ``log|d tanh(u)/du| = 2*(log 2 - u - softplus(-2u))``
   (Haarnoja et al. 2018, appendix C; the numerically stable form used by CleanRL / Spinning Up).
3. ``SAC``: twin critics evaluated as ONE batched ensemble (``agents/networks.py``), Polyak
   target critics, automatic entropy tuning (target entropy ``-|A|``, optimise ``log_alpha``),
   a replay buffer that stores ``discount = gamma * (1 - terminated)`` so time-limit truncation
   bootstraps and termination does not (Pardo et al. 2018), and actions squashed to ``[-1, 1]``
   and rescaled to the env's Box bounds.

Speed (issue 5: with [256, 256] networks and batch 256 a step is ~600 MFLOP of matmuls, and
autograd's bookkeeping plus the elementwise work around it cost about as much again on one CPU
thread): by default ``update`` runs ``agents/sac_explicit.py``, the same losses and update order
with hand-written backward passes (no autograd graph, gradients written into preallocated
buffers, scratch tensors reused, one actor forward on the stacked ``obs``/``next_obs``, no
critic weight gradients in the actor's backward); it matches the autograd update to float
rounding (tests/test_sac_explicit.py). ``explicit_gradients=False`` runs the autograd reference
below. Both use one batched critic network for both critics, fused Adam steps, one
``_foreach_lerp_`` for the Polyak update (the explicit update runs it right after the critics'
Adam step, while their parameters are in the cache), losses kept as device tensors and only read
(``.item()``) at logging intervals, and cheap NumPy writes into the replay buffer; acting calls
the actor's layers directly (no ``nn.Module`` dispatch per env step). The explicit update also
calls the fused Adam kernel itself (``FusedAdamStep``: the optimisers' own state, without
``Optimizer.step``'s Python wrappers), computes its logged statistics only when
:meth:`SAC.train_stats` reads them, and on the CPU runs the actor's backward through each critic
on the rows where that critic is the minimum; none of these changes a bit of the training (issue
5).
For such tiny networks on a contended CPU, ``torch.set_num_threads(1 or 2)`` is usually faster
than the default; that is a process-wide setting, so the trainer or bench script sets it, not
this class. ``compile=True`` wraps the networks' forward passes with ``torch.compile`` and uses
the autograd update.
"""

from __future__ import annotations

import logging
import math
import time
from collections import deque
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from gymnasium import spaces
from torch import nn

from agents.base import Learner, ScalarWriter, StepCallback, get_device
from agents.checkpoint import (
    CheckpointError,
    atomic_torch_save,
    load_training_checkpoint,
    safe_torch_load,
)
from agents.networks import EnsembleMLP, mlp
from agents.replay import ReplayBatch, ReplayBuffer
from agents.sac_explicit import ExplicitSACUpdate, actor_action, actor_layers, squashed_sample
from agents.spaces import ObservationFlattener, space_from_dict, space_to_dict
from agents.training_log import write_rollout_scalars
from envs.errors import ConfigError, check_known_fields

__all__ = ["SAC", "SACConfig", "SquashedGaussianActor"]

logger = logging.getLogger(__name__)

_POLICY_FORMAT = "marketrl.sac.policy"
_CHECKPOINT_FORMAT = "marketrl.sac.checkpoint"
_FORMAT_VERSION = 1


@dataclass
class SACConfig:
    """Hyper-parameters of SAC (defaults follow Stable-Baselines3)."""

    learning_rate: float = 3e-4  # Adam step size for actor, critics and log_alpha
    buffer_size: int = 1_000_000  # replay capacity in transitions
    learning_starts: int = 100  # env steps with uniform random actions before any update
    batch_size: int = 256  # transitions per gradient step
    tau: float = 0.005  # Polyak coefficient: target <- (1 - tau) * target + tau * online
    gamma: float = 0.99  # discount factor
    train_freq: int = 1  # env steps between training phases
    gradient_steps: int = 1  # gradient steps per training phase (update-to-data = this/train_freq)
    net_arch: list[int] = field(default_factory=lambda: [256, 256])  # hidden widths (both nets)
    n_critics: int = 2  # critics in the ensemble; the target takes their minimum (clipped double Q)
    ent_coef_init: float = 1.0  # initial entropy coefficient alpha (SB3's "auto" starts at 1)
    autotune_entropy: bool = True  # learn alpha by matching the target entropy
    target_entropy: float | None = None  # None means -|A| (Haarnoja et al. 2018)
    target_update_interval: int = 1  # gradient steps between Polyak updates
    log_std_min: float = -20.0  # clamp of the actor's log standard deviation (SB3)
    log_std_max: float = 2.0  # upper clamp of the actor's log standard deviation (SB3)
    log_interval: int = 1000  # env steps between scalar logs to the writer
    seed: int = 0  # seeds network init, the agent's torch generator and NumPy RNG, env reset
    device: str = "auto"  # "auto", "cpu", "cuda", "cuda:1" ...
    compile: bool = False  # wrap network forward passes with torch.compile (autograd update)
    explicit_gradients: bool = True  # hand-written backward passes (agents/sac_explicit.py)

    def validate(self) -> None:
        """Raise ``ConfigError`` naming the first field whose value cannot work."""
        positive = ("learning_rate", "buffer_size", "batch_size", "train_freq", "n_critics")
        for name in positive:
            if not getattr(self, name) > 0:
                raise ConfigError(f"sac.{name}: expected > 0, got {getattr(self, name)}")
        non_negative = ("learning_starts", "gradient_steps", "log_interval")
        for name in non_negative:
            if getattr(self, name) < 0:
                raise ConfigError(f"sac.{name}: expected >= 0, got {getattr(self, name)}")
        if not 0.0 < self.tau <= 1.0:
            raise ConfigError(f"sac.tau: expected in (0, 1], got {self.tau}")
        if not 0.0 <= self.gamma <= 1.0:
            raise ConfigError(f"sac.gamma: expected in [0, 1], got {self.gamma}")
        if self.ent_coef_init <= 0:
            raise ConfigError(f"sac.ent_coef_init: expected > 0, got {self.ent_coef_init}")
        if self.target_update_interval < 1:
            raise ConfigError(
                f"sac.target_update_interval: expected >= 1, got {self.target_update_interval}"
            )
        if not self.net_arch or any(int(w) < 1 for w in self.net_arch):
            raise ConfigError(f"sac.net_arch: expected positive widths, got {self.net_arch}")
        if self.log_std_min >= self.log_std_max:
            raise ConfigError(
                f"sac.log_std_min: expected < log_std_max ({self.log_std_max}), "
                f"got {self.log_std_min}"
            )

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> SACConfig:
        """Build from a plain dict (a checkpoint's or Hydra's); unknown keys are a ConfigError."""
        check_known_fields(cls, values, "sac config")
        values = dict(values)
        if "net_arch" in values:
            values["net_arch"] = [int(w) for w in values["net_arch"]]
        return cls(**values)


class SquashedGaussianActor(nn.Module):
    """Gaussian policy squashed by tanh into ``[-1, 1]^A``.

    Args:
        obs_dim: flat observation width.
        action_dim: action width.
        hidden: hidden widths.
        log_std_min: lower clamp of the log standard deviation.
        log_std_max: upper clamp of the log standard deviation.
    """

    def __init__(
        self,
        obs_dim: int,
        action_dim: int,
        hidden: list[int],
        log_std_min: float = -20.0,
        log_std_max: float = 2.0,
    ) -> None:
        super().__init__()
        # One head emits mean and log-std together: one matmul instead of two.
        self.net = mlp(obs_dim, hidden, 2 * action_dim)
        self.action_dim = action_dim
        self.log_std_min, self.log_std_max = log_std_min, log_std_max

    def forward(
        self,
        obs: torch.Tensor,
        generator: torch.Generator | None = None,
        deterministic: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Return ``(action in [-1, 1], log pi(action | obs))``; no log-prob if deterministic."""
        head = self.net(obs)
        if deterministic:
            return torch.tanh(head[..., : self.action_dim]), None
        shape = (*head.shape[:-1], self.action_dim)
        noise = torch.randn(shape, generator=generator, device=head.device, dtype=head.dtype)
        # log N(u; mu, sigma) with (u - mu) / sigma = noise, minus log|d tanh(u)/du| per dim.
        action, log_prob, _, _ = squashed_sample(head, noise, self.log_std_min, self.log_std_max)
        return action, log_prob


class SAC(Learner):
    """Soft Actor-Critic for a Box action space and a Box or Dict-of-Box observation space.

    Args:
        observation_space: what the env returns; Dict observations are flattened in key order.
        action_space: a Box with finite bounds; the policy acts in ``[-1, 1]`` and is rescaled.
        config: hyper-parameters; defaults are SB3's.

    Raises:
        ConfigError: for unsupported spaces or invalid hyper-parameters.
    """

    def __init__(
        self,
        observation_space: spaces.Space,
        action_space: spaces.Space,
        config: SACConfig | None = None,
    ) -> None:
        self.config = config if config is not None else SACConfig()
        self.config.validate()
        if not isinstance(action_space, spaces.Box):
            raise ConfigError(f"sac action_space: got {type(action_space).__name__}, expected Box")
        low = np.asarray(action_space.low, dtype=np.float64).ravel()
        high = np.asarray(action_space.high, dtype=np.float64).ravel()
        if not (np.all(np.isfinite(low)) and np.all(np.isfinite(high)) and np.all(high > low)):
            raise ConfigError(
                f"sac action_space: expected finite bounds with high > low, got low={low}, "
                f"high={high}"
            )
        self.observation_space = observation_space
        self.action_space = action_space
        self.flattener = ObservationFlattener(observation_space)
        self.obs_dim = self.flattener.dim
        self.action_dim = low.size
        self._action_low, self._action_high = low, high
        self._action_scale = 0.5 * (high - low)
        self._action_dtype = action_space.dtype
        self.device = get_device(self.config.device)
        cfg = self.config
        self.target_entropy = (
            float(cfg.target_entropy) if cfg.target_entropy is not None else -float(self.action_dim)
        )

        # Network init draws from a forked, seeded CPU RNG: deterministic without touching the
        # caller's global RNG state.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)
            self.actor = SquashedGaussianActor(
                self.obs_dim, self.action_dim, list(cfg.net_arch), cfg.log_std_min, cfg.log_std_max
            )
            self.critic = EnsembleMLP(
                cfg.n_critics, self.obs_dim + self.action_dim, list(cfg.net_arch), 1
            )
        self.critic_target = EnsembleMLP(
            cfg.n_critics, self.obs_dim + self.action_dim, list(cfg.net_arch), 1
        )
        self.critic_target.load_state_dict(self.critic.state_dict())
        self.critic_target.requires_grad_(False)
        self.actor.to(self.device)
        self.critic.to(self.device)
        self.critic_target.to(self.device)
        self.log_alpha = torch.tensor(
            math.log(cfg.ent_coef_init), device=self.device, requires_grad=cfg.autotune_entropy
        )

        self.actor_optimizer = self._adam(self.actor.parameters())
        self.critic_optimizer = self._adam(self.critic.parameters())
        self.alpha_optimizer = self._adam([self.log_alpha])
        self._critic_params = list(self.critic.parameters())
        self._target_params = list(self.critic_target.parameters())

        # Forward callables (compiled or not); state dicts always come from the plain modules.
        self._actor_fn: Any = self.actor
        self._critic_fn: Any = self.critic
        self._critic_target_fn: Any = self.critic_target
        if cfg.compile:
            self._actor_fn = torch.compile(self.actor)
            self._critic_fn = torch.compile(self.critic)
            self._critic_target_fn = torch.compile(self.critic_target)

        # The default update: hand-written gradients of the same losses (agents/sac_explicit.py);
        # autograd when asked for, when compiling, or for networks it cannot differentiate.
        self._explicit: ExplicitSACUpdate | None = None
        if cfg.explicit_gradients and not cfg.compile and ExplicitSACUpdate.supports(self):
            self._explicit = ExplicitSACUpdate(self)
        # Acting on one observation: the actor's layers without nn.Module dispatch.
        self._actor_layers = None if cfg.compile else actor_layers(self.actor.net)

        self.generator = torch.Generator(device=self.device).manual_seed(cfg.seed)
        self.np_random = np.random.default_rng(cfg.seed)
        self.replay: ReplayBuffer | None = None
        self.num_timesteps = 0
        self.num_updates = 0
        self.episode_returns: deque[float] = deque(maxlen=100)
        self.episode_lengths: deque[int] = deque(maxlen=100)
        self._last_stats: dict[str, torch.Tensor] = {}
        self._stats_pending = False

    def _adam(self, params: Any) -> torch.optim.Adam:
        # Fused Adam does the whole parameter update in one kernel (CPU support since torch 2.4);
        # fall back to the multi-tensor (foreach) path where fused is not available.
        try:
            return torch.optim.Adam(params, lr=self.config.learning_rate, fused=True)
        except (RuntimeError, TypeError):
            return torch.optim.Adam(params, lr=self.config.learning_rate, foreach=True)

    # ----------------------------------------------------------------------------- acting

    def scale_action(self, unit_action: np.ndarray) -> np.ndarray:
        """Map ``[-1, 1]`` to the Box bounds (clipped: float rounding may step past them)."""
        action = self._action_low + (unit_action + 1.0) * self._action_scale
        # minimum(maximum()) is np.clip's result at a fraction of its per-call cost on the
        # one-row arrays of the env loop (NumPy 2's clip dispatch dominates there).
        action = np.minimum(np.maximum(action, self._action_low), self._action_high)
        return action.astype(self._action_dtype).reshape(-1, *self.action_space.shape)

    def policy_unit_action(self, flat_obs: np.ndarray, deterministic: bool) -> np.ndarray:
        """The actor's action in ``[-1, 1]`` for flat observations ``(B, obs_dim)``.

        This and :meth:`scale_action`, :meth:`update`, :meth:`make_replay`, :meth:`check_env`
        and :meth:`train_stats` are the hooks other learners (MBPO) drive SAC through.
        """
        obs_t = torch.from_numpy(flat_obs).to(self.device, non_blocking=True)
        if self._actor_layers is not None:
            # The same kernels and random draws as SquashedGaussianActor.forward, without the
            # per-module Python dispatch (a visible share of a single-env step).
            with torch.no_grad():
                action = actor_action(
                    self._actor_layers,
                    obs_t,
                    None if deterministic else self.generator,
                    self.actor.log_std_min,
                    self.actor.log_std_max,
                )
            return action.cpu().numpy()
        with torch.inference_mode():
            action, _ = self._actor_fn(obs_t, self.generator, deterministic)
        return action.cpu().numpy()

    def act(self, obs: Any, deterministic: bool = True) -> np.ndarray:
        """Return the env action for one observation, or a batch (leading batch axis).

        Args:
            obs: a Box observation, a dict of blocks, or the flat vector (single or batched).
            deterministic: use the mean action ``tanh(mu)`` instead of sampling.
        """
        flat, batched = self.flattener.flatten(obs)
        action = self.scale_action(self.policy_unit_action(flat, deterministic))
        return action if batched else action[0]

    # ----------------------------------------------------------------------------- learning

    def _critic_input(self, obs: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        return torch.cat([obs, action], dim=-1)

    @torch.no_grad()
    def _td_target(
        self,
        rewards: torch.Tensor,
        next_obs: torch.Tensor,
        discounts: torch.Tensor,
        alpha: torch.Tensor,
    ) -> torch.Tensor:
        """Soft Bellman target ``r + discount * (min_k Q'_k(s', a') - alpha * log pi(a'|s'))``."""
        next_actions, next_log_prob = self._actor_fn(next_obs, self.generator)
        next_q = self._critic_target_fn(self._critic_input(next_obs, next_actions))
        # Clipped double Q (Fujimoto et al. 2018): the minimum over the ensemble.
        next_v = next_q.squeeze(-1).amin(dim=0) - alpha * next_log_prob
        # discounts = gamma * (1 - terminated): truncation bootstraps, termination does not.
        return rewards + discounts * next_v

    def update(self, batch: ReplayBatch) -> None:
        """One gradient step on the entropy coefficient, the critics and the actor (SB3 order).

        Args:
            batch: transitions with unit-scaled actions and ``discounts`` (``gamma``, or 0 at
                termination), as :class:`~agents.replay.ReplayBuffer` samples them.
        """
        cfg = self.config
        polyak = (self.num_updates + 1) % cfg.target_update_interval == 0
        if self._explicit is not None:
            # The explicit step runs the Polyak update itself, once the critics have stepped.
            self._explicit.step(batch, cfg.tau if polyak else None)
            self._stats_pending = True  # computed when read (train_stats), not every step
        else:
            self._autograd_update(batch)
            if polyak:
                with torch.no_grad():
                    # target += tau * (online - target), all tensors in one multi-tensor kernel.
                    torch._foreach_lerp_(self._target_params, self._critic_params, cfg.tau)
        self.num_updates += 1

    def _autograd_update(self, batch: ReplayBatch) -> None:
        """The reference update with autograd (``explicit_gradients=False`` or ``compile``)."""
        obs, actions, rewards, next_obs, discounts = batch
        cfg = self.config

        pi_actions, log_prob = self._actor_fn(obs, self.generator)
        alpha = self.log_alpha.detach().exp()
        if cfg.autotune_entropy:
            # J(alpha) = E[-alpha * (log pi + target_entropy)], optimised in log space.
            alpha_loss = -(self.log_alpha * (log_prob.detach() + self.target_entropy)).mean()
            self.alpha_optimizer.zero_grad(set_to_none=True)
            alpha_loss.backward()
            self.alpha_optimizer.step()
            self._last_stats["ent_coef_loss"] = alpha_loss.detach()

        target_q = self._td_target(rewards, next_obs, discounts, alpha)
        q = self._critic_fn(self._critic_input(obs, actions)).squeeze(-1)  # (n_critics, B)
        critic_loss = 0.5 * (q - target_q).square().mean(dim=1).sum()
        self.critic_optimizer.zero_grad(set_to_none=True)
        critic_loss.backward()
        self.critic_optimizer.step()

        # Freeze critic weights for the actor's backward pass: gradients flow through the
        # critic to the action, but no (unused) weight gradients are computed.
        for p in self._critic_params:
            p.requires_grad_(False)
        q_pi = self._critic_fn(self._critic_input(obs, pi_actions)).squeeze(-1).amin(dim=0)
        actor_loss = (alpha * log_prob - q_pi).mean()
        self.actor_optimizer.zero_grad(set_to_none=True)
        actor_loss.backward()
        self.actor_optimizer.step()
        for p in self._critic_params:
            p.requires_grad_(True)

        self._last_stats["actor_loss"] = actor_loss.detach()
        self._last_stats["critic_loss"] = critic_loss.detach()
        self._last_stats["ent_coef"] = alpha
        self._last_stats["q_mean"] = q.detach().mean()

    def make_replay(self) -> ReplayBuffer:
        """A replay buffer sized and placed as the config says (its footprint is logged)."""
        replay = ReplayBuffer(
            self.observation_space, self.action_space, self.config.buffer_size, self.device
        )
        logger.info("SAC replay buffer: %s", replay.describe())
        return replay

    def check_env(self, env: gym.Env) -> None:
        """Raise ``ConfigError`` unless ``env``'s spaces match the agent's."""
        env_obs = ObservationFlattener(env.observation_space)
        if env_obs.dim != self.obs_dim or env_obs.block_names != self.flattener.block_names:
            raise ConfigError(
                f"sac learn: env observation space {env.observation_space} does not match the "
                f"agent's {self.observation_space}"
            )
        if not isinstance(env.action_space, spaces.Box) or env.action_space.shape != (
            self.action_space.shape
        ):
            raise ConfigError(
                f"sac learn: env action space {env.action_space} does not match the agent's "
                f"{self.action_space}"
            )

    def train_stats(self) -> dict[str, float]:
        """The last update's losses, entropy coefficient and mean Q (one host read each)."""
        if self._stats_pending and self._explicit is not None:
            self._last_stats.update(self._explicit.stats())
            self._stats_pending = False
        return {name: float(value.item()) for name, value in self._last_stats.items()}

    def learn(
        self,
        env: gym.Env,
        total_timesteps: int,
        callback: StepCallback | None = None,
        writer: ScalarWriter | None = None,
    ) -> None:
        """Run the env loop until ``num_timesteps`` reaches ``total_timesteps``.

        The env is reset with ``config.seed`` on a fresh agent, and with ``seed +
        num_timesteps`` when continuing (after ``load_checkpoint`` or a previous ``learn``), so
        a resumed run is reproducible too. ``callback(num_timesteps)`` runs after every env step
        (and the updates it triggered); returning False stops training.

        Args:
            env: a single Gymnasium env with matching spaces.
            total_timesteps: the step count to stop at (not a number of additional steps).
            callback: optional per-step hook.
            writer: optional scalar writer (TensorBoard ``SummaryWriter``).
        """
        self.check_env(env)
        cfg = self.config
        if self.replay is None:
            self.replay = self.make_replay()
        replay = self.replay
        gamma = np.float32(cfg.gamma)
        obs, _ = env.reset(seed=cfg.seed + self.num_timesteps)
        flat_obs = self.flattener.flatten(obs)[0]
        episode_return, episode_length = 0.0, 0
        start_time, start_steps = time.perf_counter(), self.num_timesteps

        while self.num_timesteps < total_timesteps:
            if self.num_timesteps < cfg.learning_starts:
                unit_action = self.np_random.uniform(-1.0, 1.0, (1, self.action_dim))
            else:
                unit_action = self.policy_unit_action(flat_obs, deterministic=False)
            env_action = self.scale_action(unit_action)[0]
            next_obs, reward, terminated, truncated, _ = env.step(env_action)
            flat_next = self.flattener.flatten(next_obs)[0]
            # On truncation next_obs is the real final observation: store it to bootstrap from.
            replay.add(flat_obs, unit_action, reward, flat_next, 0.0 if terminated else gamma)
            self.num_timesteps += 1
            episode_return += float(reward)
            episode_length += 1
            if terminated or truncated:
                self.episode_returns.append(episode_return)
                self.episode_lengths.append(episode_length)
                episode_return, episode_length = 0.0, 0
                obs, _ = env.reset()
                flat_obs = self.flattener.flatten(obs)[0]
            else:
                flat_obs = flat_next

            if (
                self.num_timesteps > cfg.learning_starts
                and self.num_timesteps % cfg.train_freq == 0
            ):
                for _ in range(cfg.gradient_steps):
                    self.update(replay.sample(cfg.batch_size, self.generator))

            if (
                writer is not None
                and cfg.log_interval
                and self.num_timesteps % cfg.log_interval == 0
            ):
                self._log(writer, start_time, start_steps)
            if callback is not None and callback(self.num_timesteps) is False:
                break

    def _log(self, writer: ScalarWriter, start_time: float, start_steps: int) -> None:
        step = self.num_timesteps
        write_rollout_scalars(
            writer, step, self.episode_returns, self.episode_lengths, start_time, start_steps
        )
        # The only device-to-host reads of training statistics happen here.
        for name, value in self.train_stats().items():
            writer.add_scalar(f"train/{name}", value, step)

    # ----------------------------------------------------------------------------- persistence

    def _header(self, kind: str) -> dict[str, Any]:
        return {
            "format": kind,
            "version": _FORMAT_VERSION,
            "config": asdict(self.config),
            "observation_space": space_to_dict(self.observation_space),
            "action_space": space_to_dict(self.action_space),
        }

    def save(self, path: str | Path) -> None:
        """Write what acting needs: config, spaces and actor weights (no code, atomic)."""
        state = self._header(_POLICY_FORMAT)
        state["actor"] = self.actor.state_dict()
        atomic_torch_save(state, path)

    @classmethod
    def load(cls, path: str | Path, device: str = "auto") -> SAC:
        """Rebuild an agent from ``save`` (or ``save_checkpoint``) output on ``device``.

        Only the actor is restored; critics are freshly initialised (use ``from_checkpoint`` to
        resume training).
        """
        state = safe_torch_load(path, "cpu")
        agent = cls._from_header(path, state, device, (_POLICY_FORMAT, _CHECKPOINT_FORMAT))
        agent.actor.load_state_dict(state["actor"])
        return agent

    @classmethod
    def from_checkpoint(cls, path: str | Path, device: str = "auto") -> SAC:
        """Build an agent with the checkpoint's config and spaces and restore its training state."""
        state = safe_torch_load(path, "cpu")
        agent = cls._from_header(path, state, device, (_CHECKPOINT_FORMAT,))
        agent.load_checkpoint(path)
        return agent

    @classmethod
    def _from_header(
        cls, path: str | Path, state: Any, device: str, formats: tuple[str, ...]
    ) -> SAC:
        if not isinstance(state, dict) or state.get("format") not in formats:
            got = state.get("format") if isinstance(state, dict) else type(state).__name__
            raise CheckpointError(f"checkpoint {path}: format {got!r}, expected one of {formats}")
        config = SACConfig.from_dict({**state["config"], "device": device})
        return cls(
            space_from_dict(state["observation_space"]),
            space_from_dict(state["action_space"]),
            config,
        )

    def save_checkpoint(self, path: str | Path, include_buffer: bool = False) -> None:
        """Write the whole training state atomically.

        Stored: config, spaces, actor, critics, target critics, the three Adam states,
        ``log_alpha``, ``num_timesteps``, ``num_updates``, the last 100 episode returns and
        lengths, the agent's torch generator and NumPy RNG states, and (if ``include_buffer``)
        the replay buffer's filled part.
        """
        state = self._header(_CHECKPOINT_FORMAT)
        state.update(
            actor=self.actor.state_dict(),
            critic=self.critic.state_dict(),
            critic_target=self.critic_target.state_dict(),
            actor_optimizer=self.actor_optimizer.state_dict(),
            critic_optimizer=self.critic_optimizer.state_dict(),
            alpha_optimizer=self.alpha_optimizer.state_dict(),
            log_alpha=self.log_alpha.detach().clone(),
            num_timesteps=int(self.num_timesteps),
            num_updates=int(self.num_updates),
            episode_returns=[float(r) for r in self.episode_returns],
            episode_lengths=[int(n) for n in self.episode_lengths],
            torch_rng=self.generator.get_state(),
            numpy_rng=self.np_random.bit_generator.state,
            replay=self.replay.state_dict() if include_buffer and self.replay is not None else None,
        )
        atomic_torch_save(state, path)

    def load_checkpoint(self, path: str | Path) -> None:
        """Restore a ``save_checkpoint`` file into this agent (spaces and networks must match).

        The optimisers' states, including their learning rates, come from the checkpoint.

        Raises:
            CheckpointError: wrong file kind, or spaces/network shapes that do not match.
        """
        state = load_training_checkpoint(
            path,
            self.device,
            _CHECKPOINT_FORMAT,
            "a SAC",
            {
                "observation_space": space_to_dict(self.observation_space),
                "action_space": space_to_dict(self.action_space),
            },
        )
        for key in ("net_arch", "n_critics"):
            if state["config"][key] != getattr(self.config, key):
                raise CheckpointError(
                    f"checkpoint {path}: config.{key} is {state['config'][key]}, this agent has "
                    f"{getattr(self.config, key)}"
                )
        self.actor.load_state_dict(state["actor"])
        self.critic.load_state_dict(state["critic"])
        self.critic_target.load_state_dict(state["critic_target"])
        self.actor_optimizer.load_state_dict(state["actor_optimizer"])
        self.critic_optimizer.load_state_dict(state["critic_optimizer"])
        self.alpha_optimizer.load_state_dict(state["alpha_optimizer"])
        with torch.no_grad():
            self.log_alpha.copy_(state["log_alpha"])
        self.num_timesteps = int(state["num_timesteps"])
        self.num_updates = int(state["num_updates"])
        self.episode_returns = deque(state["episode_returns"], maxlen=100)
        self.episode_lengths = deque(state["episode_lengths"], maxlen=100)
        self.generator.set_state(state["torch_rng"].cpu())
        self.np_random.bit_generator.state = state["numpy_rng"]
        if state.get("replay") is not None:
            if self.replay is None:
                self.replay = self.make_replay()
            self.replay.load_state_dict(state["replay"])
