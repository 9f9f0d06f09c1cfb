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
here must be mirrored there. :func:`step_core` itself restates the sizing and cost functions of
:mod:`envs.execution` with shared intermediates (issue 3: at ``B = 1024`` every NumPy call costs
about a microsecond whatever it computes); ``tests/test_market_core_step.py`` pins it bit for bit
to their plain composition.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from envs.data.dataset import MarketDataset
from envs.errors import DataError
from envs.execution import ExecutionConfig
from envs.rewards import Reward, RewardContext, RewardState

__all__ = [
    "PORTFOLIO_CLIP",
    "CoreParams",
    "CoreState",
    "MarketArrays",
    "StepOutput",
    "StepTables",
    "build_market_arrays",
    "initial_state",
    "observe",
    "portfolio_block",
    "portfolio_block_and_exposure",
    "realised_volatility",
    "reset_rows",
    "step_and_portfolio",
    "step_core",
    "step_tables",
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


class StepTables(NamedTuple):
    """Per-bar inputs of :func:`step_core` packed so one ``take`` per step gathers them all.

    Built once per dataset and parameters by :func:`step_tables` (the batched env keeps one);
    optional: without it the step gathers each array separately, with the same results.

    Attributes:
        bars: ``(5, T, N)`` float64: at fill bar ``s``, ``bars[:, s]`` holds the open, the
            close, ``impact_k * sigma[s - 1]``, ``volume[s - 1]`` and (in column 0) the
            benchmark log return into ``s``. Bar 0 is never read (fills happen at ``s >= 1``).
            One ``take`` along axis 1 gives five C-contiguous ``(B, N)`` arrays (in isolation,
            arithmetic on them cost 0.5-1 us less per call at ``B = 1024`` than on the strided
            columns of a ``(T, 5N)`` layout; within the step the difference was in the noise).
    """

    bars: np.ndarray


def step_tables(arrays: MarketArrays, params: CoreParams) -> StepTables:
    """The :class:`StepTables` of ``arrays`` and ``params`` (``impact_k * sigma`` precomputed).

    ``impact_k * sigma`` is the first product of the impact formula (evaluated left to right),
    so precomputing it per bar leaves every result bit unchanged.
    """
    prev = np.maximum(np.arange(arrays.n_bars) - 1, 0)  # bar 0: a placeholder, never read
    bars = np.zeros((5, arrays.n_bars, arrays.n_assets))
    bars[0] = arrays.open
    bars[1] = arrays.close
    bars[2] = params.execution.impact_k * arrays.sigma[prev]
    bars[3] = arrays.volume[prev]
    bars[4, :, 0] = arrays.benchmark_log_return
    return StepTables(bars=bars)


def _row_sum(x: np.ndarray) -> np.ndarray:
    """``x.sum(axis=1)`` bit for bit, without a reduction over a single asset.

    A NumPy sum starts from the identity ``+0.0``, so the sum of one ``-0.0`` is ``+0.0``:
    ``x[:, 0] + 0.0`` is the same value for every input (NaN and infinities included), at a
    third of the cost of a length-1 reduction (issue 3: ~1.5 us each at ``B = 1024``).
    """
    if x.shape[1] == 1:
        return x[:, 0] + 0.0
    return x.sum(axis=1)


def _row_sum_nonneg(x: np.ndarray) -> np.ndarray:
    """:func:`_row_sum` of an array with no ``-0.0`` (``abs(.) * price`` and such): a view."""
    return x[:, 0] if x.shape[1] == 1 else x.sum(axis=1)


def _row_all(x: np.ndarray) -> np.ndarray:
    """``x.all(axis=1)`` of a boolean ``(B, N)`` array (a view when ``N == 1``)."""
    return x[:, 0] if x.shape[1] == 1 else x.all(axis=1)


class _StepDetail(NamedTuple):
    """What the step computed that the next observation and the info reuse."""

    close: np.ndarray  # (B, N) close of the new bar
    safe_value: np.ndarray  # (B,) value floored away from 0, as portfolio_block_and_exposure
    exposure: np.ndarray  # (B, N) units * close / safe_value


def step_core(
    arrays: MarketArrays,
    params: CoreParams,
    reward: Reward,
    state: CoreState,
    target: np.ndarray,
    tables: StepTables | None = None,
) -> tuple[CoreState, StepOutput]:
    """Advance every episode by one bar.

    Args:
        arrays: the precomputed market arrays.
        params: static parameters.
        reward: the reward function.
        state: current state (not modified).
        target: ``(B, N)`` target exposures decided at each row's bar ``t`` (already mapped and
            clipped by :mod:`envs.execution`).
        tables: :func:`step_tables` of ``arrays`` and ``params`` (faster; same results).

    Returns:
        The new state and per-row outputs.

    The reward's context shares arrays with the results (``ctx.cost`` is ``out.step_cost``,
    ``ctx.value`` is the new state's value, ``ctx.exposure`` feeds the portfolio block of
    :func:`step_and_portfolio`): a reward must treat its context as read-only, as the library
    rewards do.
    """
    new_state, out, _ = _step(arrays, params, reward, state, target, tables)
    return new_state, out


def _step(
    arrays: MarketArrays,
    params: CoreParams,
    reward: Reward,
    state: CoreState,
    target: np.ndarray,
    tables: StepTables | None,
) -> tuple[CoreState, StepOutput, _StepDetail]:
    # Performance (issue 3): at B = 1024 each NumPy call costs ~0.5-1.5 us whatever it
    # computes, so the step is written for few calls: size_orders, order_costs and
    # holding_cost (envs/execution.py, the reference) are restated here with their shared
    # intermediates computed once, sums over a single asset avoid reductions (_row_sum), the
    # per-bar inputs come from one take of StepTables, and fresh temporaries are updated in
    # place; inputs are never written. Every result bit is unchanged (tests/test_market_fast.py
    # pins the single env to this function, tests/test_market_vector.py pins this function to
    # the execution module's reference functions).
    cfg = params.execution
    n = state.units.shape[1]
    # Rows that already ended (only in the batched env, before autoreset) index a valid bar;
    # their results are discarded by the caller.
    s = state.t + 1
    np.minimum(s, arrays.n_bars - 1, out=s)
    if cfg.latency > 1:
        executed = state.pending[:, 0]
        pending = np.concatenate([state.pending[:, 1:], target[:, None, :]], axis=1)
    else:
        executed = target
        pending = state.pending
    if tables is not None:
        price, close, k_sigma, volume, bench = tables.bars.take(s, axis=1)
        benchmark = bench[:, 0]
    else:
        before = s - 1
        price = arrays.open.take(s, axis=0)
        close = arrays.close.take(s, axis=0)
        k_sigma = cfg.impact_k * arrays.sigma.take(before, axis=0)
        volume = arrays.volume.take(before, axis=0)
        benchmark = arrays.benchmark_log_return.take(s)
    units_old = state.units

    # --- size_orders(executed, units, cash, price, cfg) ----------------------------------------
    marked = units_old * price
    book_value = state.cash + _row_sum(marked)
    positive = book_value > 0
    tradable = np.isfinite(executed)
    tradable &= positive[:, None]
    safe_target = np.where(tradable, executed, 0.0)
    value_col = np.maximum(book_value, 0.0)[:, None]
    q = safe_target * value_col
    q /= price
    q -= units_old
    if cfg.lot_size > 0:
        q /= cfg.lot_size
        np.trunc(q, out=q)
        q *= cfg.lot_size
    keep = tradable
    if cfg.rebalance_band > 0:
        # value_col > 0 <=> book_value > 0, where the two are equal (NaN included).
        marked /= np.where(positive, book_value, 1.0)[:, None]
        marked -= safe_target
        np.abs(marked, out=marked)
        keep = keep & (marked >= cfg.rebalance_band)
    if cfg.min_notional > 0:
        keep = keep & (np.abs(q) * price >= cfg.min_notional)
    closing = safe_target == 0.0
    closing &= tradable
    # np.where, not ufunc(where=) / copyto(where=): masked loops run per stretch of True, and
    # with a random mask (~1/3 of rows flat under random actions) they cost 2-4x a where.
    q = np.where(closing, -units_old, np.where(keep, q, 0.0))

    # --- order_costs(q, price, sigma, volume, cfg) ----------------------------------------------
    size = np.abs(q)
    notional = size * price
    # Square-root impact (Almgren et al. 2005; Tóth et al. 2011): cost per unit notional is
    # k * sigma * sqrt(|q| / V), so the cash cost grows as |q|^1.5.
    size /= volume
    np.sqrt(size, out=size)
    impact_n = k_sigma * size
    impact_n *= notional
    traded = _row_sum_nonneg(notional)  # |q| * price >= +0: no -0.0 to normalise
    fee = cfg.taker_fee * traded
    spread = cfg.half_spread * traded
    impact = _row_sum_nonneg(impact_n)
    trade_cost = fee + spread
    trade_cost += impact

    paid = q * price
    cash = state.cash - _row_sum(paid)
    cash -= trade_cost
    units = units_old + q

    # Average entry price per asset (for unrealised PnL): adding to a position averages in the
    # fill price, reducing keeps it, a flip or a fresh entry resets it, flat clears it.
    same_sign = np.sign(units) == np.sign(units_old)
    flat = units == 0.0  # <=> sign(units) == 0 (sign(-0.0) == 0 too; NaN neither)
    adding = np.abs(units) > np.abs(units_old)
    adding &= same_sign
    averaged = units_old * state.entry_price
    averaged += paid
    averaged /= np.where(flat, 1.0, units)
    entry = np.where(adding, averaged, state.entry_price)
    entry = np.where(same_sign, entry, price)
    entry = np.where(flat, 0.0, entry)

    # --- holding_cost(units, cash, close, bars_per_year, cfg) -----------------------------------
    short = np.negative(units)
    np.maximum(short, 0.0, out=short)
    short *= close
    borrowed = np.negative(cash)
    np.maximum(borrowed, 0.0, out=borrowed)
    borrowed *= cfg.margin_rate
    funding = cfg.borrow_rate * _row_sum(short)
    funding += borrowed
    funding *= 1.0 / arrays.bars_per_year
    cash -= funding

    held = units * close
    value = cash + _row_sum(held)
    peak = np.maximum(state.peak, value)
    ratio = value / state.value
    np.maximum(ratio, _RUIN_RATIO_FLOOR, out=ratio)
    log_return = np.log(ratio, out=ratio)
    safe_value = np.where(np.abs(value) > 1e-12, value, 1e-12)
    held /= safe_value[:, None]
    cost = trade_cost + funding
    ctx = RewardContext(
        log_return=log_return,
        value=value,
        prev_value=state.value,
        peak=peak,
        prev_peak=state.peak,
        turnover=traded / state.value,
        cost=cost,
        benchmark_log_return=benchmark,
        exposure=held,
    )
    rew, reward_state = reward(ctx, state.reward_state)

    time_in_trade = np.where(_row_all(same_sign), state.time_in_trade + 1, 1)
    time_in_trade *= ~_row_all(flat)  # 0 when flat in every asset
    moved = q != 0.0
    n_trades = moved[:, 0].astype(np.int64) if n == 1 else moved.sum(axis=1)

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
        fees=state.fees + fee,
        spread=state.spread + spread,
        impact=state.impact + impact,
        funding=state.funding + funding,
        trades=state.trades + n_trades,
        traded_notional=state.traded_notional + traded,
        reward_state=reward_state,
    )
    out = StepOutput(
        reward=rew,
        terminated=terminated,
        truncated=truncated,
        step_cost=cost,
        trades=n_trades,
    )
    return new_state, out, _StepDetail(close=close, safe_value=safe_value, exposure=held)


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
    pass. The block is written column by column into one array (no concatenation), then
    clipped in place.
    """
    close = arrays.close.take(state.t, axis=0)
    value = np.where(np.abs(state.value) > 1e-12, state.value, 1e-12)
    exposure = state.units * close
    exposure /= value[:, None]
    return _portfolio(state, close, value, exposure, window), exposure


def _portfolio(
    state: CoreState, close: np.ndarray, value: np.ndarray, exposure: np.ndarray, window: int
) -> np.ndarray:
    """The clipped block from the close at ``state.t``, the floored value and the exposures."""
    n = state.units.shape[1]
    out = np.empty((exposure.shape[0], 2 * n + 3))
    out[:, :n] = exposure
    np.divide(state.cash, value, out=out[:, n])
    upnl = close - state.entry_price
    upnl *= state.units
    np.divide(_row_sum(upnl), value, out=out[:, n + 1])
    np.divide(state.time_in_trade, state.time_in_trade + window, out=out[:, n + 2])
    out[:, n + 3 :] = state.last_target
    # np.clip equals maximum then minimum element for element here (NaN stays NaN; the two
    # differ only on a value equal to a bound, and +-100 has one bit pattern), in one pass.
    np.clip(out, -PORTFOLIO_CLIP, PORTFOLIO_CLIP, out=out)
    return out


def step_and_portfolio(
    arrays: MarketArrays,
    params: CoreParams,
    reward: Reward,
    state: CoreState,
    target: np.ndarray,
    tables: StepTables | None = None,
) -> tuple[CoreState, StepOutput, np.ndarray, np.ndarray]:
    """:func:`step_core`, then :func:`portfolio_block_and_exposure` of the new state.

    The block reuses the close, floored value and exposures the step computed (the same
    arrays :func:`portfolio_block_and_exposure` would recompute), so it costs a few array
    operations instead of a second pass. The batched env's step uses it.

    Returns:
        The new state, the step's outputs, the ``(B, 2N + 3)`` portfolio block of the new
        state and its unclipped ``(B, N)`` exposures.
    """
    new_state, out, detail = _step(arrays, params, reward, state, target, tables)
    block = _portfolio(new_state, detail.close, detail.safe_value, detail.exposure, params.window)
    return new_state, out, block, detail.exposure


def observe(state: CoreState, arrays: MarketArrays, window: int) -> dict[str, np.ndarray]:
    """Block arrays (batched) for the observation builder, all from bars ``<= t`` only."""
    idx = state.t[:, None] + np.arange(1 - window, 1)
    values = {"market": arrays.features[idx]}
    for name, arr in arrays.blocks.items():
        values[name] = arr[state.t]
    values["portfolio"] = portfolio_block(state, arrays, window)
    return values
