"""Small Gymnasium envs with known optima, shared by the model-based agents' tests."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
from gymnasium import spaces


class PointMass(gym.Env):
    """x' = clip(x + 0.25 a, -2, 2), reward -(x' - 1)^2, 20 steps, x0 ~ U(-1, 0).

    A random policy scores about -40; moving to the target at full speed scores about -4.
    """

    def __init__(self) -> None:
        self.observation_space = spaces.Box(-2.0, 2.0, (1,), np.float32)
        self.action_space = spaces.Box(-1.0, 1.0, (1,), np.float32)

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self.x, self.t = float(self.np_random.uniform(-1.0, 0.0)), 0
        return np.array([self.x], np.float32), {}

    def step(self, action):
        move = 0.25 * float(np.asarray(action).reshape(-1)[0])
        self.x = float(np.clip(self.x + move, -2.0, 2.0))
        self.t += 1
        return np.array([self.x], np.float32), -((self.x - 1.0) ** 2), False, self.t >= 20, {}
