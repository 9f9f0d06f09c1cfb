"""``PolicyRunner``: a trained market policy inside a bot loop, one bar at a time.

Per bar (``on_bar``): check the bar (``BarGuards``), advance the streaming features
(:mod:`agents.runner.features`, the online twin of ``envs.features.compute_features``), scale
and clip them with the run's scaler exactly as ``build_market_setup`` does, build the
observation with the env's :class:`~envs.observation.ObservationBuilder` (market window,
predictor rows, and the portfolio block from ``envs.market_core.portfolio_block`` on the
runner's tracked book), ask the policy, map the action with ``envs.execution``
(``discrete_to_target`` / ``continuous_to_target`` / ``weights_to_target``), size the order
with ``size_orders`` at the last close, then apply :class:`RiskLimits`.

History needed: the streaming state summarises the whole feed (EMAs and Wilder averages carry
every bar; rings keep at most ``max(window of any rolling feature, longest log-return lag + 1)``
bars, 25 for the default features), plus the last ``window`` scaled rows for the market block.
The runner holds until ``warmup + window`` bars were seen (the env's first decision bar), so
its observation at bar ``t`` of a feed equals the env's at bar ``t`` of the same data (tested).

Predictor blocks (``agents.runner.run_dir.OnlinePredictorBlock``) compute their own input
features from the bars and learn online as training's walk did: after every ``update_every``
bars one update is pending; :meth:`PolicyRunner.maintain` runs it between bars (else the next
``on_bar`` does, before predicting). :meth:`PolicyRunner.feed_predictors` feeds older bars to the
blocks only; until every block predicts, the runner holds ("warming up predictors").

Robustness: every ``on_bar`` returns a ``TradeSignal``; malformed, non-finite, duplicated,
out-of-order or absurd bars are not ingested and give a HOLD naming the problem; gaps and stale
bars are ingested (they are real history) but give a HOLD; any unexpected error inside the
loop is caught and reported as a HOLD. Nothing raises inside ``on_bar``.
"""

from __future__ import annotations

import math
import traceback
from collections.abc import Mapping, Sequence
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

import numpy as np

from agents.runner.features import StreamingFeatures
from agents.runner.limits import BarGuards, RiskLimits
from agents.signals import BUY, HOLD, SELL, Fill, SignalLeg, TradeSignal
from envs.errors import ConfigError
from envs.execution import (
    ExecutionConfig,
    continuous_to_target,
    discrete_to_target,
    size_orders,
    weights_to_target,
)
from envs.market_core import PORTFOLIO_CLIP, portfolio_block
from envs.observation import BlockSpec, ObservationBuilder

if TYPE_CHECKING:
    from agents.runner.arbitrage import ArbitrageRunner

__all__ = ["OHLCV_FIELDS", "PolicyRunner"]

OHLCV_FIELDS = ("open", "high", "low", "close", "volume")
_NS_PER_DAY = 86_400 * 1_000_000_000


def to_ns(value: Any) -> int:
    """A timestamp (int ns, seconds as float, ISO string, datetime, numpy/pandas time) in ns."""
    if isinstance(value, (bool, np.bool_)):
        raise ValueError("a boolean is not a timestamp")
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        if not math.isfinite(value):
            raise ValueError(f"non-finite timestamp {value!r}")
        return round(float(value) * 1e9)  # float = seconds since the epoch
    if hasattr(value, "value") and hasattr(value, "tz_localize"):  # pandas.Timestamp
        return int(value.value)
    ts = np.datetime64(value.replace(tzinfo=None) if hasattr(value, "tzinfo") else value, "ns")
    if np.isnat(ts):
        raise ValueError("NaT timestamp")
    return int(ts.astype(np.int64))


class PolicyRunner:
    """Turn one market bar at a time into a sized :class:`~agents.signals.TradeSignal`.

    Build it with :meth:`from_run`; the constructor takes the pieces directly (tests, custom
    policies).

    Args:
        policy: an object with ``decide(obs) -> (action, confidence)``
            (:class:`~agents.runner.policy.PolicyAdapter`).
        action_mode: ``discrete``, ``continuous`` or ``weights`` (as the env).
        execution: the env's execution config (sizing, costs, limits).
        scaler: the run's fitted feature scaler.
        symbols: asset names (bars for several assets are keyed by them).
        features: feature names (None = the pipeline's defaults).
        window: bars in the market block.
        positions: discrete target exposures (discrete mode).
        initial_cash: starting cash of the tracked book (replace with ``sync_account``).
        obs_clip: clip of the scaled features.
        flatten: flat observation (as the env's ``flatten``).
        extra_names: extra columns bars carry (for ``extra:<col>`` features).
        limits: live risk limits (default: all off).
        guards: bar checks (default: ``BarGuards()``).
        predictor_blocks: name -> block source with ``columns`` and
            ``on_bar(timestamp, ohlcv, extra) -> (row, uncertainty or None)`` (optionally
            ``maintain()``, ``reset()`` and ``warmup_left``; see
            :class:`agents.runner.run_dir.OnlinePredictorBlock`), or the older
            ``step(features_row, ohlcv)`` that reads the runner's own feature row.
    """

    def __init__(
        self,
        *,
        policy: Any,
        action_mode: str,
        execution: ExecutionConfig,
        scaler: Any,
        symbols: Sequence[str] = ("asset",),
        features: Sequence[str] | None = None,
        window: int = 32,
        positions: Sequence[float] = (-1.0, 0.0, 1.0),
        initial_cash: float = 10_000.0,
        obs_clip: float = 10.0,
        flatten: bool = True,
        extra_names: Sequence[str] = (),
        limits: RiskLimits | None = None,
        guards: BarGuards | None = None,
        predictor_blocks: Mapping[str, Any] | None = None,
    ) -> None:
        if action_mode not in ("discrete", "continuous", "weights"):
            raise ConfigError(
                f"action_mode must be discrete/continuous/weights, got {action_mode!r}"
            )
        self.policy = policy
        self.action_mode = action_mode
        self.execution = execution
        self.scaler = scaler
        self.symbols = tuple(str(s) for s in symbols)
        self.n_assets = len(self.symbols)
        self.window = int(window)
        self.positions = np.asarray(positions, dtype=np.float64)
        self.initial_cash = float(initial_cash)
        self.obs_clip = float(obs_clip)
        self.extra_names = tuple(extra_names)
        self.limits = limits or RiskLimits()
        self.guards = guards or BarGuards()
        self.predictor_blocks = dict(predictor_blocks or {})
        self.features = StreamingFeatures(features, self.n_assets, self.extra_names)
        n_feat = len(self.features.names)
        if scaler is not None and getattr(scaler, "n_features", n_feat) != n_feat:
            raise ConfigError(
                f"scaler has {scaler.n_features} features, the runner computes {n_feat} "
                f"({list(self.features.names)})"
            )
        n = self.n_assets
        if n == 1:
            market_names = tuple(self.features.names)
            pos_names, target_names = ("position",), ("last_target",)
        else:
            market_names = tuple(f"{s}:{f}" for s in self.symbols for f in self.features.names)
            pos_names = tuple(f"position:{s}" for s in self.symbols)
            target_names = tuple(f"last_target:{s}" for s in self.symbols)
        # The env's block layout (envs.market_env.build_market_setup); predictor bounds are the
        # data's range there, unbounded here: bounds never change the observation's values.
        specs = [
            BlockSpec(
                "market",
                (self.window, n * n_feat),
                low=-self.obs_clip,
                high=self.obs_clip,
                feature_names=market_names,
            )
        ]
        for name, source in self.predictor_blocks.items():
            specs.append(
                BlockSpec(name, (len(source.columns),), feature_names=tuple(source.columns))
            )
        specs.append(
            BlockSpec(
                "portfolio",
                (2 * n + 3,),
                low=-PORTFOLIO_CLIP,
                high=PORTFOLIO_CLIP,
                feature_names=(
                    *pos_names,
                    "cash",
                    "unrealised_pnl",
                    "time_in_trade",
                    *target_names,
                ),
            )
        )
        self.builder = ObservationBuilder(specs, flatten=flatten)
        self.reset()

    @classmethod
    def from_run(
        cls,
        run_dir: str | Any,
        device: str = "auto",
        *,
        policy: str = "policy",
        symbols: Sequence[str] | None = None,
        limits: RiskLimits | Mapping[str, Any] | None = None,
        guards: BarGuards | Mapping[str, Any] | None = None,
        initial_cash: float | None = None,
        extra_names: Sequence[str] = (),
    ) -> PolicyRunner | ArbitrageRunner:
        """Rebuild a runner from a training run directory alone.

        An arbitrage run (``env.kind: arbitrage``) gives an
        :class:`~agents.runner.arbitrage.ArbitrageRunner` (``on_snapshot``); ``guards`` are then
        :class:`~agents.runner.arbitrage.SnapshotGuards` fields.

        Args:
            run_dir: the run directory (``.hydra/config.yaml``, ``policy.pt``, ``artifacts/``).
            device: torch device for the policy and predictors (``auto``: CUDA if available).
            policy: ``policy`` (final), ``best`` (best validation) or a policy file path.
            symbols: asset names; default ``("asset",)`` or ``asset0..`` for several assets
                (their number is read from the policy's observation space).
            limits: live risk limits (default: all off).
            guards: bar checks (default: ``BarGuards()``).
            initial_cash: starting cash of the tracked book (default: the env's).
            extra_names: extra columns the bars carry (needed for ``extra:`` features).

        Raises:
            ConfigError: missing files, a malformed config, a policy whose
                observation width does not match the config.
            CheckpointError: a policy file that is corrupt or would execute code when loaded.
        """
        from agents.registry import load_agent
        from agents.runner.policy import PolicyAdapter
        from agents.runner.run_dir import (
            attach_run,
            load_predictor_blocks,
            load_run_files,
            market_kwargs,
        )
        from envs.features.scaling import load_scaler

        run = load_run_files(run_dir, policy)
        if run.env_kind == "arbitrage":
            from agents.runner.arbitrage import ArbitrageRunner

            if symbols is not None or initial_cash is not None or extra_names:
                raise ConfigError(
                    f"{run.run_dir}: an arbitrage run takes no symbols, initial_cash or "
                    "extra_names (venues and balances come from its config)"
                )
            return ArbitrageRunner.from_run(
                run.run_dir, device, policy=policy, limits=limits, guards=guards
            )
        kw = market_kwargs(run.config)
        scaler_path = run.run_dir / "artifacts" / "feature_scaler.json"
        if not scaler_path.is_file():
            raise ConfigError(f"{run.run_dir}: artifacts/feature_scaler.json is missing")
        scaler = load_scaler(scaler_path)
        agent = load_agent(run.config["agent"], run.policy_path, device=device)
        blocks = load_predictor_blocks(run, device, extra_names)
        feature_names = kw["features"] or getattr(scaler, "feature_names", None)
        n_feat = scaler.n_features
        extra_cols = sum(len(b.columns) for b in blocks.values())
        obs_dim = int(agent.flattener.dim) if hasattr(agent, "flattener") else None
        if symbols is None:
            n_assets = 1
            if obs_dim is not None:
                # flat width = window * N * F + predictor columns + 2N + 3 (the env's layout)
                num = obs_dim - extra_cols - 3
                den = kw["window"] * n_feat + 2
                if num <= 0 or num % den:
                    raise ConfigError(
                        f"{run.policy_path}: observation width {obs_dim} does not fit the "
                        f"config (window={kw['window']}, {n_feat} features, "
                        f"{extra_cols} predictor columns)"
                    )
                n_assets = num // den
            symbols = ("asset",) if n_assets == 1 else tuple(f"asset{i}" for i in range(n_assets))
        if isinstance(limits, Mapping) or limits is None:
            limits = RiskLimits.from_dict(limits)
        if isinstance(guards, Mapping) or guards is None:
            guards = BarGuards.from_dict(guards)
        execution = ExecutionConfig(
            taker_fee=kw["taker_fee"],
            half_spread=kw["half_spread"],
            impact_k=kw["impact_k"],
            borrow_rate=kw["borrow_rate"],
            margin_rate=kw["margin_rate"],
            max_leverage=kw["max_leverage"],
            allow_short=kw["allow_short"],
            lot_size=kw["lot_size"],
            min_notional=kw["min_notional"],
            rebalance_band=kw["rebalance_band"],
            latency=kw["latency"],
        )
        runner = cls(
            policy=PolicyAdapter(agent),
            action_mode=str(kw["action_mode"]),
            execution=execution,
            scaler=scaler,
            symbols=symbols,
            features=feature_names,
            window=kw["window"],
            positions=kw["positions"],
            initial_cash=kw["initial_cash"] if initial_cash is None else initial_cash,
            obs_clip=kw["obs_clip"],
            flatten=bool(kw["flatten"]),
            extra_names=extra_names,
            limits=limits,
            guards=guards,
            predictor_blocks=blocks,
        )
        attach_run(runner, agent, run, kw, "runner")
        return runner

    # --- state ---------------------------------------------------------------------------------
    def reset(self, initial_cash: float | None = None, predictors: bool = True) -> None:
        """Forget all history and start a flat book (features warm up again; a recurrent
        policy's state restarts from zeros).

        Args:
            initial_cash: new starting cash (default: unchanged).
            predictors: also reset the predictor blocks to their saved state (False: keep their
                history and online learning, e.g. after :meth:`feed_predictors`).
        """
        policy_reset = getattr(self.policy, "reset", None)
        if callable(policy_reset):
            policy_reset()
        if predictors:
            for source in self.predictor_blocks.values():
                source_reset = getattr(source, "reset", None)
                if callable(source_reset):
                    source_reset()
        if initial_cash is not None:
            self.initial_cash = float(initial_cash)
        n = self.n_assets
        self.features = StreamingFeatures(self.features.names, n, self.extra_names)
        self._market = np.zeros((self.window, n * len(self.features.names)), dtype=np.float32)
        self._bars = 0
        self._last_ts: int | None = None
        self._last_close: np.ndarray | None = None
        self._rejected_close: np.ndarray | None = None
        self._spacings: list[int] = []
        self._median_spacing = math.nan
        self._close = np.zeros((1, n))
        self.cash = np.array([self.initial_cash])
        self.units = np.zeros((1, n))
        self.entry_price = np.zeros((1, n))
        self.last_target = np.zeros((1, n))
        self.time_in_trade = np.zeros(1, dtype=np.int64)
        self._units_at_last_bar = np.zeros((1, n))
        self.value = float(self.initial_cash)
        self.peak = float(self.initial_cash)
        self._day: int | None = None
        self._day_start_value = float(self.initial_cash)
        self._killed: str | None = None
        self._killed_day: int | None = None
        self._returns: list[float] = []
        self._pred_rows: dict[str, np.ndarray] = {
            name: np.zeros(len(src.columns), dtype=np.float32)
            for name, src in self.predictor_blocks.items()
        }
        self._uncertainty: float | None = None
        self.last_observation: Any = None
        self.signals = 0

    @property
    def bars_seen(self) -> int:
        """Bars ingested into the history."""
        return self._bars

    def maintain(self) -> int:
        """Run the predictors' pending online updates; call it between bars (after the signal
        went out) to keep the gradient step off ``on_bar``'s latency. Otherwise a pending update
        runs at the start of the next ``on_bar``. Returns the number of updates run."""
        ran = 0
        for source in self.predictor_blocks.values():
            fn = getattr(source, "maintain", None)
            if callable(fn):
                ran += int(bool(fn()))
        return ran

    def feed_predictors(self, bar: Any) -> str | None:
        """Feed one older bar to the predictor blocks only (history before the bot starts: the
        bars since the run's fit range, so the blocks continue as training's walk did, or just
        enough to skip their warm-up). Returns None, or the reason the bar was not used."""
        try:
            parsed = self._parse(bar)
            if isinstance(parsed, str):
                return parsed
            ts, ohlcv, extra = parsed
            for source in self.predictor_blocks.values():
                last = getattr(source, "last_ts", None)
                if last is not None and ts <= last:
                    return "out-of-order or duplicate bar for the predictors (ignored)"
            for source in self.predictor_blocks.values():
                if hasattr(source, "on_bar"):
                    source.on_bar(ts, ohlcv, extra)
            return None
        except Exception as exc:  # same contract as on_bar: never raise into the bot loop
            return f"internal error {type(exc).__name__}: {exc}"

    @property
    def predictor_warmup(self) -> int:
        """Bars before every predictor block makes predictions (0 without predictors)."""
        return max(
            (int(getattr(src, "warmup_left", 0)) for src in self.predictor_blocks.values()),
            default=0,
        )

    @property
    def first_decision_bar(self) -> int | None:
        """Index of the first bar the runner will decide on (None: still unknown)."""
        ready = self.features.ready_from
        return None if ready is None else ready + self.window - 1

    @property
    def position(self) -> np.ndarray:
        """Current units per asset (as tracked from fills and account syncs)."""
        return self.units[0].copy()

    @property
    def kill_switch(self) -> str | None:
        """Why the kill switch is on, or None."""
        return self._killed

    def reset_kill_switch(self) -> None:
        """Re-arm trading after a drawdown kill (resets the peak to the current value)."""
        self._killed = None
        self._killed_day = None
        self.peak = self.value

    # --- fills ---------------------------------------------------------------------------------
    def on_fill(self, fill: Fill) -> None:
        """Record a fill: units, cash (price and costs) and average entry price.

        The entry price follows ``envs.market_core.step_core``: adding averages the fill in,
        reducing keeps it, a flip or a fresh entry resets it to the fill price, flat clears it.

        Raises:
            ConfigError: unknown symbol, or non-finite units/price/cost.
        """
        if fill.symbol not in self.symbols:
            raise ConfigError(f"on_fill: unknown symbol {fill.symbol!r}; runner has {self.symbols}")
        vals = (fill.units, fill.price, fill.cost)
        if not all(isinstance(v, (int, float, np.number)) and math.isfinite(v) for v in vals):
            raise ConfigError(f"on_fill: units, price and cost must be finite numbers, got {vals}")
        if fill.price <= 0 or fill.cost < 0:
            raise ConfigError(f"on_fill: price must be > 0 and cost >= 0, got {fill}")
        j = self.symbols.index(fill.symbol)
        q = np.zeros_like(self.units)
        q[0, j] = float(fill.units)
        price = np.ones_like(self.units)
        price[0, j] = float(fill.price)
        units = self.units + q
        old_sign, new_sign = np.sign(self.units), np.sign(units)
        adding = (new_sign == old_sign) & (np.abs(units) > np.abs(self.units))
        safe_units = np.where(units != 0.0, units, 1.0)
        averaged = (self.units * self.entry_price + q * price) / safe_units
        entry = np.where(
            new_sign == 0.0,
            0.0,
            np.where(new_sign != old_sign, price, np.where(adding, averaged, self.entry_price)),
        )
        self.entry_price = np.where(q != 0.0, entry, self.entry_price)
        self.cash = self.cash - (q * price).sum(axis=1) - float(fill.cost)
        self.units = units
        self._mark()

    def sync_account(self, cash: float, units: Sequence[float] | None = None) -> None:
        """Replace the tracked cash (and units) with the broker's numbers (funding, fees ...)."""
        cash = float(cash)
        if not math.isfinite(cash):
            raise ConfigError(f"sync_account: cash must be finite, got {cash!r}")
        self.cash = np.array([cash])
        if units is not None:
            arr = np.asarray(units, dtype=np.float64).reshape(1, -1)
            if arr.shape != self.units.shape or not np.all(np.isfinite(arr)):
                raise ConfigError(
                    f"sync_account: units must be {self.n_assets} finite numbers, got {units!r}"
                )
            # A position the broker reports flat has no entry price; others keep the tracked one.
            self.entry_price = np.where(arr == 0.0, 0.0, self.entry_price)
            self.units = arr
        self._mark()

    def _mark(self) -> None:
        if self._last_close is not None:
            self.value = float((self.cash + (self.units * self._close).sum(axis=1))[0])

    # --- bars ----------------------------------------------------------------------------------
    def on_bar(self, bar: Any, now: Any = None) -> TradeSignal:
        """Ingest one bar and return the signal for it; never raises.

        Args:
            bar: a mapping with ``timestamp`` and ``open/high/low/close/volume`` (plus extra
                columns) for one asset, or ``{"timestamp": ..., symbol: {fields}, ...}`` for
                several; any object with those attributes works too.
            now: wall-clock time for the staleness check (None = skip it).
        """
        ts = -1
        try:
            parsed = self._parse(bar)
            if isinstance(parsed, str):
                return self._hold(ts, parsed)
            ts, ohlcv, extra = parsed
            rejected = self._order_checks(ts, ohlcv)
            if rejected:
                return self._hold(ts, rejected)
            note = self._ingest(ts, ohlcv, extra)
            if now is not None and self.guards.stale_seconds is not None:
                age = (to_ns(now) - ts) / 1e9
                if age > self.guards.stale_seconds:
                    return self._hold(ts, f"stale data: bar is {age:.0f}s old")
            if note:
                return self._hold(ts, note)
            first = self.first_decision_bar
            if first is None or self._bars - 1 < first:
                need = "?" if first is None else str(first + 1)
                return self._hold(ts, f"warming up: {self._bars}/{need} bars")
            waiting = self.predictor_warmup
            if waiting > 0:
                # A block before its first prediction holds fill values the policy never saw
                # on held-out bars; feed_predictors() with older bars skips this.
                return self._hold(ts, f"warming up predictors: {waiting} more bars")
            return self._decide(ts)
        except Exception as exc:  # the bot loop must never see an exception from here
            last = traceback.extract_tb(exc.__traceback__)[-1]
            return self._hold(ts, f"internal error {type(exc).__name__}: {exc} ({last.name})")

    def _parse(self, bar: Any) -> tuple[int, np.ndarray, np.ndarray] | str:
        get = bar.get if isinstance(bar, Mapping) else (lambda k, d=None: getattr(bar, k, d))
        raw_ts = get("timestamp", None)
        if raw_ts is None:
            return "bad bar: missing field 'timestamp'"
        try:
            ts = to_ns(raw_ts)
        except (TypeError, ValueError, OverflowError) as exc:
            return f"bad bar: field 'timestamp' is not a time ({raw_ts!r}: {exc})"
        n = self.n_assets
        ohlcv = np.empty((n, 5))
        extra = np.full((n, len(self.extra_names)), np.nan)
        for j, sym in enumerate(self.symbols):
            src = get if n == 1 and get(sym, None) is None else None
            if src is None:
                sub = get(sym, None)
                if not isinstance(sub, Mapping):
                    return f"bad bar: missing fields of symbol {sym!r}"
                src = sub.get
            where = "" if n == 1 else f" of {sym!r}"
            for k, name in enumerate(OHLCV_FIELDS):
                value = src(name, None)
                if value is None:
                    return f"bad bar: missing field {name!r}{where}"
                try:
                    value = float(value)
                except (TypeError, ValueError):
                    return f"bad bar: field {name!r}{where} is not a number ({value!r})"
                if not math.isfinite(value):
                    return f"bad bar: field {name!r}{where} is {value}"
                if name == "volume" and value < 0:
                    return f"bad bar: volume{where} is negative ({value})"
                if name != "volume" and value <= 0:
                    return f"bad bar: price field {name!r}{where} must be > 0, got {value}"
                ohlcv[j, k] = value
            o, h, lo, c = ohlcv[j, :4]
            if h < lo or not (lo <= o <= h and lo <= c <= h):
                return f"bad bar: open/close{where} outside [low, high] or high < low"
            for e, name in enumerate(self.extra_names):
                value = src(name, None)
                try:
                    extra[j, e] = np.nan if value is None else float(value)
                except (TypeError, ValueError):
                    extra[j, e] = np.nan  # a missing extra value is carried forward
                if np.isinf(extra[j, e]):
                    extra[j, e] = np.nan
        return ts, ohlcv, extra

    def _order_checks(self, ts: int, ohlcv: np.ndarray) -> str | None:
        if self._last_ts is not None:
            if ts == self._last_ts:
                return "duplicate bar: same timestamp as the last one (ignored)"
            if ts < self._last_ts:
                return "out-of-order bar: older than the last one (ignored)"
        if self._last_close is not None and self.guards.max_abs_log_return is not None:
            jump = np.abs(np.log(ohlcv[:, 3] / self._last_close))
            if np.any(jump > self.guards.max_abs_log_return):
                confirmed = self._rejected_close is not None and np.all(
                    np.abs(np.log(ohlcv[:, 3] / self._rejected_close))
                    <= self.guards.max_abs_log_return
                )
                if not confirmed:
                    self._rejected_close = ohlcv[:, 3].copy()
                    return (
                        f"absurd price: close moved {float(jump.max()):.3g} in log terms from the "
                        "last accepted close (held; the next bar at this level is accepted)"
                    )
        return None

    def _ingest(self, ts: int, ohlcv: np.ndarray, extra: np.ndarray) -> str | None:
        note = None
        if self._last_ts is not None:
            spacing = ts - self._last_ts
            expected = self.guards.bar_seconds
            if expected is None and len(self._spacings) >= 3:
                expected = self._median_spacing
            if len(self._spacings) < 16:
                self._spacings.append(spacing)
                # Recomputed only while the sample grows (16 bars), not on every bar.
                self._median_spacing = float(np.median(self._spacings)) / 1e9
            if (
                expected is not None
                and self.guards.gap_bars is not None
                and spacing / 1e9 > self.guards.gap_bars * expected
            ):
                note = f"gap: {spacing / 1e9 / expected:.1f} bar intervals since the last bar"
        row = self.features.push(ts, ohlcv, extra)
        scaled = np.asarray(self.scaler.transform(row[None]), dtype=np.float32)
        flat = np.clip(scaled.reshape(-1), -self.obs_clip, self.obs_clip)
        self._market[:-1] = self._market[1:]
        self._market[-1] = flat
        # The current bar's uncertainty: the largest of the blocks' (not the largest ever seen).
        self._uncertainty = None
        for name, source in self.predictor_blocks.items():
            if hasattr(source, "on_bar"):
                block_row, unc = source.on_bar(ts, ohlcv, extra)
            else:
                block_row, unc = source.step(row, ohlcv)
            self._pred_rows[name] = np.asarray(block_row, dtype=np.float32)
            if unc is not None:
                self._uncertainty = (
                    unc if self._uncertainty is None else max(self._uncertainty, unc)
                )
        close = ohlcv[:, 3]
        if self._last_close is not None:
            self._returns.append(float(np.log(close / self._last_close).mean()))
            if len(self._returns) > self.limits.vol_lookback:
                del self._returns[0]
        self._close = close[None].copy()
        self._last_close = close.copy()
        self._rejected_close = None
        self._last_ts = ts
        self._bars += 1
        # Book-keeping per bar, as step_core does per step: mark, peak, time in trade.
        self._mark()
        self.peak = max(self.peak, self.value)
        units, prev = self.units, self._units_at_last_bar
        in_trade = bool((units != 0.0).any())
        same_book = bool((np.sign(units) == np.sign(prev)).all())
        tit = int(self.time_in_trade[0])
        self.time_in_trade = np.array([(tit + 1 if same_book else 1) if in_trade else 0])
        self._units_at_last_bar = units.copy()
        day = ts // _NS_PER_DAY
        if day != self._day:
            self._day = day
            self._day_start_value = self.value
            if self._killed is not None and self._killed_day is not None:
                self._killed, self._killed_day = None, None  # daily-loss kill lasts one day
        return note

    # --- decisions -----------------------------------------------------------------------------
    def observation(self) -> Any:
        """The observation for the current bar (the env's builder and layout)."""
        block = portfolio_block(
            SimpleNamespace(
                t=np.zeros(1, dtype=np.int64),
                value=np.array([self.value]),
                units=self.units,
                entry_price=self.entry_price,
                cash=self.cash,
                time_in_trade=self.time_in_trade,
                last_target=self.last_target,
            ),
            SimpleNamespace(close=self._close),
            self.window,
        )
        values = {"market": self._market, **self._pred_rows, "portfolio": block[0]}
        return self.builder.build(values)

    def _map(self, action: np.ndarray) -> np.ndarray:
        cfg = self.execution
        if self.action_mode == "discrete":
            return discrete_to_target(np.asarray(action).reshape(1), self.positions, cfg)
        arr = np.asarray(action, dtype=np.float64).reshape(1, -1)
        if not np.all(np.isfinite(arr)):
            raise ValueError(f"policy returned a non-finite action {arr.tolist()}")
        if self.action_mode == "continuous":
            return continuous_to_target(arr, cfg)
        return weights_to_target(arr, cfg)

    def _check_kill(self) -> str | None:
        lim = self.limits
        if self._killed is None:
            if lim.max_drawdown is not None and self.value < self.peak * (1.0 - lim.max_drawdown):
                self._killed = f"kill switch: drawdown beyond {lim.max_drawdown:.1%} of the peak"
            elif lim.max_daily_loss is not None and self.value < self._day_start_value * (
                1.0 - lim.max_daily_loss
            ):
                self._killed = f"kill switch: daily loss beyond {lim.max_daily_loss:.1%}"
                self._killed_day = self._day
        return self._killed

    def _decide(self, ts: int) -> TradeSignal:
        obs = self.observation()
        self.last_observation = obs
        if not np.all(np.isfinite(self.builder.to_flat(obs) if isinstance(obs, dict) else obs)):
            return self._hold(ts, "non-finite observation (check the data and predictors)")
        killed = self._check_kill()
        action: np.ndarray | None = None
        confidence = 1.0
        lim = self.limits
        scale = 1.0
        if killed:
            target = np.zeros((1, self.n_assets))
            reason = killed
        else:
            action, confidence = self.policy.decide(obs)
            if self._uncertainty is not None:
                confidence *= lim.anomaly_scale(self._uncertainty)
            if not math.isfinite(confidence):
                confidence = 0.0
            confidence = min(1.0, max(0.0, confidence))
            target = self._map(action)
            if confidence < lim.confidence_threshold:
                return self._hold(
                    ts,
                    f"confidence {confidence:.3f} below threshold {lim.confidence_threshold}",
                    action=action,
                    confidence=confidence,
                )
            reason = "policy"
            if lim.vol_target is not None and len(self._returns) >= 2:
                bars_per_year = self._bars_per_year()
                vol = float(np.std(self._returns)) * math.sqrt(bars_per_year)
                if vol > lim.vol_target:
                    scale *= lim.vol_target / vol
                    reason += f"; vol target {lim.vol_target:.2f} vs realised {vol:.2f}"
            anomaly = lim.anomaly_scale(self._uncertainty)
            if anomaly < 1.0:
                scale *= anomaly
                reason += f"; anomaly guard x{anomaly:.2f}"
            if scale < 1.0:
                target = target * scale
        price = self._close
        q = size_orders(target, self.units, self.cash, price, self.execution)[0]
        clipped = lim.clip_orders(q, self.units[0], price[0])
        if not np.array_equal(clipped, q):
            reason += "; order cut to risk limits"
            new_units = self.units[0] + clipped
            value = max(self.value, 1e-12)
            target = (new_units * price[0] / value)[None]
        self.last_target = np.array(target, dtype=np.float64)
        return self._signal(ts, clipped, target[0], confidence, reason, action, scale)

    def _bars_per_year(self) -> float:
        seconds = self.guards.bar_seconds
        if seconds is None:
            seconds = self._median_spacing if self._spacings else 3600.0
        return 365.25 * 86_400 / max(seconds, 1e-9)

    def _signal(
        self,
        ts: int,
        q: np.ndarray,
        target: np.ndarray,
        confidence: float,
        reason: str,
        action: np.ndarray | None,
        scale: float,
    ) -> TradeSignal:
        price = self._close[0]
        value = self.value
        legs = []
        for j, sym in enumerate(self.symbols):
            size = abs(float(q[j]))
            side = HOLD if size == 0.0 else (BUY if q[j] > 0 else SELL)
            new_units = float(self.units[0, j] + q[j])
            legs.append(
                SignalLeg(
                    symbol=sym,
                    side=side,
                    size=size,
                    notional=size * float(price[j]),
                    reference_price=float(price[j]),
                    target_units=new_units,
                    target_exposure=new_units * float(price[j]) / value if value > 0 else 0.0,
                )
            )
        trading = [leg for leg in legs if leg.side != HOLD]
        first = trading[0] if trading else legs[0]
        side = first.side
        if not trading:
            reason = f"{reason}; no order needed (at target or inside the rebalance band)"
        self.signals += 1
        return TradeSignal(
            timestamp=ts,
            symbol=first.symbol,
            side=side,
            size=first.size,
            notional=float(sum(leg.notional for leg in legs)),
            target_position=first.target_units,
            target_exposure=tuple(float(x) for x in target),
            confidence=float(confidence),
            reason=reason,
            legs=tuple(legs),
            action=None
            if action is None
            else tuple(np.asarray(action, dtype=float).ravel().tolist()),
            scale=float(scale),
        )

    def _hold(
        self,
        ts: int,
        reason: str,
        action: np.ndarray | None = None,
        confidence: float = 0.0,
    ) -> TradeSignal:
        """A HOLD without a decision (``target_exposure`` None): nothing should change."""
        self.signals += 1
        units = float(self.units[0, 0])
        return TradeSignal(
            timestamp=int(ts),
            symbol=self.symbols[0],
            side=HOLD,
            size=0.0,
            notional=0.0,
            target_position=units,
            target_exposure=None,
            confidence=float(confidence),
            reason=reason,
            legs=(),
            action=None
            if action is None
            else tuple(np.asarray(action, dtype=float).ravel().tolist()),
        )
