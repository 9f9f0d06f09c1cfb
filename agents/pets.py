"""PETS: probabilistic ensembles with trajectory sampling, planned by CEM or MPPI (Chua et al.
2018, "Deep Reinforcement Learning in a Handful of Trials using Probabilistic Dynamics Models";
mbrl-lib's ``MPC`` agent as reference). Readable top to bottom.

There is no policy network: every action is planned. At each step the planner
(``agents/planning.py``) scores ``population`` candidate action sequences of length ``horizon`` by
their mean imagined return over ``particles`` rollouts through a ``ModelEnv`` (``tsinf``: each
particle keeps one elite for the whole rollout, the paper's best setting), executes the first
action of the optimised plan and keeps the rest as the warm start of the next step.

Learning alternates: act (uniformly at random for the first ``learning_starts`` steps), store the
transition, and every ``model_train_freq`` steps refit the ensemble on all real data
(bootstrap, Gaussian NLL, early stopping, elites; ``world_models.training``). The learned reward
head is used as the planning objective; a custom ``dynamics`` (e.g.
``world_models.TradingAwareDynamics``) can supply an exact reward instead.

Actions are planned in ``[-1, 1]`` and rescaled to the env's Box bounds (as SAC does), so the
model, the buffer and the planner all work in the same unit cube.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from gymnasium import spaces

from agents.base import Learner, ScalarWriter, StepCallback, get_device
from agents.checkpoint import (
    CheckpointError,
    atomic_torch_save,
    load_training_checkpoint,
    safe_torch_load,
)
from agents.planning import CEMPlanner, MPPIPlanner
from agents.replay import ReplayBuffer
from agents.spaces import ObservationFlattener, space_from_dict, space_to_dict
from agents.training_log import write_rollout_scalars
from envs.errors import ConfigError, check_known_fields
from world_models.dynamics import DynamicsModel, EnsembleDynamics
from world_models.ensemble import EnsembleConfig
from world_models.model_env import PROPAGATIONS, ModelEnv
from world_models.training import EnsembleTrainConfig

__all__ = ["PETS", "PETSConfig"]

_POLICY_FORMAT = "marketrl.pets.policy"
_CHECKPOINT_FORMAT = "marketrl.pets.checkpoint"
_FORMAT_VERSION = 1
_PLANNERS = ("cem", "mppi")


@dataclass
class PETSConfig:
    """Hyper-parameters of PETS (defaults follow Chua et al. 2018 / mbrl-lib, scaled for a CPU)."""

    ensemble: dict[str, Any] = field(default_factory=dict)  # EnsembleConfig fields
    model_training: dict[str, Any] = field(default_factory=dict)  # EnsembleTrainConfig fields
    planner: str = "cem"  # "cem" or "mppi"
    horizon: int = 15  # planning horizon in steps
    population: int = 350  # candidate sequences per planner iteration
    planner_elites: int = 35  # CEM: sequences the sampling distribution is refitted to
    iterations: int = 5  # planner iterations per env step
    momentum: float = 0.1  # CEM: weight of the old mean/std in each refit
    init_std: float = 0.5  # CEM: initial sampling std (actions in [-1, 1])
    mppi_temperature: float = 10.0  # MPPI: inverse temperature of the return weighting
    mppi_noise_std: float = 0.5  # MPPI: exploration noise std
    mppi_beta: float = 0.6  # MPPI: noise smoothing through time (1 = white)
    particles: int = 20  # imagined rollouts per candidate (averaged)
    propagation: str = "tsinf"  # trajectory sampling: ts1, tsinf or expectation
    learning_starts: int = 200  # uniform random env steps before the first model fit
    model_train_freq: int = 200  # env steps between model fits
    buffer_size: int = 1_000_000  # real transitions kept
    log_interval: int = 1000  # env steps between scalar logs
    seed: int = 0  # seeds the model, planner noise, the agent's RNG and env reset
    device: str = "auto"  # "auto", "cpu", "cuda" ...

    def validate(self) -> None:
        """Raise ``ConfigError`` naming the first field whose value cannot work."""
        if self.planner not in _PLANNERS:
            raise ConfigError(
                f"pets.planner: expected one of {list(_PLANNERS)}, got {self.planner!r}"
            )
        if self.propagation not in PROPAGATIONS:
            raise ConfigError(
                f"pets.propagation: expected one of {list(PROPAGATIONS)}, got {self.propagation!r}"
            )
        for name in ("horizon", "population", "iterations", "particles", "model_train_freq"):
            if getattr(self, name) < 1:
                raise ConfigError(f"pets.{name}: expected >= 1, got {getattr(self, name)}")
        if self.buffer_size < 1:
            raise ConfigError(f"pets.buffer_size: expected >= 1, got {self.buffer_size}")
        for name in ("learning_starts", "log_interval"):
            if getattr(self, name) < 0:
                raise ConfigError(f"pets.{name}: expected >= 0, got {getattr(self, name)}")
        self.make_planner("cpu", None)  # planner-specific checks, with field names

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> PETSConfig:
        """Build from a plain dict (a checkpoint's or Hydra's); unknown keys are a ConfigError."""
        check_known_fields(cls, values, "pets config")
        values = dict(values)
        for name in ("ensemble", "model_training"):
            values[name] = dict(values.get(name) or {})
        config = cls(**values)
        config.validate()
        config.ensemble_config()
        config.train_config()
        return config

    def ensemble_config(self) -> EnsembleConfig:
        """The ensemble shape."""
        return EnsembleConfig.from_dict(self.ensemble, prefix="pets.ensemble")

    def train_config(self) -> EnsembleTrainConfig:
        """The ensemble's optimisation settings."""
        return EnsembleTrainConfig.from_dict(self.model_training, prefix="pets.model_training")

    def make_planner(
        self,
        device: str | torch.device,
        generator: torch.Generator | None,
        action_dim: int = 1,
    ) -> CEMPlanner | MPPIPlanner:
        """The configured planner over actions in ``[-1, 1]``."""
        try:
            if self.planner == "cem":
                return CEMPlanner(
                    action_dim,
                    self.horizon,
                    population=self.population,
                    num_elites=self.planner_elites,
                    iterations=self.iterations,
                    momentum=self.momentum,
                    init_std=self.init_std,
                    device=device,
                    generator=generator,
                )
            return MPPIPlanner(
                action_dim,
                self.horizon,
                population=self.population,
                iterations=self.iterations,
                temperature=self.mppi_temperature,
                noise_std=self.mppi_noise_std,
                beta=self.mppi_beta,
                device=device,
                generator=generator,
            )
        except ConfigError as exc:
            raise ConfigError(f"pets ({self.planner}): {exc}") from exc


class PETS(Learner):
    """Model-predictive control over a probabilistic ensemble, for a Box action space.

    Args:
        observation_space: Box or Dict of Box (flattened in key order).
        action_space: a Box with finite bounds.
        config: hyper-parameters.
        dynamics: a ready dynamics model on flat observations and actions in ``[-1, 1]`` (e.g.
            ``world_models.TradingAwareDynamics``); by default an ``EnsembleDynamics``.

    Raises:
        ConfigError: for unsupported spaces or invalid hyper-parameters.
    """

    def __init__(
        self,
        observation_space: spaces.Space,
        action_space: spaces.Space,
        config: PETSConfig | None = None,
        dynamics: DynamicsModel | None = None,
    ) -> None:
        self.config = config if config is not None else PETSConfig()
        self.config.validate()
        cfg = self.config
        if not isinstance(action_space, spaces.Box):
            raise ConfigError(f"pets action_space: got {type(action_space).__name__}, expected Box")
        low = np.asarray(action_space.low, dtype=np.float64).ravel()
        high = np.asarray(action_space.high, dtype=np.float64).ravel()
        if not (np.all(np.isfinite(low)) and np.all(np.isfinite(high)) and np.all(high > low)):
            raise ConfigError(
                f"pets action_space: expected finite bounds with high > low, got low={low}, "
                f"high={high}"
            )
        self.observation_space, self.action_space = observation_space, action_space
        self.flattener = ObservationFlattener(observation_space)
        self.obs_dim, self.action_dim = self.flattener.dim, low.size
        self._action_low, self._action_high = low, high
        self.device = get_device(cfg.device)
        if dynamics is None:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(cfg.seed)
                dynamics = EnsembleDynamics(
                    self.obs_dim, self.action_dim, cfg.ensemble_config(), cfg.train_config()
                )
        elif dynamics.obs_dim != self.obs_dim or dynamics.action_dim != self.action_dim:
            raise ConfigError(
                f"pets dynamics: model is ({dynamics.obs_dim}, {dynamics.action_dim}), the "
                f"spaces need ({self.obs_dim}, {self.action_dim})"
            )
        self.dynamics: Any = dynamics
        self.dynamics.to(self.device)
        self.generator = torch.Generator(device=self.device).manual_seed(cfg.seed)
        self.np_random = np.random.default_rng(cfg.seed)
        self.planner = cfg.make_planner(self.device, self.generator, self.action_dim)
        self.model_env = ModelEnv(self.dynamics, cfg.propagation, generator=self.generator)
        self.replay: ReplayBuffer | None = None
        self.model_fits = 0
        self.num_timesteps = 0
        self.episode_returns: deque[float] = deque(maxlen=100)
        self.episode_lengths: deque[int] = deque(maxlen=100)
        self._stats: dict[str, float] = {}

    # ----------------------------------------------------------------------------- acting

    def _scale_action(self, unit_action: np.ndarray) -> np.ndarray:
        action = self._action_low + (unit_action + 1.0) * 0.5 * (
            self._action_high - self._action_low
        )
        action = np.clip(action, self._action_low, self._action_high)
        return action.astype(self.action_space.dtype).reshape(-1, *self.action_space.shape)

    def plan_unit_action(self, flat_obs: np.ndarray) -> np.ndarray:
        """Plan from one flat observation; returns the first action in ``[-1, 1]``, ``(1, A)``.

        Before the first model fit there is nothing to plan with: the action is uniform random.
        """
        if self.model_fits == 0:
            return self.np_random.uniform(-1.0, 1.0, (1, self.action_dim))
        obs_t = torch.as_tensor(flat_obs.reshape(-1), dtype=torch.float32, device=self.device)
        particles = self.config.particles

        def objective(sequences: torch.Tensor) -> torch.Tensor:
            return self.model_env.evaluate_action_sequences(obs_t, sequences, particles)

        plan = self.planner.plan(objective)
        self._stats["planning/return"] = self.planner.last_score
        first = plan[0].cpu().numpy().reshape(1, -1)
        self.planner.advance()
        return first

    def reset_planner(self) -> None:
        """Drop the warm start (call at the start of an episode)."""
        self.planner.reset()

    def act(self, obs: Any, deterministic: bool = True) -> np.ndarray:
        """Plan the action for one observation, or for each row of a batch.

        The plan is warm-started from the previous call's plan shifted by one step (the planner
        is stateful, as in PETS). ``deterministic`` is accepted for the interface: planning draws
        from the agent's seeded generator either way.
        """
        flat, batched = self.flattener.flatten(obs)
        if flat.shape[0] == 1:
            unit = self.plan_unit_action(flat[0])
        else:  # rows are unrelated states: plan each without a shared warm start
            rows = []
            for row in flat:
                self.planner.reset()
                rows.append(self.plan_unit_action(row))
            self.planner.reset()
            unit = np.concatenate(rows)
        action = self._scale_action(unit)
        return action if batched else action[0]

    # ----------------------------------------------------------------------------- learning

    def _check_env(self, env: gym.Env) -> None:
        env_obs = ObservationFlattener(env.observation_space)
        if env_obs.dim != self.obs_dim or env_obs.block_names != self.flattener.block_names:
            raise ConfigError(
                f"pets learn: env observation space {env.observation_space} does not match the "
                f"agent's {self.observation_space}"
            )
        if not isinstance(env.action_space, spaces.Box) or env.action_space.shape != (
            self.action_space.shape
        ):
            raise ConfigError(
                f"pets learn: env action space {env.action_space} does not match the agent's "
                f"{self.action_space}"
            )

    def train_model(self) -> None:
        """Fit the dynamics on every real transition so far."""
        replay = self.replay
        assert replay is not None
        n = replay.size
        fit = self.dynamics.fit(
            replay.observations[:n],
            replay.actions[:n],
            replay.rewards[:n],
            replay.next_observations[:n],
            generator=self.generator,
        )
        self.model_fits += 1
        self._stats.update(
            {
                "model/loss": fit.train_loss,
                "model/elite_holdout_mse": fit.elite_mse,
                "model/epochs": float(fit.epochs),
                "model/elite_score_best": min(fit.holdout_mse),
            }
        )

    def learn(
        self,
        env: gym.Env,
        total_timesteps: int,
        callback: StepCallback | None = None,
        writer: ScalarWriter | None = None,
    ) -> None:
        """Act by planning, store transitions, refit the model every ``model_train_freq`` steps.

        The env is reset with ``seed + num_timesteps``; ``callback(num_timesteps)`` runs after
        every env step and returning False stops training.
        """
        self._check_env(env)
        cfg = self.config
        if self.replay is None:
            self.replay = ReplayBuffer(
                self.observation_space, self.action_space, cfg.buffer_size, self.device
            )
        replay = self.replay
        obs, _ = env.reset(seed=cfg.seed + self.num_timesteps)
        self.planner.reset()
        flat_obs = self.flattener.flatten(obs)[0]
        episode_return, episode_length = 0.0, 0
        start_time, start_steps = time.perf_counter(), self.num_timesteps

        while self.num_timesteps < total_timesteps:
            if self.num_timesteps < cfg.learning_starts:
                unit_action = self.np_random.uniform(-1.0, 1.0, (1, self.action_dim))
            else:
                unit_action = self.plan_unit_action(flat_obs[0])
            next_obs, reward, terminated, truncated, _ = env.step(
                self._scale_action(unit_action)[0]
            )
            flat_next = self.flattener.flatten(next_obs)[0]
            replay.add(flat_obs, unit_action, reward, flat_next, 0.0 if terminated else 1.0)
            self.num_timesteps += 1
            episode_return += float(reward)
            episode_length += 1
            if terminated or truncated:
                self.episode_returns.append(episode_return)
                self.episode_lengths.append(episode_length)
                episode_return, episode_length = 0.0, 0
                obs, _ = env.reset()
                self.planner.reset()
                flat_obs = self.flattener.flatten(obs)[0]
            else:
                flat_obs = flat_next

            since_start = self.num_timesteps - cfg.learning_starts
            if since_start >= 0 and since_start % cfg.model_train_freq == 0 and replay.size >= 2:
                self.train_model()

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
        for name, value in self._stats.items():
            writer.add_scalar(name, value, step)

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
        """Write what acting needs: config, spaces, the model and the fit count (atomic)."""
        state = self._header(_POLICY_FORMAT)
        state.update(dynamics=self.dynamics.state_dict(), model_fits=int(self.model_fits))
        atomic_torch_save(state, path)

    @classmethod
    def load(
        cls, path: str | Path, device: str = "auto", dynamics: DynamicsModel | None = None
    ) -> PETS:
        """Rebuild an agent from ``save`` (or ``save_checkpoint``) output.

        Args:
            path: the file.
            device: where to put the model.
            dynamics: the same kind of custom model the agent was trained with, if any.
        """
        state = safe_torch_load(path, "cpu")
        formats = (_POLICY_FORMAT, _CHECKPOINT_FORMAT)
        if not isinstance(state, dict) or state.get("format") not in formats:
            got = state.get("format") if isinstance(state, dict) else type(state).__name__
            raise CheckpointError(f"checkpoint {path}: format {got!r}, expected one of {formats}")
        config = PETSConfig.from_dict({**state["config"], "device": device})
        agent = cls(
            space_from_dict(state["observation_space"]),
            space_from_dict(state["action_space"]),
            config,
            dynamics,
        )
        agent._load_dynamics(path, state["dynamics"])
        agent.model_fits = int(state["model_fits"])
        return agent

    def _load_dynamics(self, path: str | Path, weights: dict[str, Any]) -> None:
        try:
            self.dynamics.load_state_dict(weights)
        except RuntimeError as exc:
            raise CheckpointError(
                f"checkpoint {path}: dynamics model does not fit ({exc})"
            ) from exc

    def save_checkpoint(self, path: str | Path, include_buffer: bool = False) -> None:
        """Write the whole training state atomically.

        Stored: config, spaces, the model's weights, normalisers and elites, its optimiser, the
        planner's warm-start plan, the fit count, ``num_timesteps``, episode statistics, the
        generator and NumPy RNG states, and (with ``include_buffer``) the real replay buffer.
        """
        state = self._header(_CHECKPOINT_FORMAT)
        state.update(
            dynamics=self.dynamics.state_dict(),
            dynamics_extra=self.dynamics.extra_state(),
            plan=self.planner.mean.detach().cpu().clone(),
            model_fits=int(self.model_fits),
            num_timesteps=int(self.num_timesteps),
            episode_returns=[float(r) for r in self.episode_returns],
            episode_lengths=[int(n) for n in self.episode_lengths],
            torch_rng=self.generator.get_state(),
            numpy_rng=self.np_random.bit_generator.state,
            replay=self.replay.state_dict() if include_buffer and self.replay is not None else None,
        )
        atomic_torch_save(state, path)

    def load_checkpoint(self, path: str | Path) -> None:
        """Restore a ``save_checkpoint`` file into this agent.

        Raises:
            CheckpointError: wrong file kind, or spaces that do not match.
        """
        state = load_training_checkpoint(
            path,
            "cpu",
            _CHECKPOINT_FORMAT,
            "a PETS",
            {
                "observation_space": space_to_dict(self.observation_space),
                "action_space": space_to_dict(self.action_space),
            },
        )
        self._load_dynamics(path, state["dynamics"])
        self.dynamics.load_extra_state(state["dynamics_extra"])
        if tuple(state["plan"].shape) == tuple(self.planner.mean.shape):
            self.planner.mean = state["plan"].to(self.device)
        self.model_fits = int(state["model_fits"])
        self.num_timesteps = int(state["num_timesteps"])
        self.episode_returns = deque(state["episode_returns"], maxlen=100)
        self.episode_lengths = deque(state["episode_lengths"], maxlen=100)
        self.generator.set_state(state["torch_rng"].cpu())
        self.np_random.bit_generator.state = state["numpy_rng"]
        if state.get("replay") is not None:
            if self.replay is None:
                self.replay = ReplayBuffer(
                    self.observation_space, self.action_space, self.config.buffer_size, self.device
                )
            self.replay.load_state_dict(state["replay"])
