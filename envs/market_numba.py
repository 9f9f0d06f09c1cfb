"""Compiled (Numba) :func:`envs.market_core.step_and_portfolio` for one-asset batches (issue 3).

At ``B = 1024`` the NumPy core costs ~100 calls of ~1 us whatever each computes; this kernel
loops over the envs once and does scalar arithmetic per env, writing fresh output arrays. It
restates :func:`envs.market_core._step` and ``_portfolio`` for ``N = 1`` operation by operation,
in the same order, with ``fastmath`` off, so every result is the same IEEE value:

* ``_row_sum`` of one asset is ``x + 0.0`` (turns ``-0.0`` into ``+0.0``); LLVM keeps that add
  without fastmath, so it is written out here too.
* ``np.maximum`` propagates NaN from either side: the branches here do the same (a NaN
  compares False).
* The log return is the one transcendental call: NumPy's SIMD ``np.log`` and libm's ``log``
  differ in the last bit for a fraction of inputs, so the kernel returns the floored value
  ratio and :func:`step_and_portfolio_numba` applies ``np.log`` to the ``(B,)`` array, exactly
  as the NumPy core does. ``sqrt`` is correctly rounded in both.

Supported configurations (:func:`unsupported_reason` names the first one that is not): one
asset, the ``log_return`` reward (exactly :class:`envs.rewards.LogReturnReward`), latency 1.
Every execution parameter (fees, spread, impact, funding, lot size, minimum notional, rebalance
band, leverage, shorting) and ``max_drawdown`` are supported. Numba is optional: this module
imports it when installed (the batched env imports this module only when it chooses a backend)
and :func:`numba_available` tells whether the kernels can be built.
:class:`FlatGather` is the compiled counterpart of the batch assembler's flat gather for the
plain market + portfolio layout; :class:`FlatStep` runs the step and that gather as one
compiled call (:func:`_step_observe`), the batched env's step for that layout.
``tests/test_market_numba.py`` pins all three to the NumPy path bit for bit. The per-env
helpers (:func:`_trade_and_mark`, :func:`_env_step`, :func:`_clip`) are inlined at Numba IR
level: left to LLVM, ``_trade_and_mark`` stayed an out-of-line call in the batched loop. In
:func:`_step_observe` and :func:`_step_one_asset` the inlined arithmetic runs in a loop LLVM
vectorises (SIMD lanes of envs; IEEE operations unchanged, no fastmath): the fill bars are
gathered in a loop of their own, outputs written as rows, scattered writes kept out, and this
module raises LLVM's limit on the runtime alias checks numba's arrays need
(``_VECTORISE_CHECKS``). Measured at 1024 envs under load: the fused step ~1.5x faster than
with the scalar loop, the kernel of :func:`step_and_portfolio_numba` ~1.9x.
:func:`single_step` is the single env's step on a state array (same scope; its Python side and
bit-identity notes are :mod:`envs.market_numba_single`; pinned to the python backend by
``tests/test_market_numba_single.py``); it shares :func:`_trade_and_mark` with the batched
kernel.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from envs.errors import ConfigError
from envs.market_core import (
    _RUIN_RATIO_FLOOR,
    PORTFOLIO_CLIP,
    CoreParams,
    CoreState,
    MarketArrays,
    StepOutput,
    StepTables,
)
from envs.observation import ObservationBuilder
from envs.rewards import LogReturnReward, Reward

__all__ = [
    "SINGLE_BLOCK",
    "SINGLE_CONSTS",
    "SINGLE_STATE_FIELDS",
    "SINGLE_STATE_SIZE",
    "FlatGather",
    "FlatStep",
    "choose_backend",
    "numba_available",
    "single_step",
    "single_step_dict",
    "step_and_portfolio_numba",
    "unsupported_reason",
]

try:  # optional dependency: without it the batched env uses the NumPy core
    import numba
except ImportError:  # pragma: no cover - exercised only where numba is missing
    numba = None

# How many runtime pointer-overlap comparisons LLVM's loop vectoriser may emit before it gives
# up on a loop. Numba cannot tell LLVM that the arrays of a kernel do not overlap, so LLVM
# versions a loop behind runtime checks of every written row against every other row; the
# arithmetic loop of _step_observe (~25 rows written, ~20 read) needs more than 512 of them
# (measured), above LLVM's default of 128, and ran scalar (~50 us at 1024 envs instead of
# ~16 us vectorised). The checks run once per loop entry, not per env. Vectorising a loop
# without fastmath does not reorder floating-point operations, so results are the same bits
# (tests/test_market_numba.py); the option is process-wide and only lets LLVM vectorise more
# loops of kernels compiled after this import (numba's on-disk cache keeps the compiled code).
_VECTORISE_CHECKS = 4096


def _allow_vectorising_checks(checks: int) -> bool:
    """Raise LLVM's ``vectorize-memory-check-threshold`` to ``checks``; whether it was set."""
    if numba is None:
        return False
    try:
        import llvmlite.binding as llvm

        llvm.set_option("", f"-vectorize-memory-check-threshold={int(checks)}")
    except Exception:  # pragma: no cover - an llvmlite without the option: kernels stay scalar
        return False
    return True


_allow_vectorising_checks(_VECTORISE_CHECKS)


def _jit(fn: Callable) -> Callable:
    """``numba.njit`` with the options every function here needs; identity without numba.

    ``fastmath`` off keeps IEEE semantics (no reassociation, ``x + 0.0`` kept); the ``numpy``
    error model makes a float division by zero give inf/NaN as in NumPy instead of raising
    (a ruined book divides by a zero value). Compiled on first call, cached on disk.
    """
    if numba is None:
        return fn
    return numba.njit(cache=True, fastmath=False, nogil=True, error_model="numpy")(fn)


def _jit_inline(fn: Callable) -> Callable:
    """:func:`_jit`, inlined into its callers at Numba IR level (``inline="always"``).

    For per-env helpers called in the batched loops: left to LLVM, a helper returning a long
    tuple was compiled as a call through memory and the batched step ran ~1.5x slower.
    """
    if numba is None:
        return fn
    return numba.njit(cache=True, fastmath=False, nogil=True, error_model="numpy", inline="always")(
        fn
    )


def numba_available() -> bool:
    """Whether ``numba`` is importable."""
    return numba is not None


def choose_backend(
    requested: str, fallback: str, arrays: MarketArrays, params: CoreParams, reward: Reward
) -> str:
    """The backend a market env runs: ``"numba"`` when asked for (or ``"auto"``) and possible.

    Args:
        requested: the env's ``backend`` argument (``"auto"``, ``"numba"`` or ``fallback``).
        fallback: the env's reference backend (``"python"`` single, ``"numpy"`` batched).
        arrays: the env's market arrays.
        params: its static step parameters.
        reward: its reward.

    Raises:
        ConfigError: ``requested == "numba"`` without numba installed, or on a setup the
            kernels do not support (:func:`unsupported_reason` names it).
    """
    if requested == fallback:
        return fallback
    if not numba_available():
        if requested == "numba":
            raise ConfigError("backend='numba' needs the numba package (pip install numba)")
        return fallback
    reason = unsupported_reason(arrays, params, reward)
    if reason is not None:
        if requested == "numba":
            raise ConfigError(f"backend='numba' does not support {reason}; use {fallback!r}")
        return fallback
    return "numba"


def unsupported_reason(arrays: MarketArrays, params: CoreParams, reward: Reward) -> str | None:
    """Why the kernel cannot step this configuration, or None when it can.

    Args:
        arrays: the market arrays of the env.
        params: its static step parameters.
        reward: its reward.

    Returns:
        A sentence naming the unsupported setting, or None.
    """
    if arrays.n_assets != 1:
        return f"{arrays.n_assets} assets (the numba kernel supports one asset)"
    if type(reward) is not LogReturnReward:
        return (
            f"reward {getattr(reward, 'name', type(reward).__name__)!r} (the numba kernel "
            "supports only reward='log_return')"
        )
    if params.execution.latency != 1:
        return f"latency={params.execution.latency} (the numba kernel supports latency=1)"
    return None


@_jit_inline
def _clip(x: float, bound: float) -> float:
    # np.clip(x, -bound, bound): NaN (which compares False) passes through.
    x = -bound if x < -bound else x
    return bound if x > bound else x


@_jit_inline
def _portfolio_row(
    held: float,
    cash: float,
    safe_value: float,
    close: float,
    entry: float,
    units: float,
    tit: int,
    window: int,
    executed: float,
    clip: float,
) -> tuple[float, float, float, float, float]:
    """One env's portfolio block after a batched step (``market_core._portfolio``), each value
    clipped like ``np.clip`` (NaN kept); ``+ 0.0`` turns a ``-0.0`` P&L into ``0.0`` as there."""
    upnl = close - entry
    upnl *= units
    return (
        _clip(held, clip),
        _clip(cash / safe_value, clip),
        _clip((upnl + 0.0) / safe_value, clip),
        _clip(float(tit) / float(tit + window), clip),
        _clip(executed, clip),
    )


@_jit_inline
def _trade_and_mark(
    price: float,
    close: float,
    k_sigma: float,
    volume: float,
    cash0: float,
    u0: float,
    entry0: float,
    executed: float,
    taker_fee: float,
    half_spread: float,
    borrow_rate: float,
    margin_rate: float,
    lot_size: float,
    min_notional: float,
    rebalance_band: float,
    inv_bars_per_year: float,
) -> tuple:
    """One env's sizing, costs, entry price and holding cost for one asset (``N = 1``).

    ``market_core._step`` restated on scalars, operation for operation (see the module doc);
    shared by the batched kernel and the single env's kernel (:mod:`envs.market_numba_single`).
    Returns ``(cash, units, entry, held, fee, spread, impact, traded, trade_cost, funding,
    same_sign, flat, moved)`` with ``cash`` after funding and ``held = units * close``.
    """
    # --- size_orders ----------------------------------------------------------------------
    marked = u0 * price
    book_value = cash0 + (marked + 0.0)
    positive = book_value > 0.0
    tradable = np.isfinite(executed) & positive
    safe_target = executed if tradable else 0.0
    # np.maximum(x, 0.0) as a branch: NaN (which compares False) passes through.
    value_col = 0.0 if book_value < 0.0 else book_value
    q = safe_target * value_col
    q /= price
    q -= u0
    if lot_size > 0.0:
        q /= lot_size
        q = np.trunc(q)
        q *= lot_size
    keep = tradable
    if rebalance_band > 0.0:
        marked /= book_value if positive else 1.0
        marked -= safe_target
        keep = keep & (abs(marked) >= rebalance_band)
    if min_notional > 0.0:
        keep = keep & (abs(q) * price >= min_notional)
    closing = (safe_target == 0.0) & tradable
    q = q if keep else 0.0
    q = -u0 if closing else q

    # --- order_costs ----------------------------------------------------------------------
    size = abs(q)
    notional = size * price
    size /= volume
    size = np.sqrt(size)
    impact_n = k_sigma * size
    impact_n *= notional
    traded = notional
    fee = taker_fee * traded
    spread = half_spread * traded
    trade_cost = fee + spread
    trade_cost += impact_n

    paid = q * price
    cash = cash0 - (paid + 0.0)
    cash -= trade_cost
    units = u0 + q

    # --- entry price ----------------------------------------------------------------------
    # np.sign(x) == np.sign(y): both not NaN (NaN's sign equals nothing) and in the same
    # class of > 0, < 0, == 0. Comparisons combined with & rather than branches: under
    # random actions every branch here is unpredictable.
    same_sign = (
        ((units > 0.0) == (u0 > 0.0))
        & ((units < 0.0) == (u0 < 0.0))
        & (units == units)
        & (u0 == u0)
    )
    flat = units == 0.0
    adding = (abs(units) > abs(u0)) & same_sign
    averaged = u0 * entry0
    averaged += paid
    averaged /= 1.0 if flat else units
    entry = averaged if adding else entry0
    entry = entry if same_sign else price
    entry = 0.0 if flat else entry

    # --- holding_cost ---------------------------------------------------------------------
    short = 0.0 if units > 0.0 else -units
    short *= close
    borrowed = 0.0 if cash > 0.0 else -cash
    borrowed *= margin_rate
    funding = borrow_rate * (short + 0.0)
    funding += borrowed
    funding *= inv_bars_per_year
    cash -= funding
    held = units * close
    moved = np.int64(q != 0.0)
    return (
        cash,
        units,
        entry,
        held,
        fee,
        spread,
        impact_n,
        traded,
        trade_cost,
        funding,
        same_sign,
        flat,
        moved,
    )


@_jit_inline
def _env_step(
    price: float,
    close: float,
    k_sigma: float,
    volume: float,
    cash0: float,
    u0: float,
    entry0: float,
    value0: float,
    peak0: float,
    tit0: int,
    executed: float,
    taker_fee: float,
    half_spread: float,
    borrow_rate: float,
    margin_rate: float,
    lot_size: float,
    min_notional: float,
    rebalance_band: float,
    inv_bars_per_year: float,
    has_drawdown: bool,
    drawdown_keep: float,
    ratio_floor: float,
) -> tuple:
    """One env of the batched step (``market_core._step`` for ``N = 1``), on scalars.

    Shared by :func:`_step_one_asset` and :func:`_step_observe` (one definition of the
    arithmetic, compiled into each loop). Returns ``(cash, units, entry, value, peak, tit,
    fee, spread, impact, traded, moved, cost, ratio, terminated, held, safe_value)`` with
    ``held`` the unclipped exposure (held value over the floored value).
    """
    (
        cash,
        units,
        entry,
        held,
        fee,
        spread,
        impact_n,
        traded,
        trade_cost,
        funding,
        same_sign,
        flat,
        moved,
    ) = _trade_and_mark(
        price,
        close,
        k_sigma,
        volume,
        cash0,
        u0,
        entry0,
        executed,
        taker_fee,
        half_spread,
        borrow_rate,
        margin_rate,
        lot_size,
        min_notional,
        rebalance_band,
        inv_bars_per_year,
    )
    value = cash + (held + 0.0)
    peak = peak0 if (peak0 >= value) | (peak0 != peak0) else value
    ratio = value / value0
    ratio = ratio_floor if ratio < ratio_floor else ratio
    safe_value = value if abs(value) > 1e-12 else 1e-12
    held /= safe_value
    cost = trade_cost + funding
    tit = tit0 + 1 if same_sign else 1
    tit = 0 if flat else tit
    term = value <= 0.0
    if has_drawdown:
        term = term | (value < peak * drawdown_keep)
    return (
        cash,
        units,
        entry,
        value,
        peak,
        tit,
        fee,
        spread,
        impact_n,
        funding,
        traded,
        moved,
        cost,
        ratio,
        term,
        held,
        safe_value,
    )


@_jit
def _step_one_asset(
    bars: np.ndarray,
    n_bars: int,
    t: np.ndarray,
    end: np.ndarray,
    steps: np.ndarray,
    cash_old: np.ndarray,
    units_old: np.ndarray,
    entry_old: np.ndarray,
    value_old: np.ndarray,
    peak_old: np.ndarray,
    tit_old: np.ndarray,
    fees_old: np.ndarray,
    spread_old: np.ndarray,
    impact_old: np.ndarray,
    funding_old: np.ndarray,
    trades_old: np.ndarray,
    notional_old: np.ndarray,
    target: np.ndarray,
    taker_fee: float,
    half_spread: float,
    borrow_rate: float,
    margin_rate: float,
    lot_size: float,
    min_notional: float,
    rebalance_band: float,
    inv_bars_per_year: float,
    has_drawdown: bool,
    drawdown_keep: float,
    window: int,
    ratio_floor: float,
    clip: float,
) -> tuple:
    batch = t.shape[0]
    # Few output arrays, rows of which become the new state's fields: each array returned to
    # Python is a boxing of ~0.3-0.5 us, 21 separate ones cost more than the arithmetic of
    # 100 envs.
    floats = np.empty((13, batch))
    ints = np.empty((5, batch), np.int64)
    flags = np.empty((2, batch), np.bool_)
    rows = np.empty((5, batch))  # the block as rows while the vectorised loop writes it
    last = n_bars - 1
    # The fill bars gathered first, so that the arithmetic loop only reads and writes at [i]
    # and LLVM vectorises it (as in _step_observe; see _VECTORISE_CHECKS).
    fill = np.empty((4, batch))
    for i in range(batch):
        s = min(t[i] + 1, last)
        ints[0, i] = s
        fill[0, i] = bars[0, s, 0]
        fill[1, i] = bars[1, s, 0]
        fill[2, i] = bars[2, s, 0]
        fill[3, i] = bars[3, s, 0]
    for i in range(batch):
        s = ints[0, i]
        executed = target[i, 0]
        (
            cash,
            units,
            entry,
            value,
            peak,
            tit,
            fee,
            spread,
            impact_n,
            funding,
            traded,
            moved,
            cost,
            ratio,
            term,
            held,
            safe_value,
        ) = _env_step(
            fill[0, i],
            fill[1, i],
            fill[2, i],
            fill[3, i],
            cash_old[i],
            units_old[i, 0],
            entry_old[i, 0],
            value_old[i],
            peak_old[i],
            tit_old[i],
            executed,
            taker_fee,
            half_spread,
            borrow_rate,
            margin_rate,
            lot_size,
            min_notional,
            rebalance_band,
            inv_bars_per_year,
            has_drawdown,
            drawdown_keep,
            ratio_floor,
        )
        floats[0, i] = cash
        floats[1, i] = units
        floats[2, i] = entry
        floats[3, i] = value
        floats[4, i] = peak
        floats[5, i] = fees_old[i] + fee
        floats[6, i] = spread_old[i] + spread
        floats[7, i] = impact_old[i] + impact_n
        floats[8, i] = funding_old[i] + funding
        floats[9, i] = notional_old[i] + traded
        floats[10, i] = ratio
        floats[11, i] = cost
        floats[12, i] = held
        ints[1, i] = steps[i] + 1
        ints[2, i] = tit
        ints[3, i] = trades_old[i] + moved
        ints[4, i] = moved
        flags[0, i] = term
        flags[1, i] = (s >= end[i]) & (not term)

        b0, b1, b2, b3, b4 = _portfolio_row(
            held, cash, safe_value, fill[1, i], entry, units, tit, window, executed, clip
        )
        rows[0, i] = b0
        rows[1, i] = b1
        rows[2, i] = b2
        rows[3, i] = b3
        rows[4, i] = b4
    block = np.empty((batch, 5))
    for i in range(batch):
        for j in range(5):
            block[i, j] = rows[j, i]
    return floats, ints, flags, block


def step_and_portfolio_numba(
    arrays: MarketArrays,
    params: CoreParams,
    reward: Reward,
    state: CoreState,
    target: np.ndarray,
    tables: StepTables,
) -> tuple[CoreState, StepOutput, np.ndarray, np.ndarray]:
    """:func:`envs.market_core.step_and_portfolio` through the compiled kernel (same bits).

    Only for configurations :func:`unsupported_reason` accepts (the caller checks, once).

    Args:
        arrays: the precomputed market arrays.
        params: static parameters.
        reward: the reward (a :class:`envs.rewards.LogReturnReward`).
        state: current state (not modified).
        target: ``(B, 1)`` float64 target exposures.
        tables: :func:`envs.market_core.step_tables` of ``arrays`` and ``params``.

    Returns:
        The new state, the step's outputs, the ``(B, 5)`` portfolio block of the new state and
        its unclipped ``(B, 1)`` exposures.
    """
    cfg = params.execution
    dd = params.max_drawdown
    floats, ints, flags, block = _step_one_asset(
        tables.bars,
        arrays.n_bars,
        state.t,
        state.end,
        state.steps,
        state.cash,
        state.units,
        state.entry_price,
        state.value,
        state.peak,
        state.time_in_trade,
        state.fees,
        state.spread,
        state.impact,
        state.funding,
        state.trades,
        state.traded_notional,
        target,
        float(cfg.taker_fee),
        float(cfg.half_spread),
        float(cfg.borrow_rate),
        float(cfg.margin_rate),
        float(cfg.lot_size),
        float(cfg.min_notional),
        float(cfg.rebalance_band),
        1.0 / arrays.bars_per_year,
        dd is not None,
        1.0 - dd if dd is not None else 1.0,
        int(params.window),
        _RUIN_RATIO_FLOOR,
        PORTFOLIO_CLIP,
    )
    # The log outside the kernel: NumPy's np.log, as the core applies it (see the module doc).
    ratio = floats[10]
    reward_values = np.log(ratio, out=ratio)
    new_state = CoreState(
        t=ints[0],
        end=state.end,
        steps=ints[1],
        cash=floats[0],
        units=floats[1][:, None],
        entry_price=floats[2][:, None],
        value=floats[3],
        peak=floats[4],
        time_in_trade=ints[2],
        last_target=target,
        pending=state.pending,
        fees=floats[5],
        spread=floats[6],
        impact=floats[7],
        funding=floats[8],
        trades=ints[3],
        traded_notional=floats[9],
        reward_state=state.reward_state,
    )
    out = StepOutput(
        reward=reward_values,
        terminated=flags[0],
        truncated=flags[1],
        step_cost=floats[11],
        trades=ints[4],
    )
    return new_state, out, block, floats[12][:, None]


# --- the single env's kernel (envs.market_numba_single.SingleKernel calls it) -------------------
# It lives in this file with _trade_and_mark and its layout constants because numba's on-disk
# cache is invalidated only by changes to the file defining the cached function, and it freezes
# global constants at compile time ("Cache limitations" in numba's caching notes): a kernel in
# another file would keep running a stale copy of edited code here.

# Layout of the single env's state array: the ScalarState fields of a one-asset, latency-1
# episode (integers as float64, exact below 2**53), then the portfolio block of the current
# state (written by the kernel; read by Python only for observation layouts other than the flat
# market + portfolio one the kernel fills itself).
SINGLE_STATE_FIELDS = (
    "t",
    "end",
    "steps",
    "cash",
    "units",
    "entry_price",
    "value",
    "peak",
    "time_in_trade",
    "last_target",
    "fees",
    "spread",
    "impact",
    "funding",
    "trades",
    "traded_notional",
)
(
    _T,
    _END,
    _STEPS,
    _CASH,
    _UNITS,
    _ENTRY,
    _VALUE,
    _PEAK,
    _TIT,
    _LAST,
    _FEES,
    _SPREAD,
    _IMPACT,
    _FUNDING,
    _TRADES,
    _NOTIONAL,
) = range(len(SINGLE_STATE_FIELDS))
_B0 = len(SINGLE_STATE_FIELDS)
SINGLE_BLOCK = slice(_B0, _B0 + 5)
SINGLE_STATE_SIZE = _B0 + 5
# Layout of the single kernel's constants array (float64).
SINGLE_CONSTS = (
    "last_bar",
    "taker_fee",
    "half_spread",
    "borrow_rate",
    "margin_rate",
    "lot_size",
    "min_notional",
    "rebalance_band",
    "per_bar",
    "has_drawdown",
    "drawdown_keep",
    "window",
    "lo",
    "n_short",
    "given0",
    "span_step",
)
(
    _C_LAST_BAR,
    _C_TAKER,
    _C_HALF_SPREAD,
    _C_BORROW,
    _C_MARGIN,
    _C_LOT,
    _C_MIN_NOTIONAL,
    _C_BAND,
    _C_PER_BAR,
    _C_HAS_DD,
    _C_DD_KEEP,
    _C_WINDOW,
    _C_LO,
    _C_N_SHORT,
    _C_GIVEN0,
    _C_SPAN_STEP,
) = range(len(SINGLE_CONSTS))
_N_CONSTS = len(SINGLE_CONSTS)


@_jit
def _single_update(
    st: np.ndarray, tables: np.ndarray, position: np.ndarray, target: float
) -> tuple:
    """The step of :func:`single_step` and :func:`single_step_dict` up to the observation.

    Updates ``st`` in place and writes the unclipped exposure into ``position[0]``; returns
    ``(s, ratio, cost, terminated, truncated, value, cash, fees, spread, impact, funding,
    trades, b0, b1, b2, b3, b4)`` with ``b*`` the clipped portfolio block (also written into
    ``st``).
    """
    s = np.int64(st[_T]) + 1
    consts = tables  # the constants come first (SINGLE_CONSTS), then 4 values per bar
    last_bar = np.int64(consts[_C_LAST_BAR])
    if s > last_bar:
        s = last_bar
    row = _N_CONSTS + 4 * s
    price = tables[row]
    close = tables[row + 1]
    prev_value = st[_VALUE]
    prev_peak = st[_PEAK]
    (
        cash,
        units,
        entry,
        held,
        fee,
        spread,
        impact,
        traded,
        trade_cost,
        funding,
        same_sign,
        flat,
        moved,
    ) = _trade_and_mark(
        price,
        close,
        tables[row + 2],
        tables[row + 3],
        st[_CASH],
        st[_UNITS],
        st[_ENTRY],
        target,
        consts[_C_TAKER],
        consts[_C_HALF_SPREAD],
        consts[_C_BORROW],
        consts[_C_MARGIN],
        consts[_C_LOT],
        consts[_C_MIN_NOTIONAL],
        consts[_C_BAND],
        consts[_C_PER_BAR],
    )
    # From here on as ScalarCore._step_one writes it (see the module doc).
    value = cash + held
    peak = value if prev_peak < value else prev_peak
    ratio = value / prev_value
    ratio = _RUIN_RATIO_FLOOR if ratio < _RUIN_RATIO_FLOOR else ratio
    cost = trade_cost + funding
    tit = 0.0
    if not flat:
        tit = st[_TIT] + 1.0 if same_sign else 1.0
    terminated = value <= 0.0
    if consts[_C_HAS_DD] != 0.0:
        terminated = terminated or value < peak * consts[_C_DD_KEEP]
    truncated = s >= st[_END] and not terminated

    st[_T] = s
    st[_STEPS] += 1.0
    st[_CASH] = cash
    st[_UNITS] = units
    st[_ENTRY] = entry
    st[_VALUE] = value
    st[_PEAK] = peak
    st[_TIT] = tit
    st[_LAST] = target
    fees = st[_FEES] + fee
    st[_FEES] = fees
    spreads = st[_SPREAD] + spread
    st[_SPREAD] = spreads
    impacts = st[_IMPACT] + impact
    st[_IMPACT] = impacts
    fundings = st[_FUNDING] + funding
    st[_FUNDING] = fundings
    trades = st[_TRADES] + moved
    st[_TRADES] = trades
    st[_NOTIONAL] += traded

    # portfolio_block at the new bar (value floored away from 0), clipped as np.clip.
    safe = value if abs(value) > 1e-12 else 1e-12
    exposure = held / safe
    position[0] = exposure
    b0 = _clip(exposure, PORTFOLIO_CLIP)
    b1 = _clip(cash / safe, PORTFOLIO_CLIP)
    b2 = _clip(units * (close - entry) / safe, PORTFOLIO_CLIP)
    b3 = _clip(tit / (tit + consts[_C_WINDOW]), PORTFOLIO_CLIP)
    b4 = _clip(target, PORTFOLIO_CLIP)
    st[_B0] = b0
    st[_B0 + 1] = b1
    st[_B0 + 2] = b2
    st[_B0 + 3] = b3
    st[_B0 + 4] = b4

    return (
        s,
        ratio,
        cost,
        terminated,
        truncated,
        value,
        cash,
        fees,
        spreads,
        impacts,
        fundings,
        np.int64(trades),
        b0,
        b1,
        b2,
        b3,
        b4,
    )


@_jit
def single_step(
    st: np.ndarray,
    tables: np.ndarray,
    source: np.ndarray,
    obs: np.ndarray,
    position: np.ndarray,
    target: float,
) -> tuple:
    """One step of one single-env episode; ``st`` (:data:`SINGLE_STATE_FIELDS`) is updated.

    :class:`envs.market_numba_single.SingleKernel` prepares the arguments and documents the
    bit-identity with :meth:`envs.market_fast.ScalarCore._step_one`.

    ``tables`` is the constants (:data:`SINGLE_CONSTS`), then per bar ``s`` four values: open
    and close of ``s``, ``impact_k * sigma`` and volume of ``s - 1``
    (:func:`envs.market_core.step_tables`); one array where two cost one more argument
    conversion per call (~25 ns). ``obs`` receives the flat observation (span ``r`` of the
    assembler, ``source[r * span_step : r * span_step + given0]``, then the block) when the
    layout allows (``n_short > 0``) and the bar has a full span; the last value returned
    says whether it did. ``position[0]`` receives the unclipped exposure.

    Returns:
        ``(ratio, cost, terminated, truncated, value, cash, fees, spread, impact, funding,
        trades, filled)``.
    """
    (
        s,
        ratio,
        cost,
        terminated,
        truncated,
        value,
        cash,
        fees,
        spreads,
        impacts,
        fundings,
        trades,
        b0,
        b1,
        b2,
        b3,
        b4,
    ) = _single_update(st, tables, position, target)
    consts = tables
    r = s - np.int64(consts[_C_LO])
    filled = 0 <= r < np.int64(consts[_C_N_SHORT])
    if filled:
        g = np.int64(consts[_C_GIVEN0])
        # Two contiguous 1-D runs: LLVM vectorises the copy.
        src = source[r * np.int64(consts[_C_SPAN_STEP]) :]
        for j in range(g):
            obs[j] = src[j]
        obs[g] = np.float32(b0)
        obs[g + 1] = np.float32(b1)
        obs[g + 2] = np.float32(b2)
        obs[g + 3] = np.float32(b3)
        obs[g + 4] = np.float32(b4)
    return (
        ratio,
        cost,
        terminated,
        truncated,
        value,
        cash,
        fees,
        spreads,
        impacts,
        fundings,
        trades,
        filled,
    )


@_jit
def single_step_dict(
    st: np.ndarray,
    tables: np.ndarray,
    source: np.ndarray,
    window: np.ndarray,
    portfolio: np.ndarray,
    position: np.ndarray,
    target: float,
) -> tuple:
    """:func:`single_step` for the Dict layout of just ``market`` and ``portfolio``.

    ``source`` is the ``(T * F,)`` market features (row ``t`` at ``t * span_step``);
    ``window`` (a fresh ``(W, F)`` float32 array) receives rows ``s - W + 1 .. s`` and
    ``portfolio`` (fresh, ``(5,)`` float32) the block, as the bar assembler's Dict branch
    fills them. Returns what :func:`single_step` returns (``filled``: always, for bars with a
    full window).
    """
    (
        s,
        ratio,
        cost,
        terminated,
        truncated,
        value,
        cash,
        fees,
        spreads,
        impacts,
        fundings,
        trades,
        b0,
        b1,
        b2,
        b3,
        b4,
    ) = _single_update(st, tables, position, target)
    first = s - np.int64(tables[_C_LO])
    size = window.size
    start = first * np.int64(tables[_C_SPAN_STEP])
    filled = first >= 0 and start + size <= source.size
    if filled:
        dst = window.reshape(size)
        src = source[start:]
        for j in range(size):
            dst[j] = src[j]
        portfolio[0] = np.float32(b0)
        portfolio[1] = np.float32(b1)
        portfolio[2] = np.float32(b2)
        portfolio[3] = np.float32(b3)
        portfolio[4] = np.float32(b4)
    return (
        ratio,
        cost,
        terminated,
        truncated,
        value,
        cash,
        fees,
        spreads,
        impacts,
        fundings,
        trades,
        filled,
    )


@_jit
def _gather_flat(
    flat: np.ndarray,
    step: int,
    rows: np.ndarray,
    window_width: int,
    block: np.ndarray,
    low: np.float32,
    high: np.float32,
    clip: bool,
) -> np.ndarray:
    batch = rows.shape[0]
    width = block.shape[1]
    out = np.empty((batch, window_width + width), np.float32)
    for i in range(batch):
        dst = out[i]
        src = flat[rows[i] * step : rows[i] * step + window_width]
        # An explicit loop over two contiguous 1-D views: LLVM vectorises it (a slice
        # assignment compiled to a scalar loop and ran at half NumPy's speed).
        for j in range(window_width):
            dst[j] = src[j]
        for j in range(width):
            x = np.float32(block[i, j])  # the float64 -> float32 cast of the assignment
            if clip:  # np.clip with float32 bounds; NaN (which compares False) passes through
                x = low if x < low else x
                x = high if x > high else x
            dst[window_width + j] = x
    return out


class FlatGather:
    """The flat observations of :meth:`ObservationBuilder.batch_assembler`, gathered compiled.

    For the layout the market envs build without predictor blocks (``market`` window first,
    ``portfolio`` last, flattened), one loop copies each row's window as a contiguous run of
    the assembler's pre-clipped, zero-padded source (its ``spans``) and writes the clipped
    portfolio block after it: the same float32 values as the assembler, ~20-25% faster at
    1024 envs (measured 53 vs 70 us for a fresh 2 MB output; memory-bound either way). Returns
    fresh arrays. Construct with :meth:`build`, which returns None for every other layout.
    Pickles as its assembler and builder (the views are rebuilt, not copied).
    """

    def __init__(self, assemble: Callable, builder: ObservationBuilder, window: int) -> None:
        self.assemble = assemble
        self.builder = builder
        self.window = window
        self._derive()

    def _derive(self) -> None:
        spans = self.assemble.spans
        bounds = self.assemble.given_bounds
        self.spans = spans
        self.lo = self.window - 1
        self.n_rows = spans.shape[0]
        # The 1-D source the spans view: row r starts at r * step.
        self.flat = self.assemble.padded_source
        self.step = spans.strides[0] // spans.itemsize
        self.window_width = self.builder.flat_slices["market"].stop
        self.block_width = spans.shape[1] - self.window_width
        self.clip = bounds is not None
        low, high = bounds if bounds is not None else (0.0, 0.0)
        self.low = np.float32(low)
        self.high = np.float32(high)

    def __getstate__(self) -> dict:
        return {"assemble": self.assemble, "builder": self.builder, "window": self.window}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._derive()

    @classmethod
    def build(
        cls, assemble: Callable, builder: ObservationBuilder, window: int
    ) -> FlatGather | None:
        """A gather for ``assemble`` of ``builder``, or None when the layout is not supported.

        Supported: numba importable, flat observations of exactly the blocks ``market`` then
        ``portfolio``, and an assembler exposing its ``spans``, the ``padded_source`` they view
        and ``given_bounds``.
        """
        if numba is None or not builder.flatten or builder.block_names != ("market", "portfolio"):
            return None
        spans = getattr(assemble, "spans", None)
        market = builder.flat_slices["market"]
        given = builder.flat_slices["portfolio"]
        if (
            spans is None
            or getattr(assemble, "padded_source", None) is None
            or not hasattr(assemble, "given_bounds")
            or spans.dtype != np.float32
            or spans.ndim != 2
            or spans.shape[1] != builder.flat_dim
            or spans.strides[1] != spans.itemsize
            or spans.strides[0] % spans.itemsize
            or market.start != 0
            or market.stop != given.start
            or given.stop != builder.flat_dim
        ):
            return None
        return cls(assemble, builder, window)

    def __call__(self, t: np.ndarray, block: np.ndarray) -> np.ndarray:
        """Observations at bars ``t`` with portfolio block ``block`` (as ``assemble(t, block)``)."""
        rows = t - self.lo
        # Anything unusual, bars outside the data included, goes through the assembler (which
        # raises its DataError); one unsigned comparison checks both ends, as it does.
        if (
            rows.dtype != np.int64
            or block.dtype != np.float64
            or block.shape != (t.shape[0], self.block_width)
            or np.count_nonzero(rows.view(np.uint64) >= self.n_rows)
        ):
            return self.assemble(t, block)
        return _gather_flat(
            self.flat, self.step, rows, self.window_width, block, self.low, self.high, self.clip
        )


# Layout of the fused kernel's constants array (float64), built once by FlatStep.
(
    _F_LAST_BAR,
    _F_TAKER,
    _F_HALF_SPREAD,
    _F_BORROW,
    _F_MARGIN,
    _F_LOT,
    _F_MIN_NOTIONAL,
    _F_BAND,
    _F_PER_BAR,
    _F_HAS_DD,
    _F_DD_KEEP,
    _F_N_CONSTS,
) = range(12)
# Rows of the fused kernel's float output: the state's float fields, the six the info copies
# first (one contiguous block, copied by one call), then the step's outputs. Rows 0-9 are read
# back as the next step's inputs.
_FLOAT_ROWS = 13
(
    _R_VALUE,
    _R_CASH,
    _R_FEES,
    _R_SPREAD,
    _R_IMPACT,
    _R_FUNDING,
    _R_UNITS,
    _R_ENTRY,
    _R_PEAK,
    _R_NOTIONAL,
    _R_RATIO,
    _R_COST,
    _R_EXPOSURE,
) = range(_FLOAT_ROWS)
_N_INFO = 6  # value, cash, fees, spread, impact, funding: the info's copies of the state
# Rows of its int output: t, steps, time in trade, trades (state), then trades this step.
_INT_ROWS = 5


@_jit
def _step_observe(
    bars: np.ndarray,
    consts: np.ndarray,
    prev_f: np.ndarray,
    prev_i: np.ndarray,
    end: np.ndarray,
    target: np.ndarray,
    actions: np.ndarray,
    targets_of: np.ndarray,
    resetting: np.ndarray,
    equity: np.ndarray,
    window: int,
    flat: np.ndarray,
    step: int,
    lo: int,
    n_rows: int,
    window_width: int,
    low: np.float32,
    high: np.float32,
    clip_obs: bool,
    order: np.ndarray,
) -> tuple:
    """:func:`_step_one_asset` and :func:`_gather_flat` in one call (see :class:`FlatStep`).

    ``bars`` is ``(T, 4)``: open, close, ``impact_k * sigma`` and volume per fill bar (one
    cache line per bar instead of four); ``prev_f``/``prev_i`` the float/int rows of the
    previous call's outputs (or of a packed state). Writes each env's new state and outputs
    into fresh arrays, its equity slot (not for ``resetting`` rows, whose episode is over) and
    its flat observation (window run of ``flat``, then the portfolio block as float32).
    Observations are written in the env order ``order`` (any permutation of the envs).

    With ``actions`` (``(B,)`` int64 indices) non-empty, the targets are
    ``targets_of[actions]`` (``target`` is ignored); an index outside ``targets_of`` stops the
    call before anything is written (``n_outside == -1``), so the caller can map the actions
    the slow way (and raise its errors).

    Four loops: the fill bars gathered into rows, the arithmetic (only row accesses at
    ``[i]``, so LLVM vectorises it, see ``_VECTORISE_CHECKS``), the equity slots (a scatter),
    then the observations. Bit for bit the per-env arithmetic of :func:`_env_step`.

    Returns ``(floats, ints, flags, obs, n_done, n_outside, sorted, target)``; rows whose bar
    has no full span (``n_outside > 0``, never in a valid episode) are left for the caller's
    assembler; ``sorted`` says whether ``order`` visited the new bars in ascending order;
    ``target`` is the ``(B, 1)`` targets stepped with (fresh when mapped from ``actions``).
    """
    batch = end.shape[0]
    if actions.shape[0]:
        # The discrete fast path of the env's _targets, here to save its three array calls
        # (~5 us at 1024 envs): all indices checked before any write.
        n_targets = targets_of.shape[0]
        for i in range(batch):
            if actions[i] < 0 or actions[i] >= n_targets:
                return (
                    np.empty((0, 0)),
                    np.empty((0, 0), np.int64),
                    np.empty((0, 0), np.bool_),
                    np.empty((0, 0), np.float32),
                    0,
                    -1,
                    False,
                    target,
                )
        target = np.empty((batch, 1))
        for i in range(batch):
            target[i, 0] = targets_of[actions[i], 0]
    floats = np.empty((_FLOAT_ROWS, batch))
    ints = np.empty((_INT_ROWS, batch), np.int64)
    flags = np.empty((3, batch), np.bool_)
    width = window_width + 5
    obs = np.empty((batch, width), np.float32)
    last = np.int64(consts[_F_LAST_BAR])
    taker_fee = consts[_F_TAKER]
    half_spread = consts[_F_HALF_SPREAD]
    borrow_rate = consts[_F_BORROW]
    margin_rate = consts[_F_MARGIN]
    lot_size = consts[_F_LOT]
    min_notional = consts[_F_MIN_NOTIONAL]
    rebalance_band = consts[_F_BAND]
    per_bar = consts[_F_PER_BAR]
    has_drawdown = consts[_F_HAS_DD] != 0.0
    drawdown_keep = consts[_F_DD_KEEP]
    n_equity = equity.shape[0]
    n_done = 0
    n_outside = 0
    sorted_ = True
    block = np.empty((5, batch))  # rows, as every array the arithmetic loop writes
    # --- the fill bars of every env, gathered first ----------------------------------------------
    # Apart from the arithmetic: its loop then reads and writes only rows at [i] (no index read
    # from memory), which LLVM vectorises (see _VECTORISE_CHECKS; measured at 1024 envs: step
    # arithmetic ~16 us instead of ~50 us).
    fill = np.empty((4, batch))
    for i in range(batch):
        s = min(prev_i[0, i] + 1, last)
        ints[0, i] = s
        fill[0, i] = bars[s, 0]
        fill[1, i] = bars[s, 1]
        fill[2, i] = bars[s, 2]
        fill[3, i] = bars[s, 3]
    for i in range(batch):
        s = ints[0, i]
        executed = target[i, 0]
        close = fill[1, i]
        (
            cash,
            units,
            entry,
            value,
            peak,
            tit,
            fee,
            spread,
            impact_n,
            funding,
            traded,
            moved,
            cost,
            ratio,
            term,
            held,
            safe_value,
        ) = _env_step(
            fill[0, i],
            close,
            fill[2, i],
            fill[3, i],
            prev_f[_R_CASH, i],
            prev_f[_R_UNITS, i],
            prev_f[_R_ENTRY, i],
            prev_f[_R_VALUE, i],
            prev_f[_R_PEAK, i],
            prev_i[2, i],
            executed,
            taker_fee,
            half_spread,
            borrow_rate,
            margin_rate,
            lot_size,
            min_notional,
            rebalance_band,
            per_bar,
            has_drawdown,
            drawdown_keep,
            _RUIN_RATIO_FLOOR,
        )
        fees = prev_f[_R_FEES, i] + fee
        spreads = prev_f[_R_SPREAD, i] + spread
        impacts = prev_f[_R_IMPACT, i] + impact_n
        fundings = prev_f[_R_FUNDING, i] + funding
        trades = prev_i[3, i] + moved
        steps = prev_i[1, i] + 1
        trunc = (s >= end[i]) & (not term)
        done = term | trunc
        n_done += done
        floats[_R_VALUE, i] = value
        floats[_R_CASH, i] = cash
        floats[_R_FEES, i] = fees
        floats[_R_SPREAD, i] = spreads
        floats[_R_IMPACT, i] = impacts
        floats[_R_FUNDING, i] = fundings
        floats[_R_UNITS, i] = units
        floats[_R_ENTRY, i] = entry
        floats[_R_PEAK, i] = peak
        floats[_R_NOTIONAL, i] = prev_f[_R_NOTIONAL, i] + traded
        floats[_R_RATIO, i] = ratio
        floats[_R_COST, i] = cost
        floats[_R_EXPOSURE, i] = held
        ints[1, i] = steps
        ints[2, i] = tit
        ints[3, i] = trades
        ints[4, i] = moved
        flags[0, i] = term
        flags[1, i] = trunc
        flags[2, i] = done

        b0, b1, b2, b3, b4 = _portfolio_row(
            held, cash, safe_value, close, entry, units, tit, window, executed, PORTFOLIO_CLIP
        )
        block[0, i] = b0
        block[1, i] = b1
        block[2, i] = b2
        block[3, i] = b3
        block[4, i] = b4

    # --- equity slots: an indexed (scattered) write, kept out of the vectorised loop ------------
    for i in range(batch):
        steps = ints[1, i]
        if not resetting[i] and steps < n_equity:
            equity[steps, i] = floats[_R_VALUE, i]

    # --- the flat observations (as _gather_flat), in a last loop --------------------------------
    # Apart from the step's arithmetic (measured: one fused loop ran slower; so did copying
    # each window inside the arithmetic loop, ~+15 us, and software prefetch of the next
    # rows). The copy is memory-bound: LLVM vectorises it (zmm runs). Envs
    # are visited in the order of their bars: neighbouring windows overlap and share cache
    # lines of the source, which is then read as one forward sweep (~15% faster than env
    # order); the order only changes when an episode restarts, so the caller sorts rarely.
    prev_row = -1
    for k in range(batch):
        i = order[k]
        r = ints[0, i] - lo
        sorted_ &= r >= prev_row
        prev_row = r
        if r < 0 or r >= n_rows:
            n_outside += 1
            continue
        dst = obs[i]
        src = flat[r * step : r * step + window_width]
        for j in range(window_width):
            dst[j] = src[j]
        for j in range(5):
            x = np.float32(block[j, i])  # the float64 -> float32 cast of the assignment
            if clip_obs:  # np.clip with float32 bounds; NaN (which compares False) passes
                x = low if x < low else x
                x = high if x > high else x
            dst[window_width + j] = x
    return floats, ints, flags, obs, n_done, n_outside, sorted_, target


class FlatStep:
    """The batched one-asset step and its flat observations in one compiled call.

    :func:`step_and_portfolio_numba` followed by :class:`FlatGather` (same values bit for bit,
    pinned by ``tests/test_market_numba.py``), fused: no ``(B, 5)`` block round trip, one
    dispatch per step, the bars as one ``(T, 4)`` table, the previous step's output rows read
    back as the next step's inputs, and the info copies and equity slots written in the same
    loop. Build with :meth:`build` (None when the gather is not the plain flat one).

    Args:
        arrays: the market arrays (one asset).
        params: the step parameters (latency 1).
        tables: :func:`envs.market_core.step_tables` of both.
        gather: the env's :class:`FlatGather`.
        targets_of: for discrete actions, the ``(K, 1)`` float64 target of each action index
            (what ``discrete_to_target`` maps them to); None otherwise.
    """

    def __init__(
        self,
        arrays: MarketArrays,
        params: CoreParams,
        tables: StepTables,
        gather: FlatGather,
        targets_of: np.ndarray | None = None,
    ) -> None:
        self.gather = gather
        self.targets_of = (
            np.zeros((0, 1)) if targets_of is None else np.ascontiguousarray(targets_of, np.float64)
        )
        self._no_actions = np.zeros(0, np.int64)
        self._no_target = np.zeros((0, 1))
        self.window = int(params.window)
        self.bars = np.ascontiguousarray(tables.bars[:4, :, 0].T)
        cfg = params.execution
        dd = params.max_drawdown
        consts = np.zeros(_F_N_CONSTS)
        consts[_F_LAST_BAR] = arrays.n_bars - 1
        consts[_F_TAKER] = float(cfg.taker_fee)
        consts[_F_HALF_SPREAD] = float(cfg.half_spread)
        consts[_F_BORROW] = float(cfg.borrow_rate)
        consts[_F_MARGIN] = float(cfg.margin_rate)
        consts[_F_LOT] = float(cfg.lot_size)
        consts[_F_MIN_NOTIONAL] = float(cfg.min_notional)
        consts[_F_BAND] = float(cfg.rebalance_band)
        consts[_F_PER_BAR] = 1.0 / arrays.bars_per_year
        consts[_F_HAS_DD] = float(dd is not None)
        consts[_F_DD_KEEP] = 1.0 - dd if dd is not None else 1.0
        self.consts = consts
        self._packed: tuple | None = None
        self._order = np.zeros(0, np.int64)

    @classmethod
    def build(
        cls,
        arrays: MarketArrays,
        params: CoreParams,
        tables: StepTables,
        gather: Callable,
        targets_of: np.ndarray | None = None,
    ) -> FlatStep | None:
        """A fused step when ``gather`` is a :class:`FlatGather`, else None."""
        if not isinstance(gather, FlatGather):
            return None
        return cls(arrays, params, tables, gather, targets_of)

    def __getstate__(self) -> dict:
        # The packed rows are a cache of the current state (rebuilt from it when missing);
        # a caller stepping with lazy=True materialises latest_state() before pickling.
        return {**self.__dict__, "_packed": None}

    def latest_state(self) -> CoreState:
        """The :class:`CoreState` the last call stepped to (built once, on first request).

        Steps called with ``lazy=True`` skip building it (~4.5 us of views and the tuple at
        1024 envs, measured); it is made here from the same output rows, so it is the state
        the eager call returns, array for array.
        """
        packed = self._packed
        if packed is None:
            raise RuntimeError("FlatStep.latest_state() before any step")
        if packed[0] is None:
            floats, ints, end, target, pending, reward_state = packed[1:]
            state = CoreState(
                t=ints[0],
                end=end,
                steps=ints[1],
                cash=floats[_R_CASH],
                units=floats[_R_UNITS][:, None],
                entry_price=floats[_R_ENTRY][:, None],
                value=floats[_R_VALUE],
                peak=floats[_R_PEAK],
                time_in_trade=ints[2],
                last_target=target,
                pending=pending,
                fees=floats[_R_FEES],
                spread=floats[_R_SPREAD],
                impact=floats[_R_IMPACT],
                funding=floats[_R_FUNDING],
                trades=ints[3],
                traded_notional=floats[_R_NOTIONAL],
                reward_state=reward_state,
            )
            self._packed = packed = (state, *packed[1:])
        return packed[0]

    def _rows(self, state: CoreState | None) -> tuple[np.ndarray, np.ndarray]:
        """The float and int input rows of ``state`` (the last outputs when it is ours).

        ``None`` is the state the last call stepped to (:meth:`latest_state`).
        """
        packed = self._packed
        if state is None or (packed is not None and packed[0] is state):
            return packed[1], packed[2]
        floats = np.stack(
            [
                state.value,
                state.cash,
                state.fees,
                state.spread,
                state.impact,
                state.funding,
                state.units[:, 0],
                state.entry_price[:, 0],
                state.peak,
                state.traded_notional,
            ]
        )
        ints = np.stack([state.t, state.steps, state.time_in_trade, state.trades])
        return floats, ints

    def __call__(
        self,
        state: CoreState | None,
        target: np.ndarray | None,
        resetting: np.ndarray,
        equity: np.ndarray,
        actions: np.ndarray | None = None,
        lazy: bool = False,
    ) -> tuple | None:
        """Step ``state`` with ``target`` (``(B, 1)`` float64) and observe the new state.

        Args:
            state: current state (not modified); None for the state the last call stepped to.
            target: target exposures (ignored when ``actions`` is given).
            resetting: ``(B,)`` bools, rows whose episode ended last step (no equity write).
            equity: the env's step-major ``(L + 1, B)`` equity buffer; row ``steps`` of every
                other env receives its new value.
            actions: ``(B,)`` int64 discrete action indices, mapped through ``targets_of``
                in the kernel (the new state's ``last_target`` is then a fresh array).
            lazy: skip building the new :class:`CoreState` and the :class:`StepOutput`: the
                first element returned is None and ``out`` is the plain tuple ``(reward,
                terminated, truncated, step_cost)``; :meth:`latest_state` builds the state
                when it is needed (the batched env's common step never needs it).

        Returns:
            None when ``actions`` holds an index outside ``targets_of`` (nothing written; the
            caller maps the actions itself, raising its errors), else
            ``(new_state, out, exposure, obs, info, trades, done, n_done)``: ``obs`` None
            when a bar had no full span (the caller assembles instead); ``info`` the ``(6, B)``
            copies of value, cash, fees, spread, impact and funding of the new state and
            ``trades`` a copy of its trade counts; ``done`` is ``terminated | truncated``.
        """
        prev_f, prev_i = self._rows(state)
        if state is None:  # the last call's state: its fields that the kernel does not write
            end, pending, reward_state = self._packed[3], self._packed[5], self._packed[6]
        else:
            end, pending, reward_state = state.end, state.pending, state.reward_state
        g = self.gather
        order = self._order
        if order.shape[0] != end.shape[0]:
            order = self._order = np.arange(end.shape[0], dtype=np.int64)
        if actions is None:
            actions = self._no_actions
        else:
            target = self._no_target
        floats, ints, flags, obs, n_done, n_outside, sorted_, target = _step_observe(
            self.bars,
            self.consts,
            prev_f,
            prev_i,
            end,
            target,
            actions,
            self.targets_of,
            resetting,
            equity,
            self.window,
            g.flat,
            g.step,
            g.lo,
            g.n_rows,
            g.window_width,
            g.low,
            g.high,
            g.clip,
            order,
        )
        if n_outside < 0:  # an action index outside the table
            return None
        if not sorted_:  # an episode restarted: the next step visits the bars sorted again
            self._order = np.argsort(ints[0], kind="stable")
        # The log outside the kernel: NumPy's np.log, as the core applies it (module doc).
        ratio = floats[_R_RATIO]
        reward = np.log(ratio, out=ratio)
        self._packed = (None, floats, ints, end, target, pending, reward_state)
        obs = obs if n_outside == 0 else None
        # The info's copies (they must not alias the state): one copy of the six adjacent rows
        # costs less than writing them in the loop (measured: ~9 us more there at 1024 envs).
        info = floats[:_N_INFO].copy()
        exposure = floats[_R_EXPOSURE][:, None]
        if lazy:
            out = (reward, flags[0], flags[1], floats[_R_COST])
            return None, out, exposure, obs, info, ints[3].copy(), flags[2], n_done
        out = StepOutput(
            reward=reward,
            terminated=flags[0],
            truncated=flags[1],
            step_cost=floats[_R_COST],
            trades=ints[4],
        )
        return self.latest_state(), out, exposure, obs, info, ints[3].copy(), flags[2], n_done
