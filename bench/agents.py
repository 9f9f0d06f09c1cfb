"""Agent benchmarks: our SAC vs Stable-Baselines3's SAC on Pendulum-v1 (and the DQN section).

Run: ``.venv/bin/python bench/agents.py [--only sac|dqn|all] [--steps N] [--seeds 0 1]
[--threads 1 2]``.

SAC section: both learners train ``--steps`` (default 20k) env steps on Pendulum-v1 with SB3's
defaults except learning rate 1e-3 (DOMAIN.md: SB3 SAC at lr 1e-3 reaches about -150 in 20k
steps), with the same seeds, in the same process, one after the other per seed so they share
the machine's load. Each policy is evaluated deterministically on 10 episodes (seeds
1000..1009). Wall-clock covers ``learn`` only (it would include any ``torch.compile`` time).
Goal: equal or better return and our SAC at least 2x faster than SB3's, at the same arithmetic:
same networks, batch, update-to-data ratio, learning rate and update order on both sides.

Our SAC runs its default update, hand-written backward passes (``agents/sac_explicit.py``);
``--autograd`` runs our autograd reference update instead (``explicit_gradients=False``) and
``--compile`` the autograd update with ``torch.compile``d forward passes, for comparison.

Threads: ``--threads 1 2`` runs the SAC section once per thread count (both learners always at
the same count, set with ``torch.set_num_threads``) and ends with one summary row per count:
seconds, ms per env step and the wall-clock ratio SB3 / ours. The default stays one thread.
The networks are tiny ([256, 256], batch 256): a second thread speeds up the matmuls (about
half of our step at one thread) but not the per-op overhead around them. What we measured
(issue 5, 2k-step runs): on a quiet machine, before the latest explicit-update changes, ours
8.92 / SB3 13.66 ms per step at 1 thread and 6.42 / 12.73 at 2 threads; with two cores
already busy with other processes (load average ~3.5), 2 threads made both learners 5-10x
slower (ours ~70, SB3 ~160 ms per step: the threads wait on each other's time slices), which
is where an earlier "2 threads about 10x slower" figure came from. Compare thread counts
only on a quiet machine. Figures depend on machine load: never assert them in tests.

DQN section: ``bench/agents_dqn.py``'s ``bench_dqn`` (our Q-learning vs SB3 DQN on CartPole).
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import time
from pathlib import Path

# Run as ``python bench/agents.py`` this folder is first on sys.path and this file would shadow
# the ``agents`` package; drop the folder.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]

import gymnasium as gym  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from agents.sac import SAC, SACConfig  # noqa: E402

ENV_ID = "Pendulum-v1"
LEARNING_RATE = 1e-3
EVAL_EPISODES = 10
EVAL_SEED = 1000


def _evaluate(act, episodes: int = EVAL_EPISODES, seed: int = EVAL_SEED) -> tuple[float, float]:
    """Mean and std of deterministic episode returns; ``act(obs) -> action``."""
    env = gym.make(ENV_ID)
    returns = []
    for i in range(episodes):
        obs, _ = env.reset(seed=seed + i)
        total, done = 0.0, False
        while not done:
            obs, reward, terminated, truncated, _ = env.step(act(obs))
            total += float(reward)
            done = terminated or truncated
        returns.append(total)
    return float(np.mean(returns)), float(np.std(returns))


def _run_ours(steps: int, seed: int, compile_nets: bool, autograd: bool) -> dict[str, float]:
    env = gym.make(ENV_ID)
    config = SACConfig(
        learning_rate=LEARNING_RATE,
        seed=seed,
        device="cpu",
        compile=compile_nets,
        explicit_gradients=not autograd,
    )
    agent = SAC(env.observation_space, env.action_space, config)
    start = time.perf_counter()
    agent.learn(env, steps)
    seconds = time.perf_counter() - start
    mean, std = _evaluate(lambda obs: agent.act(obs, deterministic=True))
    print(f"    {agent.replay.describe()}", flush=True)
    return {"eval_mean": mean, "eval_std": std, "train_s": seconds}


def _run_sb3(steps: int, seed: int) -> dict[str, float]:
    from stable_baselines3 import SAC as SB3SAC

    env = gym.make(ENV_ID)
    model = SB3SAC("MlpPolicy", env, learning_rate=LEARNING_RATE, seed=seed, device="cpu")
    start = time.perf_counter()
    model.learn(steps)
    seconds = time.perf_counter() - start
    mean, std = _evaluate(lambda obs: model.predict(obs, deterministic=True)[0])
    return {"eval_mean": mean, "eval_std": std, "train_s": seconds}


def bench_sac(
    steps: int = 20_000,
    seeds: tuple[int, ...] = (0,),
    compile_nets: bool = False,
    autograd: bool = False,
) -> list[dict[str, float | str]]:
    """Train our SAC and SB3's SAC per seed, print a side-by-side table, return its rows.

    Args:
        steps: env steps per training run.
        seeds: training seeds (shared by both learners).
        compile_nets: turn on our SAC's ``compile`` flag (autograd update).
        autograd: our SAC with its autograd update instead of the hand-written one.
    """
    rows: list[dict[str, float | str]] = []
    for seed in seeds:
        for name, run in (
            ("ours-sac", lambda s=seed: _run_ours(steps, s, compile_nets, autograd)),
            ("sb3-sac", lambda s=seed: _run_sb3(steps, s)),
        ):
            print(f"  training {name} seed {seed} for {steps} steps ...", flush=True)
            result = run()
            rows.append({"name": name, "seed": seed, **result})
            print(
                f"  {name} seed {seed}: eval {result['eval_mean']:.1f} "
                f"+- {result['eval_std']:.1f}, train {result['train_s']:.1f} s "
                f"({steps / result['train_s']:.0f} steps/s)",
                flush=True,
            )
    print(
        f"\n{ENV_ID}, {steps} steps, lr {LEARNING_RATE}, SB3 defaults otherwise, deterministic "
        f"eval over {EVAL_EPISODES} episodes, torch threads {torch.get_num_threads()}:"
    )
    header = ("learner", "seed", "eval_mean", "eval_std", "train_s", "steps/s")
    print("{:<10} {:>4} {:>10} {:>9} {:>9} {:>8}".format(*header))
    for r in rows:
        print(
            f"{r['name']:<10} {r['seed']:>4} {r['eval_mean']:>10.1f} {r['eval_std']:>9.1f} "
            f"{r['train_s']:>9.1f} {steps / float(r['train_s']):>8.0f}"
        )
    ours = [r for r in rows if r["name"] == "ours-sac"]
    sb3 = [r for r in rows if r["name"] == "sb3-sac"]
    ours_return = float(np.mean([r["eval_mean"] for r in ours]))
    sb3_return = float(np.mean([r["eval_mean"] for r in sb3]))
    speedup = float(np.sum([r["train_s"] for r in sb3]) / np.sum([r["train_s"] for r in ours]))
    print(
        f"mean eval return: ours {ours_return:.1f} vs SB3 {sb3_return:.1f}; "
        f"wall-clock speed-up ours vs SB3: {speedup:.2f}x "
        f"(goal: return >= SB3's and speed-up >= 2x)"
    )
    return rows


def _bench_dqn(steps: int | None, seeds: tuple[int, ...]) -> None:
    # bench/agents_dqn.py is a sibling script, not a package module: load it by path.
    spec = importlib.util.spec_from_file_location("bench_agents_dqn", _HERE / "agents_dqn.py")
    if spec is None or spec.loader is None:
        raise FileNotFoundError(f"{_HERE / 'agents_dqn.py'}: DQN bench not found")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    kwargs = {"seeds": seeds}
    if steps is not None:
        kwargs["steps"] = steps
    module.bench_dqn(**kwargs)


def _print_thread_summary(by_threads: dict[int, list[dict[str, float | str]]], steps: int) -> None:
    """One row per thread count: summed train seconds, ms per env step, ratio SB3 / ours."""
    print(f"\n{ENV_ID}, {steps} steps: wall-clock by torch thread count (same count for both):")
    print(
        "{:>7} {:>9} {:>9} {:>11} {:>11} {:>10}".format(
            "threads", "ours_s", "sb3_s", "ours_ms/st", "sb3_ms/st", "sb3/ours"
        )
    )
    for threads, rows in by_threads.items():
        ours = sum(float(r["train_s"]) for r in rows if r["name"] == "ours-sac")
        sb3 = sum(float(r["train_s"]) for r in rows if r["name"] == "sb3-sac")
        runs = max(1, sum(1 for r in rows if r["name"] == "ours-sac"))
        print(
            f"{threads:>7} {ours:>9.1f} {sb3:>9.1f} {1e3 * ours / (runs * steps):>11.2f} "
            f"{1e3 * sb3 / (runs * steps):>11.2f} {sb3 / ours:>9.2f}x"
        )


def main(argv: list[str] | None = None) -> None:
    """Command line: ``--only``, ``--steps``, ``--seeds``, ``--threads``, ``--compile`` and
    ``--autograd`` (see the module docstring).

    ``--steps`` applies to whichever sections run; without it each uses its own default.
    ``--threads`` takes one or more counts; the SAC section runs once per count.
    """
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", choices=["sac", "dqn", "all"], default="all")
    parser.add_argument(
        "--steps", type=int, default=None, help="env steps per run (default: 20k SAC, DQN's own)"
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument(
        "--threads",
        type=int,
        nargs="+",
        default=[1],
        help="torch thread counts; SAC runs once per count (default 1)",
    )
    parser.add_argument("--compile", action="store_true", help="our SAC with torch.compile")
    parser.add_argument(
        "--autograd", action="store_true", help="our SAC's autograd update (reference path)"
    )
    args = parser.parse_args(argv)
    if any(t < 1 for t in args.threads):
        parser.error(f"--threads: expected counts >= 1, got {args.threads}")
    if args.only in ("sac", "all"):
        steps = args.steps or 20_000
        by_threads: dict[int, list[dict[str, float | str]]] = {}
        for threads in args.threads:
            torch.set_num_threads(threads)
            print(f"SAC section with {threads} torch thread(s):", flush=True)
            by_threads[threads] = bench_sac(steps, tuple(args.seeds), args.compile, args.autograd)
        _print_thread_summary(by_threads, steps)
    if args.only in ("dqn", "all"):
        torch.set_num_threads(args.threads[0])
        _bench_dqn(args.steps, tuple(args.seeds))


if __name__ == "__main__":
    main()
