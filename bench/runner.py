"""Latency of one ``PolicyRunner.on_bar`` (features, observation, policy, sizing): p50 / p99.

``python -m bench.runner --run <run_dir> [--bars 2000]`` (as a module: ``bench/agents.py``
would shadow the ``agents`` package if run as a script); without ``--run`` a tiny Q-learning
policy with the default market config is built in memory (untrained weights: same cost).
"""

from __future__ import annotations

import argparse
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--run", default=None)
    parser.add_argument("--agent", default="sac", choices=["sac", "qlearning"])
    parser.add_argument("--bars", type=int, default=2000)
    args = parser.parse_args()
    torch.set_num_threads(1)
    runner = (
        PolicyRunner.from_run(args.run, device="cpu") if args.run else _default_runner(args.agent)
    )
    ds = load_sample("btc_usd_hourly").slice(4000, 4000 + args.bars)
    bars = [bar_dict(ds, t) for t in range(len(ds))]
    first = 200  # past the warm-up: every timed call builds an observation and asks the policy
    for bar in bars[:first]:
        runner.on_bar(bar)
    times = []
    parts = {"features": [], "policy": []}
    for bar in bars[first:]:
        t0 = time.perf_counter()
        runner.on_bar(bar)
        times.append(time.perf_counter() - t0)
    # Component split on the same stream: the streaming features alone, the policy alone.
    from agents.runner.features import StreamingFeatures

    sf = StreamingFeatures(runner.features.names, 1)
    for t in range(len(ds)):
        t0 = time.perf_counter()
        sf.push(int(ds.timestamps[t]), ds.ohlcv[t])
        if t >= first:
            parts["features"].append(time.perf_counter() - t0)
    obs = runner.observation()
    for _ in range(500):
        t0 = time.perf_counter()
        runner.policy.decide(obs)
        parts["policy"].append(time.perf_counter() - t0)
    us = np.asarray(times) * 1e6
    print(f"on_bar over {us.size} bars ({args.run or args.agent}, CPU, 1 thread)")
    print(
        f"  p50 {np.percentile(us, 50):8.1f} us   p99 {np.percentile(us, 99):8.1f} us   "
        f"mean {us.mean():8.1f} us"
    )
    for name, values in parts.items():
        v = np.asarray(values) * 1e6
        print(
            f"  {name:9s} p50 {np.percentile(v, 50):8.1f} us   p99 {np.percentile(v, 99):8.1f} us"
        )


if __name__ == "__main__":
    main()
