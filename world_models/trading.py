"""Trading-aware dynamics: learn the market, compute the accounting exactly.

In a trading env the observation splits into exogenous market data (prices, features, predictor
blocks: a price-taking agent does not move them) and the agent's own state (position, cash, PnL),
which follows known accounting from the action and the next market state. Learning that
accounting with a neural network wastes data and adds model error to exactly the part the env
already knows, so :class:`TradingAwareDynamics` learns only ``exogenous -> next exogenous`` with a
probabilistic ensemble and hands ``(obs, action, next_exogenous)`` to a known function that
returns the full next observation and the reward.

This is generic: :class:`StateSplit` says which flat columns are exogenous (for
``MarketTrading-v0`` with ``flatten=True`` build it with :meth:`StateSplit.from_blocks` from
``env.unwrapped.setup.builder.flat_slices`` and ``exogenous_blocks=("market",)``), and the
accounting is any callable (``KnownDynamics``) written with torch operations that broadcast over
leading axes.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from envs.errors import ConfigError
from world_models.dynamics import check_transitions, sample_gaussian
from world_models.ensemble import EnsembleConfig, GaussianEnsemble
from world_models.training import EnsembleTrainConfig, FitResult, make_optimizer, train_ensemble

__all__ = ["KnownDynamics", "StateSplit", "TradingAwareDynamics"]

# (obs (..., obs_dim), action (..., action_dim), next_exogenous (..., n_exogenous))
#   -> (next_obs (..., obs_dim), reward (...)); torch ops broadcasting over leading axes.
KnownDynamics = Callable[
    [torch.Tensor, torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]
]


@dataclass(frozen=True)
class StateSplit:
    """Which flat observation columns are exogenous (learned) and which are the agent's own.

    Args:
        obs_dim: flat observation width.
        exogenous: column indices of the exogenous (market) part, strictly increasing.

    Raises:
        ConfigError: for out-of-range, repeated or empty index lists.
    """

    obs_dim: int
    exogenous: tuple[int, ...]

    def __post_init__(self) -> None:
        idx = tuple(int(i) for i in self.exogenous)
        object.__setattr__(self, "exogenous", idx)
        if not idx:
            raise ConfigError("state split: exogenous is empty; expected at least one column")
        if any(b <= a for a, b in itertools.pairwise(idx)):
            raise ConfigError(
                f"state split: exogenous indices must be strictly increasing, got {idx}"
            )
        if idx[0] < 0 or idx[-1] >= self.obs_dim:
            raise ConfigError(
                f"state split: exogenous indices must lie in [0, {self.obs_dim}), got {idx}"
            )

    @property
    def endogenous(self) -> tuple[int, ...]:
        """The agent's own columns (everything not exogenous)."""
        exo = set(self.exogenous)
        return tuple(i for i in range(self.obs_dim) if i not in exo)

    @classmethod
    def from_blocks(
        cls, flat_slices: Mapping[str, slice], exogenous_blocks: Sequence[str]
    ) -> StateSplit:
        """Build from named blocks of a flat observation (e.g. ``builder.flat_slices``).

        Args:
            flat_slices: block name -> slice of the flat vector; together they cover it.
            exogenous_blocks: names of the exogenous blocks (e.g. ``("market",)``).

        Raises:
            ConfigError: when a named block does not exist.
        """
        missing = [b for b in exogenous_blocks if b not in flat_slices]
        if missing:
            raise ConfigError(
                f"state split: blocks {missing} not in the observation; have {list(flat_slices)}"
            )
        obs_dim = max(s.stop for s in flat_slices.values())
        cols = sorted(i for b in exogenous_blocks for i in range(*flat_slices[b].indices(obs_dim)))
        return cls(obs_dim=obs_dim, exogenous=tuple(cols))


class TradingAwareDynamics(nn.Module):
    """Learned exogenous dynamics plus exact known accounting.

    The ensemble maps the exogenous columns (and the action, if ``exogenous_uses_action``, for
    markets the agent moves) to the change of the exogenous columns; ``known_dynamics`` then
    computes the full next observation and the reward. It has the interface of
    :class:`~world_models.dynamics.EnsembleDynamics`, so it plugs into ``ModelEnv``, MBPO and PETS.

    Args:
        split: which columns are exogenous.
        known_dynamics: the accounting, ``(obs, action, next_exogenous) -> (next_obs, reward)``.
        action_dim: action width.
        config: ensemble shape.
        train_config: optimisation settings.
        exogenous_uses_action: feed the action to the market model too (default: price taker).
    """

    def __init__(
        self,
        split: StateSplit,
        known_dynamics: KnownDynamics,
        action_dim: int,
        config: EnsembleConfig | None = None,
        train_config: EnsembleTrainConfig | None = None,
        exogenous_uses_action: bool = False,
    ) -> None:
        super().__init__()
        self.split = split
        self.known_dynamics = known_dynamics
        self.obs_dim, self.action_dim = split.obs_dim, int(action_dim)
        self.exogenous_uses_action = bool(exogenous_uses_action)
        self.register_buffer("exogenous_index", torch.tensor(split.exogenous, dtype=torch.long))
        n_exo = len(split.exogenous)
        in_dim = n_exo + (self.action_dim if self.exogenous_uses_action else 0)
        self.train_config = train_config if train_config is not None else EnsembleTrainConfig()
        self.ensemble = GaussianEnsemble(in_dim, n_exo, config)
        self.optimizer = make_optimizer(self.ensemble, self.train_config)
        self.last_fit: FitResult | None = None

    @property
    def num_elites(self) -> int:
        """Members used for predictions."""
        return self.ensemble.num_elites

    def _inputs(self, exo: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        return torch.cat([exo, actions], dim=-1) if self.exogenous_uses_action else exo

    def fit(
        self,
        obs: torch.Tensor,
        actions: torch.Tensor,
        rewards: torch.Tensor,
        next_obs: torch.Tensor,
        generator: torch.Generator | None = None,
    ) -> FitResult:
        """Train the market model on real transitions (rewards are not learned: they are known)."""
        check_transitions(obs, actions, rewards, next_obs, self.obs_dim, self.action_dim)
        exo = obs.index_select(-1, self.exogenous_index)
        next_exo = next_obs.index_select(-1, self.exogenous_index)
        self.last_fit = train_ensemble(
            self.ensemble,
            self._inputs(exo, actions),
            next_exo - exo,
            self.train_config,
            self.optimizer,
            generator,
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
        """Same contract as :meth:`EnsembleDynamics.step` (grouped or shared rows)."""
        exo = obs.index_select(-1, self.exogenous_index)
        mean, logvar = self.ensemble.predict(
            self._inputs(exo, actions), self.ensemble.elite_indices
        )
        next_exo = exo + sample_gaussian(mean, logvar, sample, generator)
        if obs.dim() == 2:  # shared rows: the model's output has a leading elite axis
            lead = next_exo.shape[:-1]
            obs = obs.expand(*lead, obs.shape[-1])
            actions = actions.expand(*lead, actions.shape[-1])
        next_obs, reward = self.known_dynamics(obs, actions, next_exo)
        return next_obs, reward

    def extra_state(self) -> dict[str, Any]:
        """Optimizer state for checkpoints (weights are in ``state_dict``)."""
        return {"optimizer": self.optimizer.state_dict()}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`extra_state` returned."""
        self.optimizer.load_state_dict(state["optimizer"])
