"""Benchmark of ``Arbitrage-v0``: env steps per second and baselines' share of oracle profit.

Usage: ``python bench/arbitrage.py [--quick]``.

Prints

1. environment steps per second for the single env and the batched env (1, 64, 1024 envs), with
   pre-drawn random actions and resets excluded from the batched timing;
2. for each baseline (oracle, threshold, noop, random, plus the observation-only bid-shading
   reference) the mean share of oracle profit on 20 held-out seeded episodes (seeds
   10000..10019, default config, 1000 blocks each). The threshold baseline is shown with its
   defaults and with margin/bid tuned on training seeds 0..19 (never on the held-out seeds).

Two oracle references (``ArbitrageEnv``, Oracle), both with hindsight on the block's competitor
bids and gas:

* ``share`` (headline): profit over the oracle policy's profit on the same episode, which the env
  replays at the episode's end (closed-form best trade per pool within the agent's constraints,
  a tip just above the competitor's bid). It does not depend on the evaluated policy; the oracle
  scores 1 by construction. Not a proof-level bound: a policy that lets gaps grow to pay gas
  less often could in principle exceed it.
* ``path share``: profit over the per-block best trades summed along the policy's own path
  (``info["oracle_profit"]``), a strict bound for that path (asserted step by step in the
  tests) but loose for passive policies, whose open gaps are counted again in every block.
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import time

import numpy as np

# Running ``python bench/arbitrage.py`` puts bench/ first on sys.path, where a script named
# ``envs.py`` would shadow the ``envs`` package: drop that entry before importing it.
_BENCH_DIR = str(pathlib.Path(__file__).resolve().parent)
sys.path[:] = [p for p in sys.path if str(pathlib.Path(p or ".").resolve()) != _BENCH_DIR]

from envs.arbitrage_baselines import (  # noqa: E402
    ThresholdPolicy,
    evaluate_policy_share,
    make_baseline,
)
from envs.arbitrage_env import ArbitrageEnv  # noqa: E402
from envs.vector_arbitrage import ArbitrageVectorEnv  # noqa: E402

HELD_OUT = range(10_000, 10_020)
TRAIN = range(0, 20)


def single_steps_per_second(steps: int) -> float:
    env = ArbitrageEnv(episode_length=steps)
    env.reset(seed=0)
    rng = np.random.default_rng(0)
    acts = rng.uniform([-0.3, 0.0], [0.3, 1.0], (steps, 2)).astype(np.float32)
    t = time.perf_counter()
    for a in acts:
        env.step(a)
    return steps / (time.perf_counter() - t)


def batched_steps_per_second(n: int, steps: int) -> float:
    venv = ArbitrageVectorEnv(num_envs=n, episode_length=steps + 10)
    venv.reset(seed=0)
    rng = np.random.default_rng(0)
    acts = rng.uniform([-0.3, 0.0], [0.3, 1.0], (steps, n, 2)).astype(np.float32)
    t = time.perf_counter()
    for a in acts:
        venv.step(a)
    return n * steps / (time.perf_counter() - t)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer steps, 4 episodes")
    args = parser.parse_args()
    seeds = list(HELD_OUT)[:4] if args.quick else list(HELD_OUT)
    env_kwargs = {"episode_length": 200} if args.quick else {}

    print("== Arbitrage-v0 throughput (env steps per second, shared CPU) ==")
    print(f"single env           : {single_steps_per_second(300 if args.quick else 2000):10.0f}")
    for n in (1, 64, 1024):
        steps = (50 if n == 1024 else 200) if args.quick else (200 if n == 1024 else 1000)
        print(f"batched, {n:5d} envs  : {batched_steps_per_second(n, steps):10.0f}")

    print("\n== Threshold baseline tuned on training seeds 0..19 (margin, bid) ==")
    best, best_share = (0.5, 0.2), -np.inf
    for margin in (0.0, 0.25, 1.0):
        for bid in (0.1, 0.2, 0.4):
            r = evaluate_policy_share(
                ThresholdPolicy(margin, bid),
                seeds=list(TRAIN)[: len(seeds)],
                env_kwargs=env_kwargs,
            )
            print(f"  margin={margin:4.2f} bid={bid:3.1f}: train share {r['mean_share']:7.3f}")
            if r["mean_share"] > best_share:
                best, best_share = (margin, bid), r["mean_share"]

    print(
        f"\n== Share of oracle profit, {len(seeds)} held-out episodes (seeds "
        f"{seeds[0]}..{seeds[-1]}) =="
    )
    policies = {
        "oracle": make_baseline("oracle"),
        "threshold (defaults)": make_baseline("threshold"),
        f"threshold (tuned m={best[0]}, b={best[1]})": ThresholdPolicy(*best),
        "noop": make_baseline("noop"),
        "random": make_baseline("random", seed=0),
        "bid_shading (reference)": make_baseline("bid_shading"),
    }
    print(
        f"{'policy':38s} {'share':>8s} {'aggr':>8s} {'path share':>10s} {'profit':>10s} "
        f"{'oracle':>10s} {'path orc':>10s} {'gas':>9s} {'reverts':>8s}"
    )
    for name, pol in policies.items():
        t = time.perf_counter()
        r = evaluate_policy_share(pol, seeds=seeds, env_kwargs=env_kwargs)
        print(
            f"{name:38s} {r['mean_share']:8.3f} {r['aggregate_share']:8.3f} "
            f"{r['mean_path_share']:10.3f} {r['profits'].mean():10.1f} "
            f"{r['oracle_profits'].mean():10.1f} {r['path_oracle_profits'].mean():10.1f} "
            f"{r['gas_spent'].mean():9.1f} {r['reverts'].mean():8.1f}"
            f"   ({time.perf_counter() - t:.1f}s)"
        )


if __name__ == "__main__":
    main()
