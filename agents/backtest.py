"""Replay a dataset through a :class:`~agents.runner.PolicyRunner` bar by bar, with simulated fills.

The runner sees exactly what a live bot would: one bar at a time, from the first bar of the
data. The simulated broker is the env's own step (``envs.market_core.step_core``, the reference
the env is pinned to): a signal's target exposure decided at bar ``t``'s close fills at the open
of bar ``t + latency`` with the env's fees, spread, square-root impact and funding; HOLDs without
a decision send no order. Fills are reported back with ``runner.on_fill`` and the broker's cash
and units with ``runner.sync_account``, as a live bot would from the exchange. With default risk
limits the replay therefore equals the env's deterministic evaluation of the same policy on the
same data (same observations, actions, equity; ``tests/test_backtest.py``).

Metrics (``envs.metrics.episode_metrics``) start at the runner's first decision bar, as an env
episode with ``random_start=False`` does; baselines (buy-and-hold, flat) run through the same
broker from the same bar.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from agents.runner.market import PolicyRunner
from agents.signals import BUY, Fill, TradeSignal
from envs.data.dataset import MarketDataset
from envs.errors import ConfigError, DataError
from envs.market_core import CoreParams, build_market_arrays, initial_state, step_core
from envs.metrics import episode_metrics
from envs.rewards import make_reward

__all__ = [
    "ArbitrageBacktestResult",
    "BacktestResult",
    "SimulatedBroker",
    "arbitrage_snapshot",
    "bar_dict",
    "load_replay_data",
    "replay_history",
    "run_arbitrage_backtest",
    "run_backtest",
    "save_arbitrage_chart",
    "save_chart",
]


def bar_dict(dataset: MarketDataset, t: int) -> dict[str, Any]:
    """Bar ``t`` of a dataset in the runner's input format (flat for one asset)."""
    row = dataset.ohlcv[t]
    names = ("open", "high", "low", "close", "volume")
    if dataset.n_assets == 1:
        bar: dict[str, Any] = {k: float(row[0, i]) for i, k in enumerate(names)}
        for e, name in enumerate(dataset.extra_names):
            bar[name] = float(dataset.extra[t, 0, e])
    else:
        bar = {}
        for j, sym in enumerate(dataset.symbols):
            sub = {k: float(row[j, i]) for i, k in enumerate(names)}
            for e, name in enumerate(dataset.extra_names):
                sub[name] = float(dataset.extra[t, j, e])
            bar[sym] = sub
    bar["timestamp"] = int(dataset.timestamps[t])
    return bar


class SimulatedBroker:
    """The env's execution and accounting on a dataset, driven by target exposures.

    Args:
        dataset: the bars (the "exchange").
        execution: sizing and cost parameters (the run's ``ExecutionConfig``).
        initial_cash: starting cash.
        vol_lookback: returns in the impact model's volatility (the env's ``vol_lookback``).
    """

    def __init__(
        self, dataset: MarketDataset, execution: Any, initial_cash: float, vol_lookback: int = 24
    ) -> None:
        n = dataset.n_assets
        # Features are irrelevant to fills; a zero column satisfies the arrays' checks.
        self.arrays = build_market_arrays(
            dataset,
            np.zeros((len(dataset), 1), dtype=np.float32),
            0,
            1,
            vol_lookback=int(vol_lookback),
            impact_needed=execution.impact_k > 0,
        )
        self.params = CoreParams(execution=execution, initial_cash=float(initial_cash), window=1)
        self.reward = make_reward("log_return", {})
        self.state = initial_state(
            self.arrays, self.params, self.reward, np.zeros(1), np.array([len(dataset) - 1])
        )
        self.n = n

    def step(self, target: np.ndarray | None) -> dict[str, Any]:
        """Advance one bar with a target decided at the current bar (None: no order)."""
        tgt = np.full((1, self.n), np.nan) if target is None else np.asarray(target, float)[None]
        old = self.state
        self.state, out = step_core(self.arrays, self.params, self.reward, old, tgt)
        s = int(self.state.t[0])
        return {
            "bar": s,
            "q": (self.state.units - old.units)[0],
            "price": self.arrays.open[s],
            "cost": float(
                (self.state.fees - old.fees + self.state.spread - old.spread)[0]
                + (self.state.impact - old.impact)[0]
            ),
            "fees": float((self.state.fees - old.fees)[0]),
            "step_cost": float(out.step_cost[0]),
            "terminated": bool(out.terminated[0]),
        }


@dataclass
class BacktestResult:
    """What a replay produced.

    Attributes:
        metrics: ``{policy name: metrics}`` (the runner's policy first, then baselines).
        equity: ``{policy name: equity curve from the first decision bar}``.
        positions: ``(steps + 1, N)`` exposures of the runner's book along the curve.
        signals: every signal the runner returned (one per bar).
        first_bar: the first decision bar.
        timestamps: timestamps of the equity curve's bars.
    """

    metrics: dict[str, dict[str, float]]
    equity: dict[str, np.ndarray]
    positions: np.ndarray
    signals: list[TradeSignal] = field(default_factory=list)
    first_bar: int = 0
    timestamps: np.ndarray | None = None

    def to_json(self) -> str:
        """Metrics and curves as JSON."""
        return json.dumps(
            {
                "metrics": self.metrics,
                "first_bar": self.first_bar,
                "equity": {k: v.tolist() for k, v in self.equity.items()},
            },
            indent=2,
        )


def _drive(
    dataset: MarketDataset,
    broker: SimulatedBroker,
    decide: Callable[[int], np.ndarray | None],
    first: int | None = None,
    after_step: Callable[[dict[str, Any]], None] | None = None,
) -> tuple[np.ndarray, np.ndarray, dict[str, float], int | None]:
    """The one replay loop: step the broker from bar 0 with ``decide(t)``'s target exposures.

    Equity, exposures and trade totals are recorded from bar ``first`` on; ``first=None``
    finds it lazily as the first bar whose target is not None (the runner's first decision).
    Targets before ``first`` are not sent. ``after_step`` sees every broker step's fills (the
    runner's ``on_fill`` / ``sync_account`` hook). A ruinous step ends the replay after its
    equity is recorded, as the env's episode ends on ``terminated``.

    Returns:
        equity curve, exposures per recorded bar, totals (fees, costs, trades, wins, closed
        round trips) and ``first``.
    """
    equity: list[float] = []
    exposures: list[np.ndarray] = []
    totals = {"fees": 0.0, "costs": 0.0, "trades": 0.0, "wins": 0.0, "closed": 0.0}
    last = len(dataset) - 1
    entry_value = None
    for t in range(len(dataset)):
        target = decide(t)
        if first is None and target is not None:
            first = t
        active = first is not None and t >= first
        if active:
            st = broker.state
            value = float(st.value[0])
            equity.append(value)
            exposures.append(st.units[0] * broker.arrays.close[t] / max(value, 1e-12))
        if t == last:
            break
        was_flat = not np.any(broker.state.units != 0)
        value_before = float(broker.state.value[0])
        info = broker.step(target if active else None)
        if after_step is not None:
            after_step(info)
        if active:
            totals["fees"] += info["fees"]
            totals["costs"] += info["cost"]
            trades = int(np.count_nonzero(info["q"]))
            totals["trades"] += trades
            now_flat = not np.any(broker.state.units != 0)
            if trades and was_flat and not now_flat:
                entry_value = value_before
            elif trades and now_flat and entry_value is not None:
                totals["closed"] += 1
                totals["wins"] += float(broker.state.value[0] > entry_value)
                entry_value = None
        if info["terminated"]:
            if active:
                st = broker.state
                equity.append(float(st.value[0]))
                exposures.append(
                    st.units[0] * broker.arrays.close[info["bar"]] / max(float(st.value[0]), 1e-12)
                )
            break
    return np.asarray(equity), np.asarray(exposures), totals, first


def _metrics(
    equity: np.ndarray, broker: SimulatedBroker, totals: Mapping[str, float], initial_cash: float
) -> dict[str, float]:
    out = episode_metrics(
        equity,
        broker.arrays.bars_per_year,
        turnover=float(broker.state.traded_notional[0]) / initial_cash,
    )
    out = {k: float(v) for k, v in out.items()}
    out["fees"] = float(totals["fees"])
    out["costs"] = float(totals["costs"])
    out["gas"] = 0.0  # market runs pay no gas; the column keeps tables comparable to arbitrage
    out["trades"] = float(totals["trades"])
    out["win_rate"] = float(totals["wins"] / totals["closed"]) if totals["closed"] else float("nan")
    out["final_value"] = float(equity[-1])
    return out


def run_backtest(
    runner: PolicyRunner,
    dataset: MarketDataset,
    baselines: bool = True,
    progress: Callable[[int, TradeSignal], None] | None = None,
    history: MarketDataset | None = None,
) -> BacktestResult:
    """Replay ``dataset`` through ``runner`` bar by bar and simulate its fills.

    Args:
        runner: a fresh runner (it is reset to a flat book first).
        dataset: the bars, from the first one (the runner warms up on them as live).
        baselines: also run buy-and-hold and flat through the same broker.
        progress: called with ``(bar, signal)`` after every bar.
        history: bars before ``dataset`` fed to the runner's predictor blocks only
            (``PolicyRunner.feed_predictors``), so online predictors reach the replay's first
            bar as training's walk did (see :func:`replay_history`); ignored without
            predictor blocks.

    Raises:
        DataError: the dataset's symbols do not match the runner's number of assets, or the
            runner never got past its warm-up.
    """
    if dataset.n_assets != runner.n_assets:
        raise DataError(
            f"{dataset.source}: {dataset.n_assets} assets, the runner trades {runner.n_assets}"
        )
    if runner.n_assets > 1 or runner.symbols[0] == "asset":
        runner.symbols = tuple(dataset.symbols)
    runner.reset()
    if history is not None and len(history) and getattr(runner, "predictor_blocks", None):
        for t in range(len(history)):
            runner.feed_predictors(bar_dict(history, t))
            runner.maintain()
        runner.reset(predictors=False)
    cfg = runner.execution
    vol_lookback = int(getattr(runner, "env_kwargs", {}).get("vol_lookback", 24))
    broker = SimulatedBroker(dataset, cfg, runner.initial_cash, vol_lookback)
    signals: list[TradeSignal] = []

    def decide(t: int) -> np.ndarray | None:
        sig = runner.on_bar(bar_dict(dataset, t))
        signals.append(sig)
        if progress is not None:
            progress(t, sig)
        return None if sig.target_exposure is None else np.asarray(sig.target_exposure)

    def report_fills(info: dict[str, Any]) -> None:
        # What a live bot does after the exchange fills: report fills, then sync the account.
        q = info["q"]
        for j, sym in enumerate(runner.symbols):
            if q[j] != 0.0:
                cost = info["cost"] if j == 0 else 0.0
                runner.on_fill(Fill(sym, float(q[j]), float(info["price"][j]), cost))
        runner.sync_account(float(broker.state.cash[0]), broker.state.units[0])

    equity, exposures, totals, first = _drive(dataset, broker, decide, None, report_fills)
    if first is None or len(equity) < 2:
        raise DataError(
            f"{dataset.source}: {len(dataset)} bars never got the runner past its warm-up "
            f"(first decision bar {runner.first_decision_bar}); replay more bars"
        )
    name = str(getattr(runner, "config", {}).get("agent", {}).get("name", "policy"))
    metrics = {name: _metrics(equity, broker, totals, runner.initial_cash)}
    curves = {name: equity}
    if baselines:
        n = dataset.n_assets
        for base, exposure in (("buy_and_hold", 1.0 / n * cfg.max_leverage), ("flat", 0.0)):
            target = np.full(n, exposure)
            b = SimulatedBroker(dataset, cfg, runner.initial_cash, vol_lookback)
            eq, _, tot, _ = _drive(dataset, b, lambda t, tg=target: tg, first)
            metrics[base] = _metrics(eq, b, tot, runner.initial_cash)
            curves[base] = eq
    ts = dataset.timestamps[first : first + len(equity)]
    return BacktestResult(
        metrics=metrics,
        equity=curves,
        positions=exposures,
        signals=signals,
        first_bar=first,
        timestamps=ts,
    )


def save_chart(result: BacktestResult, path: str | Path, title: str = "backtest") -> Path:
    """Equity curves, drawdown and the runner's exposures as a PNG."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 7), dpi=100)
    FigureCanvasAgg(fig)
    ax_eq, ax_dd, ax_pos = fig.subplots(3, 1, sharex=True, height_ratios=[3, 1.2, 1.2])
    for name, curve in result.equity.items():
        ax_eq.plot(np.arange(curve.size), curve, lw=1.0, label=name)
    ax_eq.set_ylabel("portfolio value")
    ax_eq.legend(loc="upper left", fontsize=8)
    ax_eq.set_title(title)
    main = next(iter(result.equity.values()))
    peak = np.maximum.accumulate(main)
    ax_dd.fill_between(np.arange(main.size), main / peak - 1.0, 0.0, color="tab:red", alpha=0.4)
    ax_dd.set_ylabel("drawdown")
    for j in range(result.positions.shape[1] if result.positions.ndim == 2 else 0):
        ax_pos.plot(np.arange(result.positions.shape[0]), result.positions[:, j], lw=0.8)
    ax_pos.set_ylabel("exposure")
    ax_pos.set_xlabel(f"bar (from bar {result.first_bar} of the data)")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path


def load_replay_data(
    spec: str,
    split: str = "all",
    train_share: float = 0.7,
    val_share: float = 0.15,
    seed: int = 0,
) -> MarketDataset:
    """Load the bars to replay: a CSV/Parquet path, ``sample`` or ``synthetic:<gen>:<bars>``.

    Raises:
        ConfigError: an unknown spec or split.
    """
    from agents.tasks import load_data
    from envs.data.splits import chronological_split

    spec = str(spec)
    if spec in ("sample", "btc_usd_hourly"):
        ds = load_data({"kind": "sample", "name": "btc_usd_hourly"}, seed)
    elif spec.startswith("synthetic:"):
        parts = spec.split(":")
        if len(parts) != 3 or not parts[2].isdigit():
            raise ConfigError(f"data={spec!r}: expected synthetic:<generator>:<bars>")
        ds = load_data({"kind": "synthetic", "generator": parts[1], "n_bars": int(parts[2])}, seed)
    else:
        kind = "parquet" if spec.endswith((".parquet", ".pq")) else "csv"
        ds = load_data({"kind": kind, "path": spec}, seed)
    if split == "all":
        return ds
    parts = dict(
        zip(("train", "val", "test"), chronological_split(ds, train_share, val_share), strict=True)
    )
    if split not in parts:
        raise ConfigError(f"split: expected all, train, val or test, got {split!r}")
    return parts[split]


def replay_history(
    spec: str,
    split: str,
    train_share: float = 0.7,
    val_share: float = 0.15,
    seed: int = 0,
) -> MarketDataset | None:
    """The bars before ``split`` of the dataset :func:`load_replay_data` reads (None for
    ``all`` or ``train``): what a run's online predictors walked through before that split."""
    if split in ("all", "train"):
        return None
    full = load_replay_data(spec, "all", train_share, val_share, seed)
    part = load_replay_data(spec, split, train_share, val_share, seed)
    start = int(np.searchsorted(full.timestamps, part.timestamps[0]))
    return full.slice(0, start) if start > 0 else None


def paper_trade(
    runner: PolicyRunner,
    dataset: MarketDataset,
    journal: str | Path,
    pace: float = 0.0,
    max_bars: int | None = None,
    echo: Callable[[str], None] | None = print,
    quiet: bool = False,
) -> dict[str, float]:
    """A paper-trading bot loop: feed bars at ``pace``, print signals, journal signals and fills.

    Fills are simulated by the env's execution (next bar's open, fees, spread, impact) and
    reported back to the runner with ``on_fill`` / ``sync_account``, as a real bot would.

    Returns:
        Final value, return and the number of fills.
    """
    import csv
    import time

    runner.symbols = tuple(dataset.symbols)
    runner.reset()
    vol_lookback = int(getattr(runner, "env_kwargs", {}).get("vol_lookback", 24))
    broker = SimulatedBroker(dataset, runner.execution, runner.initial_cash, vol_lookback)
    journal = Path(journal)
    journal.parent.mkdir(parents=True, exist_ok=True)
    n = len(dataset) if max_bars is None else min(len(dataset), int(max_bars))
    fills = 0
    with open(journal, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(
            [
                "kind",
                "timestamp",
                "symbol",
                "side",
                "size",
                "price_or_notional",
                "target",
                "confidence",
                "value",
                "reason",
            ]
        )
        for t in range(n):
            sig = runner.on_bar(bar_dict(dataset, t))
            stamp = np.datetime64(sig.timestamp, "ns").astype("datetime64[s]")
            target = (
                ""
                if sig.target_exposure is None
                else ";".join(f"{x:.4f}" for x in sig.target_exposure)
            )
            writer.writerow(
                [
                    "signal",
                    stamp,
                    sig.symbol,
                    sig.side,
                    f"{sig.size:.8g}",
                    f"{sig.notional:.2f}",
                    target,
                    f"{sig.confidence:.3f}",
                    f"{runner.value:.2f}",
                    sig.reason,
                ]
            )
            if echo is not None and (not quiet or sig.side != "HOLD"):
                echo(
                    f"{stamp} {sig.side:4s} {sig.symbol} size={sig.size:.6g} "
                    f"target={target or '-'} conf={sig.confidence:.2f} "
                    f"value={runner.value:.2f} | {sig.reason}"
                )
            if t + 1 < n:
                target_arr = (
                    None if sig.target_exposure is None else np.asarray(sig.target_exposure)
                )
                info = broker.step(target_arr)
                for j, sym in enumerate(runner.symbols):
                    q = float(info["q"][j])
                    if q != 0.0:
                        fills += 1
                        price = float(info["price"][j])
                        runner.on_fill(Fill(sym, q, price, info["cost"] if j == 0 else 0.0))
                        writer.writerow(
                            [
                                "fill",
                                np.datetime64(int(dataset.timestamps[t + 1]), "ns").astype(
                                    "datetime64[s]"
                                ),
                                sym,
                                "BUY" if q > 0 else "SELL",
                                f"{abs(q):.8g}",
                                f"{price:.6g}",
                                "",
                                "",
                                "",
                                "simulated fill",
                            ]
                        )
                runner.sync_account(float(broker.state.cash[0]), broker.state.units[0])
            f.flush()
            if pace > 0:
                time.sleep(pace)
    final = float(broker.state.value[0])
    return {"final_value": final, "return": final / runner.initial_cash - 1.0, "fills": fills}


# --- arbitrage ---------------------------------------------------------------------------------

BLOCK_NS = 12 * 1_000_000_000  # replayed blocks are 12 s apart (Ethereum slots)


def arbitrage_snapshot(
    scen: Any, state: Any, row: int, prev_rate: float | None = None
) -> dict[str, Any]:
    """Row ``row`` of a loaded ``Arbitrage-v0`` episode as the snapshot a live bot would see.

    Exogenous values of the block (reference price, spread, base fee, native price, last block's
    utilisation) come from the scenario rows, pool reserves and last-block competitor activity
    from the env's state (``prev_rate``: its competitor rate one block earlier, None before the
    first step). Competitor presence is what a bot sees on chain; the env keeps only its EWMA,
    so it is recovered from the rate's update ``rate = 0.95 * prev + 0.05 * present``.
    """
    rate = float(state.comp_rate[0])
    present = 0.0 if prev_rate is None else float(round((rate - 0.95 * prev_rate) / 0.05))
    return {
        "timestamp": int(row) * BLOCK_NS,
        "block": int(row),
        "ref_price": float(scen.ref_price[0, row]),
        "spread": float(scen.spread[0, row]),
        "base_fee": float(scen.base_fee[0, row]),
        "utilization": float(scen.utilization[0, row - 1]) if row > 0 else 0.5,
        "native_price": float(scen.native_price[0, row]),
        "reserves": np.stack([state.x[0], state.y[0]], axis=1).tolist(),
        "competitor_present": present,
        "competitor_tip": float(state.last_comp_tip[0]) if prev_rate is not None else 0.0,
        "competitor_took": float(state.last_comp_took[0]) if prev_rate is not None else 0.0,
    }


def priming_snapshot(
    scenario: Any,
    row: int,
    reserves: np.ndarray | None = None,
    volumes: np.ndarray | None = None,
) -> dict[str, Any]:
    """Row ``row`` of a ``DefiScenario`` as an older snapshot for ``feed_predictors``.

    The exogenous fields are the scenario's; pool reserves are the given ones or, when None, a
    pool of 1,000 base priced at the reference (gas predictors read only the base fee; a
    liquidity predictor needs the real ``reserves`` and ``volumes`` of the row).
    """
    p = float(scenario.ref_price[row])
    k = int(scenario.noise_flow.shape[1])
    res = np.array([[1_000.0, 1_000.0 * p]] * k) if reserves is None else np.asarray(reserves)
    snap: dict[str, Any] = {
        "timestamp": int(row) * BLOCK_NS,
        "block": int(row),
        "ref_price": p,
        "spread": float(scenario.spread[row]),
        "base_fee": float(scenario.base_fee[row]),
        "utilization": float(scenario.utilization[row - 1]) if row > 0 else 0.5,
        "native_price": float(scenario.native_price[row]),
        "reserves": res.tolist(),
    }
    if volumes is not None:
        snap["volumes"] = np.asarray(volumes, dtype=float).tolist()
    return snap


def episode_start_row(scenario: Any, lo: int, episode: Any) -> int:
    """Offset, from row ``lo`` of ``scenario``, of the window a loaded episode was drawn from
    (``ScenarioSource.draw`` picks it from the env's RNG; matched here on the reference price).

    Raises:
        DataError: the episode is not a window of ``scenario[lo:]``.
    """
    ref = np.asarray(episode.ref_price[0])
    full = np.asarray(scenario.ref_price[lo:])
    for start in np.flatnonzero(full == ref[0]):
        s = int(start)
        if s + ref.size <= full.size and np.array_equal(full[s : s + ref.size], ref):
            return s
    raise DataError("episode_start_row: the episode is not a window of the scenario")


@dataclass
class ArbitrageBacktestResult:
    """What an arbitrage replay produced.

    Attributes:
        metrics: ``{policy name: totals over the episodes}`` (profit, gas, reverts, trades,
            competitor_took, oracle_profit, share_of_oracle, mean_share).
        episodes: per-episode summaries of the runner (``episode_summary`` of the env).
        profit_curves: cumulative realised profit per block of each episode (the runner's).
        signals: every signal the runner returned, all episodes in order.
        seeds: the episode seeds.
    """

    metrics: dict[str, dict[str, float]]
    episodes: list[dict[str, float]]
    profit_curves: list[np.ndarray]
    signals: list[TradeSignal] = field(default_factory=list)
    seeds: list[int] = field(default_factory=list)

    def to_json(self) -> str:
        """Metrics, per-episode summaries and profit curves as JSON."""
        # Baselines run by evaluate_policy_share report no fees or trade counts (NaN): null.
        metrics = {
            name: {k: (None if v != v else v) for k, v in row.items()}
            for name, row in self.metrics.items()
        }
        return json.dumps(
            {
                "metrics": metrics,
                "seeds": self.seeds,
                "episodes": self.episodes,
                "profit_curves": [c.tolist() for c in self.profit_curves],
            },
            indent=2,
        )


def _arb_totals(episodes: list[dict[str, float]]) -> dict[str, float]:
    keys = ("total_profit", "gas_spent", "fees_paid", "reverts", "competitor_took", "trades")
    out = {k: float(sum(e[k] for e in episodes)) for k in keys}
    out["oracle_profit"] = float(sum(e["oracle_profit"] for e in episodes))
    out["share_of_oracle"] = (
        out["total_profit"] / out["oracle_profit"] if out["oracle_profit"] > 0 else 0.0
    )
    out["mean_share"] = float(np.mean([e["share_of_oracle"] for e in episodes]))
    out["episodes"] = float(len(episodes))
    return out


def _predictor_history(runner: Any) -> dict[str, Any] | None:
    """The fixed scenario of a run with predictor blocks: full rows, test window, first
    validation row ``b`` and first test row ``lo`` (None for runs without predictors)."""
    if not getattr(runner, "predictors", None):
        return None
    from agents.predictor_blocks import arbitrage_scenario

    config = runner.config
    sizes = config.get("arbitrage_scenario")
    if not isinstance(sizes, Mapping):
        raise ConfigError(
            f"{getattr(runner, 'run_dir', 'run')}: a run with predictors needs its "
            "arbitrage_scenario sizes (train_blocks, val_blocks, test_blocks) in the config"
        )
    scenario, rows = arbitrage_scenario(runner.cfg.n_pools, sizes, int(config["seed"]))
    lo, hi = rows["test"]
    return {"scenario": scenario, "test": scenario.window(lo, hi), "b": rows["val"][0], "lo": lo}


def run_arbitrage_backtest(
    runner: Any,
    seeds: Sequence[int] = range(20_000, 20_005),
    episode_length: int | None = None,
    baselines: bool = True,
    progress: Callable[[int, TradeSignal], None] | None = None,
) -> ArbitrageBacktestResult:
    """Replay held-out seeded ``Arbitrage-v0`` episodes through an arbitrage runner.

    Each episode is drawn exactly as the env draws it (``ArbitrageEnv.reset(seed=s)``); the
    runner sees its rows from the first one (the gas-history warm-up included) as snapshots,
    and the chain is the env's own block step (``envs.arbitrage_core.core_step``) executing the
    signal's legs: signed slot sizes and the priority-fee bid, with competitors, reverts, gas
    and rebalancing. After each block the runner's inventory is synced from the venues' balances
    as a live bot would. With default limits this is the env's evaluation of the same policy on
    the same seeds (tested). Baselines (threshold, oracle) run through
    ``envs.arbitrage_baselines.evaluate_policy_share`` on the same seeds, in continuous mode.

    Runs with predictor blocks (``predictor=[gas]``) trained on one fixed scenario: the episodes
    are the run's test episodes, windows of that scenario's test rows (regenerated from the
    run's ``seed`` and ``arbitrage_scenario`` sizes). Before each episode the runner's
    predictors are reset to their saved state and fed the held-out rows from the first
    validation row (minus their warm-up) up to the episode, as the training walk saw them; their
    online updates run between blocks (``runner.maintain()``).

    Args:
        runner: an :class:`~agents.runner.arbitrage.ArbitrageRunner`.
        seeds: episode seeds (default 20000..20004: the trainer's test seeds).
        episode_length: blocks per episode (default: the run's).
        baselines: also run the threshold and oracle baselines.
        progress: called with ``(block, signal)`` after every snapshot.
    """
    import copy

    from envs import arbitrage_core as core
    from envs.arbitrage_baselines import evaluate_policy_share, make_baseline
    from envs.arbitrage_env import ArbitrageEnv, episode_summary

    kwargs = dict(getattr(runner, "env_kwargs", {}) or {})
    kwargs.pop("render_mode", None)
    if episode_length is not None:
        kwargs["episode_length"] = int(episode_length)
    kwargs["flatten"] = runner.flatten
    seeds = [int(s) for s in seeds]
    if not seeds:
        raise ConfigError("run_arbitrage_backtest: need at least one seed")
    history = _predictor_history(runner)
    if history is not None:
        kwargs["scenario"] = history["test"]
    env = ArbitrageEnv(**kwargs)
    if env.cfg != runner.cfg:
        raise ConfigError("run_arbitrage_backtest: the runner's config differs from the env's")
    cfg, length = env.cfg, env.episode_length
    episodes, curves, signals = [], [], []
    for seed in seeds:
        env.reset(seed=seed)
        scen, state = copy.deepcopy(env.scenario_batch), copy.deepcopy(env.state)
        state0 = copy.deepcopy(env.state)  # for the oracle replay of this episode
        runner.reset()
        if history is not None:
            full, lo = history["scenario"], history["lo"]
            first = lo + episode_start_row(full, lo, scen)
            for row in range(max(0, history["b"] - runner.predictor_warmup), first):
                runner.feed_predictors(priming_snapshot(full, row))
                runner.maintain()
            runner.reset(predictors=False)
        row0 = int(state.row0[0])
        for row in range(row0):  # the gas-history warm-up rows before the episode's step 0
            sig = runner.on_snapshot(arbitrage_snapshot(scen, state, row))
            signals.append(sig)
        prev_rate: float | None = None
        profit = [0.0]
        for t in range(length):
            row = row0 + t
            sig = runner.on_snapshot(arbitrage_snapshot(scen, state, row, prev_rate))
            signals.append(sig)
            runner.maintain()  # a bot runs predictor updates after the signal went out
            if progress is not None:
                progress(row, sig)
            size = runner.slot_sizes(sig)[None]
            tip = np.array([sig.priority_fee_gwei or 0.0])
            prev_rate = float(state.comp_rate[0])
            res = core.core_step(cfg, state, scen, size, tip, length)
            runner.sync_inventory(state.bal[0], state.transit[0])
            profit.append(profit[-1] + float(res.profit[0]))
            if bool(res.truncated[0]):
                break
        # The env's evaluation figure: the oracle policy replayed over the same episode.
        oracle = float(core.oracle_run_profit(cfg, state0, scen, length)[0])
        episodes.append(episode_summary({k: v[0] for k, v in state.cum.items()}, oracle))
        curves.append(np.asarray(profit))
    name = str(getattr(runner, "config", {}).get("agent", {}).get("name", "policy"))
    metrics = {name: _arb_totals(episodes)}
    if baselines:
        base_kwargs = dict(
            kwargs, action_mode="continuous", continuous_size="max", continuous_bid="max"
        )
        for base in ("threshold", "oracle"):
            share = evaluate_policy_share(make_baseline(base), seeds, base_kwargs)
            eps = [
                {
                    "total_profit": float(share["profits"][i]),
                    "gas_spent": float(share["gas_spent"][i]),
                    "fees_paid": float("nan"),
                    "reverts": float(share["reverts"][i]),
                    "competitor_took": float(share["competitor_took"][i]),
                    "trades": float("nan"),
                    "oracle_profit": float(share["oracle_profits"][i]),
                    "share_of_oracle": float(share["shares"][i]),
                }
                for i in range(len(seeds))
            ]
            metrics[base] = _arb_totals(eps)
    return ArbitrageBacktestResult(
        metrics=metrics, episodes=episodes, profit_curves=curves, signals=signals, seeds=seeds
    )


def save_arbitrage_chart(
    result: ArbitrageBacktestResult, path: str | Path, title: str = "arbitrage backtest"
) -> Path:
    """Cumulative profit per episode (the runner's) and total profit per policy as a PNG."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 6), dpi=100)
    FigureCanvasAgg(fig)
    ax_curve, ax_bar = fig.subplots(1, 2, width_ratios=[2.2, 1])
    for seed, curve in zip(result.seeds, result.profit_curves, strict=True):
        ax_curve.plot(np.arange(curve.size), curve, lw=1.0, label=f"seed {seed}")
    ax_curve.set_xlabel("block")
    ax_curve.set_ylabel("cumulative profit (quote)")
    ax_curve.legend(loc="upper left", fontsize=7)
    ax_curve.set_title(title)
    names = list(result.metrics)
    ax_bar.bar(names, [result.metrics[n]["total_profit"] for n in names], color="tab:blue")
    ax_bar.set_ylabel("total profit (quote)")
    ax_bar.tick_params(axis="x", rotation=30)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path


JOURNAL_COLUMNS = [
    "kind",
    "line",
    "timestamp",
    "block",
    "venue",
    "side",
    "size",
    "price",
    "notional",
    "expected_profit",
    "gas",
    "priority_fee_gwei",
    "confidence",
    "reason",
]


def paper_trade_arbitrage(
    runner: Any,
    snapshots: Sequence[Mapping[str, Any]],
    journal: str | Path,
    pace: float = 0.0,
    max_snapshots: int | None = None,
    echo: Callable[[str], None] | None = print,
    quiet: bool = False,
) -> dict[str, float]:
    """The arbitrage paper-trading loop: feed snapshots, print signals, journal signals and fills.

    Each signal's legs are filled as simulated at the snapshot's state: every leg at the price
    the runner sized it at (pool legs: the exact constant-product amount for the reserves, pool
    fee included; CEX legs: bid or ask with half the spread and the taker fee), the gas of one
    transaction at base fee + bid charged to the slot's first pool leg; fills are reported back
    with ``on_fill`` as a bot would. Not simulated (the backtest does that): competitors taking
    the opportunity first, reverts, latency, and the effect of our trades on the next snapshot's
    reserves (the feed is what the chain did). Predictor updates run after each signal
    (``runner.maintain()``). Bad rows give HOLDs with reasons; nothing here raises per row.

    Args:
        runner: an :class:`~agents.runner.arbitrage.ArbitrageRunner`.
        snapshots: mappings as ``load_snapshot_csv`` returns them.
        journal: CSV path of the journal (``JOURNAL_COLUMNS``; ``kind`` = signal | fill).
        pace: seconds to wait between snapshots.
        max_snapshots: stop after this many (None: all).
        echo: where printed lines go (None: silent).
        quiet: print trades only, not HOLDs.

    Returns:
        ``snapshots``, ``trades`` (signals with legs), ``fills``, ``holds``, ``expected_profit``
        and ``gas`` (sums over traded signals, quote), ``value_start`` / ``value_end`` (the
        starting and final inventory, both marked at the last accepted reference price, quote)
        and ``pnl`` (their difference: what the trades made, without the market's move of the
        starting inventory).
    """
    import csv
    import time

    runner.reset()
    journal = Path(journal)
    journal.parent.mkdir(parents=True, exist_ok=True)
    n = len(snapshots) if max_snapshots is None else min(len(snapshots), int(max_snapshots))
    totals = {"snapshots": 0.0, "trades": 0.0, "fills": 0.0, "holds": 0.0}
    totals.update({"expected_profit": 0.0, "gas": 0.0})
    inventory0 = runner.inventory

    def stamp(ts: int) -> str:
        return "" if ts < 0 else str(np.datetime64(int(ts), "ns").astype("datetime64[ms]"))

    with open(journal, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(JOURNAL_COLUMNS)
        for i in range(n):
            snap = snapshots[i]
            sig = runner.on_snapshot(snap)
            runner.maintain()
            totals["snapshots"] += 1
            line = snap.get("_line", i + 2) if isinstance(snap, Mapping) else i + 2
            block = snap.get("block", "") if isinstance(snap, Mapping) else ""
            writer.writerow(
                [
                    "signal",
                    line,
                    stamp(sig.timestamp),
                    block,
                    sig.symbol,
                    sig.side,
                    f"{sig.size:.8g}",
                    "",
                    f"{sig.notional:.2f}",
                    "" if sig.expected_profit is None else f"{sig.expected_profit:.4f}",
                    "" if sig.gas_cost is None else f"{sig.gas_cost:.4f}",
                    "" if sig.priority_fee_gwei is None else f"{sig.priority_fee_gwei:.4g}",
                    f"{sig.confidence:.3f}",
                    sig.reason,
                ]
            )
            if not sig.legs:
                totals["holds"] += 1
                if echo is not None and not quiet:
                    echo(f"{stamp(sig.timestamp)} line {line} HOLD | {sig.reason}")
                continue
            totals["trades"] += 1
            totals["expected_profit"] += float(sig.expected_profit or 0.0)
            totals["gas"] += float(sig.gas_cost or 0.0)
            if echo is not None:
                legs = ", ".join(
                    f"{leg.side} {leg.size:.6g} {leg.symbol} @ {leg.reference_price:.6g}"
                    for leg in sig.legs
                )
                echo(
                    f"{stamp(sig.timestamp)} line {line} TRADE {legs} | expected "
                    f"{sig.expected_profit:+.2f}, gas {sig.gas_cost:.2f}, tip "
                    f"{sig.priority_fee_gwei:.3g} gwei, conf {sig.confidence:.2f} | {sig.reason}"
                )
            # One transaction per slot; its gas goes on the slot's first pool leg.
            n_tx = max(1, int(np.count_nonzero(runner.slot_sizes(sig))))
            gas_per_tx = float(sig.gas_cost or 0.0) / n_tx
            charged: set[int] = set()
            for j, leg in enumerate(sig.legs):
                slot = j // 2  # legs come in pairs, one pair per traded slot
                cost = 0.0
                if leg.symbol.startswith("pool") and slot not in charged:
                    cost, _ = gas_per_tx, charged.add(slot)
                units = leg.size if leg.side == BUY else -leg.size
                runner.on_fill(Fill(leg.symbol, units, leg.reference_price, cost, sig.timestamp))
                totals["fills"] += 1
                writer.writerow(
                    [
                        "fill",
                        line,
                        stamp(sig.timestamp),
                        block,
                        leg.symbol,
                        leg.side,
                        repr(float(leg.size)),  # exact, so the journal reproduces the inventory
                        repr(float(leg.reference_price)),
                        f"{leg.notional:.2f}",
                        "",
                        repr(float(cost)) if cost else "",
                        "",
                        "",
                        "simulated fill at the snapshot's state",
                    ]
                )
            f.flush()
            if pace > 0:
                time.sleep(pace)

    def value(inv: np.ndarray, price: float | None) -> float:
        if price is None:
            return float("nan")
        return float((inv[0] + inv[2]) * price + inv[1] + inv[3])

    totals["value_start"] = value(inventory0, runner.last_ref_price)
    totals["value_end"] = value(runner.inventory, runner.last_ref_price)
    totals["pnl"] = totals["value_end"] - totals["value_start"]
    return totals
