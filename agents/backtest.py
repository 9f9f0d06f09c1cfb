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
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from agents.runner.market import PolicyRunner
from agents.signals import Fill, TradeSignal
from envs.data.dataset import MarketDataset
from envs.errors import ConfigError, DataError
from envs.market_core import CoreParams, build_market_arrays, initial_state, step_core
from envs.metrics import episode_metrics
from envs.rewards import make_reward

__all__ = ["BacktestResult", "SimulatedBroker", "bar_dict", "run_backtest", "save_chart"]


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
    decide: Callable[[int], tuple[np.ndarray | None, bool]],
    first: int,
    on_step: Callable[[dict[str, Any]], None] | None = None,
) -> tuple[np.ndarray, np.ndarray, dict[str, float]]:
    """Step the broker from bar 0; record equity from ``first`` on. Returns curve, exposures."""
    equity: list[float] = []
    exposures: list[np.ndarray] = []
    totals = {"fees": 0.0, "costs": 0.0, "trades": 0.0, "wins": 0.0, "closed": 0.0}
    last = len(dataset) - 1
    entry_value = None
    for t in range(len(dataset)):
        target, _ = decide(t)
        if t >= first:
            st = broker.state
            value = float(st.value[0])
            equity.append(value)
            close = broker.arrays.close[t]
            exposures.append(st.units[0] * close / max(value, 1e-12))
        if t == last:
            break
        was_flat = not np.any(broker.state.units != 0)
        value_before = float(broker.state.value[0])
        info = broker.step(target if t >= first else None)
        if t >= first:
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
        if on_step is not None:
            on_step(info)
        if info["terminated"]:
            st = broker.state
            equity.append(float(st.value[0]))
            exposures.append(
                st.units[0] * broker.arrays.close[info["bar"]] / max(float(st.value[0]), 1e-12)
            )
            break
    return np.asarray(equity), np.asarray(exposures), totals


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
) -> BacktestResult:
    """Replay ``dataset`` through ``runner`` bar by bar and simulate its fills.

    Args:
        runner: a fresh runner (it is reset to a flat book first).
        dataset: the bars, from the first one (the runner warms up on them as live).
        baselines: also run buy-and-hold and flat through the same broker.
        progress: called with ``(bar, signal)`` after every bar.

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
    cfg = runner.execution
    vol_lookback = int(getattr(runner, "env_kwargs", {}).get("vol_lookback", 24))
    broker = SimulatedBroker(dataset, cfg, runner.initial_cash, vol_lookback)
    signals: list[TradeSignal] = []
    state = {"first": None}

    def decide(t: int) -> tuple[np.ndarray | None, bool]:
        sig = runner.on_bar(bar_dict(dataset, t))
        signals.append(sig)
        if progress is not None:
            progress(t, sig)
        if state["first"] is None and sig.target_exposure is not None:
            state["first"] = t
        target = None if sig.target_exposure is None else np.asarray(sig.target_exposure)
        return target, True

    # First pass finds the first decision bar lazily: equity is recorded from it, so drive
    # with `first` = the first bar whose signal carries a decision.
    equity: list[float] = []
    exposures: list[np.ndarray] = []
    totals = {"fees": 0.0, "costs": 0.0, "trades": 0.0, "wins": 0.0, "closed": 0.0}
    last = len(dataset) - 1
    entry_value = None
    for t in range(len(dataset)):
        target, _ = decide(t)
        first = state["first"]
        if first is not None:
            st = broker.state
            value = float(st.value[0])
            equity.append(value)
            exposures.append(st.units[0] * broker.arrays.close[t] / max(value, 1e-12))
        if t == last:
            break
        was_flat = not np.any(broker.state.units != 0)
        value_before = float(broker.state.value[0])
        info = broker.step(target)
        q = info["q"]
        for j, sym in enumerate(runner.symbols):
            if q[j] != 0.0:
                runner.on_fill(
                    Fill(sym, float(q[j]), float(info["price"][j]), info["cost"] if j == 0 else 0.0)
                )
        runner.sync_account(float(broker.state.cash[0]), broker.state.units[0])
        if first is not None:
            totals["fees"] += info["fees"]
            totals["costs"] += info["cost"]
            trades = int(np.count_nonzero(q))
            totals["trades"] += trades
            now_flat = not np.any(broker.state.units != 0)
            if trades and was_flat and not now_flat:
                entry_value = value_before
            elif trades and now_flat and entry_value is not None:
                totals["closed"] += 1
                totals["wins"] += float(broker.state.value[0] > entry_value)
                entry_value = None
        if info["terminated"]:
            break
    first = state["first"]
    if first is None or len(equity) < 2:
        raise DataError(
            f"{dataset.source}: {len(dataset)} bars never got the runner past its warm-up "
            f"(first decision bar {runner.first_decision_bar}); replay more bars"
        )
    name = str(getattr(runner, "config", {}).get("agent", {}).get("name", "policy"))
    metrics = {name: _metrics(np.asarray(equity), broker, totals, runner.initial_cash)}
    curves = {name: np.asarray(equity)}
    if baselines:
        n = dataset.n_assets
        for base, exposure in (("buy_and_hold", 1.0 / n * cfg.max_leverage), ("flat", 0.0)):
            target = np.full(n, exposure)
            b = SimulatedBroker(dataset, cfg, runner.initial_cash, vol_lookback)
            eq, _, tot = _drive(dataset, b, lambda t, tg=target: (tg, True), first)
            metrics[base] = _metrics(eq, b, tot, runner.initial_cash)
            curves[base] = eq
    ts = dataset.timestamps[first : first + len(equity)]
    return BacktestResult(
        metrics=metrics,
        equity=curves,
        positions=np.asarray(exposures),
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
