"""Model-Based Policy Optimization (MBPO; Janner et al. 2019, "When to Trust Your Model"),
readable top to bottom, on top of our SAC (``agents/sac.py``) and a probabilistic ensemble
(``world_models``).

The loop, per real env step:

1. act with SAC's stochastic policy (uniform random for the first ``learning_starts`` steps) and
   store the transition in the real replay buffer;
2. every ``model_train_freq`` steps: fit the ensemble on all real data (bootstrap, Gaussian NLL,
   early stopping, elites; ``world_models.training``), then branch ``rollout_batch_size`` short
   model rollouts from real states sampled from the buffer, with SAC's policy, through a
   ``ModelEnv`` (TS1 propagation: a random elite per transition and step, as in MBPO), and store
   the imagined transitions in the model buffer. The rollout length follows a linear schedule
   ``[start_step, end_step, min_length, max_length]`` (MBPO appendix C);
3. ``updates_per_step`` SAC gradient steps, each on a batch of ``real_ratio`` real and
   ``1 - real_ratio`` model transitions (MBPO: 5% real, 20 updates per step).

With ``trading_aware`` (``MarketTrading-v0`` only) the model is
``world_models.market_trading_dynamics``: the ensemble learns the market window, the predictor
blocks and three auxiliary market inputs (next open gap, next close return, impact scale; see
``envs/market_accounting.py``), and the portfolio block and reward come from the env's known
accounting (issue 7). Build such an agent with :meth:`MBPO.for_env`; the auxiliary inputs of
every real transition are read from the env before each step and kept next to the replay.

The model buffer holds ``rollout_batch_size * rollout_length * model_retain_rollouts``
transitions (resized, newest kept, when the length changes), so stale rollouts age out.

SAC is driven through its public hooks (``update(ReplayBatch)``, ``policy_unit_action`` ...); its
own ``learn`` loop fields (``learning_starts``, ``train_freq``, ``gradient_steps``) are unused
here. Checkpoints embed SAC's own checkpoint dict (written with ``SAC.save_checkpoint`` to a
temporary file and read back), so this file does not copy SAC's list of training state.
"""

from __future__ import annotations

import tempfile
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
from agents.replay import ReplayBatch, ReplayBuffer
from agents.sac import SAC, SACConfig
from agents.spaces import ObservationFlattener, space_from_dict, space_to_dict
from agents.training_log import write_rollout_scalars
from envs.errors import ConfigError, check_known_fields
from world_models.dynamics import DynamicsModel, EnsembleDynamics
from world_models.ensemble import EnsembleConfig
from world_models.model_env import PROPAGATIONS, ModelEnv
from world_models.training import EnsembleTrainConfig

__all__ = ["MBPO", "MBPOConfig", "rollout_length_at"]

_POLICY_FORMAT = "marketrl.mbpo.policy"
_CHECKPOINT_FORMAT = "marketrl.mbpo.checkpoint"
_FORMAT_VERSION = 1


@dataclass
class MBPOConfig:
    """Hyper-parameters of MBPO (defaults follow Janner et al. 2019, scaled for a CPU)."""

    sac: dict[str, Any] = field(default_factory=dict)  # SACConfig fields (seed/device are ours)
    ensemble: dict[str, Any] = field(default_factory=dict)  # EnsembleConfig fields
    model_training: dict[str, Any] = field(default_factory=dict)  # EnsembleTrainConfig fields
    learning_starts: int = 1000  # uniform random env steps before the first model fit
    model_train_freq: int = 250  # env steps between model fits (and rollout batches)
    rollout_batch_size: int = 10_000  # branched rollouts started per model fit (paper: 100k)
    rollout_schedule: list[int] = field(default_factory=lambda: [20_000, 100_000, 1, 15])
    model_retain_rollouts: int = 4  # rollout batches the model buffer keeps
    propagation: str = "ts1"  # trajectory sampling of the model env (ts1, tsinf, expectation)
    trading_aware: bool = False  # MarketTrading-v0: learn the market, compute the accounting
    real_ratio: float = 0.05  # share of real transitions in each SAC batch
    updates_per_step: int = 20  # SAC gradient steps per env step once the model is trained
    log_interval: int = 1000  # env steps between scalar logs
    seed: int = 0  # seeds SAC, the model, the agent's generators and env reset
    device: str = "auto"  # "auto", "cpu", "cuda" ...

    def validate(self) -> None:
        """Raise ``ConfigError`` naming the first field whose value cannot work."""
        for name in ("model_train_freq", "rollout_batch_size", "model_retain_rollouts"):
            if getattr(self, name) < 1:
                raise ConfigError(f"mbpo.{name}: expected >= 1, got {getattr(self, name)}")
        for name in ("learning_starts", "updates_per_step", "log_interval"):
            if getattr(self, name) < 0:
                raise ConfigError(f"mbpo.{name}: expected >= 0, got {getattr(self, name)}")
        if not 0.0 <= self.real_ratio <= 1.0:
            raise ConfigError(f"mbpo.real_ratio: expected in [0, 1], got {self.real_ratio}")
        if self.propagation not in PROPAGATIONS:
            raise ConfigError(
                f"mbpo.propagation: expected one of {list(PROPAGATIONS)}, got {self.propagation!r}"
            )
        sched = self.rollout_schedule
        if len(sched) != 4 or sched[0] > sched[1] or not 1 <= sched[2] <= sched[3] or sched[0] < 0:
            raise ConfigError(
                "mbpo.rollout_schedule: expected [start_step <= end_step, 1 <= min_length <= "
                f"max_length], got {sched}"
            )

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> MBPOConfig:
        """Build from a plain dict (a checkpoint's or Hydra's); unknown keys are a ConfigError."""
        check_known_fields(cls, values, "mbpo config")
        values = dict(values)
        for name in ("sac", "ensemble", "model_training"):
            values[name] = dict(values.get(name) or {})
        if "rollout_schedule" in values:
            values["rollout_schedule"] = [int(v) for v in values["rollout_schedule"]]
        config = cls(**values)
        config.validate()
        config.sac_config()  # nested configs are checked now, not at the first fit
        config.ensemble_config()
        config.train_config()
        return config

    def sac_config(self) -> SACConfig:
        """The SAC config with this agent's seed and device."""
        if {"seed", "device"} & set(self.sac):
            raise ConfigError("mbpo.sac: seed and device are set on mbpo itself, not under sac")
        return SACConfig.from_dict({**self.sac, "seed": self.seed, "device": self.device})

    def ensemble_config(self) -> EnsembleConfig:
        """The ensemble shape."""
        return EnsembleConfig.from_dict(self.ensemble, prefix="mbpo.ensemble")

    def train_config(self) -> EnsembleTrainConfig:
        """The ensemble's optimisation settings."""
        return EnsembleTrainConfig.from_dict(self.model_training, prefix="mbpo.model_training")


def rollout_length_at(step: int, schedule: list[int]) -> int:
    """Linear rollout-length schedule ``[start, end, min_len, max_len]`` (MBPO appendix C)."""
    start, end, low, high = schedule
    if step <= start or end == start:
        return int(low if step <= start else high)
    frac = min(1.0, (step - start) / (end - start))
    return int(low + frac * (high - low))


def _concat(a: ReplayBatch, b: ReplayBatch) -> ReplayBatch:
    return ReplayBatch(*(torch.cat([x, y]) for x, y in zip(a, b, strict=True)))


def _ordered_contents(buffer: ReplayBuffer) -> dict[str, torch.Tensor]:
    """Buffer contents oldest first (a full circular buffer starts at ``pos``)."""
    state = buffer.state_dict()
    names = ("observations", "actions", "rewards", "next_observations", "discounts")
    if buffer.size < buffer.capacity:
        return {n: state[n] for n in names}
    return {n: torch.roll(state[n], -buffer.pos, dims=0) for n in names}


class MBPO(Learner):
    """MBPO with our SAC on a Box action space and a Box or Dict-of-Box observation space.

    Args:
        observation_space: what the env returns (Dict observations are flattened in key order).
        action_space: a Box with finite bounds.
        config: hyper-parameters.
        dynamics: a ready dynamics model (e.g. ``world_models.TradingAwareDynamics``) working on
            flat observations and actions in ``[-1, 1]``; by default an ``EnsembleDynamics``.

    Raises:
        ConfigError: for unsupported spaces or invalid hyper-parameters.
    """

    def __init__(
        self,
        observation_space: spaces.Space,
        action_space: spaces.Space,
        config: MBPOConfig | None = None,
        dynamics: DynamicsModel | None = None,
    ) -> None:
        self.config = config if config is not None else MBPOConfig()
        self.config.validate()
        cfg = self.config
        if cfg.trading_aware and dynamics is None:
            raise ConfigError(
                "mbpo.trading_aware: the accounting is read from the env; build the agent with "
                "MBPO.for_env(env, config) (or pass dynamics=MBPO.make_dynamics(env, config))"
            )
        self.sac = SAC(observation_space, action_space, cfg.sac_config())
        self.observation_space, self.action_space = observation_space, action_space
        self.flattener = ObservationFlattener(observation_space)
        self.obs_dim, self.action_dim = self.sac.obs_dim, self.sac.action_dim
        self.device = get_device(cfg.device)
        if dynamics is None:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(cfg.seed + 1)
                dynamics = EnsembleDynamics(
                    self.obs_dim, self.action_dim, cfg.ensemble_config(), cfg.train_config()
                )
            self.custom_dynamics = False
        else:
            if dynamics.obs_dim != self.obs_dim or dynamics.action_dim != self.action_dim:
                raise ConfigError(
                    f"mbpo dynamics: model is ({dynamics.obs_dim}, {dynamics.action_dim}), the "
                    f"spaces need ({self.obs_dim}, {self.action_dim})"
                )
            self.custom_dynamics = True
        self.dynamics: Any = dynamics
        self.dynamics.to(self.device)
        # Model-side randomness (fits, rollout starts, propagation noise) on its own stream.
        self.generator = torch.Generator(device=self.device).manual_seed(cfg.seed + 1)
        self.np_random = np.random.default_rng(cfg.seed)
        self.model_env = ModelEnv(self.dynamics, cfg.propagation, generator=self.generator)
        self.model_buffer: ReplayBuffer | None = None
        self.model_fits = 0
        self.num_timesteps = 0
        self.episode_returns: deque[float] = deque(maxlen=100)
        self.episode_lengths: deque[int] = deque(maxlen=100)
        self._stats: dict[str, float] = {}
        # Auxiliary inputs of the real transitions (trading-aware models), row-aligned with
        # the real replay's storage; allocated with the replay.
        self.auxiliary_fn = getattr(self.dynamics, "auxiliary_fn", None)
        self.n_auxiliary = int(getattr(self.dynamics, "n_auxiliary", 0))
        self.auxiliary: np.ndarray | None = None

    @classmethod
    def make_dynamics(cls, env: gym.Env, config: MBPOConfig) -> DynamicsModel | None:
        """The trading-aware model for ``env`` if ``config.trading_aware``, else None.

        Raises:
            ConfigError: ``env`` is not a ``MarketTrading-v0`` setting the accounting supports.
        """
        if not config.trading_aware:
            return None
        from world_models.trading import market_trading_dynamics

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed + 1)
            return market_trading_dynamics(env, config.ensemble_config(), config.train_config())

    @classmethod
    def for_env(cls, env: gym.Env, config: MBPOConfig | None = None) -> MBPO:
        """An agent for ``env``'s spaces; trading-aware dynamics when the config asks for it."""
        config = config if config is not None else MBPOConfig()
        config.validate()
        return cls(env.observation_space, env.action_space, config, cls.make_dynamics(env, config))

    # ----------------------------------------------------------------------------- acting

    def act(self, obs: Any, deterministic: bool = True) -> np.ndarray:
        """SAC's action for one observation or a batch (leading batch axis)."""
        return self.sac.act(obs, deterministic)

    # ----------------------------------------------------------------------------- model

    def rollout_length(self) -> int:
        """Current branched-rollout length from the schedule."""
        return rollout_length_at(self.num_timesteps, self.config.rollout_schedule)

    def _ensure_model_buffer(self, length: int) -> ReplayBuffer:
        cfg = self.config
        capacity = cfg.rollout_batch_size * length * cfg.model_retain_rollouts
        old = self.model_buffer
        if old is not None and old.capacity == capacity:
            return old
        new = ReplayBuffer(self.observation_space, self.action_space, capacity, self.device)
        if old is not None and old.size:
            data = _ordered_contents(old)
            keep = slice(max(0, old.size - capacity), old.size)
            new.add(*(data[n][keep].numpy() for n in data))
        self.model_buffer = new
        return new

    def train_model(self) -> None:
        """Fit the dynamics on every real transition so far."""
        replay = self.sac.replay
        assert replay is not None
        n = replay.size
        extra: dict[str, Any] = {}
        if self.n_auxiliary:
            assert self.auxiliary is not None
            extra["auxiliary"] = torch.as_tensor(self.auxiliary[:n], device=self.device)
        fit = self.dynamics.fit(
            replay.observations[:n],
            replay.actions[:n],
            replay.rewards[:n],
            replay.next_observations[:n],
            generator=self.generator,
            **extra,
        )
        self.model_fits += 1
        self._stats.update(
            {
                "model/loss": fit.train_loss,
                "model/elite_holdout_mse": fit.elite_mse,
                "model/epochs": float(fit.epochs),
                "model/elite_score_best": min(fit.holdout_mse),
                "model/elite_score_worst_elite": max(fit.holdout_mse[i] for i in fit.elites),
            }
        )

    @torch.no_grad()
    def rollout_model(self) -> None:
        """Branch ``rollout_batch_size`` model rollouts from real states into the model buffer."""
        cfg = self.config
        replay = self.sac.replay
        assert replay is not None
        length = self.rollout_length()
        buffer = self._ensure_model_buffer(length)
        gamma = float(self.sac.config.gamma)
        idx = torch.randint(
            replay.size, (cfg.rollout_batch_size,), generator=self.generator, device=self.device
        )
        obs = self.model_env.reset(replay.observations[idx])
        added, reward_sum = 0, 0.0
        for _ in range(length):
            actions, _ = self.sac.actor(obs, self.sac.generator)
            next_obs, reward, terminated = self.model_env.step(actions)
            discount = gamma * (~terminated).to(torch.float32)
            buffer.add(
                obs.cpu().numpy(),
                actions.cpu().numpy(),
                reward.cpu().numpy(),
                next_obs.cpu().numpy(),
                discount.cpu().numpy(),
            )
            added += obs.shape[0]
            reward_sum += float(reward.sum())
            alive = ~terminated
            if not bool(alive.any()):
                break
            obs = next_obs[alive]
            if not bool(terminated.any()):
                continue
            self.model_env.reset(obs)  # keep only live rows (MBPO drops terminated branches)
        self._stats.update(
            {
                "rollout/length": float(length),
                "rollout/model_buffer_size": float(buffer.size),
                "rollout/model_reward_mean": reward_sum / max(added, 1),
            }
        )

    def _mixed_batch(self) -> ReplayBatch:
        batch_size = self.sac.config.batch_size
        replay, model = self.sac.replay, self.model_buffer
        assert replay is not None
        if model is None or model.size == 0:
            return replay.sample(batch_size, self.sac.generator)
        n_real = round(batch_size * self.config.real_ratio)
        n_model = batch_size - n_real
        if n_real == 0:
            return model.sample(n_model, self.sac.generator)
        if n_model == 0:
            return replay.sample(n_real, self.sac.generator)
        return _concat(
            replay.sample(n_real, self.sac.generator), model.sample(n_model, self.sac.generator)
        )

    # ----------------------------------------------------------------------------- learning

    def learn(
        self,
        env: gym.Env,
        total_timesteps: int,
        callback: StepCallback | None = None,
        writer: ScalarWriter | None = None,
    ) -> None:
        """Run the MBPO loop until ``num_timesteps`` reaches ``total_timesteps``.

        The env is reset with ``seed + num_timesteps`` (so resumed runs are reproducible);
        ``callback(num_timesteps)`` runs after every env step and returning False stops.
        """
        self.sac.check_env(env)
        cfg = self.config
        if self.sac.replay is None:
            self.sac.replay = self.sac.make_replay()
        replay = self.sac.replay
        if self.n_auxiliary and self.auxiliary_fn is None:
            raise ConfigError("mbpo: the dynamics needs auxiliary inputs but has no auxiliary_fn")
        if self.n_auxiliary and self.auxiliary is None:
            self.auxiliary = np.zeros((replay.capacity, self.n_auxiliary), dtype=np.float32)
        gamma = np.float32(self.sac.config.gamma)
        obs, _ = env.reset(seed=cfg.seed + self.num_timesteps)
        flat_obs = self.flattener.flatten(obs)[0]
        episode_return, episode_length = 0.0, 0
        start_time, start_steps = time.perf_counter(), self.num_timesteps

        while self.num_timesteps < total_timesteps:
            if self.num_timesteps < cfg.learning_starts or self.model_fits == 0:
                unit_action = self.np_random.uniform(-1.0, 1.0, (1, self.action_dim))
            else:
                unit_action = self.sac.policy_unit_action(flat_obs, deterministic=False)
            if self.n_auxiliary:  # read before the step: the transition's market inputs
                assert self.auxiliary is not None and self.auxiliary_fn is not None
                self.auxiliary[replay.pos] = self.auxiliary_fn(env)
            next_obs, reward, terminated, truncated, _ = env.step(
                self.sac.scale_action(unit_action)[0]
            )
            flat_next = self.flattener.flatten(next_obs)[0]
            replay.add(flat_obs, unit_action, reward, flat_next, 0.0 if terminated else gamma)
            self.num_timesteps += 1
            self.sac.num_timesteps = self.num_timesteps
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

            since_start = self.num_timesteps - cfg.learning_starts
            if since_start >= 0 and since_start % cfg.model_train_freq == 0 and replay.size >= 2:
                self.train_model()
                self.rollout_model()
            if self.model_fits:
                for _ in range(cfg.updates_per_step):
                    self.sac.update(self._mixed_batch())

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
        for name, value in self.sac.train_stats().items():
            writer.add_scalar(f"train/{name}", value, step)

    # ----------------------------------------------------------------------------- persistence

    def _header(self, kind: str) -> dict[str, Any]:
        header = {
            "format": kind,
            "version": _FORMAT_VERSION,
            "config": asdict(self.config),
            "observation_space": space_to_dict(self.observation_space),
            "action_space": space_to_dict(self.action_space),
        }
        # A trading-aware model's accounting is code plus plain parameters: store the
        # parameters so ``load`` can rebuild the model without the env.
        spec = getattr(getattr(self.dynamics, "known_dynamics", None), "spec", None)
        if spec is not None and hasattr(spec, "to_dict"):
            header["market_accounting"] = spec.to_dict()
        return header

    def save(self, path: str | Path) -> None:
        """Write what acting needs: config, spaces, SAC's actor and the model (atomic, no code)."""
        state = self._header(_POLICY_FORMAT)
        state["actor"] = self.sac.actor.state_dict()
        state["dynamics"] = self.dynamics.state_dict()
        atomic_torch_save(state, path)

    @classmethod
    def load(
        cls, path: str | Path, device: str = "auto", dynamics: DynamicsModel | None = None
    ) -> MBPO:
        """Rebuild an agent from ``save`` (or ``save_checkpoint``) output.

        Args:
            path: the file.
            device: where to put the networks.
            dynamics: the same kind of custom model the agent was trained with, if any (its
                known accounting function is code, so it is not stored in the file). Not
                needed for ``trading_aware`` agents: their accounting parameters are stored and
                the model is rebuilt from them.
        """
        state = safe_torch_load(path, "cpu")
        formats = (_POLICY_FORMAT, _CHECKPOINT_FORMAT)
        if not isinstance(state, dict) or state.get("format") not in formats:
            got = state.get("format") if isinstance(state, dict) else type(state).__name__
            raise CheckpointError(f"checkpoint {path}: format {got!r}, expected one of {formats}")
        config = MBPOConfig.from_dict({**state["config"], "device": device})
        if dynamics is None and config.trading_aware and "market_accounting" in state:
            from envs.market_accounting import MarketAccountingSpec
            from world_models.trading import market_dynamics_from_spec

            spec = MarketAccountingSpec.from_dict(state["market_accounting"])
            action_dim = int(np.prod(space_from_dict(state["action_space"]).shape))
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(config.seed + 1)
                dynamics = market_dynamics_from_spec(
                    spec, action_dim, config.ensemble_config(), config.train_config()
                )
        agent = cls(
            space_from_dict(state["observation_space"]),
            space_from_dict(state["action_space"]),
            config,
            dynamics,
        )
        if state["format"] == _POLICY_FORMAT:
            agent.sac.actor.load_state_dict(state["actor"])
            agent.dynamics.load_state_dict(state["dynamics"])
        else:
            agent.load_checkpoint(path)
        return agent

    def save_checkpoint(self, path: str | Path, include_buffer: bool = False) -> None:
        """Write the whole training state atomically.

        Stored: config, spaces, SAC's full checkpoint (networks, optimisers, counters, RNG, and
        with ``include_buffer`` the real replay), the dynamics' weights, normalisers, elites and
        optimiser, the model-fit count, episode statistics, the agent's generator and NumPy RNG
        states, and (with ``include_buffer``) the model buffer and the auxiliary inputs of the
        real transitions (trading-aware models).
        """
        with tempfile.TemporaryDirectory() as tmp:
            sac_path = Path(tmp) / "sac.pt"
            self.sac.save_checkpoint(sac_path, include_buffer=include_buffer)
            sac_state = safe_torch_load(sac_path, "cpu")
        state = self._header(_CHECKPOINT_FORMAT)
        state.update(
            sac=sac_state,
            dynamics=self.dynamics.state_dict(),
            dynamics_extra=self.dynamics.extra_state(),
            model_fits=int(self.model_fits),
            num_timesteps=int(self.num_timesteps),
            episode_returns=[float(r) for r in self.episode_returns],
            episode_lengths=[int(n) for n in self.episode_lengths],
            torch_rng=self.generator.get_state(),
            numpy_rng=self.np_random.bit_generator.state,
            model_buffer=(
                self.model_buffer.state_dict()
                if include_buffer and self.model_buffer is not None
                else None
            ),
            auxiliary=(
                torch.from_numpy(self.auxiliary.copy())
                if include_buffer and self.auxiliary is not None
                else None
            ),
        )
        atomic_torch_save(state, path)

    def load_checkpoint(self, path: str | Path) -> None:
        """Restore a ``save_checkpoint`` file into this agent (spaces and shapes must match).

        Raises:
            CheckpointError: wrong file kind, or spaces that do not match.
        """
        state = load_training_checkpoint(
            path,
            "cpu",
            _CHECKPOINT_FORMAT,
            "an MBPO",
            {
                "observation_space": space_to_dict(self.observation_space),
                "action_space": space_to_dict(self.action_space),
            },
        )
        with tempfile.TemporaryDirectory() as tmp:
            sac_path = Path(tmp) / "sac.pt"
            atomic_torch_save(state["sac"], sac_path)
            self.sac.load_checkpoint(sac_path)
        try:
            self.dynamics.load_state_dict(state["dynamics"])
        except RuntimeError as exc:
            raise CheckpointError(
                f"checkpoint {path}: dynamics model does not fit ({exc})"
            ) from exc
        self.dynamics.load_extra_state(state["dynamics_extra"])
        self.model_fits = int(state["model_fits"])
        self.num_timesteps = int(state["num_timesteps"])
        self.episode_returns = deque(state["episode_returns"], maxlen=100)
        self.episode_lengths = deque(state["episode_lengths"], maxlen=100)
        self.generator.set_state(state["torch_rng"].cpu())
        self.np_random.bit_generator.state = state["numpy_rng"]
        if state.get("auxiliary") is not None:
            self.auxiliary = state["auxiliary"].numpy().copy()
        if state.get("model_buffer") is not None:
            mb = state["model_buffer"]
            self.model_buffer = None
            buffer = ReplayBuffer(
                self.observation_space, self.action_space, int(mb["capacity"]), self.device
            )
            buffer.load_state_dict(mb)
            self.model_buffer = buffer
