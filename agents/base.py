"""The small interface every agent implements, and the device helper.

Acting is separate from learning (as in Tianshou): the policy runner needs only ``act`` and
``load``. Learners add ``learn`` (driven by the trainer) on top.
"""

from __future__ import annotations

import abc
from pathlib import Path
from typing import Any

import numpy as np
import torch


def get_device(device: str | torch.device = "auto") -> torch.device:
    """Resolve ``"auto"`` to CUDA when available, else CPU; pass anything else through."""
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


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
        """Write everything needed to act again to ``path`` (atomically)."""

    @classmethod
    @abc.abstractmethod
    def load(cls, path: str | Path, device: str = "auto") -> Agent:
        """Rebuild an agent saved by ``save``; never executes code stored in the file."""
