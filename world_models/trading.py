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

Some inputs of the accounting are market quantities the observation does not hold (for
``MarketTrading-v0``: the next open, the exact next close return and the impact scale, see
``envs/market_accounting.py``). They are *auxiliary* targets: with ``n_auxiliary > 0`` the
ensemble predicts them too (as values, not deltas), ``fit`` takes them per transition, and the
known dynamics receives ``[next exogenous columns, auxiliary]``. :class:`MarketAccounting` is the
known dynamics of ``MarketTrading-v0`` and :func:`market_trading_dynamics` builds the whole
model from an env.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from envs.errors import ConfigError, DataError
from envs.market_accounting import MarketAccountingSpec, accounting_spec, auxiliary_inputs
from world_models.dynamics import check_transitions, sample_gaussian
from world_models.ensemble import EnsembleConfig, GaussianEnsemble
from world_models.training import EnsembleTrainConfig, FitResult, make_optimizer, train_ensemble

__all__ = [
    "KnownDynamics",
    "MarketAccounting",
    "StateSplit",
    "TradingAwareDynamics",
    "market_dynamics_from_spec",
    "market_trading_dynamics",
]

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
        n_auxiliary: extra market quantities the accounting needs that the observation lacks;
            the ensemble predicts them after the exogenous deltas and ``fit`` needs them.
        auxiliary_fn: ``env -> (n_auxiliary,)`` array of the auxiliary inputs of the step the
            env makes next (MBPO stores them with each real transition).
    """

    def __init__(
        self,
        split: StateSplit,
        known_dynamics: KnownDynamics,
        action_dim: int,
        config: EnsembleConfig | None = None,
        train_config: EnsembleTrainConfig | None = None,
        exogenous_uses_action: bool = False,
        n_auxiliary: int = 0,
        auxiliary_fn: Callable[[Any], Any] | None = None,
    ) -> None:
        super().__init__()
        if n_auxiliary < 0:
            raise ConfigError(
                f"trading-aware dynamics: n_auxiliary must be >= 0, got {n_auxiliary}"
            )
        self.n_auxiliary = int(n_auxiliary)
        self.auxiliary_fn = auxiliary_fn
        self.split = split
        self.known_dynamics = known_dynamics
        self.obs_dim, self.action_dim = split.obs_dim, int(action_dim)
        self.exogenous_uses_action = bool(exogenous_uses_action)
        self.register_buffer("exogenous_index", torch.tensor(split.exogenous, dtype=torch.long))
        n_exo = len(split.exogenous)
        in_dim = n_exo + (self.action_dim if self.exogenous_uses_action else 0)
        self.train_config = train_config if train_config is not None else EnsembleTrainConfig()
        self.ensemble = GaussianEnsemble(in_dim, n_exo + self.n_auxiliary, config)
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
        auxiliary: torch.Tensor | None = None,
    ) -> FitResult:
        """Train the market model on real transitions (rewards are not learned: they are known).

        Args:
            obs, actions, rewards, next_obs: row-aligned real transitions.
            generator: torch generator for bootstrap and batching.
            auxiliary: ``(n, n_auxiliary)`` auxiliary targets of each transition (required
                when ``n_auxiliary > 0``).

        Raises:
            DataError: shapes that do not fit, or auxiliary targets missing.
        """
        check_transitions(obs, actions, rewards, next_obs, self.obs_dim, self.action_dim)
        exo = obs.index_select(-1, self.exogenous_index)
        next_exo = next_obs.index_select(-1, self.exogenous_index)
        targets = next_exo - exo
        if self.n_auxiliary:
            expected = (obs.shape[0], self.n_auxiliary)
            if auxiliary is None or tuple(auxiliary.shape) != expected:
                got = None if auxiliary is None else tuple(auxiliary.shape)
                raise DataError(
                    f"trading-aware dynamics fit: auxiliary has shape {got}, expected {expected}"
                )
            targets = torch.cat([targets, auxiliary.to(targets)], dim=-1)
        self.last_fit = train_ensemble(
            self.ensemble,
            self._inputs(exo, actions),
            targets,
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
        out = sample_gaussian(mean, logvar, sample, generator)
        n_exo = exo.shape[-1]
        # Exogenous columns are deltas; auxiliary inputs (if any) are values, appended.
        next_exo = torch.cat([exo + out[..., :n_exo], out[..., n_exo:]], dim=-1)
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


class MarketAccounting:
    """The known accounting of single-asset ``MarketTrading-v0`` as a torch ``KnownDynamics``.

    Given a flat observation, a unit action in ``[-1, 1]`` (as SAC/MBPO/PETS act) and
    ``next_exogenous = [next exogenous columns, gap_log_return, close_log_return,
    impact_scale]`` (``envs.market_accounting.AUXILIARY_COLUMNS``), it returns the next flat
    observation and the reward, restating ``envs.market_core.step_core`` (sizing and costs from
    ``envs.execution``) in units of the current book value and the current close: the portfolio
    block is relative, so ``units = exposure`` and ``cash = cash / value`` describe the book.
    Arithmetic runs in float64 and the result is cast back to the input dtype.

    The env's ``SAC.scale_action`` float32 rounding of the action is reproduced, so given the
    true next exogenous columns and auxiliary inputs, the next portfolio block and reward equal
    the env's to float32 precision (``tests/test_world_model_trading.py``). Ruin (value <= 0)
    is not flagged here: termination is the model env's ``termination_fn``.

    Args:
        spec: from ``envs.market_accounting.accounting_spec(env)``.
    """

    def __init__(self, spec: MarketAccountingSpec) -> None:
        self.spec = spec
        self.n_exogenous = len(spec.exogenous)
        self._exo_index = torch.tensor(spec.exogenous, dtype=torch.long)

    def __call__(
        self, obs: torch.Tensor, actions: torch.Tensor, next_exogenous: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Next flat observation and reward for ``(..., D)`` obs and ``(..., 1)`` unit actions."""
        spec = self.spec
        n_exo = self.n_exogenous
        if next_exogenous.shape[-1] != n_exo + spec.n_auxiliary:
            raise DataError(
                f"market accounting: next_exogenous has {next_exogenous.shape[-1]} columns, "
                f"expected {n_exo} exogenous + {spec.n_auxiliary} auxiliary"
            )
        f64 = torch.float64
        port = obs[..., spec.portfolio].to(f64)
        exposure, cash = port[..., 0], port[..., 1]
        upnl, time_frac = port[..., 2], port[..., 3]
        aux = next_exogenous[..., n_exo:].to(f64)
        price = torch.exp(aux[..., 0])  # next open / close_t
        close = torch.exp(aux[..., 1])  # next close / close_t
        # A sampled prediction may dip below 0; the true scale never does (a negative cost
        # would pay the agent for trading).
        impact_scale = torch.clamp(aux[..., 2], min=0.0)

        # Action mapping: SAC.scale_action (to the Box, float32), then continuous_to_target.
        low = spec.action_low
        unit = actions[..., 0].to(f64)
        env_action = torch.clamp(low + (unit + 1.0) * (0.5 * (1.0 - low)), low, 1.0)
        env_action = env_action.to(torch.float32).to(f64)
        target = torch.clamp(env_action, low, 1.0) * spec.max_leverage

        # size_orders at the open (value before the fill = cash + units * open).
        units = exposure
        value_open = cash + units * price
        tradable = value_open > 0
        value_col = torch.clamp(value_open, min=0.0)
        q = target * value_col / price - units
        keep = tradable.clone()
        if spec.rebalance_band > 0:
            safe = torch.where(value_col > 0, value_col, torch.ones_like(value_col))
            keep &= torch.abs(target - units * price / safe) >= spec.rebalance_band
        closing = tradable & (target == 0.0)
        q = torch.where(closing, -units, torch.where(keep, q, torch.zeros_like(q)))

        # order_costs: fee + half-spread + square-root impact (Almgren et al. 2005).
        size = torch.abs(q)
        notional = size * price
        impact = impact_scale * torch.sqrt(size) * notional
        trade_cost = (spec.taker_fee + spec.half_spread) * notional + impact
        new_cash = cash - q * price - trade_cost
        new_units = units + q

        # Average entry price (relative to close_t), as step_core.
        entry = torch.where(
            units != 0, 1.0 - upnl / torch.where(units != 0, units, 1.0), torch.zeros_like(units)
        )
        old_sign, new_sign = torch.sign(units), torch.sign(new_units)
        same_sign = new_sign == old_sign
        flat = new_sign == 0
        adding = (torch.abs(new_units) > torch.abs(units)) & same_sign
        averaged = (units * entry + q * price) / torch.where(
            flat, torch.ones_like(new_units), new_units
        )
        new_entry = torch.where(adding, averaged, entry)
        new_entry = torch.where(same_sign, new_entry, price)
        new_entry = torch.where(flat, torch.zeros_like(new_entry), new_entry)

        # holding_cost on the book after the fill, marked at the next close; value, reward.
        funding = (
            spec.borrow_rate * torch.clamp(-new_units, min=0.0) * close
            + spec.margin_rate * torch.clamp(-new_cash, min=0.0)
        ) / spec.bars_per_year
        new_cash = new_cash - funding
        value = new_cash + new_units * close
        log_return = torch.log(torch.clamp(value, min=1e-8))  # previous value is 1
        if spec.reward == "log_return":
            reward = log_return
        elif spec.reward == "sortino":
            reward = log_return - spec.reward_coef * torch.clamp(-log_return, min=0.0)
        elif spec.reward == "turnover":
            reward = log_return - spec.reward_coef * notional
        else:  # excess_buy_and_hold: one asset, the benchmark is its own close-to-close return
            reward = log_return - aux[..., 1]

        # portfolio_block at the next bar (relative to the new value), clipped.
        safe_value = torch.where(torch.abs(value) > 1e-12, value, torch.full_like(value, 1e-12))
        window = float(spec.window)
        # time_in_trade is an integer n stored as n / (n + window): invert and round.
        bars = torch.round(window * time_frac / (1.0 - time_frac))
        new_bars = torch.where(same_sign, bars + 1.0, torch.ones_like(bars)) * (~flat).to(f64)
        block = torch.stack(
            [
                new_units * close / safe_value,
                new_cash / safe_value,
                new_units * (close - new_entry) / safe_value,
                new_bars / (new_bars + window),
                target,
            ],
            dim=-1,
        ).clamp(-spec.portfolio_clip, spec.portfolio_clip)

        next_obs = obs.clone()
        index = self._exo_index.to(obs.device)
        next_obs[..., index] = next_exogenous[..., :n_exo].to(obs.dtype)
        next_obs[..., spec.portfolio] = block.to(obs.dtype)
        return next_obs, reward.to(obs.dtype)


def market_trading_dynamics(
    env: Any,
    config: EnsembleConfig | None = None,
    train_config: EnsembleTrainConfig | None = None,
) -> TradingAwareDynamics:
    """A :class:`TradingAwareDynamics` for a single-asset ``MarketTrading-v0`` env.

    The ensemble learns the market window and predictor blocks (and the three auxiliary inputs);
    :class:`MarketAccounting` computes the portfolio block and the reward.

    Raises:
        ConfigError: for env settings the accounting does not support (see
            ``envs.market_accounting``).
    """
    action_dim = int(math.prod(env.action_space.shape))
    return market_dynamics_from_spec(accounting_spec(env), action_dim, config, train_config)


def market_dynamics_from_spec(
    spec: MarketAccountingSpec,
    action_dim: int,
    config: EnsembleConfig | None = None,
    train_config: EnsembleTrainConfig | None = None,
) -> TradingAwareDynamics:
    """:func:`market_trading_dynamics` from a stored spec (no env needed, e.g. when loading)."""
    split = StateSplit(obs_dim=spec.obs_dim, exogenous=spec.exogenous)
    return TradingAwareDynamics(
        split,
        MarketAccounting(spec),
        action_dim,
        config,
        train_config,
        n_auxiliary=spec.n_auxiliary,
        auxiliary_fn=auxiliary_inputs,
    )
