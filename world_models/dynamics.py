"""Learned transition models ``(obs, action) -> (next_obs, reward)`` over a Gaussian ensemble.

:class:`EnsembleDynamics` is the generic model of PETS and MBPO: the ensemble's input is
``[obs, action]`` and its targets are ``[next_obs - obs, reward]`` (predicting the state delta,
Chua et al. 2018 section 4.3 / Deisenroth & Rasmussen 2011). The trading-aware variant lives in
``world_models/trading.py`` and has the same interface (``fit``, ``step``, ``num_elites``), which
is all :class:`~world_models.model_env.ModelEnv` and the agents use.

``step`` takes either grouped inputs ``(E, M, d)`` (row block ``e`` goes through elite ``e``:
the layout trajectory sampling uses, one batched matmul for all elites) or shared inputs
``(N, d)`` (every elite sees every row; output ``(E, N, ...)``).
"""

from __future__ import annotations

from typing import Any, Protocol

import torch
from torch import nn

from envs.errors import DataError
from world_models.ensemble import EnsembleConfig, GaussianEnsemble
from world_models.training import EnsembleTrainConfig, FitResult, make_optimizer, train_ensemble

__all__ = ["DynamicsModel", "EnsembleDynamics", "sample_gaussian"]


class DynamicsModel(Protocol):
    """What model environments and model-based agents need from a learned dynamics model."""

    obs_dim: int
    action_dim: int
    ensemble: GaussianEnsemble

    @property
    def num_elites(self) -> int:
        """Members used for predictions."""

    def fit(
        self,
        obs: torch.Tensor,
        actions: torch.Tensor,
        rewards: torch.Tensor,
        next_obs: torch.Tensor,
        generator: torch.Generator | None = None,
    ) -> FitResult:
        """Train on real transitions."""

    def step(
        self,
        obs: torch.Tensor,
        actions: torch.Tensor,
        sample: bool = True,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Predict ``(next_obs, reward)`` for grouped ``(E, M, d)`` or shared ``(N, d)`` rows."""


def sample_gaussian(
    mean: torch.Tensor,
    logvar: torch.Tensor,
    sample: bool,
    generator: torch.Generator | None,
) -> torch.Tensor:
    """``mean + exp(logvar / 2) * eps`` when sampling, else ``mean``."""
    if not sample:
        return mean
    noise = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
    return mean + torch.exp(0.5 * logvar) * noise


def check_transitions(
    obs: torch.Tensor,
    actions: torch.Tensor,
    rewards: torch.Tensor,
    next_obs: torch.Tensor,
    obs_dim: int,
    action_dim: int,
) -> None:
    """Raise ``DataError`` naming the array whose shape does not fit ``(n, ...)``."""
    n = obs.shape[0]
    expected = {
        "obs": (obs, (n, obs_dim)),
        "actions": (actions, (n, action_dim)),
        "rewards": (rewards, (n,)),
        "next_obs": (next_obs, (n, obs_dim)),
    }
    for name, (t, shape) in expected.items():
        if tuple(t.shape) != shape:
            raise DataError(f"dynamics fit: {name} has shape {tuple(t.shape)}, expected {shape}")


class EnsembleDynamics(nn.Module):
    """``[obs, action] -> [next_obs - obs, reward]`` as a probabilistic ensemble.

    Args:
        obs_dim: flat observation width.
        action_dim: action width (agents pass actions in ``[-1, 1]``).
        config: ensemble shape.
        train_config: optimisation settings used by :meth:`fit`.
    """

    def __init__(
        self,
        obs_dim: int,
        action_dim: int,
        config: EnsembleConfig | None = None,
        train_config: EnsembleTrainConfig | None = None,
    ) -> None:
        super().__init__()
        self.obs_dim, self.action_dim = int(obs_dim), int(action_dim)
        self.train_config = train_config if train_config is not None else EnsembleTrainConfig()
        self.ensemble = GaussianEnsemble(obs_dim + action_dim, obs_dim + 1, config)
        self.optimizer = make_optimizer(self.ensemble, self.train_config)
        self.last_fit: FitResult | None = None

    @property
    def num_elites(self) -> int:
        """Members used for predictions."""
        return self.ensemble.num_elites

    def fit(
        self,
        obs: torch.Tensor,
        actions: torch.Tensor,
        rewards: torch.Tensor,
        next_obs: torch.Tensor,
        generator: torch.Generator | None = None,
    ) -> FitResult:
        """Train on real transitions: obs, actions, rewards ``(n,)`` and next_obs, row-aligned."""
        check_transitions(obs, actions, rewards, next_obs, self.obs_dim, self.action_dim)
        inputs = torch.cat([obs, actions], dim=-1)
        targets = torch.cat([next_obs - obs, rewards.unsqueeze(-1)], dim=-1)
        self.last_fit = train_ensemble(
            self.ensemble, inputs, targets, self.train_config, self.optimizer, generator
        )
        return self.last_fit

    @torch.no_grad()
    def step(
        self,
        obs: torch.Tensor,
        actions: torch.Tensor,
        sample: bool = True,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Predict the next observation and reward through the elites.

        Args:
            obs: ``(E, M, obs_dim)`` grouped (block ``e`` through elite ``e``) or ``(N, obs_dim)``.
            actions: matching ``(E, M, action_dim)`` or ``(N, action_dim)``.
            sample: draw from each member's Gaussian (aleatoric noise) instead of its mean.
            generator: torch generator for the noise.

        Returns:
            ``(next_obs, reward)``: ``(E, M, obs_dim)`` and ``(E, M)``; for shared inputs
            ``(E, N, obs_dim)`` and ``(E, N)``.
        """
        x = torch.cat([obs, actions], dim=-1)
        mean, logvar = self.ensemble.predict(x, self.ensemble.elite_indices)
        out = sample_gaussian(mean, logvar, sample, generator)
        next_obs = obs + out[..., : self.obs_dim]  # broadcasts (N, d) over (E, N, d)
        return next_obs, out[..., self.obs_dim]

    def extra_state(self) -> dict[str, Any]:
        """Optimizer state for checkpoints (weights are in ``state_dict``)."""
        return {"optimizer": self.optimizer.state_dict()}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`extra_state` returned."""
        self.optimizer.load_state_dict(state["optimizer"])
