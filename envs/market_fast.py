"""Scalar fast path of the market step for one env: Python floats instead of ``(1, N)`` arrays.

The reference semantics of the accounting are :func:`envs.market_core.step_core` (batched,
NumPy) with the sizing and costs of :mod:`envs.execution` and the rewards of
:mod:`envs.rewards`. For a single env NumPy's per-call overhead dominates a step (a few
microseconds per tiny array operation, dozens of them per step), so this module restates the
same arithmetic, operation for operation and in the same order, on Python floats. The two are
pinned together bit for bit by ``tests/test_market_fast.py`` (seeded random trajectories over
every action mode, reward, latency, leverage, short/borrow, lot-size/min-notional and drawdown
setting); a change to one must be made to the other.

How bit-identity is kept (each point is checked by the tests, on the machine they run on):
    * ``+ - * /`` and ``sqrt`` are correctly rounded IEEE operations in NumPy and in Python.
    * ``log`` and ``x ** 1.5`` are not: NumPy may use its own SIMD (SVML) kernels that differ
      from the C library by an ulp, so both are computed with the NumPy ufunc on a float.
    * NumPy sums a short contiguous row (fewer than 8 elements) left to right; longer rows use
      8 interleaved accumulators. Sums here accumulate left to right from ``-0.0`` (the exact
      additive identity), so the fast path serves books of up to :data:`MAX_FAST_ASSETS`
      assets; larger books step through ``step_core`` itself (same results, NumPy speed).
    * ``np.maximum(x, c)`` is written ``c if x < c else x``, which also keeps a NaN.

Library rewards (exact classes, not subclasses) are restated as scalars; any other reward gets
the usual :class:`~envs.rewards.RewardContext` of one-row arrays, so custom rewards see exactly
what the batched core would give them.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np

from envs.execution import ExecutionConfig
from envs.market_core import (
    PORTFOLIO_CLIP,
    CoreParams,
    CoreState,
    MarketArrays,
    initial_state,
    portfolio_block,
    step_core,
)
from envs.rewards import (
    DifferentialSharpeReward,
    DrawdownPenaltyReward,
    ExcessBuyAndHoldReward,
    LogReturnReward,
    Reward,
    RewardContext,
    SortinoReward,
    TurnoverPenaltyReward,
)

__all__ = ["MAX_FAST_ASSETS", "ScalarActions", "ScalarCore", "ScalarState"]

# NumPy reduces contiguous rows of fewer than 8 float64 values left to right (pairwise_sum's
# short-block loop); from 8 on it interleaves accumulators, which a Python loop does not mimic.
MAX_FAST_ASSETS = 7
# Same floor as envs.market_core._RUIN_RATIO_FLOOR (log of a ruined book's value ratio).
_RUIN_RATIO_FLOOR = 1e-8

# Module-level names for the per-step calls of the scalar step and action map: a global
# lookup instead of a global plus an attribute lookup.
_isfinite = math.isfinite
_sqrt = math.sqrt
_np_log = np.log
_INT64 = np.int64

_LOG, _DSR, _SORTINO, _DRAWDOWN, _TURNOVER, _EXCESS, _GENERIC = range(7)
_REWARD_KINDS: dict[type, int] = {
    LogReturnReward: _LOG,
    DifferentialSharpeReward: _DSR,
    SortinoReward: _SORTINO,
    DrawdownPenaltyReward: _DRAWDOWN,
    TurnoverPenaltyReward: _TURNOVER,
    ExcessBuyAndHoldReward: _EXCESS,
}


class ScalarState:
    """State of one episode as Python numbers; the fields of :class:`CoreState` without ``B``.

    Lists hold one float per asset; ``pending`` holds ``latency - 1`` target lists (NaN = no
    order). ``reward_state`` maps names to floats for library rewards and to ``(1,)`` arrays
    for any other reward. :meth:`ScalarCore.step` updates the state in place.
    """

    __slots__ = (
        "cash",
        "end",
        "entry_price",
        "fees",
        "funding",
        "impact",
        "last_target",
        "peak",
        "pending",
        "reward_state",
        "spread",
        "steps",
        "t",
        "time_in_trade",
        "traded_notional",
        "trades",
        "units",
        "value",
    )

    t: int
    end: int
    steps: int
    cash: float
    units: list[float]
    entry_price: list[float]
    value: float
    peak: float
    time_in_trade: int
    last_target: list[float]
    pending: list[list[float]]
    fees: float
    spread: float
    impact: float
    funding: float
    trades: int
    traded_notional: float
    reward_state: dict[str, Any]

    def copy(self) -> ScalarState:
        """An independent copy (lists and reward arrays copied too)."""
        out = ScalarState()
        for name in self.__slots__:
            setattr(out, name, getattr(self, name))
        out.units = list(self.units)
        out.entry_price = list(self.entry_price)
        out.last_target = list(self.last_target)
        out.pending = [list(row) for row in self.pending]
        out.reward_state = {
            k: v.copy() if isinstance(v, np.ndarray) else v for k, v in self.reward_state.items()
        }
        return out

    def __getstate__(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.__slots__}

    def __setstate__(self, state: dict[str, Any]) -> None:
        for name, value in state.items():
            setattr(self, name, value)


class ScalarCore:
    """The step of one env on Python floats, equal bit for bit to ``step_core`` with ``B = 1``.

    Args:
        arrays: the precomputed market arrays (read into per-bar Python lists once).
        params: static step parameters.
        reward: the reward function.
    """

    def __init__(self, arrays: MarketArrays, params: CoreParams, reward: Reward) -> None:
        self.arrays = arrays
        self.params = params
        self.reward = reward
        self.n_assets = arrays.n_assets
        self.fast = self.n_assets <= MAX_FAST_ASSETS
        self.reward_kind = _REWARD_KINDS.get(type(reward), _GENERIC)
        # Per-bar rows as Python floats: indexing a list is ~20x cheaper than a NumPy scalar.
        self._open = arrays.open.tolist()
        self._close = arrays.close.tolist()
        self._sigma = arrays.sigma.tolist()
        self._volume = arrays.volume.tolist()
        self._bench = arrays.benchmark_log_return.tolist()
        # One asset: everything a step at fill bar s reads, in one tuple per bar: open and
        # close of s, sigma and volume of s - 1 (row 0 is never a fill bar: placeholders).
        self._bars1: list[tuple[float, float, float, float]] = []
        if self.n_assets == 1:
            self._bars1 = list(
                zip(
                    arrays.open[:, 0].tolist(),
                    arrays.close[:, 0].tolist(),
                    [0.0, *arrays.sigma[:-1, 0].tolist()],
                    [1.0, *arrays.volume[:-1, 0].tolist()],
                    strict=True,
                )
            )
        cfg = params.execution
        md = params.max_drawdown
        # Unpacked once per step; the per-bar factor and the drawdown threshold factor are
        # computed exactly as holding_cost (1.0 / bars_per_year) and step_core do.
        self._consts = (
            arrays.n_bars - 1,
            cfg.latency,
            cfg.lot_size,
            cfg.rebalance_band,
            cfg.min_notional,
            cfg.impact_k,
            cfg.taker_fee,
            cfg.half_spread,
            cfg.borrow_rate,
            cfg.margin_rate,
            1.0 / arrays.bars_per_year,
            None if md is None else 1.0 - md,
            params.window,
        )

    def __reduce__(self) -> tuple[Any, ...]:
        # Pickle the arrays, not the per-bar lists (rebuilt on load).
        return (ScalarCore, (self.arrays, self.params, self.reward))

    # --- state ------------------------------------------------------------------------------------
    def initial_state(self, start: int, end: int) -> ScalarState:
        """Fresh state of an episode with first decision bar ``start`` and last bar ``end``."""
        core = initial_state(
            self.arrays, self.params, self.reward, np.array([start]), np.array([end])
        )
        return self.from_core_state(core)

    def from_core_state(self, state: CoreState, row: int = 0) -> ScalarState:
        """Row ``row`` of a batched :class:`CoreState` as a :class:`ScalarState`."""
        out = ScalarState()
        out.t = int(state.t[row])
        out.end = int(state.end[row])
        out.steps = int(state.steps[row])
        out.cash = float(state.cash[row])
        out.units = state.units[row].tolist()
        out.entry_price = state.entry_price[row].tolist()
        out.value = float(state.value[row])
        out.peak = float(state.peak[row])
        out.time_in_trade = int(state.time_in_trade[row])
        out.last_target = state.last_target[row].tolist()
        out.pending = state.pending[row].tolist()
        out.fees = float(state.fees[row])
        out.spread = float(state.spread[row])
        out.impact = float(state.impact[row])
        out.funding = float(state.funding[row])
        out.trades = int(state.trades[row])
        out.traded_notional = float(state.traded_notional[row])
        if self.reward_kind == _GENERIC:
            out.reward_state = {k: v[row : row + 1].copy() for k, v in state.reward_state.items()}
        else:
            out.reward_state = {k: float(v[row]) for k, v in state.reward_state.items()}
        return out

    def to_core_state(self, state: ScalarState) -> CoreState:
        """The state as a batched :class:`CoreState` with ``B = 1`` (fresh arrays)."""
        n = self.n_assets
        lat = self.params.execution.latency
        if self.reward_kind == _GENERIC:
            rs = {k: np.array(v) for k, v in state.reward_state.items()}
        else:
            rs = {k: np.array([v], dtype=np.float64) for k, v in state.reward_state.items()}
        return CoreState(
            t=np.array([state.t], dtype=np.int64),
            end=np.array([state.end], dtype=np.int64),
            steps=np.array([state.steps], dtype=np.int64),
            cash=np.array([state.cash]),
            units=np.array([state.units], dtype=np.float64).reshape(1, n),
            entry_price=np.array([state.entry_price], dtype=np.float64).reshape(1, n),
            value=np.array([state.value]),
            peak=np.array([state.peak]),
            time_in_trade=np.array([state.time_in_trade], dtype=np.int64),
            last_target=np.array([state.last_target], dtype=np.float64).reshape(1, n),
            pending=np.array([state.pending], dtype=np.float64).reshape(1, lat - 1, n),
            fees=np.array([state.fees]),
            spread=np.array([state.spread]),
            impact=np.array([state.impact]),
            funding=np.array([state.funding]),
            trades=np.array([state.trades], dtype=np.int64),
            traded_notional=np.array([state.traded_notional]),
            reward_state=rs,
        )

    # --- step -------------------------------------------------------------------------------------
    def step(
        self, state: ScalarState, target: list[float]
    ) -> tuple[float, bool, bool, float, list[float], list[float]]:
        """Advance the episode by one bar, updating ``state`` in place.

        Args:
            state: the episode state (modified).
            target: ``N`` target exposures decided at bar ``state.t`` (already mapped and
                clipped, by :mod:`envs.execution` or :class:`ScalarActions`); kept as the
                state's ``last_target``, so the caller must not reuse the list.

        Returns:
            ``(reward, terminated, truncated, step_cost, block, exposure)``: the row's
            results of ``step_core``, then the next observation's portfolio block and
            exposures as :meth:`portfolio` gives them (computed on the way, for speed).
        """
        return self.step_function()(state, target)

    def step_function(
        self,
    ) -> Callable[[ScalarState, list[float]], tuple[float, bool, bool, float, list, list]]:
        """The bound implementation :meth:`step` dispatches to (callers in a loop keep it)."""
        if self.n_assets == 1:
            return self._step_one
        if self.fast:
            return self._step_many
        return self._step_batched

    def _step_one(
        self, state: ScalarState, target: list[float]
    ) -> tuple[float, bool, bool, float, list[float], list[float]]:
        """``step`` for one asset: the loops of :meth:`_step_many` unrolled (same arithmetic)."""
        (
            last_bar,
            latency,
            lot,
            band,
            min_notional,
            impact_k,
            taker_fee,
            half_spread,
            borrow_rate,
            margin_rate,
            per_bar,
            drawdown_factor,
            window,
        ) = self._consts
        s = state.t + 1
        if s > last_bar:
            s = last_bar
        if latency > 1:
            executed = state.pending[0][0]
            state.pending = [*state.pending[1:], target]
        else:
            executed = target[0]
        p, close, sigma, volume = self._bars1[s]  # sigma and volume of bar s - 1
        units = state.units
        u = units[0]
        prev_value = state.value
        prev_peak = state.peak

        # size_orders (a sum over one asset is that asset's term, exactly as in NumPy).
        value_col = state.cash + u * p
        q = 0.0
        if value_col > 0.0 and _isfinite(executed):
            if executed == 0.0:  # a target of exactly 0 always closes
                q = -u
            else:
                q = executed * value_col / p - u
                if lot > 0.0:
                    q = _trunc(q / lot) * lot
                keep = True
                if band > 0.0:
                    keep = abs(executed - u * p / value_col) >= band
                if min_notional > 0.0 and keep:
                    keep = abs(q) * p >= min_notional
                if not keep:
                    q = 0.0
        # order_costs: square-root impact (Almgren et al. 2005; Toth et al. 2011).
        notional = abs(q) * p
        impact = 0.0
        if notional:
            impact = impact_k * sigma * _sqrt(abs(q) / volume) * notional
        fee = taker_fee * notional
        spread = half_spread * notional
        trade_cost = fee + spread + impact
        cash = state.cash - q * p - trade_cost
        nu = u + q

        # Signs as (x > 0) - (x < 0) (a NaN has sign 0), written as branches: CPython 3.11
        # specialises a float comparison that feeds a jump, not one whose bool is kept.
        old_sign = 1 if u > 0.0 else (-1 if u < 0.0 else 0)
        new_sign = 1 if nu > 0.0 else (-1 if nu < 0.0 else 0)
        if new_sign == 0:
            entry = 0.0
        elif new_sign != old_sign:
            entry = p
        elif abs(nu) > abs(u):
            entry = (u * state.entry_price[0] + q * p) / nu
        else:
            entry = state.entry_price[0]

        # holding_cost on the book marked at the close, then the marked value.
        short_notional = (-nu if nu < 0.0 else 0.0) * close
        borrowed = -cash if cash < 0.0 else 0.0
        funding = (borrow_rate * short_notional + margin_rate * borrowed) * per_bar
        cash = cash - funding
        held = nu * close
        value = cash + held
        peak = value if prev_peak < value else prev_peak
        ratio = value / prev_value
        log_return = float(_np_log(_RUIN_RATIO_FLOOR if ratio < _RUIN_RATIO_FLOOR else ratio))
        cost = trade_cost + funding
        if self.reward_kind == _LOG:
            reward = log_return
        else:
            reward = self._reward(
                state, log_return, value, prev_value, peak, prev_peak, notional, cost, s, [nu]
            )

        tit = (state.time_in_trade + 1 if new_sign == old_sign else 1) if nu != 0.0 else 0
        terminated = value <= 0.0 or (
            drawdown_factor is not None and value < peak * drawdown_factor
        )
        truncated = s >= state.end and not terminated

        state.t = s
        state.steps += 1
        state.cash = cash
        # The one-element lists are updated in place (each state owns its lists: copy,
        # from_core_state and unpickling make new ones), saving two allocations per step.
        units[0] = nu
        state.entry_price[0] = entry
        state.value = value
        state.peak = peak
        state.time_in_trade = tit
        state.last_target = target
        state.fees += fee
        state.spread += spread
        state.impact += impact
        state.funding += funding
        if q != 0.0:
            state.trades += 1
        state.traded_notional += notional

        # portfolio_block at the new bar (value floored away from 0 as there).
        safe = value if abs(value) > 1e-12 else 1e-12
        exposure = held / safe
        cash_share = cash / safe
        upnl = nu * (close - entry) / safe
        last = target[0]
        block = [exposure, cash_share, upnl, tit / (tit + window), last]
        lim = PORTFOLIO_CLIP  # time in trade is in [0, 1); the rest may leave the bounds
        neg = -lim
        if (
            exposure < neg
            or exposure > lim
            or cash_share < neg
            or cash_share > lim
            or upnl < neg
            or upnl > lim
            or last < neg
            or last > lim
        ):  # near ruin only (a NaN is kept, as np.clip does, so it needs no clip)
            block = [neg if x < neg else (lim if x > lim else x) for x in block]
        return reward, terminated, truncated, cost, block, [exposure]

    def _step_many(
        self, state: ScalarState, target: list[float]
    ) -> tuple[float, bool, bool, float, list[float], list[float]]:
        """``step`` for ``2 <= N <= MAX_FAST_ASSETS`` assets (per-asset loops, sums in order)."""
        (
            last_bar,
            latency,
            lot,
            band,
            min_notional,
            impact_k,
            taker_fee,
            half_spread,
            borrow_rate,
            margin_rate,
            per_bar,
            drawdown_factor,
            _window,
        ) = self._consts
        s = state.t + 1
        if s > last_bar:
            s = last_bar
        if latency > 1:
            executed = state.pending[0]
            state.pending = [*state.pending[1:], target]
        else:
            executed = target
        price = self._open[s]
        sigma = self._sigma[s - 1]
        volume = self._volume[s - 1]
        close = self._close[s]
        n = self.n_assets
        old_units = state.units
        old_entry = state.entry_price
        prev_value = state.value
        prev_peak = state.peak

        # size_orders: value at the fill price, then per-asset orders.
        held = -0.0
        for i in range(n):
            held += old_units[i] * price[i]
        value_now = state.cash + held
        row_ok = value_now > 0.0
        value_col = 0.0 if value_now < 0.0 else value_now
        cur_denom = value_col if value_col > 0.0 else 1.0

        units: list[float] = []
        entry: list[float] = []
        sum_qp = sum_notional = sum_impact = -0.0
        n_trades = 0
        in_trade = False
        same_book = True
        for i in range(n):
            u = old_units[i]
            p = price[i]
            tg = executed[i]
            q = 0.0
            if row_ok and math.isfinite(tg):
                if tg == 0.0:  # a target of exactly 0 always closes
                    q = -u
                else:
                    q = tg * value_col / p - u
                    if lot > 0.0:
                        q = _trunc(q / lot) * lot
                    keep = True
                    if band > 0.0:
                        keep = abs(tg - u * p / cur_denom) >= band
                    if min_notional > 0.0 and keep:
                        keep = abs(q) * p >= min_notional
                    if not keep:
                        q = 0.0
            # order_costs: square-root impact (Almgren et al. 2005; Toth et al. 2011).
            size = abs(q)
            notional = size * p
            sum_notional += notional
            sum_impact += impact_k * sigma[i] * math.sqrt(size / volume[i]) * notional
            sum_qp += q * p
            nu = u + q
            units.append(nu)
            # Average entry price (see step_core): add -> average, flip/fresh -> fill price.
            old_sign = 1 if u > 0.0 else (-1 if u < 0.0 else 0)  # as in _step_one
            new_sign = 1 if nu > 0.0 else (-1 if nu < 0.0 else 0)
            if new_sign == 0:
                entry.append(0.0)
            elif new_sign != old_sign:
                entry.append(p)
            elif abs(nu) > abs(u):
                entry.append((u * old_entry[i] + q * p) / nu)
            else:
                entry.append(old_entry[i])
            if q != 0.0:
                n_trades += 1
            if nu != 0.0:
                in_trade = True
            if new_sign != old_sign:
                same_book = False

        fee = taker_fee * sum_notional
        spread = half_spread * sum_notional
        trade_cost = fee + spread + sum_impact
        cash = state.cash - sum_qp - trade_cost

        # holding_cost on the book marked at the close, then the marked value.
        short_notional = -0.0
        marked = -0.0
        for i in range(n):
            nu = units[i]
            c = close[i]
            short_notional += (-nu if nu < 0.0 else 0.0) * c
            marked += nu * c
        borrowed = -cash if cash < 0.0 else 0.0
        funding = (borrow_rate * short_notional + margin_rate * borrowed) * per_bar
        cash = cash - funding
        value = cash + marked
        peak = value if prev_peak < value else prev_peak
        ratio = value / prev_value
        log_return = float(np.log(_RUIN_RATIO_FLOOR if ratio < _RUIN_RATIO_FLOOR else ratio))
        cost = trade_cost + funding
        reward = self._reward(
            state, log_return, value, prev_value, peak, prev_peak, sum_notional, cost, s, units
        )

        tit = (state.time_in_trade + 1 if same_book else 1) if in_trade else 0
        terminated = value <= 0.0 or (
            drawdown_factor is not None and value < peak * drawdown_factor
        )
        truncated = s >= state.end and not terminated

        state.t = s
        state.steps += 1
        state.cash = cash
        state.units = units
        state.entry_price = entry
        state.value = value
        state.peak = peak
        state.time_in_trade = tit
        state.last_target = target
        state.fees += fee
        state.spread += spread
        state.impact += sum_impact
        state.funding += funding
        state.trades += n_trades
        state.traded_notional += sum_notional
        block, exposure = self.portfolio(state)
        return reward, terminated, truncated, cost, block, exposure

    def _reward(
        self,
        state: ScalarState,
        log_return: float,
        value: float,
        prev_value: float,
        peak: float,
        prev_peak: float,
        notional: float,
        cost: float,
        s: int,
        units: list[float],
    ) -> float:
        """The library rewards of :mod:`envs.rewards`, restated on floats (same order of ops)."""
        kind = self.reward_kind
        r = log_return
        rw = self.reward
        if kind == _LOG:
            return r
        if kind == _DSR:
            # Moody & Saffell (1998, 2001), as DifferentialSharpeReward.
            rs = state.reward_state
            a = rs["A"]
            b = rs["B"]
            d_a = r - a
            d_b = r * r - b
            var = b - a * a
            out = 0.0
            if var > rw.min_variance:
                out = (b * d_a - 0.5 * a * d_b) / float(np.power(var, 1.5))
            state.reward_state = {"A": a + rw.eta * d_a, "B": b + rw.eta * d_b}
            return out
        if kind == _SORTINO:
            down = -r
            return r - rw.downside_coef * (0.0 if down < 0.0 else down)
        if kind == _DRAWDOWN:
            deeper = (1.0 - value / peak) - (1.0 - prev_value / prev_peak)
            return r - rw.drawdown_coef * (0.0 if deeper < 0.0 else deeper)
        if kind == _TURNOVER:
            return r - rw.turnover_coef * (notional / prev_value)
        if kind == _EXCESS:
            return r - self._bench[s]
        close = self._close[s]
        safe = value if abs(value) > 1e-12 else 1e-12
        ctx = RewardContext(
            log_return=np.array([log_return]),
            value=np.array([value]),
            prev_value=np.array([prev_value]),
            peak=np.array([peak]),
            prev_peak=np.array([prev_peak]),
            turnover=np.array([notional / prev_value]),
            cost=np.array([cost]),
            benchmark_log_return=np.array([self._bench[s]]),
            exposure=np.array([[u * c / safe for u, c in zip(units, close, strict=True)]]),
        )
        out, new_state = rw(ctx, state.reward_state)
        state.reward_state = new_state
        return float(out[0])

    def _step_batched(
        self, state: ScalarState, target: list[float]
    ) -> tuple[float, bool, bool, float, list[float], list[float]]:
        """Large books: run ``step_core`` itself on a batch of one and copy the result back."""
        core = self.to_core_state(state)
        target_arr = np.array([target], dtype=np.float64)
        new, out = step_core(self.arrays, self.params, self.reward, core, target_arr)
        fresh = self.from_core_state(new)
        for name in ScalarState.__slots__:
            setattr(state, name, getattr(fresh, name))
        block, exposure = self.portfolio(state)
        return (
            float(out.reward[0]),
            bool(out.terminated[0]),
            bool(out.truncated[0]),
            float(out.step_cost[0]),
            block,
            exposure,
        )

    # --- observation pieces -----------------------------------------------------------------------
    def portfolio(self, state: ScalarState) -> tuple[list[float], list[float]]:
        """Portfolio block and unclipped exposures at the state's bar.

        Returns:
            ``(block, exposure)``: the ``2N + 3`` values of
            :func:`envs.market_core.portfolio_block` (clipped to +-PORTFOLIO_CLIP, as floats)
            and the exposure per asset before clipping (the info's ``position``).
        """
        close = self._close[state.t]
        v = state.value
        value = v if abs(v) > 1e-12 else 1e-12
        if not self.fast:  # NumPy's own (pairwise) sums for large books
            core = self.to_core_state(state)
            block = portfolio_block(core, self.arrays, self.params.window)[0].tolist()
            return block, (core.units[0] * np.asarray(close) / value).tolist()
        units = state.units
        entry = state.entry_price
        exposure: list[float] = []
        upnl = -0.0
        for i in range(self.n_assets):
            u = units[i]
            c = close[i]
            exposure.append(u * c / value)
            upnl += u * (c - entry[i])
        tit = state.time_in_trade
        block = [
            *exposure,
            state.cash / value,
            upnl / value,
            tit / (tit + self.params.window),
            *state.last_target,
        ]
        lim = PORTFOLIO_CLIP
        return [-lim if x < -lim else (lim if x > lim else x) for x in block], exposure


def _trunc(x: float) -> float:
    """``np.trunc`` on a float (keeps the sign of a zero result, as NumPy does)."""
    return math.copysign(float(math.trunc(x)), x)


class ScalarActions:
    """Scalar twin of :meth:`envs.market_env.MarketSetup.map_actions` for one plain action.

    Handles the common, valid cases (an integer index; a float array of the action space's
    shape with finite values) on Python floats, operation for operation as
    :func:`~envs.execution.discrete_to_target`, :func:`~envs.execution.continuous_to_target`
    and :func:`~envs.execution.weights_to_target`; :meth:`map` returns None for anything else,
    and the caller then uses the validating NumPy path (which also raises the errors).

    Args:
        action_mode: ``discrete``, ``continuous`` or ``weights``.
        positions: ``(K,)`` discrete target exposures (discrete mode), else None.
        config: execution limits.
        shape: shape of the action space.
        n_assets: number of assets ``N``.
    """

    def __init__(
        self,
        action_mode: str,
        positions: np.ndarray | None,
        config: ExecutionConfig,
        shape: tuple[int, ...] | None,
        n_assets: int,
    ) -> None:
        self.mode = action_mode
        self.enabled = n_assets <= MAX_FAST_ASSETS
        self.shape = shape
        self.low = -1.0 if config.allow_short else 0.0
        self.leverage = config.max_leverage
        self.positions: list[float] = []
        if positions is not None:
            # Masked shorts taken anyway go flat (discrete_to_target's np.maximum(target, 0)).
            self.positions = [
                p if config.allow_short or not p < 0.0 else 0.0 for p in positions.tolist()
            ]
        # Index -> target for the exact types a policy or a sampled space sends; a dict lookup
        # also does the range check (a negative index never hits), ~2x cheaper than map's.
        self._by_index = dict(enumerate(self.positions))

    def map_function(self) -> Callable[[Any], list[float] | None]:
        """The bound mapping equal to :meth:`map` for this mode (callers in a loop keep it)."""
        if self.enabled and self.mode == "discrete":
            return self._map_discrete
        if self.enabled and self.mode == "continuous" and self.shape == (1,):
            return self._map_continuous_one
        return self.map

    def _map_discrete(self, action: Any) -> list[float] | None:
        """:meth:`map` in discrete mode, with a shortcut for ``int`` and ``np.int64``."""
        kind = type(action)
        if kind is _INT64 or kind is int:
            p = self._by_index.get(action)
            if p is not None:
                return [p]
        return self.map(action)

    def _map_continuous_one(self, action: Any) -> list[float] | None:
        """:meth:`map` in continuous mode with one asset: the same operations, no loops."""
        if type(action) is np.ndarray and action.shape == (1,) and action.dtype.kind == "f":
            v = action.item()  # (one element: the float tolist()[0] gives, ~30 ns sooner)
            if _isfinite(v):
                low = self.low
                lev = self.leverage
                x = (low if v < low else (1.0 if v > 1.0 else v)) * lev
                gross = abs(x)  # map's sum from -0.0 of one term: the term (never -0.0)
                if gross > lev:  # _cap_gross: scale the book down to max_leverage
                    x = x * (lev / (1e-300 if gross < 1e-300 else gross))
                return [x]
        return self.map(action)

    def map(self, action: Any) -> list[float] | None:
        """Target exposures for ``action``, or None when the NumPy path must handle it."""
        if not self.enabled:
            return None
        if self.mode == "discrete":
            if isinstance(action, (int, np.integer)) and 0 <= action < len(self.positions):
                return [self.positions[action]]
            return None
        if type(action) is not np.ndarray or action.shape != self.shape:
            return None
        if action.dtype.kind != "f":
            return None
        values = action.tolist()
        for v in values:
            if not math.isfinite(v):
                return None
        low = self.low
        lev = self.leverage
        if self.mode == "continuous":
            target = [(low if v < low else (1.0 if v > 1.0 else v)) * lev for v in values]
            gross = -0.0
            for x in target:
                gross += abs(x)
            if gross > lev:  # _cap_gross: scale the book down to max_leverage
                scale = lev / (1e-300 if gross < 1e-300 else gross)
                target = [x * scale for x in target]
            return target
        assets = [low if v < low else (1.0 if v > 1.0 else v) for v in values[:-1]]
        c = values[-1]
        total = -0.0
        for x in assets:
            total += abs(x)
        total = total + (0.0 if c < 0.0 else (1.0 if c > 1.0 else c))
        safe = total if total > 0 else 1.0
        return [x / safe * lev for x in assets]
