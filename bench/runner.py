"""Latency of one ``PolicyRunner.on_bar`` / ``ArbitrageRunner.on_snapshot``: p50 / p99 / p99.9 /
max, and where the tail comes from.

``python -m bench.runner --run <run_dir> [--bars 2000]`` (as a module: ``bench/agents.py``
would shadow the ``agents`` package if run as a script); without ``--run`` a policy of the
default config (``--agent sac|qlearning``) is built in memory (untrained weights: same cost).
``--arbitrage`` times ``ArbitrageRunner.on_snapshot`` on the snapshots of a replayed
``Arbitrage-v0`` episode instead; ``--predictor gas`` adds a gas predictor block (a
``GasPricePredictor`` fitted here on a generated scenario, online updates every 64 blocks as in
``configs/predictor/gas.yaml``).

Per call it records the wall time (what a bot waits), the thread's CPU time
(``time.thread_time``), whether the thread was context-switched during the call
(``getrusage(RUSAGE_THREAD)`` voluntary + involuntary switches) and the time the garbage
collector ran inside the call (``gc.callbacks``). So the tail is attributed, not guessed:

* *descheduled*: calls during which the OS ran something else (other processes on a loaded
  machine). Their wall time is milliseconds whatever the runner does; the remedy is outside the
  process (a core of its own: ``taskset``/``isolcpus``, a quiet machine).
* *GC*: collections inside calls, and what a full collection would cost. ``gc.freeze()`` after
  loading and warm-up (``agents.runner.prepare_bot_loop``) moves every object that exists then
  (torch, model, runner, history buffers) out of the collector's generations, so a full
  collection no longer rescans them; ``--no-freeze`` shows the difference.
* *online predictor updates*: one gradient step every ``update_every`` blocks (2-5 ms). The
  runner queues it and runs it in ``runner.maintain()``, which a bot calls after the signal went
  out (here: between timed calls). ``--inline-updates`` skips ``maintain()``, so the update runs
  inside the next ``on_snapshot`` (before the prediction that needs it), as it did before.

Bot settings advised for a live loop, used here: ``torch.set_num_threads(1)`` (one row per
call: intra-op threads only add hand-off latency), ``gc.freeze()`` once after loading and
warm-up, ``runner.maintain()`` between snapshots.
"""

from __future__ import annotations

import argparse
import gc
import resource
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from agents.backtest import bar_dict
from agents.runner import PolicyRunner, prepare_bot_loop
from agents.runner.policy import PolicyAdapter
from envs.data import load_sample
from envs.execution import ExecutionConfig
from envs.market_env import MarketTradingEnv


def _default_runner(agent_kind: str) -> PolicyRunner:
    ds = load_sample("btc_usd_hourly").slice(0, 2000)
    mode = "discrete" if agent_kind == "qlearning" else "continuous"
    env = MarketTradingEnv(dataset=ds, action_mode=mode, flatten=True)
    return PolicyRunner(
        policy=PolicyAdapter(_agent(agent_kind, env.observation_space, env.action_space)),
        action_mode=mode,
        execution=ExecutionConfig(),
        scaler=env.scaler,
        window=32,
    )


def _agent(agent_kind: str, observation_space: Any, action_space: Any) -> Any:
    if agent_kind == "qlearning":
        from agents.qlearning import QLearningAgent, QLearningConfig

        return QLearningAgent(observation_space, action_space, QLearningConfig(device="cpu"))
    from agents.sac import SAC, SACConfig

    return SAC(observation_space, action_space, SACConfig(device="cpu"))


def _gas_predictor(n_pools: int) -> Any:
    """A gas predictor fitted on a generated scenario, wrapped for online use as a run's is."""
    from agents.runner.arb_predictors import OnlineDefiPredictor
    from envs.data.defi import generate_scenario
    from predictors.base import SeriesData
    from predictors.gas import GasPricePredictor

    scenario = generate_scenario(np.random.default_rng(7), 3000, n_pools)
    predictor = GasPricePredictor(
        window=32, horizons=[1, 12], hidden_size=16, max_epochs=2, online_scope="head", seed=0
    )
    series = predictor.prepare(scenario.base_fee)
    predictor.fit(SeriesData(series.features, series.targets))
    return OnlineDefiPredictor(predictor, "gas", "defi_gas", update_every=64)


def _default_arbitrage_runner(agent_kind: str, predictor: str | None) -> tuple[Any, list[dict]]:
    """An in-memory arbitrage runner and the snapshots of one replayed env episode."""
    from agents.backtest import arbitrage_snapshot
    from agents.runner import ArbitrageRunner
    from envs import arbitrage_core as core
    from envs.arbitrage_env import ArbitrageEnv, action_space_for

    mode = "discrete" if agent_kind == "qlearning" else "continuous"
    env = ArbitrageEnv(flatten=True, action_mode=mode, episode_length=2000)
    blocks = {} if predictor is None else {"pred_gas": _gas_predictor(env.cfg.n_pools)}
    probe = ArbitrageRunner(policy=None, cfg=env.cfg, flatten=True, predictors=blocks)
    agent = _agent(agent_kind, probe.builder.observation_space, action_space_for(env.cfg))
    runner = ArbitrageRunner(
        policy=PolicyAdapter(agent), cfg=env.cfg, flatten=True, predictors=blocks
    )
    env.reset(seed=0)
    scen, state = env.scenario_batch, env.state
    snaps = [arbitrage_snapshot(scen, state, row) for row in range(int(state.row0[0]))]
    prev = None
    for _ in range(env.episode_length):
        snaps.append(arbitrage_snapshot(scen, state, int(state.row0[0] + state.t[0]), prev))
        prev = float(state.comp_rate[0])
        core.core_step(env.cfg, state, scen, np.zeros((1, env.cfg.n_slots)), np.zeros(1), 2000)
    return runner, snaps


class Timings:
    """Per-call wall and CPU time (us), context switches and GC time (us) of one timed loop."""

    def __init__(self) -> None:
        self.wall: list[float] = []
        self.cpu: list[float] = []
        self.switched: list[bool] = []
        self.gc_us: list[float] = []

    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        return (
            np.asarray(self.wall),
            np.asarray(self.cpu),
            np.asarray(self.switched, dtype=bool),
            np.asarray(self.gc_us),
        )


class _GcClock:
    """Total time the collector ran, from ``gc.callbacks``."""

    def __init__(self) -> None:
        self.total_ns = 0
        self.collections = 0
        self._start = 0

    def __call__(self, phase: str, info: dict) -> None:
        if phase == "start":
            self._start = time.perf_counter_ns()
        else:
            self.total_ns += time.perf_counter_ns() - self._start
            self.collections += 1


def _time(
    fn: Callable[[Any], Any], items: Any, between: Callable[[], Any] | None = None
) -> Timings:
    clock = _GcClock()
    gc.callbacks.append(clock)
    out = Timings()
    thread = resource.RUSAGE_THREAD
    try:
        for item in items:
            u0 = resource.getrusage(thread)
            g0 = clock.total_ns
            t0, c0 = time.perf_counter_ns(), time.thread_time_ns()
            fn(item)
            c1, t1 = time.thread_time_ns(), time.perf_counter_ns()
            u1 = resource.getrusage(thread)
            out.wall.append((t1 - t0) / 1e3)
            out.cpu.append((c1 - c0) / 1e3)
            out.switched.append(
                u1.ru_nivcsw + u1.ru_nvcsw > u0.ru_nivcsw + u0.ru_nvcsw,
            )
            out.gc_us.append((clock.total_ns - g0) / 1e3)
            if between is not None:
                between()
    finally:
        gc.callbacks.remove(clock)
    return out


def _print(label: str, timings: Timings) -> None:
    wall, cpu, switched, gc_us = timings.arrays()
    p = np.percentile
    print(
        f"  {label:9s} wall p50 {p(wall, 50):7.1f}  p99 {p(wall, 99):8.1f}  p99.9 "
        f"{p(wall, 99.9):8.1f}  max {wall.max():8.1f} us | cpu p50 {p(cpu, 50):7.1f}  p99 "
        f"{p(cpu, 99):7.1f}  p99.9 {p(cpu, 99.9):7.1f}  max {cpu.max():7.1f} us"
    )
    quiet = wall[~switched]
    print(
        f"  {'':9s} descheduled in {switched.mean():6.1%} of calls (their wall p50 "
        f"{p(wall[switched], 50) if switched.any() else 0.0:7.1f} us); calls never descheduled: "
        f"p99 {p(quiet, 99) if quiet.size else 0.0:7.1f}  max "
        f"{quiet.max() if quiet.size else 0.0:7.1f} us; GC inside calls: "
        f"{int((gc_us > 0).sum())} calls, {gc_us.sum():.0f} us total, max {gc_us.max():.0f} us"
    )


def _settle(freeze: bool) -> None:
    """Collect, then freeze; print what a full collection costs before and after the freeze
    (the rare gen-2 collection a long-running bot would otherwise meet inside a call)."""
    if not freeze:
        t0 = time.perf_counter()
        gc.collect()
        full = (time.perf_counter() - t0) * 1e3
        tracked = len(gc.get_objects())
        print(f"gc: {tracked} tracked objects, a full collection takes {full:.1f} ms (not frozen)")
        return
    settled = prepare_bot_loop(torch_threads=None)  # threads were set from --threads
    tracked, full = settled["frozen_objects"], settled["full_collection_ms"]
    t0 = time.perf_counter()
    gc.collect()
    frozen = (time.perf_counter() - t0) * 1e3
    print(
        f"gc: {tracked} tracked objects; a full collection takes {full:.1f} ms, "
        f"{frozen:.2f} ms after gc.freeze()"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--run", default=None)
    parser.add_argument("--agent", default="sac", choices=["sac", "qlearning"])
    parser.add_argument("--bars", type=int, default=2000)
    parser.add_argument("--arbitrage", action="store_true", help="time on_snapshot")
    parser.add_argument("--predictor", choices=["gas"], default=None, help="arbitrage block")
    parser.add_argument("--no-freeze", action="store_true", help="skip gc.freeze()")
    parser.add_argument(
        "--inline-updates", action="store_true", help="no maintain() between snapshots"
    )
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    freeze = not args.no_freeze
    settings = f"CPU, {args.threads} torch thread(s), gc.freeze {'on' if freeze else 'off'}"
    if args.arbitrage:
        runner, snaps = _default_arbitrage_runner(args.agent, args.predictor)
        if args.run:
            runner = PolicyRunner.from_run(args.run, device="cpu")
        first = 0
        while first < len(snaps) and (
            runner.snapshots_seen <= runner.first_decision_snapshot or runner.predictor_warmup
        ):
            runner.on_snapshot(snaps[first])
            runner.maintain()
            first += 1
        _settle(freeze)
        maintain_us: list[float] = []

        def between() -> None:
            t0 = time.perf_counter_ns()
            if runner.maintain():
                maintain_us.append((time.perf_counter_ns() - t0) / 1e3)

        timings = _time(runner.on_snapshot, snaps[first:], None if args.inline_updates else between)
        updates = sum(p.updates for p in runner.predictors.values())
        where = "inside on_snapshot" if args.inline_updates else "in maintain()"
        print(
            f"on_snapshot over {len(timings.wall)} blocks ({args.run or args.agent}"
            f"{', predictor ' + args.predictor if args.predictor else ''}, {settings}; "
            f"{updates} online predictor updates {where})"
        )
        _print("on_snap", timings)
        if maintain_us:
            print(
                f"  maintain  {len(maintain_us)} online updates between snapshots: wall p50 "
                f"{np.percentile(maintain_us, 50):7.1f} us  max {max(maintain_us):8.1f} us "
                "(off the decision path)"
            )
        obs = runner.observation()
        _print("obs", _time(lambda _: runner.observation(), range(500)))
        _print("policy", _time(lambda _: runner.policy.decide(obs), range(500)))
        return
    runner = (
        PolicyRunner.from_run(args.run, device="cpu") if args.run else _default_runner(args.agent)
    )
    ds = load_sample("btc_usd_hourly").slice(4000, 4000 + args.bars)
    bars = [bar_dict(ds, t) for t in range(len(ds))]
    first = 200  # past the warm-up: every timed call builds an observation and asks the policy
    for bar in bars[:first]:
        runner.on_bar(bar)
    _settle(freeze)
    timings = _time(runner.on_bar, bars[first:])
    print(f"on_bar over {len(timings.wall)} bars ({args.run or args.agent}, {settings})")
    _print("on_bar", timings)
    # Component split on the same stream: the streaming features alone, the policy alone.
    from agents.runner.features import StreamingFeatures

    sf = StreamingFeatures(runner.features.names, 1)
    for t in range(first):
        sf.push(int(ds.timestamps[t]), ds.ohlcv[t])
    _print(
        "features",
        _time(lambda t: sf.push(int(ds.timestamps[t]), ds.ohlcv[t]), range(first, len(ds))),
    )
    obs = runner.observation()
    _print("policy", _time(lambda _: runner.policy.decide(obs), range(500)))


if __name__ == "__main__":
    main()
