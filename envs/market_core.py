"""The pure, batched step of the market trading env: (arrays, state, target) -> new state.

One implementation of the accounting serves the single env (``B = 1``) and the batched env
(``B = num_envs``): every function here takes and returns arrays with a leading batch
dimension, never loops over envs and never mutates its inputs, so a torch port for GPU can
follow line by line.

Timing (no look-ahead, FinRL #938 / #317; DOMAIN.md "Next-bar execution"): an observation at
decision bar ``t`` uses data up to bar ``t``'s close. The target chosen there is filled at the
open of bar ``t + latency`` (orders still pending when the episode ends are dropped); the book
is then marked at bar ``t + 1``'s close, funding for the bar is charged, and the reward is the
log change of the marked value. Impact uses the volatility and volume of bar ``s - 1`` for a
fill at bar ``s``'s open: the last completed bar, which a live trader also knows.

This module is the reference for the accounting semantics. The single env steps through
:mod:`envs.market_fast`, which restates :func:`step_core` (and :func:`portfolio_block`) on Python
floats for speed; ``tests/test_market_fast.py`` pins the two together bit for bit, so a change
here must be mirrored there.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from envs.data.dataset import MarketDataset
from envs.errors import DataError
from envs.execution import ExecutionConfig, holding_cost, order_costs, size_orders
from envs.rewards import Reward, RewardContext, RewardState

__all__ = [
    "PORTFOLIO_CLIP",
    "CoreParams",
    "CoreState",
    "MarketArrays",
    "StepOutput",
    "build_market_arrays",
    "initial_state",
    "observe",
    "portfolio_block",
    "portfolio_block_and_exposure",
    "realised_volatility",
    "reset_rows",
    "step_core",
]

# Ratio floor for the log return of a ruined book (value <= 0): log(1e-8) ~ -18.4.
_RUIN_RATIO_FLOOR = 1e-8
# Bound of the portfolio block (Box spaces need finite bounds to pass check_env without
# warnings); exposures only get near it when the value is close to 0, just before ruin.
PORTFOLIO_CLIP = 100.0


@dataclass(frozen=True)
class MarketArrays:
    """Everything precomputed per dataset; shared read-only by all envs of a batch.

    Attributes:
        open: ``(T, N)`` open prices (fill reference).
        close: ``(T, N)`` close prices (marking).
        sigma: ``(T, N)`` realised per-bar volatility of log close returns up to each bar.
        volume: ``(T, N)`` bar volumes (non-positive values carried forward) for impact.
        features: ``(T, F_all)`` float32 scaled features, F_all = N * F.
        blocks: extra named float32 observation blocks, each ``(T, ...)``.
        benchmark_log_return: ``(T,)`` equal-weight buy-and-hold log return from ``t-1`` to ``t``.
        first_decision: earliest decision bar with a full window of valid features.
        bars_per_year: for funding and annualisation.
    """

    open: np.ndarray
    close: np.ndarray
    sigma: np.ndarray
    volume: np.ndarray
    features: np.ndarray
    blocks: Mapping[str, np.ndarray]
    benchmark_log_return: np.ndarray
    first_decision: int
    bars_per_year: float

    @property
    def n_bars(self) -> int:
        """Number of bars ``T``."""
        return int(self.close.shape[0])

    @property
    def n_assets(self) -> int:
        """Number of assets ``N``."""
        return int(self.close.shape[1])


@dataclass(frozen=True)
class CoreParams:
    """Static parameters of the step.

    Attributes:
        execution: sizing limits and costs.
        initial_cash: starting cash of every episode.
        window: bars of features in the market block.
        max_drawdown: terminate when the value falls this fraction below its peak (None = off).
    """

    execution: ExecutionConfig
    initial_cash: float
    window: int
    max_drawdown: float | None = None


class CoreState(NamedTuple):
    """Batched state of ``B`` episodes (leading dimension ``B`` on every array).

    ``t`` is the current decision bar, ``end`` the last bar of the episode; money fields are in
    cash units and the ``fees``/``spread``/``impact``/``funding``/``trades``/``traded_notional``
    fields accumulate over the episode.
    """

    t: np.ndarray
    end: np.ndarray
    steps: np.ndarray
    cash: np.ndarray
    units: np.ndarray
    entry_price: np.ndarray
    value: np.ndarray
    peak: np.ndarray
    time_in_trade: np.ndarray
    last_target: np.ndarray
    pending: np.ndarray
    fees: np.ndarray
    spread: np.ndarray
    impact: np.ndarray
    funding: np.ndarray
    trades: np.ndarray
    traded_notional: np.ndarray
    reward_state: RewardState


class StepOutput(NamedTuple):
    """Per-row results of one step, each ``(B,)``."""

    reward: np.ndarray
    terminated: np.ndarray
    truncated: np.ndarray
    step_cost: np.ndarray
    trades: np.ndarray


def realised_volatility(close: np.ndarray, lookback: int) -> np.ndarray:
    """Causal rolling std of log close returns over the last ``lookback`` returns.

    Bars with fewer returns use all that exist (0 at the first bar).

    Args:
        close: ``(T, N)`` close prices.
        lookback: number of returns in the window (>= 2).

    Returns:
        ``(T, N)`` per-bar volatility; the value at ``t`` uses closes ``<= t`` only.
    """
    rets = np.zeros_like(close, dtype=np.float64)
    rets[1:] = np.log(close[1:] / close[:-1])
    c1 = np.concatenate([np.zeros((1, close.shape[1])), np.cumsum(rets, axis=0)])
    c2 = np.concatenate([np.zeros((1, close.shape[1])), np.cumsum(rets * rets, axis=0)])
    idx = np.arange(close.shape[0])
    lo = np.maximum(idx + 1 - lookback, 1)  # returns exist from bar 1 on
    hi = idx + 1
    count = np.maximum(hi - lo, 1)[:, None]
    s1 = c1[hi] - c1[lo]
    s2 = c2[hi] - c2[lo]
    mean = s1 / count
    var = np.maximum(s2 / count - mean * mean, 0.0)
    return np.sqrt(var)


def _impact_volume(volume: np.ndarray, dataset: MarketDataset, needed: bool) -> np.ndarray:
    vol = np.array(volume, dtype=np.float64)
    for j in range(vol.shape[1]):
        col = vol[:, j]
        good = np.isfinite(col) & (col > 0)
        if not good.any():
            if needed:
                raise DataError(
                    f"{dataset.source}: column 'volume' of symbol {dataset.symbols[j]!r} has no "
                    "positive value; square-root impact needs volume (set impact_k=0 to disable)"
                )
            vol[:, j] = 1.0
            continue
        # Carry the last positive volume forward; before the first one, use the first one.
        pos = np.where(good, np.arange(col.size), -1)
        pos = np.maximum.accumulate(pos)
        first = int(np.argmax(good))
        pos[pos < 0] = first
        vol[:, j] = col[pos]
    return vol


def build_market_arrays(
    dataset: MarketDataset,
    features: np.ndarray,
    warmup: int,
    window: int,
    blocks: Mapping[str, np.ndarray] | None = None,
    vol_lookback: int = 24,
    impact_needed: bool = True,
) -> MarketArrays:
    """Precompute the arrays the step reads, and check they are usable.

    Args:
        dataset: the market data.
        features: ``(T, N * F)`` float32 scaled causal features.
        warmup: bars at the start where features are not yet valid.
        window: bars of features per observation.
        blocks: extra observation blocks, each ``(T, ...)`` aligned with the dataset.
        vol_lookback: returns in the realised-volatility window used by the impact model.
        impact_needed: whether the volume must be usable (square-root impact on).

    Raises:
        DataError: non-positive prices, non-finite features or blocks where episodes can reach
            them, misaligned blocks, or too few bars for one step.
    """
    n_bars = len(dataset)
    first = int(warmup) + int(window) - 1
    if first + 1 >= n_bars:
        raise DataError(
            f"{dataset.source}: {n_bars} bars is too few for warmup={warmup} and window={window}; "
            f"need at least {first + 2} bars for one step"
        )
    for name, arr in (("open", dataset.open), ("close", dataset.close)):
        bad = ~(np.isfinite(arr) & (arr > 0))
        if bad.any():
            row, col = np.argwhere(bad)[0]
            raise DataError(
                f"{dataset.source}: column {name!r} of symbol {dataset.symbols[col]!r} must be a "
                f"positive finite price, got {arr[row, col]!r} at row {row}"
            )
    feats = np.ascontiguousarray(features, dtype=np.float32)
    if feats.ndim != 2 or feats.shape[0] != n_bars:
        raise DataError(f"{dataset.source}: features must be (T={n_bars}, F), got {feats.shape}")
    reach = feats[first + 1 - window :]
    if not np.all(np.isfinite(reach)):
        row, col = np.argwhere(~np.isfinite(reach))[0]
        raise DataError(
            f"{dataset.source}: feature column {col} is not finite at row "
            f"{row + first + 1 - window} (after warmup={warmup}); check the data or features"
        )
    out_blocks: dict[str, np.ndarray] = {}
    for name, arr in (blocks or {}).items():
        arr = np.asarray(arr, dtype=np.float32)
        if arr.ndim == 1:
            arr = arr[:, None]
        if arr.shape[0] != n_bars:
            raise DataError(
                f"predictor block {name!r}: expected {n_bars} rows aligned with "
                f"{dataset.source}, got shape {arr.shape}"
            )
        tail = arr[first:]
        if not np.all(np.isfinite(tail)):
            row = int(np.argwhere(~np.isfinite(tail.reshape(tail.shape[0], -1)))[0][0]) + first
            raise DataError(
                f"predictor block {name!r}: non-finite value at row {row}; episodes observe rows "
                f">= {first}, which must be finite"
            )
        out_blocks[name] = np.ascontiguousarray(arr)
    close = dataset.close.astype(np.float64)
    bench = np.zeros(n_bars)
    bench[1:] = np.log(np.mean(close[1:] / close[:-1], axis=1))
    return MarketArrays(
        open=np.ascontiguousarray(dataset.open, dtype=np.float64),
        close=np.ascontiguousarray(close),
        sigma=realised_volatility(close, vol_lookback),
        volume=_impact_volume(dataset.volume, dataset, impact_needed),
        features=feats,
        blocks=out_blocks,
        benchmark_log_return=bench,
        first_decision=first,
        bars_per_year=float(dataset.bars_per_year),
    )


def initial_state(
    arrays: MarketArrays,
    params: CoreParams,
    reward: Reward,
    starts: np.ndarray,
    ends: np.ndarray,
) -> CoreState:
    """Fresh state of ``B`` episodes with first decision bars ``starts`` and last bars ``ends``."""
    starts = np.asarray(starts, dtype=np.int64)
    batch = starts.shape[0]
    n = arrays.n_assets
    lat = params.execution.latency
    cash = np.full(batch, float(params.initial_cash))
    return CoreState(
        t=starts.copy(),
        end=np.asarray(ends, dtype=np.int64).copy(),
        steps=np.zeros(batch, dtype=np.int64),
        cash=cash,
        units=np.zeros((batch, n)),
        entry_price=np.zeros((batch, n)),
        value=cash.copy(),
        peak=cash.copy(),
        time_in_trade=np.zeros(batch, dtype=np.int64),
        last_target=np.zeros((batch, n)),
        pending=np.full((batch, lat - 1, n), np.nan),
        fees=np.zeros(batch),
        spread=np.zeros(batch),
        impact=np.zeros(batch),
        funding=np.zeros(batch),
        trades=np.zeros(batch, dtype=np.int64),
        traded_notional=np.zeros(batch),
        reward_state=reward.init_state(batch),
    )


def reset_rows(state: CoreState, fresh: CoreState, mask: np.ndarray) -> CoreState:
    """Rows of ``fresh`` where ``mask`` is True, rows of ``state`` elsewhere (no Python loop)."""
    out = []
    for old, new in zip(state[:-1], fresh[:-1], strict=True):
        m = mask.reshape(mask.shape + (1,) * (old.ndim - 1))
        out.append(np.where(m, new, old))
    rs = {k: np.where(mask, fresh.reward_state[k], v) for k, v in state.reward_state.items()}
    return CoreState(*out, rs)


def step_core(
    arrays: MarketArrays,
    params: CoreParams,
    reward: Reward,
    state: CoreState,
    target: np.ndarray,
) -> tuple[CoreState, StepOutput]:
    """Advance every episode by one bar.

    Args:
        arrays: the precomputed market arrays.
        params: static parameters.
        reward: the reward function.
        state: current state (not modified).
        target: ``(B, N)`` target exposures decided at each row's bar ``t`` (already mapped and
            clipped by :mod:`envs.execution`).

    Returns:
        The new state and per-row outputs.
    """
    cfg = params.execution
    last_bar = arrays.n_bars - 1
    # Performance (issue 3): every operation below allocates a (B,) or (B, N) array, so values
    # used twice are computed once (q * price, units * close, the sign comparisons) and fresh
    # temporaries are updated in place; inputs are never written. The arithmetic, and so every
    # result bit, is unchanged (tests/test_market_fast.py and tests/test_market_vector.py).
    # Rows that already ended (only in the batched env, before autoreset) index a valid bar;
    # their results are discarded by the caller.
    s = state.t + 1
    np.minimum(s, last_bar, out=s)
    before = s - 1
    if cfg.latency > 1:
        executed = state.pending[:, 0]
        pending = np.concatenate([state.pending[:, 1:], target[:, None, :]], axis=1)
    else:
        executed = target
        pending = state.pending

    price = arrays.open.take(s, axis=0)
    q = size_orders(executed, state.units, state.cash, price, cfg)
    costs = order_costs(
        q, price, arrays.sigma.take(before, axis=0), arrays.volume.take(before, axis=0), cfg
    )
    trade_cost = costs.fee + costs.spread
    trade_cost += costs.impact
    paid = q * price
    cash = state.cash - paid.sum(axis=1)
    cash -= trade_cost
    units = state.units + q

    # Average entry price per asset (for unrealised PnL): adding to a position averages in the
    # fill price, reducing keeps it, a flip or a fresh entry resets it, flat clears it.
    old_sign = np.sign(state.units)
    new_sign = np.sign(units)
    same_sign = new_sign == old_sign
    flat = new_sign == 0.0
    adding = np.abs(units) > np.abs(state.units)
    adding &= same_sign
    averaged = state.units * state.entry_price
    averaged += paid
    averaged /= np.where(flat, 1.0, units)  # flat <=> units == 0 (sign(-0.0) == 0 too)
    entry = np.where(adding, averaged, state.entry_price)
    np.copyto(entry, price, where=~same_sign)
    entry[flat] = 0.0

    close = arrays.close.take(s, axis=0)
    funding = holding_cost(units, cash, close, arrays.bars_per_year, cfg)
    cash -= funding
    held = units * close
    value = cash + held.sum(axis=1)
    peak = np.maximum(state.peak, value)

    ratio = value / state.value
    np.maximum(ratio, _RUIN_RATIO_FLOOR, out=ratio)
    log_return = np.log(ratio, out=ratio)
    safe_value = np.where(np.abs(value) > 1e-12, value, 1e-12)
    held /= safe_value[:, None]
    ctx = RewardContext(
        log_return=log_return,
        value=value,
        prev_value=state.value,
        peak=peak,
        prev_peak=state.peak,
        turnover=costs.notional / state.value,
        cost=trade_cost + funding,
        benchmark_log_return=arrays.benchmark_log_return.take(s),
        exposure=held,
    )
    rew, reward_state = reward(ctx, state.reward_state)

    in_trade = ~flat.all(axis=1)  # == (units != 0).any(axis=1), NaN included
    time_in_trade = np.where(same_sign.all(axis=1), state.time_in_trade + 1, 1)
    time_in_trade *= in_trade
    n_trades = (q != 0.0).sum(axis=1)

    terminated = value <= 0.0
    if params.max_drawdown is not None:
        terminated |= value < peak * (1.0 - params.max_drawdown)
    truncated = s >= state.end
    truncated &= ~terminated

    new_state = CoreState(
        t=s,
        end=state.end,
        steps=state.steps + 1,
        cash=cash,
        units=units,
        entry_price=entry,
        value=value,
        peak=peak,
        time_in_trade=time_in_trade,
        last_target=target,
        pending=pending,
        fees=state.fees + costs.fee,
        spread=state.spread + costs.spread,
        impact=state.impact + costs.impact,
        funding=state.funding + funding,
        trades=state.trades + n_trades,
        traded_notional=state.traded_notional + costs.notional,
        reward_state=reward_state,
    )
    out = StepOutput(
        reward=rew,
        terminated=terminated,
        truncated=truncated,
        step_cost=trade_cost + funding,
        trades=n_trades,
    )
    return new_state, out


def portfolio_block(state: CoreState, arrays: MarketArrays, window: int) -> np.ndarray:
    """``(B, 2N + 3)`` portfolio features at each row's decision bar, clipped to +-PORTFOLIO_CLIP.

    Layout: exposure per asset, cash / value, unrealised PnL / value, time in trade as
    ``bars / (bars + window)`` (0 when flat, 0.5 after ``window`` bars, bounded by 1), last
    target exposure per asset.
    """
    return portfolio_block_and_exposure(state, arrays, window)[0]


def portfolio_block_and_exposure(
    state: CoreState, arrays: MarketArrays, window: int
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`portfolio_block` and the unclipped ``(B, N)`` exposures it starts from.

    The batched env reports the exposures in its info; computing both here saves it a second
    pass. The block is written column by column into one array (no concatenation) and clipped
    with ``maximum``/``minimum``, which equal ``np.clip`` element for element (NaN included).
    """
    n = state.units.shape[1]
    close = arrays.close.take(state.t, axis=0)
    value = np.where(np.abs(state.value) > 1e-12, state.value, 1e-12)
    exposure = state.units * close
    exposure /= value[:, None]
    out = np.empty((exposure.shape[0], 2 * n + 3))
    out[:, :n] = exposure
    np.divide(state.cash, value, out=out[:, n])
    upnl = close - state.entry_price
    upnl *= state.units
    np.divide(upnl.sum(axis=1), value, out=out[:, n + 1])
    np.divide(state.time_in_trade, state.time_in_trade + window, out=out[:, n + 2])
    out[:, n + 3 :] = state.last_target
    np.maximum(out, -PORTFOLIO_CLIP, out=out)
    np.minimum(out, PORTFOLIO_CLIP, out=out)
    return out, exposure


def observe(state: CoreState, arrays: MarketArrays, window: int) -> dict[str, np.ndarray]:
    """Block arrays (batched) for the observation builder, all from bars ``<= t`` only."""
    idx = state.t[:, None] + np.arange(1 - window, 1)
    values = {"market": arrays.features[idx]}
    for name, arr in arrays.blocks.items():
        values[name] = arr[state.t]
    values["portfolio"] = portfolio_block(state, arrays, window)
    return values
