"""An imagined-rollout environment over a learned dynamics model, with trajectory sampling.

Propagation modes (PETS, Chua et al. 2018, section 5 "trajectory sampling"):

* ``"ts1"``: every step, each row (particle) is sent through a uniformly re-drawn elite
  (a fresh random partition of the rows among the elites each step);
* ``"tsinf"``: each row keeps the elite it was given at :meth:`ModelEnv.reset` for the whole
  rollout (separates aleatoric from epistemic uncertainty);
* ``"expectation"``: every row goes through every elite and the elites' mean predictions are
  averaged (no sampling; a deterministic moment-matching shortcut).

Rows are partitioned into ``E`` equal blocks (padding by repeating rows when ``N`` is not a
multiple of ``E``), so one batched forward through the ensemble serves all elites.
Terminated rows stay terminated: their rewards are zero from then on.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from envs.errors import ConfigError, DataError
from world_models.dynamics import DynamicsModel

__all__ = ["PROPAGATIONS", "ModelEnv", "TerminationFn"]

PROPAGATIONS = ("ts1", "tsinf", "expectation")

# (obs, action, next_obs) -> bool tensor of terminated rows; None means nothing terminates.
TerminationFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


class ModelEnv:
    """Batched imagined env: ``reset(obs)``, then ``step(actions)`` on every row at once.

    Args:
        model: a learned dynamics model (``EnsembleDynamics`` or ``TradingAwareDynamics``).
        propagation: ``"ts1"``, ``"tsinf"`` or ``"expectation"``.
        termination_fn: optional known termination rule.
        sample: draw from the members' Gaussians (aleatoric noise); ignored by ``expectation``.
        generator: torch generator for partitions and noise.

    Raises:
        ConfigError: for an unknown propagation mode.
    """

    def __init__(
        self,
        model: DynamicsModel,
        propagation: str = "ts1",
        termination_fn: TerminationFn | None = None,
        sample: bool = True,
        generator: torch.Generator | None = None,
    ) -> None:
        if propagation not in PROPAGATIONS:
            raise ConfigError(
                f"model env propagation: expected one of {list(PROPAGATIONS)}, got {propagation!r}"
            )
        self.model = model
        self.propagation = propagation
        self.termination_fn = termination_fn
        self.sample = sample
        self.generator = generator
        self._obs: torch.Tensor | None = None
        self._done: torch.Tensor | None = None
        self._order: torch.Tensor | None = None

    def _partition(self, n: int, device: torch.device) -> torch.Tensor:
        """A random order of ``n`` rows padded to a multiple of the elite count."""
        gen_device = self.generator.device if self.generator is not None else torch.device("cpu")
        order = torch.randperm(n, generator=self.generator, device=gen_device).to(device)
        pad = (-n) % self.model.num_elites
        if pad:
            order = torch.cat([order, order[:pad]])
        return order

    def reset(self, obs: torch.Tensor) -> torch.Tensor:
        """Start rollouts from ``obs`` shaped ``(N, obs_dim)``; returns a copy of it."""
        if obs.dim() != 2 or obs.shape[1] != self.model.obs_dim:
            raise DataError(
                f"model env reset: obs shape {tuple(obs.shape)}, expected (N, {self.model.obs_dim})"
            )
        self._obs = obs.clone()
        self._done = torch.zeros(obs.shape[0], dtype=torch.bool, device=obs.device)
        self._order = (
            self._partition(obs.shape[0], obs.device) if self.propagation == "tsinf" else None
        )
        return self._obs.clone()

    def _predict(
        self, obs: torch.Tensor, actions: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        n = obs.shape[0]
        if self.propagation == "expectation":
            next_obs, reward = self.model.step(obs, actions, sample=False, generator=self.generator)
            return next_obs.mean(dim=0), reward.mean(dim=0)
        order = self._order if self.propagation == "tsinf" else self._partition(n, obs.device)
        assert order is not None
        e = self.model.num_elites
        grouped_obs = obs[order].view(e, -1, obs.shape[-1])
        grouped_act = actions[order].view(e, -1, actions.shape[-1])
        next_g, reward_g = self.model.step(grouped_obs, grouped_act, self.sample, self.generator)
        next_obs = torch.empty_like(obs)
        reward = torch.empty(n, dtype=obs.dtype, device=obs.device)
        # Padded rows are duplicates at the end of ``order``: writing the first n suffices.
        next_obs[order[:n]] = next_g.reshape(-1, obs.shape[-1])[:n]
        reward[order[:n]] = reward_g.reshape(-1)[:n]
        return next_obs, reward

    @torch.no_grad()
    def step(self, actions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Advance every row by one imagined step.

        Args:
            actions: ``(N, action_dim)`` in the model's action units.

        Returns:
            ``(next_obs, reward, terminated)``: rewards of rows terminated earlier are zero.
        """
        if self._obs is None or self._done is None:
            raise DataError("model env step: call reset(obs) first")
        obs = self._obs
        if actions.shape != (obs.shape[0], self.model.action_dim):
            raise DataError(
                f"model env step: actions shape {tuple(actions.shape)}, expected "
                f"({obs.shape[0]}, {self.model.action_dim})"
            )
        next_obs, reward = self._predict(obs, actions)
        reward = torch.where(self._done, torch.zeros_like(reward), reward)
        if self.termination_fn is not None:
            terminated = self.termination_fn(obs, actions, next_obs).reshape(-1).to(torch.bool)
        else:
            terminated = torch.zeros_like(self._done)
        self._done = self._done | terminated
        self._obs = next_obs
        return next_obs, reward, terminated

    @torch.no_grad()
    def evaluate_action_sequences(
        self, initial_obs: torch.Tensor, action_sequences: torch.Tensor, particles: int = 1
    ) -> torch.Tensor:
        """Mean undiscounted return of each action sequence from one start state.

        Args:
            initial_obs: ``(obs_dim,)`` the state to plan from.
            action_sequences: ``(P, H, action_dim)`` candidate plans.
            particles: rollouts per plan (averaged); rows of one plan are spread over elites.

        Returns:
            ``(P,)`` mean return over particles.
        """
        p, horizon, _ = action_sequences.shape
        obs = initial_obs.reshape(1, -1).expand(p * particles, -1)
        actions = action_sequences.repeat_interleave(particles, dim=0)  # (P * particles, H, A)
        self.reset(obs)
        total = torch.zeros(p * particles, device=obs.device, dtype=obs.dtype)
        for t in range(horizon):
            _, reward, _ = self.step(actions[:, t])
            total += reward
        return total.view(p, particles).mean(dim=1)
