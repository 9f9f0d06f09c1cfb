"""Compiled (Numba) step of one ``MarketTradingEnv`` episode (issue 3: the single env's speed).

The Python-float step (:meth:`envs.market_fast.ScalarCore._step_one`) costs ~1.6 us, most of
it interpreter overhead; the observation copy, the info dict and the call chain around it
cost about as much again. :class:`SingleKernel` keeps the episode state in one float64 array
(:data:`STATE_FIELDS`) owned by the env during the episode, and one compiled call per step
does the sizing, costs, holding cost and marking (the arithmetic shared with the batched
kernel: :func:`envs.market_numba._trade_and_mark`), updates the state array in place, writes
the portfolio block into the fresh flat observation (copying the market window from the
assembler's ``spans``) and returns the few scalars Python needs.

Bit-identity with the Python path (``tests/test_market_numba_single.py`` compares every
step's observation bytes, reward, flags, info values, episode metrics and final state):

* ``_trade_and_mark`` equals ``_step_one``'s sizing/costs/entry/funding (both restate
  ``market_core._step``; the tests pin it).
* The rest is written as ``_step_one`` writes it: ``value = cash + held`` (no ``+ 0.0``),
  ``peak`` keeps the previous peak unless it is smaller, the unrealised PnL is
  ``units * (close - entry) / safe`` (``_step_one``'s order, which keeps a ``-0.0``).
* ``np.log`` stays outside: the kernel returns the floored value ratio and the env applies
  NumPy's ``log`` to it as ``_step_one`` does (NumPy's SIMD log and libm's differ in the last
  bit for some inputs).
* Integers (bar, steps, time in trade, trades) are stored as float64: exact below 2**53.
* The float64 -> float32 cast of the block into the observation is NumPy's (round to
  nearest); block values are clipped to +-100, so the cast never overflows.

The compiled function is called through its entry point for the fixed argument types
(``Dispatcher.compile(signature)`` returns it): the dispatcher's per-call type resolution
of four array arguments costs more than the step's arithmetic (measured ~660 vs ~250 ns per
call on a toy kernel). The types are read from the very objects passed each step, and every
array passed is created here or by the env with those types.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from envs.market_core import _RUIN_RATIO_FLOOR, PORTFOLIO_CLIP, CoreParams, MarketArrays
from envs.market_core import step_tables as _step_tables
from envs.market_fast import ScalarState
from envs.market_numba import _clip, _jit, _trade_and_mark, numba

__all__ = ["STATE_FIELDS", "SingleKernel"]

# Layout of the state array: the ScalarState fields of a one-asset, latency-1 episode, then
# the portfolio block of the current state (written by the kernel; read by Python only when
# the observation is not the flat market + portfolio layout the kernel fills itself).
STATE_FIELDS = (
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
) = range(len(STATE_FIELDS))
_B0 = len(STATE_FIELDS)
BLOCK = slice(_B0, _B0 + 5)
_STATE_SIZE = len(STATE_FIELDS) + 5
_INT_FIELDS = frozenset({"t", "end", "steps", "time_in_trade", "trades"})
_LIST_FIELDS = frozenset({"units", "entry_price", "last_target"})

# Layout of the constants array.
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
) = range(16)


@_jit
def _single_step(
    st: np.ndarray,
    consts: np.ndarray,
    bars: np.ndarray,
    source: np.ndarray,
    obs: np.ndarray,
    position: np.ndarray,
    target: float,
) -> tuple:
    """One step of one episode; ``st`` is updated in place (layout :data:`STATE_FIELDS`).

    ``bars[s]`` holds open and close of bar ``s`` and ``impact_k * sigma`` and volume of bar
    ``s - 1`` (:func:`envs.market_core.step_tables`). ``obs`` receives the flat observation
    (span ``r`` of the assembler, ``source[r * step : r * step + given0]``, then the block)
    when the layout allows (``n_short > 0``) and the bar has a full span; the last value
    returned says whether it did. ``position[0]`` receives the unclipped exposure.
    """
    s = np.int64(st[_T]) + 1
    last_bar = np.int64(consts[_C_LAST_BAR])
    if s > last_bar:
        s = last_bar
    price = bars[s, 0]
    close = bars[s, 1]
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
        bars[s, 2],
        bars[s, 3],
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
        np.int64(trades),
        filled,
    )


class SingleKernel:
    """The compiled step of one one-asset, ``log_return``, latency-1 episode, ready to call.

    Args:
        arrays: the env's market arrays.
        params: its static step parameters.
        assemble: its bar assembler (``builder.bar_assembler``); its ``spans``,
            ``given_items`` and ``n_short`` (read only) let the kernel fill flat
            observations itself.

    Attributes:
        entry: the compiled step, ``entry(state, consts, bars, source, obs, position,
            target) -> (ratio, cost, terminated, truncated, value, cash, fees, spread,
            impact, funding, trades, filled)``; pass :attr:`consts`, :attr:`bars` and
            :attr:`source` as they are, a fresh float32 ``(obs_size,)`` array ``obs``, a
            fresh float64 ``(1,)`` array ``position`` and the float target exposure. The
            state array (:data:`STATE_FIELDS`, from :meth:`pack`) is updated in place.
        obs_size: the length of ``obs`` (0 when the kernel never fills it).
    """

    def __init__(self, arrays: MarketArrays, params: CoreParams, assemble: Any) -> None:
        if numba is None:  # pragma: no cover - the env checks numba_available() first
            raise RuntimeError("SingleKernel needs numba")
        self.arrays = arrays
        self.params = params
        self.assemble = assemble
        self._derive()

    def _derive(self) -> None:
        arrays, params = self.arrays, self.params
        cfg = params.execution
        md = params.max_drawdown
        # (T, 4): open, close, impact_k * sigma of s - 1, volume of s - 1 (the batched tables).
        self.bars = np.ascontiguousarray(_step_tables(arrays, params).bars[:4, :, 0].T)
        spans = getattr(self.assemble, "spans", None)
        items = tuple(getattr(self.assemble, "given_items", ()))
        n_short = int(getattr(self.assemble, "n_short", 0) or 0)
        given0 = items[0] if items else 0
        if (
            spans is None
            or n_short <= 0
            or n_short > spans.shape[0]
            or items != tuple(range(given0, given0 + 5))
            or spans.dtype != np.float32
            or spans.ndim != 2
            or spans.shape[1] != given0 + 5
            or spans.strides[1] != spans.itemsize
            or spans.strides[0] % spans.itemsize
        ):
            n_short = 0
        span_step = 0
        if n_short:
            # ``spans`` (row r = the flattened source from the window's first row on) is a
            # strided view of one 1-D run: copying from that run as 1-D is contiguous.
            span_step = spans.strides[0] // spans.itemsize
            source = np.lib.stride_tricks.as_strided(
                spans,
                shape=((n_short - 1) * span_step + spans.shape[1],),
                strides=(spans.itemsize,),
                writeable=False,
            )
        else:
            given0 = 0
            # Never read; the same array type as a real source (one compiled signature).
            source = np.zeros(1, np.float32)
            source.flags.writeable = False
        self.obs_size = given0 + 5 if n_short else 0
        self.source = source
        self.consts = np.array(
            [
                arrays.n_bars - 1,
                cfg.taker_fee,
                cfg.half_spread,
                cfg.borrow_rate,
                cfg.margin_rate,
                cfg.lot_size,
                cfg.min_notional,
                cfg.rebalance_band,
                1.0 / arrays.bars_per_year,
                0.0 if md is None else 1.0,
                1.0 if md is None else 1.0 - md,
                params.window,
                params.window - 1,
                n_short,
                given0,
                span_step,
            ],
            dtype=np.float64,
        )
        example = (
            np.zeros(_STATE_SIZE),
            self.consts,
            self.bars,
            self.source,
            np.empty(self.obs_size, np.float32),
            np.empty(1),
            0.0,
        )
        self.entry: Callable[..., tuple] = _single_step.compile(
            tuple(numba.typeof(x) for x in example)
        )

    def __getstate__(self) -> dict[str, Any]:
        # The compiled entry point does not pickle; it is looked up again on load.
        return {"arrays": self.arrays, "params": self.params, "assemble": self.assemble}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._derive()

    @staticmethod
    def pack(state: ScalarState) -> np.ndarray:
        """A state array (:data:`STATE_FIELDS`) holding ``state`` (one asset, latency 1)."""
        out = np.zeros(_STATE_SIZE)
        for k, name in enumerate(STATE_FIELDS):
            value = getattr(state, name)
            out[k] = value[0] if name in _LIST_FIELDS else value
        return out

    @staticmethod
    def unpack(st: np.ndarray, template: ScalarState) -> ScalarState:
        """The :class:`ScalarState` the array ``st`` holds (a fresh object).

        Args:
            st: a state array.
            template: a state of the same env supplying the fields the array does not hold
                (``pending``, empty at latency 1, and ``reward_state``, constant under
                ``log_return``); copied.
        """
        values = st.tolist()
        out = ScalarState()
        for k, name in enumerate(STATE_FIELDS):
            value = values[k]
            if name in _INT_FIELDS:
                value = int(value)
            elif name in _LIST_FIELDS:
                value = [value]
            setattr(out, name, value)
        out.pending = [list(row) for row in template.pending]
        out.reward_state = dict(template.reward_state)
        return out
