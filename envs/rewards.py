"""Reward functions for the market envs, chosen by name in the config.

Every reward is batched: it receives a :class:`RewardContext` of ``(B,)`` arrays describing the
bar that was just stepped (one row per env) and returns ``(B,)`` rewards. Stateful rewards
(differential Sharpe) keep their state as a dict of ``(B,)`` arrays that the env passes in and
gets back, so the batched env resets rows with array operations and the step stays pure.

Library (``reward=`` name, ``reward_kwargs``):
    * ``log_return`` (default): ``log(V_t / V_{t-1})``, portfolio value net of every cost.
    * ``differential_sharpe``: Moody & Saffell (1998, 2001), ``eta`` (default 0.01).
    * ``sortino``: ``r - downside_coef * max(-r, 0)``, downside moves count ``1 + coef`` times.
    * ``drawdown``: ``r - drawdown_coef * max(0, DD_t - DD_{t-1})``, with ``DD = 1 - V / peak``:
      only a deepening drawdown is penalised.
    * ``turnover``: ``r - turnover_coef * traded_notional / V_{t-1}``.
    * ``excess_buy_and_hold``: ``r - r_bh``, with ``r_bh`` the log return of an equal-weight
      buy-and-hold of the env's assets over the same bar (close to close).

The library rewards are restated on Python floats in :mod:`envs.market_fast` (the single env's
fast path, pinned to these classes bit for bit by ``tests/test_market_fast.py``): change both
together. Subclasses and custom rewards always get the batched :class:`RewardContext`.

Custom rewards: pass any callable ``fn(ctx: RewardContext) -> np.ndarray | float`` returning one
reward per row (shape ``(B,)``; the single env has ``B = 1``). It must be picklable (a
module-level function) for the env to pickle. For a stateful custom reward subclass
:class:`Reward` and implement ``init_state`` and ``__call__``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np

from envs.errors import ConfigError

__all__ = [
    "REWARDS",
    "DifferentialSharpeReward",
    "DrawdownPenaltyReward",
    "ExcessBuyAndHoldReward",
    "FunctionReward",
    "LogReturnReward",
    "Reward",
    "RewardContext",
    "SortinoReward",
    "TurnoverPenaltyReward",
    "make_reward",
]

RewardState = dict[str, np.ndarray]


class RewardContext(NamedTuple):
    """What a reward may look at for the bar just stepped; every field has a leading ``B``.

    Attributes:
        log_return: ``log(value / prev_value)`` net of fees, spread, impact and funding.
        value: portfolio value marked at the bar's close, after costs.
        prev_value: portfolio value at the previous close.
        peak: running maximum of the value in this episode, including ``value``.
        prev_peak: running maximum before this bar.
        turnover: traded notional this bar divided by ``prev_value``.
        cost: cash paid this bar (fee + spread + impact + funding).
        benchmark_log_return: log return of an equal-weight buy-and-hold over the bar.
        exposure: ``(B, N)`` exposures after the bar (signed notional / value).
    """

    log_return: np.ndarray
    value: np.ndarray
    prev_value: np.ndarray
    peak: np.ndarray
    prev_peak: np.ndarray
    turnover: np.ndarray
    cost: np.ndarray
    benchmark_log_return: np.ndarray
    exposure: np.ndarray


class Reward:
    """Base class: a batched reward with optional per-env state arrays."""

    name = "reward"

    def init_state(self, batch: int) -> RewardState:
        """Fresh state for ``batch`` envs (empty for stateless rewards)."""
        return {}

    def __call__(self, ctx: RewardContext, state: RewardState) -> tuple[np.ndarray, RewardState]:
        """Return ``(rewards (B,), new_state)``; must not modify ``state`` in place."""
        raise NotImplementedError

    def reset_rows(self, state: RewardState, mask: np.ndarray) -> RewardState:
        """Return ``state`` with the rows where ``mask`` is True set to their initial values."""
        if not state:
            return state
        fresh = self.init_state(mask.shape[0])
        return {k: np.where(mask, fresh[k], v) for k, v in state.items()}


class LogReturnReward(Reward):
    """Log return of the portfolio value net of all costs (additive over an episode)."""

    name = "log_return"

    def __call__(self, ctx: RewardContext, state: RewardState) -> tuple[np.ndarray, RewardState]:
        return ctx.log_return, state


class DifferentialSharpeReward(Reward):
    """Differential Sharpe ratio (Moody & Saffell 1998, 2001; formula in DOMAIN.md).

    With exponential moving moments ``A`` and ``B`` of the return ``R_t`` (here the net log
    return) and rate ``eta``: ``D_t = (B_{t-1} dA_t - 0.5 A_{t-1} dB_t) / (B_{t-1} -
    A_{t-1}^2)^{3/2}`` with ``dA_t = R_t - A_{t-1}`` and ``dB_t = R_t^2 - B_{t-1}``. While the
    variance estimate ``B - A^2`` is below ``min_variance`` (at the start of an episode) the
    ratio is undefined and the reward is 0.

    Args:
        eta: adaptation rate of the moving moments.
        min_variance: guard on the denominator.
    """

    name = "differential_sharpe"

    def __init__(self, eta: float = 0.01, min_variance: float = 1e-12) -> None:
        if not 0 < eta <= 1:
            raise ConfigError(f"reward_kwargs.eta must be in (0, 1], got {eta!r}")
        if min_variance <= 0:
            raise ConfigError(f"reward_kwargs.min_variance must be > 0, got {min_variance!r}")
        self.eta = float(eta)
        self.min_variance = float(min_variance)

    def init_state(self, batch: int) -> RewardState:
        return {"A": np.zeros(batch), "B": np.zeros(batch)}

    def __call__(self, ctx: RewardContext, state: RewardState) -> tuple[np.ndarray, RewardState]:
        r = ctx.log_return
        a, b = state["A"], state["B"]
        d_a = r - a
        d_b = r * r - b
        var = b - a * a
        ok = var > self.min_variance
        denom = np.where(ok, var, 1.0) ** 1.5
        reward = np.where(ok, (b * d_a - 0.5 * a * d_b) / denom, 0.0)
        return reward, {"A": a + self.eta * d_a, "B": b + self.eta * d_b}


class SortinoReward(Reward):
    """Log return with losses counted ``1 + downside_coef`` times (Sortino-style asymmetry)."""

    name = "sortino"

    def __init__(self, downside_coef: float = 1.0) -> None:
        if downside_coef < 0:
            raise ConfigError(f"reward_kwargs.downside_coef must be >= 0, got {downside_coef!r}")
        self.downside_coef = float(downside_coef)

    def __call__(self, ctx: RewardContext, state: RewardState) -> tuple[np.ndarray, RewardState]:
        r = ctx.log_return
        return r - self.downside_coef * np.maximum(-r, 0.0), state


class DrawdownPenaltyReward(Reward):
    """Log return minus ``drawdown_coef`` times the increase of the drawdown ``1 - V / peak``."""

    name = "drawdown"

    def __init__(self, drawdown_coef: float = 1.0) -> None:
        if drawdown_coef < 0:
            raise ConfigError(f"reward_kwargs.drawdown_coef must be >= 0, got {drawdown_coef!r}")
        self.drawdown_coef = float(drawdown_coef)

    def __call__(self, ctx: RewardContext, state: RewardState) -> tuple[np.ndarray, RewardState]:
        dd_now = 1.0 - ctx.value / ctx.peak
        dd_before = 1.0 - ctx.prev_value / ctx.prev_peak
        penalty = np.maximum(dd_now - dd_before, 0.0)
        return ctx.log_return - self.drawdown_coef * penalty, state


class TurnoverPenaltyReward(Reward):
    """Log return minus ``turnover_coef`` times traded notional over the previous value."""

    name = "turnover"

    def __init__(self, turnover_coef: float = 0.001) -> None:
        if turnover_coef < 0:
            raise ConfigError(f"reward_kwargs.turnover_coef must be >= 0, got {turnover_coef!r}")
        self.turnover_coef = float(turnover_coef)

    def __call__(self, ctx: RewardContext, state: RewardState) -> tuple[np.ndarray, RewardState]:
        return ctx.log_return - self.turnover_coef * ctx.turnover, state


class ExcessBuyAndHoldReward(Reward):
    """Log return in excess of an equal-weight buy-and-hold of the same assets over the bar."""

    name = "excess_buy_and_hold"

    def __call__(self, ctx: RewardContext, state: RewardState) -> tuple[np.ndarray, RewardState]:
        return ctx.log_return - ctx.benchmark_log_return, state


class FunctionReward(Reward):
    """Wrap a stateless callable ``fn(ctx) -> (B,)`` rewards.

    Args:
        fn: the reward function; a scalar result is broadcast to every row.
    """

    name = "custom"

    def __init__(self, fn: Callable[[RewardContext], Any]) -> None:
        self.fn = fn
        self.name = getattr(fn, "__name__", "custom")

    def __call__(self, ctx: RewardContext, state: RewardState) -> tuple[np.ndarray, RewardState]:
        out = np.asarray(self.fn(ctx), dtype=np.float64)
        batch = ctx.log_return.shape[0]
        if out.shape not in ((), (batch,)):
            raise ConfigError(
                f"custom reward {self.name!r} returned shape {out.shape}; expected ({batch},)"
            )
        out = np.broadcast_to(out, (batch,))
        if not np.all(np.isfinite(out)):
            raise ConfigError(f"custom reward {self.name!r} returned a non-finite value: {out}")
        return out, state


REWARDS: dict[str, type[Reward]] = {
    cls.name: cls
    for cls in (
        LogReturnReward,
        DifferentialSharpeReward,
        SortinoReward,
        DrawdownPenaltyReward,
        TurnoverPenaltyReward,
        ExcessBuyAndHoldReward,
    )
}


def make_reward(
    reward: str | Callable[[RewardContext], Any] | Reward,
    reward_kwargs: dict[str, Any] | None = None,
) -> Reward:
    """Build a reward from a library name, a :class:`Reward` or a plain callable.

    Args:
        reward: a name in :data:`REWARDS`, a ``Reward`` instance, or ``fn(ctx) -> (B,)``.
        reward_kwargs: keyword arguments of the named reward class.

    Raises:
        ConfigError: unknown name or bad keyword arguments.
    """
    kwargs = dict(reward_kwargs or {})
    if isinstance(reward, Reward):
        if kwargs:
            raise ConfigError("reward_kwargs given with a Reward instance; configure it directly")
        return reward
    if isinstance(reward, str):
        if reward not in REWARDS:
            raise ConfigError(
                f"reward must be one of {sorted(REWARDS)} or a callable, got {reward!r}"
            )
        try:
            return REWARDS[reward](**kwargs)
        except TypeError as exc:
            raise ConfigError(f"reward_kwargs for {reward!r}: {exc}") from exc
    if callable(reward):
        if kwargs:
            raise ConfigError("reward_kwargs given with a callable reward; bind them yourself")
        return FunctionReward(reward)
    raise ConfigError(f"reward must be a name, a Reward or a callable, got {type(reward).__name__}")
