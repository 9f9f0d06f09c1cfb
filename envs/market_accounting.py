"""What a trading-aware world model needs to know about ``MarketTrading-v0``'s accounting.

A model-based agent on a trading env should learn only what it cannot know (the market) and
compute the rest exactly (issue 7, "trading-aware option"). :func:`accounting_spec` reads a
:class:`~envs.market_env.MarketTradingEnv` and returns a :class:`MarketAccountingSpec`:

* which flat observation columns are exogenous (the ``market`` window and every predictor
  block: a price taker does not move them) and which are the agent's own (the ``portfolio``
  block, with its column layout);
* every parameter the step's accounting uses (fee, half-spread, impact coefficient, borrow and
  margin rates, bars per year, the action mapping, the rebalance band, the reward).

The portfolio block is relative (exposure, cash / value, unrealised PnL / value, time in trade,
last target), so the accounting can run in units of the current book value and the current
close. Three inputs it needs are not in the observation; :func:`auxiliary_inputs` gives them
for the transition an env is about to make, in :data:`AUXILIARY_COLUMNS` order:

* ``gap_log_return``: ``log(open[t+1] / close[t])``: orders fill at the next open
  (DOMAIN.md "Next-bar execution"), and no observed feature holds the open;
* ``close_log_return``: ``log(close[t+1] / close[t])``: the scaled, clipped float32 features
  only approximate it;
* ``impact_scale``: ``impact_k * sigma[t] * sqrt(value[t] / (close[t] * volume[t]))``. Square-root
  impact (Almgren et al. 2005) costs ``k * sigma * sqrt(|q| / V) * |q| * price`` for ``q``
  units; with ``q`` in units of ``value / close`` this factor is all the accounting needs. It
  depends on the book's size (``value[t]``, which the relative portfolio block drops) as well as
  the market's last-bar volume and volatility, so a world model has to predict it.

Supported: one asset, ``action_mode="continuous"``, ``flatten=True``, ``latency=1``,
``lot_size=0``, ``min_notional=0``, ``max_drawdown=None`` and the rewards ``log_return``,
``sortino``, ``turnover`` and ``excess_buy_and_hold``. Not supported (``ConfigError``): several
assets, discrete or weight actions, Dict observations, latency > 1 (pending orders are not in
the observation), lot sizes and minimum notionals (they depend on absolute sizes),
drawdown termination and the ``drawdown`` / ``differential_sharpe`` / custom rewards (they carry
state the observation does not hold: the peak, the moving moments).

NumPy only (``envs`` must not import torch); the torch accounting that uses this spec is
``world_models.trading.MarketAccounting``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from envs.errors import ConfigError
from envs.market_core import PORTFOLIO_CLIP
from envs.rewards import (
    ExcessBuyAndHoldReward,
    LogReturnReward,
    SortinoReward,
    TurnoverPenaltyReward,
)

__all__ = [
    "AUXILIARY_COLUMNS",
    "PORTFOLIO_COLUMNS",
    "MarketAccountingSpec",
    "accounting_spec",
    "auxiliary_inputs",
]

AUXILIARY_COLUMNS = ("gap_log_return", "close_log_return", "impact_scale")
# Layout of the single-asset portfolio block (envs.market_core.portfolio_block).
PORTFOLIO_COLUMNS = ("position", "cash", "unrealised_pnl", "time_in_trade", "last_target")


@dataclass(frozen=True)
class MarketAccountingSpec:
    """The split of a flat ``MarketTrading-v0`` observation and its accounting parameters.

    Attributes:
        obs_dim: flat observation width.
        exogenous: flat column indices of the exogenous blocks, increasing.
        exogenous_blocks: their block names (``market`` and predictor blocks).
        portfolio_start: first flat column of the portfolio block (its columns are
            :data:`PORTFOLIO_COLUMNS`, contiguous).
        window: bars in the market window (time in trade is ``bars / (bars + window)``).
        taker_fee: fee per unit traded notional.
        half_spread: half the relative spread paid per unit traded notional.
        borrow_rate: annual rate on short notional.
        margin_rate: annual rate on borrowed cash.
        bars_per_year: the data's bars per year (funding is charged per bar).
        max_leverage: target exposure = clipped action * max_leverage.
        action_low: lower bound of the env's action (-1, or 0 without shorts); upper is 1.
        rebalance_band: orders are dropped when the target is this close to the current exposure
            (a target of exactly 0 always closes).
        reward: ``log_return``, ``sortino``, ``turnover`` or ``excess_buy_and_hold``.
        reward_coef: ``downside_coef`` (sortino) or ``turnover_coef`` (turnover), else 0.
        portfolio_clip: bound the env clips the portfolio block to.
        auxiliary: names of the auxiliary inputs (:data:`AUXILIARY_COLUMNS`).
    """

    obs_dim: int
    exogenous: tuple[int, ...]
    exogenous_blocks: tuple[str, ...]
    portfolio_start: int
    window: int
    taker_fee: float
    half_spread: float
    borrow_rate: float
    margin_rate: float
    bars_per_year: float
    max_leverage: float
    action_low: float
    rebalance_band: float
    reward: str
    reward_coef: float
    portfolio_clip: float = PORTFOLIO_CLIP
    auxiliary: tuple[str, ...] = AUXILIARY_COLUMNS

    def to_dict(self) -> dict[str, Any]:
        """Plain values (for checkpoints); :meth:`from_dict` inverts it."""
        return {f: getattr(self, f) for f in self.__dataclass_fields__}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> MarketAccountingSpec:
        """Rebuild from :meth:`to_dict` output (lists become tuples).

        Raises:
            ConfigError: unknown or missing fields.
        """
        known = set(cls.__dataclass_fields__)
        if set(values) - known:
            raise ConfigError(
                f"market accounting spec: unknown fields {sorted(set(values) - known)}"
            )
        try:
            return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})
        except TypeError as exc:
            raise ConfigError(f"market accounting spec: {exc}") from exc

    @property
    def portfolio(self) -> slice:
        """Flat columns of the portfolio block."""
        return slice(self.portfolio_start, self.portfolio_start + len(PORTFOLIO_COLUMNS))

    @property
    def n_auxiliary(self) -> int:
        """Number of auxiliary inputs."""
        return len(self.auxiliary)


def _unwrap(env: Any) -> Any:
    base = getattr(env, "unwrapped", env)
    if not hasattr(base, "setup") or not hasattr(base.setup, "arrays"):
        raise ConfigError(
            f"market accounting: expected a MarketTradingEnv, got {type(base).__name__}"
        )
    return base


def _reward_of(reward: Any) -> tuple[str, float]:
    # Exact class checks: a subclass may change the formula.
    if type(reward) is LogReturnReward:
        return "log_return", 0.0
    if type(reward) is SortinoReward:
        return "sortino", float(reward.downside_coef)
    if type(reward) is TurnoverPenaltyReward:
        return "turnover", float(reward.turnover_coef)
    if type(reward) is ExcessBuyAndHoldReward:
        return "excess_buy_and_hold", 0.0
    name = getattr(reward, "name", type(reward).__name__)
    raise ConfigError(
        f"market accounting: reward {name!r} is not supported; expected log_return, sortino, "
        "turnover or excess_buy_and_hold (drawdown and differential_sharpe keep state the "
        "observation does not hold)"
    )


def accounting_spec(env: Any) -> MarketAccountingSpec:
    """Read the column split and accounting parameters of a ``MarketTrading-v0`` env.

    Args:
        env: a ``MarketTradingEnv`` (wrappers are looked through with ``unwrapped``).

    Returns:
        The spec.

    Raises:
        ConfigError: naming the first setting the trading-aware accounting does not support.
    """
    base = _unwrap(env)
    setup = base.setup
    params = setup.params
    cfg = params.execution
    checks = [
        (setup.arrays.n_assets == 1, f"{setup.arrays.n_assets} assets (expected 1)"),
        (
            setup.action_mode == "continuous",
            f"action_mode={setup.action_mode!r} (expected 'continuous')",
        ),
        (setup.builder.flatten, "flatten=False (expected flatten=True)"),
        (cfg.latency == 1, f"latency={cfg.latency} (expected 1: pending orders are not observed)"),
        (cfg.lot_size == 0, f"lot_size={cfg.lot_size} (expected 0: depends on absolute size)"),
        (
            cfg.min_notional == 0,
            f"min_notional={cfg.min_notional} (expected 0: depends on absolute size)",
        ),
        (
            params.max_drawdown is None,
            f"max_drawdown={params.max_drawdown} (expected None: the peak is not observed)",
        ),
    ]
    for ok, what in checks:
        if not ok:
            raise ConfigError(f"market accounting: {what}")
    reward, coef = _reward_of(setup.reward)
    slices = setup.builder.flat_slices
    exo_blocks = tuple(name for name in slices if name != "portfolio")
    obs_dim = max(s.stop for s in slices.values())
    exogenous = tuple(sorted(i for b in exo_blocks for i in range(*slices[b].indices(obs_dim))))
    port = slices["portfolio"]
    if port.stop - port.start != len(PORTFOLIO_COLUMNS):
        raise ConfigError(
            f"market accounting: portfolio block has {port.stop - port.start} columns, "
            f"expected {len(PORTFOLIO_COLUMNS)} {PORTFOLIO_COLUMNS}"
        )
    return MarketAccountingSpec(
        obs_dim=int(obs_dim),
        exogenous=exogenous,
        exogenous_blocks=exo_blocks,
        portfolio_start=int(port.start),
        window=int(params.window),
        taker_fee=float(cfg.taker_fee),
        half_spread=float(cfg.half_spread),
        borrow_rate=float(cfg.borrow_rate),
        margin_rate=float(cfg.margin_rate),
        bars_per_year=float(setup.arrays.bars_per_year),
        max_leverage=float(cfg.max_leverage),
        action_low=-1.0 if cfg.allow_short else 0.0,
        rebalance_band=float(cfg.rebalance_band),
        reward=reward,
        reward_coef=coef,
    )


def auxiliary_inputs(env: Any) -> np.ndarray:
    """The :data:`AUXILIARY_COLUMNS` of the step the env will make next from its current state.

    Call it after ``reset`` or ``step`` and before the next ``step``; the values read the next
    bar's open and close, so they are training targets for a world model (stored with the
    transition once it happened), never inputs to a policy.

    Returns:
        ``(3,)`` float64: gap log return, close log return, impact scale.

    Raises:
        ConfigError: the env was not reset.
    """
    base = _unwrap(env)
    state = base.state
    if state is None:
        raise ConfigError("market accounting: auxiliary_inputs needs a reset env")
    arrays = base.setup.arrays
    cfg = base.setup.params.execution
    t = int(state.t[0])
    s = min(t + 1, arrays.n_bars - 1)  # as step_core: the fill bar
    close_t = float(arrays.close[t, 0])
    value = max(float(state.value[0]), 0.0)
    # step_core prices impact with sigma and volume of bar s - 1 = t (the last completed bar).
    impact_scale = (
        cfg.impact_k
        * float(arrays.sigma[t, 0])
        * np.sqrt(value / (close_t * float(arrays.volume[t, 0])))
    )
    return np.array(
        [
            np.log(float(arrays.open[s, 0]) / close_t),
            np.log(float(arrays.close[s, 0]) / close_t),
            impact_scale,
        ]
    )
