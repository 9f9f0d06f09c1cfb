"""Latency of one ``PolicyRunner.on_bar`` (features, observation, policy, sizing): p50 / p99.

``python -m bench.runner --run <run_dir> [--bars 2000]`` (as a module: ``bench/agents.py``
would shadow the ``agents`` package if run as a script); without ``--run`` a policy of the
default config (``--agent sac|qlearning``) is built in memory (untrained weights: same cost).
``--arbitrage`` times ``ArbitrageRunner.on_snapshot`` on the snapshots of a replayed
``Arbitrage-v0`` episode instead.

Two clocks per call: wall time (what a bot waits; on a shared machine it includes time the
process was descheduled, which dominates p99) and the thread's CPU time
(``time.thread_time``: the work itself, robust to other processes on the machine).
Bot settings used here and advised for a live loop: ``torch.set_num_threads(1)`` (one row per
call: intra-op threads only add hand-off latency), and ``gc.freeze()`` after loading so the
collector does not rescan the model's objects during the loop.
"""

from __future__ import annotations

import argparse
import gc
import time

import numpy as np
import torch

from agents.backtest import bar_dict
from agents.runner import PolicyRunner
from agents.runner.policy import PolicyAdapter
from envs.data import load_sample
from envs.execution import ExecutionConfig
from envs.market_env import MarketTradingEnv


def _default_runner(agent_kind: str) -> PolicyRunner:
    ds = load_sample("btc_usd_hourly").slice(0, 2000)
    mode = "discrete" if agent_kind == "qlearning" else "continuous"
    env = MarketTradingEnv(dataset=ds, action_mode=mode, flatten=True)
    if agent_kind == "qlearning":
        from agents.qlearning import QLearningAgent, QLearningConfig

        agent = QLearningAgent(
            env.observation_space, env.action_space, QLearningConfig(device="cpu")
        )
    else:
        from agents.sac import SAC, SACConfig

        agent = SAC(env.observation_space, env.action_space, SACConfig(device="cpu"))
    return PolicyRunner(
        policy=PolicyAdapter(agent),
        action_mode=mode,
        execution=ExecutionConfig(),
        scaler=env.scaler,
        window=32,
    )


def _default_arbitrage_runner(agent_kind: str) -> tuple[object, list[dict]]:
    """An in-memory arbitrage runner and the snapshots of one replayed env episode."""
    from agents.backtest import arbitrage_snapshot
    from agents.runner import ArbitrageRunner
    from envs import arbitrage_core as core
    from envs.arbitrage_env import ArbitrageEnv

    mode = "discrete" if agent_kind == "qlearning" else "continuous"
    env = ArbitrageEnv(flatten=True, action_mode=mode, episode_length=2000)
    if agent_kind == "qlearning":
        from agents.qlearning import QLearningAgent, QLearningConfig

        agent = QLearningAgent(
            env.observation_space, env.action_space, QLearningConfig(device="cpu")
        )
    else:
        from agents.sac import SAC, SACConfig

        agent = SAC(env.observation_space, env.action_space, SACConfig(device="cpu"))
    runner = ArbitrageRunner(policy=PolicyAdapter(agent), cfg=env.cfg, flatten=True)
    env.reset(seed=0)
    scen, state = env.scenario_batch, env.state
    snaps = [arbitrage_snapshot(scen, state, row) for row in range(int(state.row0[0]))]
    prev = None
    for _ in range(env.episode_length):
        snaps.append(arbitrage_snapshot(scen, state, int(state.row0[0] + state.t[0]), prev))
        prev = float(state.comp_rate[0])
        core.core_step(env.cfg, state, scen, np.zeros((1, env.cfg.n_slots)), np.zeros(1), 2000)
    return runner, snaps


def _print(label: str, wall: np.ndarray, cpu: np.ndarray) -> None:
    print(
        f"  {label:9s} wall p50 {np.percentile(wall, 50):7.1f} us  p99 "
        f"{np.percentile(wall, 99):8.1f} us  mean {wall.mean():7.1f} us | cpu p50 "
        f"{np.percentile(cpu, 50):7.1f} us  p99 {np.percentile(cpu, 99):7.1f} us"
    )


def _time(fn, items: list) -> tuple[np.ndarray, np.ndarray]:
    wall, cpu = [], []
    for item in items:
        t0, c0 = time.perf_counter(), time.thread_time()
        fn(item)
        cpu.append(time.thread_time() - c0)
        wall.append(time.perf_counter() - t0)
    return np.asarray(wall) * 1e6, np.asarray(cpu) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--run", default=None)
    parser.add_argument("--agent", default="sac", choices=["sac", "qlearning"])
    parser.add_argument("--bars", type=int, default=2000)
    parser.add_argument("--arbitrage", action="store_true", help="time on_snapshot")
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.arbitrage:
        runner, snaps = _default_arbitrage_runner(args.agent)
        if args.run:
            runner = PolicyRunner.from_run(args.run, device="cpu")
        first = runner.first_decision_snapshot + 1
        for snap in snaps[:first]:
            runner.on_snapshot(snap)
        gc.collect()
        gc.freeze()
        wall, cpu = _time(runner.on_snapshot, snaps[first:])
        print(f"on_snapshot over {wall.size} blocks ({args.run or args.agent}, CPU, 1 thread)")
        _print("on_snap", wall, cpu)
        obs = runner.observation()
        _print("obs", *_time(lambda _: runner.observation(), range(500)))
        _print("policy", *_time(lambda _: runner.policy.decide(obs), range(500)))
        return
    runner = (
        PolicyRunner.from_run(args.run, device="cpu") if args.run else _default_runner(args.agent)
    )
    ds = load_sample("btc_usd_hourly").slice(4000, 4000 + args.bars)
    bars = [bar_dict(ds, t) for t in range(len(ds))]
    first = 200  # past the warm-up: every timed call builds an observation and asks the policy
    for bar in bars[:first]:
        runner.on_bar(bar)
    gc.collect()
    gc.freeze()
    wall, cpu = _time(runner.on_bar, bars[first:])
    print(f"on_bar over {wall.size} bars ({args.run or args.agent}, CPU, 1 thread)")
    _print("on_bar", wall, cpu)
    # Component split on the same stream: the streaming features alone, the policy alone.
    from agents.runner.features import StreamingFeatures

    sf = StreamingFeatures(runner.features.names, 1)
    for t in range(first):
        sf.push(int(ds.timestamps[t]), ds.ohlcv[t])
    _print(
        "features",
        *_time(lambda t: sf.push(int(ds.timestamps[t]), ds.ohlcv[t]), range(first, len(ds))),
    )
    obs = runner.observation()
    _print("policy", *_time(lambda _: runner.policy.decide(obs), range(500)))


if __name__ == "__main__":
    main()
