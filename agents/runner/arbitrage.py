"""``ArbitrageRunner``: a trained ``Arbitrage-v0`` policy inside a bot loop, one block at a time.

Per snapshot (``on_snapshot``): check it (finite, positive prices and reserves, in order, not
stale, no absurd jump), roll the exogenous history the observation needs into an ``N = 1``
:class:`~envs.arbitrage_core.ScenarioBatch` whose last row is "now", put the snapshot's pool
reserves and the runner's tracked inventory into an :class:`~envs.arbitrage_core.ArbState`, and
build the observation with the env's own functions (``opportunity_table``,
``observation_blocks``) and builder (``make_observation_builder``); so the observation is
bit-identical to the env's for the same history (tested along replayed episodes). The policy's
action is decoded with the env's ``decode_actions`` (sizes clipped to balances, inventory limits
and the gas reserve: never sell what is not held), then the live limits apply.

History kept: ``gas_window + 1`` rows of reference price, spread, base fee, last-block
utilisation and native price; the EWMA volatility and the competitor rate as running values.
The env's episode starts ``gas_window`` rows into its scenario and its EWMA starts at the first
row with ``ScenarioParams.vol_per_block``; the runner does the same from its first snapshot, so
it holds ("warming up") for the first ``gas_window`` snapshots.

Snapshot fields (a mapping, an object with attributes, or keywords):

* ``timestamp`` (int ns, seconds as float, ISO string, datetime) and optionally ``block``;
* ``ref_price`` (CEX mid, quote per base), ``spread`` (relative bid-ask spread, >= 0);
* ``base_fee`` (gwei, of the block the transaction targets), ``utilization`` (fullness of the
  last block, default 0.5), ``native_price`` (quote per gas token; default ``ref_price``: ETH
  pays gas on ETH/USDC);
* ``reserves``: one ``(base, quote)`` pair per pool, as on chain after the last block;
* optional last-block competitor activity: ``competitor_present`` (0/1),
  ``competitor_tip`` (highest competing priority fee, gwei), ``competitor_took`` (0/1);
* ``volumes``: quote traded on each pool during the last block (only runs with a liquidity
  predictor read it).

Runs with predictor blocks (``predictor=[gas]``): the predictors saved with the run compute
their rows from the snapshots with the training walk's protocol (``agents.runner.arb_predictors``);
the runner holds ("warming up predictors") until every block is valid, unless older blocks were
fed with :meth:`ArbitrageRunner.feed_predictors`. Their online updates run in
:meth:`ArbitrageRunner.maintain`, to be called between snapshots.
"""

from __future__ import annotations

import math
import traceback
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from agents.runner.limits import RiskLimits
from agents.runner.market import to_ns
from agents.signals import BUY, HOLD, SELL, Fill, SignalLeg, TradeSignal
from envs import amm
from envs import arbitrage_core as core
from envs.errors import ConfigError, check_known_fields

__all__ = ["ArbitrageRunner", "SnapshotGuards", "arbitrage_config"]

# Arbitrage-v0 constructor arguments that are not ArbConfig fields.
_ENV_ONLY = (
    "flatten",
    "episode_length",
    "render_mode",
    "scenario",
    "scenario_params",
    "dataset",
    "dataset_symbol",
    "predictor_blocks",
)


@dataclass(frozen=True)
class SnapshotGuards:
    """Checks on incoming snapshots.

    Attributes:
        max_abs_log_return: a reference price this far (log terms) from the last accepted one,
            or a pool price this far from the reference, is held as bad data.
        stale_seconds: a snapshot older than this (against ``now``) gives a HOLD; None = off.
        max_block_gap: a jump of more than this many blocks (when ``block`` is given) gives a
            HOLD for that snapshot (the history spans the gap); None = off.
    """

    max_abs_log_return: float = 0.5
    stale_seconds: float | None = None
    max_block_gap: int | None = 1

    def __post_init__(self) -> None:
        for name in ("max_abs_log_return", "stale_seconds", "max_block_gap"):
            v = getattr(self, name)
            if v is not None and (not math.isfinite(v) or v <= 0):
                raise ConfigError(f"guards.{name}: expected null or a number > 0, got {v!r}")

    @classmethod
    def from_dict(cls, values: Mapping[str, Any] | None) -> SnapshotGuards:
        """Build from a config mapping; unknown keys raise a ``ConfigError`` naming them."""
        values = dict(values or {})
        check_known_fields(cls, values, "guards")
        return cls(**values)


def arbitrage_config(config: Mapping[str, Any]) -> tuple[core.ArbConfig, dict[str, Any]]:
    """The ``ArbConfig`` of a run and its env kwargs (action mode resolved as the trainer does).

    Raises:
        ConfigError: unknown or invalid env arguments.
    """
    from envs.arbitrage_env import build_config

    kwargs = dict(config["env"].get("kwargs") or {})
    if kwargs.get("action_mode") is None:
        preferred = config["agent"].get("action_mode")
        if preferred is None:
            kwargs.pop("action_mode", None)
        else:
            kwargs["action_mode"] = str(preferred)
    cfg_kwargs = {k: v for k, v in kwargs.items() if k not in _ENV_ONLY and k != "mode"}
    return build_config(str(kwargs.get("mode") or "cex_dex"), **cfg_kwargs), kwargs


class ArbitrageRunner:
    """Turn one block snapshot at a time into a sized arbitrage :class:`TradeSignal`.

    Build it with :meth:`from_run` (or ``PolicyRunner.from_run`` on an arbitrage run).

    Args:
        policy: an object with ``decide(obs) -> (action, confidence)``.
        cfg: the env's :class:`~envs.arbitrage_core.ArbConfig`.
        flatten: flat observation (as the env's ``flatten``).
        vol0: starting EWMA volatility per block (the env's ``ScenarioParams.vol_per_block``).
        limits: live limits: ``confidence_threshold``, ``max_order_units``,
            ``max_order_notional`` (per slot, at the reference price), ``min_trade_notional``
            and ``min_expected_profit``; the others do not apply to arbitrage.
        guards: snapshot checks.
        block_seconds: spacing of blocks for journals (12 s on Ethereum).
        predictors: ``block name -> OnlineDefiPredictor`` in the env's block order (a run's
            ``predictor=[gas, ...]``; see ``agents.runner.arb_predictors``).
    """

    kind = "arbitrage"

    def __init__(
        self,
        *,
        policy: Any,
        cfg: core.ArbConfig,
        flatten: bool = True,
        vol0: float | None = None,
        limits: RiskLimits | None = None,
        guards: SnapshotGuards | None = None,
        block_seconds: float = 12.0,
        predictors: Mapping[str, Any] | None = None,
    ) -> None:
        from envs.arbitrage_env import make_observation_builder
        from envs.data.defi import ScenarioParams

        self.policy = policy
        self.cfg = cfg
        self.flatten = bool(flatten)
        self.vol0 = float(ScenarioParams().vol_per_block if vol0 is None else vol0)
        self.limits = limits or RiskLimits()
        self.guards = guards or SnapshotGuards()
        self.block_seconds = float(block_seconds)
        self.predictors = dict(predictors or {})
        for name, source in self.predictors.items():
            pool = getattr(source, "pool", 0)
            if source.needs_volume() and not 0 <= pool < cfg.n_pools:
                raise ConfigError(
                    f"predictor block {name!r} reads pool {pool}; the env has {cfg.n_pools}"
                )
        self._pred_shapes = {k: (p.n_columns,) for k, p in self.predictors.items()}
        self.builder = make_observation_builder(
            cfg,
            self._pred_shapes,
            self.flatten,
            {k: list(p.columns) for k, p in self.predictors.items()} or None,
        )
        self.venues = (
            ("cex", *(f"pool{k}" for k in range(cfg.n_pools)))
            if cfg.mode == "cex_dex"
            else ("pool0", "pool1")
        )
        self.symbols = self.venues
        self.reset()

    @classmethod
    def from_run(
        cls,
        run_dir: str | Any,
        device: str = "auto",
        *,
        policy: str = "policy",
        limits: RiskLimits | Mapping[str, Any] | None = None,
        guards: SnapshotGuards | Mapping[str, Any] | None = None,
    ) -> ArbitrageRunner:
        """Rebuild a runner from an arbitrage training run directory alone.

        Predictor blocks (``predictor=[gas, ...]``) are rebuilt from ``<run>/predictors/`` and
        computed online from the snapshots (``agents.runner.arb_predictors``).

        Raises:
            ConfigError: missing files, a malformed config, a policy whose observation width
                does not match.
            DataError: a listed predictor whose saved files are missing.
            CheckpointError: a policy file that is corrupt or would execute code when loaded.
        """
        from agents.registry import load_agent
        from agents.runner.arb_predictors import load_arbitrage_predictors
        from agents.runner.policy import PolicyAdapter
        from agents.runner.run_dir import attach_run, load_run_files

        run = load_run_files(run_dir, policy)
        if run.env_kind != "arbitrage":
            raise ConfigError(f"{run.run_dir}: env.kind={run.env_kind!r}, not an arbitrage run")
        predictors = (
            load_arbitrage_predictors(run.run_dir, run.config, device=device)
            if run.config.get("predictors")
            else {}
        )
        cfg, kwargs = arbitrage_config(run.config)
        if isinstance(limits, Mapping) or limits is None:
            limits = RiskLimits.from_dict(limits)
        if isinstance(guards, Mapping) or guards is None:
            guards = SnapshotGuards.from_dict(guards)
        agent = load_agent(run.config["agent"], run.policy_path, device=device)
        runner = cls(
            policy=PolicyAdapter(agent),
            cfg=cfg,
            flatten=bool(kwargs.get("flatten", False)),
            limits=limits,
            guards=guards,
            predictors=predictors,
        )
        attach_run(runner, agent, run, kwargs, "arbitrage runner")
        return runner

    # --- state ---------------------------------------------------------------------------------
    def reset(self, balances: Sequence[float] | None = None, predictors: bool = True) -> None:
        """Forget the history; start from ``balances`` (default: the config's initial ones).

        Args:
            balances: ``(cex_base, cex_quote, dex_base, dex_quote)``.
            predictors: also reset the predictors to their saved state (False: keep their
                history and online learning, e.g. after feeding them older blocks).
        """
        cfg = self.cfg
        rows = cfg.gas_window + 1
        policy_reset = getattr(self.policy, "reset", None)
        if callable(policy_reset):
            policy_reset()  # a recurrent policy's state restarts from zeros
        if predictors:
            for source in self.predictors.values():
                source.reset()
        self._scen = core.ScenarioBatch.empty(1, rows, cfg.n_pools, self._pred_shapes)
        self._state = core.init_state(cfg, 1)
        self._state.row0[:] = rows - 1
        bal = np.asarray(cfg.initial_balances if balances is None else balances, dtype=np.float64)
        if bal.shape != (4,) or not np.all(np.isfinite(bal)) or np.any(bal < 0):
            raise ConfigError(f"balances: expected 4 finite amounts >= 0, got {balances!r}")
        self._state.bal[0] = bal
        self._state.bal0[0] = bal
        self._row = np.array([rows - 1])
        self._tip0 = np.zeros(1)
        self._seen = 0
        self._var = self.vol0 * self.vol0
        self._last_log_price: np.ndarray | None = None
        self._last_ts: int | None = None
        self._last_block: int | None = None
        self._depth_set = False
        self.last_observation: Any = None
        self.signals = 0

    @property
    def inventory(self) -> np.ndarray:
        """``(cex_base, cex_quote, dex_base, dex_quote)`` as tracked from fills and syncs."""
        return self._state.bal[0].copy()

    def maintain(self) -> int:
        """Run the predictors' pending online updates; call it between snapshots (after the
        signal went out) to keep them off ``on_snapshot``'s latency. Returns updates run."""
        return sum(int(source.maintain()) for source in self.predictors.values())

    def feed_predictors(self, snapshot: Any = None, **values: Any) -> str | None:
        """Feed one older block to the predictors only (history before the bot starts, e.g.
        to skip their warm-up); returns None, or the reason the snapshot was not used."""
        parsed = self._parse(values if snapshot is None else snapshot)
        if isinstance(parsed, str):
            return parsed
        for source in self.predictors.values():
            source.push(source.raw_inputs(parsed))
        return None

    @property
    def predictor_warmup(self) -> int:
        """Snapshots before every predictor block is valid (0 without predictors)."""
        return max((max(0, p.warmup - p.rows_seen) for p in self.predictors.values()), default=0)

    @property
    def last_ref_price(self) -> float | None:
        """Reference price of the last accepted snapshot (None before the first)."""
        return None if self._seen == 0 else float(self._scen.ref_price[0, -1])

    @property
    def snapshots_seen(self) -> int:
        """Snapshots ingested into the history."""
        return self._seen

    @property
    def first_decision_snapshot(self) -> int:
        """Index of the first snapshot the runner decides on (the env's step 0)."""
        return self.cfg.gas_window

    def on_fill(self, fill: Fill) -> None:
        """Record a fill of one leg: ``symbol`` is the venue (``cex``/``pool<k>``), ``units`` the
        signed base amount, ``price`` quote per base, ``cost`` fees and gas in quote (gas is paid
        from the DEX quote balance, so a pool leg's cost lands there).

        Raises:
            ConfigError: unknown venue or non-finite numbers.
        """
        if fill.symbol not in self.venues:
            raise ConfigError(f"on_fill: unknown venue {fill.symbol!r}; expected {self.venues}")
        vals = (fill.units, fill.price, fill.cost)
        if not all(isinstance(v, (int, float, np.number)) and math.isfinite(v) for v in vals):
            raise ConfigError(f"on_fill: units, price and cost must be finite numbers, got {vals}")
        if fill.price <= 0 or fill.cost < 0:
            raise ConfigError(f"on_fill: price must be > 0 and cost >= 0, got {fill}")
        base, quote = (0, 1) if fill.symbol == "cex" else (2, 3)
        bal = self._state.bal[0]
        bal[base] += float(fill.units)
        bal[quote] -= float(fill.units) * float(fill.price) + float(fill.cost)

    def sync_inventory(
        self, balances: Sequence[float], in_transit: Sequence[float] | None = None
    ) -> None:
        """Replace the tracked balances (and amounts in transit) with the venues' numbers.

        Args:
            balances: ``(cex_base, cex_quote, dex_base, dex_quote)``.
            in_transit: the same four slots for transfers under way (default: none).
        """
        bal = np.asarray(balances, dtype=np.float64).reshape(-1)
        tr = np.zeros(4) if in_transit is None else np.asarray(in_transit, np.float64).reshape(-1)
        for name, arr in (("balances", bal), ("in_transit", tr)):
            if arr.shape != (4,) or not np.all(np.isfinite(arr)) or np.any(arr < 0):
                raise ConfigError(f"sync_inventory: {name} must be 4 finite amounts >= 0")
        self._state.bal[0] = bal
        self._state.transit[0] = tr

    # --- snapshots -----------------------------------------------------------------------------
    def on_snapshot(self, snapshot: Any = None, now: Any = None, **values: Any) -> TradeSignal:
        """Ingest one block snapshot and return the signal for it; never raises.

        Args:
            snapshot: a mapping or object with the fields in the module docstring (or pass
                them as keywords).
            now: wall-clock time for the staleness check (None = skip it).
        """
        ts = -1
        try:
            if snapshot is None:
                snapshot = values
            parsed = self._parse(snapshot)
            if isinstance(parsed, str):
                return self._hold(ts, parsed)
            ts = parsed["timestamp"]
            rejected = self._order_checks(parsed)
            if rejected:
                return self._hold(ts, rejected)
            note = self._ingest(parsed)
            if now is not None and self.guards.stale_seconds is not None:
                age = (to_ns(now) - ts) / 1e9
                if age > self.guards.stale_seconds:
                    return self._hold(ts, f"stale data: snapshot is {age:.0f}s old")
            if note:
                return self._hold(ts, note)
            if self._seen <= self.first_decision_snapshot:
                return self._hold(
                    ts, f"warming up: {self._seen}/{self.first_decision_snapshot + 1} snapshots"
                )
            waiting = self.predictor_warmup
            if waiting > 0:
                # Blocks before a predictor's first prediction hold fill values the policy
                # never saw on held-out rows; feed_predictors() with older blocks skips this.
                return self._hold(ts, f"warming up predictors: {waiting} more snapshots")
            return self._decide(ts)
        except Exception as exc:  # the bot loop must never see an exception from here
            last = traceback.extract_tb(exc.__traceback__)[-1]
            return self._hold(ts, f"internal error {type(exc).__name__}: {exc} ({last.name})")

    def _parse(self, snap: Any) -> dict[str, Any] | str:
        get = snap.get if isinstance(snap, Mapping) else (lambda k, d=None: getattr(snap, k, d))
        raw_ts = get("timestamp", None)
        if raw_ts is None:
            return "bad snapshot: missing field 'timestamp'"
        try:
            out: dict[str, Any] = {"timestamp": to_ns(raw_ts)}
        except (TypeError, ValueError, OverflowError) as exc:
            return f"bad snapshot: field 'timestamp' is not a time ({raw_ts!r}: {exc})"
        block = get("block", None)
        if block is not None:
            try:
                out["block"] = int(block)
            except (TypeError, ValueError):
                return f"bad snapshot: field 'block' is not an integer ({block!r})"
        specs = (
            ("ref_price", None, "positive"),
            ("spread", 0.0, "nonneg"),
            ("base_fee", None, "positive"),
            ("utilization", 0.5, "nonneg"),
            ("native_price", None, "positive"),
            ("competitor_present", 0.0, "nonneg"),
            ("competitor_tip", 0.0, "nonneg"),
            ("competitor_took", 0.0, "nonneg"),
        )
        for name, default, rule in specs:
            value = get(name, None)
            if value is None:
                if name == "native_price":
                    value = out["ref_price"]
                elif default is None:
                    return f"bad snapshot: missing field {name!r}"
                else:
                    value = default
            try:
                value = float(value)
            except (TypeError, ValueError):
                return f"bad snapshot: field {name!r} is not a number ({value!r})"
            if not math.isfinite(value):
                return f"bad snapshot: field {name!r} is {value}"
            if rule == "positive" and value <= 0:
                return f"bad snapshot: field {name!r} must be > 0, got {value}"
            if value < 0:
                return f"bad snapshot: field {name!r} must be >= 0, got {value}"
            out[name] = value
        reserves = get("reserves", None)
        k = self.cfg.n_pools
        try:
            res = np.asarray(reserves, dtype=np.float64)
        except (TypeError, ValueError):
            return f"bad snapshot: field 'reserves' is not {k} (base, quote) pairs ({reserves!r})"
        if reserves is None or res.shape != (k, 2):
            return f"bad snapshot: field 'reserves' must be {k} (base, quote) pairs ({reserves!r})"
        if not np.all(np.isfinite(res)) or np.any(res <= 0):
            return f"bad snapshot: pool reserves must be finite and > 0, got {res.tolist()}"
        out["reserves"] = res
        if any(p.needs_volume() for p in self.predictors.values()):
            vols = get("volumes", None)
            try:
                vol = np.asarray(vols, dtype=np.float64).reshape(-1)
            except (TypeError, ValueError):
                return f"bad snapshot: field 'volumes' is not {k} numbers ({vols!r})"
            if vols is None or vol.shape != (k,):
                return f"bad snapshot: field 'volumes' must be {k} numbers per pool ({vols!r})"
            if not np.all(np.isfinite(vol)) or np.any(vol < 0):
                return f"bad snapshot: pool volumes must be finite and >= 0, got {vol.tolist()}"
            out["volumes"] = vol
        return out

    def _order_checks(self, snap: dict[str, Any]) -> str | None:
        ts, block = snap["timestamp"], snap.get("block")
        if self._last_block is not None and block is not None:
            if block == self._last_block:
                return "duplicate snapshot: same block as the last one (ignored)"
            if block < self._last_block:
                return "out-of-order snapshot: older block than the last one (ignored)"
        elif self._last_ts is not None:
            if ts == self._last_ts:
                return "duplicate snapshot: same timestamp as the last one (ignored)"
            if ts < self._last_ts:
                return "out-of-order snapshot: older than the last one (ignored)"
        limit = self.guards.max_abs_log_return
        p = snap["ref_price"]
        if limit is not None:
            res = snap["reserves"]
            gap = np.abs(np.log(res[:, 1] / res[:, 0] / p))
            if np.any(gap > limit):
                return f"absurd price: a pool price is {float(gap.max()):.3g} (log) from the CEX"
            if self._last_log_price is not None:
                jump = abs(float(np.log(np.array([p]))[0] - self._last_log_price[0]))
                if jump > limit:
                    return f"absurd price: reference moved {jump:.3g} in log terms (ignored)"
        return None

    def _ingest(self, snap: dict[str, Any]) -> str | None:
        sc = self._scen
        for arr in (sc.ref_price, sc.spread, sc.base_fee, sc.utilization, sc.native_price):
            arr[0, :-1] = arr[0, 1:]
        for arr in (sc.ref_ret, sc.ewma_vol):
            arr[0, :-1] = arr[0, 1:]
        p = snap["ref_price"]
        sc.ref_price[0, -1] = p
        sc.spread[0, -1] = snap["spread"]
        sc.base_fee[0, -1] = snap["base_fee"]
        sc.native_price[0, -1] = snap["native_price"]
        # Row t's utilisation is the fullness of block t; the observation reads row t - 1.
        sc.utilization[0, -2] = snap["utilization"]
        sc.utilization[0, -1] = 0.0
        # The env's ScenarioBatch.load: log return into the row (np.diff of np.log over the
        # window) and the causal EWMA of squared returns (lambda = 0.97), same operations.
        lp = np.log(np.array([p]))
        ret = 0.0 if self._last_log_price is None else (lp - self._last_log_price)[0]
        self._last_log_price = lp
        self._var = 0.97 * self._var + 0.03 * ret * ret
        sc.ref_ret[0, -1] = ret
        sc.ewma_vol[0, -1] = np.sqrt(np.array([self._var]))[0]
        for name, source in self.predictors.items():
            sc.predictors[name][0, -1] = source.push(source.raw_inputs(snap))
        st = self._state
        st.x[0] = snap["reserves"][:, 0]
        st.y[0] = snap["reserves"][:, 1]
        note = None
        if self._seen > self.first_decision_snapshot:
            # Competitor activity of the last block (core_step's update of the same fields).
            st.last_comp_tip[0] = snap["competitor_tip"]
            st.last_comp_took[0] = float(snap["competitor_took"] > 0)
            st.comp_rate[0] = 0.95 * st.comp_rate[0] + 0.05 * (snap["competitor_present"] > 0)
        if self._seen == self.first_decision_snapshot and not self._depth_set:
            # The env's pools start the episode at liq0 = sqrt(x*y): depth is relative to it.
            st.liq0[0] = np.sqrt(st.x[0] * st.y[0])
            self._depth_set = True
        block = snap.get("block")
        gap_limit = self.guards.max_block_gap
        if (
            block is not None
            and self._last_block is not None
            and gap_limit is not None
            and block - self._last_block > gap_limit
        ):
            note = f"gap: {block - self._last_block} blocks since the last snapshot"
        self._last_block = block if block is not None else self._last_block
        self._last_ts = snap["timestamp"]
        self._seen += 1
        return note

    # --- decisions -----------------------------------------------------------------------------
    def observation(self) -> Any:
        """The observation for the current snapshot (the env's functions and builder)."""
        opp = core.opportunity_table(self.cfg, self._state, self._scen, self._row, self._tip0)
        blocks = core.observation_blocks(self.cfg, self._state, self._scen, opp)
        return self.builder.build({k: v[0] for k, v in blocks.items()})

    def decode(self, action: Any) -> tuple[np.ndarray, float]:
        """The env's decoding of a policy action: signed base size per slot and tip in gwei."""
        cfg = self.cfg
        if cfg.action_mode == "discrete":
            act = np.asarray(action).reshape(1).astype(np.int64)
            if not 0 <= int(act[0]) < cfg.n_discrete_actions:
                raise ValueError(f"discrete action {int(act[0])} out of range")
        else:
            act = np.asarray(action, dtype=np.float64).reshape(1, -1)
            if act.shape[1] != cfg.n_slots + 1 or not np.all(np.isfinite(act)):
                raise ValueError(f"policy returned an invalid action {act.tolist()}")
        size, tip = core.decode_actions(cfg, act, self._state, self._scen)
        return size[0].copy(), float(tip[0])

    def _decide(self, ts: int) -> TradeSignal:
        obs = self.observation()
        self.last_observation = obs
        if not np.all(np.isfinite(self.builder.to_flat(obs) if isinstance(obs, dict) else obs)):
            return self._hold(ts, "non-finite observation (check the snapshot)")
        action, confidence = self.policy.decide(obs)
        confidence = min(1.0, max(0.0, confidence)) if math.isfinite(confidence) else 0.0
        lim = self.limits
        if confidence < lim.confidence_threshold:
            return self._hold(
                ts,
                f"confidence {confidence:.3f} below threshold {lim.confidence_threshold}",
                action=action,
                confidence=confidence,
            )
        size, tip = self.decode(action)
        reason = "policy"
        p = float(self._scen.ref_price[0, -1])
        cfg = self.cfg
        floor = cfg.dead_zone * cfg.max_trade_size if cfg.action_mode == "continuous" else 0.0
        for s in range(size.shape[0]):
            mag = abs(float(size[s]))
            if mag == 0.0:
                continue
            cap = math.inf
            if lim.max_order_units is not None:
                cap = min(cap, lim.max_order_units)
            if lim.max_order_notional is not None:
                cap = min(cap, lim.max_order_notional / p)
            if mag > cap:
                size[s] = math.copysign(cap, size[s])
                reason += f"; slot {s} cut to the order limit"
                if abs(float(size[s])) < floor:
                    size[s] = 0.0  # decode_actions sends nothing under the dead zone either
            if 0.0 < abs(float(size[s])) * p < lim.min_trade_notional:
                size[s] = 0.0
                reason += f"; slot {s} under the minimum trade notional"
        gross, gas = self.expected_profit(size, tip)
        expected = float(gross.sum() - gas * np.count_nonzero(size))
        if (
            lim.min_expected_profit is not None
            and np.any(size != 0)
            and expected < lim.min_expected_profit
        ):
            return self._hold(
                ts,
                f"expected profit {expected:.2f} below {lim.min_expected_profit}",
                action=action,
                confidence=confidence,
            )
        return self._signal(ts, size, tip, gross, gas, confidence, reason, action)

    def expected_profit(self, size: np.ndarray, tip_gwei: float) -> tuple[np.ndarray, float]:
        """Gross profit per slot at the snapshot's reserves and CEX quotes (pool and CEX fees,
        half spread included) and the gas of one transaction at ``base + tip``, both in quote."""
        cfg, sc, st = self.cfg, self._scen, self._state
        p, spread = float(sc.ref_price[0, -1]), float(sc.spread[0, -1])
        bid = p * (1.0 - 0.5 * spread) * (1.0 - cfg.cex_fee)
        ask = p * (1.0 + 0.5 * spread) * (1.0 + cfg.cex_fee)
        x, y, fees = st.x[0], st.y[0], np.asarray(cfg.pool_fees)
        gross = np.zeros(size.shape[0])
        for s, dx in enumerate(size):
            if dx == 0.0:
                continue
            if cfg.mode == "cex_dex":
                if dx > 0:
                    gross[s] = float(amm.arb_buy_x_profit(dx, x[s], y[s], fees[s], bid))
                else:
                    gross[s] = float(amm.arb_sell_x_profit(-dx, x[s], y[s], fees[s], ask))
            else:
                a, b = (0, 1) if dx > 0 else (1, 0)
                gross[s] = float(
                    amm.two_pool_profit(abs(dx), x[a], y[a], fees[a], x[b], y[b], fees[b])
                )
        native, base = float(sc.native_price[0, -1]), float(sc.base_fee[0, -1])
        gas = cfg.gas_units * (base + tip_gwei) * core.GWEI * native
        return gross, float(gas)

    def _legs(self, size: np.ndarray) -> list[SignalLeg]:
        cfg, sc, st = self.cfg, self._scen, self._state
        p, spread = float(sc.ref_price[0, -1]), float(sc.spread[0, -1])
        x, y, fees = st.x[0], st.y[0], np.asarray(cfg.pool_fees)
        bal = st.bal[0]
        cex_b, dex_b = float(bal[0]), float(bal[2])
        legs: list[SignalLeg] = []

        def leg(venue: str, side: str, dx: float, price: float, after: float) -> SignalLeg:
            return SignalLeg(venue, side, dx, dx * price, price, after, 0.0)

        for s, signed in enumerate(size):
            dx = abs(float(signed))
            if dx == 0.0:
                continue
            if cfg.mode == "cex_dex":
                pool = f"pool{s}"
                if signed > 0:  # buy base from the pool, sell it on the CEX
                    paid = float(amm.amount_in_for_out(dx, y[s], x[s], fees[s]))
                    dex_b += dx
                    cex_b -= dx
                    bid = p * (1.0 - 0.5 * spread) * (1.0 - cfg.cex_fee)
                    legs += [leg(pool, BUY, dx, paid / dx, dex_b), leg("cex", SELL, dx, bid, cex_b)]
                else:  # buy base on the CEX, sell it to the pool
                    got = float(amm.amount_out(dx, x[s], y[s], fees[s]))
                    dex_b -= dx
                    cex_b += dx
                    ask = p * (1.0 + 0.5 * spread) * (1.0 + cfg.cex_fee)
                    legs += [leg(pool, SELL, dx, got / dx, dex_b), leg("cex", BUY, dx, ask, cex_b)]
            else:  # atomic route: buy from one pool, sell into the other (DEX base unchanged)
                a, b = (0, 1) if signed > 0 else (1, 0)
                paid = float(amm.amount_in_for_out(dx, y[a], x[a], fees[a]))
                got = float(amm.amount_out(dx, x[b], y[b], fees[b]))
                legs += [
                    leg(f"pool{a}", BUY, dx, paid / dx, dex_b + dx),
                    leg(f"pool{b}", SELL, dx, got / dx, dex_b),
                ]
        return legs

    def slot_sizes(self, signal: TradeSignal) -> np.ndarray:
        """Signed size per slot of a signal's legs (the env's convention: + buys on the DEX
        side of the slot), e.g. to execute it in a simulator."""
        size = np.zeros(self.cfg.n_slots)
        for leg_ in signal.legs:
            if self.cfg.mode == "cex_dex":
                if leg_.symbol.startswith("pool"):
                    s = int(leg_.symbol[4:])
                    size[s] = leg_.size if leg_.side == BUY else -leg_.size
            elif leg_.symbol == "pool0":
                size[0] = leg_.size if leg_.side == BUY else -leg_.size
        return size

    def _signal(
        self,
        ts: int,
        size: np.ndarray,
        tip: float,
        gross: np.ndarray,
        gas: float,
        confidence: float,
        reason: str,
        action: Any,
    ) -> TradeSignal:
        legs = self._legs(size)
        n_tx = int(np.count_nonzero(size))
        self.signals += 1
        raw = None if action is None else tuple(np.asarray(action, dtype=float).ravel().tolist())
        if not legs:
            return TradeSignal(
                timestamp=ts,
                symbol=self.venues[0],
                side=HOLD,
                size=0.0,
                notional=0.0,
                target_position=float(self._state.bal[0, 2]),
                target_exposure=(),
                confidence=float(confidence),
                reason=f"{reason}; no trade (the policy abstains or nothing fits the limits)",
                action=raw,
                expected_profit=0.0,
                gas_cost=0.0,
                priority_fee_gwei=0.0,
            )
        first = legs[0]
        return TradeSignal(
            timestamp=ts,
            symbol=first.symbol,
            side=first.side,
            size=first.size,
            notional=float(sum(leg_.notional for leg_ in legs)),
            target_position=first.target_units,
            target_exposure=(),
            confidence=float(confidence),
            reason=reason,
            legs=tuple(legs),
            action=raw,
            expected_profit=float(gross.sum() - gas * n_tx),
            gas_cost=float(gas * n_tx),
            priority_fee_gwei=float(tip),
        )

    def _hold(
        self, ts: int, reason: str, action: Any = None, confidence: float = 0.0
    ) -> TradeSignal:
        """A HOLD without a decision (``target_exposure`` None)."""
        self.signals += 1
        return TradeSignal(
            timestamp=int(ts),
            symbol=self.venues[0],
            side=HOLD,
            size=0.0,
            notional=0.0,
            target_position=float(self._state.bal[0, 2]),
            target_exposure=None,
            confidence=float(confidence),
            reason=reason,
            action=None if action is None else tuple(np.asarray(action, float).ravel().tolist()),
        )
