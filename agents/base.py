"""The small interface every agent implements, and the device helper.

Acting is separate from learning (as in Tianshou): the policy runner needs only ``act`` and
``load``. Learners add ``learn`` and training checkpoints on top.
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import gymnasium as gym
import numpy as np
import torch


def get_device(device: str | torch.device = "auto") -> torch.device:
    """Resolve ``"auto"`` to CUDA when available, else CPU; pass anything else through."""
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


class ScalarWriter(Protocol):
    """What learners log to: TensorBoard's ``SummaryWriter`` satisfies it."""

    def add_scalar(self, tag: str, scalar_value: float, global_step: int) -> None:
        """Record one scalar under a stable tag (``train/critic_loss``, ``rollout/ep_rew_mean``)."""


# Called by ``Learner.learn`` after every environment step with the number of steps done so far;
# returning False stops training. The trainer uses it for evaluation and checkpoints.
StepCallback = Callable[[int], bool]


class Agent(abc.ABC):
    """Anything that maps an observation to an action and can be saved and loaded.

    Observations are what the env returns (a flat float32 vector, or a dict of blocks for agents
    that flatten themselves); actions are what the env's ``step`` accepts.
    """

    @abc.abstractmethod
    def act(self, obs: Any, deterministic: bool = True) -> np.ndarray:
        """Return the action for one observation (or a batch, with a leading batch dimension)."""

    @abc.abstractmethod
    def save(self, path: str | Path) -> None:
        """Write the policy (what acting needs) to ``path`` atomically."""

    @classmethod
    @abc.abstractmethod
    def load(cls, path: str | Path, device: str = "auto") -> Agent:
        """Rebuild an agent saved by ``save``; never executes code stored in the file."""


class Learner(Agent):
    """An agent that trains on a Gymnasium env and can checkpoint its whole training state."""

    num_timesteps: int = 0

    @abc.abstractmethod
    def learn(
        self,
        env: gym.Env,
        total_timesteps: int,
        callback: StepCallback | None = None,
        writer: ScalarWriter | None = None,
    ) -> None:
        """Train until ``num_timesteps`` reaches ``total_timesteps`` (continuing after a resume)."""

    @abc.abstractmethod
    def save_checkpoint(self, path: str | Path, include_buffer: bool = False) -> None:
        """Write policy, optimisers, step counters and RNG state (and the buffer) atomically."""

    @abc.abstractmethod
    def load_checkpoint(self, path: str | Path) -> None:
        """Restore a checkpoint written by ``save_checkpoint`` into this agent to resume."""
