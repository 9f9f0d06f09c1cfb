"""Our deep Q-learning agent against Stable-Baselines3's DQN on CartPole-v1.

Run: ``.venv/bin/python bench/agents_dqn.py [--steps 50000] [--seeds 0] [--variants ...]``.
Both learners use rl-baselines3-zoo's CartPole-v1 DQN hyperparameters (hyperparams/dqn.yml):
lr 2.3e-3, batch 64, buffer 100k, learning_starts 1000, gamma 0.99, target_update_interval 10,
train_freq 256, gradient_steps 128, exploration_fraction 0.16, final eps 0.04, net [256, 256];
the rest are SB3 defaults (Huber loss, max_grad_norm 10, Adam, hard target updates).
SB3's DQN is plain DQN; ours runs as plain DQN (``ours-dqn``, the like-for-like comparison) and
with double Q (``ours-double``, our default). Each trained policy is evaluated
deterministically on 10 CartPole episodes (seeds 1000..1009) with ``agents.evaluation``.
Wall-clock includes training only. DOMAIN.md: this recipe reaches 500 in 50k steps on some
seeds, not all, so read one seed as one sample. Figures depend on machine load: never assert
them in tests.

``bench_dqn()`` is the entry point meant for ``bench/agents.py`` (``main --only dqn``).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

# Run as ``python bench/agents_dqn.py`` this folder comes first on sys.path, and a
# ``bench/agents.py`` would shadow the ``agents`` package; drop the folder.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]

import gymnasium as gym  # noqa: E402
import torch  # noqa: E402

from agents.evaluation import evaluate_policy, format_table  # noqa: E402
from agents.qlearning import QLearningAgent, QLearningConfig  # noqa: E402
from agents.sb3_adapter import SB3Agent  # noqa: E402

# rl-baselines3-zoo hyperparams/dqn.yml, CartPole-v1.
ZOO_CARTPOLE_DQN = {
    "learning_rate": 2.3e-3,
    "batch_size": 64,
    "buffer_size": 100_000,
    "learning_starts": 1000,
    "gamma": 0.99,
    "target_update_interval": 10,
    "train_freq": 256,
    "gradient_steps": 128,
    "exploration_fraction": 0.16,
    "exploration_final_eps": 0.04,
}
ZOO_NET = [256, 256]
EVAL_EPISODES = 10
EVAL_SEED = 1000


def _train_ours(steps: int, seed: int, double_q: bool) -> tuple[QLearningAgent, float]:
    env = gym.make("CartPole-v1")
    config = QLearningConfig(
        **ZOO_CARTPOLE_DQN, hidden_sizes=tuple(ZOO_NET), double_q=double_q, seed=seed, device="cpu"
    )
    agent = QLearningAgent(env.observation_space, env.action_space, config)
    torch.manual_seed(seed)
    start = time.perf_counter()
    agent.learn(env, steps)
    return agent, time.perf_counter() - start


def _train_sb3(steps: int, seed: int) -> tuple[SB3Agent, float]:
    env = gym.make("CartPole-v1")
    agent = SB3Agent(
        "DQN",
        env=env,
        algo_kwargs=ZOO_CARTPOLE_DQN,
        policy_kwargs={"net_arch": ZOO_NET},
        seed=seed,
        device="cpu",
    )
    start = time.perf_counter()
    agent.learn(env, steps)
    return agent, time.perf_counter() - start


def bench_dqn(
    steps: int = 50_000, seeds: tuple[int, ...] = (0,), variants: tuple[str, ...] = ()
) -> str:
    """Train each variant for ``steps`` on each seed, evaluate, and return the printed table.

    Args:
        steps: environment steps per training run.
        seeds: training seeds.
        variants: subset of ``ours-dqn``, ``ours-double``, ``sb3-dqn`` (empty: all three).
    """
    variants = variants or ("ours-dqn", "ours-double", "sb3-dqn")
    rows: dict[str, dict[str, float]] = {}
    for seed in seeds:
        for name in variants:
            if name == "sb3-dqn":
                agent, seconds = _train_sb3(steps, seed)
            elif name in ("ours-dqn", "ours-double"):
                agent, seconds = _train_ours(steps, seed, double_q=name == "ours-double")
            else:
                raise ValueError(f"unknown variant {name!r}")
            result = evaluate_policy(
                lambda obs, _env, a=agent: a.act(obs, deterministic=True),
                gym.make("CartPole-v1"),
                EVAL_EPISODES,
                seed=EVAL_SEED,
            )
            rows[f"{name} seed{seed}"] = {
                "eval_mean": result["mean_reward"],
                "eval_std": result["std_reward"],
                "train_s": seconds,
                "steps_per_s": steps / seconds,
            }
            print(
                f"  {name} seed {seed}: eval {result['mean_reward']:.1f}, {seconds:.1f} s",
                flush=True,
            )
    table = format_table(rows, ["eval_mean", "eval_std", "train_s", "steps_per_s"])
    print(
        f"\nCartPole-v1, {steps} steps, rl-zoo DQN hyperparameters, deterministic eval over "
        f"{EVAL_EPISODES} episodes; torch threads {torch.get_num_threads()}:\n{table}"
    )
    return table


def main(argv: list[str] | None = None) -> None:
    """Command line: ``--steps``, ``--seeds``, ``--variants``, ``--threads``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=50_000)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--variants", nargs="+", default=[])
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    bench_dqn(args.steps, tuple(args.seeds), tuple(args.variants))


if __name__ == "__main__":
    main()
