"""Compiled (Numba) step of one ``MarketTradingEnv`` episode (issue 3: the single env's speed).

The Python-float step (:meth:`envs.market_fast.ScalarCore._step_one`) costs ~1.6 us, most of
it interpreter overhead; the observation copy, the info dict and the call chain around it
cost about as much again. :class:`SingleKernel` keeps the episode state in one float64 array
(:data:`STATE_FIELDS`) owned by the env during the episode, and one compiled call per step
(:func:`envs.market_numba.single_step`) does the sizing, costs, holding cost and marking (the
arithmetic shared with the batched kernel: ``envs.market_numba._trade_and_mark``), updates
the state array in place, writes the portfolio block into the fresh flat observation
(copying the market window from the assembler's ``spans``) and the exposure into a fresh
``(1,)`` array, and returns the few scalars Python needs. The kernel is defined in
:mod:`envs.market_numba`, next to the arithmetic it shares: numba's disk cache notices edits
only in the file that defines a cached function.

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
of several array arguments costs more than the step's arithmetic (measured ~660 vs ~250 ns
per call on a toy kernel with three arrays; the step's own arithmetic is ~110 ns). The types
are read from the very objects passed each step, and every array passed is created here or
by the env with those types (the entry point does not check them).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from envs.market_core import CoreParams, MarketArrays
from envs.market_core import step_tables as _step_tables
from envs.market_fast import ScalarState
from envs.market_numba import (
    SINGLE_CONSTS,
    SINGLE_STATE_FIELDS,
    SINGLE_STATE_SIZE,
    numba,
    single_step,
    single_step_dict,
)

__all__ = ["STATE_FIELDS", "SingleKernel"]

STATE_FIELDS = SINGLE_STATE_FIELDS
_INT_FIELDS = frozenset({"t", "end", "steps", "time_in_trade", "trades"})
_LIST_FIELDS = frozenset({"units", "entry_price", "last_target"})


class SingleKernel:
    """The compiled step of one one-asset, ``log_return``, latency-1 episode, ready to call.

    Args:
        arrays: the env's market arrays.
        params: its static step parameters.
        assemble: its bar assembler (``builder.bar_assembler``); its ``spans``,
            ``given_items`` and ``n_short`` (read only) let the kernel fill flat
            observations itself.
        builder: its observation builder (the Dict layout of just ``market`` and
            ``portfolio`` is filled by the kernel too).

    Attributes:
        entry: the compiled step. Flat layouts (``window_shape`` None): ``entry(state,
            tables, source, obs, position, target)`` with a fresh float32 ``(obs_size,)``
            array ``obs`` (:func:`envs.market_numba.single_step`); the Dict layout:
            ``entry(state, tables, source, window, portfolio, position, target)`` with fresh
            float32 arrays ``window`` of ``window_shape`` and ``portfolio`` of ``(5,)``
            (:func:`envs.market_numba.single_step_dict`). Both return ``(ratio, cost,
            terminated, truncated, value, cash, fees, spread, impact, funding, trades,
            filled)``; pass :attr:`tables` and :attr:`source` as they are (read only), a
            fresh float64 ``(1,)`` array ``position`` and the float target exposure. The
            state array (:data:`STATE_FIELDS`, from :meth:`pack`) is updated in place.
            When ``filled`` is False, the observation is the assembler's of the bar and
            block in the state array.
        obs_size: the length of ``obs`` (0 when the kernel never fills it).
        window_shape: ``(W, F)`` for the Dict layout the kernel fills, else None.
    """

    def __init__(
        self, arrays: MarketArrays, params: CoreParams, assemble: Any, builder: Any
    ) -> None:
        if numba is None:  # pragma: no cover - the env checks numba_available() first
            raise RuntimeError("SingleKernel needs numba")
        self.arrays = arrays
        self.params = params
        self.assemble = assemble
        self.builder = builder
        self._derive()

    def _dict_source(self) -> np.ndarray | None:
        """The features as the ``(T * F,)`` run the Dict kernel copies from, or None."""
        builder = self.builder
        feats = self.arrays.features
        shapes = {b.name: tuple(b.shape) for b in builder.blocks}
        if (
            builder.flatten
            or builder.clip
            or builder.block_names != ("market", "portfolio")
            or feats.dtype != np.float32
            or feats.ndim != 2
            or not feats.flags.c_contiguous
            or shapes["market"] != (self.params.window, feats.shape[1])
            or shapes["portfolio"] != (5,)
        ):
            return None
        source = feats.reshape(-1)  # a view; made read-only (the features are not)
        source.flags.writeable = False
        return source

    def _derive(self) -> None:
        arrays, params = self.arrays, self.params
        cfg = params.execution
        md = params.max_drawdown
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
        self.window_shape: tuple[int, int] | None = None
        dict_source = None if n_short else self._dict_source()
        if dict_source is not None:
            source = dict_source
            span_step = arrays.features.shape[1]
            self.window_shape = (params.window, span_step)
        self.obs_size = given0 + 5 if n_short else 0
        self.source = source
        consts = {
            "last_bar": arrays.n_bars - 1,
            "taker_fee": cfg.taker_fee,
            "half_spread": cfg.half_spread,
            "borrow_rate": cfg.borrow_rate,
            "margin_rate": cfg.margin_rate,
            "lot_size": cfg.lot_size,
            "min_notional": cfg.min_notional,
            "rebalance_band": cfg.rebalance_band,
            "per_bar": 1.0 / arrays.bars_per_year,  # as holding_cost and _step_one compute it
            "has_drawdown": 0.0 if md is None else 1.0,
            "drawdown_keep": 1.0 if md is None else 1.0 - md,
            "window": params.window,
            "lo": params.window - 1,
            "n_short": n_short,
            "given0": given0,
            "span_step": span_step,
        }
        # The constants, then per bar open, close, impact_k * sigma of s - 1 and volume of
        # s - 1 (the batched step's tables, the same values).
        bars = _step_tables(arrays, params).bars[:4, :, 0].T
        self.tables = np.concatenate(
            [np.array([consts[name] for name in SINGLE_CONSTS], dtype=np.float64), bars.ravel()]
        )
        if self.window_shape is None:
            kernel = single_step
            outputs: tuple[np.ndarray, ...] = (np.empty(self.obs_size, np.float32),)
        else:
            kernel = single_step_dict
            outputs = (np.empty(self.window_shape, np.float32), np.empty(5, np.float32))
        example = (np.zeros(SINGLE_STATE_SIZE), self.tables, self.source, *outputs, np.empty(1))
        self.entry: Callable[..., tuple] = kernel.compile(
            tuple(numba.typeof(x) for x in (*example, 0.0))
        )

    def __getstate__(self) -> dict[str, Any]:
        # The compiled entry point does not pickle; it is looked up again on load.
        return {
            "arrays": self.arrays,
            "params": self.params,
            "assemble": self.assemble,
            "builder": self.builder,
        }

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._derive()

    @staticmethod
    def pack(state: ScalarState) -> np.ndarray:
        """A state array (:data:`STATE_FIELDS`) holding ``state`` (one asset, latency 1)."""
        out = np.zeros(SINGLE_STATE_SIZE)
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
