"""Deterministic evaluation of a policy on an env, and the comparison table."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any

import gymnasium as gym
import numpy as np

# A policy for evaluation: observation (and the env, for baselines that read its state) -> action.
Policy = Callable[[Any, gym.Env], Any]


class AgentPolicy:
    """An agent's ``act`` as a ``Policy``, with the env's action masks and episode resets.

    Envs with invalid actions expose ``action_masks()`` (the sb3-contrib convention); an agent
    that uses masks (``uses_action_masks``, or an ``act`` taking ``action_masks``) gets them for
    Discrete action spaces, so it never picks a forbidden action in evaluation either.
    ``reset()`` is called by ``evaluate_policy`` at every episode start and clears a recurrent
    agent's state.
    """

    def __init__(self, agent: Any, deterministic: bool = True) -> None:
        self.agent = agent
        self.deterministic = deterministic
        takes = "action_masks" in inspect.signature(agent.act).parameters
        self.uses_masks = bool(getattr(agent, "uses_action_masks", takes))

    def reset(self) -> None:
        """Start of an episode: clear recurrent state, if the agent has any."""
        reset_state = getattr(self.agent, "reset_state", None)
        if reset_state is not None:
            reset_state()

    def __call__(self, obs: Any, env: gym.Env) -> Any:
        if (
            self.uses_masks
            and isinstance(env.action_space, gym.spaces.Discrete)
            and env.has_wrapper_attr("action_masks")
        ):
            masks = env.get_wrapper_attr("action_masks")()
            return self.agent.act(obs, deterministic=self.deterministic, action_masks=masks)
        return self.agent.act(obs, deterministic=self.deterministic)


def agent_policy(agent: Any, deterministic: bool = True) -> AgentPolicy:
    """Wrap an agent as an evaluation ``Policy`` (see ``AgentPolicy``)."""
    return AgentPolicy(agent, deterministic)


def evaluate_policy(
    policy: Policy, env: gym.Env, n_episodes: int, seed: int | None = None
) -> dict[str, float]:
    """Run ``n_episodes`` episodes and average their returns and end-of-episode metrics.

    Episode ``i`` is reset with ``seed + i`` so every policy sees the same episodes. Any numeric
    entry of ``info["episode"]`` at the last step (Sharpe, drawdown, oracle share, ...) is
    averaged under its own name.

    Args:
        policy: maps ``(obs, env)`` to an action.
        env: the evaluation env.
        n_episodes: number of episodes.
        seed: base seed; None leaves the env's RNG as it is.

    Returns:
        ``mean_reward``, ``std_reward``, ``mean_length`` and the averaged episode metrics.
    """
    returns, lengths = [], []
    extra: dict[str, list[float]] = {}
    for i in range(n_episodes):
        obs, info = env.reset(seed=None if seed is None else seed + i)
        reset = getattr(policy, "reset", None)
        if reset is not None:
            reset()
        done, total, length = False, 0.0, 0
        while not done:
            obs, reward, terminated, truncated, info = env.step(policy(obs, env))
            total += float(reward)
            length += 1
            done = terminated or truncated
        returns.append(total)
        lengths.append(length)
        episode = info.get("episode", {})
        if isinstance(episode, Mapping):
            for key, value in episode.items():
                if isinstance(value, (int, float, np.floating, np.integer)) and not isinstance(
                    value, bool
                ):
                    extra.setdefault(str(key), []).append(float(value))
    out = {
        "mean_reward": float(np.mean(returns)),
        "std_reward": float(np.std(returns)),
        "mean_length": float(np.mean(lengths)),
    }
    out.update({k: float(np.mean(v)) for k, v in extra.items()})
    return out


def format_table(rows: Mapping[str, Mapping[str, float]], columns: list[str] | None = None) -> str:
    """Format ``{policy name: {metric: value}}`` as a plain-text table for the console."""
    if not rows:
        return ""
    if columns is None:
        columns = []
        for metrics in rows.values():
            columns.extend(k for k in metrics if k not in columns)
    name_w = max(6, *(len(n) for n in rows))
    widths = [max(10, len(c)) for c in columns]
    cells = "".join(f"  {c:>{w}}" for c, w in zip(columns, widths, strict=True))
    head = "policy".ljust(name_w) + cells
    lines = [head, "-" * len(head)]
    for name, metrics in rows.items():
        cells = []
        for c, w in zip(columns, widths, strict=True):
            v = metrics.get(c)
            cells.append(f"  {'-':>{w}}" if v is None else f"  {v:>{w}.4g}")
        lines.append(name.ljust(name_w) + "".join(cells))
    return "\n".join(lines)
