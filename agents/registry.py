"""Build and load agents from the ``agent`` config group.

An agent config names a ``kind`` (``sac``, ``qlearning``, ``mbpo``, ``pets``, ``sb3``) and its
hyperparameters under ``params``; SB3 configs add ``algo`` and ``policy_kwargs``. The run's
``seed`` and ``device`` are filled in here, so one config file serves every seed and machine.
Imports are lazy so that asking for one agent never imports the others' dependencies.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import gymnasium as gym
from omegaconf import DictConfig, OmegaConf

from agents.base import Agent, Learner
from envs.errors import ConfigError

AGENT_KINDS = ("sac", "qlearning", "mbpo", "pets", "sb3")


def plain_dict(node: Any) -> dict[str, Any]:
    """A config node (OmegaConf or mapping, None for empty) as a plain, resolved dict."""
    if node is None:
        return {}
    if isinstance(node, DictConfig):
        return dict(OmegaConf.to_container(node, resolve=True))  # type: ignore[arg-type]
    return dict(node)


def _kind(agent_cfg: Mapping[str, Any]) -> str:
    kind = agent_cfg.get("kind")
    if kind not in AGENT_KINDS:
        raise ConfigError(f"agent.kind: expected one of {list(AGENT_KINDS)}, got {kind!r}")
    return str(kind)


def build_agent(
    agent_cfg: Mapping[str, Any],
    env: gym.Env,
    device: str = "auto",
    seed: int = 0,
    run_dir: str | Path | None = None,
    log_interval: int | None = None,
) -> Learner:
    """Create a fresh learner for ``env``'s spaces from an agent config node.

    Args:
        agent_cfg: the ``agent`` config node (``name``, ``kind``, ``params`` ...).
        env: the training env (its spaces decide the networks' shapes).
        device: torch device string or ``"auto"``.
        seed: the run's seed, given to the agent's own generators.
        run_dir: the run directory (unused by the built-in kinds; kept for agents that write files).
        log_interval: env steps between training-scalar logs (our agents); None keeps theirs.

    Raises:
        ConfigError: unknown kind or field, bad value, or an action space the agent cannot handle.
    """
    kind = _kind(agent_cfg)
    params = plain_dict(agent_cfg.get("params"))
    params.update(seed=seed, device=device)
    if log_interval is not None and kind != "sb3":
        params.setdefault("log_interval", int(log_interval))
    if kind == "sac":
        from agents.sac import SAC, SACConfig

        return SAC(env.observation_space, env.action_space, SACConfig.from_dict(params))
    if kind == "qlearning":
        from agents.qlearning import QLearningAgent, QLearningConfig

        return QLearningAgent(
            env.observation_space, env.action_space, QLearningConfig.from_dict(params)
        )
    if kind == "mbpo":
        from agents.mbpo import MBPO, MBPOConfig

        # for_env: with trading_aware it reads the env's accounting spec (MarketTrading-v0).
        return MBPO.for_env(env, MBPOConfig.from_dict(params))
    if kind == "pets":
        from agents.pets import PETS, PETSConfig

        return PETS(env.observation_space, env.action_space, PETSConfig.from_dict(params))
    from agents.sb3_adapter import SB3Agent

    params.pop("seed")
    params.pop("device")
    return SB3Agent(
        algo=str(agent_cfg.get("algo")),
        env=env,
        policy=str(agent_cfg.get("policy") or "auto"),
        policy_kwargs=plain_dict(agent_cfg.get("policy_kwargs")),
        algo_kwargs=params,
        seed=seed,
        device=device,
        # The trainer passes its own TensorBoard writer to learn(); SB3 forwards its scalars there.
        tensorboard_dir=None,
    )


def load_agent(agent_cfg: Mapping[str, Any], path: str | Path, device: str = "auto") -> Agent:
    """Load a policy saved by ``Agent.save`` with the class the agent config names."""
    kind = _kind(agent_cfg)
    if kind == "sac":
        from agents.sac import SAC

        return SAC.load(path, device=device)
    if kind == "qlearning":
        from agents.qlearning import QLearningAgent

        return QLearningAgent.load(path, device=device)
    if kind == "mbpo":
        from agents.mbpo import MBPO

        return MBPO.load(path, device=device)
    if kind == "pets":
        from agents.pets import PETS

        return PETS.load(path, device=device)
    from agents.sb3_adapter import SB3Agent

    return SB3Agent.load(path, device=device)
